/**
 * Fault injection, part 2: trouble with devices, agents and the traversal tool — errors and
 * timeouts from the agent, a phone dropping off mid-run, a failing jar — and device quarantine.
 * The worker runs in this process; agent, origin and `java` are real. A hanging jar is
 * faults-agent-hang.test.ts; the error kinds one by one are faults-agent-kinds.test.ts.
 */
import { requestTraversal } from '../src/starter/task-bridge';
import assert from 'node:assert/strict';
import type { WorkflowHandle } from '@temporalio/client';
import {
  deviceStateQuery,
  deviceWorkflowId,
  progressQuery,
  resumeSignal,
  traversalWorkflowId,
  type TraversalRequest,
} from '../src/contract/messages';
import { DEVICE_HEALTH } from '../src/contract/search-attributes';
import { pidAlive } from './support/procs';
import { traversalPids, waitFor } from '../dev/wait';
import { startStack, type Stack } from '../dev/stack';

const MiB = 1024 * 1024;

describe('agent, device and tool trouble', function () {
  let stack: Stack;
  const devices = ['ag-5xx', 'ag-off', 'ag-perm', 'ag-tool', 'q-bad', 'q-good'];

  before(async function () {
    stack = await startStack({
      devices,
      apks: [{ name: 'faults-agent.apk', size: 1 * MiB }],
      config: { agentTimeoutMs: 1500, deviceCheckMs: 500 },
    });
  });
  after(async function () {
    await stack?.stop();
  });

  function request(fields: Partial<TraversalRequest> & { taskId: string; deviceId: string }): TraversalRequest {
    return {
      agentUrl: stack.agent.url,
      apkUrl: stack.apks['faults-agent.apk']!.url,
      packageName: `com.example.${fields.taskId.replace(/\W/g, '')}`,
      traversal: { durationSec: 1, extraArgs: ['--tick-ms', '100'] },
      policy: { heartbeatTimeoutMs: 3000, initialRetryMs: 500, maxAttempts: 3, measureLaunch: false },
      ...fields,
    };
  }
  async function enqueue(req: TraversalRequest): Promise<WorkflowHandle> {
    await requestTraversal(stack.client, stack.taskQueue, req);
    return stack.client.workflow.getHandle(traversalWorkflowId(req.taskId, req.deviceId));
  }
  const failures = (activity: string, type: string) => stack.worker.metrics.failures.get({ activity, type });

  it('5xx answers and timeouts are retried with backoff as infrastructure failures; crashes found are findings, not errors', async function () {
    const deviceId = 'ag-5xx';
    stack.agent.failNext(deviceId, 'install', 500, 2);
    // Every call answers after 2.5 s, beyond the 1.5 s agent timeout, until the first timeout is seen.
    stack.agent.setLatency(2500);
    try {
      await enqueue(
        request({
          taskId: 'flaky',
          deviceId,
          traversal: { durationSec: 1, extraArgs: ['--tick-ms', '100', '--crashes', '2', '--anrs', '1'] },
        }),
      );
      await waitFor(() => failures('prepareDevice', 'AgentUnavailable') >= 1, 60_000, 'an agent timeout');
    } finally {
      stack.agent.setLatency(0);
    }

    const r = await stack.waitResult('flaky', deviceId);
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    assert.equal(r.error, undefined);
    assert.equal(r.crashes, 2, 'crashes of the app are counted as findings');
    assert.equal(r.anrs, 1);
    assert.equal(failures('installApp', 'AgentUnavailable'), 2, 'both 500s were retried');
    const installs = stack.agent.calls.filter((c) => c.deviceId === deviceId && c.op === 'install');
    assert.deepEqual(
      installs.map((c) => c.status),
      [500, 500, 200],
    );
    const gap1 = installs[1]!.startedAt - installs[0]!.endedAt;
    const gap2 = installs[2]!.startedAt - installs[1]!.endedAt;
    assert.ok(gap1 >= 450 && gap2 >= 950, `retry delays grow: ${Math.round(gap1)} ms, then ${Math.round(gap2)} ms`);
  });

  it('a device that goes offline mid-run fails the attempt as DeviceOffline; the retry resumes from the checkpoint', async function () {
    const deviceId = 'ag-off';
    const handle = await enqueue(
      request({ taskId: 'offline', deviceId, traversal: { durationSec: 4, extraArgs: ['--tick-ms', '100'] } }),
    );
    await waitFor(async () => (await handle.query(progressQuery)).percent >= 25, 60_000, 'the traversal to run');
    const [javaPid] = traversalPids(deviceId);
    assert.ok(javaPid, 'the jar runs');
    // The next device check finds the phone offline (503) and the one after finds it back, so the
    // retry's own check at its start passes however late it runs.
    stack.agent.failNext(deviceId, 'status', 503, 1);
    await waitFor(() => failures('runTraversal', 'DeviceOffline') >= 1, 60_000, 'the attempt to fail as DeviceOffline');
    assert.ok(!pidAlive(javaPid), 'the jar of the failed attempt was stopped');

    const r = await stack.waitResult('offline', deviceId);
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    assert.equal(r.traversalAttempt, 2);
    assert.ok(Number(r.resumedFrom) > 0, `resumed from ${r.resumedFrom}`);
  });

  it('permanent errors are not retried; bad tasks and a failing tool are told apart from infrastructure in the result', async function () {
    stack.agent.failNext('ag-perm', 'install', 422, 1);
    await enqueue(request({ taskId: 'rejected', deviceId: 'ag-perm' }));
    await enqueue(
      request({
        taskId: 'tool',
        deviceId: 'ag-tool',
        traversal: { durationSec: 1, extraArgs: ['--tick-ms', '50', '--fail-at', '20', '--exit-code', '4'] },
      }),
    );
    const [rejected, tool] = await Promise.all([
      stack.waitResult('rejected', 'ag-perm'),
      stack.waitResult('tool', 'ag-tool'),
    ]);
    assert.equal(rejected.status, 'failed');
    assert.deepEqual(
      [rejected.error?.type, rejected.error?.kind, rejected.error?.step],
      ['InstallRejected', 'task', 'installApp'],
    );
    assert.equal(
      stack.agent.calls.filter((c) => c.deviceId === 'ag-perm' && c.op === 'install').length,
      1,
      'not retried',
    );
    assert.deepEqual([tool.error?.type, tool.error?.kind], ['TraversalExit', 'tool']);
    for (const d of ['ag-perm', 'ag-tool']) assert.deepEqual(stack.agent.installed(d), [], `${d} cleaned`);
  });

  it('after repeated infrastructure failures a device is quarantined until resumed; other devices carry on', async function () {
    const bad = 'q-bad';
    stack.agent.setOffline(bad, true);
    const policy = {
      heartbeatTimeoutMs: 3000,
      initialRetryMs: 100,
      maxAttempts: 3,
      measureLaunch: false,
      quarantineAfter: 2,
    };
    for (const taskId of ['q1', 'q2', 'q3']) await enqueue(request({ taskId, deviceId: bad, policy }));
    const device = stack.client.workflow.getHandle(deviceWorkflowId(bad));
    const [r1, r2] = [await stack.waitResult('q1', bad), await stack.waitResult('q2', bad)];
    for (const r of [r1, r2])
      assert.deepEqual([r.status, r.error?.type, r.error?.kind], ['failed', 'DeviceOffline', 'infrastructure']);

    await waitFor(
      async () => (await device.query(deviceStateQuery)).quarantine !== undefined,
      30_000,
      'the quarantine',
    );
    const state = await device.query(deviceStateQuery);
    assert.match(state.quarantine!.reason, /2 infrastructure failures in a row, last DeviceOffline/);
    assert.deepEqual(
      state.queue.map((q) => q.taskId),
      ['q3'],
      'the next task waits',
    );
    assert.equal((await device.describe()).typedSearchAttributes.get(DEVICE_HEALTH), 'quarantined');

    // Another device is not held up.
    await enqueue(request({ taskId: 'q-other', deviceId: 'q-good' }));
    assert.equal((await stack.waitResult('q-other', 'q-good')).status, 'completed');
    assert.equal(
      await stack.redis.get(`${stack.prefix}traversal:result:q3:${bad}`),
      null,
      'nothing ran on the quarantined device',
    );

    stack.agent.setOffline(bad, false);
    await device.signal(resumeSignal);
    assert.equal((await stack.waitResult('q3', bad)).status, 'completed');
    const after = await device.query(deviceStateQuery);
    assert.equal(after.quarantine, undefined);
    assert.equal(after.infraFailuresInRow, 0);
    assert.equal((await device.describe()).typedSearchAttributes.get(DEVICE_HEALTH), 'ok');
  });
});
