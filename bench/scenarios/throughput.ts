/**
 * throughput — (1) the starter's bridging rate: K tasks pushed into Redis and bridged by TaskBridge
 * (BLMOVE, validate, signalWithStart, LREM) against a bare loop of the same signalWithStart calls,
 * same server, interleaved rounds; (2) end to end: K zero-length traversals through Redis, the
 * bridge, one worker process and an instant agent; Temporal's overhead per traversal and the
 * history events per traversal from fetched histories. Optionally (3) the same with a no-op
 * command instead of the JVM, so the orchestration alone is visible.
 *
 * Options: --quick, --tasks 1000, --rounds 2, --start-devices 100 (devices the start tasks spread
 * over), --devices 20 (end to end), --sample 50 (histories fetched), --parts start,jar,noop,serial
 * (which parts run; --no-bare-command keeps start,jar).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Client } from '@temporalio/client';
import { tsToMs } from '@temporalio/common/lib/time';
import Redis from 'ioredis';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { loadConfig } from '../../src/config';
import {
  deviceWorkflowId,
  traversalWorkflowId,
  type TraversalRequest,
  type TraversalResult,
} from '../../src/contract/messages';
import type { ApkInfo } from '../../sim/origin';
import { createStarter } from '../../src/starter/create';
import type { TaskBridge } from '../../src/starter/task-bridge';
import { parseTask } from '../../src/starter/task';
import { mdTable, mean, median, MiB, parseOptions, percentile, round, say, type ScenarioRun } from '../lib/report';
import { inScenarioDir, startBenchStack } from '../lib/stack';
import { Scope } from '../../dev/scope';
import { waitFor } from '../../dev/wait';
import { redisClient, requireBuild, startAgentSim, startWorkerProc, type LocalTemporal } from '../../dev/services';
import { enqueue, finishedCount, waitResults } from '../lib/traffic';

interface StartRound {
  kind: 'bare loop' | 'TaskBridge' | 'TaskBridge, 1 in flight' | 'TaskBridge × 2';
  round: number;
  tasks: number;
  seconds: number;
  perSec: number;
}

interface E2E {
  label: string;
  command: string;
  tasks: number;
  devices: number;
  wallS: number;
  perSec: number;
  completed: number;
  failed: number;
  /** Per traversal, from its result: workflow start to finish, ms. */
  workflowMs: { mean: number; p50: number; p95: number };
  /** From fetched histories of a sample. */
  sample: number;
  eventsPerTraversal: { mean: number; min: number; max: number };
  /** Workflow duration minus time inside activities, ms per traversal. */
  overheadMs: { mean: number; p50: number; p95: number };
  /** Part of the overhead spent waiting for an activity to be picked up, ms per traversal. */
  scheduleToStartMs: { mean: number; p95: number };
  activityMs: { mean: number };
  /** Device workflow history events per traversal it ran (sampled devices). */
  deviceEventsPerTraversal: number;
  /** Mean count per traversal of each history event type (sample). */
  eventTypes: Record<string, number>;
  /** CPU seconds per traversal by process during the run (ms). */
  cpuMsPerTraversal: Record<string, number>;
}

/** Runs the throughput scenario. */
export const run: ScenarioRun = async ({ args }) => {
  requireBuild(say);
  const o = parseOptions(args);
  const quick = o.has('quick');
  const K = o.num('tasks', quick ? 200 : 1000);
  const rounds = o.num('rounds', 2);
  const startDevices = o.num('start-devices', 100);
  const devices = o.num('devices', 20);
  const sampleSize = o.num('sample', 50);
  const parts = new Set(o.str('parts', o.has('no-bare-command') ? 'start,jar' : 'start,jar,noop,serial').split(','));
  const starts: StartRound[] = [];
  const e2e: E2E[] = [];
  let breakdown: BridgeCosts | undefined;
  await inScenarioDir('throughput', async (scope, workDir) => {
    const { temporal, redisUrl, redis, origin } = await startBenchStack(scope, workDir);
    const blocking = redisClient(scope, redisUrl);
    const apk = await origin.addApk('bench-warmup.apk', MiB);
    const apkUrl = origin.url('bench-warmup.apk');

    // 1. Starting: no worker polls this queue, so only the start path is measured.
    // Tasks name no agent: the bridge's directory places every device (as a device registry would).
    const noAgent = 'http://127.0.0.1:9';
    const task = (prefix: string, i: number, deviceCount: number) => ({
      taskId: `${prefix}-t${i}`,
      deviceId: `${prefix}-d${i % deviceCount}`,
      apkUrl,
      apkSha256: apk.sha256,
      packageName: 'com.example.throughput',
      traversal: { durationSec: 1 },
    });
    const policy = { heartbeatTimeoutMs: 30_000, maxAttempts: 3 };
    for (let r = 1; parts.has('start') && r <= rounds; r++) {
      const bare = `bare${r}`;
      say(`throughput: round ${r}: bare loop of ${K} signalWithStart…`);
      let t0 = performance.now();
      for (let i = 0; i < K; i++) {
        const req: TraversalRequest = {
          ...task(bare, i, startDevices),
          agentUrl: noAgent,
          policy,
          enqueuedAt: new Date().toISOString(),
        };
        await enqueue(temporal.client, 'bench-start', req);
      }
      let s = (performance.now() - t0) / 1000;
      starts.push({ kind: 'bare loop', round: r, tasks: K, seconds: s, perSec: K / s });

      const bridged = `bridge${r}`;
      say(`throughput: round ${r}: ${K} tasks through Redis and TaskBridge…`);
      const keyPrefix = `${bridged}:`;
      await pushTasks(
        redis,
        `${keyPrefix}traversal:tasks`,
        Array.from({ length: K }, (_, i) => JSON.stringify(task(bridged, i, startDevices))),
      );
      t0 = performance.now();
      const bridge = bridgeFor(redis, blocking, temporal.client, 'bench-start', keyPrefix, policy, noAgent).start();
      await waitFor(() => bridge.stats.started + bridge.stats.dead >= K, 600_000, 'the bridge to start every task', 20);
      s = (performance.now() - t0) / 1000;
      await bridge.stop();
      if (bridge.stats.dead)
        throw new Error(
          `${bridge.stats.dead} benchmark tasks were dead-lettered; see ${keyPrefix}traversal:tasks:dead`,
        );
      starts.push({ kind: 'TaskBridge', round: r, tasks: K, seconds: s, perSec: K / s });

      // The same bridge handling one item at a time: the per-item cost of Redis and validation.
      const serialPrefix = `serial${r}:`;
      await pushTasks(
        redis,
        `${serialPrefix}traversal:tasks`,
        Array.from({ length: K }, (_, i) => JSON.stringify(task(`serial${r}`, i, startDevices))),
      );
      t0 = performance.now();
      const serial = bridgeFor(
        redis,
        blocking,
        temporal.client,
        'bench-start',
        serialPrefix,
        policy,
        noAgent,
        'bench',
        1,
      ).start();
      await waitFor(
        () => serial.stats.started + serial.stats.dead >= K,
        600_000,
        'the serial bridge to start every task',
        20,
      );
      s = (performance.now() - t0) / 1000;
      await serial.stop();
      starts.push({ kind: 'TaskBridge, 1 in flight', round: r, tasks: K, seconds: s, perSec: K / s });

      // Two starters on one list (the design allows several): how far the bridge scales out.
      const pair = `pair${r}`;
      const pairPrefix = `${pair}:`;
      await pushTasks(
        redis,
        `${pairPrefix}traversal:tasks`,
        Array.from({ length: K }, (_, i) => JSON.stringify(task(pair, i, startDevices))),
      );
      const blocking2 = redisClient(scope, redisUrl);
      t0 = performance.now();
      const bridges = [
        bridgeFor(redis, blocking, temporal.client, 'bench-start', pairPrefix, policy, noAgent, 'bench-a').start(),
        bridgeFor(redis, blocking2, temporal.client, 'bench-start', pairPrefix, policy, noAgent, 'bench-b').start(),
      ];
      const total = () => bridges.reduce((n, b) => n + b.stats.started + b.stats.dead, 0);
      await waitFor(() => total() >= K, 600_000, 'two bridges to start every task', 20);
      s = (performance.now() - t0) / 1000;
      await Promise.all(bridges.map((b) => b.stop()));
      starts.push({ kind: 'TaskBridge × 2', round: r, tasks: K, seconds: s, perSec: K / s });
      say(
        `throughput: round ${r}: bare ${round(starts.at(-4)!.perSec)}/s, bridge ${round(starts.at(-3)!.perSec)}/s, one in flight ${round(starts.at(-2)!.perSec)}/s, two bridges ${round(starts.at(-1)!.perSec)}/s`,
      );
    }

    if (parts.has('start')) {
      const probe = JSON.stringify(task('probe', 0, 1));
      breakdown = await bridgeCosts(redis, probe, noAgent);
    }

    // 2. End to end through a worker process; 3. the same with a no-op command.
    const variants: { label: string; command: string; env: Record<string, string>; K?: number; devices?: number }[] =
      [];
    if (parts.has('jar'))
      variants.push({
        label: 'traversal simulator jar, duration 1 s',
        command: 'java -jar traversal-sim.jar',
        env: {},
      });
    // A command that lasts a fixed 0.2 s instead of a JVM start: the orchestration alone. (A command
    // that exits within a few ms trips a race in the runner; see docs/BENCHMARKS.md.)
    const sleepCmd = { command: 'sleep 0.2', env: { DT_TRAVERSAL_COMMAND: '["sleep","0.2"]' } };
    if (parts.has('noop')) variants.push({ label: '`sleep 0.2` instead of the JVM (orchestration only)', ...sleepCmd });
    // One device, one traversal at a time: the overhead without CPU contention (latency, not load).
    if (parts.has('serial'))
      variants.push({
        label: '`sleep 0.2`, one device (unloaded latency)',
        ...sleepCmd,
        K: Math.min(K, 50),
        devices: 1,
      });
    for (const [i, v] of variants.entries()) {
      e2e.push(
        await endToEnd(scope, {
          temporal,
          redis,
          blocking,
          redisUrl,
          apk,
          apkUrl,
          workDir,
          sampleSize,
          tag: `e${i + 1}`,
          ...v,
          K: v.K ?? K,
          devices: v.devices ?? devices,
        }),
      );
    }
  });
  return summarize(starts, e2e, breakdown);
};

/** What the bridge does per item besides the start itself, each timed alone (ms per item). */
interface BridgeCosts {
  redisRoundTrips: number;
  parseTask: number;
}

async function bridgeCosts(redis: Redis, raw: string, agentUrl: string): Promise<BridgeCosts> {
  const n = 1000;
  const agents = { agentFor: () => agentUrl };
  let t0 = performance.now();
  for (let i = 0; i < n; i++) parseTask(raw, agents);
  const parse = (performance.now() - t0) / n;
  await redis.lpush('probe:list', ...Array.from({ length: n }, () => raw));
  t0 = performance.now();
  for (let i = 0; i < n; i++) {
    await redis.blmove('probe:list', 'probe:processing', 'RIGHT', 'LEFT', 1);
    await redis.lrem('probe:processing', 1, raw);
  }
  const rtt = (performance.now() - t0) / n;
  await redis.del('probe:list', 'probe:processing');
  return { redisRoundTrips: rtt, parseTask: parse };
}

/**
 * A starter's bridge as `npm run starter` builds it (URL policy and extra-args allow-list
 * included), on its own key prefix; `policy` is the run policy the bare loop sends too.
 */
function bridgeFor(
  redis: Redis,
  blocking: Redis,
  client: Client,
  taskQueue: string,
  keyPrefix: string,
  policy: TraversalRequest['policy'],
  agentUrl: string,
  starterId = 'bench',
  concurrency?: number,
): TaskBridge {
  const config = loadConfig(
    { DT_ALLOWED_HOSTS: '127.0.0.1' },
    { taskQueue, starterId, ...(concurrency ? { starterConcurrency: concurrency } : {}) },
  );
  return createStarter({
    config,
    client,
    redis,
    blocking,
    agents: { agentFor: () => agentUrl },
    keyPrefix,
    policy,
    blockTimeoutSec: 0.2,
  });
}

async function pushTasks(redis: Redis, key: string, items: string[]): Promise<void> {
  for (let i = 0; i < items.length; i += 500) await redis.lpush(key, ...items.slice(i, i + 500));
}

interface E2EContext {
  temporal: LocalTemporal;
  redis: Redis;
  blocking: Redis;
  redisUrl: string;
  apk: ApkInfo;
  apkUrl: string;
  workDir: string;
  K: number;
  devices: number;
  sampleSize: number;
  tag: string;
  label: string;
  command: string;
  env: Record<string, string>;
}

async function endToEnd(parent: Scope, c: E2EContext): Promise<E2E> {
  const scope = new Scope(`throughput ${c.tag}`, say);
  try {
    const deviceIds = Array.from({ length: c.devices }, (_, i) => `${c.tag}-d${i + 1}`);
    const agent = await startAgentSim(scope, {
      devices: deviceIds,
      logFile: path.join(c.workDir, `${c.tag}-agent.log`),
    });
    const taskQueue = `bench-e2e-${c.tag}`;
    const worker = await startWorkerProc(scope, {
      temporalAddress: c.temporal.address,
      redisUrl: c.redisUrl,
      taskQueue,
      dataDir: path.join(c.workDir, `${c.tag}-data`),
      logFile: path.join(c.workDir, `${c.tag}-worker.log`),
      env: { DT_LOG_LEVEL: 'warn', ...c.env },
    });
    const before = await finishedCount(c.redis);
    const cpuPids: Record<string, number> = {
      'Temporal dev server': c.temporal.server.process.pid!,
      worker: worker.proc.pid,
      'traversal commands': -worker.proc.pid,
      'agent simulator': agent.proc.pid,
      'bench (bridge, origin)': process.pid,
    };
    const cpu0 = cpuSnapshot(cpuPids);
    const tasks = Array.from({ length: c.K }, (_, i) => ({
      taskId: `${c.tag}-t${i}`,
      deviceId: deviceIds[i % c.devices]!,
      apkUrl: c.apkUrl,
      apkSha256: c.apk.sha256,
      packageName: 'com.example.throughput',
      traversal: { durationSec: 1 },
    }));
    say(`throughput: end to end (${c.label}): ${c.K} traversals on ${c.devices} devices…`);
    const keyPrefix = `${c.tag}:`;
    const t0 = performance.now();
    await pushTasks(
      c.redis,
      `${keyPrefix}traversal:tasks`,
      tasks.map((t) => JSON.stringify(t)),
    );
    const bridge = bridgeFor(
      c.redis,
      c.blocking,
      c.temporal.client,
      taskQueue,
      keyPrefix,
      { heartbeatTimeoutMs: 30_000, maxAttempts: 3 },
      agent.url,
    ).start();
    scope.add('bridge', () => bridge.stop());
    const deadline = Date.now() + 300_000 + c.K * 2000;
    let last = -1;
    for (;;) {
      const done = (await finishedCount(c.redis)) - before;
      if (done >= c.K) break;
      const dead = worker.proc.exitNote() ?? agent.proc.exitNote();
      if (dead) throw new Error(`worker or agent exited during the run: ${dead}`);
      if (Date.now() > deadline) throw new Error(`only ${done} of ${c.K} traversals finished in time`);
      if (Math.floor(done / 100) !== Math.floor(last / 100)) say(`throughput: ${done}/${c.K} finished`);
      last = done;
      await sleep(250);
    }
    const wallS = (performance.now() - t0) / 1000;
    const cpu1 = cpuSnapshot(cpuPids);
    const results = await waitResults(
      c.redis,
      tasks.map((t) => ({ taskId: t.taskId, deviceId: t.deviceId })),
      60_000,
    );
    const durations = results.map((r) => Date.parse(r.finishedAt) - Date.parse(r.startedAt));
    const sample = await historySample(c.temporal.client, results, c.sampleSize);
    const deviceSample = await Promise.all(
      deviceIds.slice(0, 5).map(async (d) => {
        const h = await c.temporal.client.workflow.getHandle(deviceWorkflowId(d)).fetchHistory();
        return (h.events?.length ?? 0) / tasks.filter((t) => t.deviceId === d).length;
      }),
    );
    return {
      label: c.label,
      command: c.command,
      tasks: c.K,
      devices: c.devices,
      wallS,
      perSec: c.K / wallS,
      completed: results.filter((r) => r.status === 'completed').length,
      failed: results.filter((r) => r.status !== 'completed').length,
      workflowMs: { mean: mean(durations), p50: median(durations), p95: percentile(durations, 95) },
      sample: sample.length,
      eventsPerTraversal: {
        mean: mean(sample.map((s) => s.events)),
        min: Math.min(...sample.map((s) => s.events)),
        max: Math.max(...sample.map((s) => s.events)),
      },
      overheadMs: {
        mean: mean(sample.map((s) => s.overhead)),
        p50: median(sample.map((s) => s.overhead)),
        p95: percentile(
          sample.map((s) => s.overhead),
          95,
        ),
      },
      scheduleToStartMs: {
        mean: mean(sample.map((s) => s.scheduleToStart)),
        p95: percentile(
          sample.map((s) => s.scheduleToStart),
          95,
        ),
      },
      activityMs: { mean: mean(sample.map((s) => s.activity)) },
      deviceEventsPerTraversal: mean(deviceSample),
      eventTypes: Object.fromEntries(
        [...new Set(sample.flatMap((x) => Object.keys(x.types)))]
          .map((k) => [k, round(mean(sample.map((x) => x.types[k] ?? 0)), 1)] as [string, number])
          .sort((a, b) => b[1] - a[1]),
      ),
      cpuMsPerTraversal: Object.fromEntries(
        Object.keys(cpuPids).map((k) => [k, round(((cpu1[k]! - cpu0[k]!) * 1000) / c.K, 1)]),
      ),
    };
  } finally {
    await scope.close();
    void parent;
  }
}

/**
 * CPU seconds used so far per named pid (utime + stime from /proc/<pid>/stat). A negative pid
 * stands for the reaped children of that process (cutime + cstime): the traversal commands.
 */
function cpuSnapshot(pids: Record<string, number>): Record<string, number> {
  const tick = 100; // USER_HZ on Linux
  const out: Record<string, number> = {};
  for (const [name, pid] of Object.entries(pids)) {
    try {
      const text = readFileSync(`/proc/${Math.abs(pid)}/stat`, 'utf8');
      const f = text
        .slice(text.lastIndexOf(')') + 2)
        .split(' ')
        .map(Number);
      // f[0] is field 3; utime, stime, cutime, cstime are fields 14-17.
      out[name] = (pid > 0 ? f[11]! + f[12]! : f[13]! + f[14]!) / tick;
    } catch {
      out[name] = NaN;
    }
  }
  return out;
}

/** Reads the histories of an evenly spread sample of traversals and splits their time. */
async function historySample(client: Client, results: TraversalResult[], n: number) {
  const step = Math.max(1, Math.floor(results.length / n));
  const picked = results.filter((_, i) => i % step === 0).slice(0, n);
  return Promise.all(
    picked.map(async (r) => {
      const h = await client.workflow.getHandle(traversalWorkflowId(r.taskId, r.deviceId)).fetchHistory();
      const events = h.events ?? [];
      const time = (e: (typeof events)[number]) => tsToMs(e.eventTime);
      const byId = new Map(events.map((e) => [Number(e.eventId), e]));
      let activity = 0;
      let scheduleToStart = 0;
      for (const e of events) {
        const done = e.activityTaskCompletedEventAttributes ?? e.activityTaskFailedEventAttributes;
        if (!done) continue;
        const started = byId.get(Number(done.startedEventId));
        const scheduled = byId.get(Number(done.scheduledEventId));
        if (started) activity += time(e) - time(started);
        if (started && scheduled) scheduleToStart += time(started) - time(scheduled);
      }
      const total = time(events.at(-1)!) - time(events[0]!);
      const types: Record<string, number> = {};
      for (const e of events) {
        const key = Object.keys(e).find((k) => k.endsWith('EventAttributes') && (e as Record<string, unknown>)[k]);
        const name = key ? key.replace(/EventAttributes$/, '') : 'unknown';
        types[name] = (types[name] ?? 0) + 1;
      }
      return { events: events.length, activity, scheduleToStart, overhead: total - activity, types };
    }),
  );
}

function summarize(starts: StartRound[], e2e: E2E[], costs?: BridgeCosts): { markdown: string; json: unknown } {
  const rate = (kind: StartRound['kind']) => median(starts.filter((s) => s.kind === kind).map((s) => s.perSec));
  const ratio = starts.length ? rate('TaskBridge') / rate('bare loop') : NaN;
  const startRows = starts.map((s) => [s.round, s.kind, s.tasks, round(s.seconds, 2), round(s.perSec)]);
  const e2eRows = e2e.map((e) => [
    e.label,
    `${e.tasks} on ${e.devices} devices`,
    `${e.completed} ok${e.failed ? `, ${e.failed} failed` : ''}`,
    round(e.wallS),
    round(e.perSec, 2),
    `${round(e.workflowMs.p50, 0)} / ${round(e.workflowMs.p95, 0)}`,
    `${round(e.activityMs.mean, 0)}`,
    `${round(e.overheadMs.mean, 0)} (p50 ${round(e.overheadMs.p50, 0)}, p95 ${round(e.overheadMs.p95, 0)})`,
    `${round(e.scheduleToStartMs.mean, 0)} (p95 ${round(e.scheduleToStartMs.p95, 0)})`,
    `${round(e.eventsPerTraversal.mean)} (${e.eventsPerTraversal.min}–${e.eventsPerTraversal.max})`,
    round(e.deviceEventsPerTraversal, 1),
  ]);
  const markdown = [
    '**Starting** — the same signalWithStart of the device workflow against one dev server with no worker on the queue: the bare loop',
    'sends them one after another; the bridge also moves each item with BLMOVE, validates it and removes it with LREM, with up to 8 items',
    'in flight (DT_STARTER_CONCURRENCY, requests for one device kept in order) or 1. Rounds interleaved; medians compared.',
    '',
    mdTable(['round', 'client', 'tasks', 'seconds', 'tasks/s'], startRows),
    '',
    mdTable(
      ['target', 'measured', ''],
      [
        [
          'TaskBridge ≥ 0.9 × bare loop',
          `${round(ratio, 2)} × (${round(rate('TaskBridge'))} vs ${round(rate('bare loop'))} tasks/s)`,
          ratio >= 0.9 ? 'met' : 'NOT met',
        ],
        [
          '(one item in flight)',
          `${round(rate('TaskBridge, 1 in flight') / rate('bare loop'), 2)} × (${round(rate('TaskBridge, 1 in flight'))} tasks/s)`,
          '',
        ],
        [
          '(two starters on one list)',
          `${round(rate('TaskBridge × 2') / rate('bare loop'), 2)} × (${round(rate('TaskBridge × 2'))} tasks/s)`,
          '',
        ],
      ],
    ),
    '',
    costs
      ? `Per item the bridge adds two Redis round trips (BLMOVE, LREM: ${round(costs.redisRoundTrips, 2)} ms together, timed alone) and ` +
        `validation (parseTask: ${round(costs.parseTask, 3)} ms) to the start itself (${round(1000 / rate('bare loop'), 2)} ms in the bare loop).`
      : '',
    '',
    '**End to end** — tasks pushed into Redis, bridged, run by one worker process (default settings) against the agent simulator',
    '(no latency; a cold-start measurement costs it ≤ 50 ms), every step of the traversal workflow included. Times in ms per traversal.',
    '"Overhead" is the workflow\'s duration minus the time spent inside activities (from fetched histories): workflow tasks, queueing',
    'for activity slots and the round trips through the server; "schedule-to-start" is the queueing part of it.',
    '',
    mdTable(
      [
        'command',
        'traversals',
        'status',
        'wall s',
        'traversals/s',
        'workflow p50 / p95',
        'in activities (mean)',
        'Temporal overhead (mean)',
        'schedule-to-start (mean)',
        'history events / traversal',
        'device wf events / traversal',
      ],
      e2eRows,
    ),
    '',
    'CPU per traversal (ms of CPU time, all processes on the same 2 cores):',
    '',
    mdTable(
      ['command', ...Object.keys(e2e[0]?.cpuMsPerTraversal ?? {})],
      e2e.map((e) => [e.label, ...Object.values(e.cpuMsPerTraversal)]),
    ),
    '',
    e2e[0]
      ? `History events of one traversal workflow by type (mean of the sample, ${e2e[0].label}): ` +
        Object.entries(e2e[0].eventTypes)
          .map(([k, v]) => `${k} ${v}`)
          .join(', ') +
        '.'
      : '',
  ].join('\n');
  return {
    markdown,
    json: {
      starts,
      startRatio: ratio,
      bridgeCosts: costs ?? null,
      twoStartersRatio: starts.length ? rate('TaskBridge × 2') / rate('bare loop') : null,
      serialBridgeRatio: starts.length ? rate('TaskBridge, 1 in flight') / rate('bare loop') : null,
      endToEnd: e2e,
    },
  };
}
