/**
 * The cache folder on disk: verified blobs, the index from URL to blob, part files and lock files
 * (layout in index.ts), with leases, eviction and the disk-space figures downloads plan with.
 *
 * A blob's mtime is its lease. Using a blob (resolving it, serving it) sets its mtime to
 * now + leaseMs, so every process sharing the folder sees it as in use until then. Eviction removes
 * the least recently used blobs, skipping leased ones (mtime in the future) and those this process
 * is serving (retain()). The cap is soft: when everything is in use the folder stays over it until
 * leases run out.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { tryLock } from './host-lock';

/** Log function the cache reports through. */
export type CacheLog = (msg: string, meta?: Record<string, unknown>) => void;

/** Options of the folder and its space. */
export interface BlobStoreOptions {
  /** Cache folder (created if missing). */
  dir: string;
  /** Size cap of all completed blobs, bytes; unset means no cap. */
  maxCacheBytes?: number;
  /** How long a resolved or served blob is protected from eviction, ms (default 1 h). */
  leaseMs?: number;
  /** Free space downloads leave on the cache's disk, bytes (default 64 MiB; at most 5% of the disk counts). */
  diskReserveBytes?: number;
  log?: CacheLog;
  /** Told of the blobs each eviction removed (the farm's peer directory withdraws them). */
  onEvicted?: (sha256s: string[]) => void;
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
  /** Of downloadedBytes, those that came from peer hosts of the farm rather than the origin. */
  peerBytes?: number;
  /** When every byte this download fetched came from peer hosts: the (last) one they came from. */
  fromPeer?: string;
}

const SHA_RE = /^[a-f0-9]{64}$/;
const KEY_RE = /^[a-f0-9]{40}$/;
/** Default free space kept on the cache's disk, bytes. */
const DEFAULT_DISK_RESERVE = 64 * 1024 * 1024;
/** Largest share of the disk's size the reserve takes, so a small disk still takes downloads. */
const MAX_RESERVE_SHARE = 0.05;

/** Stable file-name key of a URL. */
export function urlKey(url: string): string {
  return createHash('sha256').update(url).digest('hex').slice(0, 40);
}

/** The files of one cache folder. */
export class BlobStore {
  private readonly inUse = new Map<string, number>();
  private ready?: Promise<void>;
  private evicting: Promise<unknown> = Promise.resolve();

  constructor(private readonly opts: BlobStoreOptions) {}

  /** The cache folder. */
  get dir(): string {
    return this.opts.dir;
  }

  /** Creates the folder's subfolders once. */
  init(): Promise<void> {
    this.ready ??= (async () => {
      for (const sub of ['blobs', 'index', 'tmp', 'locks'])
        await fsp.mkdir(path.join(this.opts.dir, sub), { recursive: true });
    })();
    return this.ready;
  }

  /** Path of the blob for a sha256; throws for anything that is not a sha256 (no path tricks). */
  blobPath(sha256: string): string {
    if (!SHA_RE.test(sha256)) throw new Error(`not a sha256: ${JSON.stringify(sha256).slice(0, 80)}`);
    return path.join(this.opts.dir, 'blobs', `${sha256}.apk`);
  }

  /** Path of the part file a download of this URL key writes. */
  partPath(key: string): string {
    return path.join(this.opts.dir, 'tmp', `${key}.part`);
  }

  /** Path of the host-wide lock of this URL key. */
  lockPath(key: string): string {
    return path.resolve(this.opts.dir, 'locks', `${key}.lock`);
  }

  private indexPath(key: string): string {
    return path.join(this.opts.dir, 'index', `${key}.json`);
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

  /** Number of callers currently using a blob (so eviction can skip it). */
  usersOf(sha256: string): number {
    return this.inUse.get(sha256) ?? 0;
  }

  /**
   * The blob a URL already resolved to (or, with an expected sha256, that blob whatever URL brought
   * it), leased anew; undefined when there is none or it no longer matches.
   */
  async lookup(key: string, url: string, expectedSha?: string): Promise<CachedApk | undefined> {
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

  /**
   * Turns a verified part file into the blob of `sha256`, records which blob the URL resolved to,
   * leases it, and evicts others if the folder went over its cap.
   */
  async publish(key: string, url: string, partPath: string, sha256: string, size: number): Promise<string> {
    const blob = this.blobPath(sha256);
    await fsp.rename(partPath, blob); // atomic: the artifact server never sees a partial blob
    await fsp.rm(`${partPath}.json`, { force: true });
    const tmpIndex = `${this.indexPath(key)}.${process.pid}.tmp`;
    await fsp.writeFile(tmpIndex, JSON.stringify({ url, sha256, size, at: new Date().toISOString() }));
    await fsp.rename(tmpIndex, this.indexPath(key));
    await this.touch(sha256);
    await this.evict([sha256]).catch((err: unknown) =>
      this.opts.log?.('APK cache eviction failed', { error: String(err) }),
    );
    return blob;
  }

  /**
   * Removes least recently used blobs until the folder is within maxCacheBytes and, with
   * `freeBytes`, until its disk has that many bytes free; never one that is leased, served by this
   * process, or listed in `keep`. Returns the evicted sha256s. Runs one at a time per store.
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
    if (evicted.length) this.opts.onEvicted?.(evicted);
    if (evicted.length || overCap()) {
      const wanted = freeBytes !== undefined ? { wantedFreeBytes: freeBytes } : {};
      this.opts.log?.('APK cache eviction', {
        evicted,
        totalBytes: total,
        capBytes: cap,
        overCap: overCap(),
        ...wanted,
      });
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
   * Removes part files (and their metadata) that no download holds: none `running` in this
   * process, no live lock holder, and not written for `olderThanMs` (0: whatever their age). Each
   * one is removed while holding its URL's lock, so a download never resumes a file being removed.
   */
  async removeOrphanParts(
    olderThanMs: number,
    running: (key: string) => boolean,
  ): Promise<{ files: number; bytes: number }> {
    await this.init();
    const tmp = path.join(this.opts.dir, 'tmp');
    const names = await fsp.readdir(tmp).catch(() => [] as string[]);
    const keys = new Set(names.map((n) => n.replace(/\.part(\.json)?$/, '')).filter((k) => KEY_RE.test(k)));
    const removed = { files: 0, bytes: 0 };
    for (const key of keys) {
      if (running(key)) continue;
      const files = [this.partPath(key), `${this.partPath(key)}.json`];
      const idle = async () => {
        const stats = await Promise.all(files.map((f) => fsp.stat(f).catch(() => undefined)));
        const newest = Math.max(...stats.map((st) => st?.mtimeMs ?? 0));
        return newest > 0 && Date.now() - newest >= olderThanMs ? stats : undefined;
      };
      if (!(await idle())) continue;
      const release = await tryLock(this.lockPath(key), 'removing an orphaned part file');
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
}
