/**
 * Resource limits against real servers and files: the APK cache's size cap with least-recently-used
 * eviction that spares blobs in use (served, leased), the cap on concurrent origin downloads, and
 * the report size cap on both sinks.
 *
 * Stand-in, and why: the report sink activity runs in MockActivityEnvironment; the cap is a
 * property of its stream to the sink, which needs no workflow, and the sinks are real (a folder, an
 * HTTP server).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger } from '@temporalio/worker';
import type { Dispatcher } from 'undici';
import { ApkCache } from '../src/apk-cache';
import { createReportSinkActivities } from '../src/activities/report-sink';
import { ArtifactServer } from '../src/worker/artifact-server';
import { loadConfig, PROJECT_ROOT } from '../src/config';
import { Metrics } from '../src/metrics';
import { ApkOrigin, type ApkInfo } from '../sim/origin';
import { UrlPolicy } from '../src/net/url-policy';
import { createDispatcher } from '../src/net/dispatcher';
import { waitFor } from '../dev/wait';

const MiB = 1024 * 1024;
const quiet = () => new MockActivityEnvironment(undefined, { logger: new DefaultLogger('ERROR') });
const tick = () => new Promise((r) => setTimeout(r, 15)); // mtimes a few ms apart keep the LRU order unambiguous

async function blobs(dir: string): Promise<string[]> {
  return (await fsp.readdir(path.join(dir, 'blobs')).catch(() => [] as string[])).map((n) => n.slice(0, 64)).sort();
}

describe('resource limits', function () {
  this.timeout(60_000);
  let tmp: string;
  let dispatcher: Dispatcher;

  before(async () => {
    tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'dt-limits-'));
    dispatcher = createDispatcher(new UrlPolicy('127.0.0.1'));
  });
  after(async () => {
    await dispatcher.close();
    await fsp.rm(tmp, { recursive: true, force: true });
  });

  it('reads the caps from the environment', () => {
    const c = loadConfig({
      DT_APK_CACHE_MAX_BYTES: '3GiB',
      DT_MAX_ORIGIN_DOWNLOADS: '2',
      DT_REPORT_MAX_BYTES: '10MiB',
      DT_APK_CACHE_LEASE: '30m',
    });
    assert.equal(c.apkCacheMaxBytes, 3 * 1024 ** 3);
    assert.equal(c.maxOriginDownloads, 2);
    assert.equal(c.reportMaxBytes, 10 * MiB);
    assert.equal(c.apkCacheLeaseMs, 30 * 60_000);
    assert.throws(() => loadConfig({ DT_REPORT_MAX_BYTES: 'lots' }), /DT_REPORT_MAX_BYTES="lots" is invalid/);
  });

  describe('APK cache size cap', () => {
    let origin: ApkOrigin;
    const apks: Record<string, ApkInfo> = {};
    let n = 0;

    before(async () => {
      origin = new ApkOrigin({ dir: path.join(PROJECT_ROOT, '.tools', 'apks') });
      await origin.start();
      for (const name of ['lru-a', 'lru-b', 'lru-c', 'lru-d', 'lru-e'])
        apks[name] = await origin.addApk(`${name}.apk`, MiB);
      apks['lru-big'] = await origin.addApk('lru-big.apk', 8 * MiB);
    });
    after(async () => {
      await origin.close();
    });

    function cache(opts: { leaseMs: number; capMiB: number }): { cache: ApkCache; dir: string } {
      const dir = path.join(tmp, `cache-${++n}`);
      return {
        dir,
        cache: new ApkCache({
          dir,
          maxBytes: 64 * MiB,
          maxCacheBytes: opts.capMiB * MiB,
          leaseMs: opts.leaseMs,
          dispatcher,
        }),
      };
    }
    const url = (name: string) => origin.url(`${name}.apk`);
    const sha = (...names: string[]) => names.map((x) => apks[x]!.sha256).sort();

    it('evicts the least recently used APK once a download pushes the cache over its cap', async () => {
      const { cache: c, dir } = cache({ leaseMs: 0, capMiB: 3.5 });
      for (const x of ['lru-a', 'lru-b', 'lru-c']) {
        await c.resolve(url(x));
        await tick();
      }
      await c.resolve(url('lru-a')); // a hit makes a the most recently used
      await tick();
      await c.resolve(url('lru-d'));
      assert.deepEqual(await blobs(dir), sha('lru-a', 'lru-c', 'lru-d'), 'b, the least recently used, went');
      await tick();
      const again = await c.resolve(url('lru-b'));
      assert.equal(again.fromCache, false, 'an evicted APK is downloaded again');
      assert.deepEqual(await blobs(dir), sha('lru-a', 'lru-d', 'lru-b'), 'then c went');
    });

    it('never evicts an APK the artifact server is serving', async () => {
      const { cache: c, dir } = cache({ leaseMs: 0, capMiB: 9 });
      const metrics = new Metrics();
      const server = new ArtifactServer({ cache: c, metrics });
      const base = await server.start();
      try {
        const big = await c.resolve(url('lru-big'));
        await tick();
        // An agent starts downloading the big APK and reads slowly: the response stays open.
        const { hostname, port } = new URL(base);
        let res!: http.IncomingMessage;
        const req = http.get({ host: hostname, port, path: `/apk/${big.sha256}.apk`, agent: false }, (r) => {
          res = r;
          r.pause();
        });
        req.on('error', () => undefined);
        await waitFor(() => c.usersOf(big.sha256) > 0, 30_000, 'the artifact server serving the big APK');
        await c.resolve(url('lru-a'));
        await tick();
        // 10 MiB > 9 MiB: the least recently used blob is the big one, but it is in use, so a goes.
        await c.resolve(url('lru-b'));
        assert.deepEqual(await blobs(dir), sha('lru-big', 'lru-b'));
        // The agent finishes; now the big APK is the least recently used one and free to go.
        res.resume();
        await new Promise((r) => res.on('end', r));
        await waitFor(() => c.usersOf(big.sha256) === 0, 30_000, 'the transfer of the big APK to end');
        await tick();
        await c.resolve(url('lru-c'));
        assert.deepEqual(await blobs(dir), sha('lru-b', 'lru-c'));
      } finally {
        await server.close();
      }
    });

    it('keeps APKs resolved for traversals (leased until their install) even over the cap, and evicts them once the leases end', async () => {
      const { cache: c, dir } = cache({ leaseMs: 60_000, capMiB: 2.5 });
      for (const x of ['lru-a', 'lru-b', 'lru-c', 'lru-d']) {
        await c.resolve(url(x));
        await tick();
      }
      assert.deepEqual(await blobs(dir), sha('lru-a', 'lru-b', 'lru-c', 'lru-d'), 'a soft cap: leased blobs stay');
      // The leases run out (as if an hour passed after the installs): LRU eviction resumes.
      const past = Date.now() - 3_600_000;
      for (const [i, x] of ['lru-a', 'lru-b', 'lru-c', 'lru-d'].entries()) {
        const t = new Date(past + i * 1000);
        await fsp.utimes(c.blobPath(apks[x]!.sha256), t, t);
      }
      assert.deepEqual((await c.evict()).sort(), sha('lru-a', 'lru-b'));
      assert.deepEqual(await blobs(dir), sha('lru-c', 'lru-d'));
    });

    it('renews the lease when an APK is resolved, and when touch() renews it (an install URL handed out or used)', async () => {
      const { cache: c } = cache({ leaseMs: 60_000, capMiB: 100 });
      const r = await c.resolve(url('lru-e'));
      const first = (await fsp.stat(r.path)).mtimeMs;
      assert.ok(first > Date.now() + 50_000, 'leased about a minute ahead');
      const old = new Date(Date.now() - 1000);
      await fsp.utimes(r.path, old, old);
      assert.equal(await c.touch(r.sha256), true);
      assert.ok((await fsp.stat(r.path)).mtimeMs > Date.now() + 50_000);
      assert.equal(await c.touch('0'.repeat(64)), false, 'no lease on a blob that does not exist');
      assert.throws(() => c.blobPath('../../etc/passwd'), /not a sha256/);
    });
  });

  describe('concurrent origin downloads', () => {
    let server: http.Server;
    let base: string;
    let active = 0;
    let peak = 0;
    const served: string[] = [];
    /** `/hold-*` requests send nothing until this is called (set per test). */
    let releaseHold: (() => void) | undefined;
    let held: Promise<void> = Promise.resolve();
    /** A cache in a folder of its own whose origin downloads share `slots` slots. */
    const slotCache = (folder: string, slots: number) =>
      new ApkCache({ dir: path.join(tmp, folder), maxBytes: 64 * MiB, maxConcurrentDownloads: slots, dispatcher });

    before(async () => {
      server = http.createServer((req, res) => {
        served.push(req.url!);
        active++;
        peak = Math.max(peak, active);
        let t: NodeJS.Timeout | undefined;
        res.on('close', () => {
          clearInterval(t);
          active--;
        });
        const body = randomBytes(256 * 1024);
        const send = () => {
          if (res.destroyed) return;
          res.writeHead(200, { 'content-length': body.length });
          // About 200 ms per download, so downloads overlap unless something holds them back.
          let sent = 0;
          t = setInterval(() => {
            res.write(body.subarray(sent, sent + 32 * 1024));
            sent += 32 * 1024;
            if (sent >= body.length) {
              clearInterval(t);
              res.end();
            }
          }, 25);
        };
        if (req.url!.startsWith('/hold-')) void held.then(send);
        else send();
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    });
    after(async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    });

    it('runs at most DT_MAX_ORIGIN_DOWNLOADS downloads at once and queues the rest', async () => {
      const c = slotCache('slots', 2);
      peak = 0;
      const all = Array.from({ length: 6 }, (_, i) => c.resolve(`${base}/slot-${i}.apk`));
      const results = await Promise.all(all);
      assert.equal(results.length, 6);
      assert.equal(new Set(results.map((r) => r.sha256)).size, 6);
      assert.equal(peak, 2, `peak of ${peak} concurrent origin downloads`);
    });

    it('lets a caller waiting for a slot give up without ever reaching the origin, even once the slot frees', async () => {
      const c = slotCache('slots-abort', 1);
      held = new Promise((r) => (releaseHold = r));
      /** Resolves once a caller's download reports that it waits for a slot (reported every second). */
      const waitingForSlot = () => {
        let reached!: () => void;
        const promise = new Promise<void>((r) => (reached = r));
        return { promise, onState: (s: { phase: string }) => s.phase === 'waiting-slot' && reached() };
      };
      // The only slot is held by a download the origin keeps open until the test releases it.
      const first = c.resolve(`${base}/hold-slot.apk`);
      await waitFor(() => served.includes('/hold-slot.apk'), 30_000, 'the first download at the origin');
      // Two callers queue behind it, the one that gives up first.
      const giveUp = new AbortController();
      const abandonedQueued = waitingForSlot();
      const abandoned = c.resolve(`${base}/never.apk`, undefined, {
        signal: giveUp.signal,
        onState: abandonedQueued.onState,
      });
      await abandonedQueued.promise;
      const laterQueued = waitingForSlot();
      const later = c.resolve(`${base}/after-abandoned.apk`, undefined, { onState: laterQueued.onState });
      await laterQueued.promise;
      giveUp.abort(new Error('the caller gave up'));
      await assert.rejects(abandoned, /the caller gave up/);
      // Free the slot. A waiter left in the queue would get it before the later caller, so by the
      // time the later download is done the abandoned one would have reached the origin.
      releaseHold!();
      await first;
      const done = await later;
      assert.equal(done.fromCache, false);
      assert.deepEqual(
        served.filter((u) => ['/hold-slot.apk', '/never.apk', '/after-abandoned.apk'].includes(u)),
        ['/hold-slot.apk', '/after-abandoned.apk'],
        'the abandoned download never started',
      );
    });
  });

  describe('report size cap', () => {
    let runsDir: string;
    before(async () => {
      runsDir = path.join(tmp, 'runs');
      const report = path.join(runsDir, 'big', 'dev-1', 'report');
      await fsp.mkdir(report, { recursive: true });
      // Random bytes do not compress: the archive is about as big as the file.
      await fsp.writeFile(path.join(report, 'screens.bin'), randomBytes(2 * MiB));
    });

    it('stops a report larger than the cap on the file sink as ReportTooLarge and leaves no partial file', async () => {
      const sinkDir = path.join(tmp, 'sink');
      const acts = createReportSinkActivities({ runsDir, sink: `file://${sinkDir}`, dispatcher, maxBytes: 256 * 1024 });
      await assert.rejects(
        quiet().run(acts.uploadReport, { taskId: 'big', deviceId: 'dev-1' }),
        (err: { code: string; nonRetryable: boolean; message: string }) => {
          assert.equal(err.code, 'ReportTooLarge');
          assert.equal(err.nonRetryable, true);
          assert.match(err.message, /cap of 262144 bytes; raise DT_REPORT_MAX_BYTES/);
          return true;
        },
      );
      assert.deepEqual(await fsp.readdir(path.join(sinkDir, 'big')), []);
    });

    it('stops a report larger than the cap on an HTTP sink mid-stream', async () => {
      let received = 0;
      const sink = http.createServer((req, res) => {
        req.on('data', (c: Buffer) => (received += c.length));
        req.on('end', () => res.writeHead(201).end());
        req.on('error', () => undefined);
      });
      await new Promise<void>((r) => sink.listen(0, '127.0.0.1', () => r()));
      try {
        const url = `http://127.0.0.1:${(sink.address() as AddressInfo).port}/reports`;
        const acts = createReportSinkActivities({ runsDir, sink: url, dispatcher, maxBytes: 256 * 1024 });
        await assert.rejects(quiet().run(acts.uploadReport, { taskId: 'big', deviceId: 'dev-1' }), {
          code: 'ReportTooLarge',
        });
        assert.ok(received <= 256 * 1024, `the sink received ${received} bytes`);
      } finally {
        sink.closeAllConnections();
        await new Promise((r) => sink.close(r));
      }
    });
  });
});
