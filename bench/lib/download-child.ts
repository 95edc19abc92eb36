/**
 * One download client of the download scenario, run in its own process so clients do not share a
 * heap or an event loop. Prints one JSON line `{"bytes": n, "ms": t}`: bytes received and wall
 * time from request to the file complete (or the body drained).
 *
 * Usage: download-child.ts <mode> <url> <dir> [highWaterMark]
 * Modes: cache (ApkCache.resolve, what resolveApk runs), undici (body dropped), undici-hash
 * (+ sha256), undici-disk (+ write to a file), pipeline (replica of the cache's pipeline: meter with
 * sha256 → file; optional highWaterMark in bytes), coalesce (sha256 + 1 MiB writev batches, one
 * write in flight).
 */
import { createHash } from 'node:crypto';
import { createWriteStream, mkdirSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { request } from 'undici';
import { ApkCache } from '../../src/apk-cache';
import { UrlPolicy } from '../../src/net/url-policy';
import { createDispatcher } from '../../src/net/dispatcher';

const BATCH = 1024 * 1024;

type Measure = (url: string, dir: string, hwm?: number) => Promise<number>;

/** GET that fails on a non-200 answer. */
async function get(url: string, hwm?: number) {
  const res = await request(url, hwm ? { highWaterMark: hwm } : {});
  if (res.statusCode !== 200) {
    await res.body.dump();
    throw new Error(`GET ${url} answered ${res.statusCode}`);
  }
  return res;
}

const MODES: Record<string, Measure> = {
  async cache(url, dir) {
    // The worker's own dispatcher and URL policy, so the request path is the one resolveApk takes.
    const cache = new ApkCache({
      dir,
      maxBytes: Number.MAX_SAFE_INTEGER,
      dispatcher: createDispatcher(new UrlPolicy('127.0.0.1')),
    });
    return (await cache.resolve(url)).size;
  },
  async undici(url) {
    let n = 0;
    for await (const chunk of (await get(url)).body) n += (chunk as Buffer).length;
    return n;
  },
  async 'undici-hash'(url) {
    const hash = createHash('sha256');
    let n = 0;
    for await (const chunk of (await get(url)).body) {
      hash.update(chunk as Buffer);
      n += (chunk as Buffer).length;
    }
    hash.digest('hex');
    return n;
  },
  async 'undici-disk'(url, dir) {
    let n = 0;
    const meter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        n += chunk.length;
        cb(null, chunk);
      },
    });
    await pipeline((await get(url)).body, meter, createWriteStream(path.join(dir, 'out.apk')));
    return n;
  },
  async pipeline(url, dir, hwm) {
    const hash = createHash('sha256');
    let n = 0;
    const meter = new Transform({
      ...(hwm ? { highWaterMark: hwm } : {}),
      transform(chunk: Buffer, _enc, cb) {
        n += chunk.length;
        hash.update(chunk);
        cb(null, chunk);
      },
    });
    const file = createWriteStream(path.join(dir, 'out.apk.part'), hwm ? { highWaterMark: hwm } : {});
    await pipeline((await get(url, hwm)).body, meter, file);
    hash.digest('hex');
    await fsp.rename(path.join(dir, 'out.apk.part'), path.join(dir, 'out.apk'));
    return n;
  },
  async coalesce(url, dir) {
    const hash = createHash('sha256');
    const fh = await fsp.open(path.join(dir, 'out.apk'), 'w');
    let n = 0;
    let batch: Buffer[] = [];
    let batchBytes = 0;
    let writing: Promise<unknown> = Promise.resolve();
    try {
      for await (const chunk of (await get(url)).body) {
        const buf = chunk as Buffer;
        hash.update(buf);
        n += buf.length;
        batch.push(buf);
        batchBytes += buf.length;
        if (batchBytes >= BATCH) {
          // One write in flight: wait for the previous batch before handing over the next.
          await writing;
          writing = fh.writev(batch);
          batch = [];
          batchBytes = 0;
        }
      }
      await writing;
      if (batch.length) await fh.writev(batch);
    } finally {
      await fh.close();
    }
    hash.digest('hex');
    return n;
  },
};

async function main(): Promise<void> {
  const [mode = '', url, dir, hwmArg] = process.argv.slice(2);
  const measure = MODES[mode];
  if (!measure || !url || !dir)
    throw new Error(`usage: download-child.ts <${Object.keys(MODES).join('|')}> <url> <dir> [highWaterMark]`);
  mkdirSync(dir, { recursive: true });
  const t0 = performance.now();
  const bytes = await measure(url, dir, hwmArg ? Number(hwmArg) : undefined);
  const ms = performance.now() - t0;
  process.stdout.write(`${JSON.stringify({ mode, bytes, ms })}\n`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`download-child failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
