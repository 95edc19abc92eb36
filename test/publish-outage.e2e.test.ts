/**
 * Results survive a Redis that refuses writes for longer than the old give-up window, and the device
 * does not wait for Redis: the whole stack (worker and starter) runs on a Redis of its own that is
 * made unwritable (`maxmemory` 1 byte with `noeviction`) while two tasks finish on one device.
 */
import { strict as assert } from 'node:assert';
import Redis from 'ioredis';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WorkflowExecutionStatusName } from '@temporalio/client';
import { createResultPublisherActivities } from '../src/activities/result-publisher';
import { resultKey, resultsStream } from '../src/contract/redis-keys';
import { freePort } from '../src/net/ports';
import { startRedis, type LocalRedis } from '../dev/redis-local';
import { publishWorkflowId, traversalWorkflowId, type TraversalResult } from '../src/contract/messages';
import { Metrics } from '../src/metrics';
import { TRAVERSAL_PHASE } from '../src/contract/search-attributes';
import { startStack, task, type Stack } from '../dev/stack';
import { waitFor } from '../dev/wait';

/** First retry delay in this test: the old code gave up after 10 attempts, 50 ms × (2⁹ − 1) ≈ 25.6 s. */
const INITIAL_RETRY_MS = 50;
const OLD_GIVE_UP_MS = INITIAL_RETRY_MS * (2 ** 9 - 1);

/** A redis-server of the test's own (its memory limit is changed), in a folder removed by `stop`. */
async function ownRedis(): Promise<LocalRedis> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dt-publish-'));
  const local = await startRedis({ port: await freePort(), dir });
  return {
    ...local,
    async stop() {
      await local.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

describe('publishing while Redis refuses writes', function () {
  this.timeout(240_000);
  let local: LocalRedis;
  let stack: Stack;

  before(async function () {
    local = await ownRedis();
    stack = await startStack({
      devices: ['pub-1'],
      apks: [{ name: 'publish.apk', size: 100_000 }],
      starter: true,
      redisUrl: local.url,
      policy: { initialRetryMs: INITIAL_RETRY_MS, publishRetryMaxMs: 2000 },
    });
  });
  after(async function () {
    await stack?.redis.config('SET', 'maxmemory', '0').catch(() => undefined);
    await stack?.stop();
    await local?.stop();
  });

  it('frees the device at once and publishes both results once Redis takes writes again', async function () {
    const { client, redis, prefix } = stack;
    const device = 'pub-1';
    const apkUrl = stack.apks['publish.apk']!.url;
    for (const [taskId, durationSec] of [
      ['pub-a', 2],
      ['pub-b', 1],
    ] as const)
      await stack.push(
        task(stack, { taskId, deviceId: device, apkUrl, traversal: { durationSec, extraArgs: ['--tick-ms', '100'] } }),
      );
    // Both tasks are in Temporal (the starter's lists are empty) before Redis stops taking writes.
    await waitFor(
      async () =>
        (await redis.llen(stack.bridge!.keys.tasks)) + (await redis.llen(stack.bridge!.keys.processing)) === 0,
      30_000,
      'tasks handed to Temporal',
    );
    await redis.config('SET', 'maxmemory-policy', 'noeviction');
    await redis.config('SET', 'maxmemory', '1');
    await assert.rejects(redis.set(`${prefix}probe`, 'x'), /OOM/, 'Redis refuses writes');

    const a = client.workflow.getHandle(traversalWorkflowId('pub-a', device));
    const b = client.workflow.getHandle(traversalWorkflowId('pub-b', device));
    const resultA = await waitFor(() => a.result() as Promise<TraversalResult>, 120_000, 'traversal A finished');
    const resultB = await waitFor(() => b.result() as Promise<TraversalResult>, 60_000, 'traversal B finished');
    assert.equal(resultA.status, 'completed');
    assert.equal(resultB.status, 'completed');
    // A's result was final (device cleaned) at finishedAt. B started right after that, not after A's
    // publishing gave up: the old code held the device for those ≈ 25.6 s.
    const aFinished = Date.parse(resultA.finishedAt);
    const aClosed = (await a.describe()).closeTime!.getTime();
    const bStarted = (await b.describe()).startTime.getTime();
    // The old code held the device ≈ 25.6 s; the bound is generous for a busy machine, the figure is printed below.
    assert.ok(aClosed - aFinished < 15_000, `A's workflow ended ${aClosed - aFinished} ms after its result was final`);
    assert.ok(bStarted - aFinished < 15_000, `B started ${bStarted - aFinished} ms after A's result was final`);

    // Both publish workflows are running and say they wait for Redis; the worker's gauge counts them.
    const pubA = client.workflow.getHandle(publishWorkflowId('pub-a', device));
    const pubB = client.workflow.getHandle(publishWorkflowId('pub-b', device));
    for (const h of [pubA, pubB]) {
      await waitFor(
        async () => (await h.describe()).typedSearchAttributes.get(TRAVERSAL_PHASE) === 'waiting-for-redis',
        20_000,
        `${h.workflowId} waiting for Redis`,
      );
    }
    assert.ok(
      stack.worker.metrics.publishFailures.get({ reason: 'OOM' }) >= 10,
      'failed attempts counted by Redis error',
    );
    assert.equal(stack.worker.metrics.resultsWaiting.size(), 2);
    assert.match(stack.worker.metrics.render(), /^dt_results_waiting_for_redis 2$/m);

    // Keep Redis unwritable for longer than the old give-up window, counted from A's end.
    const holdUntil = aClosed + OLD_GIVE_UP_MS + 5_000;
    while (Date.now() < holdUntil) await new Promise((r) => setTimeout(r, 500));
    for (const h of [pubA, pubB])
      assert.equal((await h.describe()).status.name, 'RUNNING' satisfies WorkflowExecutionStatusName);
    assert.equal(await redis.exists(resultKey('pub-a', device, prefix), resultKey('pub-b', device, prefix)), 0);

    await redis.config('SET', 'maxmemory', '0');
    const t0 = Date.now();
    for (const h of [pubA, pubB]) await waitFor(() => h.result().then(() => true), 30_000, `${h.workflowId} done`);
    const publishedMs = Date.now() - t0;
    assert.ok(publishedMs < 25_000, `results published ${publishedMs} ms after Redis came back (retry cap 2 s)`);
    console.log(
      `      B started ${((bStarted - aFinished) / 1000).toFixed(1)} s after A's result was final; Redis refused writes for ` +
        `${((Date.now() - publishedMs - aFinished) / 1000).toFixed(0)} s after it; both results published ${(publishedMs / 1000).toFixed(1)} s after Redis came back`,
    );
    for (const [id, r] of [
      ['pub-a', resultA],
      ['pub-b', resultB],
    ] as const) {
      const stored = JSON.parse((await redis.get(resultKey(id, device, prefix)))!) as TraversalResult;
      assert.equal(stored.runId, r.runId);
      assert.equal(stored.status, 'completed');
    }
    const events = await redis.xrange(resultsStream(prefix), '-', '+');
    const kinds = events.map(
      ([, fields]) => `${fields[fields.indexOf('event') + 1]} ${fields[fields.indexOf('taskId') + 1]}`,
    );
    // One event per result, and one per task whose last device finished.
    assert.deepEqual(
      kinds.sort(),
      ['result pub-a', 'result pub-b', 'task-finished pub-a', 'task-finished pub-b'],
      'one stream event per result and per finished task',
    );
    assert.equal((await pubA.describe()).typedSearchAttributes.get(TRAVERSAL_PHASE), 'published');
    assert.equal(stack.worker.metrics.resultsWaiting.size(), 0);
  });
});

describe('publishResult writes the key and the event together, once per run', function () {
  let local: LocalRedis;
  let redis: Redis;
  before(async function () {
    local = await ownRedis();
    redis = new Redis(local.url);
  });
  after(async function () {
    redis?.disconnect();
    await local?.stop();
  });

  const result = (runId: string) =>
    ({ taskId: 'pt', deviceId: 'pd', status: 'completed', runId, workflowId: 'traversal/pt/pd' }) as TraversalResult;

  it('writes nothing when the stream key has the wrong type, and everything once it is fixed', async function () {
    const metrics = new Metrics();
    const { publishResult } = createResultPublisherActivities({ redis, keyPrefix: 'w:', metrics });
    await redis.set(resultsStream('w:'), 'not a stream');
    await assert.rejects(
      publishResult(result('run-1')),
      /WRONGTYPE w:traversal:results holds a string, not a stream; nothing was written/,
    );
    assert.equal(await redis.exists(resultKey('pt', 'pd', 'w:')), 0, 'no result key without its event');
    assert.equal(metrics.resultsWaiting.size(), 1);
    await redis.del(resultsStream('w:'));
    const first = await publishResult(result('run-1'));
    assert.ok(first.streamId);
    assert.equal(metrics.resultsWaiting.size(), 0);
    assert.equal(JSON.parse((await redis.get(first.key))!).runId, 'run-1');
    assert.equal(await redis.xlen(resultsStream('w:')), 1);
  });

  it('does not add a second event when a retry publishes the same run again', async function () {
    const { publishResult } = createResultPublisherActivities({ redis, keyPrefix: 'i:' });
    const first = await publishResult(result('run-7'));
    const again = await publishResult(result('run-7'));
    assert.ok(first.streamId);
    assert.equal(again.streamId, null);
    assert.equal(await redis.xlen(resultsStream('i:')), 1);
    // Another run of the same task and device (a rerun) is a new event.
    assert.ok((await publishResult(result('run-8'))).streamId);
    assert.equal(await redis.xlen(resultsStream('i:')), 2);
  });

  it('writes neither key nor event while Redis is out of memory', async function () {
    const { publishResult } = createResultPublisherActivities({ redis, keyPrefix: 'o:' });
    await redis.config('SET', 'maxmemory-policy', 'noeviction');
    await redis.config('SET', 'maxmemory', '1');
    try {
      await assert.rejects(publishResult(result('run-9')), /OOM/);
    } finally {
      await redis.config('SET', 'maxmemory', '0');
    }
    assert.equal(await redis.exists(resultKey('pt', 'pd', 'o:'), resultsStream('o:')), 0);
  });
});
