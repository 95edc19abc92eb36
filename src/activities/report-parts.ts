/**
 * Ships what one traversal attempt produces off its host while the tool runs, so that a lost host
 * loses nothing already found: each finding as soon as it is printed (with its screenshot), and
 * the report files written so far every few seconds, into the sink under the attempt's prefix
 * (layout in report-store.ts). A copy of the findings also goes to a local file, which marks the
 * attempt as one that ran on this host (the final upload then reads it from disk).
 *
 * Shipping is one ordered chain, so findings land as 1, 2, 3… with no gaps (a reader stops at the
 * first missing number). A failed put is retried with backoff; what still fails is tried again
 * when the attempt closes, and `close()` reports it.
 */
import { createReadStream, promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { isSafeRelativePath } from './findings';
import type { Finding } from '../contract/messages';
import { partKey, type AttemptManifest, type ReportStore } from './report-store';

/** The local file holding an attempt's findings, one JSON object a line. */
export function localFindingsFile(runDir: string, attempt: number): string {
  return path.join(runDir, `attempt-${attempt}.findings.jsonl`);
}

/** Logging the shipper needs. */
interface Log {
  warn(msg: string, meta?: Record<string, unknown>): void;
  debug(msg: string, meta?: Record<string, unknown>): void;
}

/** Options of one attempt's shipper. */
export interface AttemptShipperOptions {
  /** The sink; unset, findings are only kept in the local file. */
  store?: ReportStore;
  taskId: string;
  deviceId: string;
  attempt: number;
  /** The tool's report folder. */
  reportDir: string;
  /** The run's local folder (holds the local findings file). */
  runDir: string;
  log: Log;
  /** Tries per put before an item waits for `close()`. */
  tries?: number;
  /** First retry delay, ms (doubles each try). */
  retryMs?: number;
}

/** Lists the files of a folder recursively as paths relative to it, skipping dot files (temporary files). */
export async function listReportFiles(root: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(rel: string): Promise<void> {
    let entries: import('node:fs').Dirent[];
    try {
      entries = await fsp.readdir(path.join(root, rel), { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
      if (e.name.startsWith('.')) continue;
      const child = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(child);
      else if (e.isFile()) out.push(child);
    }
  }
  await walk('');
  return out;
}

/** Ships one attempt's findings and report files to the sink as they appear. */
export class AttemptShipper {
  private chain: Promise<void> = Promise.resolve();
  private inFlight = 0;
  private seq = 0;
  private readonly shipped = new Map<string, { size: number; mtimeMs: number }>();
  /** Findings whose put failed every try; retried by close(). */
  private readonly unshipped: { seq: number; finding: Finding }[] = [];
  private readonly startedAt = new Date().toISOString();
  private readonly localFile: string;
  private closed = false;
  private filesQueued?: Promise<void>;

  constructor(private readonly o: AttemptShipperOptions) {
    this.localFile = localFindingsFile(o.runDir, o.attempt);
  }

  /** Findings shipped or queued so far in this attempt. */
  get findings(): number {
    return this.seq;
  }

  /** True while a finding is on its way to the sink (not yet durable). */
  get busy(): boolean {
    return this.inFlight > 0;
  }

  /** Marks the attempt as run on this host and announces it in the sink (best effort: a sink that is down now is tried again later). */
  async open(): Promise<void> {
    await fsp.mkdir(this.o.runDir, { recursive: true });
    await fsp.writeFile(this.localFile, '', { flag: 'a' });
    void this.enqueue(() => this.putManifest(false));
  }

  /** Queues a finding: written locally at once, then shipped with its screenshot. */
  addFinding(finding: Finding, onDurable?: () => void): void {
    const seq = ++this.seq;
    this.inFlight++;
    const local = fsp.appendFile(this.localFile, `${JSON.stringify(finding)}\n`);
    void this.enqueue(async () => {
      try {
        await local;
        if (!(await this.putFinding(seq, finding))) this.unshipped.push({ seq, finding });
      } finally {
        this.inFlight--;
        onDurable?.();
      }
    });
  }

  /** Queues a pass over the report folder that ships every new or changed file, then the manifest (one pass queued at a time). */
  shipFiles(): Promise<void> {
    if (this.filesQueued) return this.filesQueued;
    this.filesQueued = this.enqueue(async () => {
      this.filesQueued = undefined;
      await this.putChangedFiles();
      await this.putManifest(false);
    });
    return this.filesQueued;
  }

  /**
   * Waits for everything queued, ships the folder a last time and writes the final manifest.
   * Resolves to the problems left (empty when everything reached the sink). Safe to call twice.
   */
  async close(): Promise<string[]> {
    if (this.closed) return [];
    this.closed = true;
    await this.chain;
    const problems: string[] = [];
    for (const { seq, finding } of this.unshipped.splice(0))
      if (!(await this.putFinding(seq, finding))) problems.push(`finding ${seq}`);
    problems.push(...(await this.putChangedFiles()));
    if (!(await this.putManifest(true))) problems.push('manifest');
    return problems;
  }

  private enqueue(fn: () => Promise<unknown>): Promise<void> {
    const next = this.chain.then(fn).then(
      () => undefined,
      (err: unknown) => this.o.log.warn('shipping a report part failed', { error: String(err) }),
    );
    this.chain = next;
    return next;
  }

  /** Runs a put with retries; false when every try failed. */
  private async withRetries(what: string, put: (store: ReportStore) => Promise<void>): Promise<boolean> {
    const store = this.o.store;
    if (!store) return true;
    const tries = this.o.tries ?? 4;
    let delay = this.o.retryMs ?? 1000;
    for (let i = 1; ; i++) {
      try {
        await put(store);
        return true;
      } catch (err) {
        if (i >= tries) {
          this.o.log.warn('could not ship a report part to the sink; will try again when the attempt ends', {
            part: what,
            error: (err as Error).message,
          });
          return false;
        }
        await new Promise((r) => setTimeout(r, delay));
        delay *= 2;
      }
    }
  }

  private key(...rest: string[]): string[] {
    return partKey(this.o.taskId, this.o.deviceId, this.o.attempt, ...rest);
  }

  private async putFinding(seq: number, finding: Finding): Promise<boolean> {
    if (finding.screenshot && isSafeRelativePath(finding.screenshot)) await this.putFile(finding.screenshot);
    return this.withRetries(`finding ${seq}`, (store) =>
      store.put(this.key('findings', `${seq}.json`), JSON.stringify(finding)),
    );
  }

  /** Ships one report file if it is new or changed since it was last shipped; false when that failed. */
  private async putFile(rel: string): Promise<boolean> {
    const file = path.join(this.o.reportDir, rel);
    let st: import('node:fs').Stats;
    try {
      st = await fsp.stat(file);
    } catch {
      return true; // gone meanwhile (a tool's temporary file)
    }
    const last = this.shipped.get(rel);
    if (last && last.size === st.size && last.mtimeMs === st.mtimeMs) return true;
    const ok = await this.withRetries(rel, (store) =>
      store.put(this.key('files', ...rel.split('/')), createReadStream(file)),
    );
    if (ok) this.shipped.set(rel, { size: st.size, mtimeMs: st.mtimeMs });
    return ok;
  }

  private async putChangedFiles(): Promise<string[]> {
    const failed: string[] = [];
    for (const rel of await listReportFiles(this.o.reportDir)) if (!(await this.putFile(rel))) failed.push(rel);
    return failed;
  }

  private putManifest(final: boolean): Promise<boolean> {
    const manifest: AttemptManifest = {
      attempt: this.o.attempt,
      host: os.hostname(),
      workerPid: process.pid,
      startedAt: this.startedAt,
      updatedAt: new Date().toISOString(),
      final,
      files: [...this.shipped].map(([p, s]) => ({ path: p, size: s.size })),
      findings: this.seq - this.unshipped.length,
    };
    return this.withRetries('manifest', (store) => store.put(this.key('manifest.json'), JSON.stringify(manifest)));
  }
}
