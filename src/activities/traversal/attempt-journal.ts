/**
 * The attempt journal: the activity attempts a worker process is running, kept on disk so that a
 * worker started after this one died can fail them at once through Temporal's async completion,
 * instead of the server waiting out their heartbeat timeout (30 s by default) before it retries.
 *
 * Layout: `<dataDir>/workers/<pid>-<start ticks>[-<n>].json`, one file per live worker (`n` numbers
 * further workers of one process, as tests make). It is rewritten atomically (tmp + rename) when an
 * attempt starts or ends, its mtime is touched every second as a lease, and it is removed on a
 * graceful shutdown:
 *   {version, pid, startTime, pidNamespace, bootId, host, identity, namespace, updatedAt,
 *    attempts: [{taskToken (base64), activityType, workflowId, runId, activityId, attempt, startedAt}]}
 *
 * Threat model: failing the attempt of a worker that is alive would run one traversal twice on a
 * phone, so a journal's worker counts as dead only when
 *  - it ran in our kernel boot (`boot_id`) and our pid namespace, and no process has its pid with
 *    its /proc start time: conclusive, at once; or
 *  - it ran elsewhere (another container on this host, another host on a shared folder), where its
 *    pid means nothing to us, and its lease has not been renewed for JOURNAL_LEASE_STALE_MS.
 * A live worker in our namespace is never touched, even with a stale lease (a blocked event loop).
 * A task token names one attempt: a stale one (the attempt already ended, or was retried elsewhere)
 * fails with NotFound and cannot touch the attempt that replaced it. The server keeps the attempt's
 * last heartbeat details, so the retry still resumes from the checkpoint (checked by
 * test/faults-worker.test.ts).
 */
import { ActivityNotFoundError, type Client } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import type { ActivityInterceptorsFactory } from '@temporalio/worker';
import type { Info } from '@temporalio/activity';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { OWN_START, processStartTime } from './process-group';
import { dataFolders } from '../../config';

/** Failure type of an attempt failed because its worker died; retryable. */
export const WORKER_LOST = 'WorkerLost';
/** How often a live worker renews its lease (the journal's mtime), ms. */
export const JOURNAL_LEASE_REFRESH_MS = 1000;
/** Age of a lease after which a worker we cannot check by pid counts as dead, ms. */
export const JOURNAL_LEASE_STALE_MS = 5000;
/** Deadline of one async-completion call at start-up, ms. */
const FAIL_CALL_DEADLINE_MS = 10_000;

/** The folder of worker journals under a data folder. */
export function journalDir(dataDir: string): string {
  return dataFolders(dataDir).workers;
}

/** One running attempt as recorded in a journal. */
export interface JournalAttempt {
  /** The attempt's task token, base64. */
  taskToken: string;
  activityType: string;
  workflowId: string;
  runId: string;
  activityId: string;
  attempt: number;
  startedAt: string;
}

/** What identifies a worker process, and how far its pid can be checked by another. */
export interface WorkerFacts {
  pid: number;
  /** Start time of the process (clock ticks since boot, /proc/<pid>/stat field 22). */
  startTime?: string;
  /** Target of /proc/self/ns/pid, e.g. `pid:[4026531836]`. */
  pidNamespace?: string;
  /** /proc/sys/kernel/random/boot_id: start times and namespace ids mean something within one boot only. */
  bootId?: string;
  host: string;
}

/** The content of a journal file. */
export interface JournalFile extends WorkerFacts {
  version: 1;
  identity: string;
  namespace: string;
  updatedAt: string;
  attempts: JournalAttempt[];
}

type Log = (msg: string, meta?: Record<string, unknown>) => void;

/** Facts about this process, read once. */
let own: Promise<WorkerFacts> | undefined;
/** Reads this process's pid, start time, pid namespace, boot id and host name (cached). */
export function ownFacts(): Promise<WorkerFacts> {
  own ??= (async () => ({
    pid: process.pid,
    startTime: await OWN_START,
    pidNamespace: await fsp.readlink('/proc/self/ns/pid').catch(() => undefined),
    bootId: await fsp
      .readFile('/proc/sys/kernel/random/boot_id', 'utf8')
      .then((s) => s.trim())
      .catch(() => undefined),
    host: os.hostname(),
  }))();
  return own;
}

let instances = 0;

/** Options of a worker's own journal. */
export interface AttemptJournalOptions {
  /** The journal folder (`journalDir(dataDir)`). */
  dir: string;
  /** Worker identity, as the server shows it (`<pid>@<host>` by default). */
  identity: string;
  namespace: string;
  log?: Log;
}

/** This worker's journal; `interceptors` records every activity attempt in it. */
export class AttemptJournal {
  private readonly attempts = new Map<string, JournalAttempt>();
  private facts?: WorkerFacts;
  private fileName?: string;
  private writing: Promise<void> = Promise.resolve();
  private lease?: NodeJS.Timeout;
  private closed = false;

  constructor(private readonly opts: AttemptJournalOptions) {}

  /** Path of the journal file (set by `open`). */
  get file(): string | undefined {
    return this.fileName && path.join(this.opts.dir, this.fileName);
  }

  /** Writes the (empty) journal and starts renewing its lease. */
  async open(): Promise<void> {
    this.facts = await ownFacts();
    const n = ++instances;
    this.fileName = `${this.facts.pid}-${this.facts.startTime ?? 'x'}${n > 1 ? `-${n}` : ''}.json`;
    await fsp.mkdir(this.opts.dir, { recursive: true });
    await this.write();
    this.lease = setInterval(() => void this.renew(), JOURNAL_LEASE_REFRESH_MS);
    this.lease.unref();
  }

  /** The activity interceptor that records each attempt while it runs. */
  readonly interceptors: ActivityInterceptorsFactory = (ctx) => ({
    inbound: {
      execute: async (input, next) => {
        const key = this.add(ctx.info);
        // Awaited: an attempt the journal does not name yet falls back to its heartbeat timeout.
        await this.write();
        try {
          return await next(input);
        } finally {
          this.attempts.delete(key);
          void this.write();
        }
      },
    },
  });

  /** Stops the lease and removes the journal (graceful shutdown); safe to call twice. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.lease) clearInterval(this.lease);
    await this.writing;
    const file = this.file;
    if (file) await fsp.rm(file, { force: true });
  }

  private add(info: Info): string {
    const taskToken = Buffer.from(info.taskToken).toString('base64');
    this.attempts.set(taskToken, {
      taskToken,
      activityType: info.activityType,
      workflowId: info.workflowExecution?.workflowId ?? '',
      runId: info.workflowExecution?.runId ?? '',
      activityId: info.activityId,
      attempt: info.attempt,
      startedAt: new Date().toISOString(),
    });
    return taskToken;
  }

  /** Queues a rewrite of the whole journal; writes never overtake each other. */
  private write(): Promise<void> {
    this.writing = this.writing.then(() => this.flush());
    return this.writing;
  }

  private async flush(): Promise<void> {
    const file = this.file;
    if (!file || !this.facts || this.closed) return;
    const body: JournalFile = {
      version: 1,
      ...this.facts,
      identity: this.opts.identity,
      namespace: this.opts.namespace,
      updatedAt: new Date().toISOString(),
      attempts: [...this.attempts.values()],
    };
    const tmp = `${file}.tmp`;
    try {
      await fsp.writeFile(tmp, JSON.stringify(body));
      await fsp.rename(tmp, file);
    } catch (err) {
      // The journal only shortens recovery; without it a dead worker's attempts wait for their timeout.
      this.opts.log?.('could not write the worker journal', { file, error: String(err) });
    }
  }

  private async renew(): Promise<void> {
    const file = this.file;
    if (!file || this.closed) return;
    const now = new Date();
    await fsp.utimes(file, now, now).catch(() => this.write());
  }
}

/** Options of the start-up sweep. */
export interface FailDeadWorkerAttemptsOptions {
  dir: string;
  client: Client;
  /** Our namespace: journals of workers of another namespace are left to those. */
  namespace: string;
  /** Our identity, named in the failure message. */
  identity: string;
  /** Our own journal file, skipped. */
  ownFile?: string;
  log?: Log;
  /** Ends the wait for undecided leases (shutdown). */
  signal?: AbortSignal;
}

/** What the sweep did; `undecided` settles once the journals it could not judge at once are settled. */
export interface SweepOutcome {
  failed: number;
  stale: number;
  /** Journals whose worker could not be judged by pid and whose lease was still fresh. */
  undecided: Promise<void>;
}

/**
 * Fails, through the client's async completion, every attempt recorded by a worker that is dead,
 * and removes its journal. Journals of workers we can check by pid are settled before this
 * resolves; the others wait in the background (bounded) until their lease is stale or renewed.
 */
export async function failDeadWorkerAttempts(opts: FailDeadWorkerAttemptsOptions): Promise<SweepOutcome> {
  const me = await ownFacts();
  const names = await fsp.readdir(opts.dir).catch(() => [] as string[]);
  const outcome: SweepOutcome = { failed: 0, stale: 0, undecided: Promise.resolve() };
  const waiting: Promise<void>[] = [];
  for (const name of names) {
    const file = path.join(opts.dir, name);
    if (file === opts.ownFile) continue;
    if (name.endsWith('.json.tmp')) {
      // A write cut by a kill; the writer's own journal is the .json beside it.
      const st = await fsp.stat(file).catch(() => undefined);
      if (st && Date.now() - st.mtimeMs > JOURNAL_LEASE_STALE_MS) await fsp.rm(file, { force: true });
      continue;
    }
    if (!name.endsWith('.json')) continue;
    const journal = await readJournal(file);
    if (!journal) continue;
    if (journal.namespace !== opts.namespace) {
      opts.log?.('worker journal of another namespace left alone', { file, namespace: journal.namespace });
      continue;
    }
    const verdict = await judge(journal, file, me);
    if (verdict.state === 'alive') {
      opts.log?.('worker journal left alone: its worker is alive', {
        file,
        workerPid: journal.pid,
        reason: verdict.reason,
      });
    } else if (verdict.state === 'dead') {
      await reap(opts, file, journal, verdict.reason, outcome);
    } else {
      waiting.push(waitForLease(opts, file, journal, outcome));
    }
  }
  outcome.undecided = Promise.all(waiting).then(() => undefined);
  return outcome;
}

/** Every readable worker journal on a data folder. */
export async function readJournals(dataDir: string): Promise<JournalFile[]> {
  const dir = journalDir(dataDir);
  const names = (await fsp.readdir(dir).catch(() => [] as string[])).filter((n) => n.endsWith('.json'));
  const journals = await Promise.all(names.map((n) => readJournal(path.join(dir, n))));
  return journals.filter((j): j is JournalFile => j !== undefined);
}

async function readJournal(file: string): Promise<JournalFile | undefined> {
  try {
    const j = JSON.parse(await fsp.readFile(file, 'utf8')) as JournalFile;
    return j.version === 1 && Array.isArray(j.attempts) ? j : undefined;
  } catch {
    return undefined; // removed meanwhile, or not ours
  }
}

type Verdict = { state: 'alive' | 'dead' | 'undecided'; reason: string };

/** Decides whether the worker of a journal is dead (see the file header). */
async function judge(j: JournalFile, file: string, me: WorkerFacts): Promise<Verdict> {
  const samePidSpace = !!j.bootId && !!j.pidNamespace && j.bootId === me.bootId && j.pidNamespace === me.pidNamespace;
  if (samePidSpace && j.startTime) {
    const start = await processStartTime(j.pid);
    return start === j.startTime
      ? { state: 'alive', reason: 'its pid runs with its start time' }
      : { state: 'dead', reason: `no process ${j.pid} started at tick ${j.startTime} in this pid namespace` };
  }
  const st = await fsp.stat(file).catch(() => undefined);
  if (!st) return { state: 'alive', reason: 'journal removed meanwhile' };
  const age = Date.now() - st.mtimeMs;
  return age > JOURNAL_LEASE_STALE_MS
    ? { state: 'dead', reason: `another pid namespace or boot, lease not renewed for ${Math.round(age)} ms` }
    : { state: 'undecided', reason: `another pid namespace or boot, lease renewed ${Math.round(age)} ms ago` };
}

/** Polls a journal we cannot check by pid until its lease is stale (dead) or outlives the bound (alive). */
async function waitForLease(
  opts: FailDeadWorkerAttemptsOptions,
  file: string,
  journal: JournalFile,
  outcome: SweepOutcome,
): Promise<void> {
  const where = { file, workerPid: journal.pid, workerHost: journal.host };
  opts.log?.('worker journal from another pid namespace: waiting to see whether its lease is renewed', where);
  const me = await ownFacts();
  // A live worker renews every second, so a lease still fresh after the stale age plus a margin is live.
  const until = Date.now() + JOURNAL_LEASE_STALE_MS + 2 * JOURNAL_LEASE_REFRESH_MS;
  while (Date.now() < until && !opts.signal?.aborted) {
    await new Promise((r) => setTimeout(r, 500));
    const verdict = await judge(journal, file, me);
    if (verdict.state === 'dead') {
      // Read it again: a worker that was slow, not dead, may have written new attempts.
      const latest = await readJournal(file);
      if (latest) await reap(opts, file, latest, verdict.reason, outcome);
      return;
    }
    if (verdict.state === 'alive') return;
  }
  opts.log?.('worker journal left alone: its lease is renewed', where);
}

/** Fails every attempt of a dead worker's journal, then removes it (kept when a call failed otherwise). */
async function reap(
  opts: FailDeadWorkerAttemptsOptions,
  file: string,
  journal: JournalFile,
  reason: string,
  outcome: SweepOutcome,
): Promise<void> {
  let unsettled = 0;
  for (const a of journal.attempts) {
    const meta = {
      deadWorker: journal.identity,
      workerPid: journal.pid,
      workflowId: a.workflowId,
      activityType: a.activityType,
      activityId: a.activityId,
      attempt: a.attempt,
    };
    const failure = ApplicationFailure.retryable(
      `worker ${journal.identity} (pid ${journal.pid} on ${journal.host}) died while running attempt ${a.attempt} of ` +
        `${a.activityType}; worker ${opts.identity} ended the attempt at its start-up so the retry need not wait for the heartbeat timeout`,
      WORKER_LOST,
    );
    try {
      await opts.client.withDeadline(Date.now() + FAIL_CALL_DEADLINE_MS, () =>
        opts.client.activity.fail(Buffer.from(a.taskToken, 'base64'), failure),
      );
      outcome.failed++;
      opts.log?.('failed the attempt of a dead worker so that it is retried now', { ...meta, reason });
    } catch (err) {
      if (err instanceof ActivityNotFoundError) {
        outcome.stale++;
        opts.log?.('attempt of a dead worker had already ended or was retried elsewhere; nothing to fail', meta);
      } else {
        unsettled++;
        opts.log?.('could not fail the attempt of a dead worker; it is retried after its heartbeat timeout', {
          ...meta,
          error: String(err),
        });
      }
    }
  }
  // Keep a journal with an attempt left unsettled (server unreachable): the next start tries again.
  if (unsettled === 0) {
    await fsp.rm(file, { force: true });
    opts.log?.('removed the journal of a dead worker', {
      file,
      workerPid: journal.pid,
      attempts: journal.attempts.length,
    });
  }
}
