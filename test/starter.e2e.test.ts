/**
 * The starter's bridge with several items in flight, against the real dev server and Redis. No
 * worker polls the task queue, so the device workflows only record the signals they were sent:
 * their histories show the order in which requests reached each device.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { Client } from '@temporalio/client';
import type Redis from 'ioredis';
import { deviceWorkflowId } from '../src/contract/messages';
import { loadConfig } from '../src/config';
import { createStarter } from '../src/starter/create';
import { connectClients, type Clients } from '../dev/clients';
import { waitFor } from '../dev/wait';
import { terminateAll } from './support/device-tasks';
import { enqueueSignals } from './support/history';

describe('the starter with several items in flight', function () {
  let clients: Clients;
  let client: Client;
  let redis: Redis;
  const id = randomUUID().slice(0, 8);
  const prefix = `st${id}:`;

  before(async () => {
    clients = await connectClients();
    ({ client, redis } = clients);
  });
  after(() => clients?.close());

  it('keeps the order of requests for each device and starts every task once', async function () {
    const devices = ['a', 'b', 'c'].map((d) => `st-${id}-${d}`);
    const pushed = new Map<string, string[]>(devices.map((d) => [d, []]));
    const bridge = createStarter({
      config: loadConfig(
        { DT_ALLOWED_HOSTS: '127.0.0.1' },
        { taskQueue: `tq-nobody-${id}`, starterId: `starter-${id}`, starterConcurrency: 8 },
      ),
      ...clients,
      agents: { agentFor: () => 'http://127.0.0.1:9' },
      keyPrefix: prefix,
    });
    // 60 items, interleaved over three devices, some of them fanned out to two devices.
    for (let i = 0; i < 60; i++) {
      const first = devices[i % 3]!;
      const second = i % 7 === 0 ? devices[(i + 1) % 3]! : undefined;
      const taskId = `t${String(i).padStart(2, '0')}`;
      const targets = second ? [first, second] : [first];
      for (const d of targets) pushed.get(d)!.push(taskId);
      const item = {
        taskId,
        apkUrl: 'http://127.0.0.1:9/app.apk',
        packageName: 'com.example.order',
        traversal: { durationSec: 1 },
        ...(second ? { devices: targets } : { deviceId: first }),
      };
      await redis.lpush(bridge.keys.tasks, JSON.stringify(item));
    }
    bridge.start();
    try {
      const total = [...pushed.values()].reduce((n, l) => n + l.length, 0);
      await waitFor(
        async () =>
          bridge.stats.dead > 0 || (bridge.stats.started === total && (await redis.llen(bridge.keys.processing)) === 0),
        60_000,
        'all started',
      );
      assert.equal(bridge.stats.dead, 0);
      for (const deviceId of devices) {
        const received = (await enqueueSignals(client, deviceWorkflowId(deviceId))).map((s) => s.taskId);
        assert.deepEqual(received, pushed.get(deviceId), `requests for ${deviceId} arrive in push order, each once`);
      }
    } finally {
      await bridge.stop();
      await terminateAll(
        client,
        devices.map((d) => deviceWorkflowId(d)),
        'test over',
      );
    }
  });

  it('a starter built from the configuration sends its run policy, deployment and task queue with every request', async function () {
    const deviceId = `st-${id}-policy`;
    const config = loadConfig(
      {
        DT_ALLOWED_HOSTS: '127.0.0.1',
        DT_HEARTBEAT_TIMEOUT: '45s',
        DT_MAX_ATTEMPTS: '5',
        DT_DELIVERY: 'direct',
        DT_MEASURE_LAUNCH: 'false',
        DT_QUARANTINE_AFTER: '4',
        DT_PUBLISH_RETRY_MAX: '20s',
        DT_DEPLOYMENT: `lab-${id}`,
      },
      { taskQueue: `tq-nobody-${id}`, starterId: `policy-${id}` },
    );
    const bridge = createStarter({
      config,
      ...clients,
      agents: { agentFor: () => 'http://127.0.0.1:9' },
      keyPrefix: prefix,
    });
    const item = {
      taskId: 'policy',
      deviceId,
      apkUrl: 'http://127.0.0.1:9/app.apk',
      packageName: 'com.example.policy',
      traversal: { durationSec: 1 },
    };
    await redis.lpush(bridge.keys.tasks, JSON.stringify(item));
    bridge.start();
    const handle = client.workflow.getHandle(deviceWorkflowId(deviceId, config.deployment));
    try {
      await waitFor(() => bridge.stats.started + bridge.stats.dead > 0, 60_000, 'the request to be sent');
      assert.equal(bridge.stats.dead, 0);
      const [signal] = await enqueueSignals(client, handle.workflowId);
      assert.ok(signal, 'an enqueue signal');
      const req = signal.request;
      assert.deepEqual(req.policy, {
        heartbeatTimeoutMs: 45_000,
        maxAttempts: 5,
        delivery: 'direct',
        measureLaunch: false,
        quarantineAfter: 4,
        publishRetryMaxMs: 20_000,
      });
      assert.equal(req.deployment, `lab-${id}`);
      assert.equal(req.taskQueue, `tq-nobody-${id}`);
    } finally {
      await bridge.stop();
      await handle.terminate('test over').catch(() => undefined);
    }
  });
});
