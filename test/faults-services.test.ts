/**
 * Fault injection, part 3: the services around the workers — starters killed mid-task, the
 * Temporal dev server killed and restarted on its database file, Redis killed and restarted with
 * its append-only file. Starters and workers are real processes; server and Redis are this
 * suite's own, so killing them leaves the other suites alone.
 */
import { requestTraversal } from '../src/starter-core';
import assert from 'node:assert/strict';
import { Client, Connection, WorkflowNotFoundError } from '@temporalio/client';
import Redis from 'ioredis';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PROJECT_ROOT } from '../src/config';
import { freePort } from '../src/local/ports';
import { startRedis, type LocalRedis } from '../src/local/redis-local';
import { startDevServer, type DevServer } from '../src/local/temporal-dev';
import { deviceWorkflowId, traversalWorkflowId, type TraversalRequest, type TraversalResult } from '../src/messages';
import { AgentSimulator } from '../src/sim/agent-sim';
import { ApkOrigin } from '../src/sim/origin';
import { starterKeys } from '../src/starter-core';
import { pendingActivity, sleep, spawnStarter, spawnWorker, TcpProxy, waitFor, type Proc } from './support/procs';
import { waitForResult } from './support/wait';
import { startStack, type Stack } from './support/stack';

const MiB = 1024 * 1024;

/** Enqueue signals a device workflow received, per task id (across continue-as-new runs). */
async function enqueueSignals(client: Client, deviceId: string): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  const history = await client.workflow.getHandle(deviceWorkflowId(deviceId)).fetchHistory();
  for (const e of history.events ?? []) {
    const a = e.workflowExecutionSignaledEventAttributes;
    if (a?.signalName !== 'enqueue') continue;
    const req = JSON.parse(Buffer.from(a.input!.payloads![0]!.data!).toString('utf8')) as TraversalRequest;
    counts.set(req.taskId, (counts.get(req.taskId) ?? 0) + 1);
  }
  return counts;
}

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
      redisUrl: process.env.TEST_REDIS_URL!,
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
      await sleep(1000); // it is waiting on Temporal now
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
      assert.deepEqual([...(await enqueueSignals(stack.client, 'st-1'))], [['s-once', 1]]);
      assert.equal(
        stack.agent.calls.filter((c) => c.op === 'install' && c.packageName === 'com.example.sonce').length,
        1,
      );
    } finally {
      await proxy.close();
    }
  });

  it('two starters on one queue, one of them killed and restarted mid-stream: every task is started exactly once', async function () {
    const ids = ['pair-a', 'pair-b'];
    const [a] = [await starter(ids[0]!), await starter(ids[1]!)];
    const tasks = Array.from({ length: 16 }, (_, i) => task(`s-pair-${i}`, devices[i % devices.length]!));
    await stack.redis.lpush(`${stack.prefix}traversal:tasks`, ...tasks.map((t) => JSON.stringify(t)));
    await a!.waitForLog('traversal requested', 10_000);
    await a!.kill('SIGKILL');
    await starter(ids[0]!);

    const results = await Promise.all(tasks.map((t) => stack.waitResult(t.taskId, t.deviceId)));
    for (const r of results) assert.equal(r.status, 'completed', `${r.taskId}: ${JSON.stringify(r.error)}`);
    for (const t of tasks) {
      const installs = stack.agent.calls.filter((c) => c.op === 'install' && c.packageName === t.packageName);
      assert.equal(installs.length, 1, `${t.taskId} ran once`);
    }
    for (const id of ids)
      assert.equal(await stack.redis.llen(starterKeys(id, stack.prefix).processing), 0, `${id} has nothing left`);
    // A replayed item may be signalled twice; the device workflow's dedupe makes that harmless.
    let signals = 0;
    for (const d of devices)
      for (const [taskId, n] of await enqueueSignals(stack.client, d)) if (taskId.startsWith('s-pair-')) signals += n;
    console.log(`      16 tasks, ${signals} enqueue signals, ${tasks.length} traversals`);
  });

  it('a starter stopped with SIGTERM mid-stream exits 0 and leaves every task either started or still queued', async function () {
    // Alone on the queue, so its counters account for every task.
    await Promise.all(procs.map((p) => p.stop()));
    const first = await starter('graceful');
    const tasks = Array.from({ length: 40 }, (_, i) => task(`s-term-${i}`, devices[i % devices.length]!));
    await stack.redis.lpush(`${stack.prefix}traversal:tasks`, ...tasks.map((t) => JSON.stringify(t)));
    await first.waitForLog('traversal requested', 10_000);
    await first.kill('SIGTERM');
    assert.equal((await first.exited).code, 0, 'exit code 0');
    const stopped = first.logs().find((l) => l.msg === 'starter stopped');
    assert.ok(stopped, 'logged "starter stopped" with its counters');
    // Whatever it took it either handed to Temporal or left in its processing list; nothing in between.
    const processing = starterKeys('graceful', stack.prefix).processing;
    const left = (await stack.redis.lrange(processing, 0, -1)).length;
    const queued = await stack.redis.llen(`${stack.prefix}traversal:tasks`);
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
    assert.equal(await stack.redis.llen(processing), 0);
  });
});

describe('the Temporal server and Redis killed and restarted', function () {
  const id = randomUUID().slice(0, 8);
  const dir = mkdtempSync(path.join(os.tmpdir(), `dt-faults-s-${id}-`));
  const logDir = path.join(dir, 'logs');
  const prefix = `fs${id}:`;
  const procs: Proc[] = [];
  let results: Redis;

  before(async function () {
    results = new Redis(process.env.TEST_REDIS_URL!);
  });
  after(async function () {
    await Promise.all(procs.map((p) => p.stop()));
    results?.disconnect();
    rmSync(dir, { recursive: true, force: true });
  });

  const waitResult = (taskId: string, deviceId: string, timeoutMs = 120_000): Promise<TraversalResult> =>
    waitForResult(results, prefix, taskId, deviceId, timeoutMs);

  it('the dev server killed and restarted on the same database file: running traversals continue to completion', async function () {
    const ports = { port: await freePort(), http: await freePort(), metrics: await freePort() };
    const serverOptions = {
      port: ports.port,
      uiPort: 0,
      dbFile: path.join(dir, 'temporal.db'),
      logFile: path.join(logDir, 'temporal.log'),
      extraArgs: ['--http-port', String(ports.http), '--metrics-port', String(ports.metrics)],
    };
    let server: DevServer = await startDevServer(serverOptions);
    const origin = new ApkOrigin({ dir: path.join(PROJECT_ROOT, '.tools', 'apks') });
    await origin.start();
    await origin.addApk('faults-srv.apk', 1 * MiB);
    const agent = new AgentSimulator({ devices: ['srv-1', 'srv-2'], coldStartMs: [100, 200] });
    await agent.start();
    const connection = await Connection.connect({ address: server.address });
    const client = new Client({ connection });
    try {
      const worker = await spawnWorker({
        temporalAddress: server.address,
        redisUrl: process.env.TEST_REDIS_URL!,
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
          apkUrl: origin.url('faults-srv.apk'),
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
      await Promise.all([server.stop(), agent.close(), origin.close()]);
    }
  });

  it('Redis killed and restarted with its append-only file: the starter reconnects by itself; no task is lost or run twice', async function () {
    const port = await freePort();
    let redisServer: LocalRedis = await startRedis({ port, dir: path.join(dir, 'redis') });
    const stack = await startStack({
      devices: ['rd-1', 'rd-2', 'rd-3'],
      apks: [{ name: 'faults-rd.apk', size: 1 * MiB }],
    });
    const tasksRedis = new Redis(redisServer.url, { maxRetriesPerRequest: null });
    tasksRedis.on('error', () => undefined);
    try {
      const starter = await spawnStarter({
        temporalAddress: process.env.TEST_TEMPORAL_ADDRESS!,
        redisUrl: redisServer.url,
        taskQueue: stack.taskQueue,
        redisKeyPrefix: stack.prefix,
        logDir,
        starterId: 'rd',
        env: { DT_MEASURE_LAUNCH: 'false' },
      });
      procs.push(starter);
      const tasksKey = `${stack.prefix}traversal:tasks`;
      const task = (i: number) =>
        JSON.stringify({
          taskId: `rd-${i}`,
          deviceId: `rd-${(i % 3) + 1}`,
          agentUrl: stack.agent.url,
          apkUrl: stack.apks['faults-rd.apk']!.url,
          packageName: `com.example.rd${i}`,
          traversal: { durationSec: 1, extraArgs: ['--tick-ms', '50'] },
        });
      await tasksRedis.lpush(tasksKey, task(0), task(1), task(2));
      await waitFor(async () => (await tasksRedis.llen(tasksKey)) === 0, 20_000, 'the first tasks to be taken');
      // A burst, then Redis dies at once: some items are queued, some in the starter's hands.
      await tasksRedis.lpush(tasksKey, task(3), task(4), task(5), task(6), task(7), task(8));
      redisServer.process!.kill('SIGKILL');
      await sleep(1500);
      redisServer = await startRedis({ port, dir: path.join(dir, 'redis') });
      await tasksRedis.lpush(tasksKey, task(9), task(10), task(11));

      for (let i = 0; i < 12; i++) {
        const r = await stack.waitResult(`rd-${i}`, `rd-${(i % 3) + 1}`, 90_000);
        assert.equal(r.status, 'completed', `rd-${i}: ${JSON.stringify(r.error)}`);
        assert.equal(
          stack.agent.calls.filter((c) => c.op === 'install' && c.packageName === `com.example.rd${i}`).length,
          1,
          `rd-${i} ran once`,
        );
      }
      assert.ok(starter.alive(), 'the starter kept running');
      await waitFor(
        async () => (await tasksRedis.llen(starterKeys('rd', stack.prefix).processing)) === 0,
        10_000,
        'an empty processing list',
      );
      assert.equal(await tasksRedis.llen(tasksKey), 0);
    } finally {
      tasksRedis.disconnect();
      await Promise.all(procs.map((p) => p.stop()));
      await stack.stop();
      await redisServer.stop();
    }
  });
});
