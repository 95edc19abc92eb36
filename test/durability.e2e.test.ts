/**
 * Durable at production shape: a traversal's history does not grow with its duration, pause and
 * budget still reach the running tool, and findings leave the host as they are found, so a run
 * resumed on another host after its first host was lost keeps every finding. Real dev server,
 * Redis, agent simulator, origin, HTTP sink, worker processes and the simulator jar.
 */
import assert from 'node:assert/strict';
import { Client, Connection, type WorkflowHandle } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import Redis from 'ioredis';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { PROJECT_ROOT } from '../src/config';
import {
  budgetSignal,
  pauseSignal,
  progressQuery,
  resumeSignal,
  traversalWorkflowId,
  type Finding,
  type TraversalRequest,
  type TraversalResult,
} from '../src/contract/messages';
import { AgentSimulator } from '../sim/agent-sim';
import { ApkOrigin, type ApkInfo } from '../sim/origin';
import { requestTraversal } from '../src/starter/task-bridge';
import { startHttpSink, type HttpSink } from './support/http-sink';
import { pendingActivity, pidAlive, spawnWorker, type Proc } from './support/procs';
import { startStack, type Stack } from '../dev/stack';
import { traversalPids, waitFor, waitForResult } from '../dev/wait';

const MiB = 1024 * 1024;
const EventType = temporal.api.enums.v1.EventType;

/** The files of a tar archive (uncompressed bytes), by name, in archive order. */
function tarEntries(tar: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const field = (off: number, len: number) =>
    tar
      .subarray(off, off + len)
      .toString('utf8')
      .replace(/\0.*$/s, '');
  for (let off = 0; off + 512 <= tar.length;) {
    const name = field(off, 100);
    if (!name) break;
    const size = parseInt(field(off + 124, 12).trim() || '0', 8);
    out.set(name, tar.subarray(off + 512, off + 512 + size));
    off += 512 + Math.ceil(size / 512) * 512;
  }
  return out;
}

describe('a traversal at production shape', function () {
  let stack: Stack;

  before(async function () {
    stack = await startStack({
      devices: ['hist-15', 'hist-60', 'pause-1'],
      apks: [{ name: 'dur.apk', size: 1 * MiB }],
      // The defaults of a real worker: budget and pause are read every 2 s.
      config: { controlPollMs: 2000 },
    });
  });
  after(async function () {
    await stack?.stop();
  });

  const request = (
    taskId: string,
    deviceId: string,
    durationSec: number,
    extraArgs: string[] = [],
  ): TraversalRequest => ({
    taskId,
    deviceId,
    agentUrl: stack.agent.url,
    apkUrl: stack.apks['dur.apk']!.url,
    apkSha256: stack.apks['dur.apk']!.sha256,
    packageName: 'com.example.durable',
    traversal: { durationSec, extraArgs },
    policy: { heartbeatTimeoutMs: 10_000, initialRetryMs: 200 },
  });

  async function history(workflowId: string) {
    const h = await stack.client.workflow.getHandle(workflowId).fetchHistory();
    const events = h.events ?? [];
    const signals = events.filter(
      (e) =>
        e.eventType === EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED &&
        e.workflowExecutionSignaledEventAttributes?.signalName === 'progress-update',
    ).length;
    return { events: events.length, signals };
  }

  it('writes a history bounded by a constant: a 60 s run has at most 12 events more than a 15 s run, both under 250', async function () {
    this.timeout(240_000);
    const args = ['--crashes', '2', '--anrs', '1'];
    await requestTraversal(stack.client, stack.taskQueue, request('h15', 'hist-15', 15, args));
    await requestTraversal(stack.client, stack.taskQueue, request('h60', 'hist-60', 60, args));
    const [r15, r60] = await Promise.all([
      stack.waitResult('h15', 'hist-15', 120_000),
      stack.waitResult('h60', 'hist-60', 180_000),
    ]);
    for (const r of [r15, r60]) assert.equal(r.status, 'completed', JSON.stringify(r.error));
    const h15 = await history(traversalWorkflowId('h15', 'hist-15'));
    const h60 = await history(traversalWorkflowId('h60', 'hist-60'));
    console.log(
      `      history events: 15 s → ${h15.events} (${h15.signals} progress signals), 60 s → ${h60.events} (${h60.signals} progress signals)`,
    );
    assert.ok(h15.events <= 250 && h60.events <= 250, `${h15.events} and ${h60.events} events`);
    assert.ok(h60.events - h15.events <= 12, `a 60 s run wrote ${h60.events - h15.events} events more than a 15 s run`);
    // Percent still reaches the workflow in 5-point steps: one signal per step at most, plus the start,
    // plus one per distinct signature found (three here), so the live details show each as it arrives.
    assert.ok(h60.signals <= 22 + 3 && h60.signals >= 15, `${h60.signals} progress signals`);

    // The findings came with the result, counted and signed.
    for (const r of [r15, r60]) {
      assert.equal(r.findings.length, 3, JSON.stringify(r.findings));
      assert.deepEqual([r.crashes, r.anrs], [2, 1]);
      for (const f of r.findings) assert.match(f.signature, /^[0-9a-f]{12}$/);
    }
    // Same app, same bugs: the two runs share their signatures.
    assert.deepEqual(r15.findings.map((f) => f.signature).sort(), r60.findings.map((f) => f.signature).sort());
    const tar = tarEntries(gunzipSync(readFileSync(r60.reportUrl!.replace('file://', ''))));
    const names = [...tar.keys()];
    for (const n of ['summary.json', 'findings.json', 'findings/crash-1.png', 'findings/anr-1.png'])
      assert.ok(names.includes(n), `archive holds ${n}: ${names.join(', ')}`);
    const inArchive = JSON.parse(tar.get('findings.json')!.toString('utf8')) as Finding[];
    assert.deepEqual(
      inArchive.map((f) => f.signature),
      r60.findings.map((f) => f.signature),
    );
    assert.ok(
      inArchive.every((f) => f.frames.length > 0 && f.screenshot && names.includes(f.screenshot)),
      'every finding has frames and its screenshot',
    );
  });

  it('a pause reaches the running tool and holds it (how soon is printed); resume and a budget change do too', async function () {
    this.timeout(180_000);
    const id = traversalWorkflowId('p1', 'pause-1');
    await requestTraversal(stack.client, stack.taskQueue, request('p1', 'pause-1', 60));
    const handle = stack.client.workflow.getHandle(id);
    await waitFor(
      async () => ((await pendingActivity(handle, 'runTraversal'))?.details?.percent as number) >= 5,
      60_000,
      'the traversal past 5%',
    );
    const log = path.join(stack.dataDir, 'runs', 'p1', 'pause-1', 'attempt-1.log');
    const lines = () => readFileSync(log, 'utf8');

    const t0 = Date.now();
    await handle.signal(pauseSignal);
    await waitFor(() => /^PAUSED step=/m.test(lines()), 10_000, 'the tool to pause');
    const pauseMs = Date.now() - t0;
    const pausedAt = Date.now();
    const held = (await pendingActivity(handle, 'runTraversal'))?.details?.percent;
    // Two heartbeats sent after the tool said PAUSED: the state they carry is what paused means.
    let after: Awaited<ReturnType<typeof pendingActivity>>;
    let beats = 0;
    let lastBeat = 0;
    await waitFor(
      async () => {
        after = await pendingActivity(handle, 'runTraversal');
        const at = after?.lastHeartbeatTime?.getTime() ?? 0;
        if (at > pausedAt && at !== lastBeat) [beats, lastBeat] = [beats + 1, at];
        return beats >= 2;
      },
      30_000,
      'two heartbeats while paused',
    );
    assert.equal(after?.details?.percent, held, 'no progress while paused');
    assert.equal(after?.details?.paused, true, 'the heartbeat says paused');
    assert.equal((await handle.query(progressQuery)).paused, true);

    const t1 = Date.now();
    await handle.signal(resumeSignal);
    await waitFor(() => /^CONTINUED step=/m.test(lines()), 10_000, 'the tool to continue');
    const resumeMs = Date.now() - t1;

    const t2 = Date.now();
    await handle.signal(budgetSignal, { finishNow: true });
    const r = await stack.waitResult('p1', 'pause-1', 60_000);
    const stopMs = Date.now() - t2;
    console.log(
      `      pause reached the tool after ${(pauseMs / 1000).toFixed(1)} s, resume after ${(resumeMs / 1000).toFixed(1)} s, finishNow ended the run after ${(stopMs / 1000).toFixed(1)} s`,
    );
    // Generous on a busy machine; the figures are printed above (a few hundred ms when idle).
    assert.ok(pauseMs <= 30_000 && resumeMs <= 30_000, `pause ${pauseMs} ms, resume ${resumeMs} ms`);
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    assert.equal(r.stoppedEarly, true);
    assert.equal(r.traversalAttempt, 1, 'a paused tool was not mistaken for a hung one');
  });
});

describe('findings when a host is lost mid-traversal', function () {
  const id = randomUUID().slice(0, 8);
  const taskQueue = `lost-${id}`;
  const prefix = `lost${id}:`;
  const root = mkdtempSync(path.join(os.tmpdir(), `dt-lost-${id}-`));
  const HEARTBEAT_MS = 3000;
  let origin: ApkOrigin;
  let agent: AgentSimulator;
  let apk: ApkInfo & { url: string };
  let sink: HttpSink;
  let connection: Connection;
  let client: Client;
  let redis: Redis;
  const hosts: { name: string; dataDir: string; worker: Proc }[] = [];

  before(async function () {
    origin = new ApkOrigin({ dir: path.join(PROJECT_ROOT, '.tools', 'apks') });
    await origin.start();
    apk = { ...(await origin.addApk('lost.apk', 1 * MiB)), url: origin.url('lost.apk') };
    agent = new AgentSimulator({ devices: ['lost-twin', 'lost-run'], coldStartMs: [50, 100] });
    await agent.start();
    sink = await startHttpSink(path.join(root, 'sink'), 'sink-token');
    connection = await Connection.connect({ address: process.env.TEST_TEMPORAL_ADDRESS! });
    client = new Client({ connection });
    redis = new Redis(process.env.TEST_REDIS_URL!);
    // Two hosts: each worker has its own data folder; they share the sink, Temporal and Redis.
    for (const name of ['host-a', 'host-b']) {
      const dataDir = path.join(root, name);
      const worker = await spawnWorker({
        taskQueue,
        redisKeyPrefix: prefix,
        dataDir,
        logDir: path.join(root, 'logs'),
        env: {
          DT_REPORT_SINK: sink.url,
          DT_REPORT_SINK_TOKEN: 'sink-token',
          DT_REPORT_SHIP_INTERVAL: '2s',
          DT_STICKY_TIMEOUT: '2s',
        },
      });
      hosts.push({ name, dataDir, worker });
    }
  });
  after(async function () {
    await Promise.all(hosts.map((h) => h.worker.stop()));
    redis?.disconnect();
    await connection?.close();
    await Promise.all([agent?.close(), origin?.close(), sink?.close()]);
    rmSync(root, { recursive: true, force: true });
  });

  const request = (taskId: string, deviceId: string): TraversalRequest => ({
    taskId,
    deviceId,
    agentUrl: agent.url,
    apkUrl: apk.url,
    apkSha256: apk.sha256,
    packageName: 'com.example.lost',
    traversal: { durationSec: 10, extraArgs: ['--tick-ms', '100', '--crashes', '5', '--anrs', '2'] },
    policy: { heartbeatTimeoutMs: HEARTBEAT_MS, initialRetryMs: 200, measureLaunch: false },
  });
  const signatures = (r: TraversalResult) => r.findings.map((f) => `${f.kind}:${f.signature}`).sort();

  it('the other host finishes the run with every finding of an undisturbed twin, those found before the loss included', async function () {
    this.timeout(240_000);
    // 1. The twin, undisturbed.
    await requestTraversal(client, taskQueue, request('twin', 'lost-twin'));
    const twin = await waitForResult(redis, prefix, 'twin', 'lost-twin', 120_000);
    assert.equal(twin.status, 'completed', JSON.stringify(twin.error));
    assert.equal(twin.findings.length, 7);

    // 2. The same app on another device; at 60 % its host is lost: processes killed, disk gone.
    await requestTraversal(client, taskQueue, request('run', 'lost-run'));
    const handle: WorkflowHandle = client.workflow.getHandle(traversalWorkflowId('run', 'lost-run'));
    let identity: string | undefined;
    let before: Record<string, unknown> | undefined;
    await waitFor(
      async () => {
        const a = await pendingActivity(handle, 'runTraversal');
        identity = a?.workerIdentity;
        before = a?.details;
        return Number(a?.details?.percent ?? 0) >= 60;
      },
      60_000,
      'the traversal at 60%',
    );
    const lost = hosts.find((h) => identity?.startsWith(`${h.worker.pid}@`));
    assert.ok(lost, `the traversal runs on one of our hosts (${identity})`);
    const jars = traversalPids('lost-run');
    await lost.worker.kill('SIGKILL');
    for (const pid of jars) process.kill(pid, 'SIGKILL');
    rmSync(lost.dataDir, { recursive: true, force: true });
    assert.ok(jars.every((p) => !pidAlive(p)) && !existsSync(lost.dataDir), 'the host is gone');
    const foundBefore = Number(before?.findings ?? 0);

    // 3. The other host resumes and finishes.
    const r = await waitForResult(redis, prefix, 'run', 'lost-run', 120_000);
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    assert.equal(r.traversalAttempt, 2);
    assert.ok(Number(r.resumedFrom) > 0, 'resumed from a checkpoint');
    console.log(
      `      ${foundBefore} findings before the loss; ${r.findings.filter((f) => f.attempt === 1).length} of ${r.findings.length} in the result come from the lost host`,
    );
    assert.ok(foundBefore >= 2, `findings reported before the loss: ${foundBefore}`);
    assert.deepEqual(signatures(r), signatures(twin), 'the same findings as the twin');
    assert.deepEqual([r.crashes, r.anrs], [5, 2]);
    assert.ok(
      r.findings.some((f) => f.attempt === 1),
      'findings of the lost host kept',
    );

    // The archive, read back from the sink, names them all; the lost host's screenshots are in it too.
    const tar = tarEntries(gunzipSync(readFileSync(sink.fileOf('/reports/run/lost-run.tar.gz'))));
    const names = [...tar.keys()];
    const inArchive = JSON.parse(tar.get('findings.json')!.toString('utf8')) as Finding[];
    assert.deepEqual(inArchive.map((f) => `${f.kind}:${f.signature}`).sort(), signatures(twin));
    const early = inArchive.filter((f) => f.attempt === 1);
    assert.ok(
      early.length > 0 &&
        early.every((f) => f.screenshot?.startsWith('attempts/attempt-1/') && names.includes(f.screenshot)),
      JSON.stringify(early.map((f) => f.screenshot)),
    );
  });
});
