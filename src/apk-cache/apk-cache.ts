/**
 * Content-addressed APK cache on local disk: one origin download per APK per host.
 *
 * Layout under the cache folder:
 *   blobs/<sha256>.apk      completed, verified APKs (the only files the artifact server serves)
 *   index/<urlKey>.json     which blob a URL resolved to
 *   tmp/<urlKey>.part       a download in progress (kept across crashes so a retry can resume)
 *   locks/<urlKey>.lock     the process downloading that URL (cross-process single flight)
 *
 * Size cap and eviction: a blob's mtime is its lease. Using a blob (resolving it, serving it) sets
 * its mtime to now + leaseMs, so every process sharing the folder sees it as in use until then.
 * After a download pushes the folder over its cap, the least recently used blobs are removed,
 * skipping leased ones (mtime in the future) and those this process is serving (retain()). The cap
 * is soft: when everything is in use the folder stays over it until leases run out.
 *
 * Disk space: once the origin announced a length, a download first checks that the rest of it fits
 * on the disk while leaving a reserve (diskReserveBytes, at most 5% of the disk) for logs, reports
 * and other writers, counting what this process's other downloads still have to write. When it does
 * not fit, part files no download holds are removed, then unleased blobs are evicted (cap or not);
 * if it still does not fit, the download fails as InsufficientStorage (retryable) before writing a
 * byte. While streaming, the reserve is checked every few MiB, and ENOSPC becomes
 * InsufficientStorage too. Such a failure removes its part file: a part that holds a full disk is
 * not worth resuming. Other failures keep it for a Range resume; removeOrphanParts() (run by the
 * worker's disk sweep) removes parts nobody resumed.
 */
import { createHash, randomUUID, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream, promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { request, type Dispatcher } from 'undici';
import {
  ApkDownloadError,
  ApkFetchRejectedError,
  ApkHashMismatchError,
  ApkNotFoundError,
  ApkTooLargeError,
  InsufficientStorageError,
  TraversalError,
} from '../contract/errors';
import type { Metrics } from '../metrics';
import { MAX_REDIRECTS, refusedFor, UrlRefusedError } from '../net/url-policy';

/** Options of the cache. */
export interface ApkCacheOptions {
  /** Cache folder (created if missing). */
  dir: string;
  /** Largest APK accepted, bytes. */
  maxBytes: number;
  /** HTTP dispatcher used for origin downloads (timeouts, redirects). */
  dispatcher: Dispatcher;
  metrics?: Metrics;
  /** Poll interval while another process holds the download lock, ms. */
  lockPollMs?: number;
  /** Size cap of all completed blobs, bytes; unset means no cap. */
  maxCacheBytes?: number;
  /** How long a resolved or served blob is protected from eviction, ms (default 1 h). */
  leaseMs?: number;
  /** Origin downloads this cache runs at once; 0 or unset means no cap. */
  maxConcurrentDownloads?: number;
  /** Free space downloads leave on the cache's disk, bytes (default 64 MiB; at most 5% of the disk counts). */
  diskReserveBytes?: number;
  log?: (msg: string, meta?: Record<string, unknown>) => void;
}

/** A completed cache entry. */
export interface CachedApk {
  sha256: string;
  size: number;
  path: string;
  /** True when no origin bytes were fetched for this call. */
  fromCache: boolean;
  /** Origin bytes fetched by this call (0 on a hit; less than size after a resume). */
  downloadedBytes: number;
  /** Offset the download resumed from, when it did. */
  resumedFrom?: number;
}

/** Live numbers of a download, read by the activity to heartbeat. */
export interface DownloadState {
  bytes: number;
  total?: number;
  phase: 'waiting-lock' | 'waiting-slot' | 'hashing-partial' | 'downloading' | 'done';
}

interface Flight {
  promise: Promise<CachedApk>;
  state: DownloadState;
  controller: AbortController;
  waiters: number;
}

const SHA_RE = /^[a-f0-9]{64}$/;
/** How often the lock holder touches its lock file, ms. */
const LOCK_REFRESH_MS = 15_000;
/** A lock file untouched for this long is abandoned whatever it says (owner on a gone host, reused pid), ms. */
const LOCK_STALE_MS = 120_000;
/** Lock files this process holds right now, across all cache instances (they share one pid). */
const heldLocks = new Set<string>();
/** Default free space kept on the cache's disk, bytes. */
const DEFAULT_DISK_RESERVE = 64 * 1024 * 1024;
/** Largest share of the disk's size the reserve takes, so a small disk still takes downloads. */
const MAX_RESERVE_SHARE = 0.05;
/** While streaming, free space is checked each time this many bytes more were written. */
const SPACE_CHECK_EVERY = 4 * 1024 * 1024;
const KEY_RE = /^[a-f0-9]{40}$/;

/** Disk cache of APKs with in-process and cross-process single flight. */
export class ApkCache {
  private readonly flights = new Map<string, Flight>();
  private readonly inUse = new Map<string, number>();
  private readonly slots: Slots;
  private ready?: Promise<void>;
  private evicting: Promise<unknown> = Promise.resolve();

  constructor(private readonly opts: ApkCacheOptions) {
    this.slots = new Slots(opts.maxConcurrentDownloads ?? 0);
  }

  /** Path of the blob for a sha256; throws for anything that is not a sha256 (no path tricks). */
  blobPath(sha256: string): string {
    if (!SHA_RE.test(sha256)) throw new Error(`not a sha256: ${JSON.stringify(sha256).slice(0, 80)}`);
    return path.join(this.opts.dir, 'blobs', `${sha256}.apk`);
  }

  /**
   * Marks a blob as used now and leases it for leaseMs (its mtime moves into the future).
   * Returns false when the blob does not exist (never downloaded, or evicted).
   */
  async touch(sha256: string): Promise<boolean> {
    if (!SHA_RE.test(sha256)) return false;
    const until = new Date(Date.now() + (this.opts.leaseMs ?? 3_600_000));
    try {
      await fsp.utimes(this.blobPath(sha256), new Date(), until);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Removes least recently used blobs until the folder is within maxCacheBytes and, with
   * `freeBytes`, until its disk has that many bytes free; never one that is leased, served by this
   * process, or listed in `keep`. Returns the evicted sha256s. Runs one at a time per cache.
   */
  evict(keep: string[] = [], opts: { freeBytes?: number } = {}): Promise<string[]> {
    const run = this.evicting.then(() => this.evictNow(new Set(keep), opts.freeBytes));
    this.evicting = run.catch(() => undefined);
    return run;
  }

  private async evictNow(keep: Set<string>, freeBytes?: number): Promise<string[]> {
    const cap = this.opts.maxCacheBytes;
    if (!cap && freeBytes === undefined) return [];
    const dir = path.join(this.opts.dir, 'blobs');
    const names = await fsp.readdir(dir).catch(() => [] as string[]);
    const blobs: { sha: string; size: number; mtimeMs: number }[] = [];
    for (const name of names) {
      const sha = name.slice(0, -4);
      if (!name.endsWith('.apk') || !SHA_RE.test(sha)) continue;
      const st = await fsp.stat(path.join(dir, name)).catch(() => undefined);
      if (st) blobs.push({ sha, size: st.size, mtimeMs: st.mtimeMs });
    }
    let total = blobs.reduce((n, b) => n + b.size, 0);
    const overCap = () => !!cap && total > cap;
    const short = async () => freeBytes !== undefined && (await this.diskSpace()).free < freeBytes;
    const evicted: string[] = [];
    for (const b of blobs.sort((x, y) => x.mtimeMs - y.mtimeMs)) {
      if (!overCap() && !(await short())) break;
      if (keep.has(b.sha) || this.usersOf(b.sha) > 0) continue;
      // Look again right before removing: another process may have leased it meanwhile.
      const st = await fsp.stat(this.blobPath(b.sha)).catch(() => undefined);
      if (!st || st.mtimeMs > Date.now() || this.usersOf(b.sha) > 0) continue;
      await fsp.rm(this.blobPath(b.sha), { force: true });
      total -= b.size;
      evicted.push(b.sha);
    }
    if (evicted.length || overCap()) {
      const wanted = freeBytes !== undefined ? { wantedFreeBytes: freeBytes } : {};
      this.opts.log?.('APK cache eviction', { evicted, totalBytes: total, capBytes: cap, overCap: overCap(), ...wanted });
    }
    return evicted;
  }

  /** Bytes free for this process on the cache's disk, and the reserve downloads leave there. */
  async diskSpace(): Promise<{ free: number; reserve: number }> {
    await this.init();
    const st = await fsp.statfs(this.opts.dir);
    const share = Math.floor(st.blocks * st.bsize * MAX_RESERVE_SHARE);
    const reserve = Math.min(this.opts.diskReserveBytes ?? DEFAULT_DISK_RESERVE, share);
    return { free: st.bavail * st.bsize, reserve };
  }

  /**
   * Removes part files (and their metadata) of downloads that nobody runs: none in this process and
   * no live lock holder, and not written for `olderThanMs` (0: whatever their age). Each one is
   * removed while holding its URL's lock, so a download never resumes a file being removed.
   */
  async removeOrphanParts(olderThanMs: number, exceptKey?: string): Promise<{ files: number; bytes: number }> {
    await this.init();
    const tmp = path.join(this.opts.dir, 'tmp');
    const names = await fsp.readdir(tmp).catch(() => [] as string[]);
    const keys = new Set(names.map((n) => n.replace(/\.part(\.json)?$/, '')).filter((k) => KEY_RE.test(k)));
    const removed = { files: 0, bytes: 0 };
    for (const key of keys) {
      if (key === exceptKey || this.flights.has(key)) continue;
      const files = [path.join(tmp, `${key}.part`), path.join(tmp, `${key}.part.json`)];
      const idle = async () => {
        const stats = await Promise.all(files.map((f) => fsp.stat(f).catch(() => undefined)));
        const newest = Math.max(...stats.map((st) => st?.mtimeMs ?? 0));
        return newest > 0 && Date.now() - newest >= olderThanMs ? stats : undefined;
      };
      if (!(await idle())) continue;
      const release = await this.tryLock(key, 'removing an orphaned part file');
      if (!release) continue; // a download holds it
      try {
        const stats = await idle(); // again: a download may have run between the first look and the lock
        if (!stats) continue;
        for (const [i, f] of files.entries()) {
          if (!stats[i]) continue;
          await fsp.rm(f, { force: true });
          removed.files++;
          removed.bytes += stats[i].size;
        }
      } finally {
        await release();
      }
    }
    if (removed.files) this.opts.log?.('removed orphaned APK part files', { ...removed, olderThanMs });
    return removed;
  }

  /**
   * Takes the lock of a URL key for a short job when nobody holds it (breaking an abandoned one);
   * resolves to the function that releases it, or undefined when it is held.
   */
  private async tryLock(key: string, purpose: string): Promise<(() => Promise<void>) | undefined> {
    let lock = await this.createLock(key, purpose);
    if (!lock) {
      const lockPath = this.lockPath(key);
      const stale = await this.staleLock(lockPath);
      if (!stale) return undefined;
      await breakLock(lockPath, stale);
      lock = await this.createLock(key, purpose);
    }
    return lock?.release;
  }

  private lockPath(key: string): string {
    return path.resolve(this.opts.dir, 'locks', `${key}.lock`);
  }

  /**
   * Creates the host-wide lock file of a URL key, or resolves to undefined when it exists. Its mtime
   * is refreshed until release: the heartbeat other hosts judge it by. On a full disk even the
   * owner's line may not fit (`writeError`); the lock still excludes others while it exists, and
   * release removes it all the same.
   */
  private async createLock(key: string, purpose: string): Promise<{ release: () => Promise<void>; writeError?: unknown } | undefined> {
    const lockPath = this.lockPath(key);
    const handle = await fsp.open(lockPath, 'wx').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'EEXIST') return undefined;
      throw err;
    });
    if (!handle) return undefined;
    heldLocks.add(lockPath);
    const body = JSON.stringify({ pid: process.pid, host: os.hostname(), url: purpose, at: new Date().toISOString(), nonce: randomUUID() });
    const refresh = setInterval(() => {
      const now = new Date();
      fsp.utimes(lockPath, now, now).catch(() => undefined);
    }, LOCK_REFRESH_MS);
    refresh.unref();
    let writeError: unknown;
    await handle.writeFile(body).catch((err: unknown) => (writeError = err ?? new Error('lock write failed')));
    await handle.close().catch(() => undefined);
    const release = async () => {
      clearInterval(refresh);
      heldLocks.delete(lockPath);
      // Remove only our own lock; if it was broken and taken over meanwhile, the new owner keeps it.
      const current = await fsp.readFile(lockPath, 'utf8').catch(() => undefined);
      if (stillOurs(current, body, writeError === undefined)) await fsp.rm(lockPath, { force: true });
    };
    return { release, ...(writeError !== undefined ? { writeError } : {}) };
  }

  /** Size of a completed blob, or undefined when absent or the name is not a sha256. */
  async stat(sha256: string): Promise<number | undefined> {
    if (!SHA_RE.test(sha256)) return undefined;
    try {
      return (await fsp.stat(this.blobPath(sha256))).size;
    } catch {
      return undefined;
    }
  }

  /** Number of callers currently using a blob (so eviction can skip it). */
  usersOf(sha256: string): number {
    return this.inUse.get(sha256) ?? 0;
  }

  /**
   * Returns the cached APK for a URL, downloading it at most once per host.
   * `signal` aborts this caller's wait; the shared download stops only when every waiter left.
   */
  async resolve(
    url: string,
    expectedSha?: string,
    opts: { signal?: AbortSignal; onState?: (s: DownloadState) => void } = {},
  ): Promise<CachedApk> {
    await this.init();
    let protocol: string;
    try {
      protocol = new URL(url).protocol;
    } catch {
      throw new UrlRefusedError(`APK URL ${JSON.stringify(url).slice(0, 100)}`, 'not a valid URL');
    }
    if (protocol !== 'http:' && protocol !== 'https:') throw new UrlRefusedError(`APK URL ${url}`, 'only http and https are allowed');
    const key = urlKey(url);
    const hit = await this.lookup(key, url, expectedSha);
    if (hit) {
      this.opts.metrics?.cacheHits.inc();
      return hit;
    }
    let flight = this.flights.get(key);
    if (!flight || flight.controller.signal.aborted) {
      // A flight whose waiters all left is still winding down (it may hold the lock); joining it
      // would only inherit its cancellation, so start a new one once it has settled.
      const previous = flight ? flight.promise.catch(() => undefined) : Promise.resolve();
      const controller = new AbortController();
      const state: DownloadState = { bytes: 0, phase: 'waiting-lock' };
      const created: Flight = {
        promise: previous
          .then(() => this.fetchLocked(key, url, expectedSha, state, controller.signal))
          .finally(() => {
            if (this.flights.get(key) === created) this.flights.delete(key);
          }),
        state,
        controller,
        waiters: 0,
      };
      flight = created;
      this.flights.set(key, flight);
    } else {
      this.opts.metrics?.cacheHits.inc();
    }
    return this.wait(flight, expectedSha, url, opts);
  }

  /** Marks a blob as in use until the returned function is called. */
  retain(sha256: string): () => void {
    this.inUse.set(sha256, (this.inUse.get(sha256) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.inUse.get(sha256) ?? 1) - 1;
      if (n <= 0) this.inUse.delete(sha256);
      else this.inUse.set(sha256, n);
    };
  }

  private init(): Promise<void> {
    this.ready ??= (async () => {
      for (const sub of ['blobs', 'index', 'tmp', 'locks']) await fsp.mkdir(path.join(this.opts.dir, sub), { recursive: true });
    })();
    return this.ready;
  }

  private async wait(
    flight: Flight,
    expectedSha: string | undefined,
    url: string,
    opts: { signal?: AbortSignal; onState?: (s: DownloadState) => void },
  ): Promise<CachedApk> {
    flight.waiters++;
    const ticker = opts.onState ? setInterval(() => opts.onState!(flight.state), 1000) : undefined;
    let onAbort: (() => void) | undefined;
    try {
      const aborted = new Promise<never>((_, reject) => {
        if (!opts.signal) return;
        onAbort = () => reject(opts.signal!.reason ?? new Error('aborted'));
        if (opts.signal.aborted) onAbort();
        else opts.signal.addEventListener('abort', onAbort, { once: true });
      });
      aborted.catch(() => undefined);
      const result = await Promise.race([flight.promise, aborted]);
      // A flight started by another caller may have had no expected hash; check ours.
      if (expectedSha && result.sha256 !== expectedSha) throw new ApkHashMismatchError(url, expectedSha, result.sha256);
      opts.onState?.({ bytes: result.size, total: result.size, phase: 'done' });
      return result;
    } finally {
      if (ticker) clearInterval(ticker);
      if (onAbort) opts.signal?.removeEventListener('abort', onAbort);
      flight.waiters--;
      if (flight.waiters === 0 && flight.state.phase !== 'done') flight.controller.abort(new Error('all waiters cancelled'));
    }
  }

  private async lookup(key: string, url: string, expectedSha?: string): Promise<CachedApk | undefined> {
    if (expectedSha) {
      const size = await this.stat(expectedSha);
      if (size !== undefined && (await this.touch(expectedSha))) {
        return { sha256: expectedSha, size, path: this.blobPath(expectedSha), fromCache: true, downloadedBytes: 0 };
      }
    }
    try {
      const entry = JSON.parse(await fsp.readFile(this.indexPath(key), 'utf8')) as { url: string; sha256: string };
      if (entry.url !== url || !SHA_RE.test(entry.sha256)) return undefined;
      const size = await this.stat(entry.sha256);
      if (size === undefined) return undefined;
      if (expectedSha && expectedSha !== entry.sha256) return undefined; // the origin may have changed; fetch again
      if (!(await this.touch(entry.sha256))) return undefined; // evicted just now
      return { sha256: entry.sha256, size, path: this.blobPath(entry.sha256), fromCache: true, downloadedBytes: 0 };
    } catch {
      return undefined;
    }
  }

  private indexPath(key: string): string {
    return path.join(this.opts.dir, 'index', `${key}.json`);
  }

  /** Takes the host-wide lock for a URL, then downloads unless another process finished meanwhile. */
  private async fetchLocked(
    key: string,
    url: string,
    expectedSha: string | undefined,
    state: DownloadState,
    signal: AbortSignal,
  ): Promise<CachedApk> {
    const lockPath = this.lockPath(key);
    const partPath = path.join(this.opts.dir, 'tmp', `${key}.part`);
    for (;;) {
      signal.throwIfAborted();
      const lock = await this.createLock(key, url);
      if (lock) {
        try {
          if (lock.writeError !== undefined) throw lock.writeError;
          const done = await this.lookup(key, url, expectedSha);
          if (done) return done;
          state.phase = 'waiting-slot';
          const release = await this.slots.acquire(signal);
          try {
            return await this.download(key, url, expectedSha, partPath, state, signal);
          } finally {
            release();
          }
        } catch (err) {
          throw await this.noSpaceFailure(err, url, partPath, state);
        } finally {
          await lock.release();
        }
      }
      // Someone else holds the lock: wait for it, or break it when its owner is gone.
      const stale = await this.staleLock(lockPath);
      if (stale) {
        this.opts.log?.('breaking stale APK download lock', { lockPath });
        await breakLock(lockPath, stale);
        continue;
      }
      state.phase = 'waiting-lock';
      state.bytes = await fsp.stat(partPath).then((s) => s.size, () => 0);
      await sleep(this.opts.lockPollMs ?? 200, signal);
      const done = await this.lookup(key, url, expectedSha);
      if (done) return done;
    }
  }

  /** The lock file as judged abandoned (content and inode, for breakLock), or undefined while its owner may live. */
  private async staleLock(lockPath: string): Promise<StaleLock | undefined> {
    let judged: StaleLock;
    let mtimeMs: number;
    try {
      const [raw, st] = await Promise.all([fsp.readFile(lockPath, 'utf8'), fsp.stat(lockPath)]);
      judged = { raw, ino: st.ino };
      mtimeMs = st.mtimeMs;
    } catch {
      return undefined; // released meanwhile; the next round tries to take it
    }
    if (Date.now() - mtimeMs > LOCK_STALE_MS) return judged; // the holder stopped refreshing it
    let owner: { pid?: unknown; host?: unknown };
    try {
      owner = JSON.parse(judged.raw) as typeof owner;
    } catch {
      return undefined; // its owner is between creating and writing it; only age breaks it
    }
    if (owner.host && owner.host !== os.hostname()) return undefined; // cannot probe another host's pid; age decides
    if (typeof owner.pid !== 'number') return judged;
    // Our own pid on a lock we do not hold: left by an earlier process that had the same pid
    // (common in containers, where the worker is often pid 1 after every restart).
    if (owner.pid === process.pid) return heldLocks.has(lockPath) ? undefined : judged;
    try {
      process.kill(owner.pid, 0);
      return undefined;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'EPERM' ? undefined : judged; // EPERM: alive, another user's
    }
  }

  /** Streams the URL into the part file (resuming it when possible), verifies and publishes the blob. */
  private async download(
    key: string,
    url: string,
    expectedSha: string | undefined,
    partPath: string,
    state: DownloadState,
    signal: AbortSignal,
  ): Promise<CachedApk> {
    const metaPath = `${partPath}.json`;
    const hash = createHash('sha256');
    let offset = 0;
    let etag: string | undefined;
    const previous = await readJson<{ url: string; etag?: string }>(metaPath);
    const partSize = await fsp.stat(partPath).then((s) => s.size, () => 0);
    if (previous?.url === url && partSize > 0 && partSize <= this.opts.maxBytes) {
      state.phase = 'hashing-partial';
      await hashFile(partPath, hash, signal);
      offset = partSize;
      etag = previous.etag;
    } else if (partSize > 0) {
      await fsp.rm(partPath, { force: true });
    }

    const headers: Record<string, string> = { 'user-agent': 'device-traversal' };
    if (offset > 0) {
      headers.range = `bytes=${offset}-`;
      if (etag) headers['if-range'] = etag;
    }
    this.opts.metrics?.originDownloads.inc();
    this.opts.log?.('downloading APK', { url, resumeFrom: offset });
    let res: Dispatcher.ResponseData;
    try {
      res = await request(url, { method: 'GET', headers, signal, dispatcher: this.opts.dispatcher });
    } catch (err) {
      throw classifyNetworkError(url, err, signal);
    }

    if (offset > 0 && res.statusCode === 200) {
      // The origin ignored the range (or the file changed): start over.
      offset = 0;
      hash.destroy?.();
      return this.restart(key, url, expectedSha, partPath, state, signal, res);
    }
    if (res.statusCode === 416 && offset > 0) {
      discard(res);
      await fsp.rm(partPath, { force: true });
      return this.download(key, url, expectedSha, partPath, state, signal);
    }
    checkStatus(url, res);

    const remaining = Number(res.headers['content-length'] ?? NaN);
    const total = Number.isFinite(remaining) ? offset + remaining : undefined;
    if (total !== undefined && total > this.opts.maxBytes) {
      discard(res);
      throw new ApkTooLargeError(url, this.opts.maxBytes, total);
    }
    if (total !== undefined) await this.makeRoom(key, url, res, total - offset);
    const newEtag = typeof res.headers.etag === 'string' ? res.headers.etag : undefined;
    await fsp.writeFile(metaPath, JSON.stringify({ url, etag: newEtag ?? etag }));
    return this.streamToBlob(key, url, expectedSha, partPath, state, signal, res, hash, offset, total);
  }

  /**
   * Makes sure `bytes` more fit on the cache's disk above the reserve, counting what this process's
   * other downloads still have to write; when they do not, removes part files nobody holds, then
   * evicts unleased blobs. Throws InsufficientStorage (dropping the response) when even that is not enough.
   */
  private async makeRoom(key: string, url: string, res: Dispatcher.ResponseData, bytes: number): Promise<void> {
    let pending = 0;
    for (const [k, f] of this.flights) {
      const { phase, total, bytes: done } = f.state;
      if (k !== key && phase === 'downloading' && total !== undefined) pending += Math.max(0, total - done);
    }
    const fits = async () => {
      const { free, reserve } = await this.diskSpace();
      return { ok: free - pending - reserve >= bytes, free, reserve };
    };
    try {
      let room = await fits();
      if (room.ok) return;
      this.opts.log?.('making room on the APK cache disk', {
        url,
        neededBytes: bytes,
        freeBytes: room.free,
        reserveBytes: room.reserve,
        pendingBytes: pending,
      });
      await this.removeOrphanParts(0, key);
      room = await fits();
      if (room.ok) return;
      await this.evict([], { freeBytes: bytes + pending + room.reserve });
      room = await fits();
      if (room.ok) return;
      throw new InsufficientStorageError(url, {
        path: this.opts.dir,
        neededBytes: bytes,
        freeBytes: Math.max(0, room.free - pending),
        reserveBytes: room.reserve,
      });
    } catch (err) {
      discard(res);
      throw err;
    }
  }

  /**
   * A full disk ends a download for good: its part file goes (a retry resuming it would only hit the
   * full disk again, and it holds space others need) and a raw ENOSPC becomes InsufficientStorage
   * with the numbers. Other errors pass through unchanged.
   */
  private async noSpaceFailure(err: unknown, url: string, partPath: string, state: DownloadState): Promise<unknown> {
    if (!(err instanceof InsufficientStorageError) && !isNoSpace(err)) return err;
    let failure = err;
    if (!(err instanceof InsufficientStorageError)) {
      const { free, reserve } = await this.diskSpace().catch(() => ({ free: 0, reserve: 0 }));
      failure = new InsufficientStorageError(url, {
        path: this.opts.dir,
        neededBytes: state.total !== undefined ? state.total - state.bytes : undefined,
        freeBytes: free,
        reserveBytes: reserve,
        writtenBytes: state.bytes,
      });
    }
    await fsp.rm(partPath, { force: true }).catch(() => undefined);
    await fsp.rm(`${partPath}.json`, { force: true }).catch(() => undefined);
    this.opts.log?.('APK download stopped: disk full', { url, ...(failure as InsufficientStorageError).details });
    return failure;
  }

  private async restart(
    key: string,
    url: string,
    expectedSha: string | undefined,
    partPath: string,
    state: DownloadState,
    signal: AbortSignal,
    res: Dispatcher.ResponseData,
  ): Promise<CachedApk> {
    const length = Number(res.headers['content-length'] ?? NaN);
    const total = Number.isFinite(length) ? length : undefined;
    if (total !== undefined && total > this.opts.maxBytes) {
      discard(res);
      throw new ApkTooLargeError(url, this.opts.maxBytes, total);
    }
    // The part is rewritten from the start: its old bytes are free room.
    await fsp.rm(partPath, { force: true });
    if (total !== undefined) await this.makeRoom(key, url, res, total);
    const etag = typeof res.headers.etag === 'string' ? res.headers.etag : undefined;
    await fsp.writeFile(`${partPath}.json`, JSON.stringify({ url, etag }));
    return this.streamToBlob(key, url, expectedSha, partPath, state, signal, res, createHash('sha256'), 0, total);
  }

  private async streamToBlob(
    key: string,
    url: string,
    expectedSha: string | undefined,
    partPath: string,
    state: DownloadState,
    signal: AbortSignal,
    res: Dispatcher.ResponseData,
    hash: Hash,
    offset: number,
    total: number | undefined,
  ): Promise<CachedApk> {
    const max = this.opts.maxBytes;
    const metrics = this.opts.metrics;
    const dir = this.opts.dir;
    const space = () => this.diskSpace();
    state.phase = 'downloading';
    state.bytes = offset;
    state.total = total;
    let written = offset;
    let nextSpaceCheck = offset + SPACE_CHECK_EVERY;
    const meter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        const pass = () => {
          written += chunk.length;
          if (written > max) {
            cb(new ApkTooLargeError(url, max, written));
            return;
          }
          hash.update(chunk);
          state.bytes = written;
          metrics?.bytesDownloaded.inc({}, chunk.length);
          cb(null, chunk);
        };
        if (written + chunk.length < nextSpaceCheck) return pass();
        // Others may be filling the disk too (or the length was unknown): never write into the reserve.
        nextSpaceCheck = written + chunk.length + SPACE_CHECK_EVERY;
        space().then(({ free, reserve }) => {
          if (free - chunk.length >= reserve) return pass();
          const neededBytes = total !== undefined ? total - written : undefined;
          const facts = { path: dir, neededBytes, freeBytes: free, reserveBytes: reserve, writtenBytes: written };
          cb(new InsufficientStorageError(url, facts));
        }, cb);
      },
    });
    try {
      await pipeline(res.body, meter, createWriteStream(partPath, { flags: offset > 0 ? 'a' : 'w' }), { signal });
    } catch (err) {
      if (err instanceof ApkTooLargeError) {
        await fsp.rm(partPath, { force: true });
        await fsp.rm(`${partPath}.json`, { force: true });
        throw err;
      }
      // fetchLocked turns ENOSPC into InsufficientStorage and removes the part.
      if (err instanceof InsufficientStorageError || isNoSpace(err)) throw err;
      throw classifyNetworkError(url, err, signal);
    }
    if (total !== undefined && written !== total) {
      throw new ApkDownloadError(url, `connection closed after ${written} of ${total} bytes`);
    }
    const sha256 = hash.digest('hex');
    if (expectedSha && sha256 !== expectedSha) {
      await fsp.rm(partPath, { force: true });
      await fsp.rm(`${partPath}.json`, { force: true });
      throw new ApkHashMismatchError(url, expectedSha, sha256);
    }
    const blob = this.blobPath(sha256);
    await fsp.rename(partPath, blob); // atomic: the artifact server never sees a partial blob
    await fsp.rm(`${partPath}.json`, { force: true });
    const tmpIndex = `${this.indexPath(key)}.${process.pid}.tmp`;
    await fsp.writeFile(tmpIndex, JSON.stringify({ url, sha256, size: written, at: new Date().toISOString() }));
    await fsp.rename(tmpIndex, this.indexPath(key));
    await this.touch(sha256);
    await this.evict([sha256]).catch((err: unknown) => this.opts.log?.('APK cache eviction failed', { error: String(err) }));
    state.phase = 'done';
    this.opts.log?.('APK cached', { url, sha256, size: written, resumedFrom: offset || undefined });
    return {
      sha256,
      size: written,
      path: blob,
      fromCache: false,
      downloadedBytes: written - offset,
      ...(offset > 0 ? { resumedFrom: offset } : {}),
    };
  }
}

interface StaleLock {
  raw: string;
  ino: number;
}

/**
 * Removes a lock judged abandoned. Two waiters may judge the same lock at once; the one that
 * renames second could move the first one's fresh lock aside, so it checks and puts that back.
 */
async function breakLock(lockPath: string, judged: StaleLock): Promise<void> {
  const aside = `${lockPath}.${process.pid}.${randomUUID()}.stale`;
  try {
    await fsp.rename(lockPath, aside);
  } catch {
    return; // already gone
  }
  try {
    const [raw, st] = await Promise.all([fsp.readFile(aside, 'utf8'), fsp.stat(aside)]);
    if (raw !== judged.raw || st.ino !== judged.ino) await fsp.link(aside, lockPath).catch(() => undefined);
  } finally {
    await fsp.rm(aside, { force: true });
  }
}

/** Stable file-name key of a URL. */
export function urlKey(url: string): string {
  return createHash('sha256').update(url).digest('hex').slice(0, 40);
}

function checkStatus(url: string, res: Dispatcher.ResponseData): void {
  const status = res.statusCode;
  if (status === 200 || status === 206) return;
  discard(res);
  // The redirect interceptor hands back the last 3xx once its limit is reached.
  if (status >= 300 && status < 400) throw new UrlRefusedError(`APK URL ${url}`, `more than ${MAX_REDIRECTS} redirects (last HTTP ${status})`);
  if (status === 404 || status === 410) throw new ApkNotFoundError(url, status);
  if (status === 408 || status === 429 || status >= 500) throw new ApkDownloadError(url, `HTTP ${status}`);
  throw new ApkFetchRejectedError(url, status);
}

/** True when a lock file still holds what we wrote, or the start of it when the disk was too full to write it all. */
function stillOurs(current: string | undefined, body: string, wrote: boolean): boolean {
  return current === body || (!wrote && current !== undefined && body.startsWith(current));
}

/** True for a write that failed because the disk (or the user's quota) is full. */
function isNoSpace(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

/** Maps undici and socket failures to a retryable download error, keeping project errors. */
function classifyNetworkError(url: string, err: unknown, signal: AbortSignal): unknown {
  if (err instanceof UrlRefusedError) return refusedFor(`APK URL ${url}`, err);
  if (err instanceof TraversalError) return err;
  if (signal.aborted) return signal.reason ?? err;
  const e = err as { code?: string; message?: string };
  return new ApkDownloadError(url, e.code ? `${e.code}: ${e.message}` : String(e.message ?? err));
}

async function hashFile(file: string, hash: Hash, signal: AbortSignal): Promise<void> {
  const hasher = new Transform({
    transform(chunk: Buffer, _e, cb) {
      hash.update(chunk);
      cb();
    },
  });
  await pipeline(createReadStream(file), hasher, { signal });
}

async function readJson<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await fsp.readFile(file, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(t);
      reject(signal.reason);
    };
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Drops a response body without an unhandled 'error' event from the destroyed stream. */
function discard(res: Dispatcher.ResponseData): void {
  res.body.on('error', () => undefined);
  res.body.destroy();
}

/** A counting semaphore whose waiters can be aborted. */
class Slots {
  private active = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(private readonly max: number) {}

  /** Waits for a free slot; resolves to the function that frees it (safe to call twice). */
  async acquire(signal: AbortSignal): Promise<() => void> {
    signal.throwIfAborted();
    if (this.max <= 0) return () => undefined;
    if (this.active < this.max) {
      this.active++;
    } else {
      // A freed slot passes straight to the next waiter, so `active` does not change.
      await new Promise<void>((resolve, reject) => {
        const wake = () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        };
        const onAbort = () => {
          const i = this.waiting.indexOf(wake);
          if (i >= 0) this.waiting.splice(i, 1);
          reject(signal.reason);
        };
        this.waiting.push(wake);
        signal.addEventListener('abort', onAbort, { once: true });
      });
    }
    let freed = false;
    return () => {
      if (freed) return;
      freed = true;
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
    };
  }
}
