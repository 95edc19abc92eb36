/**
 * Fault injection, part 1b: worker processes killed with SIGKILL where test/faults-worker.test.ts
 * does not reach: inside the app launch, between two decisions of a workflow it had cached, and on
 * every attempt of a traversal. Workers and the starter are real `src/*.ts` processes, the agent
 * and origin real HTTP servers; the Temporal dev server and Redis are the suite-wide ones. A data
 * folder stands for a host: workers on different folders cannot see each other's journals or jars.
 * Each test has its own task queue and workers, and stops them at its end.
 */
import assert from 'node:assert/strict';
import { temporal } from '@temporalio/proto';
import { randomUUID } from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { resultKey, starterKeys } from '../src/contract/redis-keys';
import { runDir } from '../src/activities/traversal/run';
import { WORKER_LOST } from '../src/activities/traversal/attempt-journal';
import { PROJECT_ROOT } from '../src/config';
import {
  budgetSignal,
  traversalWorkflowId,
  type TraversalRequest,
  type TraversalResult,
} from '../src/contract/messages';
import { AgentSimulator } from '../sim/agent-sim';
import type { ApkInfo } from '../sim/origin';
import {
  pendingActivity,
  pidAlive,
  runningAt,
  spawnStarter,
  spawnWorker,
  timeoutTypeName,
  type PendingActivity,
} from './support/procs';
import { activityStarts, eventMs } from './support/history';
import { assertInstalledOnce, faultRequest, FaultSuite, HEARTBEAT_MS, LONG_SEC, MiB } from './support/fault-suite';
import { traversalPids, waitFor, waitForResult } from '../dev/wait';

/** DT_STICKY_TIMEOUT of the workers here, well apart from the SDK's default of 10 s. */
const STICKY_MS = 2000;
/** The SDK's own sticky schedule-to-start timeout, which the worker's setting replaces. */
const SDK_DEFAULT_STICKY_MS = 10_000;

const EventType = temporal.api.enums.v1.EventType;

describe('a worker killed at the edges of a run: inside the launch, between decisions, on every attempt', function () {
  const suite = new FaultSuite('ws');
  const { id, prefix, dir: root, logDir, procs } = suite;
  let apk: ApkInfo & { url: string };
  const agents: AgentSimulator[] = [];

  /** A worker on `taskQueue` whose host is the data folder `host`. */
  const startWorker = async (taskQueue: string, host: string) => {
    const w = await spawnWorker({
      taskQueue,
      redisKeyPrefix: prefix,
      dataDir: path.join(root, host),
      logDir,
      env: {
        DT_HEARTBEAT_TIMEOUT: `${HEARTBEAT_MS}ms`,
        DT_DEVICE_CHECK_INTERVAL: '1s',
        DT_STICKY_TIMEOUT: `${STICKY_MS}ms`,
      },
    });
    procs.push(w);
    return w;
  };
  /**
   * What a test has of its own: task queue `fws-<name>-<id>`, device `fws-<name>` with an agent of
   * its own (every call answered after `latencyMs`), and task `<name>-<id>`.
   */
  const lane = async (name: string, latencyMs = 0) => {
    const deviceId = `fws-${name}`;
    const agent = new AgentSimulator({ devices: [deviceId], latencyMs, coldStartMs: [100, 200] });
    await agent.start();
    agents.push(agent);
    return { taskQueue: `fws-${name}-${id}`, deviceId, taskId: `${name}-${id}`, agent };
  };
  /** Requests the traversal of a lane, `fields` over the suite's defaults. */
  const enqueue = (l: Awaited<ReturnType<typeof lane>>, fields: Partial<TraversalRequest> = {}) =>
    suite.enqueue(
      faultRequest(apk, { taskId: l.taskId, deviceId: l.deviceId, agentUrl: l.agent.url, ...fields }),
      l.taskQueue,
    );
  const workerOf = (identity: string | undefined) => procs.find((w) => w.alive() && identity?.startsWith(`${w.pid}@`));

  before(async function () {
    await suite.start();
    apk = await suite.addApk('faults-steps.apk', 1 * MiB);
  });

  afterEach(async function () {
    await suite.stopProcs(['fws-launch', 'fws-sticky', 'fws-max', 'fws-spawn']);
  });

  after(async function () {
    await Promise.all(agents.map((a) => a.close()));
    await suite.close();
  });

  it('killed during the app launch: a worker on another host launches again after the heartbeat timeout, and the run completes, installed and cleaned once', async function () {
    // Every call to this agent takes 1.5 s, so a launch is in flight long enough to kill its caller in it.
    const launchLane = await lane('launch', 1500);
    const { taskQueue, deviceId, taskId, agent } = launchLane;
    const first = await startWorker(taskQueue, 'launch-a');
    const handle = await enqueue(launchLane, {
      policy: { heartbeatTimeoutMs: HEARTBEAT_MS, initialRetryMs: 200, maxAttempts: 3, measureLaunch: true },
    });
    const launch = await waitFor(() => agent.inFlight(deviceId, 'launch')[0], 60_000, 'a launch call in flight');
    await first.kill('SIGKILL');
    const killedAt = Date.now();
    assert.equal(launch.endedAt, 0, 'the worker died while the agent was still launching');
    // Another host: no journal of the dead worker to fail its attempt early, only the heartbeat timeout.
    const second = await startWorker(taskQueue, 'launch-b');

    const r = await waitForResult(suite.redis, prefix, taskId, deviceId, 90_000);
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    assert.equal(typeof r.coldStartMs, 'number', 'the launch was measured');
    assert.equal(r.traversalAttempt, 1, 'the traversal itself ran once');
    const events = (await handle.fetchHistory()).events ?? [];
    const startedEvent = activityStarts(events, 'measureLaunch').at(-1);
    const started = startedEvent?.activityTaskStartedEventAttributes;
    assert.ok(started && Number(started.attempt) >= 2, `the launch was retried: attempt ${started?.attempt}`);
    assert.ok(started.identity?.startsWith(`${second.pid}@`), `retried on the other worker: ${started.identity}`);
    assert.equal(
      timeoutTypeName(started.lastFailure?.timeoutFailureInfo?.timeoutType),
      'HEARTBEAT',
      `the killed attempt ended by its heartbeat timeout: ${JSON.stringify(started.lastFailure)}`,
    );
    console.log(
      `      launch retried ${((eventMs(startedEvent!) - killedAt) / 1000).toFixed(1)} s after the kill (heartbeat timeout ${HEARTBEAT_MS / 1000} s)`,
    );
    const launches = agent.calls.filter((c) => c.deviceId === deviceId && c.op === 'launch');
    assert.ok(launches.length >= 2, 'the launch was repeated');
    assertInstalledOnce(agent, deviceId);
    assert.deepEqual(agent.installed(deviceId), [], 'nothing left installed');
  });

  it('killed while a workflow it had cached waits for its next decision: the workflow task waits the sticky schedule-to-start timeout (DT_STICKY_TIMEOUT), then another worker takes it', async function () {
    const stickyLane = await lane('sticky');
    const { taskQueue, deviceId, taskId } = stickyLane;
    // One host: the survivor ends the dead worker's jar when its attempt retries.
    const first = await startWorker(taskQueue, 'sticky');
    const handle = await enqueue(stickyLane, { traversal: { durationSec: LONG_SEC, extraArgs: ['--tick-ms', '100'] } });
    const running = await runningAt(handle, deviceId, 5);
    assert.ok(workerOf(running.workerIdentity) === first, 'the first worker runs the traversal');
    // Started now, the survivor has done no start-up sweep of the first worker's journal.
    const survivor = await startWorker(taskQueue, 'sticky');
    // The kill must land between two decisions, not inside one (that waits for the task timeout instead).
    await waitFor(async () => !(await handle.describe()).raw.pendingWorkflowTask, 30_000, 'no workflow task in flight');
    const before = ((await handle.fetchHistory()).events ?? []).length;
    await first.kill('SIGKILL');
    // A decision asked for at once could still be handed to the dead worker's poll before the server
    // drops it (then it waits for the task timeout). Once the attempt's heartbeat timed out, the poll
    // is long gone, and the sticky queue is still the one the server picks (it had a poller 10 s ago).
    await waitFor(
      async () => (await pendingActivity(handle, 'runTraversal'))?.lastFailure?.timeoutType === 'HEARTBEAT',
      30_000,
      'the heartbeat timeout of the dead worker’s attempt',
    );
    // Any new event asks for a decision, which goes to the dead worker's sticky queue.
    await handle.signal(budgetSignal, { extendBySec: 0 });

    const events = await waitFor(
      async () => {
        const after = ((await handle.fetchHistory()).events ?? []).slice(before);
        return after.some((e) => e.workflowTaskStartedEventAttributes?.identity?.startsWith(`${survivor.pid}@`))
          ? after
          : undefined;
      },
      60_000,
      'the survivor to take a decision',
    );
    const trace = events
      .map((e) => `${EventType[e.eventType ?? 0]} ${e.workflowTaskStartedEventAttributes?.identity ?? ''}`)
      .join(', ');
    const sticky = events.find((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED);
    assert.equal(
      sticky?.workflowTaskScheduledEventAttributes?.taskQueue?.kind,
      temporal.api.enums.v1.TaskQueueKind.TASK_QUEUE_KIND_STICKY,
      `the decision first went to the dead worker’s sticky queue: ${trace}`,
    );
    const timedOut = events.find(
      (e) => String(e.workflowTaskTimedOutEventAttributes?.scheduledEventId) === String(sticky!.eventId),
    );
    assert.equal(
      timeoutTypeName(timedOut?.workflowTaskTimedOutEventAttributes?.timeoutType),
      'SCHEDULE_TO_START',
      `it timed out there unstarted: ${trace}`,
    );
    const rest = events.slice(events.indexOf(timedOut!));
    const moved = rest.find((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED);
    assert.equal(
      moved?.workflowTaskScheduledEventAttributes?.taskQueue?.name,
      taskQueue,
      'then it was scheduled on the task queue every worker polls',
    );
    const taken = rest.find((e) => e.workflowTaskStartedEventAttributes);
    assert.ok(
      taken?.workflowTaskStartedEventAttributes?.identity?.startsWith(`${survivor.pid}@`),
      'the survivor took it',
    );
    const waitedMs = eventMs(timedOut!) - eventMs(sticky!);
    console.log(
      `      the decision waited ${(waitedMs / 1000).toFixed(1)} s on the dead worker's sticky queue (DT_STICKY_TIMEOUT ${STICKY_MS / 1000} s)`,
    );
    assert.ok(waitedMs >= STICKY_MS - 50, `not before DT_STICKY_TIMEOUT (${waitedMs} ms)`);
    assert.ok(
      waitedMs < SDK_DEFAULT_STICKY_MS - 3000,
      `DT_STICKY_TIMEOUT, not the SDK's 10 s default, bounds the wait (${waitedMs} ms)`,
    );

    await runningAt(handle, deviceId, 1, 2, Number(running.details?.pid));
    await handle.signal(budgetSignal, { finishNow: true });
    const r = await waitForResult(suite.redis, prefix, taskId, deviceId, 90_000);
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    assert.equal(r.traversalAttempt, 2);
    assert.deepEqual(traversalPids(deviceId), [], 'no traversal process left');
  });

  it('a traversal whose worker is killed on each of its DT_MAX_ATTEMPTS attempts fails as WorkerLost (error.kind infrastructure), and its device is still cleaned', async function () {
    const { taskQueue, deviceId, taskId, agent } = await lane('max');
    const starter = await spawnStarter({
      taskQueue,
      redisKeyPrefix: prefix,
      logDir,
      starterId: `max-${id}`,
      // The default heartbeat timeout: each restarted worker fails the dead one's attempt long before it.
      env: { DT_MAX_ATTEMPTS: '2', DT_HEARTBEAT_TIMEOUT: '30s', DT_MEASURE_LAUNCH: 'false' },
    });
    procs.push(starter);
    let worker = await startWorker(taskQueue, 'max');
    await suite.redis.lpush(
      starterKeys(`max-${id}`, prefix).tasks,
      JSON.stringify({
        taskId,
        deviceId,
        agentUrl: agent.url,
        apkUrl: apk.url,
        apkSha256: apk.sha256,
        packageName: `com.example.max${id}`,
        traversal: { durationSec: LONG_SEC, extraArgs: ['--tick-ms', '100'] },
      }),
    );
    const handle = suite.client.workflow.getHandle(traversalWorkflowId(taskId, deviceId));
    const jars: number[] = [];
    for (const attempt of [1, 2]) {
      const running = await runningAt(handle, deviceId, 5, attempt, jars.at(-1));
      jars.push(Number(running.details?.pid));
      await worker.kill('SIGKILL');
      // Same host: the new worker ends the orphaned jar and fails the dead worker's attempt as WorkerLost.
      worker = await startWorker(taskQueue, 'max');
    }

    // A third attempt would be the retry policy ignoring DT_MAX_ATTEMPTS; stop at it rather than time out.
    const outcome = await waitFor(
      async (): Promise<{ result?: TraversalResult; third?: PendingActivity } | undefined> => {
        const raw = await suite.redis.get(resultKey(taskId, deviceId, prefix));
        if (raw) return { result: JSON.parse(raw) as TraversalResult };
        const a = await pendingActivity(handle, 'runTraversal');
        return a && a.attempt > 2 ? { third: a } : undefined;
      },
      90_000,
      'the result, or a third attempt',
    );
    assert.equal(outcome.third, undefined, `no third attempt: ${JSON.stringify(outcome.third)}`);
    const r = outcome.result!;
    assert.equal(r.status, 'failed');
    assert.equal(r.error?.type, WORKER_LOST, JSON.stringify(r.error));
    assert.equal(r.error?.kind, 'infrastructure');
    assert.equal(r.error?.step, 'runTraversal');
    const started = activityStarts((await handle.fetchHistory()).events ?? [], 'runTraversal').at(
      -1,
    )?.activityTaskStartedEventAttributes;
    assert.equal(Number(started?.attempt), 2, 'the last attempt was the second');
    for (const pid of jars) assert.ok(!pidAlive(pid), `jar ${pid} was ended`);
    assert.deepEqual(traversalPids(deviceId), [], 'no traversal process left');
    const calls = agent.calls.filter((c) => c.deviceId === deviceId);
    assert.equal(calls.filter((c) => c.op === 'uninstall' && c.status === 200).length, 1, 'cleaned once');
    assert.deepEqual(agent.installed(deviceId), [], 'nothing left installed');
  });
  it('a worker killed after it spawned the jar and before it recorded the pid: the next worker on the host finds the jar by its run marker and ends it at start-up', async function () {
    const { taskQueue, deviceId, taskId, agent } = await lane('spawn');
    const dataDir = path.join(root, 'spawn');
    const run = runDir(path.join(dataDir, 'runs'), taskId, deviceId);
    mkdirSync(path.join(run, 'report'), { recursive: true });
    // What such a kill leaves: the record written before the spawn (no pid yet), and the jar itself,
    // started as the runner starts it (own process group, the device and run markers).
    const runId = randomUUID();
    const dead = spawnSync('true').pid;
    mkdirSync(path.join(dataDir, 'pids'), { recursive: true });
    writeFileSync(
      path.join(dataDir, 'pids', `${deviceId}.json`),
      JSON.stringify({
        runId,
        workflowId: traversalWorkflowId(taskId, deviceId),
        startedAt: new Date().toISOString(),
        workerPid: dead,
        workerStart: '1',
      }),
    );
    const jarArgs = [
      ...['-jar', path.join(PROJECT_ROOT, '.tools', 'traversal-sim.jar'), '--device', deviceId, '--agent', agent.url],
      ...['--package', 'com.example.spawn', '--out', path.join(run, 'report'), '--duration', String(LONG_SEC)],
      ...['--tick-ms', '100'],
    ];
    const jar = spawn('java', jarArgs, {
      cwd: run,
      detached: true,
      stdio: 'ignore',
      env: { ...process.env, DT_TRAVERSAL_DEVICE: deviceId, DT_TRAVERSAL_RUN: runId },
    });
    jar.unref();
    await waitFor(() => traversalPids(deviceId).includes(jar.pid!), 10_000, 'the jar to run');

    const worker = await startWorker(taskQueue, 'spawn');
    assert.ok(!pidAlive(jar.pid!), 'the jar is gone when the new worker reports ready');
    const ended = worker
      .logs()
      .find(
        (e) => e.msg === 'ended the traversal process group of a dead worker at start-up' && e.deviceId === deviceId,
      );
    assert.ok(ended, 'the start-up sweep logs the jar it ended');
    assert.equal(ended.childPid, jar.pid);
    assert.equal(ended.taskId, taskId);
    assert.deepEqual(traversalPids(deviceId), [], 'no traversal process left');
  });
});
