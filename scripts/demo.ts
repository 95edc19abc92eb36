/**
 * `npm run demo`: the whole local stack on embedded defaults — Temporal dev server (SQLite file,
 * Web UI on :8233), Redis, 5 simulated devices, an origin serving generated APKs, the worker and
 * the starter as separate processes — then a run of tasks with live progress and a summary.
 * Ctrl-C stops everything the demo started.
 */
import { Client, Connection } from '@temporalio/client';
import Redis from 'ioredis';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, openSync, closeSync, rmSync } from 'node:fs';
import path from 'node:path';
import { loadConfig, PROJECT_ROOT } from '../src/config';
import { resultKey } from '../src/activities/result-publisher';
import { progressQuery, traversalWorkflowId, type TraversalProgress, type TraversalResult } from '../src/messages';
import { canConnect, freePort, waitForPort } from '../src/local/ports';
import { ensureRedis, type LocalRedis } from '../src/local/redis-local';
import { mib, RssSampler } from '../src/local/rss';
import { ensureSearchAttributes, findTemporalCli, startDevServer, type DevServer } from '../src/local/temporal-dev';
import { AgentSimulator } from '../src/sim/agent-sim';
import { ApkOrigin } from '../src/sim/origin';
import { temporalSettings } from '../src/temporal-connection';

let interrupted = false;
const DEVICES = ['sim-1', 'sim-2', 'sim-3', 'sim-4', 'sim-5'];
const MiB = 1024 * 1024;

interface Job {
  taskId: string;
  deviceId: string;
  packageName: string;
  apk: string;
}

async function main(): Promise<void> {
  const config = loadConfig();
  const temporal = temporalSettings();
  const args = parseArgs(process.argv.slice(2));
  const apkMiB = Number(args['apk-mib'] ?? 100);
  const durationSec = Number(args['duration'] ?? 8);
  const demoDir = path.join(config.dataDir, 'demo');
  mkdirSync(demoDir, { recursive: true });
  // Start from an empty APK cache so the summary shows the dedupe (one origin download per APK).
  if (!('keep-cache' in args)) rmSync(path.join(demoDir, 'apk-cache'), { recursive: true, force: true });
  const cleanups: (() => Promise<unknown> | unknown)[] = [];
  let stopping = false;
  const stopAll = async () => {
    if (stopping) return;
    stopping = true;
    for (const fn of cleanups.reverse()) await Promise.resolve(fn()).catch(() => undefined);
  };
  process.once('SIGINT', () => {
    interrupted = true;
    process.stdout.write('\nstopping everything the demo started…\n');
    void stopAll().then(() => process.exit(130));
  });

  try {
    // 1. Temporal: reuse a reachable server, else start the dev server with a SQLite file.
    const [host, portText] = temporal.address.split(':') as [string, string];
    let server: DevServer | undefined;
    let uiUrl = 'http://127.0.0.1:8233';
    if (await canConnect(host, Number(portText))) {
      step(`Temporal: using the server at ${temporal.address}`);
      await ensureSearchAttributes(findTemporalCli(), temporal.address, temporal.namespace).catch((err) =>
        step(`(could not check search attributes: ${(err as Error).message.split('\n')[0]})`),
      );
    } else {
      step('Temporal: starting the dev server (SQLite .data/temporal.db, Web UI :8233)…');
      server = await startDevServer({
        ip: host,
        port: Number(portText),
        uiPort: 8233,
        dbFile: path.join(config.dataDir, 'temporal.db'),
        namespace: temporal.namespace,
        logFile: path.join(demoDir, 'temporal.log'),
      });
      uiUrl = server.uiUrl!;
      cleanups.push(() => server!.stop());
    }

    // 2. Redis.
    const redisLocal: LocalRedis = await ensureRedis(config.redisUrl, path.join(config.dataDir, 'redis'));
    cleanups.push(() => redisLocal.stop());
    step(`Redis: ${redisLocal.process ? 'started' : 'using'} ${config.redisUrl}`);

    // 3. Origin with two generated APKs, and 5 simulated devices.
    const origin = new ApkOrigin({ dir: path.join(PROJECT_ROOT, '.tools', 'apks') });
    step(`Origin: generating APKs (${apkMiB} MiB and 20 MiB; reused on later runs)…`);
    const big = await origin.addApk('demo-app.apk', apkMiB * MiB);
    const lite = await origin.addApk('demo-lite.apk', 20 * MiB);
    await origin.start();
    cleanups.push(() => origin.close());
    const agent = new AgentSimulator({ devices: DEVICES, installDelayMs: 300 });
    const agentUrl = await agent.start();
    cleanups.push(() => agent.close());
    step(`Devices: ${DEVICES.join(', ')} on the agent simulator at ${agentUrl}`);

    // 4. Worker and starter as real processes (compiled JS, as in production).
    const metricsPort = await freePort();
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      TEMPORAL_ADDRESS: temporal.address,
      TEMPORAL_NAMESPACE: temporal.namespace,
      REDIS_URL: config.redisUrl,
      TASK_QUEUE: config.taskQueue,
      DT_DATA_DIR: demoDir,
      DT_ARTIFACT_PORT: String(metricsPort),
      DT_DEFAULT_AGENT_URL: agentUrl,
      // The demo's origin and devices listen on loopback, which the URL policy refuses unless allow-listed.
      DT_ALLOWED_HOSTS: '127.0.0.1,localhost',
      DT_STARTER_ID: 'demo-starter',
      DT_WORKFLOW_BUNDLE: process.env.DT_WORKFLOW_BUNDLE ?? path.join(PROJECT_ROOT, 'lib', 'workflow-bundle.js'),
      DT_HEARTBEAT_TIMEOUT: process.env.DT_HEARTBEAT_TIMEOUT ?? '15s',
    };
    // The memory flags of README "Sizing a container" (one malloc arena, small young generation, heap cap).
    const workerEnv = {
      ...env,
      MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? '1',
      NODE_OPTIONS: process.env.NODE_OPTIONS ?? '--max-semi-space-size=1 --max-old-space-size=256',
    };
    const worker = launch('worker', path.join(PROJECT_ROOT, 'lib/src/worker.js'), workerEnv, path.join(demoDir, 'worker.log'));
    cleanups.push(() => stopChild(worker));
    const sampler = new RssSampler(worker.pid!).start();
    cleanups.push(() => sampler.stop());
    await waitForPort('127.0.0.1', metricsPort, 120_000, 'worker', () => (worker.exitCode !== null ? `exit ${worker.exitCode}; see ${demoDir}/worker.log` : undefined));
    const idleRss = sampler.sample() ?? 0;
    step(`Worker: pid ${worker.pid}, artifact server and /metrics on http://127.0.0.1:${metricsPort}, idle RSS ${mib(idleRss)}`);
    const starter = launch('starter', path.join(PROJECT_ROOT, 'lib/src/starter.js'), env, path.join(demoDir, 'starter.log'));
    cleanups.push(() => stopChild(starter));
    step(`Starter: pid ${starter.pid}, consuming traversal:tasks`);

    // 5. Tasks: 5 devices on the big APK, then the lite APK on two of them.
    const stamp = new Date().toISOString().replace(/[-:T]/g, '').slice(0, 14);
    const redis = new Redis(config.redisUrl);
    cleanups.push(() => redis.disconnect());
    const taskA = `demo-${stamp}-a`;
    const taskB = `demo-${stamp}-b`;
    const traversal = { durationSec, extraArgs: ['--crashes', '2', '--anrs', '1'] };
    await redis.lpush(
      'traversal:tasks',
      JSON.stringify({ taskId: taskA, devices: DEVICES, apkUrl: origin.url('demo-app.apk'), apkSha256: big.sha256, packageName: 'com.example.demo', traversal }),
      JSON.stringify({ taskId: taskB, devices: ['sim-1', 'sim-2'], apkUrl: origin.url('demo-lite.apk'), apkSha256: lite.sha256, packageName: 'com.example.lite', traversal: { durationSec: Math.max(2, durationSec / 2) } }),
    );
    step(`Pushed 2 tasks (7 traversals): ${taskA} on 5 devices, ${taskB} on sim-1 and sim-2`);
    const jobs: Job[] = [
      ...DEVICES.map((d) => ({ taskId: taskA, deviceId: d, packageName: 'com.example.demo', apk: 'demo-app.apk' })),
      ...['sim-1', 'sim-2'].map((d) => ({ taskId: taskB, deviceId: d, packageName: 'com.example.lite', apk: 'demo-lite.apk' })),
    ];

    // 6. Live progress until every result is in Redis.
    const connection = await Connection.connect(temporal.connectionOptions as Parameters<typeof Connection.connect>[0]);
    cleanups.push(() => connection.close());
    const client = new Client({ connection, namespace: temporal.namespace });
    const results = await watch(jobs, client, redis, Number(args['timeout-sec'] ?? 600) * 1000);

    // 7. Summary.
    sampler.sample();
    printSummary(jobs, results, origin, { big, lite }, sampler, idleRss, uiUrl, temporal.namespace);
  } finally {
    await stopAll();
  }
}

function step(msg: string): void {
  process.stdout.write(`• ${msg}\n`);
}

function parseArgs(argv: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a.startsWith('--')) {
      const [k, v] = a.slice(2).split('=');
      out[k!] = v ?? argv[++i] ?? '';
    }
  }
  return out;
}

function launch(name: string, script: string, env: NodeJS.ProcessEnv, logFile: string): ChildProcess {
  const fd = openSync(logFile, 'a');
  const child = spawn(process.execPath, [script], { env, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  child.once('exit', (code, sig) => {
    if (code !== 0 && sig === null) process.stderr.write(`${name} exited with ${code}; see ${logFile}\n`);
  });
  return child;
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(t);
}

async function watch(jobs: Job[], client: Client, redis: Redis, timeoutMs: number): Promise<Map<string, TraversalResult>> {
  const results = new Map<string, TraversalResult>();
  const tty = process.stdout.isTTY === true;
  const lastLine = new Map<string, string>();
  const deadline = Date.now() + timeoutMs;
  let drawn = 0;
  let lastPlain = 0;
  while (results.size < jobs.length) {
    if (Date.now() > deadline) throw new Error(`demo timed out after ${timeoutMs / 1000} s with ${results.size}/${jobs.length} results`);
    const lines: string[] = [];
    for (const job of jobs) {
      const key = `${job.taskId}/${job.deviceId}`;
      if (!results.has(key)) {
        const raw = await redis.get(resultKey(job.taskId, job.deviceId));
        if (raw) results.set(key, JSON.parse(raw) as TraversalResult);
      }
      const done = results.get(key);
      let p: Pick<TraversalProgress, 'phase' | 'percent' | 'screens'> = { phase: 'queued', percent: 0, screens: 0 };
      if (done) p = { phase: done.status, percent: done.status === 'completed' ? 100 : 0, screens: done.screens };
      else {
        try {
          p = await client.workflow.getHandle(traversalWorkflowId(job.taskId, job.deviceId)).query(progressQuery);
        } catch {
          // not started yet: still queued behind the device's current run
        }
      }
      const bar = '█'.repeat(Math.round(p.percent / 5)).padEnd(20, '░');
      lines.push(`${job.deviceId.padEnd(6)} ${job.packageName.padEnd(17)} ${p.phase.padEnd(11)} ${bar} ${String(p.percent).padStart(3)}%  ${p.screens} screens`);
      if (!tty && lastLine.get(key) !== `${p.phase}`) {
        lastLine.set(key, p.phase);
        process.stdout.write(`[progress] ${job.taskId} ${job.deviceId}: ${p.phase} ${p.percent}%\n`);
      }
    }
    if (tty) {
      if (drawn) process.stdout.write(`\x1b[${drawn}A`);
      process.stdout.write(lines.map((l) => `\x1b[2K${l}`).join('\n') + '\n');
      drawn = lines.length;
    } else if (Date.now() - lastPlain > 5000) {
      lastPlain = Date.now();
      process.stdout.write(`[progress] ${results.size}/${jobs.length} traversals finished\n`);
    }
    if (results.size < jobs.length) await new Promise((r) => setTimeout(r, 500));
  }
  return results;
}

function printSummary(
  jobs: Job[],
  results: Map<string, TraversalResult>,
  origin: ApkOrigin,
  apks: Record<'big' | 'lite', { size: number }>,
  sampler: RssSampler,
  idleRss: number,
  uiUrl: string,
  namespace: string,
): void {
  const rows = jobs.map((j) => {
    const r = results.get(`${j.taskId}/${j.deviceId}`)!;
    return [
      j.deviceId,
      j.packageName,
      r.status,
      r.installMs !== undefined ? String(r.installMs) : '-',
      r.coldStartMs !== undefined ? String(r.coldStartMs) : '-',
      r.timings.runTraversal !== undefined ? (r.timings.runTraversal / 1000).toFixed(1) : '-',
      `${r.crashes}/${r.anrs}`,
      r.reportUrl ? path.relative(PROJECT_ROOT, r.reportUrl.replace('file://', '')) : r.error ? `${r.error.type}: ${r.error.message}` : '-',
    ];
  });
  table(['device', 'package', 'status', 'install ms', 'cold start ms', 'traversal s', 'crashes/ANRs', 'report'], rows);
  process.stdout.write('\n');
  table(
    ['APK', 'size', 'origin downloads (GETs)', 'origin bytes / size'],
    (['demo-app.apk', 'demo-lite.apk'] as const).map((name) => {
      const s = origin.stats(name);
      const size = name === 'demo-app.apk' ? apks.big.size : apks.lite.size;
      return [name, mib(size), String(s.gets), (s.bytesServed / size).toFixed(2)];
    }),
  );
  process.stdout.write(
    `\nPeak worker RSS: ${mib(sampler.peak)} sampled at 10 Hz (${sampler.samples} samples), VmHWM ${mib(sampler.hwm)}, idle ${mib(idleRss)}\n`,
  );
  process.stdout.write(`Web UI: ${uiUrl}/namespaces/${namespace}/workflows\n`);
}

function table(head: string[], rows: string[][]): void {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => '| ' + cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ') + ' |';
  process.stdout.write([line(head), '|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|', ...rows.map(line)].join('\n') + '\n');
}

main()
  .then(() => process.exit(0))
  .catch((err) => {
    if (interrupted) return; // the SIGINT handler owns the exit
    process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
