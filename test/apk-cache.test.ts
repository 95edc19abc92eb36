/**
 * APK cache and artifact server against real HTTP servers: the origin simulator, a tiny chunked
 * server for length-less responses, and child processes for cross-process single flight.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { request, type Dispatcher } from 'undici';
import { ApkCache, urlKey, type CachedApk, type DownloadState } from '../src/apk-cache';
import { ArtifactServer } from '../src/worker/artifact-server';
import { PROJECT_ROOT } from '../src/config';
import { Metrics } from '../src/metrics';
import { ApkOrigin, type ApkInfo } from '../sim/origin';
import { createDispatcher } from '../src/net/dispatcher';

const MiB = 1024 * 1024;
const APK_DIR = path.join(PROJECT_ROOT, '.tools', 'apks');

interface TestCache {
  cache: ApkCache;
  dir: string;
  metrics: Metrics;
}

interface CodedError {
  code: string;
  nonRetryable: boolean;
  message: string;
}

function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

async function sha256File(file: string): Promise<string> {
  return sha256(await fsp.readFile(file));
}

async function listDir(dir: string): Promise<string[]> {
  return fsp.readdir(dir).catch(() => []);
}

/** Matcher for assert.rejects: a project error with this code and retry flag. */
function coded(code: string, nonRetryable: boolean, check?: (err: CodedError) => void) {
  return (err: unknown): boolean => {
    const e = err as CodedError;
    assert.equal(e.code, code, `expected ${code}, got ${String(err)}`);
    assert.equal(e.nonRetryable, nonRetryable);
    check?.(e);
    return true;
  };
}

/** A pid that surely belongs to no running process: a child that has already exited. */
async function deadPid(): Promise<number> {
  const child = spawn('true');
  await new Promise((resolve) => child.once('exit', resolve));
  assert.ok(child.pid);
  return child.pid;
}

/** Where a cache in `dir` keeps the download lock of `url`. */
function lockPathOf(dir: string, url: string): string {
  return path.join(dir, 'locks', `${urlKey(url)}.lock`);
}

/**
 * Writes the download lock of `url` into the cache in `dir` as the process `pid` on `host` would hold
 * it; returns its path and what it says.
 */
async function plantLock(dir: string, url: string, pid: number, host = os.hostname()) {
  const lockPath = lockPathOf(dir, url);
  const holder = { pid, host, url, at: new Date().toISOString() };
  await fsp.mkdir(path.dirname(lockPath), { recursive: true });
  await fsp.writeFile(lockPath, JSON.stringify(holder));
  return { lockPath, holder };
}

/** Sends a request with a path exactly as given (undici would normalise `..` away). */
function rawGet(
  base: string,
  rawPath: string,
  method = 'GET',
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: hostname, port, path: rawPath, method, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

describe('APK cache', function () {
  this.timeout(30_000);
  let origin: ApkOrigin;
  let dispatcher: Dispatcher;
  let tmpRoot: string;
  let caches = 0;

  async function freshCache(opts: { maxBytes?: number; dir?: string } = {}): Promise<TestCache> {
    const dir = opts.dir ?? path.join(tmpRoot, `cache-${++caches}`);
    const metrics = new Metrics();
    const cache = new ApkCache({ dir, maxBytes: opts.maxBytes ?? 64 * MiB, dispatcher, metrics, lockPollMs: 20 });
    return { cache, dir, metrics };
  }

  before(async () => {
    tmpRoot = await fsp.mkdtemp(path.join(os.tmpdir(), 'dt-apk-cache-'));
    dispatcher = createDispatcher();
    origin = new ApkOrigin({ dir: APK_DIR });
    await origin.start();
  });

  after(async () => {
    await origin.close();
    await dispatcher.close();
    await fsp.rm(tmpRoot, { recursive: true, force: true });
  });

  afterEach(() => {
    origin.throttleBytesPerSec = undefined;
  });

  describe('single flight', () => {
    it('downloads a URL once when ten callers in one process ask for it at the same time', async () => {
      const apk = await origin.addApk('cache-shared.apk', 4 * MiB);
      const { cache, metrics } = await freshCache();
      const results = await Promise.all(
        Array.from({ length: 10 }, () => cache.resolve(origin.url('cache-shared.apk'))),
      );

      const stats = origin.stats('cache-shared.apk');
      assert.equal(stats.gets, 1);
      assert.equal(stats.bytesServed, apk.size);
      for (const r of results) {
        assert.equal(r.sha256, apk.sha256);
        assert.equal(r.size, apk.size);
      }
      assert.equal(await sha256File(results[0]!.path), apk.sha256);
      assert.equal(metrics.originDownloads.get(), 1);
      assert.equal(metrics.cacheHits.get(), 9);
      assert.equal(metrics.bytesDownloaded.get(), apk.size);
    });

    it('downloads a URL once when three processes and this one resolve it at the same time', async function () {
      this.timeout(60_000);
      const apk = await origin.addApk('cache-xproc.apk', 3 * MiB);
      const url = origin.url('cache-xproc.apk');
      const { cache, dir } = await freshCache();
      const children: ChildProcessWithoutNullStreams[] = [];
      try {
        for (let i = 0; i < 3; i++) {
          children.push(
            spawn(
              process.execPath,
              ['-r', 'ts-node/register/transpile-only', 'test/support/cache-worker.ts', dir, url],
              { cwd: PROJECT_ROOT },
            ),
          );
        }
        const outputs = children.map((child) => {
          let out = '';
          child.stdout.on('data', (c: Buffer) => (out += c.toString()));
          let err = '';
          child.stderr.on('data', (c: Buffer) => (err += c.toString()));
          const ready = new Promise<void>((resolve, reject) => {
            const check = () => (out.startsWith('ready\n') ? resolve() : undefined);
            child.stdout.on('data', check);
            child.once('exit', (code) => reject(new Error(`worker exited early (${code}): ${out} ${err}`)));
          });
          const done = new Promise<string>((resolve) => child.once('exit', () => resolve(out)));
          return { ready, done };
        });
        await Promise.all(outputs.map((o) => o.ready));

        // Everyone starts together; the throttle keeps the one download open for about 1.5 s.
        origin.throttleBytesPerSec = 2 * MiB;
        for (const child of children) child.stdin.write('go\n');
        const mine = await cache.resolve(url);
        const reports = (await Promise.all(outputs.map((o) => o.done))).map((out) => {
          const line = out.split('\n').find((l) => l.startsWith('{'));
          assert.ok(line, `no result from worker: ${out}`);
          return JSON.parse(line) as { ok: boolean; error?: string; result?: CachedApk };
        });

        for (const r of reports) assert.ok(r.ok, r.error);
        const shas = [mine.sha256, ...reports.map((r) => r.result!.sha256)];
        assert.deepEqual(shas, Array(4).fill(apk.sha256));
        const stats = origin.stats('cache-xproc.apk');
        assert.equal(stats.gets, 1, 'one origin GET across all processes');
        assert.equal(stats.bytesServed, apk.size);
        assert.equal([mine, ...reports.map((r) => r.result!)].filter((r) => !r.fromCache).length, 1);
        assert.deepEqual(await listDir(path.join(dir, 'locks')), []);
      } finally {
        for (const child of children) if (child.exitCode === null && child.pid) process.kill(child.pid, 'SIGKILL');
      }
    });
  });

  describe('resume and locks', () => {
    it('resumes an aborted download with a Range request instead of starting over', async () => {
      const apk = await origin.addApk('cache-resume.apk', 4 * MiB);
      const url = origin.url('cache-resume.apk');
      const { cache, dir } = await freshCache();
      origin.throttleBytesPerSec = 2 * MiB;
      const ac = new AbortController();
      const seen: DownloadState[] = [];
      const first = cache.resolve(url, undefined, {
        signal: ac.signal,
        onState: (s) => {
          seen.push({ ...s });
          if (s.phase === 'downloading' && s.bytes > 0) ac.abort(new Error('test stops the first download'));
        },
      });
      await assert.rejects(first, /test stops the first download/);
      assert.ok(seen.some((s) => s.bytes > 0 && s.bytes < apk.size && s.total === apk.size));

      origin.throttleBytesPerSec = undefined;
      const second = await cache.resolve(url, apk.sha256);

      const stats = origin.stats('cache-resume.apk');
      assert.equal(stats.gets, 2);
      assert.equal(stats.rangeGets, 1);
      assert.ok(
        stats.bytesServed <= 1.05 * apk.size,
        `origin served ${stats.bytesServed} bytes for a ${apk.size} byte file`,
      );
      assert.equal(second.sha256, apk.sha256);
      assert.ok(second.resumedFrom !== undefined && second.resumedFrom > 0);
      assert.equal(second.downloadedBytes, apk.size - second.resumedFrom);
      assert.equal(await sha256File(second.path), apk.sha256);
      assert.deepEqual(await listDir(path.join(dir, 'tmp')), []);
    });

    it('breaks a lock left by a dead process and resumes the part file that process left behind', async function () {
      this.timeout(60_000);
      const apk = await origin.addApk('cache-killed.apk', 4 * MiB);
      const url = origin.url('cache-killed.apk');
      const { cache, dir } = await freshCache();
      const partPath = path.join(dir, 'tmp', `${urlKey(url)}.part`);
      origin.throttleBytesPerSec = 2 * MiB;
      const child = spawn(
        process.execPath,
        ['-r', 'ts-node/register/transpile-only', 'test/support/cache-worker.ts', dir, url],
        { cwd: PROJECT_ROOT },
      );
      const exited = new Promise((resolve) => child.once('exit', resolve));
      try {
        await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
        child.stdin.write('go\n');
        for (let i = 0; ; i++) {
          const size = await fsp.stat(partPath).then(
            (s) => s.size,
            () => 0,
          );
          if (size >= MiB) break;
          assert.ok(i < 500, 'the worker never started writing its part file');
          await new Promise((r) => setTimeout(r, 10));
        }
      } finally {
        child.kill('SIGKILL');
        await exited;
      }
      origin.throttleBytesPerSec = undefined;
      const lock = await fsp.readFile(lockPathOf(dir, url), 'utf8');
      assert.equal((JSON.parse(lock) as { pid: number }).pid, child.pid);

      const r = await cache.resolve(url, undefined, { signal: AbortSignal.timeout(10_000) });
      assert.equal(r.sha256, apk.sha256);
      assert.ok(r.resumedFrom !== undefined && r.resumedFrom >= MiB);
      assert.equal(origin.stats('cache-killed.apk').rangeGets, 1);
      assert.deepEqual(await listDir(path.join(dir, 'locks')), []);
    });

    it('is not blocked by a stale lock whose owner pid no longer exists', async () => {
      const apk = await origin.addApk('cache-stale.apk', 1 * MiB);
      const url = origin.url('cache-stale.apk');
      const { cache, dir } = await freshCache();
      const { lockPath } = await plantLock(dir, url, await deadPid());

      const r = await cache.resolve(url, undefined, { signal: AbortSignal.timeout(5_000) });
      assert.equal(r.sha256, apk.sha256);
      await assert.rejects(fsp.access(lockPath));
    });

    it('is not blocked by a leftover lock carrying its own pid (a restarted worker that got the same pid)', async () => {
      const apk = await origin.addApk('cache-ownpid.apk', 1 * MiB);
      const url = origin.url('cache-ownpid.apk');
      const { cache, dir } = await freshCache();
      await plantLock(dir, url, process.pid);

      const r = await cache.resolve(url, undefined, { signal: AbortSignal.timeout(5_000) });
      assert.equal(r.sha256, apk.sha256);
    });

    it('waits while a live process on this host holds the lock', async () => {
      await origin.addApk('cache-live.apk', 1 * MiB);
      const url = origin.url('cache-live.apk');
      const { cache, dir } = await freshCache();
      const { lockPath, holder } = await plantLock(dir, url, process.ppid);

      await assert.rejects(cache.resolve(url, undefined, { signal: AbortSignal.timeout(300) }), {
        name: 'TimeoutError',
      });
      assert.equal(origin.stats('cache-live.apk').gets, 0);
      assert.deepEqual(JSON.parse(await fsp.readFile(lockPath, 'utf8')), holder);
    });

    it('breaks a lock from another host once it has not been refreshed for a long time', async () => {
      const apk = await origin.addApk('cache-foreign.apk', 1 * MiB);
      const url = origin.url('cache-foreign.apk');
      const { cache, dir } = await freshCache();
      const { lockPath } = await plantLock(dir, url, 1, 'container-that-is-gone');

      // Fresh: the other host may still be downloading, so wait.
      await assert.rejects(cache.resolve(url, undefined, { signal: AbortSignal.timeout(300) }), {
        name: 'TimeoutError',
      });
      // Untouched for an hour: its owner is gone (a container restart gets a new hostname).
      const hourAgo = new Date(Date.now() - 3600_000);
      await fsp.utimes(lockPath, hourAgo, hourAgo);
      const r = await cache.resolve(url, undefined, { signal: AbortSignal.timeout(5_000) });
      assert.equal(r.sha256, apk.sha256);
    });

    it('lets a new caller start over right after the only waiter of a download gave up', async () => {
      const apk = await origin.addApk('cache-rejoin.apk', 2 * MiB);
      const url = origin.url('cache-rejoin.apk');
      const { cache } = await freshCache();
      origin.throttleBytesPerSec = 4 * MiB;
      const ac = new AbortController();
      const first = cache.resolve(url, undefined, { signal: ac.signal });
      while (origin.stats('cache-rejoin.apk').bytesServed === 0) await new Promise((r) => setTimeout(r, 5));
      ac.abort(new Error('first caller gives up'));
      await assert.rejects(first, /first caller gives up/);
      origin.throttleBytesPerSec = undefined;
      // No pause here: the abandoned download may still be winding down.
      const second = await cache.resolve(url);
      assert.equal(second.sha256, apk.sha256);
    });
  });

  describe('size cap', () => {
    it('refuses an APK whose Content-Length is over the cap before reading its body', async () => {
      await origin.addApk('cache-big.apk', 3 * MiB);
      const { cache, dir } = await freshCache({ maxBytes: 2 * MiB });
      await assert.rejects(
        cache.resolve(origin.url('cache-big.apk')),
        coded('ApkTooLarge', true, (e) => assert.match(e.message, /cap of 2097152 bytes/)),
      );
      assert.deepEqual(await listDir(path.join(dir, 'blobs')), []);
      assert.deepEqual(await listDir(path.join(dir, 'tmp')), []);
    });

    it('refuses an APK whose advertised length is over the cap even when the real file is small', async () => {
      await origin.addApk('cache-liar-big.apk', 1 * MiB);
      origin.lieAboutLength('cache-liar-big.apk', 5 * MiB);
      try {
        const { cache, dir } = await freshCache({ maxBytes: 2 * MiB });
        await assert.rejects(cache.resolve(origin.url('cache-liar-big.apk')), coded('ApkTooLarge', true));
        assert.deepEqual(await listDir(path.join(dir, 'blobs')), []);
      } finally {
        origin.lieAboutLength('cache-liar-big.apk', undefined);
      }
    });

    it('fails as retryable when the origin hangs up before its Content-Length, and completes on the next try', async () => {
      const apk = await origin.addApk('cache-short.apk', 1 * MiB);
      const url = origin.url('cache-short.apk');
      const { cache, dir } = await freshCache();
      origin.lieAboutLength('cache-short.apk', apk.size + 1000);
      try {
        await assert.rejects(cache.resolve(url), coded('ApkDownloadFailed', false));
        assert.deepEqual(await listDir(path.join(dir, 'blobs')), []);
      } finally {
        origin.lieAboutLength('cache-short.apk', undefined);
      }
      const r = await cache.resolve(url);
      assert.equal(r.sha256, apk.sha256);
      assert.equal(await sha256File(r.path), apk.sha256);
    });

    it('rejects a body that stops early but claims to be complete when the expected sha256 is known', async () => {
      const apk = await origin.addApk('cache-truncated.apk', 1 * MiB);
      origin.lieAboutLength('cache-truncated.apk', apk.size / 2);
      try {
        const { cache, dir } = await freshCache();
        await assert.rejects(
          cache.resolve(origin.url('cache-truncated.apk'), apk.sha256),
          coded('ApkHashMismatch', true),
        );
        assert.deepEqual(await listDir(path.join(dir, 'blobs')), []);
      } finally {
        origin.lieAboutLength('cache-truncated.apk', undefined);
      }
    });

    describe('without a Content-Length', () => {
      let server: http.Server;
      let base: string;
      let sent = 0;
      let hungUp: Promise<void>;

      before(async () => {
        server = http.createServer((req, res) => {
          // Chunked transfer, no length: an endless APK that only a streaming cap can stop.
          res.writeHead(200, { 'content-type': 'application/vnd.android.package-archive' });
          const chunk = Buffer.alloc(64 * 1024, 7);
          hungUp = new Promise((resolve) => res.once('close', resolve));
          const pump = (): void => {
            while (!res.destroyed && sent < 256 * MiB) {
              sent += chunk.length;
              if (!res.write(chunk)) {
                res.once('drain', pump);
                return;
              }
            }
            res.end();
          };
          pump();
        });
        await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
        base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      });

      after(async () => {
        server.closeAllConnections();
        await new Promise((resolve) => server.close(resolve));
      });

      it('cuts off a length-less download at the cap while streaming', async () => {
        const { cache, dir } = await freshCache({ maxBytes: 2 * MiB });
        await assert.rejects(
          cache.resolve(`${base}/endless.apk`),
          coded('ApkTooLarge', true, (e) => assert.match(e.message, /saw \d+/)),
        );
        await hungUp;
        assert.ok(sent < 32 * MiB, `server wrote ${sent} bytes before the client hung up`);
        assert.deepEqual(await listDir(path.join(dir, 'blobs')), []);
        assert.deepEqual(
          (await listDir(path.join(dir, 'tmp'))).filter((f) => f.endsWith('.part')),
          [],
        );
      });
    });
  });

  describe('errors', () => {
    it('reports a sha256 mismatch with both hashes and keeps neither a blob nor a part file', async () => {
      const apk = await origin.addApk('cache-hash.apk', 1 * MiB);
      const { cache, dir } = await freshCache();
      const wrong = 'f'.repeat(64);
      await assert.rejects(
        cache.resolve(origin.url('cache-hash.apk'), wrong),
        coded('ApkHashMismatch', true, (e) => {
          assert.ok(e.message.includes(wrong), e.message);
          assert.ok(e.message.includes(apk.sha256), e.message);
        }),
      );
      assert.deepEqual(await listDir(path.join(dir, 'blobs')), []);
      assert.deepEqual(await listDir(path.join(dir, 'tmp')), []);
    });

    it('gives a mismatch only to the caller that expected another hash when two callers share a download', async () => {
      const apk = await origin.addApk('cache-hash-shared.apk', 1 * MiB);
      const url = origin.url('cache-hash-shared.apk');
      const { cache } = await freshCache();
      const [plain, strict] = await Promise.allSettled([cache.resolve(url), cache.resolve(url, 'e'.repeat(64))]);
      assert.equal(plain.status, 'fulfilled');
      assert.equal(plain.value.sha256, apk.sha256);
      assert.equal(strict.status, 'rejected');
      coded('ApkHashMismatch', true)(strict.reason);
      assert.equal(origin.stats('cache-hash-shared.apk').gets, 1);
    });

    it('maps 404 to ApkNotFound, which is not retryable', async () => {
      await origin.addApk('cache-404.apk', 64 * 1024);
      origin.setMissing('cache-404.apk');
      const { cache } = await freshCache();
      await assert.rejects(cache.resolve(origin.url('cache-404.apk')), coded('ApkNotFound', true));
    });

    it('maps 503 to ApkDownloadFailed, which is retryable, and succeeds once the origin recovers', async () => {
      const apk = await origin.addApk('cache-503.apk', 64 * 1024);
      origin.respondWith('cache-503.apk', 503);
      const { cache } = await freshCache();
      try {
        await assert.rejects(
          cache.resolve(origin.url('cache-503.apk')),
          coded('ApkDownloadFailed', false, (e) => assert.match(e.message, /HTTP 503/)),
        );
      } finally {
        origin.respondWith('cache-503.apk', undefined);
      }
      assert.equal((await cache.resolve(origin.url('cache-503.apk'))).sha256, apk.sha256);
    });

    it('maps 403 to ApkFetchRejected, which is not retryable', async () => {
      await origin.addApk('cache-403.apk', 64 * 1024);
      origin.respondWith('cache-403.apk', 403);
      const { cache } = await freshCache();
      await assert.rejects(cache.resolve(origin.url('cache-403.apk')), coded('ApkFetchRejected', true));
    });

    it('maps a refused connection to ApkDownloadFailed, which is retryable', async () => {
      const probe = http.createServer();
      await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
      const port = (probe.address() as AddressInfo).port;
      await new Promise((resolve) => probe.close(resolve));
      const { cache } = await freshCache();
      await assert.rejects(cache.resolve(`http://127.0.0.1:${port}/gone.apk`), coded('ApkDownloadFailed', false));
    });
  });

  describe('cache hits', () => {
    let apk: ApkInfo;
    let url: string;
    let tc: TestCache;

    before(async () => {
      apk = await origin.addApk('cache-hit.apk', 1 * MiB);
      url = origin.url('cache-hit.apk');
      tc = await freshCache();
      await tc.cache.resolve(url);
    });

    it('answers a second resolve of the same URL from disk without asking the origin', async () => {
      const r = await tc.cache.resolve(url);
      assert.equal(r.fromCache, true);
      assert.equal(r.downloadedBytes, 0);
      assert.equal(r.sha256, apk.sha256);
      assert.equal(origin.stats('cache-hit.apk').gets, 1);
      assert.equal(tc.metrics.cacheHits.get(), 1);
      assert.equal(tc.metrics.originDownloads.get(), 1);
    });

    it('answers a known expected sha256 from disk even for a URL it has never seen', async () => {
      const r = await tc.cache.resolve('http://127.0.0.1:9/elsewhere/other-name.apk', apk.sha256);
      assert.equal(r.fromCache, true);
      assert.equal(r.sha256, apk.sha256);
      assert.equal(r.path, tc.cache.blobPath(apk.sha256));
    });

    it('still knows the URL after a restart (a new cache on the same folder)', async () => {
      const restarted = await freshCache({ dir: tc.dir });
      const r = await restarted.cache.resolve(url);
      assert.equal(r.fromCache, true);
      assert.equal(origin.stats('cache-hit.apk').gets, 1);
    });

    it('reports the size of a completed blob and nothing for unknown or malformed names', async () => {
      assert.equal(await tc.cache.stat(apk.sha256), apk.size);
      assert.equal(await tc.cache.stat('0'.repeat(64)), undefined);
      assert.equal(await tc.cache.stat('../index'), undefined);
    });
  });
});

describe('artifact server', function () {
  this.timeout(30_000);
  let origin: ApkOrigin;
  let dispatcher: Dispatcher;
  let tmpRoot: string;
  let cache: ApkCache;
  let metrics: Metrics;
  let server: ArtifactServer;
  let base: string;
  let apk: ApkInfo;
  let bytes: Buffer;

  before(async () => {
    tmpRoot = await fsp.mkdtemp(path.join(os.tmpdir(), 'dt-artifact-'));
    dispatcher = createDispatcher();
    origin = new ApkOrigin({ dir: APK_DIR });
    await origin.start();
    apk = await origin.addApk('cache-serve.apk', 2 * MiB);
    metrics = new Metrics();
    cache = new ApkCache({ dir: tmpRoot, maxBytes: 64 * MiB, dispatcher, metrics });
    await cache.resolve(origin.url('cache-serve.apk'), apk.sha256);
    bytes = await fsp.readFile(apk.path);
    server = new ArtifactServer({ cache, metrics });
    base = await server.start();
  });

  after(async () => {
    await server.close();
    await origin.close();
    await dispatcher.close();
    await fsp.rm(tmpRoot, { recursive: true, force: true });
  });

  async function get(p: string, init: { method?: 'GET' | 'HEAD' | 'POST'; headers?: Record<string, string> } = {}) {
    const res = await request(`${base}${p}`, { method: init.method ?? 'GET', headers: init.headers });
    return { status: res.statusCode, headers: res.headers, body: Buffer.from(await res.body.arrayBuffer()) };
  }

  it('serves a completed entry byte for byte under its sha256', async () => {
    const r = await get(`/apk/${apk.sha256}.apk`);
    assert.equal(r.status, 200);
    assert.equal(Number(r.headers['content-length']), apk.size);
    assert.equal(r.headers['accept-ranges'], 'bytes');
    assert.equal(r.headers['content-type'], 'application/vnd.android.package-archive');
    assert.equal(sha256(r.body), apk.sha256);
    assert.ok(r.body.equals(bytes));
  });

  it('answers a Range request with 206 and a Content-Range', async () => {
    const r = await get(`/apk/${apk.sha256}.apk`, { headers: { range: 'bytes=1000-1999' } });
    assert.equal(r.status, 206);
    assert.equal(r.headers['content-range'], `bytes 1000-1999/${apk.size}`);
    assert.equal(Number(r.headers['content-length']), 1000);
    assert.ok(r.body.equals(bytes.subarray(1000, 2000)));

    const open = await get(`/apk/${apk.sha256}.apk`, { headers: { range: `bytes=${apk.size - 10}-` } });
    assert.equal(open.status, 206);
    assert.ok(open.body.equals(bytes.subarray(apk.size - 10)));

    const suffix = await get(`/apk/${apk.sha256}.apk`, { headers: { range: 'bytes=-500' } });
    assert.equal(suffix.headers['content-range'], `bytes ${apk.size - 500}-${apk.size - 1}/${apk.size}`);
    assert.ok(suffix.body.equals(bytes.subarray(apk.size - 500)));
  });

  it('answers a range past the end with 416', async () => {
    const r = await get(`/apk/${apk.sha256}.apk`, { headers: { range: `bytes=${apk.size}-` } });
    assert.equal(r.status, 416);
    assert.equal(r.headers['content-range'], `bytes */${apk.size}`);
  });

  it('answers HEAD with the length and no body', async () => {
    const r = await get(`/apk/${apk.sha256}.apk`, { method: 'HEAD' });
    assert.equal(r.status, 200);
    assert.equal(Number(r.headers['content-length']), apk.size);
    assert.equal(r.body.length, 0);
  });

  it('answers 404 for a sha256 it does not hold', async () => {
    assert.equal((await get(`/apk/${'0'.repeat(64)}.apk`)).status, 404);
    assert.equal((await get('/apk/not-a-sha.apk')).status, 404);
    assert.equal((await get('/')).status, 404);
  });

  it('answers 404 to path traversal attempts', async () => {
    const key = urlKey(origin.url('cache-serve.apk'));
    const attempts = [
      '/apk/../index',
      `/apk/../index/${key}.json`,
      '/apk/%2e%2e%2findex',
      `/apk/%2e%2e%2findex%2f${key}.json`,
      '/apk/..%2f..%2f..%2fetc%2fpasswd',
      `/apk/${apk.sha256}.apk/../../index/${key}.json`,
      `/blobs/${apk.sha256}.apk`,
      `/apk/%2e%2e/blobs/${apk.sha256}.apk`,
    ];
    for (const p of attempts) {
      const r = await rawGet(base, p);
      assert.equal(r.status, 404, `${p} answered ${r.status}`);
    }
  });

  it('answers 404 for the key of a download still in progress', async () => {
    const key = urlKey('http://example.invalid/partial.apk');
    const fake = 'a'.repeat(64);
    await fsp.writeFile(path.join(tmpRoot, 'tmp', `${key}.part`), 'partial bytes');
    await fsp.writeFile(path.join(tmpRoot, 'tmp', `${fake}.part`), 'partial bytes');
    await fsp.writeFile(path.join(tmpRoot, 'tmp', `${fake}.apk`), 'partial bytes');
    for (const p of [
      `/apk/${key}.part`,
      `/apk/${key}.apk`,
      `/apk/${key}`,
      `/apk/${fake}.part`,
      `/apk/${fake}.apk`,
      `/apk/${fake}`,
    ]) {
      assert.equal((await get(p)).status, 404, p);
    }
  });

  it('answers 405 to POST with an Allow header', async () => {
    const r = await get(`/apk/${apk.sha256}.apk`, { method: 'POST' });
    assert.equal(r.status, 405);
    assert.equal(r.headers.allow, 'GET, HEAD');
  });

  it('answers /healthz and counts served bytes in /metrics', async () => {
    assert.equal((await get('/healthz')).status, 200);
    const before = metrics.bytesServed.get();
    assert.equal((await get(`/apk/${apk.sha256}.apk`)).status, 200);
    assert.equal(metrics.bytesServed.get() - before, apk.size, 'one whole APK counted');
    const r = await get('/metrics');
    assert.equal(r.status, 200);
    const m = /^dt_artifact_bytes_served_total (\d+)$/m.exec(r.body.toString());
    assert.ok(m, 'dt_artifact_bytes_served_total missing');
    assert.ok(Number(m[1]) >= apk.size, `served ${m[1]}`);
    assert.equal(Number(m[1]), metrics.bytesServed.get());
  });

  it('survives a client that hangs up mid-file and releases the blob', async () => {
    const { hostname, port } = new URL(base);
    await new Promise<void>((resolve, reject) => {
      const req = http.get({ host: hostname, port, path: `/apk/${apk.sha256}.apk`, agent: false }, (res) => {
        res.once('data', () => {
          req.destroy();
          resolve();
        });
      });
      req.on('error', (err: NodeJS.ErrnoException) => (err.code === 'ECONNRESET' ? undefined : reject(err)));
    });
    for (let i = 0; cache.usersOf(apk.sha256) > 0; i++) {
      assert.ok(i < 200, 'blob still retained after the client left');
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal((await get('/healthz')).status, 200);
  });
});
