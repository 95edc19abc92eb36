/**
 * The servers and processes a scenario runs against, each on free 127.0.0.1 ports and each
 * registered with a {@link Scope} that stops it: an in-memory Temporal dev server, redis-server,
 * the agent simulator and workers as separate processes (`node lib/src/worker.js` with the
 * prebuilt workflow bundle, as a production worker runs).
 */
import { Client, Connection } from '@temporalio/client';
import Redis from 'ioredis';
import { spawn, type ChildProcess } from 'node:child_process';
import {
  closeSync,
  createWriteStream,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  statSync,
} from 'node:fs';
import path from 'node:path';
import { PROJECT_ROOT } from '../../src/config';
import { freePort, waitForPort } from '../../src/net/ports';
import { startRedis, type LocalRedis } from '../../dev/redis-local';
import { startDevServer, type DevServer } from '../../dev/temporal-dev';
import { SIM_EXTRA_ARGS } from '../../sim/traversal-sim-args';
import { say } from './report';
import type { Scope } from './scope';

/** Generated APKs, kept and reused across runs (the tests use the same folder). */
export const APK_DIR = path.join(PROJECT_ROOT, '.tools', 'apks');
/** The compiled worker entry point. */
const WORKER_JS = path.join(PROJECT_ROOT, 'lib', 'src', 'worker.js');
/** The prebuilt workflow bundle (scripts/build-bundle.ts). */
const BUNDLE_JS = path.join(PROJECT_ROOT, 'lib', 'workflow-bundle.js');

/** Throws unless the compiled worker and the workflow bundle exist; warns when they are older than src/. */
export function requireBuild(): void {
  const missing = [WORKER_JS, BUNDLE_JS].filter((f) => !existsSync(f));
  if (missing.length)
    throw new Error(
      `${missing.map((f) => path.relative(PROJECT_ROOT, f)).join(' and ')} missing: run \`bash scripts/setup.sh\` ` +
        '(or `npx tsc -p tsconfig.json && npx ts-node --transpile-only scripts/build-bundle.ts`) first',
    );
  const built = Math.min(statSync(WORKER_JS).mtimeMs, statSync(BUNDLE_JS).mtimeMs);
  const newer = newestTs(path.join(PROJECT_ROOT, 'src'));
  if (newer.mtime > built)
    say(`warning: ${path.relative(PROJECT_ROOT, newer.file)} is newer than lib/; the workers run the last build`);
}

function newestTs(dir: string): { file: string; mtime: number } {
  let best = { file: dir, mtime: 0 };
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    const cand = e.isDirectory()
      ? newestTs(p)
      : e.name.endsWith('.ts')
        ? { file: p, mtime: statSync(p).mtimeMs }
        : best;
    if (cand.mtime > best.mtime) best = cand;
  }
  return best;
}

/** A process started by the benchmark, its output in a log file. */
export interface BenchProc {
  name: string;
  child: ChildProcess;
  pid: number;
  logFile: string;
  /** Undefined while it runs; how it ended (and where its log is) once it has exited. */
  exitNote(): string | undefined;
  /** TERM, then KILL after `graceMs` (default 15 s); safe to call twice. */
  stop(graceMs?: number): Promise<void>;
}

/** Options of {@link spawnLogged}. */
export interface SpawnOptions {
  logFile: string;
  /** Extra environment on top of this process's, without its Temporal, Redis and DT_ variables. */
  env?: Record<string, string>;
  cwd?: string;
  /** 'pipe' gives the caller `child.stdin` (default: none). */
  stdin?: 'pipe' | 'ignore';
  /** 'pipe' gives the caller `child.stdout` (a copy still goes to the log); default: the log only. */
  stdout?: 'pipe' | 'log';
}

/** The environment of a child: this process's minus every service variable, plus `env`. */
function childEnv(env: Record<string, string> = {}): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(TEMPORAL_|REDIS_URL$|TASK_QUEUE$|DT_)/.test(k)) out[k] = v;
  }
  return { ...out, ...env };
}

/** Spawns a process with its output in `logFile`; the scope stops it. */
export function spawnLogged(
  scope: Scope,
  name: string,
  command: string,
  args: string[],
  opts: SpawnOptions,
): BenchProc {
  mkdirSync(path.dirname(opts.logFile), { recursive: true });
  const fd = openSync(opts.logFile, 'a');
  const pipeOut = opts.stdout === 'pipe';
  const child = spawn(command, args, {
    cwd: opts.cwd ?? PROJECT_ROOT,
    env: childEnv(opts.env),
    stdio: [opts.stdin ?? 'ignore', pipeOut ? 'pipe' : fd, fd],
  });
  closeSync(fd);
  if (pipeOut && child.stdout) {
    const copy = createWriteStream(opts.logFile, { flags: 'a' });
    child.stdout.on('data', (chunk: Buffer) => copy.write(chunk));
    child.stdout.once('close', () => copy.end());
  }
  let note: string | undefined;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      note = `${name} exited (${signal ?? `code ${code}`}); see ${path.relative(PROJECT_ROOT, opts.logFile)}`;
      resolve();
    });
    child.once('error', (err) => {
      note = `${name} could not run: ${err.message}`;
      resolve();
    });
  });
  let stopping: Promise<void> | undefined;
  const proc: BenchProc = {
    name,
    child,
    pid: child.pid ?? -1,
    logFile: opts.logFile,
    exitNote: () => note,
    stop(graceMs = 15_000) {
      stopping ??= (async () => {
        if (note !== undefined || child.exitCode !== null || child.signalCode !== null) return;
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
        await exited;
        clearTimeout(timer);
      })();
      return stopping;
    },
  };
  scope.add(name, () => proc.stop());
  return proc;
}

/** The last lines of a log, for error messages. */
function tail(file: string, lines = 15): string {
  try {
    return readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/** A dev server of the benchmark with a client connected to it. */
export interface BenchTemporal {
  address: string;
  namespace: string;
  client: Client;
  connection: Connection;
  server: DevServer;
}

/** Starts an in-memory, headless Temporal dev server on free ports and connects a client. */
export async function startTemporal(scope: Scope, workDir: string): Promise<BenchTemporal> {
  const [port, httpPort, metricsPort] = [await freePort(), await freePort(), await freePort()];
  say(`starting the Temporal dev server on 127.0.0.1:${port}`);
  const server = await startDevServer({
    port,
    uiPort: 0,
    logFile: path.join(workDir, 'temporal.log'),
    extraArgs: ['--http-port', String(httpPort), '--metrics-port', String(metricsPort)],
  });
  scope.add('Temporal dev server', () => server.stop());
  const connection = await Connection.connect({ address: server.address });
  scope.add('Temporal connection', () => connection.close());
  return {
    address: server.address,
    namespace: server.namespace,
    client: new Client({ connection, namespace: server.namespace }),
    connection,
    server,
  };
}

/** Starts redis-server on a free port with its files in `dir`. */
export async function startBenchRedis(scope: Scope, dir: string): Promise<LocalRedis> {
  const redis = await startRedis({ port: await freePort(), dir });
  scope.add('redis-server', () => redis.stop());
  return redis;
}

/** A Redis connection that the scope disconnects; commands wait for a reconnect rather than fail. */
export function redisClient(scope: Scope, url: string): Redis {
  const redis = new Redis(url, { maxRetriesPerRequest: null });
  // ioredis emits an error per failed reconnect; one line says it, and a stopped server is no news.
  let reported = false;
  let closed = false;
  redis.on('error', (err: Error) => {
    if (closed || reported) return;
    reported = true;
    say(`Redis connection to ${url}: ${err.message} (retrying)`);
  });
  scope.add('Redis connection', () => {
    closed = true;
    redis.disconnect();
  });
  return redis;
}

/** Options of the agent simulator process. */
export interface AgentSimProcOptions {
  devices: string[];
  logFile: string;
  /** Simulated cold start of an app, ms range (default 10–50: a benchmark measures the orchestration). */
  coldStartMs?: [number, number];
  /** Latency added to every call, ms (default 0). */
  latencyMs?: number;
  /** Time an install takes after the download, ms (default 0). */
  installDelayMs?: number;
}

/** A running agent simulator process. */
export interface AgentSimProc {
  url: string;
  proc: BenchProc;
}

/** Starts the device agent simulator as its own process on a free port. */
export async function startAgentSim(scope: Scope, opts: AgentSimProcOptions): Promise<AgentSimProc> {
  const port = await freePort();
  const options = {
    devices: opts.devices,
    port,
    coldStartMs: opts.coldStartMs ?? [10, 50],
    latencyMs: opts.latencyMs ?? 0,
    installDelayMs: opts.installDelayMs ?? 0,
  };
  const proc = spawnLogged(
    scope,
    'agent simulator',
    process.execPath,
    ['-r', 'ts-node/register/transpile-only', path.join(__dirname, 'agent-child.ts'), JSON.stringify(options)],
    { logFile: opts.logFile },
  );
  try {
    await waitForPort('127.0.0.1', port, 60_000, 'agent simulator', () => proc.exitNote());
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${tail(proc.logFile)}`);
  }
  return { url: `http://127.0.0.1:${port}`, proc };
}

/** Options of a worker process. */
export interface WorkerProcOptions {
  temporalAddress: string;
  redisUrl: string;
  taskQueue: string;
  /** DT_DATA_DIR: APK cache, pid files and reports. */
  dataDir: string;
  logFile: string;
  /** Node flags put before the script, e.g. --max-semi-space-size=1. */
  nodeArgs?: string[];
  /** Extra environment (DT_* settings, MALLOC_ARENA_MAX, …). */
  env?: Record<string, string>;
}

/** A running worker process. */
export interface WorkerProc {
  proc: BenchProc;
  /** Base URL of its artifact and metrics server. */
  artifactUrl: string;
}

/**
 * Starts `node lib/src/worker.js` with the prebuilt bundle and waits until it is ready: its artifact
 * server listens only once the Temporal worker exists (src/worker/setup.ts), so an open port means
 * ready whatever DT_LOG_LEVEL says.
 */
export async function startWorkerProc(scope: Scope, opts: WorkerProcOptions): Promise<WorkerProc> {
  mkdirSync(opts.dataDir, { recursive: true });
  const port = await freePort();
  const proc = spawnLogged(scope, `worker ${opts.taskQueue}`, process.execPath, [...(opts.nodeArgs ?? []), WORKER_JS], {
    logFile: opts.logFile,
    env: {
      TEMPORAL_ADDRESS: opts.temporalAddress,
      TEMPORAL_NAMESPACE: 'default',
      REDIS_URL: opts.redisUrl,
      TASK_QUEUE: opts.taskQueue,
      DT_DATA_DIR: opts.dataDir,
      DT_ARTIFACT_HOST: '127.0.0.1',
      DT_ARTIFACT_PORT: String(port),
      DT_SDK_METRICS_PORT: '0',
      DT_WORKFLOW_BUNDLE: BUNDLE_JS,
      // Origin and agents listen on loopback, which the URL policy refuses unless allow-listed.
      DT_ALLOWED_HOSTS: '127.0.0.1',
      // Benchmark requests drive the simulator's speed and finding knobs.
      DT_TRAVERSAL_EXTRA_ARGS: SIM_EXTRA_ARGS,
      ...opts.env,
    },
  });
  try {
    await waitForPort('127.0.0.1', port, 120_000, `worker ${opts.taskQueue}`, () => proc.exitNote());
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${tail(proc.logFile)}`);
  }
  return { proc, artifactUrl: `http://127.0.0.1:${port}` };
}
