/**
 * One download of an APK from its origin into the cache, run while holding the URL's host lock.
 *
 * Resume: the part file and its metadata (URL, ETag) survive a crash or a cancelled download; the
 * next try hashes the bytes it has and asks for the rest with Range and If-Range. An origin that
 * answers 200 instead starts the part over; 416 drops it and starts over.
 *
 * Disk space: once the origin announced a length, a download first checks that the rest of it fits
 * on the disk while leaving a reserve (diskReserveBytes, at most 5% of the disk) for logs, reports
 * and other writers, counting what this process's other downloads still have to write. When it does
 * not fit, part files no download holds are removed, then unleased blobs are evicted (cap or not);
 * if it still does not fit, the download fails as InsufficientStorage (retryable) before writing a
 * byte. While streaming, the reserve is checked every few MiB, and ENOSPC becomes
 * InsufficientStorage too. Such a failure removes its part file: a part that holds a full disk is
 * not worth resuming. Other failures keep it for a Range resume; the worker's disk sweep removes
 * parts nobody resumed.
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream, promises as fsp } from 'node:fs';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { request, type Dispatcher } from 'undici';
import { ApkDownloadError, ApkHashMismatchError, ApkTooLargeError, InsufficientStorageError } from '../contract/errors';
import type { Metrics } from '../metrics';
import { apkRequestError, apkStatusError } from '../net/http-errors';
import type { BlobStore, CacheLog, CachedApk } from './blob-store';

/** Live numbers of a download, read by the activity to heartbeat. */
export interface DownloadState {
  bytes: number;
  total?: number;
  phase: 'waiting-lock' | 'waiting-peer' | 'waiting-slot' | 'hashing-partial' | 'downloading' | 'done';
}

/** What a download needs from the cache that runs it; the same for all its downloads. */
export interface DownloadContext {
  store: BlobStore;
  /** Largest APK accepted, bytes. */
  maxBytes: number;
  /** HTTP dispatcher used for origin downloads (timeouts, redirects). */
  dispatcher: Dispatcher;
  metrics?: Metrics;
  log?: CacheLog;
  /** Bytes the cache's other downloads (all but this URL key) still have to write. */
  pendingBytes: (key: string) => number;
  /** Removes part files no download holds, except this URL key's. */
  removeIdleParts: (key: string) => Promise<unknown>;
  /** Told when a peer failed (a 404 means it no longer holds the APK). */
  peerFailed?: (peer: PeerSource, err: unknown) => Promise<void>;
}

/** A host of the farm that holds an APK: its name and a URL of the APK on its artifact server (signed). */
export interface PeerSource {
  host: string;
  url: string;
}

/** While streaming, free space is checked each time this many bytes more were written. */
const SPACE_CHECK_EVERY = 4 * 1024 * 1024;

/** What one download fetches, and the state and signal it shares with the callers waiting for it. */
export interface DownloadRequest {
  /** urlKey(url): names the part file and the lock. */
  key: string;
  url: string;
  /** sha256 the caller expects, checked before the blob is published. */
  expectedSha?: string;
  state: DownloadState;
  signal: AbortSignal;
}

/** The download of one URL: what it fetches, where it writes, and how far it got. */
export class OriginDownload {
  readonly key: string;
  readonly url: string;
  readonly expectedSha?: string;
  readonly state: DownloadState;
  readonly signal: AbortSignal;
  private readonly partPath: string;
  private readonly metaPath: string;
  private hash: Hash = createHash('sha256');
  /** Bytes already in the part file when the response started. */
  private offset = 0;
  /** ETag the part file's bytes came with, sent as If-Range when resuming. */
  private etag?: string;
  /** The peer host the current response comes from (undefined: the origin). */
  private peer?: PeerSource;
  /** Bytes this download took from peer hosts, and from the origin. */
  private peerBytes = 0;
  private originBytes = 0;
  /** The last peer host that sent bytes. */
  private lastPeer?: string;
  /** Bytes the part file held when this download began (before any source of it). */
  private startOffset?: number;

  constructor(
    private readonly ctx: DownloadContext,
    { key, url, expectedSha, state, signal }: DownloadRequest,
  ) {
    this.key = key;
    this.url = url;
    this.expectedSha = expectedSha;
    this.state = state;
    this.signal = signal;
    this.partPath = ctx.store.partPath(key);
    this.metaPath = `${this.partPath}.json`;
  }

  /**
   * Asks hosts of the farm that hold the APK (when its sha256 is known), in order. A peer that fails,
   * even mid-transfer, hands over to the next, which carries on from the bytes already in the part
   * file with Range. Undefined when none delivered it; `onFailed` hears of each that failed.
   */
  async tryPeers(peers: PeerSource[], onFailed?: (peer: PeerSource) => void): Promise<CachedApk | undefined> {
    for (const peer of this.expectedSha ? peers : []) {
      try {
        return await this.fetchFrom(peer);
      } catch (err) {
        // Local trouble (disk, size cap) or a cancel ends the download whatever the source.
        if (this.signal.aborted || err instanceof InsufficientStorageError || isNoSpace(err)) throw err;
        if (err instanceof ApkTooLargeError) throw err;
        this.ctx.log?.('APK from a peer host failed; trying the next source', {
          url: this.url,
          peer: peer.host,
          bytesSoFar: await this.partSize(),
          error: (err as Error).message,
        });
        onFailed?.(peer);
        await this.ctx.peerFailed?.(peer, err).catch(() => undefined);
      }
    }
    return undefined;
  }

  /** The APK from its origin, from wherever the part file got to. */
  fromOrigin(): Promise<CachedApk> {
    return this.fetchFrom(undefined);
  }

  /** One source: a peer's artifact server, or the origin when `peer` is undefined. */
  private async fetchFrom(peer: PeerSource | undefined): Promise<CachedApk> {
    const { url, signal, partPath } = this;
    const from = peer?.url ?? url;
    // Every source starts from what the part file holds, so nothing is carried over in memory.
    this.hash = createHash('sha256');
    this.offset = 0;
    this.etag = undefined;
    this.peer = peer;
    const previous = await readJson<{ url: string; etag?: string }>(this.metaPath);
    const partSize = await this.partSize();
    if (previous?.url === url && partSize > 0 && partSize <= this.ctx.maxBytes) {
      this.state.phase = 'hashing-partial';
      await hashFile(partPath, this.hash, signal);
      this.offset = partSize;
      this.etag = previous.etag;
    } else if (partSize > 0) {
      await fsp.rm(partPath, { force: true });
    }
    this.startOffset ??= this.offset;

    const headers: Record<string, string> = { 'user-agent': 'device-traversal' };
    if (this.offset > 0) {
      headers.range = `bytes=${this.offset}-`;
      // The ETag is the origin's; a peer is checked by the sha256 at the end instead.
      if (this.etag && !peer) headers['if-range'] = this.etag;
    }
    if (peer) this.ctx.metrics?.peerDownloads.inc();
    else this.ctx.metrics?.originDownloads.inc();
    this.ctx.log?.(peer ? 'downloading APK from a peer host' : 'downloading APK', {
      url,
      resumeFrom: this.offset,
      ...(peer ? { peer: peer.host } : {}),
    });
    let res: Dispatcher.ResponseData;
    try {
      res = await request(from, { method: 'GET', headers, signal, dispatcher: this.ctx.dispatcher });
    } catch (err) {
      throw apkRequestError(peer ? `${url} (from peer ${peer.host})` : url, err, signal);
    }

    if (this.offset > 0 && res.statusCode === 200) {
      // The source ignored the range (or the file changed): start over with this response.
      this.hash.destroy?.();
      this.hash = createHash('sha256');
      this.offset = 0;
      this.etag = undefined;
      return this.accept(res, true);
    }
    if (res.statusCode === 416 && this.offset > 0) {
      discard(res);
      await fsp.rm(partPath, { force: true });
      return this.fetchFrom(peer);
    }
    if (res.statusCode !== 200 && res.statusCode !== 206) {
      discard(res);
      throw apkStatusError(peer ? `${url} (from peer ${peer.host})` : url, res.statusCode);
    }
    return this.accept(res, false);
  }

  /**
   * A full disk ends a download for good: its part file goes (a retry resuming it would only hit the
   * full disk again, and it holds space others need) and a raw ENOSPC becomes InsufficientStorage
   * with the numbers. Other errors pass through unchanged.
   */
  async failure(err: unknown): Promise<unknown> {
    if (!(err instanceof InsufficientStorageError) && !isNoSpace(err)) return err;
    let failure = err;
    if (!(err instanceof InsufficientStorageError)) {
      const { free, reserve } = await this.ctx.store.diskSpace().catch(() => ({ free: 0, reserve: 0 }));
      const { total, bytes } = this.state;
      failure = new InsufficientStorageError(this.url, {
        path: this.ctx.store.dir,
        neededBytes: total !== undefined ? total - bytes : undefined,
        freeBytes: free,
        reserveBytes: reserve,
        writtenBytes: bytes,
      });
    }
    await this.dropPart().catch(() => undefined);
    this.ctx.log?.('APK download stopped: disk full', {
      url: this.url,
      ...(failure as InsufficientStorageError).details,
    });
    return failure;
  }

  /**
   * Takes a 200 or 206 response: checks its announced length against the size cap and the disk,
   * records the part's metadata, and streams the body. `rewrite`: the part starts over, so its old
   * bytes are free room.
   */
  private async accept(res: Dispatcher.ResponseData, rewrite: boolean): Promise<CachedApk> {
    const { url, offset } = this;
    const length = Number(res.headers['content-length'] ?? NaN);
    const total = Number.isFinite(length) ? offset + length : undefined;
    if (total !== undefined && total > this.ctx.maxBytes) {
      discard(res);
      throw new ApkTooLargeError(url, this.ctx.maxBytes, total);
    }
    if (rewrite) await fsp.rm(this.partPath, { force: true });
    if (total !== undefined) await this.makeRoom(res, total - offset);
    // Only the origin's ETag is kept: a peer's names the same bytes differently.
    const etag = !this.peer && typeof res.headers.etag === 'string' ? res.headers.etag : undefined;
    await fsp.writeFile(this.metaPath, JSON.stringify({ url, etag: this.peer ? undefined : (etag ?? this.etag) }));
    return this.stream(res, total);
  }

  /**
   * Makes sure `bytes` more fit on the cache's disk above the reserve, counting what this process's
   * other downloads still have to write; when they do not, removes part files nobody holds, then
   * evicts unleased blobs. Throws InsufficientStorage (dropping the response) when even that is not enough.
   */
  private async makeRoom(res: Dispatcher.ResponseData, bytes: number): Promise<void> {
    const { store } = this.ctx;
    const pending = this.ctx.pendingBytes(this.key);
    const fits = async () => {
      const { free, reserve } = await store.diskSpace();
      return { ok: free - pending - reserve >= bytes, free, reserve };
    };
    try {
      let room = await fits();
      if (room.ok) return;
      this.ctx.log?.('making room on the APK cache disk', {
        url: this.url,
        neededBytes: bytes,
        freeBytes: room.free,
        reserveBytes: room.reserve,
        pendingBytes: pending,
      });
      await this.ctx.removeIdleParts(this.key);
      room = await fits();
      if (room.ok) return;
      await store.evict([], { freeBytes: bytes + pending + room.reserve });
      room = await fits();
      if (room.ok) return;
      throw new InsufficientStorageError(this.url, {
        path: store.dir,
        neededBytes: bytes,
        freeBytes: Math.max(0, room.free - pending),
        reserveBytes: room.reserve,
      });
    } catch (err) {
      discard(res);
      throw err;
    }
  }

  /** Writes the body after the part's first `offset` bytes, hashing and metering it, then publishes the blob. */
  private async stream(res: Dispatcher.ResponseData, total: number | undefined): Promise<CachedApk> {
    const { url, state, hash, offset, signal, partPath } = this;
    const { maxBytes: max, metrics, store } = this.ctx;
    const fromPeer = this.peer !== undefined;
    const peerHost = this.peer?.host;
    const counted = (n: number) => {
      if (fromPeer) {
        this.peerBytes += n;
        this.lastPeer = peerHost;
      } else this.originBytes += n;
      (fromPeer ? metrics?.peerBytes : metrics?.bytesDownloaded)?.inc({}, n);
    };
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
          counted(chunk.length);
          cb(null, chunk);
        };
        if (written + chunk.length < nextSpaceCheck) return pass();
        // Others may be filling the disk too (or the length was unknown): never write into the reserve.
        nextSpaceCheck = written + chunk.length + SPACE_CHECK_EVERY;
        store.diskSpace().then(({ free, reserve }) => {
          if (free - chunk.length >= reserve) return pass();
          const neededBytes = total !== undefined ? total - written : undefined;
          const facts = { path: store.dir, neededBytes, freeBytes: free, reserveBytes: reserve, writtenBytes: written };
          cb(new InsufficientStorageError(url, facts));
        }, cb);
      },
    });
    try {
      await pipeline(res.body, meter, createWriteStream(partPath, { flags: offset > 0 ? 'a' : 'w' }), { signal });
    } catch (err) {
      if (err instanceof ApkTooLargeError) {
        await this.dropPart();
        throw err;
      }
      // failure() turns ENOSPC into InsufficientStorage and removes the part.
      if (err instanceof InsufficientStorageError || isNoSpace(err)) throw err;
      throw apkRequestError(url, err, signal);
    }
    if (total !== undefined && written !== total) {
      throw new ApkDownloadError(url, `connection closed after ${written} of ${total} bytes`);
    }
    const sha256 = hash.digest('hex');
    if (this.expectedSha && sha256 !== this.expectedSha) {
      await this.dropPart();
      throw new ApkHashMismatchError(url, this.expectedSha, sha256);
    }
    const blob = await store.publish(this.key, url, partPath, sha256, written);
    state.phase = 'done';
    // Counted over every source of this download: where the bytes came from, and where it began.
    const began = this.startOffset ?? offset;
    const wholeFromPeers = this.peerBytes > 0 && this.originBytes === 0 ? this.lastPeer : undefined;
    this.ctx.log?.('APK cached', {
      url,
      sha256,
      size: written,
      resumedFrom: began || undefined,
      ...(this.peerBytes ? { peerBytes: this.peerBytes, originBytes: this.originBytes } : {}),
    });
    return {
      sha256,
      size: written,
      path: blob,
      fromCache: false,
      downloadedBytes: written - began,
      ...(began > 0 ? { resumedFrom: began } : {}),
      ...(this.peerBytes ? { peerBytes: this.peerBytes } : {}),
      ...(wholeFromPeers ? { fromPeer: wholeFromPeers } : {}),
    };
  }

  /** Bytes in the part file (0 when there is none). */
  partSize(): Promise<number> {
    return fsp.stat(this.partPath).then(
      (s) => s.size,
      () => 0,
    );
  }

  /** Removes the part file and its metadata: what they hold is not worth resuming. */
  private async dropPart(): Promise<void> {
    await fsp.rm(this.partPath, { force: true });
    await fsp.rm(this.metaPath, { force: true });
  }
}

/** True for a write that failed because the disk (or the user's quota) is full. */
function isNoSpace(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
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

/** Drops a response body without an unhandled 'error' event from the destroyed stream. */
function discard(res: Dispatcher.ResponseData): void {
  res.body.on('error', () => undefined);
  res.body.destroy();
}
