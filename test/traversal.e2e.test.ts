/**
 * End to end on real parts: Temporal dev server, Redis, the APK origin and device agent simulator
 * (real HTTP servers) and the traversal simulator jar run by `java`.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { WorkflowFailedError } from '@temporalio/client';
import { ActivityFailure, ApplicationFailure } from '@temporalio/common';
import { startStack, task, type Stack } from '../dev/stack';
import { deviceStateQuery, deviceWorkflowId, traversalWorkflowId } from '../src/contract/messages';
import { waitFor } from '../dev/wait';
import { childStarts, runHistories, waitForEnqueueSignals } from './support/history';
import { waitForDuplicate } from './support/device-tasks';

const MiB = 1024 * 1024;

describe('a traversal end to end', function () {
  let stack: Stack;
  const devices = ['sim-1', 'sim-2', 'sim-3', 'sim-4', 'sim-5'];

  before(async function () {
    stack = await startStack({
      devices,
      apks: [
        { name: 'app-a.apk', size: 24 * MiB },
        { name: 'app-b.apk', size: 3 * MiB },
      ],
      starter: true,
    });
  });
  after(async function () {
    await stack?.stop();
  });

  it('five devices on one APK: one origin download, installs by URL, five reports and five results', async function () {
    const apk = stack.apks['app-a.apk']!;
    await stack.push(task(stack, { taskId: 'five', devices, apkUrl: apk.url, apkSha256: apk.sha256 }));
    const results = await Promise.all(devices.map((d) => stack.waitResult('five', d)));
    for (const r of results) {
      assert.equal(r.status, 'completed', JSON.stringify(r.error));
      assert.ok(r.screens > 0, 'the traversal saw screens');
      assert.ok(r.reportUrl?.startsWith('file://'), 'report in the file sink');
      assert.ok(existsSync(fileURLToPath(r.reportUrl!)), `report file ${r.reportUrl} exists`);
      assert.equal(r.apk?.sha256, apk.sha256);
    }
    const originStats = stack.origin.stats('app-a.apk');
    assert.equal(originStats.gets, 1, 'the origin served the APK exactly once');
    assert.equal(originStats.bytesServed, apk.size);
    const installs = stack.agent.calls.filter((c) => c.op === 'install' && c.status === 200);
    assert.equal(installs.length, 5);
    for (const c of installs)
      assert.ok(c.url?.startsWith(stack.worker.artifactUrl), `installed from the cache URL: ${c.url}`);
    assert.equal(stack.agent.calls.filter((c) => c.op === 'install-multipart').length, 0, 'no multipart upload');
    assert.equal(stack.agent.stats.uploadedBytes, 0, 'the worker posted no APK bytes');
    // Results stream got one event per device.
    const events = await stack.redis.xrange(`${stack.prefix}traversal:results`, '-', '+');
    const five = events.filter(([, f]) => f[1] === 'five');
    assert.equal(five.length, 5);
  });

  it('two tasks for one device run one after the other, never overlapping', async function () {
    const apk = stack.apks['app-b.apk']!;
    await stack.push(
      task(stack, { taskId: 'seq-1', deviceId: 'sim-1', apkUrl: apk.url, packageName: 'com.example.one' }),
    );
    await stack.push(
      task(stack, { taskId: 'seq-2', deviceId: 'sim-1', apkUrl: apk.url, packageName: 'com.example.two' }),
    );
    const [a, b] = await Promise.all([stack.waitResult('seq-1', 'sim-1'), stack.waitResult('seq-2', 'sim-1')]);
    assert.equal(a.status, 'completed');
    assert.equal(b.status, 'completed');
    // The whole of the first traversal (install to cleanup) ends before the second one starts.
    assert.ok(Date.parse(a.finishedAt) <= Date.parse(b.startedAt), `${a.finishedAt} <= ${b.startedAt}`);
    const calls = stack.agent.calls
      .filter((c) => c.deviceId === 'sim-1' && c.status !== 409)
      .sort((x, y) => x.startedAt - y.startedAt);
    for (let i = 1; i < calls.length; i++) {
      assert.ok(calls[i]!.startedAt >= calls[i - 1]!.endedAt, 'agent calls on one device never overlap');
    }
    const lastOfOne = Math.max(...calls.filter((c) => c.packageName === 'com.example.one').map((c) => c.endedAt));
    const firstOfTwo = Math.min(...calls.filter((c) => c.packageName === 'com.example.two').map((c) => c.startedAt));
    assert.ok(lastOfOne <= firstOfTwo, 'every call for the second app comes after the first app is done');
  });

  it('a task sent twice (same taskId) runs once', async function () {
    const apk = stack.apks['app-b.apk']!;
    const t = task(stack, { taskId: 'twice', deviceId: 'sim-2', apkUrl: apk.url, packageName: 'com.example.twice' });
    await stack.push(t);
    await stack.push(t);
    const r = await stack.waitResult('twice', 'sim-2');
    assert.equal(r.status, 'completed');
    // Both copies reached the device workflow (the starter bridged each), and it ignored the second.
    const workflowId = deviceWorkflowId('sim-2');
    const copies = await waitForEnqueueSignals(stack.client, workflowId, 'twice', 2);
    assert.equal(copies.length, 2, 'two enqueue signals for the task');
    const handle = stack.client.workflow.getHandle(workflowId);
    await waitForDuplicate(handle, 'the second copy counted as a duplicate');
    // The result reaches Redis a moment before its traversal ends (it waits for its publish).
    const state = await waitFor(
      async () => {
        const s = await handle.query(deviceStateQuery);
        return s.current === undefined ? s : undefined;
      },
      30_000,
      'the traversal ended',
    );
    assert.equal(state.duplicates, 1);
    assert.deepEqual(state.queue, []);
    const children = (await runHistories(stack.client, workflowId)).flatMap((run) => childStarts(run.events));
    assert.equal(
      children.filter((id) => id === traversalWorkflowId('twice', 'sim-2')).length,
      1,
      'one traversal child',
    );
    const installs = stack.agent.calls.filter((c) => c.op === 'install' && c.packageName === 'com.example.twice');
    assert.equal(installs.length, 1);
  });

  it('an APK URL answering 404 fails as ApkNotFound without retrying, still cleans the device and records the error', async function () {
    const url = stack.origin.url('app-b.apk').replace('app-b.apk', 'missing.apk');
    await stack.push(task(stack, { taskId: 'nf', deviceId: 'sim-3', apkUrl: url, packageName: 'com.example.missing' }));
    const r = await stack.waitResult('nf', 'sim-3');
    assert.equal(r.status, 'failed');
    assert.equal(r.error?.type, 'ApkNotFound');
    assert.match(r.error!.message, /404/);
    const cleanup = stack.agent.calls.filter(
      (c) => c.deviceId === 'sim-3' && c.op === 'uninstall' && c.packageName === 'com.example.missing',
    );
    assert.equal(cleanup.length, 1, 'cleanup ran');
    const handle = stack.client.workflow.getHandle(traversalWorkflowId('nf', 'sim-3'));
    const err = await handle.result().then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(err instanceof WorkflowFailedError);
    assert.ok(err.cause instanceof ApplicationFailure && err.cause.type === 'ApkNotFound');
    const activityFailure = err.cause.cause;
    assert.ok(activityFailure instanceof ActivityFailure);
    assert.ok(activityFailure.cause instanceof ApplicationFailure && activityFailure.cause.type === 'ApkNotFound');
    // Not retried: one attempt in the history.
    const history = await handle.fetchHistory();
    const scheduled = history.events!.filter(
      (e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'resolveApk',
    );
    const started = history.events!.filter((e) => e.activityTaskStartedEventAttributes);
    assert.equal(scheduled.length, 1);
    const resolveStarted = started.find(
      (e) => Number(e.activityTaskStartedEventAttributes!.scheduledEventId) === Number(scheduled[0]!.eventId),
    );
    assert.equal(resolveStarted?.activityTaskStartedEventAttributes?.attempt, 1);
  });

  it('a sha256 mismatch is a non-retryable failure naming the expected and actual hash', async function () {
    const apk = stack.apks['app-b.apk']!;
    const wrong = 'ab'.repeat(32);
    await stack.push(
      task(stack, {
        taskId: 'hash',
        deviceId: 'sim-4',
        apkUrl: apk.url,
        apkSha256: wrong,
        packageName: 'com.example.hash',
      }),
    );
    const r = await stack.waitResult('hash', 'sim-4');
    assert.equal(r.status, 'failed');
    assert.equal(r.error?.type, 'ApkHashMismatch');
    assert.equal(r.error?.nonRetryable, true);
    assert.ok(r.error!.message.includes(wrong), 'names the expected hash');
    assert.ok(r.error!.message.includes(apk.sha256), 'names the actual hash');
    // Not retried: resolveApk was scheduled once and ran once.
    const history = await stack.client.workflow.getHandle(traversalWorkflowId('hash', 'sim-4')).fetchHistory();
    const scheduled = history.events!.filter(
      (e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'resolveApk',
    );
    assert.equal(scheduled.length, 1);
    const started = history.events!.find(
      (e) => Number(e.activityTaskStartedEventAttributes?.scheduledEventId) === Number(scheduled[0]!.eventId),
    );
    assert.equal(started?.activityTaskStartedEventAttributes?.attempt, 1);
  });

  it('a jar exiting non-zero is retried by policy, then recorded as failed with the exit code and stderr tail', async function () {
    const apk = stack.apks['app-b.apk']!;
    await stack.push(
      task(stack, {
        taskId: 'exit',
        deviceId: 'sim-5',
        apkUrl: apk.url,
        packageName: 'com.example.exit',
        traversal: { durationSec: 1, extraArgs: ['--tick-ms', '50', '--fail-at', '30', '--exit-code', '7'] },
      }),
    );
    const r = await stack.waitResult('exit', 'sim-5');
    assert.equal(r.status, 'failed');
    assert.equal(r.error?.type, 'TraversalExit');
    assert.match(r.error!.message, /exit code 7/);
    assert.match(r.error!.message, /fatal: simulated traversal failure/);
    const history = await stack.client.workflow.getHandle(traversalWorkflowId('exit', 'sim-5')).fetchHistory();
    const failedAttempt = history.events!.find((e) => e.activityTaskFailedEventAttributes);
    const startedRun = history
      .events!.filter((e) => e.activityTaskStartedEventAttributes)
      .map((e) => e.activityTaskStartedEventAttributes!.attempt);
    assert.ok(failedAttempt);
    assert.equal(Math.max(...startedRun.map(Number)), stack.config.maxAttempts, 'retried up to maxAttempts');
    assert.ok(
      stack.agent.calls.some(
        (c) => c.deviceId === 'sim-5' && c.op === 'uninstall' && c.packageName === 'com.example.exit',
      ),
    );
  });

  it('a malformed task lands in the dead-letter list with its reason and the starter goes on', async function () {
    await stack.push('{"taskId": "broken", ');
    await stack.push(
      JSON.stringify({
        taskId: 'no-url',
        deviceId: 'sim-1',
        packageName: 'com.example.x',
        traversal: { durationSec: 1 },
      }),
    );
    const apk = stack.apks['app-b.apk']!;
    await stack.push(
      task(stack, { taskId: 'after-bad', deviceId: 'sim-1', apkUrl: apk.url, packageName: 'com.example.after' }),
    );
    const r = await stack.waitResult('after-bad', 'sim-1');
    assert.equal(r.status, 'completed');
    const dead = (await stack.redis.lrange(`${stack.prefix}traversal:tasks:dead`, 0, -1)).map((x) => JSON.parse(x));
    const broken = dead.find((d) => d.payload === '{"taskId": "broken", ');
    assert.ok(broken, 'the truncated JSON is dead-lettered with its original payload');
    assert.match(broken.reason, /not JSON/);
    const noUrl = dead.find((d) => d.payload.includes('no-url'));
    assert.match(noUrl.reason, /apkUrl/);
    assert.equal(await stack.redis.llen(stack.bridge!.keys.processing), 0, 'nothing left in processing');
  });
});
