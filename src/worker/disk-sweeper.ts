/**
 * Keeps a worker's data folder from filling its disk over weeks: at start and every interval it
 * removes partial APK downloads that no download holds (ApkCache.removeOrphanParts) and old run
 * folders under `<dataDir>/runs`.
 *
 * A run folder is `runs/<taskId>/<deviceId>` (the tool's local report, attempt logs, local findings,
 * control file). Its age is the time since anything inside it last changed (a running tool writes
 * its log on every progress line). It goes when its age passes `runsMaxAgeMs`; and while the runs
 * folder is over `runsMaxBytes`, the least recently changed go first, once older than
 * `sizeGraceMs`. Never removed, whatever its age or size: the folder of a traversal that an attempt
 * journal in `<dataDir>/workers` lists (a live worker's, or a dead one's not yet reaped; a paused
 * tool is still a running attempt there) or that a process record in `<dataDir>/pids` names. The
 * check is repeated right before each removal. A run resumed after its folder went loses nothing
 * that matters: findings and report files were shipped to the report sink while the tool ran, and
 * uploadReport reads them from there.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { ApkCache } from '../apk-cache';
import { recordedRuns } from '../activities/traversal/process-group';
import { readJournals } from '../activities/traversal/attempt-journal';
import { parseWorkflowId } from '../contract/messages';
import type { Metrics } from '../metrics';
import { dataFolders } from '../config';

/** Options of the sweeper. */
export interface DiskSweeperOptions {
  /** The worker's data folder (holds runs/, workers/ and pids/). */
  dataDir: string;
  /** The APK cache whose orphaned part files are removed; unset: parts are left alone. */
  cache?: ApkCache;
  /** Age after which a part file nobody holds is removed, ms. */
  partMaxAgeMs: number;
  /** Age after which a run folder is removed, ms. */
  runsMaxAgeMs: number;
  /** Size cap of the runs folder, bytes. */
  runsMaxBytes: number;
  /** Time between two sweeps, ms. */
  intervalMs: number;
  /** Run folders changed more recently than this are never removed for size, ms (default 1 h). */
  sizeGraceMs?: number;
  metrics?: Metrics;
  log?: (msg: string, meta?: Record<string, unknown>) => void;
}

/** What one sweep removed and kept. */
export interface SweepReport {
  parts: { files: number; bytes: number };
  runs: {
    removed: number;
    bytes: number;
    /** Folders kept because a traversal of theirs may be running. */
    active: number;
    /** Size of the runs folder after the sweep, bytes. */
    totalBytes: number;
  };
}

/** A run folder as the sweep sees it. */
interface RunFolder {
  dir: string;
  /** `<taskId>/<deviceId>`. */
  run: string;
  bytes: number;
  /** Newest mtime of the folder and anything inside it. */
  changedMs: number;
}

/** Removes orphaned APK part files and old run folders, at start and on a schedule. */
export class DiskSweeper {
  private timer?: NodeJS.Timeout;
  private running?: Promise<SweepReport>;
  private closed = false;

  constructor(private readonly opts: DiskSweeperOptions) {}

  /** Sweeps now, then every intervalMs until close(). */
  start(): void {
    if (this.closed || this.timer) return;
    const tick = () => {
      void this.sweep()
        .catch((err: unknown) => this.opts.log?.('disk sweep failed', { error: String(err) }))
        .finally(() => {
          if (!this.closed) this.timer = setTimeout(tick, this.opts.intervalMs).unref();
        });
    };
    this.timer = setTimeout(tick, 0).unref();
  }

  /** One sweep; a call while one runs gets that one. */
  sweep(): Promise<SweepReport> {
    this.running ??= this.sweepNow().finally(() => (this.running = undefined));
    return this.running;
  }

  /** Stops the schedule and waits for a sweep in progress; safe to call twice. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    await this.running?.catch(() => undefined);
  }

  private async sweepNow(): Promise<SweepReport> {
    // One half failing (a file it may not remove) must not stop the other.
    const none = { files: 0, bytes: 0 };
    const parts = this.opts.cache
      ? await this.opts.cache.removeOrphanParts(this.opts.partMaxAgeMs).catch((err: unknown) => {
          this.opts.log?.('disk sweep: removing orphaned APK part files failed', { error: String(err) });
          return none;
        })
      : none;
    const runs = await this.sweepRuns();
    const m = this.opts.metrics;
    m?.sweptFiles.inc({ kind: 'apk-part' }, parts.files);
    m?.sweptBytes.inc({ kind: 'apk-part' }, parts.bytes);
    m?.sweptFiles.inc({ kind: 'run' }, runs.removed);
    m?.sweptBytes.inc({ kind: 'run' }, runs.bytes);
    const report = { parts, runs };
    if (parts.files || runs.removed || runs.totalBytes > this.opts.runsMaxBytes) {
      this.opts.log?.('disk sweep', {
        partFilesRemoved: parts.files,
        partBytesRemoved: parts.bytes,
        runFoldersRemoved: runs.removed,
        runBytesRemoved: runs.bytes,
        runFoldersActive: runs.active,
        runsBytes: runs.totalBytes,
        runsMaxBytes: this.opts.runsMaxBytes,
      });
    }
    return report;
  }

  private async sweepRuns(): Promise<SweepReport['runs']> {
    const runsDir = dataFolders(this.opts.dataDir).runs;
    const folders = await listRunFolders(runsDir);
    const out = { removed: 0, bytes: 0, active: 0, totalBytes: folders.reduce((n, f) => n + f.bytes, 0) };
    let active = await this.activeRuns();
    const now = Date.now();
    const grace = this.opts.sizeGraceMs ?? 3_600_000;
    // Oldest first: age-expired ones go whatever the size; then more while over the cap.
    for (const f of folders.sort((a, b) => a.changedMs - b.changedMs)) {
      const age = now - f.changedMs;
      const expired = age >= this.opts.runsMaxAgeMs;
      const overCap = out.totalBytes > this.opts.runsMaxBytes && age >= grace;
      if (!expired && !overCap) continue;
      if (active.has(f.run)) {
        out.active++;
        continue;
      }
      // Look again right before removing: an attempt of this run may have started meanwhile.
      active = await this.activeRuns();
      const changedMs = (await folderFacts(f.dir))?.changedMs;
      if (active.has(f.run)) out.active++;
      if (active.has(f.run) || changedMs === undefined || changedMs > f.changedMs) continue;
      // The task folder goes with its last run, unless it changed just now (another run of the task starting).
      const taskDir = path.dirname(f.dir);
      const taskDirIdle =
        Date.now() - ((await fsp.stat(taskDir).catch(() => undefined))?.mtimeMs ?? Date.now()) > 60_000;
      try {
        await fsp.rm(f.dir, { recursive: true, force: true });
      } catch (err) {
        this.opts.log?.('disk sweep: could not remove a run folder', { dir: f.dir, error: String(err) });
        continue;
      }
      out.removed++;
      out.bytes += f.bytes;
      out.totalBytes -= f.bytes;
      if (taskDirIdle) await fsp.rmdir(taskDir).catch(() => undefined); // fails unless empty
    }
    return out;
  }

  /**
   * `<taskId>/<deviceId>` of the traversals an attempt journal or a process record on this data
   * folder names (run folders carry no deployment name, workflow ids may).
   */
  private async activeRuns(): Promise<Set<string>> {
    const ids = [
      ...(await readJournals(this.opts.dataDir)).flatMap((j) => j.attempts.map((a) => a.workflowId)),
      ...(await recordedRuns(dataFolders(this.opts.dataDir).pids)).map((r) => r.workflowId),
    ];
    const runs = new Set<string>();
    for (const id of ids) {
      const parsed = typeof id === 'string' ? parseWorkflowId(id) : undefined;
      if (parsed?.kind === 'traversal') runs.add(runKey(parsed.taskId!, parsed.deviceId));
    }
    return runs;
  }
}

function runKey(taskId: string, deviceId: string): string {
  return `${taskId}/${deviceId}`;
}

/** Every `<taskId>/<deviceId>` folder under the runs folder, with its size and last change. */
async function listRunFolders(runsDir: string): Promise<RunFolder[]> {
  const out: RunFolder[] = [];
  for (const task of await fsp.readdir(runsDir, { withFileTypes: true }).catch(() => [])) {
    if (!task.isDirectory()) continue;
    const taskDir = path.join(runsDir, task.name);
    for (const device of await fsp.readdir(taskDir, { withFileTypes: true }).catch(() => [])) {
      if (!device.isDirectory()) continue;
      const dir = path.join(taskDir, device.name);
      const facts = await folderFacts(dir);
      if (facts) out.push({ dir, run: runKey(task.name, device.name), ...facts });
    }
  }
  return out;
}

/** Total size of the files in a folder tree and the newest mtime in it (the folders' own included). */
async function folderFacts(dir: string): Promise<{ bytes: number; changedMs: number } | undefined> {
  const st = await fsp.lstat(dir).catch(() => undefined);
  if (!st) return undefined;
  let bytes = 0;
  let changedMs = st.mtimeMs;
  for (const e of await fsp.readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) {
      const sub = await folderFacts(p);
      if (sub) {
        bytes += sub.bytes;
        changedMs = Math.max(changedMs, sub.changedMs);
      }
    } else {
      const fst = await fsp.lstat(p).catch(() => undefined);
      if (!fst) continue;
      bytes += fst.size;
      changedMs = Math.max(changedMs, fst.mtimeMs);
    }
  }
  return { bytes, changedMs };
}
