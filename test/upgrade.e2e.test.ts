/**
 * Upgrading the workers while a traversal of hours runs (docs/DEPLOYMENT.md, "Upgrading"): the run
 * starts on a version 1 worker; a version 2 worker, whose workflow code changed behind `patched()`
 * (test/support/workflows-v2.ts), starts beside it; version 1 is stopped with SIGTERM, as a rolling
 * upgrade does. The run goes on on version 2 from its last checkpoint and finishes there. Real
 * worker processes, the suite's Temporal dev server and Redis, the agent simulator, the traversal jar.
 */
import assert from 'node:assert/strict';
import { bundleWorkflowCode, DefaultLogger } from '@temporalio/worker';
import { temporal } from '@temporalio/proto';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { testServers } from '../dev/clients';
import { findTemporalCli } from '../dev/temporal-dev';
import path from 'node:path';
import { budgetSignal, type TraversalResult } from '../src/contract/messages';
import { AgentSimulator } from '../sim/agent-sim';
import { pendingActivity, spawnWorker, type Proc } from './support/procs';
import { faultRequest, FaultSuite, HEARTBEAT_MS, LONG_SEC, MiB } from './support/fault-suite';
import { V2_PATCH } from './support/workflows-v2';
import { waitFor, waitForResult } from '../dev/wait';

const run = promisify(execFile);

describe('an upgrade while a long traversal runs: it finishes on the new version from its checkpoint', function () {
  const suite = new FaultSuite('up');
  const { taskQueue, prefix, logDir, dir } = suite;
  let agent: AgentSimulator;

  const startWorker = async (env: Record<string, string> = {}): Promise<Proc> => {
    const w = await spawnWorker({
      taskQueue,
      redisKeyPrefix: prefix,
      dataDir: path.join(dir, 'data'),
      logDir,
      env: { DT_HEARTBEAT_TIMEOUT: `${HEARTBEAT_MS}ms`, DT_STICKY_TIMEOUT: '2s', ...env },
    });
    suite.procs.push(w);
    return w;
  };

  before(async function () {
    await suite.start();
    agent = new AgentSimulator({ devices: ['up-1', 'up-2'], coldStartMs: [50, 100] });
    await agent.start();
  });

  after(async function () {
    await suite.stopProcs(['up-1', 'up-2']);
    await agent?.close();
    await suite.close();
  });

  /**
   * The run on version 1, version 2 beside it, version 1 stopped; `versioned`: both are builds of one
   * Worker Deployment, and version 2 is made current before version 1 stops.
   */
  async function upgradeMidRun(taskId: string, deviceId: string, versioned?: { deployment: string }) {
    await suite.stopProcs(); // no worker of an earlier test on the queue
    const apk = await suite.addApk(`upgrade-${taskId}.apk`, 2 * MiB);
    const v2Bundle = path.join(dir, 'workflows-v2.js');
    const built = await bundleWorkflowCode({
      workflowsPath: require.resolve('./support/workflows-v2'),
      logger: new DefaultLogger('WARN'),
    });
    writeFileSync(v2Bundle, built.code);

    const deploymentEnv = (buildId: string): Record<string, string> =>
      versioned ? { DT_WORKER_DEPLOYMENT: versioned.deployment, DT_BUILD_ID: buildId } : {};
    const v1 = await startWorker(deploymentEnv('v1'));
    if (versioned) await setCurrentVersion(versioned.deployment, 'v1');
    const handle = await suite.enqueue(
      faultRequest(apk, {
        taskId,
        deviceId,
        agentUrl: agent.url,
        traversal: { durationSec: LONG_SEC, extraArgs: ['--tick-ms', '100'] },
      }),
    );
    await waitFor(
      async () => Number((await pendingActivity(handle, 'runTraversal'))?.details?.screens ?? 0) >= 5,
      60_000,
      'the traversal past its fifth screen on version 1',
    );
    const onV1 = await pendingActivity(handle, 'runTraversal');
    assert.ok(onV1?.workerIdentity?.startsWith(`${v1.pid}@`), `running on version 1 (${onV1?.workerIdentity})`);

    // The rolling upgrade: version 2 beside it, then version 1 stopped the way a deploy stops it.
    const v2 = await startWorker({ DT_WORKFLOW_BUNDLE: v2Bundle, ...deploymentEnv('v2') });
    if (versioned) await setCurrentVersion(versioned.deployment, 'v2');
    const stoppedAt = Date.now();
    await v1.stop();
    const v1StoppedMs = Date.now() - stoppedAt;
    let resumedAt = 0;
    let checkpointBefore = '';
    await waitFor(
      async () => {
        const a = await pendingActivity(handle, 'runTraversal');
        checkpointBefore ||= String(onV1?.details?.checkpoint ?? '');
        if (a?.started && a.workerIdentity?.startsWith(`${v2.pid}@`) && a.details?.checkpoint !== undefined)
          resumedAt = Date.now();
        return resumedAt > 0;
      },
      90_000,
      'the traversal running on version 2',
    );
    await handle.signal(budgetSignal, { finishNow: true });
    const out = (await handle.result()) as TraversalResult & { finishedBy?: string };
    const published = await waitForResult(suite.redis, prefix, taskId, deviceId, 30_000);
    assert.equal(out.status, 'completed', JSON.stringify(out.error));
    assert.equal(out.finishedBy, 'version 2', 'the changed workflow code finished the run');
    assert.ok(out.resumedFrom, 'resumed from a checkpoint, not from zero');
    assert.ok(Number(out.resumedFrom) > 0, `resumed past the start (${out.resumedFrom})`);
    assert.ok(out.screens >= Number(onV1?.details?.screens ?? 0), 'kept the screens of version 1');
    assert.equal(published.status, 'completed');
    const history = await handle.fetchHistory();
    // A patch marker carries {"id": <patch id>, …} as a JSON payload among its details.
    const markers = (history.events ?? []).filter(
      (e) =>
        e.eventType === temporal.api.enums.v1.EventType.EVENT_TYPE_MARKER_RECORDED &&
        Object.values(e.markerRecordedEventAttributes?.details ?? {}).some((d) =>
          (d.payloads ?? []).some((p) =>
            Buffer.from(p.data ?? [])
              .toString('utf8')
              .includes(`"id":"${V2_PATCH}"`),
          ),
        ),
    );
    assert.equal(markers.length, 1, 'the history records version 2 patch marker once');
    console.log(
      `      upgrade${versioned ? ' (Worker Deployment versioning)' : ''}: version 1 stopped in ${(v1StoppedMs / 1000).toFixed(1)} s; the traversal ran again on version 2 ` +
        `${((resumedAt - stoppedAt) / 1000).toFixed(1)} s after the stop began, from checkpoint ${out.resumedFrom} ` +
        `(attempt ${out.traversalAttempt}); ${history.events?.length} history events in all`,
    );
  }

  it('version 1 stopped mid-run, version 2 (a changed workflow) resumes it from its checkpoint', async function () {
    await upgradeMidRun('upgrade', 'up-1');
  });

  it('with Worker Deployment versioning: version 2 made current, version 1 stopped, the run finishes on version 2', async function () {
    await upgradeMidRun('upgrade-versioned', 'up-2', { deployment: `dt-up-${suite.id}` });
  });
});

/** `temporal worker deployment set-current-version`, as an operator runs it (retried while the version registers). */
async function setCurrentVersion(deployment: string, buildId: string): Promise<void> {
  const args = [
    'worker',
    'deployment',
    'set-current-version',
    '--address',
    testServers().address,
    '--deployment-name',
    deployment,
    '--build-id',
    buildId,
    '--yes',
  ];
  await waitFor(
    async () => {
      await run(findTemporalCli(), args);
      return true;
    },
    60_000,
    `${deployment} ${buildId} current`,
  );
}
