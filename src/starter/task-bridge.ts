/**
 * The bridge from Redis to Temporal. Reliable consumption: BLMOVE takes an item from the task list
 * into this starter's own processing list atomically; it leaves that list only after Temporal
 * accepted every request in it (or after it went to the dead-letter list). On start the processing
 * list is replayed, so a starter killed mid-item loses nothing; the device workflow's dedupe by
 * taskId makes the replay harmless.
 *
 * Items are handled as bytes from BLMOVE to LREM: LREM removes by exact value, so an item that was
 * decoded (invalid UTF-8 turned into U+FFFD) would never match again and be replayed after every
 * restart and reconnect. Tasks are decoded in one place, parseTask, which refuses invalid UTF-8.
 */
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import type Redis from 'ioredis';
import { InvalidTaskError } from '../contract/errors';
import type { ExtraArgsPolicy } from '../contract/extra-args';
import { deviceWorkflowId, enqueueSignal, type RunPolicy, type TraversalRequest } from '../contract/messages';
import { DEVICE_ID } from '../contract/search-attributes';
import type { AgentDirectory } from '../device-registry';
import { DEAD_LETTER_SCRIPT, deadLetterEntry } from './dead-letters';
import { dropTaskDevices, recordTask } from './task-record';
import { parseTask } from './task';
import { DEFAULT_TASK_RETENTION_MS, starterKeys } from '../contract/redis-keys';
import type { UrlPolicy } from '../net/url-policy';
import { deviceWorkflow } from '../workflows/device';

/**
 * Puts one traversal request into its device's queue, starting the device workflow when it is not
 * running: the one call the bridge makes to Temporal per request (a repeat is deduped by taskId).
 */
export async function requestTraversal(client: Client, taskQueue: string, req: TraversalRequest): Promise<void> {
  const deployment = req.deployment ?? '';
  await client.workflow.signalWithStart(deviceWorkflow, {
    workflowId: deviceWorkflowId(req.deviceId, deployment),
    taskQueue,
    args: [{ deviceId: req.deviceId, ...(deployment ? { deployment } : {}), taskQueue }],
    signal: enqueueSignal,
    signalArgs: [req],
    typedSearchAttributes: [{ key: DEVICE_ID, value: req.deviceId }],
    memo: { deployment },
    staticSummary: `device ${req.deviceId}${deployment ? ` of ${deployment}` : ''}: FIFO queue of traversals`,
  });
}

/**
 * Why the running device workflow for this request belongs to another deployment (same id, other
 * task queue or deployment name: two deployments misconfigured with one DT_DEPLOYMENT), or
 * undefined when it is ours or none runs.
 */
export async function foreignOwner(
  client: Client,
  taskQueue: string,
  req: TraversalRequest,
): Promise<string | undefined> {
  const deployment = req.deployment ?? '';
  const id = deviceWorkflowId(req.deviceId, deployment);
  let desc;
  try {
    desc = await client.workflow.getHandle(id).describe();
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return undefined;
    throw err;
  }
  if (desc.status.name !== 'RUNNING') return undefined;
  const theirs = typeof desc.memo?.deployment === 'string' ? desc.memo.deployment : '';
  if (desc.taskQueue === taskQueue && theirs === deployment) return undefined;
  return (
    `device workflow ${id} belongs to another deployment (task queue ${desc.taskQueue}` +
    `${theirs !== deployment ? `, deployment ${JSON.stringify(theirs)}` : ''}); this starter's task queue is ${taskQueue}. ` +
    'Give each deployment sharing a Temporal namespace its own DT_DEPLOYMENT'
  );
}

/** How long a device workflow found to be this deployment's is trusted without asking again, ms. */
const OWNER_CHECK_TTL_MS = 60_000;

/** What became of one request: sent (empty), not sent because the bridge stops, or refused. */
interface SendOutcome {
  stopped?: boolean;
  refused?: string;
  /** The device of a refused request. */
  deviceId?: string;
}

/** Options of the bridge. */
export interface TaskBridgeOptions {
  /** Connection for ordinary commands. */
  redis: Redis;
  /** Dedicated connection for the blocking BLMOVE. */
  blocking: Redis;
  client: Client;
  taskQueue: string;
  starterId: string;
  agents: AgentDirectory;
  /** URL policy tasks are checked against (apkUrl/agentUrl literals, agents named by tasks). */
  urlPolicy?: UrlPolicy;
  /** Allow-list of traversal.extraArgs (DT_TRAVERSAL_EXTRA_ARGS); without it a task with extra arguments is dead-lettered. */
  extraArgs?: ExtraArgsPolicy;
  /** Run policy copied into every request. */
  policy?: RunPolicy;
  keyPrefix?: string;
  /** How long a task's record outlives its last result, ms (DT_TASK_RETENTION). */
  taskRetentionMs?: number;
  /** DT_DEPLOYMENT: the name that scopes this deployment's workflow ids ('' or absent: none). */
  deployment?: string;
  /**
   * Items handled at once (default 8). Requests for one device are still sent in the order their
   * items left the task list; only requests for different devices overlap.
   */
  concurrency?: number;
  /** Seconds one BLMOVE waits before checking for stop. */
  blockTimeoutSec?: number;
  /**
   * Deadline of one request to Temporal, ms (default 10000). Without one, a request on a
   * connection that went silent (a partition, a server that hangs) waits for gRPC keepalive to
   * give up, about 45 s; with one it is retried. A retried request that did arrive is a no-op.
   */
  temporalTimeoutMs?: number;
  log?: (level: 'info' | 'warn' | 'error', msg: string, meta?: Record<string, unknown>) => void;
  /** Called for each request Temporal accepted, with the bytes of the item it came from. */
  onStarted?: (req: TraversalRequest, raw: Buffer) => void;
  /** Called for each item dead-lettered, with its bytes. */
  onDead?: (reason: string, raw: Buffer) => void;
}

/** Counters of one bridge. */
export interface BridgeStats {
  items: number;
  started: number;
  dead: number;
  replayed: number;
  temporalRetries: number;
}

/** Consumes `traversal:tasks` until stopped. */
export class TaskBridge {
  readonly keys: ReturnType<typeof starterKeys>;
  readonly stats: BridgeStats = { items: 0, started: 0, dead: 0, replayed: 0, temporalRetries: 0 };
  private stopping = false;
  private running?: Promise<void>;
  /** Ends every pause in progress (items in flight may each be waiting to retry). */
  private readonly wakers = new Set<() => void>();
  private connectedBefore: boolean;
  private replayPending = false;
  /** Items being handled now. */
  private readonly inFlight = new Set<Promise<void>>();
  /** Per device, settles with whether the last request sent for it was accepted. */
  private readonly deviceTail = new Map<string, Promise<boolean>>();
  /** Devices whose running device workflow was found to be ours, until when. */
  private readonly ownedUntil = new Map<string, number>();

  constructor(private readonly opts: TaskBridgeOptions) {
    this.keys = starterKeys(opts.starterId, opts.keyPrefix);
    // A BLMOVE that Redis executed just before the connection dropped has its reply lost, and the
    // client sends it again after reconnecting: the first item would sit in the processing list
    // until a restart. So every reconnect replays the processing list (dedupe makes that harmless).
    this.connectedBefore = opts.blocking.status === 'ready';
    opts.blocking.on('ready', () => {
      if (this.connectedBefore) this.replayPending = true;
      this.connectedBefore = true;
    });
  }

  private get prefix(): string {
    return this.opts.keyPrefix ?? '';
  }

  /** Items handled at once. */
  private get limit(): number {
    return Math.max(1, this.opts.concurrency ?? 8);
  }

  /** Starts consuming in the background; the promise of `done()` settles when it stops. */
  start(): this {
    this.running ??= this.loop();
    return this;
  }

  /** Resolves when the loop has ended. */
  done(): Promise<void> {
    return this.running ?? Promise.resolve();
  }

  /** Stops after the current item; safe to call twice. */
  async stop(): Promise<void> {
    this.stopping = true;
    for (const wake of this.wakers) wake();
    await this.done();
  }

  private async loop(): Promise<void> {
    const { blocking } = this.opts;
    // Items left by an earlier run of this starter id.
    await this.replay();
    while (!this.stopping) {
      if (this.replayPending) {
        this.replayPending = false;
        this.opts.log?.('info', 'Redis reconnected; replaying the processing list', {
          processing: this.keys.processing,
        });
        await this.drain();
        await this.replay();
        continue;
      }
      if (this.inFlight.size >= this.limit) {
        await Promise.race(this.inFlight);
        continue;
      }
      let raw: Buffer | null;
      try {
        raw = await blocking.blmoveBuffer(
          this.keys.tasks,
          this.keys.processing,
          'RIGHT',
          'LEFT',
          this.opts.blockTimeoutSec ?? 1,
        );
      } catch (err) {
        if (this.stopping) break;
        this.opts.log?.('warn', 'waiting for Redis', { error: (err as Error).message });
        await this.pause(1000);
        continue;
      }
      if (raw !== null) this.track(this.handle(raw));
    }
    await this.drain();
  }

  private track(item: Promise<void>): void {
    const settled = item.catch((err) => this.opts.log?.('error', 'task handling failed', { error: String(err) }));
    const done = settled.finally(() => this.inFlight.delete(done));
    this.inFlight.add(done);
  }

  /** Waits until every item taken so far has been handled. */
  private async drain(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.all(this.inFlight);
  }

  /** Handles every item in this starter's processing list, oldest first (BLMOVE pushes on the left). */
  private async replay(): Promise<void> {
    const leftover = await this.withRedisRetry(() => this.opts.redis.lrangeBuffer(this.keys.processing, 0, -1));
    for (const raw of (leftover ?? []).reverse()) {
      if (this.stopping) return;
      this.stats.replayed++;
      this.opts.log?.('info', 'replaying task left in the processing list', { processing: this.keys.processing });
      while (this.inFlight.size >= this.limit) await Promise.race(this.inFlight);
      this.track(this.handle(raw));
    }
  }

  /** Validates one item and starts its requests, or dead-letters it. */
  private async handle(raw: Buffer): Promise<void> {
    this.stats.items++;
    let requests: TraversalRequest[];
    try {
      requests = parseTask(raw, this.opts.agents, { policy: this.opts.urlPolicy, extraArgs: this.opts.extraArgs });
    } catch (err) {
      const reason = err instanceof InvalidTaskError ? err.message : `unexpected validation failure: ${String(err)}`;
      await this.deadLetter(raw, reason, err instanceof InvalidTaskError ? err.problems : [reason]);
      return;
    }
    const enqueuedAt = new Date().toISOString();
    const deployment = this.opts.deployment ?? '';
    // Requests for a device workflow of another deployment are refused before anything is
    // recorded, so the task's record lists only devices whose results will come.
    const full = requests.map((req): TraversalRequest => ({
      ...req,
      enqueuedAt,
      ...(this.opts.policy ? { policy: this.opts.policy } : {}),
      ...(deployment ? { deployment } : {}),
      taskQueue: this.opts.taskQueue,
    }));
    const prepared = this.prepare(full, enqueuedAt);
    // Chain each request behind the previous one for its device, synchronously (before any await),
    // so requests for one device keep the order of their items even with several items in flight.
    const sent = full.map((req, i) => {
      const before = this.deviceTail.get(req.deviceId) ?? Promise.resolve(true);
      // A request whose predecessor was not sent (stopping) is not sent either: both are replayed later, in order.
      const mine = Promise.all([before, prepared]).then(([ok, ready]): Promise<SendOutcome> => {
        if (!ok || !ready) return Promise.resolve({ stopped: true });
        return ready[i]!.refused ? Promise.resolve(ready[i]!) : this.startWithRetry(req, raw);
      });
      const tail = mine.then((o) => !o.stopped);
      this.deviceTail.set(req.deviceId, tail);
      void tail.then(() => {
        if (this.deviceTail.get(req.deviceId) === tail) this.deviceTail.delete(req.deviceId);
      });
      return mine;
    });
    const outcomes = await Promise.all(sent);
    if (outcomes.some((o) => o.stopped)) return; // stopping: the item stays in the processing list and is replayed later
    // A device whose workflow changed hands between the check and the send (rare) leaves the record;
    // one refused at the check was never in it.
    const refusedDevices = outcomes.flatMap((o) => (o.refused && o.deviceId ? [o.deviceId] : []));
    if (refusedDevices.length)
      await this.withRedisRetry(() =>
        dropTaskDevices(this.opts.redis, requests[0]!.taskId, refusedDevices, this.prefix),
      );
    const refused = outcomes.flatMap((o) => (o.refused ? [o.refused] : []));
    if (refused.length > 0) {
      const others = requests.length - refused.length;
      const reason = `${refused.join('; ')}${others > 0 ? ` (the task's ${others} other request(s) were sent)` : ''}`;
      await this.deadLetter(raw, reason, refused);
      return;
    }
    await this.withRedisRetry(() => this.opts.redis.lrem(this.keys.processing, 1, raw));
  }

  /**
   * Checks who owns each request's device workflow, then records the task with the devices it will
   * be sent to (a request for another deployment's workflow is refused before anything is
   * recorded, so the task can still finish). Each request's verdict, or undefined when stopping.
   */
  private async prepare(requests: TraversalRequest[], acceptedAt: string): Promise<SendOutcome[] | undefined> {
    const verdicts = await Promise.all(requests.map((req) => this.ownerVerdict(req)));
    if (verdicts.some((v) => v.stopped)) return undefined;
    const recorded = await this.withRedisRetry(async () => {
      await recordTask(
        this.opts.redis,
        requests.filter((_, i) => !verdicts[i]!.refused),
        acceptedAt,
        this.opts.taskRetentionMs ?? DEFAULT_TASK_RETENTION_MS,
        this.prefix,
      );
      return true;
    });
    return recorded ? verdicts : undefined;
  }

  /** The owner check of one request, retried while Temporal does not answer; `stopped` when the bridge stops. */
  private ownerVerdict(req: TraversalRequest): Promise<SendOutcome> {
    return this.withTemporalRetry(req, 'owner check', async (deadline) =>
      this.verdict(req, await this.opts.client.withDeadline(deadline, () => this.checkOwner(req))),
    );
  }

  /** A request refused for `refused` (logged), or accepted when it is undefined. */
  private verdict(req: TraversalRequest, refused: string | undefined): SendOutcome {
    if (!refused) return {};
    this.opts.log?.('warn', 'request refused: its device workflow belongs to another deployment', {
      taskId: req.taskId,
      deviceId: req.deviceId,
      reason: refused,
    });
    return { refused, deviceId: req.deviceId };
  }

  /**
   * Runs `attempt` (with the deadline of one request to Temporal) until Temporal answers, backing
   * off up to 30 s between tries; `stopped` when the bridge stops meanwhile.
   */
  private async withTemporalRetry(
    req: TraversalRequest,
    step: string,
    attempt: (deadline: number) => Promise<SendOutcome>,
  ): Promise<SendOutcome> {
    for (let delay = 500; ; delay = Math.min(delay * 2, 30_000)) {
      try {
        return await attempt(Date.now() + (this.opts.temporalTimeoutMs ?? 10_000));
      } catch (err) {
        if (this.stopping) return { stopped: true };
        this.stats.temporalRetries++;
        this.opts.log?.('warn', 'Temporal did not accept the request; retrying', {
          taskId: req.taskId,
          deviceId: req.deviceId,
          step,
          error: (err as Error).message,
          retryInMs: delay,
        });
        await this.pause(delay);
        if (this.stopping) return { stopped: true };
      }
    }
  }

  /** Whether the device workflow this request goes to is ours; a positive answer is kept a minute. */
  private async checkOwner(req: TraversalRequest): Promise<string | undefined> {
    const key = req.deviceId;
    if ((this.ownedUntil.get(key) ?? 0) > Date.now()) return undefined;
    const why = await foreignOwner(this.opts.client, this.opts.taskQueue, req);
    if (why === undefined) this.ownedUntil.set(key, Date.now() + OWNER_CHECK_TTL_MS);
    return why;
  }

  /** Sends one request (its owner checked again, from the cache), retried until Temporal takes it. */
  private startWithRetry(req: TraversalRequest, raw: Buffer): Promise<SendOutcome> {
    return this.withTemporalRetry(req, 'send', async (deadline) => {
      const refused = this.verdict(req, await this.opts.client.withDeadline(deadline, () => this.checkOwner(req)));
      if (refused.refused) return refused;
      await this.opts.client.withDeadline(deadline, () => requestTraversal(this.opts.client, this.opts.taskQueue, req));
      this.stats.started++;
      this.opts.log?.('info', 'traversal requested', {
        taskId: req.taskId,
        deviceId: req.deviceId,
        packageName: req.packageName,
      });
      this.opts.onStarted?.(req, raw);
      return {};
    });
  }

  private async deadLetter(raw: Buffer, reason: string, problems: string[]): Promise<void> {
    this.stats.dead++;
    const entry = deadLetterEntry(raw, reason, problems, this.opts.starterId);
    this.opts.log?.('warn', 'task dead-lettered', { reason: reason.slice(0, 500), dead: this.keys.dead });
    await this.withRedisRetry(() =>
      this.opts.redis.eval(DEAD_LETTER_SCRIPT, 2, this.keys.processing, this.keys.dead, raw, JSON.stringify(entry)),
    );
    this.opts.onDead?.(reason, raw);
  }

  private async withRedisRetry<T>(fn: () => Promise<T>): Promise<T | undefined> {
    for (let delay = 200; ; delay = Math.min(delay * 2, 5000)) {
      try {
        return await fn();
      } catch (err) {
        if (this.stopping && delay > 2000) return undefined;
        this.opts.log?.('warn', 'Redis command failed; retrying', { error: (err as Error).message });
        await this.pause(delay);
      }
    }
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(t);
        this.wakers.delete(wake);
        resolve();
      };
      const t = setTimeout(wake, ms);
      this.wakers.add(wake);
    });
  }
}
