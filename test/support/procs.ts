/**
 * Real processes for the fault-injection suites: workers and starters spawned from the current
 * source, killed with real signals; a TCP proxy that can black-hole a connection; helpers to find
 * traversal processes on this machine and to read JSON-lines logs.
 */
import type { WorkflowHandle } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { journalDir, type JournalFile } from '../../src/activities/traversal/attempt-journal';
import { PROJECT_ROOT } from '../../src/config';
import { freePort } from '../../src/net/ports';
import type { DevServerOptions } from '../../dev/temporal-dev';
import { SIM_EXTRA_ARGS } from '../../sim/traversal-sim-args';
import { TRAVERSAL_PHASE } from '../../src/contract/search-attributes';
import { workflowBundle } from './stack';
import { traversalPids, waitFor } from './wait';

/** A spawned Node process whose output goes to a log file (kept when it is killed). */
export interface Proc {
  name: string;
  pid: number;
  child: ChildProcess;
  logFile: string;
  /** Settles when the process has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** True until the process has exited. */
  alive(): boolean;
  /** Sends a signal (SIGKILL by default) and waits for the exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Graceful stop: TERM, then KILL after `graceMs`; safe to call twice. */
  stop(graceMs?: number): Promise<void>;
  /** JSON log lines written so far (non-JSON lines are skipped). */
  logs(): Record<string, unknown>[];
  /** Waits for a log line whose `msg` matches and whose fields include `fields`. */
  waitForLog(
    msg: string | RegExp,
    timeoutMs?: number,
    fields?: Record<string, unknown>,
  ): Promise<Record<string, unknown>>;
}

let bundlePath: Promise<string> | undefined;

/**
 * The workflow bundle of the current source, written to a file once per test run. Spawned workers
 * load it through DT_WORKFLOW_BUNDLE instead of each bundling the source again (seconds of CPU
 * per start on a small CI machine); lib/workflow-bundle.js is not used, as it may be stale.
 */
export function currentBundleFile(): Promise<string> {
  bundlePath ??= (async () => {
    const { code } = await workflowBundle();
    const file = path.join(os.tmpdir(), `dt-faults-bundle-${process.pid}.js`);
    writeFileSync(file, code);
    process.once('exit', () => rmSync(file, { force: true }));
    return file;
  })();
  return bundlePath;
}

/** The environment of a child: this process's, minus every service variable, plus `env`. */
function childEnv(env: Record<string, string>): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(TEMPORAL_|REDIS_URL$|TASK_QUEUE$|DT_)/.test(k)) out[k] = v;
  }
  return { ...out, ...env };
}

/** Spawns `node -r ts-node/register/transpile-only <script>` from the project root. */
export function spawnNode(name: string, script: string, env: Record<string, string>, logDir: string): Proc {
  mkdirSync(logDir, { recursive: true });
  let n = 1;
  while (existsSync(path.join(logDir, `${name}-${n}.log`))) n++;
  const logFile = path.join(logDir, `${name}-${n}.log`);
  const fd = openSync(logFile, 'a');
  const child = spawn(process.execPath, ['-r', 'ts-node/register/transpile-only', script], {
    cwd: PROJECT_ROOT,
    env: childEnv(env),
    stdio: ['ignore', fd, fd],
  });
  closeSync(fd);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const alive = () => child.exitCode === null && child.signalCode === null;
  const logs = () => {
    const text = existsSync(logFile) ? readFileSync(logFile, 'utf8') : '';
    const out: Record<string, unknown>[] = [];
    for (const line of text.split('\n')) {
      if (!line.startsWith('{')) continue;
      try {
        out.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // a line cut by a kill
      }
    }
    return out;
  };
  const proc: Proc = {
    name,
    pid: child.pid!,
    child,
    logFile,
    exited,
    alive,
    logs,
    async kill(signal = 'SIGKILL') {
      if (!alive()) return;
      child.kill(signal);
      await exited;
    },
    async stop(graceMs = 10_000) {
      if (!alive()) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(t);
    },
    async waitForLog(msg, timeoutMs = 60_000, fields = {}) {
      const deadline = Date.now() + timeoutMs;
      const matches = (e: Record<string, unknown>) =>
        (typeof msg === 'string' ? e.msg === msg : msg.test(String(e.msg))) &&
        Object.entries(fields).every(([k, v]) => e[k] === v);
      for (;;) {
        const hit = logs().find(matches);
        if (hit) return hit;
        if (!alive())
          throw new Error(`${name} exited before logging ${String(msg)}; see ${logFile}:\n${tail(logFile)}`);
        if (Date.now() > deadline)
          throw new Error(
            `${name} did not log ${String(msg)} within ${timeoutMs} ms; see ${logFile}:\n${tail(logFile)}`,
          );
        await sleep(100);
      }
    },
  };
  return proc;
}

function tail(file: string): string {
  return existsSync(file) ? readFileSync(file, 'utf8').split('\n').slice(-15).join('\n') : '';
}

/** Settings shared by spawned workers and starters. */
export interface ServiceEnv {
  /** The suite's dev server when not given. */
  temporalAddress?: string;
  /** The suite's Redis when not given. */
  redisUrl?: string;
  taskQueue: string;
  redisKeyPrefix: string;
  logDir: string;
  /** Extra DT_* variables. */
  env?: Record<string, string>;
}

/** Starts `src/worker.ts` as a process and waits until it polls. */
export async function spawnWorker(s: ServiceEnv & { dataDir: string }): Promise<Proc> {
  const proc = spawnNode(
    'worker',
    'src/worker.ts',
    {
      TEMPORAL_ADDRESS: s.temporalAddress ?? process.env.TEST_TEMPORAL_ADDRESS!,
      TEMPORAL_NAMESPACE: 'default',
      REDIS_URL: s.redisUrl ?? process.env.TEST_REDIS_URL!,
      TASK_QUEUE: s.taskQueue,
      DT_REDIS_KEY_PREFIX: s.redisKeyPrefix,
      // Unscoped workflow ids, as the tests name them (test/deployments.e2e.test.ts covers named ones).
      DT_DEPLOYMENT: 'none',
      DT_DATA_DIR: s.dataDir,
      DT_ARTIFACT_PORT: '0',
      DT_WORKFLOW_BUNDLE: await currentBundleFile(),
      DT_KILL_GRACE: '2s',
      DT_CONTROL_POLL_INTERVAL: '500ms',
      DT_LOG_LEVEL: 'info',
      // Every test server listens on loopback, which the URL policy refuses unless allow-listed.
      DT_ALLOWED_HOSTS: '127.0.0.1',
      DT_TRAVERSAL_EXTRA_ARGS: SIM_EXTRA_ARGS,
      ...s.env,
    },
    s.logDir,
  );
  await proc.waitForLog('worker started', 90_000);
  return proc;
}

/** Starts `src/starter.ts` as a process and waits until it consumes. */
export async function spawnStarter(s: ServiceEnv & { starterId: string }): Promise<Proc> {
  const proc = spawnNode(
    'starter',
    'src/starter.ts',
    {
      TEMPORAL_ADDRESS: s.temporalAddress ?? process.env.TEST_TEMPORAL_ADDRESS!,
      TEMPORAL_NAMESPACE: 'default',
      REDIS_URL: s.redisUrl ?? process.env.TEST_REDIS_URL!,
      TASK_QUEUE: s.taskQueue,
      DT_REDIS_KEY_PREFIX: s.redisKeyPrefix,
      // Unscoped workflow ids, as the tests name them (test/deployments.e2e.test.ts covers named ones).
      DT_DEPLOYMENT: 'none',
      DT_STARTER_ID: s.starterId,
      DT_PROGRESS: 'off',
      DT_LOG_LEVEL: 'info',
      DT_ALLOWED_HOSTS: '127.0.0.1',
      DT_TRAVERSAL_EXTRA_ARGS: SIM_EXTRA_ARGS,
      ...s.env,
    },
    s.logDir,
  );
  await proc.waitForLog('starter consuming', 90_000);
  return proc;
}

/**
 * A TCP proxy in front of a server. `block()` drops every open connection and holds new ones
 * without forwarding a byte, as a network partition would; `unblock()` forwards again.
 */
export class TcpProxy {
  private server?: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private blocked = false;
  port = 0;

  constructor(
    private readonly targetHost: string,
    private readonly targetPort: number,
  ) {}

  /** Listens on a free port of 127.0.0.1; resolves to "127.0.0.1:<port>". */
  async start(): Promise<string> {
    this.server = net.createServer((client) => {
      this.sockets.add(client);
      client.once('close', () => this.sockets.delete(client));
      client.on('error', () => undefined);
      if (this.blocked) return; // held: accepted, never answered
      const upstream = net.connect(this.targetPort, this.targetHost);
      this.sockets.add(upstream);
      upstream.once('close', () => this.sockets.delete(upstream));
      upstream.on('error', () => client.destroy());
      client.on('error', () => upstream.destroy());
      client.once('close', () => upstream.destroy());
      upstream.once('close', () => client.destroy());
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', () => resolve()));
    this.port = (this.server.address() as net.AddressInfo).port;
    return `127.0.0.1:${this.port}`;
  }

  /** Cuts every connection and holds new ones. */
  block(): void {
    this.blocked = true;
    for (const s of this.sockets) s.destroy();
  }

  /** Forwards new connections again (held ones are dropped, so clients reconnect). */
  unblock(): void {
    this.blocked = false;
    for (const s of this.sockets) s.destroy();
  }

  /** Stops listening and drops everything; safe to call twice. */
  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/** Pids of live traversal processes of a device (shared with the other end-to-end suites). */
export { traversalPids } from './wait';

/** True while a pid exists and is not a zombie. */
export function pidAlive(pid: number): boolean {
  try {
    return !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** The shared polling helper (a throwing predicate counts as "not yet"). */
export { waitFor } from './wait';

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** What `describe` says about a workflow's pending activity of one type. */
export interface PendingActivity {
  attempt: number;
  /** True once a worker picked the current attempt up. */
  started: boolean;
  /** The last heartbeat details, decoded. */
  details?: Record<string, unknown>;
  /** Identity of the worker that ran the last attempt (`<pid>@<host>` by default). */
  workerIdentity?: string;
  /** When the server last recorded a heartbeat of the current attempt. */
  lastHeartbeatTime?: Date;
  lastFailure?: { message?: string | null; type?: string; timeoutType?: string };
}

/** The pending activity `activityType` of a workflow, or undefined when none is pending. */
export async function pendingActivity(
  handle: WorkflowHandle,
  activityType: string,
): Promise<PendingActivity | undefined> {
  const desc = await handle.describe();
  const a = desc.raw.pendingActivities?.find((p) => p.activityType?.name === activityType);
  if (!a) return undefined;
  const payload = a.heartbeatDetails?.payloads?.[0];
  let details: Record<string, unknown> | undefined;
  if (payload?.data) {
    try {
      details = JSON.parse(Buffer.from(payload.data).toString('utf8')) as Record<string, unknown>;
    } catch {
      details = undefined;
    }
  }
  return {
    attempt: a.attempt ?? 1,
    started: a.state === temporal.api.enums.v1.PendingActivityState.PENDING_ACTIVITY_STATE_STARTED,
    details,
    workerIdentity: a.lastWorkerIdentity ?? undefined,
    lastHeartbeatTime: a.lastHeartbeatTime?.seconds
      ? new Date(Number(a.lastHeartbeatTime.seconds) * 1000 + Math.floor((a.lastHeartbeatTime.nanos ?? 0) / 1e6))
      : undefined,
    lastFailure: a.lastFailure
      ? {
          message: a.lastFailure.message,
          type: a.lastFailure.applicationFailureInfo?.type ?? undefined,
          timeoutType: timeoutTypeName(a.lastFailure.timeoutFailureInfo?.timeoutType),
        }
      : undefined,
  };
}

/** The name of a timeout type without its prefix (`HEARTBEAT`, `SCHEDULE_TO_START`, …), or undefined. */
export function timeoutTypeName(t: temporal.api.enums.v1.TimeoutType | null | undefined): string | undefined {
  if (t === null || t === undefined) return undefined;
  return temporal.api.enums.v1.TimeoutType[t]?.replace(/^TIMEOUT_TYPE_/, '');
}

/**
 * Options for a dev server of a test's own, on fixed free ports and a database file in `dir`: started
 * again with the same options after a kill, it comes back at the same address with what it held.
 */
export async function devServerOnFile(dir: string, logDir: string): Promise<DevServerOptions> {
  return {
    port: await freePort(),
    uiPort: 0,
    dbFile: path.join(dir, 'temporal.db'),
    logFile: path.join(logDir, 'temporal.log'),
    extraArgs: ['--http-port', String(await freePort()), '--metrics-port', String(await freePort())],
  };
}

/**
 * Waits until attempt `attempt` of a running traversal heartbeats a checkpoint of `steps` or more
 * from a jar of its own: the heartbeat names a live traversal process of the device other than
 * `previousJar` (a retry shows the last attempt's details until it heartbeats itself).
 */
export function runningAt(
  handle: WorkflowHandle,
  deviceId: string,
  steps: number,
  attempt = 1,
  previousJar?: number,
): Promise<PendingActivity> {
  return waitFor(
    async () => {
      const a = await pendingActivity(handle, 'runTraversal');
      const jar = Number(a?.details?.pid);
      return a &&
        a.started &&
        a.attempt === attempt &&
        jar !== previousJar &&
        traversalPids(deviceId).includes(jar) &&
        Number(a.details?.checkpoint ?? 0) >= steps
        ? a
        : undefined;
    },
    60_000,
    `attempt ${attempt} of the traversal on ${deviceId} past checkpoint ${steps}`,
  );
}

/** The TraversalPhase search attribute of a traversal (read from the server, so no worker is needed). */
export async function phaseOf(handle: WorkflowHandle): Promise<string | undefined> {
  const desc = await handle.describe();
  return desc.typedSearchAttributes.get(TRAVERSAL_PHASE);
}

/** The worker journals of a data folder (src/activities/traversal/attempt-journal.ts), each with its path. */
export function workerJournals(dataDir: string): (JournalFile & { file: string })[] {
  const dir = journalDir(dataDir);
  const out: (JournalFile & { file: string })[] = [];
  for (const name of existsSync(dir) ? readdirSync(dir) : []) {
    if (!name.endsWith('.json')) continue;
    try {
      out.push({
        ...(JSON.parse(readFileSync(path.join(dir, name), 'utf8')) as JournalFile),
        file: path.join(dir, name),
      });
    } catch {
      // being replaced, or removed meanwhile
    }
  }
  return out;
}
