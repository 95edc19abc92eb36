/**
 * Fault injection, part 1: worker processes killed with SIGKILL at every step of a traversal.
 * Workers are real `src/worker.ts` processes sharing one data folder (one host); the Temporal
 * dev server and Redis are the suite-wide ones; origin and agent are real HTTP servers here.
 */
import assert from 'node:assert/strict';
import type { WorkflowHandle } from '@temporalio/client';
import { readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { JOURNAL_LEASE_STALE_MS, WORKER_LOST } from '../src/activities/traversal/attempt-journal';
import { budgetSignal, type TraversalRequest, type TraversalResult } from '../src/contract/messages';
import { AgentSimulator } from '../sim/agent-sim';
import type { ApkInfo } from '../sim/origin';
import { pendingActivity, pidAlive, runningAt, spawnWorker, workerJournals } from './support/procs';
import { assertInstalledOnce, faultRequest, FaultSuite, HEARTBEAT_MS, LONG_SEC, MiB } from './support/fault-suite';
import { traversalPids, waitFor, waitForResult } from '../dev/wait';

/** The default heartbeat timeout (DT_HEARTBEAT_TIMEOUT), which a same-host restart must not wait for. */
const DEFAULT_HEARTBEAT_MS = 30_000;
/** How soon after the restarted worker reports ready the tool must run again (generous: the measure is printed). */
const RESTART_RESUME_MS = 20_000;

describe('a worker killed anywhere: the run resumes and nothing is lost', function () {
  const suite = new FaultSuite('w');
  const { taskQueue, prefix, logDir, dir: dataDir, procs: workers } = suite;
  const devices = ['fw-dl', 'fw-run', 'fw-inst', 'fw-two', 'fw-restart', 'fw-live', 'fw-ns'];
  let agent: AgentSimulator;
  let slowAgent: AgentSimulator;
  let big: ApkInfo & { url: string };
  let small: ApkInfo & { url: string };

  const startWorker = async () => {
    const w = await spawnWorker({
      taskQueue,
      redisKeyPrefix: prefix,
      dataDir,
      logDir,
      env: { DT_HEARTBEAT_TIMEOUT: `${HEARTBEAT_MS}ms`, DT_DEVICE_CHECK_INTERVAL: '1s', DT_STICKY_TIMEOUT: '2s' },
    });
    workers.push(w);
    return w;
  };
  const live = () => workers.filter((w) => w.alive());
  const ensureOneWorker = async () => {
    if (live().length === 0) await startWorker();
  };
  /** Exactly one live worker: extra ones are stopped gracefully (which removes their journals). */
  const onlyOneWorker = async () => {
    for (const w of live().slice(1)) await w.stop();
    await ensureOneWorker();
    return live()[0]!;
  };
  /** The run policy of a traversal that uses the default heartbeat timeout and retry interval. */
  const defaultPolicy = { heartbeatTimeoutMs: DEFAULT_HEARTBEAT_MS, maxAttempts: 3, measureLaunch: false };
  /** Ends a long run the way an operator would: the workflow's budget tells the tool to finish now. */
  const finishNow = (handle: WorkflowHandle) => handle.signal(budgetSignal, { finishNow: true });
  const long = { durationSec: LONG_SEC, extraArgs: ['--tick-ms', '100'] };

  const request = (fields: Partial<TraversalRequest> & { taskId: string; deviceId: string }): TraversalRequest =>
    faultRequest(small, { agentUrl: agent.url, ...fields });
  const enqueue = (req: TraversalRequest): Promise<WorkflowHandle> => suite.enqueue(req);
  /** A run of an hour's budget, task `taskId` on device `fw-<taskId>`; `policy` replaces the suite's. */
  const enqueueLong = (taskId: string, policy?: TraversalRequest['policy']): Promise<WorkflowHandle> =>
    enqueue(request({ taskId, deviceId: `fw-${taskId}`, traversal: long, ...(policy && { policy }) }));
  /** Ends the long run `taskId` now and checks that it completed after `attempts` attempts; returns its result. */
  async function finishLong(
    handle: WorkflowHandle,
    taskId: string,
    attempts: number,
    opts: { message?: string; timeoutMs?: number } = {},
  ): Promise<TraversalResult> {
    await finishNow(handle);
    const r = await waitResult(taskId, `fw-${taskId}`, opts.timeoutMs);
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    assert.equal(r.traversalAttempt, attempts, opts.message);
    return r;
  }
  const waitResult = (taskId: string, deviceId: string, timeoutMs = 90_000): Promise<TraversalResult> =>
    waitForResult(suite.redis, prefix, taskId, deviceId, timeoutMs);
  /** The worker process that ran the last attempt of an activity (identity is `<pid>@<host>`). */
  const workerOf = (identity: string | undefined) => live().find((w) => identity?.startsWith(`${w.pid}@`));

  before(async function () {
    await suite.start();
    big = await suite.addApk('faults-big.apk', 16 * MiB);
    small = await suite.addApk('faults-small.apk', 1 * MiB);
    agent = new AgentSimulator({ devices, coldStartMs: [100, 200] });
    await agent.start();
    // Installs take 4 s after the bytes arrived, so a worker can be killed in the middle of one.
    slowAgent = new AgentSimulator({ devices: ['fw-inst'], installDelayMs: 4000, coldStartMs: [100, 200] });
    await slowAgent.start();
    await startWorker();
  });

  after(async function () {
    await suite.stopProcs(devices);
    await Promise.all([agent?.close(), slowAgent?.close()]);
    await suite.close();
  });

  it('killed during the APK download: the next attempt resumes with a Range request and the origin serves the APK about once', async function () {
    await ensureOneWorker();
    suite.origin.throttleBytesPerSec = 2 * MiB; // 16 MiB in about 8 s: the kill lands long before the end
    try {
      const handle = await enqueue(
        request({ taskId: 'dl', deviceId: 'fw-dl', apkUrl: big.url, apkSha256: big.sha256 }),
      );
      let heartbeatBytes = 0;
      await waitFor(
        async () => {
          const a = await pendingActivity(handle, 'resolveApk');
          heartbeatBytes = Number(a?.details?.bytes ?? 0);
          return heartbeatBytes >= 0.3 * big.size;
        },
        30_000,
        'a download heartbeat past 30%',
      );
      const [victim] = live();
      await victim!.kill('SIGKILL');
      const survivor = await startWorker();

      const r = await waitResult('dl', 'fw-dl');
      assert.equal(r.status, 'completed', JSON.stringify(r.error));
      assert.equal(r.apk?.sha256, big.sha256, 'the resumed file has the right hash');
      const resumed = survivor.logs().find((e) => e.msg === 'downloading APK' && e.url === big.url);
      assert.ok(resumed, 'the new worker downloaded');
      assert.ok(
        Number(resumed.resumeFrom) >= heartbeatBytes,
        `Range from ${String(resumed.resumeFrom)}, last heartbeat said ${heartbeatBytes}`,
      );
      const stats = suite.origin.stats('faults-big.apk');
      assert.equal(stats.rangeGets, 1, 'one Range request');
      assert.ok(
        stats.bytesServed <= 1.05 * big.size,
        `origin served ${(stats.bytesServed / big.size).toFixed(3)} × the APK size`,
      );
    } finally {
      suite.origin.throttleBytesPerSec = undefined;
    }
  });

  it('killed during the traversal: the next worker ends the orphaned jar at start-up (and logs it) before it reports ready; the next attempt resumes from the last checkpoint, installs nothing again, cleans once', async function () {
    const victim = await onlyOneWorker();
    const deviceId = 'fw-run';
    const handle = await enqueueLong('run');
    const before = await runningAt(handle, deviceId, 10);
    const checkpoint = Number(before.details?.checkpoint ?? 0);
    const pids = traversalPids(deviceId);
    assert.equal(pids.length, 1, `one jar runs: ${pids.join(', ')}`);
    const javaPid = pids[0]!;
    await victim.kill('SIGKILL');
    assert.ok(pidAlive(javaPid), 'the jar outlives the worker that spawned it');

    const next = await startWorker();
    // The jar's budget is an hour: dead now means the start-up sweep ended it, before the worker took work.
    assert.ok(!pidAlive(javaPid), 'the orphaned jar is gone when the new worker reports ready');
    const logs = next.logs();
    const ended = logs.findIndex(
      (e) => e.msg === 'ended the traversal process group of a dead worker at start-up' && e.childPid === javaPid,
    );
    const ready = logs.findIndex((e) => e.msg === 'worker started');
    assert.ok(ended >= 0, 'the start-up sweep logs the jar it ended');
    assert.ok(ended < ready, 'the sweep ended it before the worker reported ready');
    assert.deepEqual(
      { taskId: logs[ended]!.taskId, deviceId: logs[ended]!.deviceId, workerPid: logs[ended]!.workerPid },
      { taskId: 'run', deviceId, workerPid: victim.pid },
      'the line names the task, the device and the dead worker',
    );

    await runningAt(handle, deviceId, 1, 2, javaPid);
    assert.ok(
      !next.logs().some((e) => e.msg === 'ending stale traversal process group left by a previous attempt'),
      'the new attempt found nothing left to end',
    );
    const r = await finishLong(handle, 'run', 2);
    assert.ok(
      Number(r.resumedFrom) >= checkpoint && checkpoint > 0,
      `resumed from ${r.resumedFrom}, last heartbeat checkpoint ${checkpoint}`,
    );
    const log2 = readFileSync(path.join(dataDir, 'runs', 'run', deviceId, 'attempt-2.log'), 'utf8');
    assert.match(log2, new RegExp(`RESUMED from=${r.resumedFrom}\\b`), 'the jar confirmed it resumed');
    assertInstalledOnce(agent, deviceId);
    assert.deepEqual(traversalPids(deviceId), [], 'no traversal process left');
  });

  it('killed during the install and again during the cleanup: the retries are harmless and the device ends clean', async function () {
    const first = await onlyOneWorker();
    const deviceId = 'fw-inst';
    await enqueue(
      request({
        taskId: 'inst',
        deviceId,
        agentUrl: slowAgent.url,
        traversal: { durationSec: 1, extraArgs: ['--tick-ms', '100'] },
      }),
    );
    // Killed while the agent installs: all bytes arrived (a kill during the download from this worker
    // would end the call at once), and the install takes 4 s more.
    const install = await waitFor(
      () => slowAgent.inFlight(deviceId, 'install').find((c) => c.bytes === small.size),
      60_000,
      'an install call with all its bytes in flight',
    );
    await first.kill('SIGKILL');
    assert.equal(install.endedAt, 0, 'the worker died while the agent was still installing');
    const second = await startWorker();
    const secondUrl = String(second.logs().find((e) => e.msg === 'worker started')?.artifactServer);

    // Once the retried install went through, make agent calls slow so the cleanup can be interrupted.
    await waitFor(
      () =>
        slowAgent.calls.some((c) => c.op === 'install' && c.status === 200 && c.url?.startsWith(secondUrl) === true),
      60_000,
      'the retried install',
    );
    slowAgent.setLatency(2500);
    const uninstall = await waitFor(
      () => slowAgent.inFlight(deviceId, 'uninstall')[0],
      60_000,
      'an uninstall call in flight',
    );
    await second.kill('SIGKILL');
    assert.equal(uninstall.endedAt, 0, 'the worker died while the agent was still uninstalling');
    slowAgent.setLatency(0);
    await startWorker();

    const r = await waitResult('inst', deviceId);
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    assert.deepEqual(slowAgent.installed(deviceId), [], 'nothing left installed');
    const ok = slowAgent.calls.filter((c) => c.status === 200);
    assert.ok(ok.filter((c) => c.op === 'install').length >= 2, 'the install was repeated');
    // The interrupted uninstall may be answered with an error: its client is gone.
    assert.ok(slowAgent.calls.filter((c) => c.op === 'uninstall').length >= 2, 'the cleanup was repeated');
    const sorted = ok.filter((c) => c.op !== 'status').sort((a, b) => a.startedAt - b.startedAt);
    for (let i = 1; i < sorted.length; i++)
      assert.ok(sorted[i]!.startedAt >= sorted[i - 1]!.endedAt, 'device calls never overlap');
  });

  it('two workers, the one running the traversal killed: the survivor takes over after the heartbeat timeout and ends the orphaned jar before it spawns its own, so two jars never drive one phone', async function () {
    while (live().length < 2) await startWorker();
    const deviceId = 'fw-two';
    const handle = await enqueueLong('two');
    const running = await runningAt(handle, deviceId, 10);
    const victim = workerOf(running.workerIdentity);
    assert.ok(victim, `the running worker (${running.workerIdentity}) is one of ours`);
    const survivor = live().find((w) => w !== victim)!;
    const pids = traversalPids(deviceId);
    assert.equal(pids.length, 1, `one jar runs: ${pids.join(', ')}`);
    const javaPid = pids[0]!;
    await victim.kill('SIGKILL');
    const killedAt = Date.now();
    assert.ok(pidAlive(javaPid), 'the jar outlives the worker that spawned it');

    // The survivor started long before: only the new attempt can end the orphan, whose budget is an hour.
    let most = 0;
    const newJar = await waitFor(
      () => {
        const now = traversalPids(deviceId);
        most = Math.max(most, now.length);
        return now.find((p) => p !== javaPid);
      },
      HEARTBEAT_MS + 60_000,
      'the survivor to spawn the jar again',
    );
    assert.ok(!pidAlive(javaPid), 'the orphan was ended before the survivor spawned its jar');
    assert.equal(most, 1, 'never two traversal processes for the device');
    const takeoverMs = Date.now() - killedAt;
    console.log(
      `      takeover after ${(takeoverMs / 1000).toFixed(1)} s (heartbeat timeout ${HEARTBEAT_MS / 1000} s)`,
    );
    const a = await pendingActivity(handle, 'runTraversal');
    assert.ok(
      a?.attempt === 2 && a.workerIdentity?.startsWith(`${survivor.pid}@`),
      `attempt 2 runs on the survivor: ${JSON.stringify(a)}`,
    );
    assert.equal(a.lastFailure?.timeoutType, 'HEARTBEAT', 'attempt 1 ended by its heartbeat timeout');
    assert.ok(takeoverMs <= HEARTBEAT_MS + 30_000, `took ${takeoverMs} ms`);
    const ended = await survivor.waitForLog('ending stale traversal process group left by a previous attempt', 10_000, {
      childPid: javaPid,
    });
    assert.equal(ended.taskId, 'two');
    assert.ok(pidAlive(newJar), 'the survivor’s jar runs');

    const r = await finishLong(handle, 'two', 2);
    assert.ok(Number(r.resumedFrom) > 0, 'resumed from a checkpoint');
    assert.deepEqual(traversalPids(deviceId), [], 'no traversal process left');
  });

  it('killed during a traversal with the default heartbeat timeout and started again on the same data folder: the dead worker’s attempt is failed as WorkerLost at start-up, so the tool runs again without waiting for the heartbeat timeout, from its checkpoint, installed once; a stale token left behind is harmless', async function () {
    const victim = await onlyOneWorker();
    const deviceId = 'fw-restart';
    const handle = await enqueueLong('restart', defaultPolicy);
    const before = await runningAt(handle, deviceId, 10);
    const checkpoint = Number(before.details?.checkpoint ?? 0);
    const [javaPid] = traversalPids(deviceId);
    assert.ok(javaPid, 'the jar runs');
    const journal = workerJournals(dataDir).find((j) => j.pid === victim.pid);
    const recorded = journal?.attempts.find((a) => a.workflowId === handle.workflowId);
    assert.ok(recorded, `the worker's journal names the running attempt: ${JSON.stringify(journal)}`);
    assert.equal(recorded.activityType, 'runTraversal');
    assert.equal(recorded.attempt, 1);

    await victim.kill('SIGKILL');
    const killedAt = Date.now();
    const restarting = startWorker();
    const newJar = await waitFor(
      () => traversalPids(deviceId).find((p) => p !== javaPid),
      DEFAULT_HEARTBEAT_MS + 15_000,
      'the traversal command to run again',
    );
    const jarAt = Date.now();
    const restarted = await restarting;
    const readyAt = Date.parse(String(restarted.logs().find((e) => e.msg === 'worker started')?.time));
    console.log(
      `      tool running again ${((jarAt - killedAt) / 1000).toFixed(1)} s after the kill and restart, ` +
        `${((jarAt - readyAt) / 1000).toFixed(1)} s after the new worker was ready (heartbeat timeout ${DEFAULT_HEARTBEAT_MS / 1000} s)`,
    );
    assert.ok(!pidAlive(javaPid), 'the old jar was ended before the new one started');
    const failedLog = restarted
      .logs()
      .find(
        (e) =>
          e.msg === 'failed the attempt of a dead worker so that it is retried now' &&
          e.workflowId === handle.workflowId,
      );
    assert.ok(failedLog, 'the new worker says which attempt it failed');
    assert.equal(failedLog.activityType, 'runTraversal');
    assert.equal(failedLog.workerPid, victim.pid);
    assert.ok(!workerJournals(dataDir).some((j) => j.pid === victim.pid), 'the dead worker’s journal is removed');
    const retried = await pendingActivity(handle, 'runTraversal');
    assert.equal(retried?.attempt, 2);
    assert.equal(retried?.lastFailure?.type, WORKER_LOST);
    assert.match(String(retried?.lastFailure?.message), new RegExp(`pid ${victim.pid}\\b`));
    // WorkerLost above says the retry did not wait for the heartbeat timeout; the bound is only a sanity check.
    assert.ok(
      jarAt - readyAt <= RESTART_RESUME_MS,
      `the tool ran again ${jarAt - readyAt} ms after the worker was ready`,
    );

    // The dead worker's journal comes back (a copy restored from a backup, a slow disk): its token
    // names attempt 1, which is over, so the next worker's sweep must leave attempt 2 running.
    writeFileSync(journal!.file, JSON.stringify({ ...journal, file: undefined }));
    const third = await startWorker();
    const staleLog = await third.waitForLog(
      'attempt of a dead worker had already ended or was retried elsewhere; nothing to fail',
      10_000,
      { workflowId: handle.workflowId },
    );
    assert.equal(staleLog.attempt, 1);
    assert.ok(!workerJournals(dataDir).some((j) => j.pid === victim.pid), 'the stale journal is removed');
    const still = await pendingActivity(handle, 'runTraversal');
    assert.ok(still?.attempt === 2 && still.started, `attempt 2 still runs: ${JSON.stringify(still)}`);
    assert.ok(pidAlive(newJar), 'its jar still runs');

    const r = await finishLong(handle, 'restart', 2, { timeoutMs: 120_000 });
    assert.ok(
      Number(r.resumedFrom) >= checkpoint && checkpoint > 0,
      `resumed from ${r.resumedFrom}, checkpoint before the kill ${checkpoint}`,
    );
    assertInstalledOnce(agent, deviceId);
    assert.deepEqual(traversalPids(deviceId), [], 'no traversal process left');
  });

  it('a worker that starts beside a live one on the same data folder leaves its running attempt alone, even when its journal looks like another pid namespace’s', async function () {
    const first = await onlyOneWorker();
    const deviceId = 'fw-live';
    const handle = await enqueueLong('live', defaultPolicy);
    await runningAt(handle, deviceId, 10);
    const journal = workerJournals(dataDir).find((j) => j.pid === first.pid);
    assert.ok(
      journal?.attempts.some((a) => a.workflowId === handle.workflowId),
      'the live worker’s journal names the attempt',
    );
    // The same attempt as a worker of another container would record it: its pid means nothing
    // here, only its lease (renewed below, as a live worker renews it) tells that it is alive.
    const foreign = path.join(path.dirname(journal!.file), 'foreign-container.json');
    writeFileSync(
      foreign,
      JSON.stringify({ ...journal, file: undefined, pid: 999_999, pidNamespace: 'pid:[1]', host: 'other-container' }),
    );
    const renew = setInterval(() => utimesSync(foreign, new Date(), new Date()), 500);
    try {
      const second = await startWorker();
      await second.waitForLog('worker journal left alone: its worker is alive', 10_000, { file: journal!.file });
      await second.waitForLog('worker journal left alone: its lease is renewed', JOURNAL_LEASE_STALE_MS + 10_000, {
        file: foreign,
      });
      assert.ok(
        !second.logs().some((e) => e.msg === 'failed the attempt of a dead worker so that it is retried now'),
        'the starting worker failed nothing',
      );
      const a = await pendingActivity(handle, 'runTraversal');
      assert.ok(
        a?.attempt === 1 && a.started && a.workerIdentity?.startsWith(`${first.pid}@`),
        `attempt 1 still runs on the first worker: ${JSON.stringify(a)}`,
      );
    } finally {
      clearInterval(renew);
      rmSync(foreign, { force: true });
    }
    await finishLong(handle, 'live', 1, { message: 'never retried' });
  });

  it('a worker of another pid namespace (a container restarted on a shared data folder) killed mid-traversal: its attempt is failed once its lease is stale', async function () {
    const victim = await onlyOneWorker();
    const deviceId = 'fw-ns';
    const handle = await enqueueLong('ns', defaultPolicy);
    const first = await runningAt(handle, deviceId, 10);
    const journal = workerJournals(dataDir).find((j) => j.pid === victim.pid);
    assert.ok(journal, 'the worker has a journal');
    await victim.kill('SIGKILL');
    const killedAt = Date.now();
    // As the new container sees it: a pid from another namespace, so only the lease can tell.
    const mtime = new Date(killedAt);
    writeFileSync(journal.file, JSON.stringify({ ...journal, file: undefined, pidNamespace: 'pid:[1]' }));
    utimesSync(journal.file, mtime, mtime);
    const restarted = await startWorker();
    const failed = await restarted.waitForLog(
      'failed the attempt of a dead worker so that it is retried now',
      JOURNAL_LEASE_STALE_MS + 10_000,
      { workflowId: handle.workflowId },
    );
    const failedAfterMs = Date.now() - killedAt;
    assert.match(String(failed.reason), /lease not renewed/);
    assert.ok(failedAfterMs >= JOURNAL_LEASE_STALE_MS, `not before the lease is stale (${failedAfterMs} ms)`);
    console.log(
      `      attempt of a worker in another pid namespace failed ${(failedAfterMs / 1000).toFixed(1)} s after the kill`,
    );

    await runningAt(handle, deviceId, 1, 2, Number(first.details?.pid));
    const r = await finishLong(handle, 'ns', 2);
    assert.ok(Number(r.resumedFrom) > 0, 'resumed from a checkpoint');
    assert.deepEqual(traversalPids(deviceId), [], 'no traversal process left');
  });
});
