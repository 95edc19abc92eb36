/**
 * Content-addressed APK cache on local disk: one origin download per APK per host.
 *
 * Layout under the cache folder:
 *   blobs/<sha256>.apk      completed, verified APKs (the only files the artifact server serves)
 *   index/<urlKey>.json     which blob a URL resolved to
 *   tmp/<urlKey>.part       a download in progress (kept across crashes so a retry can resume)
 *   locks/<urlKey>.lock     the process downloading that URL (cross-process single flight)
 *
 * This file is the one door: ApkCache joins the callers of a URL in this process onto one flight
 * and the processes on the host through the URL's lock file. The parts behind it:
 *   blob-store.ts       the folder: blobs, index, leases, eviction, disk space, orphaned parts
 *   host-lock.ts        a lock file shared across processes, with stale-owner judgement
 *   origin-download.ts  one resumable download: Range resume, hashing, space checks, status mapping
 *   slots.ts            the cap on downloads running at once
 */
import type { Dispatcher } from 'undici';
import { ApkHashMismatchError } from '../contract/errors';
import type { Metrics } from '../metrics';
import { UrlRefusedError } from '../net/url-policy';
import { BlobStore, urlKey, type BlobStoreOptions, type CachedApk } from './blob-store';
import { breakLock, createLock, staleLock } from './host-lock';
import { OriginDownload, type DownloadContext, type DownloadState, type PeerSource } from './origin-download';
import { Slots } from './slots';

export { urlKey, type CachedApk, type DownloadState, type PeerSource };

/**
 * The other hosts of a farm that hold APKs (src/worker/peer-directory.ts keeps them in Redis), so a
 * host fetches an APK inside the farm and the origin sends it once per farm.
 */
export interface ApkPeers {
  /** Hosts other than this one that say they hold the blob, in the order to try them. */
  find(sha256: string): Promise<PeerSource[]>;
  /** Says this host holds the blob now. */
  announce(sha256: string): Promise<void>;
  /** Says this host no longer holds these blobs (evicted). */
  withdraw(sha256s: string[]): Promise<void>;
  /** A peer that failed; a 404 means it no longer holds the blob. */
  failed(peer: PeerSource, sha256: string, err: unknown): Promise<void>;
  /**
   * Claims the one origin download of a blob for the farm: a claim (kept alive until released)
   * when no other host holds one, else false; the others wait for the holder to announce it.
   */
  claim(sha256: string): Promise<{ release(): Promise<void> } | false>;
}

/** Options of the cache (the folder's own options are in BlobStoreOptions). */
export interface ApkCacheOptions extends BlobStoreOptions {
  /** Largest APK accepted, bytes. */
  maxBytes: number;
  /** HTTP dispatcher used for origin downloads (timeouts, redirects). */
  dispatcher: Dispatcher;
  metrics?: Metrics;
  /** Poll interval while another process holds the download lock, ms. */
  lockPollMs?: number;
  /** Origin downloads this cache runs at once; 0 or unset means no cap. */
  maxConcurrentDownloads?: number;
  /** The farm's other hosts, asked before the origin (downloads whose sha256 is known). */
  peers?: ApkPeers;
  /** How often a host waiting for another host's origin download looks for it, ms (default 500). */
  peerPollMs?: number;
}

/** Longest wait for the peer directory (Redis) before a download goes on without it, ms. */
const PEER_CALL_TIMEOUT_MS = 3000;

/** A download of one URL in this process, shared by every caller waiting for it. */
interface Flight {
  promise: Promise<CachedApk>;
  state: DownloadState;
  controller: AbortController;
  waiters: number;
}

/** Disk cache of APKs with in-process and cross-process single flight. */
export class ApkCache {
  private readonly flights = new Map<string, Flight>();
  private readonly store: BlobStore;
  private readonly slots: Slots;
  private readonly downloads: DownloadContext;

  constructor(private readonly opts: ApkCacheOptions) {
    // Every eviction (the cap, a full disk, the sweeper) withdraws the blobs from the farm's directory.
    this.store = new BlobStore({
      ...opts,
      onEvicted: (evicted) => void this.peerCall(() => opts.peers?.withdraw(evicted)),
    });
    this.slots = new Slots(opts.maxConcurrentDownloads ?? 0);
    this.downloads = {
      store: this.store,
      maxBytes: opts.maxBytes,
      dispatcher: opts.dispatcher,
      metrics: opts.metrics,
      log: opts.log,
      pendingBytes: (key) => this.pendingBytes(key),
      removeIdleParts: (key) => this.removeOrphanParts(0, key),
      peerFailed: async (peer, err) => {
        const sha = /\/apk\/([a-f0-9]{64})\.apk/.exec(peer.url)?.[1];
        if (sha) await this.peerCall(() => this.opts.peers?.failed(peer, sha, err));
      },
    };
  }

  /** Path of the blob for a sha256; throws for anything that is not a sha256 (no path tricks). */
  blobPath(sha256: string): string {
    return this.store.blobPath(sha256);
  }

  /**
   * Marks a blob as used now and leases it for leaseMs (its mtime moves into the future).
   * Returns false when the blob does not exist (never downloaded, or evicted).
   */
  touch(sha256: string): Promise<boolean> {
    return this.store.touch(sha256);
  }

  /**
   * Removes least recently used blobs until the folder is within maxCacheBytes and, with
   * `freeBytes`, until its disk has that many bytes free; never one that is leased, served by this
   * process, or listed in `keep`. Returns the evicted sha256s. Runs one at a time per cache.
   */
  evict(keep: string[] = [], opts: { freeBytes?: number } = {}): Promise<string[]> {
    return this.store.evict(keep, opts);
  }

  /**
   * A call to the peer directory, which never fails or holds up a download: the origin is always
   * there. An error, or no answer within PEER_CALL_TIMEOUT_MS, is logged and answers undefined.
   */
  private async peerCall<T>(fn: () => Promise<T> | undefined): Promise<T | undefined> {
    let timer: NodeJS.Timeout | undefined;
    try {
      const call = fn();
      if (!call) return undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer in ${PEER_CALL_TIMEOUT_MS} ms`)), PEER_CALL_TIMEOUT_MS);
      });
      call.catch(() => undefined);
      return await Promise.race([call, late]);
    } catch (err) {
      this.opts.log?.('the peer directory failed; going on without it', { error: (err as Error).message });
      return undefined;
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  /**
   * Removes part files (and their metadata) of downloads that nobody runs: none in this process and
   * no live lock holder, and not written for `olderThanMs` (0: whatever their age).
   */
  removeOrphanParts(olderThanMs: number, exceptKey?: string): Promise<{ files: number; bytes: number }> {
    return this.store.removeOrphanParts(olderThanMs, (key) => key === exceptKey || this.flights.has(key));
  }

  /** Size of a completed blob, or undefined when absent or the name is not a sha256. */
  stat(sha256: string): Promise<number | undefined> {
    return this.store.stat(sha256);
  }

  /** Number of callers currently using a blob (so eviction can skip it). */
  usersOf(sha256: string): number {
    return this.store.usersOf(sha256);
  }

  /** Marks a blob as in use until the returned function is called. */
  retain(sha256: string): () => void {
    return this.store.retain(sha256);
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
    await this.store.init();
    let protocol: string;
    try {
      protocol = new URL(url).protocol;
    } catch {
      throw new UrlRefusedError(`APK URL ${JSON.stringify(url).slice(0, 100)}`, 'not a valid URL');
    }
    if (protocol !== 'http:' && protocol !== 'https:')
      throw new UrlRefusedError(`APK URL ${url}`, 'only http and https are allowed');
    const key = urlKey(url);
    const hit = await this.store.lookup(key, url, expectedSha);
    if (hit) {
      this.opts.metrics?.cacheHits.inc();
      // Not waited for: a slow Redis must not slow a hit.
      void this.peerCall(() => this.opts.peers?.announce(hit.sha256));
      return hit;
    }
    let flight = this.flights.get(key);
    if (!flight || flight.controller.signal.aborted) {
      // A flight whose waiters all left is still winding down (it may hold the lock); joining it
      // would only inherit its cancellation, so start a new one once it has settled.
      const previous = flight ? flight.promise.catch(() => undefined) : Promise.resolve();
      const controller = new AbortController();
      const state: DownloadState = { bytes: 0, phase: 'waiting-lock' };
      const download = new OriginDownload(this.downloads, { key, url, expectedSha, state, signal: controller.signal });
      const created: Flight = {
        promise: previous
          .then(() => this.fetchLocked(download))
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
      if (flight.waiters === 0 && flight.state.phase !== 'done')
        flight.controller.abort(new Error('all waiters cancelled'));
    }
  }

  /** Takes the host-wide lock for a URL, then downloads unless another process finished meanwhile. */
  private async fetchLocked(download: OriginDownload): Promise<CachedApk> {
    const { key, url, expectedSha, state, signal } = download;
    const lockPath = this.store.lockPath(key);
    for (;;) {
      signal.throwIfAborted();
      const lock = await createLock(lockPath, url);
      if (lock) {
        try {
          if (lock.writeError !== undefined) throw lock.writeError;
          const done = await this.store.lookup(key, url, expectedSha);
          if (done) return done;
          const fetched = await this.fetchInFarm(download);
          await this.peerCall(() => this.opts.peers?.announce(fetched.sha256));
          return fetched;
        } catch (err) {
          throw await download.failure(err);
        } finally {
          await lock.release();
        }
      }
      // Someone else holds the lock: wait for it, or break it when its owner is gone.
      const stale = await staleLock(lockPath);
      if (stale) {
        this.opts.log?.('breaking stale APK download lock', { lockPath });
        await breakLock(lockPath, stale);
        continue;
      }
      state.phase = 'waiting-lock';
      state.bytes = await download.partSize();
      await sleep(this.opts.lockPollMs ?? 200, signal);
      const done = await this.store.lookup(key, url, expectedSha);
      if (done) return done;
    }
  }

  /**
   * The download, from the farm's hosts when one holds the APK, else from the origin by the one host
   * that claimed it; the other hosts wait for that one to announce it, then fetch from it. Holders
   * that fail are not asked again until another host's claim is seen (the claimer may be one of them,
   * without the APK until now); once none is left, the origin is claimed too.
   * Without a peer directory or a known sha256: the origin.
   */
  private async fetchInFarm(download: OriginDownload): Promise<CachedApk> {
    const { peers } = this.opts;
    const sha = download.expectedSha;
    if (!peers || !sha) return this.runInSlot(download, () => download.fromOrigin());
    const failed = new Set<string>();
    let waitingSince: number | undefined;
    for (;;) {
      download.signal.throwIfAborted();
      // The same APK may have arrived under another URL meanwhile (this host's other downloads).
      const here = await this.store.lookup(download.key, download.url, sha);
      if (here) return here;
      const holders = ((await this.peerCall(() => peers.find(sha))) ?? []).filter((h) => !failed.has(h.host));
      if (holders.length) {
        const got = await this.runInSlot(download, () => download.tryPeers(holders, (p) => failed.add(p.host)));
        if (got) return got;
        continue;
      }
      const claim = await this.peerCall(() => peers.claim(sha));
      // A claim, or a directory that does not answer (then the origin, as without one).
      if (claim !== false) {
        // A host that held the claim a moment ago announced the APK before it let go of the claim:
        // look once more now that the claim is ours, or we would fetch from the origin a second time.
        const since = claim
          ? ((await this.peerCall(() => peers.find(sha))) ?? []).filter((h) => !failed.has(h.host))
          : [];
        if (since.length) {
          await this.peerCall(() => claim!.release());
          continue;
        }
        try {
          const got = await this.runInSlot(download, () => download.fromOrigin());
          // Announced before the claim goes, so a waiting host finds this one rather than the origin.
          await this.peerCall(() => peers.announce(got.sha256));
          return got;
        } finally {
          if (claim) await this.peerCall(() => claim.release());
        }
      }
      // The host downloading it will announce itself, perhaps one that failed us before it had the APK.
      failed.clear();
      if (waitingSince === undefined) {
        waitingSince = Date.now();
        this.opts.log?.('another host is downloading this APK from the origin; waiting to fetch it from that host', {
          url: download.url,
          sha256: sha,
        });
      }
      download.state.phase = 'waiting-peer';
      await sleep(this.opts.peerPollMs ?? 500, download.signal);
    }
  }

  /** Runs one source of a download in one of the download slots. */
  private async runInSlot<T>(download: OriginDownload, fetch: () => Promise<T>): Promise<T> {
    download.state.phase = 'waiting-slot';
    const release = await this.slots.acquire(download.signal);
    try {
      return await fetch();
    } finally {
      release();
    }
  }

  /** Bytes this process's downloads other than `key` still have to write. */
  private pendingBytes(key: string): number {
    let pending = 0;
    for (const [k, f] of this.flights) {
      const { phase, total, bytes: done } = f.state;
      if (k !== key && phase === 'downloading' && total !== undefined) pending += Math.max(0, total - done);
    }
    return pending;
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
