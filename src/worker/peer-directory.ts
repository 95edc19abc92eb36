/**
 * Which hosts of the farm hold which APK, in Redis: one hash per sha256, host → the base URL of
 * that host's artifact server. A host announces a blob when it has it (downloaded or found in its
 * cache) and withdraws it when evicted; a peer answering 404 is dropped by whoever met it. The
 * hashes expire when nobody announced their APK for a while, so hosts that left the farm fade out.
 *
 * A host that lacks an APK asks the listed hosts first, through URLs signed with the farm's shared
 * DT_ARTIFACT_TOKEN (the same signature an agent's install URL carries), and the origin last.
 */
import type Redis from 'ioredis';
import type { ApkPeers, PeerSource } from '../apk-cache';
import { ApkNotFoundError } from '../contract/errors';
import { randomUUID } from 'node:crypto';
import { apkFetchClaimKey, apkPeersKey } from '../contract/redis-keys';
import { artifactInstallUrl } from './artifact-server';
import { HOST_STALE_MS, readHostRecords } from './host-records';

/** Options of the directory. */
export interface PeerDirectoryOptions {
  redis: Redis;
  /** DT_REDIS_KEY_PREFIX. */
  prefix?: string;
  /** This host (DT_HOST_ID): never its own peer. */
  hostId: string;
  /** This host's artifact server as other hosts reach it; known once the server listens. */
  baseUrl: () => string;
  /** DT_ARTIFACT_TOKEN, shared by the farm's hosts; empty: unsigned URLs. */
  token: string;
  /** Life of a signed peer URL, ms. */
  urlTtlMs: number;
  /** How long an APK's entry outlives its last announcement, ms (default 7 days). */
  ttlMs?: number;
  /** An APK this host announced is not announced again for this long, ms (default 10 minutes). */
  reannounceMs?: number;
  /** Life of an origin-download claim that its host stops renewing (it died), ms (default 30 s). */
  claimTtlMs?: number;
}

/** Renews a claim only while it is still ours. */
const RENEW = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0`;
/** Releases a claim only while it is still ours. */
const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`;

/** The farm's APK holders in Redis. */
export class PeerDirectory implements ApkPeers {
  /** sha256 → when this host last announced it (bounded by the cache's own contents). */
  private readonly announced = new Map<string, number>();

  constructor(private readonly opts: PeerDirectoryOptions) {}

  private key(sha256: string): string {
    return apkPeersKey(sha256, this.opts.prefix);
  }

  async find(sha256: string): Promise<PeerSource[]> {
    const [holders, hosts] = await Promise.all([
      this.opts.redis.hgetall(this.key(sha256)),
      readHostRecords(this.opts.redis, this.opts.prefix),
    ]);
    // A holder whose host has not renewed its record for a while is down: not worth a connect timeout.
    const stale = (host: string) => {
      const r = hosts.get(host);
      return r !== undefined && Date.now() - r.lastSeen > HOST_STALE_MS;
    };
    const peers = Object.entries(holders)
      .filter(([host, base]) => host !== this.opts.hostId && /^https?:\/\//.test(base) && !stale(host))
      .map(([host, base]) => ({
        host,
        url: artifactInstallUrl(base, sha256, this.opts.token, this.opts.urlTtlMs),
      }));
    // Spread the farm's fetches over the holders rather than all on the first one.
    for (let i = peers.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [peers[i], peers[j]] = [peers[j]!, peers[i]!];
    }
    return peers;
  }

  async announce(sha256: string): Promise<void> {
    const last = this.announced.get(sha256);
    if (last !== undefined && Date.now() - last < (this.opts.reannounceMs ?? 10 * 60_000)) return;
    const base = this.opts.baseUrl();
    if (!base) return;
    await this.opts.redis
      .multi()
      .hset(this.key(sha256), this.opts.hostId, base)
      .pexpire(this.key(sha256), this.opts.ttlMs ?? 7 * 86_400_000)
      .exec();
    this.announced.set(sha256, Date.now());
  }

  async withdraw(sha256s: string[]): Promise<void> {
    for (const sha of sha256s) {
      this.announced.delete(sha);
      await this.opts.redis.hdel(this.key(sha), this.opts.hostId);
    }
  }

  async claim(sha256: string): Promise<{ release(): Promise<void> } | false> {
    const { redis, prefix, hostId } = this.opts;
    const key = apkFetchClaimKey(sha256, prefix);
    const ttl = this.opts.claimTtlMs ?? 30_000;
    const owner = `${hostId}:${process.pid}:${randomUUID().slice(0, 8)}`;
    if ((await redis.set(key, owner, 'PX', ttl, 'NX')) !== 'OK') return false;
    // Renewed while the download runs; a host that dies stops renewing, and another host claims it.
    const renew = setInterval(() => void redis.eval(RENEW, 1, key, owner, ttl).catch(() => undefined), ttl / 3);
    renew.unref();
    return {
      release: async () => {
        clearInterval(renew);
        await redis.eval(RELEASE, 1, key, owner);
      },
    };
  }

  async failed(peer: PeerSource, sha256: string, err: unknown): Promise<void> {
    // Only a definite "not here": a peer that is down or slow may come back with the APK.
    if (err instanceof ApkNotFoundError) await this.opts.redis.hdel(this.key(sha256), peer.host);
  }
}
