/**
 * Real processes for the fault-injection suites: workers and starters spawned from the current
 * source with the suites' settings (dev/services.ts spawns them), killed with real signals; a TCP
 * proxy that can black-hole a connection; what Temporal says about pending activities.
 */
import type { WorkflowHandle } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { journalDir, type JournalFile } from '../../src/activities/traversal/attempt-journal';
import { onFreePorts, type DevServerOptions } from '../../dev/temporal-dev';
import { currentBundleFile } from '../../dev/bundle';
import type { LoggedProcess } from '../../dev/process';
import { localServiceEnv, startSourceProcess } from '../../dev/services';
import { testServers } from '../../dev/clients';
import { traversalPids, waitFor } from '../../dev/wait';

/** A spawned worker or starter, its output in a log file of the suite (kept when it is killed). */
export type Proc = LoggedProcess;

/** A log file of `logDir` no earlier process of the suite used: `<name>-<n>.log`. */
function nextLogFile(logDir: string, name: string): string {
  mkdirSync(logDir, { recursive: true });
  let n = 1;
  while (existsSync(path.join(logDir, `${name}-${n}.log`))) n++;
  return path.join(logDir, `${name}-${n}.log`);
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
  /** A command the process runs under, e.g. `ip netns exec <ns>`. */
  wrap?: string[];
}

/** The variables a spawned worker and starter share: where the services are, and the suites' defaults. */
function sharedEnv(s: ServiceEnv): Record<string, string> {
  return {
    ...localServiceEnv({
      temporalAddress: s.temporalAddress ?? testServers().address,
      redisUrl: s.redisUrl ?? testServers().redisUrl,
      taskQueue: s.taskQueue,
    }),
    DT_REDIS_KEY_PREFIX: s.redisKeyPrefix,
    // Unscoped workflow ids, as the tests name them (test/deployments.e2e.test.ts covers named ones).
    DT_DEPLOYMENT: 'none',
    DT_LOG_LEVEL: 'info',
  };
}

/** Starts `src/worker.ts` as a process and waits until it polls. */
export async function spawnWorker(s: ServiceEnv & { dataDir: string }): Promise<Proc> {
  const env = {
    ...sharedEnv(s),
    DT_DATA_DIR: s.dataDir,
    DT_ARTIFACT_PORT: '0',
    DT_WORKFLOW_BUNDLE: await currentBundleFile(),
    DT_KILL_GRACE: '2s',
    DT_CONTROL_POLL_INTERVAL: '500ms',
    ...s.env,
  };
  return startSourceProcess('worker', env, { logFile: nextLogFile(s.logDir, 'worker'), wrap: s.wrap });
}

/** Starts `src/starter.ts` as a process and waits until it consumes. */
export function spawnStarter(s: ServiceEnv & { starterId: string }): Promise<Proc> {
  const env = { ...sharedEnv(s), DT_STARTER_ID: s.starterId, DT_PROGRESS: 'off', ...s.env };
  return startSourceProcess('starter', env, { logFile: nextLogFile(s.logDir, 'starter') });
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

  /** Listens on a free port of `host` (default 127.0.0.1); resolves to "<host>:<port>". */
  async start(host = '127.0.0.1'): Promise<string> {
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
    await new Promise<void>((resolve) => this.server!.listen(0, host, () => resolve()));
    this.port = (this.server.address() as net.AddressInfo).port;
    return `${host}:${this.port}`;
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

/** True while a pid exists and is not a zombie. */
export function pidAlive(pid: number): boolean {
  try {
    return !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
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
export function devServerOnFile(dir: string, logDir: string): Promise<DevServerOptions> {
  return onFreePorts(path.join(logDir, 'temporal.log'), { dbFile: path.join(dir, 'temporal.db') });
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
