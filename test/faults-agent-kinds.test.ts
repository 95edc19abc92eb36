/**
 * Fault injection, part 3: how agent and device trouble is named. An agent nobody listens on, a
 * device held busy by another client (409), a device the agent does not serve (404), a run an
 * operator cancels with the `temporal` CLI and a traversal step that times out, each checked in the
 * published result's `error` and in the activity failures of the workflow history; and which of
 * them quarantine a device. The worker runs in this process; agent, origin, `java` and the CLI are real.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import net from 'node:net';
import { promisify } from 'node:util';
import type { WorkflowHandle } from '@temporalio/client';
import { findTemporalCli } from '../dev/temporal-dev';
import {
  deviceStateQuery,
  deviceWorkflowId,
  progressQuery,
  traversalWorkflowId,
  type RunPolicy,
  type TraversalRequest,
} from '../src/contract/messages';
import { DEVICE_HEALTH } from '../src/contract/search-attributes';
import { requestTraversal } from '../src/starter/task-bridge';
import { pidAlive } from './support/procs';
import { traversalPids, waitFor } from '../dev/wait';
import { startStack, type Stack } from '../dev/stack';

const MiB = 1024 * 1024;
/** Time between the watchdog's TERM and KILL; a frozen jar (SIGSTOP) holds its attempt this long. */
const KILL_GRACE_MS = 15_000;

/** An activity failure as the workflow history records it (only an activity's last attempt is recorded). */
interface RecordedFailure {
  activity: string;
  /** ApplicationFailure type, or `Timeout:<type>` for a timeout. */
  type: string;
  attempt: number;
  nonRetryable?: boolean;
}

/** The error code a TCP connection to a port of 127.0.0.1 fails with (undefined when it connects). */
function connectError(port: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(undefined);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code));
  });
}

/** The failed and timed-out activities in a workflow's history, in order. */
async function recordedFailures(handle: WorkflowHandle): Promise<RecordedFailure[]> {
  const history = await handle.fetchHistory();
  const activityOf = new Map<string, string>();
  const attemptOf = new Map<string, number>();
  const out: RecordedFailure[] = [];
  for (const e of history.events ?? []) {
    const id = String(e.eventId);
    const scheduled = e.activityTaskScheduledEventAttributes;
    if (scheduled) activityOf.set(id, scheduled.activityType?.name ?? '');
    const started = e.activityTaskStartedEventAttributes;
    if (started) attemptOf.set(id, started.attempt ?? 1);
    const failed = e.activityTaskFailedEventAttributes;
    if (failed) {
      out.push({
        activity: activityOf.get(String(failed.scheduledEventId)) ?? '?',
        type: failed.failure?.applicationFailureInfo?.type ?? '?',
        attempt: attemptOf.get(String(failed.startedEventId)) ?? 0,
        nonRetryable: failed.failure?.applicationFailureInfo?.nonRetryable ?? undefined,
      });
    }
    const timedOut = e.activityTaskTimedOutEventAttributes;
    if (timedOut) {
      out.push({
        activity: activityOf.get(String(timedOut.scheduledEventId)) ?? '?',
        type: `Timeout:${String(timedOut.failure?.timeoutFailureInfo?.timeoutType)}`,
        attempt: attemptOf.get(String(timedOut.startedEventId)) ?? 0,
      });
    }
  }
  return out;
}

describe('agent and device trouble is named in the result, and device faults quarantine', function () {
  let stack: Stack;
  const devices = ['k-busy', 'k-cancel', 'k-timeout', 'k-down'];

  before(async function () {
    stack = await startStack({
      devices,
      apks: [{ name: 'faults-kinds.apk', size: 1 * MiB }],
      config: { killGraceMs: KILL_GRACE_MS },
    });
  });
  after(async function () {
    await stack?.stop();
  });

  function request(
    fields: Partial<TraversalRequest> & { taskId: string; deviceId: string; policy?: Partial<RunPolicy> },
  ): TraversalRequest {
    return {
      agentUrl: stack.agent.url,
      apkUrl: stack.apks['faults-kinds.apk']!.url,
      packageName: `com.example.${fields.taskId.replace(/\W/g, '')}`,
      traversal: { durationSec: 1, extraArgs: ['--tick-ms', '100'] },
      ...fields,
      policy: {
        heartbeatTimeoutMs: 3000,
        initialRetryMs: 100,
        maxAttempts: 3,
        measureLaunch: false,
        ...fields.policy,
      },
    };
  }
  async function enqueue(req: TraversalRequest): Promise<WorkflowHandle> {
    await requestTraversal(stack.client, stack.taskQueue, req);
    return stack.client.workflow.getHandle(traversalWorkflowId(req.taskId, req.deviceId));
  }
  /** Waits for the result of `taskId` on `deviceId` and checks how it ended: status, error type, kind and step. */
  async function endedAs(taskId: string, deviceId: string, ended: [string, string, string, string]) {
    const r = await stack.waitResult(taskId, deviceId);
    assert.deepEqual([r.status, r.error?.type, r.error?.kind, r.error?.step], ended, JSON.stringify(r.error));
    return r;
  }
  const traversals = (outcome: string) => stack.worker.metrics.traversals.get({ outcome });
  /** Waits for the device's quarantine and returns the device state. */
  async function quarantined(deviceId: string) {
    const device = stack.client.workflow.getHandle(deviceWorkflowId(deviceId));
    const state = await waitFor(
      async () => {
        const s = await device.query(deviceStateQuery);
        return s.quarantine ? s : undefined;
      },
      30_000,
      `the quarantine of ${deviceId}`,
    );
    assert.equal((await device.describe()).typedSearchAttributes.get(DEVICE_HEALTH), 'quarantined');
    return state;
  }

  it('an agent nobody listens on: each run fails as AgentUnavailable after its retries, and two in a row quarantine the device', async function () {
    const deviceId = 'k-down';
    // Port 1: privileged, outside the range ports are handed out from, so no test server takes it.
    const agentUrl = 'http://127.0.0.1:1';
    assert.equal(await connectError(1), 'ECONNREFUSED', 'nothing listens on port 1');
    const policy = { quarantineAfter: 2 };
    const first = await enqueue(request({ taskId: 'down-1', deviceId, agentUrl, policy }));
    await enqueue(request({ taskId: 'down-2', deviceId, agentUrl, policy }));

    const r = await endedAs('down-1', deviceId, ['failed', 'AgentUnavailable', 'infrastructure', 'prepareDevice']);
    assert.match(r.error!.message, /ECONNREFUSED/);
    assert.deepEqual(
      (await recordedFailures(first)).filter((f) => f.activity === 'prepareDevice').map((f) => [f.type, f.attempt]),
      [['AgentUnavailable', 5]],
      'retried up to the agent steps’ five attempts',
    );

    const state = await quarantined(deviceId);
    assert.match(state.quarantine!.reason, /^2 infrastructure failures in a row, last AgentUnavailable/);
    assert.deepEqual(
      state.quarantine!.failures.map((f) => [f.taskId, f.type]),
      [
        ['down-1', 'AgentUnavailable'],
        ['down-2', 'AgentUnavailable'],
      ],
    );
  });

  it('a device another client holds (409): each run fails as DeviceBusy after its retries, and two in a row quarantine the device', async function () {
    const deviceId = 'k-busy';
    stack.agent.setBusy(deviceId, 'install');
    try {
      const policy = { quarantineAfter: 2 };
      const first = await enqueue(request({ taskId: 'busy-1', deviceId, policy }));
      await enqueue(request({ taskId: 'busy-2', deviceId, policy }));

      await endedAs('busy-1', deviceId, ['failed', 'DeviceBusy', 'infrastructure', 'prepareDevice']);
      assert.deepEqual(
        (await recordedFailures(first)).filter((f) => f.activity === 'prepareDevice').map((f) => [f.type, f.attempt]),
        [['DeviceBusy', 5]],
      );
      const resets = stack.agent.calls.filter((c) => c.deviceId === deviceId && c.op === 'reset');
      assert.ok(resets.length >= 5 && resets.every((c) => c.status === 409), 'the agent answered 409 every time');

      const state = await quarantined(deviceId);
      assert.match(state.quarantine!.reason, /^2 infrastructure failures in a row, last DeviceBusy/);
      assert.deepEqual(
        state.quarantine!.failures.map((f) => f.taskId),
        ['busy-1', 'busy-2'],
      );
    } finally {
      stack.agent.setBusy(deviceId, false);
    }
  });

  it('a device the agent does not serve (404) fails the run as UnknownDevice at once, a task error that does not count against the device', async function () {
    const deviceId = 'k-ghost'; // not one of the simulator's devices
    const handle = await enqueue(request({ taskId: 'ghost', deviceId }));
    await endedAs('ghost', deviceId, ['failed', 'UnknownDevice', 'task', 'prepareDevice']);
    assert.deepEqual(
      (await recordedFailures(handle)).filter((f) => f.activity === 'prepareDevice'),
      [{ activity: 'prepareDevice', type: 'UnknownDevice', attempt: 1, nonRetryable: true }],
      'not retried',
    );
    // One status call from locateDevice (an agent that does not know the phone names no host, so the
    // steps stay on the shared queue), one from prepareDevice, which is not retried.
    assert.deepEqual(
      stack.agent.calls.filter((c) => c.deviceId === deviceId && c.op === 'status').map((c) => c.status),
      [404, 404],
    );
    const device = stack.client.workflow.getHandle(deviceWorkflowId(deviceId));
    const state = await waitFor(
      async () => {
        const s = await device.query(deviceStateQuery);
        return s.completed >= 1 ? s : undefined;
      },
      30_000,
      'the device workflow to finish the task',
    );
    assert.equal(state.quarantine, undefined);
    assert.equal(state.infraFailuresInRow, 0);
  });

  it('a run cancelled with `temporal workflow cancel` publishes error.kind cancelled, its jar ended and its device cleaned', async function () {
    const deviceId = 'k-cancel';
    const cancelledBefore = traversals('cancelled');
    const req = request({
      taskId: 'cancel',
      deviceId,
      traversal: { durationSec: 120, extraArgs: ['--tick-ms', '100'] },
    });
    const handle = await enqueue(req);
    await waitFor(async () => (await handle.query(progressQuery)).percent >= 2, 60_000, 'the traversal to run');
    const [jarPid] = traversalPids(deviceId);
    assert.ok(jarPid, 'the jar runs');
    assert.deepEqual(stack.agent.installed(deviceId), [req.packageName]);

    // As the README's Operating section says an operator cancels a run.
    await promisify(execFile)(
      process.env.TEST_TEMPORAL_CLI || findTemporalCli(),
      [
        'workflow',
        'cancel',
        '-w',
        traversalWorkflowId('cancel', deviceId),
        '--address',
        process.env.TEST_TEMPORAL_ADDRESS!,
        '--namespace',
        'default',
      ],
      { timeout: 60_000 },
    );

    await endedAs('cancel', deviceId, ['cancelled', 'Cancelled', 'cancelled', 'runTraversal']);
    assert.ok(!pidAlive(jarPid), 'the jar was ended');
    assert.deepEqual(traversalPids(deviceId), []);
    assert.deepEqual(stack.agent.installed(deviceId), [], 'the app was uninstalled');
    assert.ok(
      stack.agent.calls.some((c) => c.deviceId === deviceId && c.op === 'uninstall' && c.status === 200),
      'the device was cleaned',
    );
    assert.equal(traversals('cancelled') - cancelledBefore, 1);
  });

  it('a traversal step that times out (a frozen jar sends no heartbeat) fails as a timeout and quarantines the device; the worker counts the jar as hung', async function () {
    const deviceId = 'k-timeout';
    const hungBefore = traversals('hung');
    const cancelledBefore = traversals('cancelled');
    const outcomes = () => traversals('hung') + traversals('cancelled');
    const outcomesBefore = outcomes();
    // One attempt, and the worker's own watchdog reports the frozen jar only after KILL_GRACE_MS:
    // the server's heartbeat timeout is the failure recorded, whatever the machine's load.
    const handle = await enqueue(
      request({
        taskId: 'frozen',
        deviceId,
        traversal: { durationSec: 60, extraArgs: ['--tick-ms', '100'] },
        policy: { maxAttempts: 1, quarantineAfter: 1 },
      }),
    );
    await waitFor(async () => (await handle.query(progressQuery)).percent >= 2, 60_000, 'the traversal to run');
    const [jarPid] = traversalPids(deviceId);
    assert.ok(jarPid, 'the jar runs');
    process.kill(-jarPid, 'SIGSTOP');
    try {
      const r = await stack.waitResult('frozen', deviceId);
      assert.equal(r.status, 'failed');
      assert.match(r.error!.type, /^Timeout/, JSON.stringify(r.error));
      assert.deepEqual([r.error?.kind, r.error?.step], ['infrastructure', 'runTraversal']);
      assert.deepEqual(
        (await recordedFailures(handle)).map((f) => [f.activity, f.type.startsWith('Timeout')]),
        [['runTraversal', true]],
      );

      const state = await quarantined(deviceId);
      assert.match(state.quarantine!.reason, /^1 infrastructure failures in a row, last Timeout/);
      assert.deepEqual(
        state.quarantine!.failures.map((f) => f.taskId),
        ['frozen'],
      );
    } catch (err) {
      if (pidAlive(jarPid)) process.kill(-jarPid, 'SIGCONT');
      throw err;
    }
    // The watchdog's TERM waits while the jar is stopped. The SDK cancels the silent attempt later
    // (heartbeat timeout plus 5 s) and the cancel sends CONT, so the jar takes the TERM then; the run
    // still counts as hung, as the watchdog found it first.
    await waitFor(() => !pidAlive(jarPid), 60_000, 'the frozen jar to end');
    await waitFor(() => outcomes() > outcomesBefore, 30_000, 'the attempt to be counted');
    assert.deepEqual(
      [traversals('hung') - hungBefore, traversals('cancelled') - cancelledBefore],
      [1, 0],
      'counted as hung, not cancelled',
    );
  });
});
