/**
 * Two deployments in one Temporal namespace, with the same device ids: each keeps its own device
 * workflows, workers, agents and results. A third one misconfigured with a name already taken is
 * refused with a clear dead letter instead of feeding another deployment's workflow.
 */
import { strict as assert } from 'node:assert';
import { loadConfig } from '../src/config';
import {
  deviceStateQuery,
  deviceWorkflowId,
  enqueueSignal,
  traversalWorkflowId,
  type TraversalRequest,
} from '../src/contract/messages';
import { enqueueSignals } from './support/history';
import { startStack, task, type Stack } from '../dev/stack';
import { waitFor } from '../dev/wait';

/** How many `enqueue` signals a device workflow's history holds. */
const signalCount = async (stack: Stack, workflowId: string): Promise<number> =>
  (await enqueueSignals(stack.client, workflowId)).length;

describe('deployments sharing a Temporal namespace', function () {
  this.timeout(240_000);
  const devices = ['dep-1', 'dep-2'];
  let a: Stack;
  let b: Stack;

  before(async function () {
    const apks = [{ name: 'dep.apk', size: 50_000 }];
    a = await startStack({ devices, apks, starter: true, deployment: 'lab-a' });
    b = await startStack({ devices, apks, starter: true, deployment: 'lab-b' });
  });
  after(async function () {
    await Promise.all([a?.stop(), b?.stop()]);
  });

  it('runs each task in its own deployment: own device workflow, agent and results', async function () {
    for (const s of [a, b]) {
      await s.push(task(s, { taskId: 'same-task', deviceId: 'dep-2', apkUrl: s.apks['dep.apk']!.url }));
    }
    const [ra, rb] = await Promise.all([
      a.waitResult('same-task', 'dep-2', 120_000),
      b.waitResult('same-task', 'dep-2', 120_000),
    ]);
    assert.equal(ra.status, 'completed');
    assert.equal(rb.status, 'completed');
    assert.equal(ra.workflowId, traversalWorkflowId('same-task', 'dep-2', 'lab-a'));
    assert.equal(rb.workflowId, traversalWorkflowId('same-task', 'dep-2', 'lab-b'));
    assert.equal(ra.workflowId, 'lab-a/traversal/same-task/dep-2');
    // Each device workflow got exactly its own deployment's request, on its own task queue.
    for (const [s, name] of [
      [a, 'lab-a'],
      [b, 'lab-b'],
    ] as const) {
      const id = deviceWorkflowId('dep-2', name);
      assert.equal(id, `${name}/device/dep-2`);
      assert.equal((await s.client.workflow.getHandle(id).describe()).taskQueue, s.taskQueue);
      assert.equal(await signalCount(s, id), 1, `${id} was signalled once`);
      // Each deployment's agent installed the app once: nothing crossed over.
      assert.equal(s.agent.stats.installs, 1, `${name}'s agent installed once`);
    }
  });

  it('dead-letters a task whose device workflow belongs to another deployment of the same name', async function () {
    // Misconfigured: B's name again, on a task queue and Redis prefix of its own.
    const c = await startStack({
      devices,
      apks: [{ name: 'dep.apk', size: 50_000 }],
      starter: true,
      deployment: 'lab-b',
    });
    try {
      // B owns the device workflow lab-b/device/dep-2 (the first test made it; alone, this one does).
      const owned = await b.client.workflow
        .getHandle(deviceWorkflowId('dep-2', 'lab-b'))
        .describe()
        .then(
          () => true,
          () => false,
        );
      if (!owned) {
        await b.push(task(b, { taskId: 'b-owns-dep-2', deviceId: 'dep-2', apkUrl: b.apks['dep.apk']!.url }));
        await b.waitResult('b-owns-dep-2', 'dep-2', 120_000);
      }
      const before = await signalCount(b, deviceWorkflowId('dep-2', 'lab-b'));
      await c.push(task(c, { taskId: 'stray', deviceId: 'dep-2', apkUrl: c.apks['dep.apk']!.url }));
      const entry = await waitFor(
        async () => {
          const raw = await c.redis.lindex(c.bridge!.keys.dead, 0);
          return raw ? (JSON.parse(raw) as { reason: string }) : undefined;
        },
        30_000,
        'dead letter',
      );
      assert.match(entry.reason, /device workflow lab-b\/device\/dep-2 belongs to another deployment/);
      assert.match(entry.reason, new RegExp(`task queue ${b.taskQueue}`));
      assert.equal(await signalCount(b, deviceWorkflowId('dep-2', 'lab-b')), before, "B's workflow got no signal");
      assert.equal(await c.redis.llen(c.bridge!.keys.processing), 0, 'the item left the processing list');
    } finally {
      await c.stop();
    }
  });

  it('the device workflow itself ignores a request of another deployment sent around the starter', async function () {
    const id = deviceWorkflowId('dep-1', 'lab-a');
    await a.push(task(a, { taskId: 'warm', deviceId: 'dep-1', apkUrl: a.apks['dep.apk']!.url }));
    await a.waitResult('warm', 'dep-1', 120_000);
    const handle = a.client.workflow.getHandle(id);
    const foreign: TraversalRequest = {
      taskId: 'foreign',
      deviceId: 'dep-1',
      agentUrl: a.agent.url,
      apkUrl: a.apks['dep.apk']!.url,
      packageName: 'com.example.app',
      traversal: { durationSec: 1 },
      deployment: 'lab-b',
    };
    await handle.signal(enqueueSignal, foreign);
    await handle.signal(enqueueSignal, {
      ...foreign,
      taskId: 'foreign-queue',
      deployment: 'lab-a',
      taskQueue: b.taskQueue,
    });
    const state = await waitFor(
      async () => {
        const s = await handle.query(deviceStateQuery);
        // The warm-up's result reaches Redis a moment before its traversal ends (it waits for its publish).
        return s.refused === 2 && s.current === undefined ? s : undefined;
      },
      20_000,
      'both requests refused and the warm-up ended',
    );
    assert.equal(state.queue.length, 0);
    assert.equal(state.current, undefined);
    assert.equal(await a.redis.exists(`${a.prefix}traversal:result:foreign:dep-1`), 0);
  });

  it('keeps the unscoped ids of earlier versions for a deployment without a name', async function () {
    const plain = await startStack({ devices: ['dep-9'], apks: [{ name: 'dep.apk', size: 50_000 }], starter: true });
    try {
      await plain.push(task(plain, { taskId: 'plain', deviceId: 'dep-9', apkUrl: plain.apks['dep.apk']!.url }));
      const r = await plain.waitResult('plain', 'dep-9', 120_000);
      assert.equal(r.workflowId, 'traversal/plain/dep-9');
      assert.equal((await plain.client.workflow.getHandle('device/dep-9').describe()).taskQueue, plain.taskQueue);
    } finally {
      await plain.stop();
    }
  });

  it('takes its name from DT_DEPLOYMENT, else from the key prefix, and refuses one that cannot start an id', function () {
    const name = (env: Record<string, string>) => loadConfig(env).deployment;
    assert.equal(name({ DT_REDIS_KEY_PREFIX: 'lab-a:' }), 'lab-a');
    assert.equal(name({ DT_REDIS_KEY_PREFIX: 'lab-a:', DT_DEPLOYMENT: 'lab-b' }), 'lab-b');
    assert.equal(name({ DT_REDIS_KEY_PREFIX: 'lab-a:', DT_DEPLOYMENT: 'none' }), '');
    assert.equal(name({}), '');
    assert.throws(
      () => name({ DT_REDIS_KEY_PREFIX: 'lab a:' }),
      /DT_REDIS_KEY_PREFIX="lab a:" does not make a deployment name/,
    );
    assert.throws(() => name({ DT_DEPLOYMENT: 'a/b' }), /DT_DEPLOYMENT="a\/b" is invalid/);
  });
});
