/**
 * Fault injection: a traversal jar that hangs, on a host that then loses Temporal. Two real
 * `src/worker.ts` processes stand for two hosts, each with its own data folder: worker A reaches
 * Temporal through a TCP proxy the test cuts once the jar hangs, so the retry can only land on
 * worker B, and A never hears of it. Only A can then end the hung jar, as B's sweeps read B's data
 * folder, which never held A's run record; and on A the watchdog (`TraversalHung`) must do it before
 * the SDK's own cancel of the silent attempt would.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { runDir } from '../src/activities/traversal/run';
import { AgentSimulator } from '../sim/agent-sim';
import type { ApkInfo } from '../sim/origin';
import { pidAlive, spawnWorker, TcpProxy } from './support/procs';
import { activityStarts } from './support/history';
import { faultRequest, FaultSuite, HEARTBEAT_MS, MiB } from './support/fault-suite';
import { traversalPids, waitFor, waitForResult } from '../dev/wait';

describe('a hung jar on a host cut off from Temporal', function () {
  const suite = new FaultSuite('hang');
  const { taskQueue, prefix, dir: base, logDir } = suite;
  const dataA = path.join(base, 'host-a');
  const dataB = path.join(base, 'host-b');
  const deviceId = 'hang-1';
  let agent: AgentSimulator;
  let apk: ApkInfo & { url: string };
  let proxy: TcpProxy;

  const startWorker = async (dataDir: string, temporalAddress: string) => {
    const w = await spawnWorker({
      temporalAddress,
      taskQueue,
      redisKeyPrefix: prefix,
      dataDir,
      logDir,
      // One report sink for both hosts, as a deployment has; workflows cached on a lost host move on after 1 s.
      env: { DT_REPORT_SINK: `file://${path.join(base, 'sink')}`, DT_STICKY_TIMEOUT: '1s' },
    });
    suite.procs.push(w);
    return w;
  };

  before(async function () {
    await suite.start();
    apk = await suite.addApk('faults-hang.apk', 1 * MiB);
    agent = new AgentSimulator({ devices: [deviceId], coldStartMs: [100, 200] });
    await agent.start();
    const [host, port] = process.env.TEST_TEMPORAL_ADDRESS!.split(':') as [string, string];
    proxy = new TcpProxy(host, Number(port));
    await proxy.start();
  });

  after(async function () {
    proxy?.unblock();
    await suite.stopProcs();
    await proxy?.close();
    await agent?.close();
    await suite.close();
  });

  it('the host’s watchdog ends the hung jar (TraversalHung: log line and metric) while the retry resumes on another host', async function () {
    const workerA = await startWorker(dataA, `127.0.0.1:${proxy.port}`);
    const req = faultRequest(apk, {
      taskId: 'hang',
      deviceId,
      agentUrl: agent.url,
      // The jar stops printing at 30 % and sleeps until killed; `hang.once` in its run folder disarms that.
      traversal: { durationSec: 3, extraArgs: ['--tick-ms', '100', '--hang-at', '30', '--faults-once', 'hang.once'] },
    });
    const handle = await suite.enqueue(req);

    // The marker is written the moment the hang starts.
    const markerA = path.join(runDir(path.join(dataA, 'runs'), req.taskId, deviceId), 'hang.once');
    await waitFor(() => existsSync(markerA), 60_000, 'the jar on host A to hang');
    const [hungPid] = traversalPids(deviceId);
    assert.ok(hungPid, 'the hung jar runs');
    proxy.block();

    // On host B the fault counts as fired already (it fires once per task, not once per host).
    const runB = runDir(path.join(dataB, 'runs'), req.taskId, deviceId);
    mkdirSync(runB, { recursive: true });
    writeFileSync(path.join(runB, 'hang.once'), '');
    const workerB = await startWorker(dataB, process.env.TEST_TEMPORAL_ADDRESS!);

    const r = await waitForResult(suite.redis, prefix, req.taskId, deviceId, 120_000);
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    assert.equal(r.traversalAttempt, 2);
    assert.ok(Number(r.resumedFrom) > 0, `resumed from ${r.resumedFrom}`);

    // Attempt 2 ran on B, after the server's heartbeat timeout (A's own report never got through).
    const events = (await handle.fetchHistory()).events ?? [];
    const started = activityStarts(events, 'runTraversal').map((e) => e.activityTaskStartedEventAttributes!);
    assert.deepEqual(
      started.map((s) => [s.attempt, s.identity?.split('@')[0]]),
      [[2, String(workerB.pid)]],
      'the retry ran on host B',
    );
    assert.ok(started[0]!.lastFailure?.timeoutFailureInfo, 'attempt 1 ended by the heartbeat timeout');

    await waitFor(() => !pidAlive(hungPid), 60_000, `the hung jar (pid ${hungPid}) to end`);
    assert.deepEqual(traversalPids(deviceId), []);

    const line = await workerA.waitForLog(/printed no progress within the heartbeat timeout/, 10_000, {
      childPid: hungPid,
    });
    assert.ok(Number(line.silentMs) > HEARTBEAT_MS, `silent for ${String(line.silentMs)} ms`);
    console.log(
      `      the watchdog ended the jar after ${String(line.silentMs)} ms of silence (heartbeat timeout ${HEARTBEAT_MS} ms)`,
    );
    // The SDK would end it too, by cancelling the silent attempt 5 s after the heartbeat timeout (4 s
    // after the watchdog); the jar must be gone before that, so the cancel found nothing to stop.
    assert.deepEqual(
      workerA.logs().filter((e) => /cancelled; stopping its process group/.test(String(e.msg))),
      [],
      'the hung jar was not left to the SDK’s cancel',
    );
    const ready = workerA.logs().find((e) => e.msg === 'worker started');
    const metrics = await (await fetch(`${String(ready?.artifactServer)}/metrics`)).text();
    assert.match(metrics, /^dt_traversals_total\{outcome="hung"\} 1$/m);
    assert.doesNotMatch(metrics, /^dt_traversals_total\{outcome="(cancelled|failed|device-offline)"\}/m);
    assert.equal(
      workerB.logs().filter((e) => /stale traversal process/.test(String(e.msg))).length,
      0,
      'host B ended no stale jar',
    );
  });
});
