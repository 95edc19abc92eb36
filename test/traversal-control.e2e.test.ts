/**
 * Resume, cancellation, delivery modes, the HTTP report sink, starter replay and continue-as-new,
 * on the same real parts as the main end-to-end suite.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import Redis from 'ioredis';
import { deviceWorkflow } from '../src/workflows/device';
import {
  deviceStateQuery,
  deviceWorkflowId,
  enqueueSignal,
  progressQuery,
  traversalWorkflowId,
  type TraversalRequest,
} from '../src/contract/messages';
import { createStarter } from '../src/starter/create';
import { startStack, task, type Stack } from '../dev/stack';
import { childStarts, enqueueSignals, runHistories, waitForEnqueueSignals } from './support/history';
import { waitForDuplicate } from './support/device-tasks';
import { traversalPids, waitFor } from '../dev/wait';

const MiB = 1024 * 1024;

function request(
  stack: Stack,
  fields: Partial<TraversalRequest> & { taskId: string; deviceId: string },
): TraversalRequest {
  return {
    agentUrl: stack.agent.url,
    apkUrl: stack.apks['ctl.apk']!.url,
    packageName: 'com.example.ctl',
    traversal: { durationSec: 1, extraArgs: ['--tick-ms', '100'] },
    policy: { heartbeatTimeoutMs: 10_000, initialRetryMs: 200 },
    ...fields,
  };
}

async function enqueue(stack: Stack, req: TraversalRequest, extra: { historyLimit?: number } = {}): Promise<void> {
  await stack.client.workflow.signalWithStart(deviceWorkflow, {
    workflowId: deviceWorkflowId(req.deviceId),
    taskQueue: stack.taskQueue,
    args: [{ deviceId: req.deviceId, ...extra }],
    signal: enqueueSignal,
    signalArgs: [req],
  });
}

describe('controlling traversals', function () {
  let stack: Stack;
  let devCounter = 0;
  const devices = Array.from({ length: 8 }, (_, i) => `ctl-${i + 1}`);
  const nextDevice = () => devices[devCounter++]!;

  before(async function () {
    stack = await startStack({ devices, apks: [{ name: 'ctl.apk', size: 2 * MiB }] });
  });
  after(async function () {
    await stack?.stop();
  });

  it('a retried traversal resumes from the last checkpoint and does not reinstall the app', async function () {
    const deviceId = nextDevice();
    const req = request(stack, {
      taskId: 'resume',
      deviceId,
      traversal: { durationSec: 3, extraArgs: ['--tick-ms', '100', '--fail-at', '50', '--faults-once', 'fault.once'] },
    });
    await enqueue(stack, req);
    const r = await stack.waitResult('resume', deviceId);
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    assert.equal(r.traversalAttempt, 2, 'second attempt finished');
    assert.ok(Number(r.resumedFrom) > 0, `resumed from checkpoint ${r.resumedFrom}`);
    const log2 = readFileSync(path.join(stack.dataDir, 'runs', 'resume', deviceId, 'attempt-2.log'), 'utf8');
    assert.match(log2, new RegExp(`--resume-from","${r.resumedFrom}"`), 'checkpoint passed in argv');
    assert.match(log2, new RegExp(`RESUMED from=${r.resumedFrom}`), 'the jar confirmed it resumed');
    const summary = JSON.parse(
      readFileSync(path.join(stack.dataDir, 'runs', 'resume', deviceId, 'report', 'summary.json'), 'utf8'),
    );
    assert.equal(String(summary.resumedFrom), r.resumedFrom);
    const installs = stack.agent.calls.filter((c) => c.deviceId === deviceId && c.op === 'install');
    assert.equal(installs.length, 1, 'installed once');
  });

  it('cancelling a running traversal kills its process group, uploads the partial report and still cleans the device', async function () {
    const deviceId = nextDevice();
    await enqueue(
      stack,
      request(stack, { taskId: 'cancel', deviceId, traversal: { durationSec: 120, extraArgs: ['--tick-ms', '100'] } }),
    );
    const handle = stack.client.workflow.getHandle(traversalWorkflowId('cancel', deviceId));
    await waitFor(async () => {
      try {
        const p = await handle.query(progressQuery);
        return p.phase === 'traversing' && p.screens >= 3;
      } catch {
        return false;
      }
    });
    assert.ok(traversalPids(deviceId).length > 0, 'the jar is running');
    const cancelledAt = Date.now();
    await handle.cancel();
    // The kill grace is 2 s; the limit is generous for a busy machine and the figure is printed.
    await waitFor(async () => traversalPids(deviceId).length === 0, 30_000, 'the process group gone');
    console.log(`      (process group gone ${Date.now() - cancelledAt} ms after the cancel)`);
    const r = await stack.waitResult('cancel', deviceId);
    assert.equal(r.status, 'cancelled');
    assert.equal(r.error?.type, 'Cancelled');
    assert.ok(r.reportUrl?.includes('.partial.tar.gz'), `partial report uploaded: ${r.reportUrl}`);
    assert.ok(
      stack.agent.calls.some((c) => c.deviceId === deviceId && c.op === 'uninstall'),
      'cleanup ran',
    );
    // The device takes its next task.
    await enqueue(stack, request(stack, { taskId: 'after-cancel', deviceId }));
    assert.equal((await stack.waitResult('after-cancel', deviceId)).status, 'completed');
  });

  it('direct delivery hands the agent the origin URL and the worker downloads nothing', async function () {
    const deviceId = nextDevice();
    const apk = stack.apks['ctl.apk']!;
    const before = stack.origin.stats('ctl.apk').gets;
    await enqueue(
      stack,
      request(stack, {
        taskId: 'direct',
        deviceId,
        apkSha256: apk.sha256,
        policy: { delivery: 'direct', initialRetryMs: 200 },
      }),
    );
    const r = await stack.waitResult('direct', deviceId);
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    const install = stack.agent.calls.find((c) => c.deviceId === deviceId && c.op === 'install');
    assert.equal(install?.url, apk.url, 'the agent installed from the origin');
    assert.equal(stack.origin.stats('ctl.apk').gets - before, 1, 'one GET: the agent’s own');
  });

  it('a device workflow continues as new between children and keeps its queue and dedupe memory', async function () {
    const deviceId = nextDevice();
    const workflowId = deviceWorkflowId(deviceId);
    for (let i = 1; i <= 4; i++)
      await enqueue(stack, request(stack, { taskId: `can-${i}`, deviceId, traversal: { durationSec: 0 } }), {
        historyLimit: 30,
      });
    for (let i = 1; i <= 4; i++) assert.equal((await stack.waitResult(`can-${i}`, deviceId)).status, 'completed');
    const handle = stack.client.workflow.getHandle(workflowId);
    const desc = await handle.describe();
    assert.notEqual(
      desc.runId,
      desc.raw.workflowExecutionInfo?.firstRunId ?? undefined,
      'the workflow continued as new',
    );
    const firstSignal = (await enqueueSignals(stack.client, workflowId)).find((s) => s.taskId === 'can-1');
    assert.notEqual(firstSignal?.runId, desc.runId, 'can-1 was first received by an earlier run');

    // A task id seen before the roll-over is still ignored after it: the repeat reaches the current
    // run (its signal is in that run's history), the run counts it as a duplicate, and starts no child.
    await enqueue(stack, request(stack, { taskId: 'can-1', deviceId }));
    const [, repeat] = await waitForEnqueueSignals(stack.client, workflowId, 'can-1', 2);
    assert.equal(repeat!.runId, (await handle.describe()).runId, 'the repeat reached the current run');
    await waitForDuplicate(handle, 'the repeat counted as a duplicate');
    // A result reaches Redis just before its traversal ends (it waits for its publish): let can-4 end.
    const state = await waitFor(
      async () => {
        const s = await handle.query(deviceStateQuery);
        return s.completed === 4 ? s : undefined;
      },
      30_000,
      'can-4 counted as done',
    );
    assert.equal(state.duplicates, 1);
    assert.equal(state.completed, 4);
    assert.deepEqual(state.queue, []);
    assert.equal(state.current, undefined);
    const runs = await runHistories(stack.client, workflowId);
    const children = runs.flatMap((r) => childStarts(r.events));
    assert.equal(
      children.filter((id) => id === traversalWorkflowId('can-1', deviceId)).length,
      1,
      'one child for can-1',
    );
    assert.equal(stack.agent.calls.filter((c) => c.deviceId === deviceId && c.op === 'install').length, 4);
  });

  it('a starter replays the items left in its processing list by an earlier run', async function () {
    const deviceId = nextDevice();
    const redis = new Redis(process.env.TEST_REDIS_URL!);
    const blocking = new Redis(process.env.TEST_REDIS_URL!);
    const bridge = createStarter({
      config: { ...stack.config, starterId: 'replayer' },
      client: stack.client,
      redis,
      blocking,
      agents: { agentFor: () => stack.agent.url },
      keyPrefix: stack.prefix,
    });
    // As if a starter died after BLMOVE and before Temporal accepted the item.
    const raw = JSON.stringify(task(stack, { taskId: 'replayed', deviceId, apkUrl: stack.apks['ctl.apk']!.url }));
    await redis.lpush(bridge.keys.processing, raw);
    bridge.start();
    try {
      const r = await stack.waitResult('replayed', deviceId);
      assert.equal(r.status, 'completed');
      assert.equal(bridge.stats.replayed, 1);
      assert.equal(await redis.llen(bridge.keys.processing), 0);
    } finally {
      await bridge.stop();
      redis.disconnect();
      blocking.disconnect();
    }
  });
});

describe('an HTTP report sink', function () {
  let stack: Stack;
  let sink: http.Server;
  const received = new Map<string, { body: Buffer; auth?: string }>();

  before(async function () {
    sink = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        received.set(req.url!, { body: Buffer.concat(chunks), auth: req.headers.authorization });
        res.writeHead(req.method === 'PUT' ? 201 : 405).end();
      });
    });
    await new Promise<void>((r) => sink.listen(0, '127.0.0.1', () => r()));
    const port = (sink.address() as AddressInfo).port;
    stack = await startStack({
      devices: ['put-1'],
      apks: [{ name: 'ctl.apk', size: 1 * MiB }],
      config: { reportSink: `http://127.0.0.1:${port}/reports`, reportSinkToken: 'sink-secret' },
    });
  });
  after(async function () {
    await stack?.stop();
    sink?.close();
  });

  it('receives the report as a streamed tar.gz PUT with the bearer token', async function () {
    await enqueue(stack, request(stack, { taskId: 'put', deviceId: 'put-1' }));
    const r = await stack.waitResult('put', 'put-1');
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    const got = received.get('/reports/put/put-1.tar.gz');
    assert.ok(got, `PUT arrived (got ${[...received.keys()].join(', ')})`);
    assert.equal(got.auth, 'Bearer sink-secret');
    const tar = gunzipSync(got.body).toString('latin1');
    for (const name of ['summary.json', 'index.html', 'screenshots/screen-001.png'])
      assert.ok(tar.includes(name), `archive holds ${name}`);
    assert.equal(r.reportUrl, `${stack.config.reportSink}/put/put-1.tar.gz`);
  });
});
