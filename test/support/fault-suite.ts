/**
 * What the fault-injection suites set up alike: a unique id and, named after it, a task queue, a
 * Redis key prefix and a temporary folder whose `logs/` holds the logs of the processes the suite
 * spawns; the list of those processes, stopped at the end together with any jar a failed test left;
 * an APK origin and clients of the test run's Temporal and Redis. A suite calls `start()` in its
 * `before` and `stopProcs()` and `close()` in its `after`, around what it stops itself.
 */
import assert from 'node:assert/strict';
import type { Client, WorkflowHandle } from '@temporalio/client';
import type Redis from 'ioredis';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { traversalWorkflowId, type TraversalRequest } from '../../src/contract/messages';
import { requestTraversal } from '../../src/starter/task-bridge';
import type { AgentSimulator } from '../../sim/agent-sim';
import { ApkOrigin, type ApkInfo } from '../../sim/origin';
import { connectClients, type Clients } from '../../dev/clients';
import { APK_DIR } from '../../dev/services';
import type { Proc } from './procs';
import { traversalPids } from '../../dev/wait';

/** A mebibyte, bytes. */
export const MiB = 1024 * 1024;
/** The heartbeat timeout of the workers and runs of the fault suites, ms: short, so a killed attempt is retried soon. */
export const HEARTBEAT_MS = 3000;
/**
 * A jar budget far beyond any test, s: such a jar never ends by itself while a test watches it (an
 * orphan found dead was ended by a worker); it ends by a budget signal or a failure.
 */
export const LONG_SEC = 3600;

/** The per-suite set-up of a fault suite, its names taken from `tag` and a fresh id. */
export class FaultSuite {
  /** Eight hex characters, unique to this run of the suite. */
  readonly id = randomUUID().slice(0, 8);
  /** `faults-<tag>-<id>`. */
  readonly taskQueue: string;
  /** `f<tag><id>:`. */
  readonly prefix: string;
  /** The suite's temporary folder, created at once. */
  readonly dir: string;
  /** `<dir>/logs`, where spawned workers and starters write. */
  readonly logDir: string;
  /** The processes the suite spawned. */
  readonly procs: Proc[] = [];
  /** The APK origin, from `start()` on. */
  origin!: ApkOrigin;
  /** Clients of the test run's Temporal and Redis, from `start()` on. */
  clients?: Clients;

  /** The Temporal client, from `start()` on. */
  get client(): Client {
    return this.started().client;
  }

  /** A connection to the test run's Redis, from `start()` on. */
  get redis(): Redis {
    return this.started().redis;
  }

  constructor(tag: string) {
    this.taskQueue = `faults-${tag}-${this.id}`;
    this.prefix = `f${tag}${this.id}:`;
    this.dir = mkdtempSync(path.join(os.tmpdir(), `dt-faults-${tag}-${this.id}-`));
    this.logDir = path.join(this.dir, 'logs');
  }

  /**
   * Starts the APK origin (on `originHost`, default 127.0.0.1) and connects to the test run's
   * Temporal (TEST_TEMPORAL_ADDRESS) and Redis (TEST_REDIS_URL).
   */
  async start(originHost = '127.0.0.1'): Promise<void> {
    this.origin = new ApkOrigin({ dir: APK_DIR });
    await this.origin.start(0, originHost);
    this.clients = await connectClients();
  }

  /** The clients; throws before `start()`. */
  private started(): Clients {
    if (!this.clients) throw new Error('FaultSuite: start() first');
    return this.clients;
  }

  /** Serves an APK of `size` bytes from the origin as `name`. */
  async addApk(name: string, size: number): Promise<ApkInfo & { url: string }> {
    return { ...(await this.origin.addApk(name, size)), url: this.origin.url(name) };
  }

  /** Requests a traversal on the suite's task queue (or on `taskQueue`) and returns the handle of its workflow. */
  async enqueue(req: TraversalRequest, taskQueue = this.taskQueue): Promise<WorkflowHandle> {
    await requestTraversal(this.client, taskQueue, req);
    return this.client.workflow.getHandle(traversalWorkflowId(req.taskId, req.deviceId));
  }

  /** Stops every process of `procs` (and forgets them), then kills the jars of `devices` a failed test left behind. */
  async stopProcs(devices: string[] = []): Promise<void> {
    await Promise.all(this.procs.splice(0).map((p) => p.stop()));
    // A jar of an hour's budget must not run into the next file.
    for (const deviceId of devices) for (const pid of traversalPids(deviceId)) process.kill(pid, 'SIGKILL');
  }

  /** Disconnects, stops the origin and removes the folder; safe without `start()` or after one that failed half-way. */
  async close(): Promise<void> {
    await this.clients?.close();
    await this.origin?.close();
    if (!process.env.KEEP_FAULT_DIRS) rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * A request for `apk` with the fault suites' defaults under `fields`: a one-second run, the short
 * heartbeat timeout, three attempts, no launch measure.
 */
export function faultRequest(
  apk: { url: string; sha256: string },
  fields: Partial<TraversalRequest> & { taskId: string; deviceId: string; agentUrl: string },
): TraversalRequest {
  return {
    apkUrl: apk.url,
    apkSha256: apk.sha256,
    packageName: `com.example.${fields.taskId.replace(/\W/g, '')}`,
    traversal: { durationSec: 1, extraArgs: ['--tick-ms', '100'] },
    policy: { heartbeatTimeoutMs: HEARTBEAT_MS, initialRetryMs: 200, maxAttempts: 3, measureLaunch: false },
    ...fields,
  };
}

/** Asserts that `agent` installed the app on `deviceId` once and cleaned the device once. */
export function assertInstalledOnce(agent: AgentSimulator, deviceId: string): void {
  const calls = agent.calls.filter((c) => c.deviceId === deviceId);
  assert.equal(calls.filter((c) => c.op === 'install').length, 1, 'installed once');
  assert.equal(calls.filter((c) => c.op === 'uninstall').length, 1, 'cleaned once');
}
