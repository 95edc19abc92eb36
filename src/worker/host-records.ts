/**
 * The farm's phone hosts in Redis: each worker with host routing records its host (the base URL of
 * its artifact server and when it was last seen) when it starts and once a minute while it runs. A
 * record stays when the worker stops: the host is still part of the farm, and its phones' runs wait
 * for it. locateDevice routes only to hosts that have a record, so an agent naming a machine where no
 * worker ever ran does not strand its runs; peer fetch skips holders not seen for a while.
 */
import type Redis from 'ioredis';
import { farmHostsKey } from '../contract/redis-keys';

/** How often a running worker renews its host's record, ms. */
export const HOST_RECORD_EVERY_MS = 60_000;
/** A host whose record is older than this is taken for down by peer fetch, ms. */
export const HOST_STALE_MS = 5 * HOST_RECORD_EVERY_MS;

/** One host's record. */
export interface HostRecord {
  artifactUrl: string;
  lastSeen: number;
}

/** Reads every host's record (malformed ones are left out). */
export async function readHostRecords(redis: Redis, prefix = ''): Promise<Map<string, HostRecord>> {
  const raw = await redis.hgetall(farmHostsKey(prefix));
  const out = new Map<string, HostRecord>();
  for (const [host, text] of Object.entries(raw)) {
    try {
      const r = JSON.parse(text) as Partial<HostRecord>;
      if (typeof r.lastSeen === 'number')
        out.set(host, { artifactUrl: String(r.artifactUrl ?? ''), lastSeen: r.lastSeen });
    } catch {
      // a record some other writer mangled: as if absent
    }
  }
  return out;
}

/** Keeps this worker's host record fresh while it runs. */
export class HostRecordKeeper {
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly opts: {
      redis: Redis;
      prefix?: string;
      hostId: string;
      artifactUrl: () => string;
      log?: (msg: string, meta?: Record<string, unknown>) => void;
    },
  ) {}

  /**
   * Writes the record now (so locateDevice knows the host before this worker takes work), then once a
   * minute. A Redis that does not answer now is retried on the interval.
   */
  async start(): Promise<void> {
    const renew = () =>
      this.write().catch((err: unknown) =>
        this.opts.log?.('could not write the host record to Redis', { error: (err as Error).message }),
      );
    await renew();
    this.timer = setInterval(() => void renew(), HOST_RECORD_EVERY_MS);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private async write(): Promise<void> {
    const record: HostRecord = { artifactUrl: this.opts.artifactUrl(), lastSeen: Date.now() };
    await this.opts.redis.hset(farmHostsKey(this.opts.prefix), this.opts.hostId, JSON.stringify(record));
  }
}
