/**
 * The local stack as separate processes, each on free 127.0.0.1 ports and each registered with a
 * {@link Scope} that stops it: an in-memory Temporal dev server, redis-server, the agent simulator,
 * and workers either compiled (`node lib/src/worker.js` with the prebuilt workflow bundle, as a
 * production worker runs) or from the current source. The in-process stack is dev/stack.ts.
 */
import { Client, Connection } from '@temporalio/client';
import Redis from 'ioredis';
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { PROJECT_ROOT } from '../src/config';
import { freePort } from '../src/net/ports';
import { waitForPort } from './ports';
import { SIM_EXTRA_ARGS } from '../sim/traversal-sim-args';
import { logTail, spawnLogged, type LoggedProcess } from './process';
import { startRedis, type LocalRedis } from './redis-local';
import type { Scope } from './scope';
import { onFreePorts, startDevServer, type DevServer } from './temporal-dev';

/** Generated APKs, kept and reused across runs (the tests and benchmarks share the folder). */
export const APK_DIR = path.join(PROJECT_ROOT, '.tools', 'apks');
/** The compiled worker entry point. */
const WORKER_JS = path.join(PROJECT_ROOT, 'lib', 'src', 'worker.js');
/** The prebuilt workflow bundle (scripts/build-bundle.ts). */
const BUNDLE_JS = path.join(PROJECT_ROOT, 'lib', 'workflow-bundle.js');

/** Throws unless the compiled worker and the workflow bundle exist; warns through `report` when src/ is newer. */
export function requireBuild(report: (msg: string) => void): void {
  const missing = [WORKER_JS, BUNDLE_JS].filter((f) => !existsSync(f));
  if (missing.length)
    throw new Error(
      `${missing.map((f) => path.relative(PROJECT_ROOT, f)).join(' and ')} missing: run \`bash scripts/setup.sh\` ` +
        '(or `npx tsc -p tsconfig.json && npx ts-node --transpile-only scripts/build-bundle.ts`) first',
    );
  const built = Math.min(statSync(WORKER_JS).mtimeMs, statSync(BUNDLE_JS).mtimeMs);
  const newer = newestTs(path.join(PROJECT_ROOT, 'src'));
  if (newer.mtime > built)
    report(`warning: ${path.relative(PROJECT_ROOT, newer.file)} is newer than lib/; the workers run the last build`);
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

/** A local dev server with a client connected to it. */
export interface LocalTemporal {
  address: string;
  namespace: string;
  client: Client;
  connection: Connection;
  server: DevServer;
}

/** Starts an in-memory, headless Temporal dev server on free ports and connects a client. */
export async function startTemporal(scope: Scope, workDir: string): Promise<LocalTemporal> {
  const options = await onFreePorts(path.join(workDir, 'temporal.log'));
  scope.report(`starting the Temporal dev server on 127.0.0.1:${options.port}`);
  const server = await startDevServer(options);
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
export async function startLocalRedis(scope: Scope, dir: string): Promise<LocalRedis> {
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
    scope.report(`Redis connection to ${url}: ${err.message} (retrying)`);
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
  /** The phone host the agent names as the owner of its devices. */
  hostId?: string;
  /** Address it listens on (default 127.0.0.1). */
  host?: string;
  /** A command it runs under, e.g. `ip netns exec <ns>`. */
  wrap?: string[];
}

/** A running agent simulator process. */
export interface AgentSimProc {
  url: string;
  proc: LoggedProcess;
}

/** Starts the device agent simulator as its own process on a free port. */
export async function startAgentSim(scope: Scope, opts: AgentSimProcOptions): Promise<AgentSimProc> {
  const port = await freePort();
  const host = opts.host ?? '127.0.0.1';
  const options = {
    devices: opts.devices,
    port,
    host,
    coldStartMs: opts.coldStartMs ?? [10, 50],
    latencyMs: opts.latencyMs ?? 0,
    installDelayMs: opts.installDelayMs ?? 0,
    hostId: opts.hostId,
  };
  const [command, ...args] = [
    ...(opts.wrap ?? []),
    process.execPath,
    '-r',
    'ts-node/register/transpile-only',
    path.join(__dirname, 'agent-child.ts'),
    JSON.stringify(options),
  ];
  const proc = spawnLogged('agent simulator', command!, args, { logFile: opts.logFile, scope, graceMs: 15_000 });
  try {
    await waitForPort(host, port, 60_000, 'agent simulator', () => proc.exitNote());
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${logTail(proc.logFile)}`);
  }
  return { url: `http://${host}:${port}`, proc };
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
  proc: LoggedProcess;
  /** Base URL of its artifact and metrics server. */
  artifactUrl: string;
}

/**
 * The environment every local worker or starter shares: the servers, the task queue, loopback on
 * the URL policy's allow-list (the origin and agents listen there, which it refuses otherwise) and
 * the simulator's speed and finding knobs as allowed extra arguments.
 */
export function localServiceEnv(s: {
  temporalAddress: string;
  redisUrl: string;
  taskQueue: string;
}): Record<string, string> {
  return {
    TEMPORAL_ADDRESS: s.temporalAddress,
    TEMPORAL_NAMESPACE: 'default',
    REDIS_URL: s.redisUrl,
    TASK_QUEUE: s.taskQueue,
    DT_ALLOWED_HOSTS: '127.0.0.1',
    DT_TRAVERSAL_EXTRA_ARGS: SIM_EXTRA_ARGS,
  };
}

/**
 * Starts `node lib/src/worker.js` with the prebuilt bundle and waits until it is ready: its artifact
 * server listens only once the Temporal worker exists (src/worker/setup.ts), so an open port means
 * ready whatever DT_LOG_LEVEL says.
 */
export async function startWorkerProc(scope: Scope, opts: WorkerProcOptions): Promise<WorkerProc> {
  mkdirSync(opts.dataDir, { recursive: true });
  const port = await freePort();
  const proc = spawnLogged(`worker ${opts.taskQueue}`, process.execPath, [...(opts.nodeArgs ?? []), WORKER_JS], {
    logFile: opts.logFile,
    scope,
    graceMs: 15_000,
    env: {
      ...localServiceEnv(opts),
      DT_DATA_DIR: opts.dataDir,
      DT_ARTIFACT_HOST: '127.0.0.1',
      DT_ARTIFACT_PORT: String(port),
      DT_SDK_METRICS_PORT: '0',
      DT_WORKFLOW_BUNDLE: BUNDLE_JS,
      ...opts.env,
    },
  });
  try {
    await waitForPort('127.0.0.1', port, 120_000, `worker ${opts.taskQueue}`, () => proc.exitNote());
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${logTail(proc.logFile)}`);
  }
  return { proc, artifactUrl: `http://127.0.0.1:${port}` };
}

/** The line each entry point logs once it takes work. */
const READY_LINE = { worker: 'worker started', starter: 'starter consuming', agent: 'adb agent listening' } as const;

/**
 * Starts `src/worker.ts`, `src/starter.ts` or `src/agent.ts` of the current source (through ts-node) with `env` as its
 * settings, and waits until it logged that it takes work. A worker's log file may be shared by the
 * workers of several restarts: its lines carry its pid, so only this one's ready line counts.
 */
export async function startSourceProcess(
  entry: keyof typeof READY_LINE,
  env: Record<string, string>,
  opts: {
    logFile: string;
    name?: string;
    scope?: Scope;
    graceMs?: number;
    readyTimeoutMs?: number;
    args?: string[];
    /** A command the process runs under, e.g. `ip netns exec <ns>` (it must exec node, not fork it). */
    wrap?: string[];
  },
): Promise<LoggedProcess> {
  const [command, ...args] = [
    ...(opts.wrap ?? []),
    process.execPath,
    '-r',
    'ts-node/register/transpile-only',
    `src/${entry}.ts`,
    ...(opts.args ?? []),
  ];
  const proc = spawnLogged(opts.name ?? entry, command!, args, {
    logFile: opts.logFile,
    env,
    scope: opts.scope,
    graceMs: opts.graceMs,
  });
  await proc.waitForLog(READY_LINE[entry], opts.readyTimeoutMs ?? 90_000, entry === 'worker' ? { pid: proc.pid } : {});
  return proc;
}
