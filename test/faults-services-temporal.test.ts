/**
 * Fault injection: a starter bridging tasks while the Temporal server is down. The suite runs its
 * own dev server on a database file and kills and restarts it (the global server stays up for the
 * other suites); the starter and worker are real processes on the global Redis with their own prefix.
 */
import assert from 'node:assert/strict';
import { Client, Connection } from '@temporalio/client';
import path from 'node:path';
import { startDevServer, type DevServer } from '../dev/temporal-dev';
import { deviceWorkflowId } from '../src/contract/messages';
import { AgentSimulator } from '../sim/agent-sim';
import { starterKeys } from '../src/contract/redis-keys';
import { enqueueSignals } from './support/history';
import { devServerOnFile, spawnStarter, spawnWorker } from './support/procs';
import { FaultSuite, MiB } from './support/fault-suite';
import { waitFor, waitForResult } from '../dev/wait';

describe('starters while the Temporal server restarts', function () {
  const suite = new FaultSuite('t');
  const { dir, logDir, prefix, taskQueue, procs } = suite;
  const devices = ['tr-1', 'tr-2', 'tr-3'];
  let server: DevServer | undefined;
  let apkUrl: string;
  let agent: AgentSimulator;

  before(async function () {
    await suite.start();
    ({ url: apkUrl } = await suite.addApk('faults-tr.apk', 1 * MiB));
    agent = new AgentSimulator({ devices, coldStartMs: [100, 200] });
    await agent.start();
  });
  after(async function () {
    await suite.stopProcs();
    await Promise.all([server?.stop(), agent?.close()]);
    await suite.close();
  });

  it('tasks queued while the server is down are bridged once it is back: none lost, none dead-lettered, each run once', async function () {
    const { redis } = suite;
    const serverOptions = await devServerOnFile(dir, logDir);
    server = await startDevServer(serverOptions);
    const service = {
      temporalAddress: server.address,
      taskQueue,
      redisKeyPrefix: prefix,
      logDir,
    };
    const worker = await spawnWorker({
      ...service,
      dataDir: path.join(dir, 'worker'),
      env: { DT_HEARTBEAT_TIMEOUT: '10s' },
    });
    procs.push(worker);
    const starter = await spawnStarter({ ...service, starterId: 'tr', env: { DT_MEASURE_LAUNCH: 'false' } });
    procs.push(starter);
    const keys = starterKeys('tr', prefix);
    const task = (taskId: string, deviceId: string) => ({
      taskId,
      deviceId,
      agentUrl: agent.url,
      apkUrl,
      packageName: `com.example.${taskId.replace(/\W/g, '')}`,
      traversal: { durationSec: 1, extraArgs: ['--tick-ms', '50'] },
    });
    const push = (tasks: ReturnType<typeof task>[]) => redis.lpush(keys.tasks, ...tasks.map((t) => JSON.stringify(t)));

    // The device workflows exist before the outage.
    const first = devices.map((d) => task(`tr-first-${d}`, d));
    await push(first);
    for (const t of first) assert.equal((await waitForResult(redis, prefix, t.taskId, t.deviceId)).status, 'completed');

    server.process.kill('SIGKILL');
    await new Promise((r) => server!.process.once('exit', r));
    const downAt = Date.now();
    const held = Array.from({ length: 6 }, (_, i) => task(`tr-held-${i}`, devices[i % devices.length]!));
    await push(held);
    // The starter took them all and tried to hand them over while the server was away (requests for
    // one device go in order, so the first of each device is the one retrying).
    await waitFor(async () => (await redis.llen(keys.processing)) === held.length, 30_000, 'every held task taken');
    for (const t of held.slice(0, devices.length))
      await starter.waitForLog('Temporal did not accept the request; retrying', 60_000, { taskId: t.taskId });
    server = await startDevServer(serverOptions);
    const upAt = Date.now();
    console.log(`      dev server down for ${((upAt - downAt) / 1000).toFixed(1)} s`);

    for (const t of held) {
      const r = await waitForResult(redis, prefix, t.taskId, t.deviceId, 120_000);
      assert.equal(r.status, 'completed', `${t.taskId}: ${JSON.stringify(r.error)}`);
    }
    console.log(
      `      every held task finished ${((Date.now() - upAt) / 1000).toFixed(1)} s after the server came back`,
    );
    for (const t of [...first, ...held]) {
      const installs = agent.calls.filter((c) => c.op === 'install' && c.packageName === t.packageName);
      assert.equal(installs.length, 1, `${t.taskId} ran once`);
    }
    const connection = await Connection.connect({ address: server.address });
    try {
      const client = new Client({ connection });
      for (const d of devices) {
        const signals = (await enqueueSignals(client, deviceWorkflowId(d))).map((s) => s.taskId);
        for (const t of held.filter((h) => h.deviceId === d))
          assert.equal(signals.filter((s) => s === t.taskId).length, 1, `${t.taskId}: one enqueue signal`);
      }
    } finally {
      await connection.close();
    }
    assert.ok(starter.alive() && worker.alive(), 'starter and worker reconnected by themselves');
    await waitFor(async () => (await redis.llen(keys.processing)) === 0, 20_000, 'an empty processing list');
    assert.equal(await redis.llen(keys.tasks), 0, 'nothing left queued');
    assert.equal(await redis.llen(keys.dead), 0, 'nothing dead-lettered');
  });
});
