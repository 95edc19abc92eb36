/**
 * memory — peak worker RSS with N devices installing an APK of size S at once, through the real
 * stack (dev server, Redis, origin, agent simulator and worker as separate processes), and the old
 * service's install path (Python: whole APK in memory, multipart POST) against the same agent in
 * the same run. Writes memory.md/.json and the chart memory-rss.svg; with --tuning, compares worker
 * flags at one cell instead and writes memory-tuning.md/.json.
 *
 * Options: --quick, --devices 1,5,20,50, --sizes 50,200,1024 (MiB), --old-devices, --old-sizes,
 * --old-budget-gib 10 (skip old cells estimated above it; a watchdog kills one that passes it),
 * --max-cell-gib (skip new cells moving more than this to agents), --worker-node-args "…",
 * --worker-env K=V,… (the main matrix's worker), --tuned-cells 20x1024,50x1024, --tuned-env
 * MALLOC_ARENA_MAX=1, --tuned-node-args --max-semi-space-size=1 (extra cells with tuned flags),
 * --no-old, --duration 1 (traversal seconds), --tuning, --tuning-cell 20x200, --repeats 3.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import Redis from 'ioredis';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { PROJECT_ROOT } from '../../src/config';
import { readMemory } from '../../dev/rss';
import type { TraversalRequest, TraversalResult } from '../../src/contract/messages';
import { ApkOrigin, type ApkInfo } from '../../sim/origin';
import { lineChart, type Series } from '../lib/chart';
import { TreeSampler, type TreeMemory } from '../lib/procs';
import { ensureOldServicePython } from '../lib/python';
import { GiB, mdTable, median, MiB, parseOptions, round, say, sizeLabel, toMiB, type ScenarioRun } from '../lib/report';
import { inScenarioDir, inWorkDir, startBenchStack } from '../lib/stack';
import { spawnLogged } from '../../dev/process';
import type { Scope } from '../../dev/scope';
import { requireBuild, startAgentSim, startWorkerProc, type LocalTemporal } from '../../dev/services';
import { enqueue, waitResults } from '../lib/traffic';

/** The container the old service was OOMKilled in (docker -m 500m), bytes. */
const CONTAINER = 500 * MiB;
const PACKAGE = 'com.example.bench';

/** How a worker process was started: node flags and extra environment. */
interface WorkerConfig {
  label: string;
  nodeArgs: string[];
  env: Record<string, string>;
}

/** One measured cell of the matrix. */
interface Cell {
  approach: 'new' | 'old';
  /** Worker configuration (new approach only). */
  config?: string;
  devices: number;
  sizeBytes: number;
  status: 'ok' | 'failed' | 'killed' | 'skipped';
  note?: string;
  /** RSS of the fresh worker process before it ran anything (old approach: after imports). */
  coldIdle?: number;
  /** RSS at rest after one warm-up traversal of a 1 MiB APK: the baseline of "peak − idle". */
  idle?: number;
  memory?: TreeMemory;
  wallS?: number;
  /** Bytes that reached agents (install traffic), plus the origin download for the new approach. */
  bytesMoved?: number;
  installMsMedian?: number;
  failures?: number;
}

interface Settings {
  devices: number[];
  sizes: number[];
  oldDevices: number[];
  oldSizes: number[];
  oldBudget: number;
  maxCellBytes: number;
  durationSec: number;
  worker: WorkerConfig;
  tuned: WorkerConfig;
  tunedCells: { n: number; size: number }[];
  old: boolean;
  tuning?: { n: number; size: number; repeats: number; configs: WorkerConfig[] };
  tag: string;
}

function parseEnv(text: string, flag: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const pair of text.split(',').filter(Boolean)) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new Error(`${flag} expects KEY=VALUE pairs separated by commas, got ${pair}`);
    env[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return env;
}

function parseCells(text: string, flag: string): { n: number; size: number }[] {
  return text
    .split(',')
    .filter(Boolean)
    .map((c) => {
      const m = /^(\d+)x(\d+)$/.exec(c.trim());
      if (!m) throw new Error(`${flag} expects cells like 20x1024 (devices x MiB), got ${c}`);
      return { n: Number(m[1]), size: Number(m[2]) * MiB };
    });
}

/** Worker flags measured by --tuning; the last one is the recommended configuration. */
const TUNING_CONFIGS: WorkerConfig[] = [
  { label: 'default', nodeArgs: [], env: {} },
  { label: 'MALLOC_ARENA_MAX=2', nodeArgs: [], env: { MALLOC_ARENA_MAX: '2' } },
  { label: 'MALLOC_ARENA_MAX=1', nodeArgs: [], env: { MALLOC_ARENA_MAX: '1' } },
  { label: '--max-semi-space-size=1', nodeArgs: ['--max-semi-space-size=1'], env: {} },
  { label: '--max-old-space-size=128', nodeArgs: ['--max-old-space-size=128'], env: {} },
  {
    label: 'MALLOC_ARENA_MAX=1 --max-semi-space-size=1',
    nodeArgs: ['--max-semi-space-size=1'],
    env: { MALLOC_ARENA_MAX: '1' },
  },
];

function configLabel(nodeArgs: string[], env: Record<string, string>): string {
  const parts = [...Object.entries(env).map(([k, v]) => `${k}=${v}`), ...nodeArgs];
  return parts.length ? parts.join(' ') : 'default';
}

function settings(args: string[]): Settings {
  const o = parseOptions(args);
  const quick = o.has('quick');
  const devices = o.list('devices', quick ? [1, 5, 20] : [1, 5, 20, 50]);
  const sizes = o.list('sizes', quick ? [50, 200] : [50, 200, 1024]).map((m) => m * MiB);
  const nodeArgs = o.str('worker-node-args', '').split(' ').filter(Boolean);
  const env = parseEnv(o.str('worker-env', ''), '--worker-env');
  const tunedNode = o.str('tuned-node-args', '--max-semi-space-size=1').split(' ').filter(Boolean);
  const tunedEnv = parseEnv(o.str('tuned-env', 'MALLOC_ARENA_MAX=1'), '--tuned-env');
  const tuningCell = parseCells(o.str('tuning-cell', '20x200'), '--tuning-cell')[0]!;
  return {
    devices,
    sizes,
    oldDevices: o.list('old-devices', devices),
    oldSizes: o
      .list(
        'old-sizes',
        sizes.map((s) => s / MiB),
      )
      .map((m) => m * MiB),
    oldBudget: o.num('old-budget-gib', 10) * GiB,
    maxCellBytes: o.num('max-cell-gib', Infinity) * GiB,
    durationSec: o.num('duration', 1),
    worker: { label: configLabel(nodeArgs, env), nodeArgs, env },
    tuned: { label: configLabel(tunedNode, tunedEnv), nodeArgs: tunedNode, env: tunedEnv },
    tunedCells: parseCells(o.str('tuned-cells', quick ? '20x200' : '20x1024,50x1024'), '--tuned-cells'),
    old: !o.has('no-old'),
    tuning: o.has('tuning') ? { ...tuningCell, repeats: o.num('repeats', 3), configs: TUNING_CONFIGS } : undefined,
    tag: o.str('tag', ''),
  };
}

/** Runs the memory scenario. */
export const run: ScenarioRun = async ({ args, resultsDir }) => {
  requireBuild(say);
  const s = settings(args);
  const python = s.old && !s.tuning ? ensureOldServicePython() : '';
  const cells: Cell[] = [];
  const stamp = Date.now().toString(36);
  await inScenarioDir('memory', async (scope, workDir) => {
    const { temporal, redisUrl, redis, origin } = await startBenchStack(scope, workDir);
    const warmupApk = await origin.addApk('bench-warmup.apk', MiB);
    const warmup = { apk: warmupApk, url: origin.url('bench-warmup.apk') };
    const context = async (size: number): Promise<CellContext> => {
      const name = `bench-${size / MiB}m.apk`;
      say(`memory: preparing ${name} (${sizeLabel(size)}; generated once, reused later)`);
      const apk = await origin.addApk(name, size);
      return {
        temporal,
        redis,
        redisUrl,
        origin,
        apk,
        url: origin.url(name),
        warmup,
        workDir,
        stamp,
        s,
      };
    };

    if (s.tuning) {
      const ctx = await context(s.tuning.size);
      for (let r = 0; r < s.tuning.repeats; r++) {
        for (const config of s.tuning.configs) {
          cells.push(await newCell(ctx, s.tuning.n, config));
          report(cells.at(-1)!);
        }
      }
      return;
    }

    // The old approach's memory grows with N × S; its factor is learned from the cells that ran
    // (2.5 × until the first one did).
    let oldFactor: number | undefined;
    const sizes = [...new Set([...s.sizes, ...s.oldSizes, ...s.tunedCells.map((c) => c.size)])].sort((a, b) => a - b);
    for (const size of sizes) {
      const ctx = await context(size);
      const all = [
        ...new Set([...(s.sizes.includes(size) ? s.devices : []), ...(s.oldSizes.includes(size) ? s.oldDevices : [])]),
      ].sort((a, b) => a - b);
      for (const n of all) {
        if (s.sizes.includes(size) && s.devices.includes(n)) {
          if (n * size > s.maxCellBytes) {
            cells.push({
              approach: 'new',
              config: s.worker.label,
              devices: n,
              sizeBytes: size,
              status: 'skipped',
              note: `moves ${round((n * size) / GiB)} GiB > --max-cell-gib`,
            });
          } else {
            cells.push(await newCell(ctx, n, s.worker));
            report(cells.at(-1)!);
          }
        }
        if (s.old && s.oldSizes.includes(size) && s.oldDevices.includes(n)) {
          const estimate = 30 * MiB + (oldFactor ?? 2.5) * n * size;
          if (estimate > s.oldBudget) {
            cells.push({
              approach: 'old',
              devices: n,
              sizeBytes: size,
              status: 'skipped',
              note: `would need ≈ ${round(estimate / GiB)} GiB (> --old-budget-gib ${round(s.oldBudget / GiB)})`,
            });
          } else {
            const cell = await oldCell(ctx, python, n);
            cells.push(cell);
            report(cell);
            if (cell.status === 'ok' && cell.memory && cell.idle !== undefined) {
              oldFactor = Math.max(oldFactor ?? 0, (cell.memory.peak - cell.idle) / (n * size));
            }
          }
        }
      }
      for (const t of s.tunedCells.filter((c) => c.size === size)) {
        cells.push(await newCell(ctx, t.n, s.tuned));
        report(cells.at(-1)!);
      }
    }
  });
  if (s.tuning) return tuningSummary(cells, s);
  writeFileSync(path.join(resultsDir, s.tag ? `memory-${s.tag}-rss.svg` : 'memory-rss.svg'), chart(cells, s));
  return summarize(cells, s);
};

/** Makes every cell's device and task ids unique within a run (repeats of one cell included). */
let cellCounter = 0;

interface CellContext {
  temporal: LocalTemporal;
  redis: Redis;
  redisUrl: string;
  origin: ApkOrigin;
  apk: ApkInfo;
  url: string;
  warmup: { apk: ApkInfo; url: string };
  workDir: string;
  stamp: string;
  s: Settings;
}

function report(c: Cell): void {
  if (c.status !== 'ok' || !c.memory) {
    say(`memory: ${c.approach} ${c.devices} × ${sizeLabel(c.sizeBytes)}: ${c.status}${c.note ? ` (${c.note})` : ''}`);
    return;
  }
  say(
    `memory: ${c.approach} ${c.devices} × ${sizeLabel(c.sizeBytes)}: idle ${toMiB(c.idle!)} MiB, peak ${toMiB(c.memory.peak)} MiB, ` +
      `VmHWM ${toMiB(c.memory.hwm)} MiB, children peak ${toMiB(c.memory.childrenPeakSum)} MiB, ${round(c.wallS!)} s`,
  );
}

/** Lowest RSS over a short quiet period: the idle figure. */
async function idleRss(pid: number, ms = 1500): Promise<number> {
  let low = Infinity;
  for (let t = 0; t < ms; t += 100) {
    const m = readMemory(pid);
    if (m) low = Math.min(low, m.rss);
    await sleep(100);
  }
  return low;
}

/** One cell's id, folder, device ids and scope, handed to its measurement. */
interface CellRun {
  cellId: string;
  cellDir: string;
  devices: string[];
  scope: Scope;
}

/** A measured cell, and whether its folder may go (otherwise it stays, with the logs). */
interface Measured {
  cell: Cell;
  clean: boolean;
}

/**
 * Runs one cell's measurement in its own folder and scope, under ids unique within the run; an
 * error becomes `base` with the message as its note, and keeps the folder.
 */
async function measureCell(ctx: CellContext, base: Cell, measure: (run: CellRun) => Promise<Measured>): Promise<Cell> {
  const kind = base.approach === 'new' ? 'n' : 'o';
  const cellId = `${kind}${base.devices}x${base.sizeBytes / MiB}-${ctx.stamp}-${++cellCounter}`;
  const devices = Array.from({ length: base.devices }, (_, i) => `${cellId}-d${i + 1}`);
  const { cell } = await inWorkDir(
    `memory ${cellId}`,
    path.join(ctx.workDir, cellId),
    async (scope, cellDir): Promise<Measured> => {
      try {
        return await measure({ cellId, cellDir, devices, scope });
      } catch (err) {
        return { cell: { ...base, note: (err as Error).message.slice(0, 300) }, clean: false };
      }
    },
    (m) => m.clean,
  );
  return cell;
}

/** This project: N traversals through one worker process, APK streamed and installed by URL. */
async function newCell(ctx: CellContext, n: number, config: WorkerConfig): Promise<Cell> {
  const size = ctx.apk.size;
  const base: Cell = { approach: 'new', config: config.label, devices: n, sizeBytes: size, status: 'failed' };
  say(`memory: new approach, ${n} devices × ${sizeLabel(size)}, worker ${config.label}…`);
  const request = (
    taskId: string,
    deviceId: string,
    agentUrl: string,
    apk: { apk: ApkInfo; url: string },
    durationSec: number,
  ): TraversalRequest => ({
    taskId,
    deviceId,
    agentUrl,
    apkUrl: apk.url,
    apkSha256: apk.apk.sha256,
    packageName: PACKAGE,
    traversal: { durationSec, extraArgs: ['--tick-ms', '100'] },
    policy: { heartbeatTimeoutMs: 30_000, maxAttempts: 3, initialRetryMs: 1000 },
  });
  return measureCell(ctx, base, async ({ cellId, cellDir, devices, scope }) => {
    const warmDevice = `${cellId}-warm`;
    const agent = await startAgentSim(scope, {
      devices: [...devices, warmDevice],
      logFile: path.join(cellDir, 'agent.log'),
    });
    const worker = await startWorkerProc(scope, {
      temporalAddress: ctx.temporal.address,
      redisUrl: ctx.redisUrl,
      taskQueue: `mem-${cellId}`,
      dataDir: cellDir,
      logFile: path.join(cellDir, 'worker.log'),
      nodeArgs: config.nodeArgs,
      env: { DT_HEARTBEAT_TIMEOUT: '30s', ...config.env },
    });
    const isDead = () => worker.proc.exitNote() ?? agent.proc.exitNote();
    const coldIdle = await idleRss(worker.proc.pid);
    // One small traversal first: it loads the workflow sandbox, the report archiver and the JIT's
    // working set, which every worker has after its first run whatever the APK. What is left
    // between that baseline and the peak is what devices and APK size cost.
    await enqueue(
      ctx.temporal.client,
      `mem-${cellId}`,
      request(`warm-${cellId}`, warmDevice, agent.url, ctx.warmup, 0),
    );
    await waitResults(ctx.redis, [{ taskId: `warm-${cellId}`, deviceId: warmDevice }], 120_000, isDead);
    const idle = await idleRss(worker.proc.pid, 2000);
    const sampler = new TreeSampler(worker.proc.pid).start();
    scope.add('sampler', () => sampler.stop());
    const t0 = Date.now();
    const taskId = `mem-${cellId}`;
    await Promise.all(
      devices.map((deviceId) =>
        enqueue(
          ctx.temporal.client,
          `mem-${cellId}`,
          request(taskId, deviceId, agent.url, { apk: ctx.apk, url: ctx.url }, ctx.s.durationSec),
        ),
      ),
    );
    // Generous: loopback moves GiB/s, but 50 JVMs and 50 hashing installs share 2 cores.
    const timeoutMs = 180_000 + ((n * size) / (20 * MiB)) * 1000;
    const results = await waitResults(
      ctx.redis,
      devices.map((deviceId) => ({ taskId, deviceId })),
      timeoutMs,
      isDead,
    );
    const wallS = (Date.now() - t0) / 1000;
    const memory = sampler.stop();
    const failed = results.filter((r) => r.status !== 'completed');
    const cell: Cell = {
      ...base,
      status: failed.length === 0 ? 'ok' : 'failed',
      note: failed.length ? describeFailures(failed) : undefined,
      coldIdle,
      idle,
      memory,
      wallS,
      bytesMoved: n * size + size,
      installMsMedian: median(results.map((r) => r.timings.installApp ?? 0)),
      failures: failed.length,
    };
    return { cell, clean: failed.length === 0 };
  });
}

function describeFailures(failed: TraversalResult[]): string {
  const first = failed[0]!;
  return `${failed.length} failed, e.g. ${first.deviceId}: ${first.error?.type ?? first.status} ${first.error?.message ?? ''}`.slice(
    0,
    300,
  );
}

/** The old service: one Python thread per device, `requests.get(url).content`, multipart POST. */
async function oldCell(ctx: CellContext, python: string, n: number): Promise<Cell> {
  const size = ctx.apk.size;
  const base: Cell = { approach: 'old', devices: n, sizeBytes: size, status: 'failed' };
  say(`memory: old approach (Python), ${n} devices × ${sizeLabel(size)}…`);
  return measureCell(ctx, base, async ({ cellDir, devices, scope }) => {
    const agent = await startAgentSim(scope, { devices, logFile: path.join(cellDir, 'agent.log') });
    const proc = spawnLogged(
      'old service',
      python,
      [
        path.join(PROJECT_ROOT, 'bench', 'old_service.py'),
        '--agent',
        agent.url,
        '--devices',
        devices.join(','),
        '--url',
        ctx.url,
        '--package',
        PACKAGE,
        '--sha256',
        ctx.apk.sha256,
      ],
      { logFile: path.join(cellDir, 'old.log'), stdin: 'pipe', stdout: 'pipe', scope, graceMs: 15_000 },
    );
    const lines = readline.createInterface({ input: proc.child.stdout! });
    const next = lineReader(lines);
    const ready = await Promise.race([next(), sleep(30_000).then(() => undefined)]);
    if (!ready?.includes('ready'))
      throw new Error(`old service did not start: ${proc.exitNote() ?? 'no ready line'}; see ${proc.logFile}`);
    const idle = await idleRss(proc.pid, 1000);
    const coldIdle = idle;
    const sampler = new TreeSampler(proc.pid).start();
    scope.add('sampler', () => sampler.stop());
    // A runaway cell is stopped before it can take the machine down; the cell then reports "killed".
    let killed = false;
    const watchdog = setInterval(() => {
      const m = readMemory(proc.pid);
      if (m && m.rss > ctx.s.oldBudget) {
        killed = true;
        proc.child.kill('SIGKILL');
      }
    }, 50);
    scope.add('watchdog', () => clearInterval(watchdog));
    const t0 = Date.now();
    proc.child.stdin!.end('go\n');
    const timeoutMs = 180_000 + ((n * size) / (10 * MiB)) * 1000;
    const line = await Promise.race([next(), sleep(timeoutMs).then(() => 'timeout')]);
    const wallS = (Date.now() - t0) / 1000;
    clearInterval(watchdog);
    const memory = sampler.stop();
    if (killed)
      return {
        cell: {
          ...base,
          status: 'killed',
          note: `RSS passed ${toMiB(ctx.s.oldBudget)} MiB`,
          coldIdle,
          idle,
          memory,
          wallS,
        },
        clean: true,
      };
    if (!line || line === 'timeout')
      throw new Error(`old service gave no result (${line ?? proc.exitNote() ?? 'no output'}); see ${proc.logFile}`);
    const out = JSON.parse(line) as {
      wallS: number;
      devices: Record<string, { ok: boolean; error?: string; installS?: number }>;
    };
    const rows = Object.values(out.devices);
    const failed = rows.filter((r) => !r.ok);
    const cell: Cell = {
      ...base,
      status: failed.length === 0 && rows.length === n ? 'ok' : 'failed',
      note: failed.length ? `${failed.length} failed, e.g. ${failed[0]!.error}` : undefined,
      coldIdle,
      idle,
      memory,
      wallS,
      bytesMoved: n * size * 2,
      installMsMedian: median(rows.map((r) => (r.installS ?? 0) * 1000)),
      failures: failed.length,
    };
    return { cell, clean: failed.length === 0 };
  });
}

/** Reads lines one at a time; resolves undefined when the stream ends. */
function lineReader(rl: readline.Interface): () => Promise<string | undefined> {
  const buffered: string[] = [];
  const waiting: ((l: string | undefined) => void)[] = [];
  let closed = false;
  rl.on('line', (l) => (waiting.length ? waiting.shift()!(l) : buffered.push(l)));
  rl.on('close', () => {
    closed = true;
    while (waiting.length) waiting.shift()!(undefined);
  });
  return () => {
    if (buffered.length) return Promise.resolve(buffered.shift());
    if (closed) return Promise.resolve(undefined);
    return new Promise((resolve) => waiting.push(resolve));
  };
}

const mibOf = (b: number | undefined) => (b === undefined ? '' : toMiB(b));

function cellRow(c: Cell): unknown[] {
  const m = c.memory;
  const ok = c.status === 'ok' && m && c.idle !== undefined;
  const idleCols =
    c.approach === 'new' ? [ok ? mibOf(c.coldIdle) : '', ok ? mibOf(c.idle) : ''] : [ok ? mibOf(c.idle) : ''];
  const deltaCols =
    c.approach === 'new'
      ? [
          ok ? round((m.peak - c.idle!) / MiB) : '',
          ok && c.coldIdle !== undefined ? round((m.peak - c.coldIdle) / MiB) : '',
        ]
      : [ok ? round((m.peak - c.idle!) / MiB) : ''];
  return [
    c.devices,
    sizeLabel(c.sizeBytes),
    ...idleCols,
    ok ? mibOf(m.peak) : c.status === 'killed' && m ? `> ${mibOf(m.peak)}` : '',
    ok ? mibOf(m.hwm) : '',
    ...deltaCols,
    ...(c.approach === 'new'
      ? [ok ? `${mibOf(m.childrenPeakSum)} (${m.childrenMaxCount} × ${m.childCommands.join('/') || '-'})` : '']
      : []),
    ok && c.bytesMoved !== undefined ? `${round(c.bytesMoved / GiB, 2)} GiB in ${round(c.wallS!)} s` : '',
    ok ? (m.peak <= CONTAINER ? 'yes' : 'no') : '',
    c.status === 'ok' ? 'ok' : `${c.status}${c.note ? `: ${c.note}` : ''}`,
  ];
}

const HEAD_NEW = [
  'devices',
  'APK',
  'idle fresh MiB',
  'idle warm MiB',
  'peak MiB (sampled)',
  'VmHWM MiB',
  'peak − warm idle',
  'peak − fresh idle',
  'java children peak MiB',
  'traffic',
  '≤ 500 MiB',
  'status',
];
const HEAD_OLD = [
  'devices',
  'APK',
  'idle MiB',
  'peak MiB (sampled)',
  'VmHWM MiB',
  'peak − idle MiB',
  'traffic',
  '≤ 500 MiB',
  'status',
];

const PREAMBLE = [
  "Worker RSS sampled from /proc at 20 Hz nominal (plus the kernel's VmHWM); the worker, the agent simulator and the old",
  'service each ran as their own process. "idle fresh" is the worker right after start; "idle warm" is the same',
  'process at rest after one 1 MiB warm-up traversal (workflow sandbox, report archiver and JIT loaded), the state',
  'of any worker that has run once. Each cell used a new worker process, so peak and VmHWM belong to that cell.',
  '"java children" is the summed RSS of the traversal processes the worker spawned (not part of the worker\'s RSS).',
].join('\n');

const peakDelta = (c?: Cell) => (c?.memory && c.idle !== undefined ? c.memory.peak - c.idle : undefined);
const coldDelta = (c?: Cell) => (c?.memory && c.coldIdle !== undefined ? c.memory.peak - c.coldIdle : undefined);

function summarize(cells: Cell[], s: Settings): { markdown: string; json: unknown } {
  const main = cells.filter((c) => c.approach === 'new' && c.config === s.worker.label && !isTunedOnly(c, s));
  const tuned = cells.filter((c) => c.approach === 'new' && c.config === s.tuned.label && c.config !== s.worker.label);
  const old = cells.filter((c) => c.approach === 'old');
  const pick = (list: Cell[], n: number, size: number) =>
    list.find((c) => c.devices === n && c.sizeBytes === size && c.status === 'ok');
  const targets: unknown[][] = [];
  const t = (config: string, name: string, limit: number, value: number | undefined) =>
    targets.push([
      config,
      name,
      `≤ ${toMiB(limit)} MiB`,
      value === undefined ? 'not run' : `${toMiB(value)} MiB`,
      value === undefined ? '–' : value <= limit ? 'met' : 'NOT met',
    ]);
  const groups: [string, Cell[]][] = [[s.worker.label, main]];
  if (tuned.length) groups.push([s.tuned.label, tuned]);
  for (const [label, list] of groups) {
    t(label, 'peak − warm idle, 20 devices × 1 GiB', 32 * MiB, peakDelta(pick(list, 20, GiB)));
    t(label, 'peak − fresh idle, 20 devices × 1 GiB', 32 * MiB, coldDelta(pick(list, 20, GiB)));
    t(label, 'peak, 20 devices × 1 GiB', 300 * MiB, pick(list, 20, GiB)?.memory?.peak);
    t(label, 'peak, 50 devices × 1 GiB', 384 * MiB, pick(list, 50, GiB)?.memory?.peak);
  }
  const new5 = pick(main, 5, 200 * MiB);
  const old5 = pick(old, 5, 200 * MiB);
  const ratio = peakDelta(old5) !== undefined && peakDelta(new5) ? peakDelta(old5)! / peakDelta(new5)! : undefined;
  const ratioCold = peakDelta(old5) !== undefined && coldDelta(new5) ? peakDelta(old5)! / coldDelta(new5)! : undefined;

  const rates = cells.filter((c) => c.memory).map((c) => c.memory!.hz);
  const parts = [
    PREAMBLE,
    rates.length ? `Achieved sampling rate: ${Math.min(...rates)}–${Math.max(...rates)} Hz.` : '',
    '',
    `**This project**, worker: ${s.worker.label} (one worker process; APK streamed to the disk cache once, agents install from its URL):`,
    '',
    mdTable(HEAD_NEW, main.map(cellRow)),
  ];
  if (tuned.length) {
    parts.push(
      '',
      `**This project**, worker tuned: \`${s.tuned.label}\` (see memory-tuning.md):`,
      '',
      mdTable(HEAD_NEW, tuned.map(cellRow)),
    );
  }
  parts.push(
    '',
    '**Old approach** (Python, one thread per device: `requests.get(url).content`, then multipart POST of the bytes):',
    '',
    mdTable(HEAD_OLD, old.map(cellRow)),
    '',
    '**Targets** (issue 5):',
    '',
    mdTable(['worker', 'target', 'limit', 'measured', ''], targets),
    '',
    ratio !== undefined && ratioCold !== undefined
      ? `At 5 devices × 200 MiB, peak − idle is ${toMiB(peakDelta(old5)!)} MiB for the old approach and ${toMiB(peakDelta(new5)!)} MiB ` +
          `(${toMiB(coldDelta(new5)!)} MiB from a fresh process) for this project: **${round(ratio, 0)}×** less (${round(ratioCold, 0)}× against the fresh baseline).`
      : 'The 5 × 200 MiB comparison did not run in both approaches.',
  );
  return {
    markdown: parts.join('\n'),
    json: {
      settings: { ...s, maxCellBytes: Number.isFinite(s.maxCellBytes) ? s.maxCellBytes : null },
      cells,
      ratioOldToNewAt5x200: ratio ?? null,
      ratioOldToNewFreshAt5x200: ratioCold ?? null,
      targets: targets.map(([worker, name, limit, measured, verdict]) => ({ worker, name, limit, measured, verdict })),
    },
  };
}

/** A cell that only the tuned list asked for, run with the main configuration's label (when both are equal). */
function isTunedOnly(c: Cell, s: Pick<Settings, 'worker' | 'tuned' | 'devices' | 'sizes'>): boolean {
  return s.tuned.label === s.worker.label && !(s.devices.includes(c.devices) && s.sizes.includes(c.sizeBytes));
}

function tuningSummary(cells: Cell[], s: Settings): { markdown: string; json: unknown; file: string } {
  const t = s.tuning!;
  const rows = t.configs.map((config) => {
    const runs = cells.filter(
      (c) => c.config === config.label && c.status === 'ok' && c.memory && c.idle !== undefined,
    );
    const med = (f: (c: Cell) => number) => (runs.length ? round(median(runs.map(f)) / MiB) : '');
    return [
      `\`${config.label}\``,
      `${runs.length}/${t.repeats}`,
      med((c) => c.coldIdle!),
      med((c) => c.idle!),
      med((c) => c.memory!.peak),
      runs.length ? runs.map((c) => toMiB(c.memory!.peak)).join(', ') : '',
      med((c) => c.memory!.peak - c.idle!),
      med((c) => c.memory!.peak - c.coldIdle!),
      runs.length ? round(median(runs.map((c) => c.wallS!))) : '',
    ];
  });
  const markdown = [
    `Worker flags against memory, ${t.n} devices × ${sizeLabel(t.size)}, ${t.repeats} runs per configuration (interleaved), medians.`,
    'Same procedure as the memory matrix: a new worker process per run, one 1 MiB warm-up traversal, then the cell.',
    '',
    mdTable(
      [
        'worker',
        'runs ok',
        'idle fresh MiB',
        'idle warm MiB',
        'peak MiB',
        'peaks of the runs',
        'peak − warm idle',
        'peak − fresh idle',
        'wall s',
      ],
      rows,
    ),
  ].join('\n');
  return {
    markdown,
    json: { tuning: { n: t.n, sizeBytes: t.size, repeats: t.repeats }, cells },
    file: 'memory-tuning',
  };
}

/** The chart of peak RSS against devices (exported so a chart can be redrawn from memory.json). */
export function chart(cells: Cell[], s: Pick<Settings, 'worker' | 'tuned' | 'devices' | 'sizes'>): string {
  const palette = ['#1f77b4', '#2ca02c', '#9467bd', '#17becf'];
  const oldPalette = ['#d62728', '#ff7f0e', '#8c564b', '#e377c2'];
  const series: Series[] = [];
  const sizes = [...new Set(cells.map((c) => c.sizeBytes))].sort((a, b) => a - b);
  const plotted = (c: Cell) => c.memory && (c.status === 'ok' || c.status === 'killed');
  sizes.forEach((size, i) => {
    const lines: [string, Cell[], string, boolean][] = [
      [
        `this project, ${sizeLabel(size)}`,
        cells.filter((c) => c.approach === 'new' && c.config === s.worker.label && !isTunedOnly(c, s)),
        palette[i % palette.length]!,
        false,
      ],
      [
        `old service, ${sizeLabel(size)}`,
        cells.filter((c) => c.approach === 'old'),
        oldPalette[i % oldPalette.length]!,
        true,
      ],
    ];
    for (const [label, list, color, dashed] of lines) {
      const pts = list
        .filter((c) => c.sizeBytes === size && plotted(c))
        .map((c) => ({
          x: c.devices,
          y: c.memory!.peak / MiB,
          note: c.status === 'killed' ? 'killed by the watchdog' : undefined,
        }));
      if (pts.length) series.push({ label, color, dashed, points: pts });
    }
  });
  const tuned = cells.filter(
    (c) => c.approach === 'new' && c.config === s.tuned.label && c.config !== s.worker.label && plotted(c),
  );
  for (const size of [...new Set(tuned.map((c) => c.sizeBytes))]) {
    series.push({
      label: `this project, tuned, ${sizeLabel(size)}`,
      color: '#000',
      points: tuned
        .filter((c) => c.sizeBytes === size)
        .map((c) => ({ x: c.devices, y: c.memory!.peak / MiB, note: s.tuned.label })),
    });
  }
  return lineChart({
    title: 'Peak RSS of the process that installs APKs, by concurrent devices',
    xLabel: 'devices installing at once',
    yLabel: 'peak RSS (log scale)',
    series,
    refs: [{ y: CONTAINER / MiB, label: '500 MiB container (old service OOMKilled at 5 × 200 MB)', color: '#b00' }],
  });
}
