/**
 * Fault injection, part 3: the services around the workers — starters killed mid-task, the
 * Temporal dev server killed and restarted on its database file, Redis killed and restarted with
 * its append-only file. Starters and workers are real processes; server and Redis are this
 * suite's own, so killing them leaves the other suites alone.
 */
import { requestTraversal } from '../src/starter/task-bridge';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client, Connection, WorkflowNotFoundError } from '@temporalio/client';
import Redis from 'ioredis';
import path from 'node:path';
import { freePort } from '../src/net/ports';
import { startRedis, type LocalRedis } from '../dev/redis-local';
import { startDevServer, type DevServer } from '../dev/temporal-dev';
import { resultKey } from '../src/contract/redis-keys';
import {
  budgetSignal,
  deviceWorkflowId,
  publishWorkflowId,
  traversalWorkflowId,
  type TraversalRequest,
  type TraversalResult,
} from '../src/contract/messages';
import { AgentSimulator } from '../sim/agent-sim';
import { starterKeys } from '../src/contract/redis-keys';
import { devServerOnFile, pendingActivity, spawnStarter, spawnWorker, TcpProxy, type Proc } from './support/procs';
import { enqueueSignals } from './support/history';
import { FaultSuite, MiB } from './support/fault-suite';
import { waitFor, waitForResult } from '../dev/wait';
import { startStack, type Stack } from '../dev/stack';

describe('starters killed: every task is started exactly once', function () {
  let stack: Stack;
  let logDir: string;
  const procs: Proc[] = [];
  const devices = ['st-1', 'st-2', 'st-3', 'st-4'];

  before(async function () {
    stack = await startStack({ devices, apks: [{ name: 'faults-st.apk', size: 1 * MiB }] });
    logDir = path.join(stack.dataDir, 'logs');
  });
  after(async function () {
    await Promise.all(procs.map((p) => p.stop()));
    await stack?.stop();
  });

  const starter = async (starterId: string, temporalAddress = process.env.TEST_TEMPORAL_ADDRESS!) => {
    const p = await spawnStarter({
      temporalAddress,
      taskQueue: stack.taskQueue,
      redisKeyPrefix: stack.prefix,
      logDir,
      starterId,
      env: { DT_MEASURE_LAUNCH: 'false', DT_HEARTBEAT_TIMEOUT: '5s' },
    });
    procs.push(p);
    return p;
  };
  const task = (taskId: string, deviceId: string) => ({
    taskId,
    deviceId,
    agentUrl: stack.agent.url,
    apkUrl: stack.apks['faults-st.apk']!.url,
    packageName: `com.example.${taskId.replace(/\W/g, '')}`,
    traversal: { durationSec: 1, extraArgs: ['--tick-ms', '50'] },
  });

  it('a starter killed after taking a task and before Temporal accepted it starts that task exactly once after its restart', async function () {
    const proxy = new TcpProxy('127.0.0.1', Number(process.env.TEST_TEMPORAL_ADDRESS!.split(':')[1]));
    const viaProxy = await proxy.start();
    try {
      const first = await starter('crashy', viaProxy);
      proxy.block(); // Temporal unreachable: the starter takes the task but cannot hand it over
      await stack.push(task('s-once', 'st-1'));
      const processing = starterKeys('crashy', stack.prefix).processing;
      await waitFor(async () => (await stack.redis.llen(processing)) === 1, 10_000, 'the task in the processing list');
      // Killed while it is handing the task over: its request to Temporal has timed out at least once.
      await first.waitForLog('Temporal did not accept the request; retrying', 60_000, { taskId: 's-once' });
      await first.kill('SIGKILL');
      await assert.rejects(
        stack.client.workflow.getHandle(deviceWorkflowId('st-1')).describe(),
        WorkflowNotFoundError,
        'Temporal never got it',
      );

      proxy.unblock();
      const second = await starter('crashy');
      const r = await stack.waitResult('s-once', 'st-1');
      assert.equal(r.status, 'completed', JSON.stringify(r.error));
      await second.waitForLog('traversal requested', 5_000, { taskId: 's-once' });
      assert.equal(await stack.redis.llen(processing), 0);
      const signals = await enqueueSignals(stack.client, deviceWorkflowId('st-1'));
      assert.deepEqual(
        signals.map((x) => x.taskId),
        ['s-once'],
        'one enqueue signal, after the restart',
      );
      assert.equal(
        stack.agent.calls.filter((c) => c.op === 'install' && c.packageName === 'com.example.sonce').length,
        1,
      );
    } finally {
      await proxy.close();
    }
  });

  /** Stops the starters earlier tests left running, so a test's starters are the only consumers. */
  const stopStarters = () => Promise.all(procs.map((p) => p.stop()));
  /** The starter process (by pid) each `enqueue` signal of the given tasks came from. */
  const senders = async (tasks: { taskId: string; deviceId: string }[]) => {
    const out = new Map<string, number[]>(tasks.map((t) => [t.taskId, []]));
    for (const d of new Set(tasks.map((t) => t.deviceId)))
      for (const s of await enqueueSignals(stack.client, deviceWorkflowId(d)))
        out.get(s.taskId)?.push(Number(s.identity.split('@')[0]));
    return out;
  };

  it('two starters on one queue: each task goes to exactly one starter (one enqueue signal per task in the device history)', async function () {
    await stopStarters();
    const [a, b] = [await starter('one-a'), await starter('one-b')];
    const tasks = Array.from({ length: 16 }, (_, i) => task(`s-one-${i}`, devices[i % devices.length]!));
    await stack.redis.lpush(starterKeys('one-a', stack.prefix).tasks, ...tasks.map((t) => JSON.stringify(t)));
    const results = await Promise.all(tasks.map((t) => stack.waitResult(t.taskId, t.deviceId)));
    for (const r of results) assert.equal(r.status, 'completed', `${r.taskId}: ${JSON.stringify(r.error)}`);
    const byTask = await senders(tasks);
    for (const [taskId, pids] of byTask) {
      assert.equal(pids.length, 1, `${taskId}: one enqueue signal (from ${pids.join(', ')})`);
      assert.ok([a.pid, b.pid].includes(pids[0]!), `${taskId} was sent by one of the two starters`);
    }
    const fromA = [...byTask.values()].filter((p) => p[0] === a.pid).length;
    console.log(`      16 tasks: ${fromA} sent by one starter, ${16 - fromA} by the other`);
    for (const t of tasks) {
      const installs = stack.agent.calls.filter((c) => c.op === 'install' && c.packageName === t.packageName);
      assert.equal(installs.length, 1, `${t.taskId} ran once`);
    }
    await stopStarters();
  });

  it('two starters on one queue, one of them killed and restarted mid-stream: every task is started exactly once, only by one starter id', async function () {
    await stopStarters();
    const ids = ['pair-a', 'pair-b'];
    const [a, b] = [await starter(ids[0]!), await starter(ids[1]!)];
    const tasks = Array.from({ length: 16 }, (_, i) => task(`s-pair-${i}`, devices[i % devices.length]!));
    await stack.redis.lpush(starterKeys(ids[0]!, stack.prefix).tasks, ...tasks.map((t) => JSON.stringify(t)));
    await a!.waitForLog('traversal requested', 10_000);
    await a!.kill('SIGKILL');
    const a2 = await starter(ids[0]!);

    const results = await Promise.all(tasks.map((t) => stack.waitResult(t.taskId, t.deviceId)));
    for (const r of results) assert.equal(r.status, 'completed', `${r.taskId}: ${JSON.stringify(r.error)}`);
    for (const t of tasks) {
      const installs = stack.agent.calls.filter((c) => c.op === 'install' && c.packageName === t.packageName);
      assert.equal(installs.length, 1, `${t.taskId} ran once`);
    }
    for (const id of ids)
      assert.equal(await stack.redis.llen(starterKeys(id, stack.prefix).processing), 0, `${id} has nothing left`);
    // The restarted pair-a may signal again what its killed run had sent (README: a task Temporal
    // accepted may be signalled twice; the device workflow ignores the repeat). Never both starters.
    let signals = 0;
    for (const [taskId, pids] of await senders(tasks)) {
      signals += pids.length;
      const sentByA = pids.every((p) => p === a.pid || p === a2.pid);
      const sentByB = pids.every((p) => p === b.pid);
      assert.ok(
        pids.length > 0 && (sentByA || sentByB),
        `${taskId} went to one starter id (senders ${pids.join(', ')})`,
      );
    }
    console.log(`      16 tasks, ${signals} enqueue signals, ${tasks.length} traversals`);
    await stopStarters();
  });

  it('a starter stopped with SIGTERM mid-stream exits 0 and leaves every task either started or still queued', async function () {
    // Alone on the queue, so its counters account for every task.
    await stopStarters();
    const first = await starter('graceful');
    const keys = starterKeys('graceful', stack.prefix);
    const tasks = Array.from({ length: 40 }, (_, i) => task(`s-term-${i}`, devices[i % devices.length]!));
    await stack.redis.lpush(keys.tasks, ...tasks.map((t) => JSON.stringify(t)));
    await first.waitForLog('traversal requested', 10_000);
    await first.kill('SIGTERM');
    assert.equal((await first.exited).code, 0, 'exit code 0');
    const stopped = first.logs().find((l) => l.msg === 'starter stopped');
    assert.ok(stopped, 'logged "starter stopped" with its counters');
    // Whatever it took it either handed to Temporal or left in its processing list; nothing in between.
    const left = (await stack.redis.lrange(keys.processing, 0, -1)).length;
    const queued = await stack.redis.llen(keys.tasks);
    assert.equal(
      Number(stopped.started) + left + queued,
      tasks.length,
      `${stopped.started} started + ${left} in processing + ${queued} queued`,
    );

    // A restart carries on; every task runs exactly once.
    await starter('graceful');
    const results = await Promise.all(tasks.map((t) => stack.waitResult(t.taskId, t.deviceId)));
    for (const r of results) assert.equal(r.status, 'completed', `${r.taskId}: ${JSON.stringify(r.error)}`);
    for (const t of tasks) {
      const installs = stack.agent.calls.filter((c) => c.op === 'install' && c.packageName === t.packageName);
      assert.equal(installs.length, 1, `${t.taskId} ran once`);
    }
    assert.equal(await stack.redis.llen(keys.processing), 0);
  });
});

describe('the Temporal server and Redis killed and restarted', function () {
  const suite = new FaultSuite('s');
  const { id, dir, logDir, prefix, procs } = suite;

  before(async function () {
    await suite.start();
  });
  after(async function () {
    await suite.stopProcs();
    await suite.close();
  });

  const waitResult = (taskId: string, deviceId: string, timeoutMs = 120_000): Promise<TraversalResult> =>
    waitForResult(suite.redis, prefix, taskId, deviceId, timeoutMs);

  it('the dev server killed and restarted on the same database file: running traversals continue to completion', async function () {
    const serverOptions = await devServerOnFile(dir, logDir);
    let server: DevServer = await startDevServer(serverOptions);
    const apk = await suite.addApk('faults-srv.apk', 1 * MiB);
    const agent = new AgentSimulator({ devices: ['srv-1', 'srv-2'], coldStartMs: [100, 200] });
    await agent.start();
    const connection = await Connection.connect({ address: server.address });
    const client = new Client({ connection });
    try {
      const worker = await spawnWorker({
        temporalAddress: server.address,
        taskQueue: `faults-srv-${id}`,
        redisKeyPrefix: prefix,
        dataDir: path.join(dir, 'worker'),
        logDir,
        env: { DT_HEARTBEAT_TIMEOUT: '5s', DT_STICKY_TIMEOUT: '2s' },
      });
      procs.push(worker);
      const handles = [];
      for (const deviceId of ['srv-1', 'srv-2']) {
        const req: TraversalRequest = {
          taskId: `srv-${deviceId}`,
          deviceId,
          agentUrl: agent.url,
          apkUrl: apk.url,
          packageName: 'com.example.srv',
          traversal: { durationSec: 6, extraArgs: ['--tick-ms', '100'] },
          policy: { heartbeatTimeoutMs: 5000, initialRetryMs: 200, maxAttempts: 3, measureLaunch: false },
        };
        await requestTraversal(client, `faults-srv-${id}`, req);
        handles.push(client.workflow.getHandle(traversalWorkflowId(req.taskId, deviceId)));
      }
      for (const h of handles) {
        await waitFor(
          async () => Number((await pendingActivity(h, 'runTraversal'))?.details?.percent ?? 0) >= 20,
          60_000,
          'the traversals to run',
        );
      }
      server.process.kill('SIGKILL');
      await new Promise((r) => server.process.once('exit', r));
      const downAt = Date.now();
      await sleep(1000);
      server = await startDevServer(serverOptions);
      console.log(`      dev server down for ${((Date.now() - downAt) / 1000).toFixed(1)} s`);

      for (const deviceId of ['srv-1', 'srv-2']) {
        const r = await waitResult(`srv-${deviceId}`, deviceId);
        assert.equal(r.status, 'completed', JSON.stringify(r.error));
        assert.ok(r.screens > 0);
      }
      assert.ok(worker.alive(), 'the worker rode the outage out');
    } finally {
      await connection.close();
      await Promise.all(procs.map((p) => p.stop()));
      await Promise.all([server.stop(), agent.close()]);
    }
  });

  it('Redis under the whole stack killed and restarted: queued tasks, processing lists and results survive, publishing waits and retries, the starter replays after reconnecting', async function () {
    const port = await freePort();
    const redisDir = path.join(dir, 'redis');
    let redisServer: LocalRedis = await startRedis({ port, dir: redisDir });
    const apk = await suite.addApk('faults-rd.apk', 1 * MiB);
    const devices = ['rd-1', 'rd-2', 'rd-3'];
    const agent = new AgentSimulator({ devices, coldStartMs: [100, 200] });
    await agent.start();
    // The test reads and writes through its own client; it must survive the outage too.
    const redis = new Redis(redisServer.url, { maxRetriesPerRequest: null, retryStrategy: () => 200 });
    redis.on('error', () => undefined);
    const { client } = suite;
    // The starter reaches Temporal through a proxy, so the test can hold its requests.
    const proxy = new TcpProxy('127.0.0.1', Number(process.env.TEST_TEMPORAL_ADDRESS!.split(':')[1]));
    const viaProxy = await proxy.start();
    const taskQueue = `faults-rd-${id}`;
    const rdPrefix = `rd${id}:`;
    const keys = starterKeys('rd', rdPrefix);
    const concurrency = 2;
    try {
      const worker = await spawnWorker({
        redisUrl: redisServer.url,
        taskQueue,
        redisKeyPrefix: rdPrefix,
        dataDir: path.join(dir, 'rd-worker'),
        logDir,
        env: { DT_HEARTBEAT_TIMEOUT: '10s' },
      });
      procs.push(worker);
      const starter = await spawnStarter({
        temporalAddress: viaProxy,
        redisUrl: redisServer.url,
        taskQueue,
        redisKeyPrefix: rdPrefix,
        logDir,
        starterId: 'rd',
        env: { DT_MEASURE_LAUNCH: 'false', DT_STARTER_CONCURRENCY: String(concurrency), DT_PUBLISH_RETRY_MAX: '2s' },
      });
      procs.push(starter);
      const task = (taskId: string, deviceId: string, durationSec = 1) =>
        JSON.stringify({
          taskId,
          deviceId,
          agentUrl: agent.url,
          apkUrl: apk.url,
          packageName: `com.example.${taskId.replace(/\W/g, '')}`,
          traversal: { durationSec, extraArgs: ['--tick-ms', '100'] },
        });
      const result = (taskId: string, deviceId: string, timeoutMs = 90_000) =>
        waitForResult(redis, rdPrefix, taskId, deviceId, timeoutMs);

      // Results published before the outage.
      const before = devices.map((d, i) => ({ taskId: `rd-pre-${i}`, deviceId: d }));
      await redis.lpush(keys.tasks, ...before.map((t) => task(t.taskId, t.deviceId)));
      for (const t of before) assert.equal((await result(t.taskId, t.deviceId)).status, 'completed');
      const resultKeys = before.map((t) => resultKey(t.taskId, t.deviceId, rdPrefix));
      const publishedBefore = await redis.mget(...resultKeys);

      // Traversals that will finish while Redis is down: long budgets, ended by finishNow after the kill.
      const during = devices.map((d) => ({ taskId: `rd-during-${d}`, deviceId: d }));
      await redis.lpush(keys.tasks, ...during.map((t) => task(t.taskId, t.deviceId, 120)));
      const duringHandles = during.map((t) => client.workflow.getHandle(traversalWorkflowId(t.taskId, t.deviceId)));
      for (const h of duringHandles)
        await waitFor(
          async () => (await pendingActivity(h, 'runTraversal'))?.started,
          60_000,
          `${h.workflowId} traversing`,
        );
      await waitFor(async () => (await redis.llen(keys.processing)) === 0, 20_000, 'the processing list emptied');

      // Temporal held from the starter: it takes `concurrency` items and waits; the rest stay queued.
      proxy.block();
      const held = devices.concat(devices).map((d, i) => ({ taskId: `rd-held-${i}`, deviceId: d }));
      await redis.lpush(keys.tasks, ...held.map((t) => task(t.taskId, t.deviceId)));
      await waitFor(
        async () =>
          (await redis.llen(keys.processing)) === concurrency &&
          (await redis.llen(keys.tasks)) === held.length - concurrency,
        20_000,
        `${concurrency} items taken, the rest queued`,
      );
      // As a BLMOVE whose reply was lost leaves it: in the processing list, unknown to the starter.
      const orphan = { taskId: 'rd-orphan', deviceId: 'rd-1' };
      await redis.lpush(keys.processing, task(orphan.taskId, orphan.deviceId));
      const listsBefore = [await redis.lrange(keys.tasks, 0, -1), await redis.lrange(keys.processing, 0, -1)];

      redisServer.process!.kill('SIGKILL');
      await new Promise((r) => redisServer.process!.once('exit', r));
      const downAt = Date.now();
      for (const h of duringHandles) await h.signal(budgetSignal, { finishNow: true });
      // Each finished traversal handed its result to a publish workflow, whose attempts now fail.
      for (const t of during) {
        const publish = client.workflow.getHandle(publishWorkflowId(t.taskId, t.deviceId));
        await waitFor(
          async () => (await pendingActivity(publish, 'publishResult'))?.lastFailure,
          90_000,
          `a failed publish of ${t.taskId}`,
        );
      }
      redisServer = await startRedis({ port, dir: redisDir });
      console.log(`      Redis down for ${((Date.now() - downAt) / 1000).toFixed(1)} s`);

      // The append-only file brought back every list and result as they were.
      assert.deepEqual(
        [await redis.lrange(keys.tasks, 0, -1), await redis.lrange(keys.processing, 0, -1)],
        listsBefore,
      );
      assert.deepEqual(await redis.mget(...resultKeys), publishedBefore, 'earlier results survived');

      proxy.unblock();
      for (const t of during) {
        const r = await result(t.taskId, t.deviceId);
        assert.equal(r.status, 'completed', `${t.taskId}: ${JSON.stringify(r.error)}`);
        // Published by a later attempt than the first: the publish workflow retried until Redis took it.
        // The result is in Redis a moment before the activity's completion reaches history: wait for the workflow.
        const publish = client.workflow.getHandle(publishWorkflowId(t.taskId, t.deviceId));
        await publish.result();
        const events = (await publish.fetchHistory()).events ?? [];
        const attempts = events.flatMap((e) =>
          e.activityTaskStartedEventAttributes ? [e.activityTaskStartedEventAttributes.attempt ?? 1] : [],
        );
        const scheduled = events.filter((e) => e.activityTaskScheduledEventAttributes).length;
        assert.ok(
          scheduled > 1 || attempts.some((a) => a > 1),
          `${t.taskId} published after a retry (attempts ${attempts.join(', ')})`,
        );
        assert.ok(
          events.some((e) => e.activityTaskCompletedEventAttributes),
          `${t.taskId} published`,
        );
      }
      for (const t of held) {
        const r = await result(t.taskId, t.deviceId);
        assert.equal(r.status, 'completed', `${t.taskId}: ${JSON.stringify(r.error)}`);
      }
      // Only a replay of the processing list after the reconnect can find the orphan.
      assert.equal(
        (await result(orphan.taskId, orphan.deviceId, 60_000)).status,
        'completed',
        'the orphan was replayed',
      );
      await starter.waitForLog('Redis reconnected; replaying the processing list', 10_000);
      for (const t of [...before, ...during, ...held, orphan]) {
        const installs = agent.calls.filter(
          (c) => c.op === 'install' && c.packageName === `com.example.${t.taskId.replace(/\W/g, '')}`,
        );
        assert.equal(installs.length, 1, `${t.taskId} ran once`);
      }
      assert.ok(starter.alive() && worker.alive(), 'starter and worker rode the outage out');
      await waitFor(async () => (await redis.llen(keys.processing)) === 0, 20_000, 'an empty processing list');
      assert.equal(await redis.llen(keys.tasks), 0);
      assert.equal(await redis.llen(keys.dead), 0, 'nothing dead-lettered');
    } finally {
      await proxy.close();
      await Promise.all(procs.map((p) => p.stop()));
      redis.disconnect();
      await Promise.all([agent.close(), redisServer.stop()]);
    }
  });
});
