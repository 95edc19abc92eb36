import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { ApkOrigin, type ApkInfo } from '../src/sim/origin';
import { AgentSimulator, parseMultipart, type PartInfo } from '../src/sim/agent-sim';

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

async function fetchRaw(url: string, opts: { method?: 'GET' | 'HEAD' | 'POST'; headers?: Record<string, string>; body?: string | Readable } = {}): Promise<Reply> {
  const res = await request(url, { method: opts.method ?? 'GET', headers: opts.headers, body: opts.body });
  const body = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, headers: res.headers, body };
}

async function call(url: string, body?: object): Promise<{ status: number; json: Record<string, unknown> }> {
  const r = await fetchRaw(url, body === undefined ? {} : { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: r.status, json: JSON.parse(r.body.toString('utf8')) as Record<string, unknown> };
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

function multipart(boundary: string, parts: Array<{ name: string; value?: string; file?: string }>): Readable {
  async function* gen(): AsyncGenerator<Buffer> {
    for (const p of parts) {
      if (p.file) {
        yield Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${p.name}"; filename="app.apk"\r\nContent-Type: application/vnd.android.package-archive\r\n\r\n`);
        yield* fs.createReadStream(p.file) as AsyncIterable<Buffer>;
        yield Buffer.from('\r\n');
      } else {
        yield Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${p.name}"\r\n\r\n${p.value ?? ''}\r\n`);
      }
    }
    yield Buffer.from(`--${boundary}--\r\n`);
  }
  return Readable.from(gen());
}

async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('sims', function () {
  this.timeout(60_000);
  let tmp: string;
  let origin: ApkOrigin;
  let small: ApkInfo;

  before(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sims-test-'));
    origin = new ApkOrigin({ dir: path.join(tmp, 'apks') });
    small = await origin.addApk('small.apk', 3 * 1024 * 1024 + 123);
    await origin.start(0, '127.0.0.1');
  });

  after(async () => {
    await origin.close();
    await origin.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  describe('ApkOrigin', () => {
    it('serves the exact bytes with the advertised sha256', async () => {
      const before = origin.stats('small.apk');
      const r = await fetchRaw(origin.url('small.apk'));
      assert.equal(r.status, 200);
      assert.equal(r.headers['content-length'], String(small.size));
      assert.equal(r.headers['accept-ranges'], 'bytes');
      assert.ok(r.headers.etag);
      assert.equal(r.body.length, small.size);
      assert.equal(sha(r.body), small.sha256);
      assert.equal(sha(fs.readFileSync(small.path)), small.sha256);
      const after = origin.stats('small.apk');
      assert.equal(after.gets, before.gets + 1);
      assert.equal(after.bytesServed, before.bytesServed + small.size);
      assert.equal(after.inFlight, 0);
    });

    it('is deterministic per seed and reuses an existing file', async () => {
      const mtime = fs.statSync(small.path).mtimeMs;
      const again = await origin.addApk('small.apk', small.size);
      assert.equal(again.sha256, small.sha256);
      assert.equal(again.url, origin.url('small.apk'));
      assert.equal(fs.statSync(small.path).mtimeMs, mtime);
      const other = new ApkOrigin({ dir: path.join(tmp, 'other') });
      assert.equal((await other.addApk('small.apk', small.size)).sha256, small.sha256);
      assert.notEqual((await other.addApk('x.apk', small.size, 'another seed')).sha256, small.sha256);
      await other.close();
      await assert.rejects(origin.addApk('../evil', 10), /invalid APK name/);
    });

    it('answers Range requests with 206 and counts them', async () => {
      const file = fs.readFileSync(small.path);
      const before = origin.stats('small.apk');
      const a = await fetchRaw(origin.url('small.apk'), { headers: { range: 'bytes=100-199' } });
      assert.equal(a.status, 206);
      assert.equal(a.headers['content-range'], `bytes 100-199/${small.size}`);
      assert.deepEqual(a.body, file.subarray(100, 200));
      const b = await fetchRaw(origin.url('small.apk'), { headers: { range: `bytes=${small.size - 1000}-` } });
      assert.equal(b.status, 206);
      assert.deepEqual(b.body, file.subarray(small.size - 1000));
      const c = await fetchRaw(origin.url('small.apk'), { headers: { range: 'bytes=-10' } });
      assert.deepEqual(c.body, file.subarray(small.size - 10));
      const d = await fetchRaw(origin.url('small.apk'), { headers: { range: `bytes=${small.size}-` } });
      assert.equal(d.status, 416);
      assert.equal(d.headers['content-range'], `bytes */${small.size}`);
      const after = origin.stats('small.apk');
      assert.equal(after.rangeGets, before.rangeGets + 3);
      assert.equal(after.gets, before.gets + 4);
      assert.equal(after.bytesServed, before.bytesServed + 100 + 1000 + 10);
    });

    it('answers HEAD without a body and 404 for unknown or missing files', async () => {
      const h = await fetchRaw(origin.url('small.apk'), { method: 'HEAD' });
      assert.equal(h.status, 200);
      assert.equal(h.headers['content-length'], String(small.size));
      assert.equal(h.body.length, 0);
      assert.ok(origin.stats('small.apk').heads >= 1);
      assert.equal((await fetchRaw(origin.url('nope.apk'))).status, 404);
      origin.setMissing('small.apk');
      assert.equal((await fetchRaw(origin.url('small.apk'))).status, 404);
      origin.setMissing('small.apk', false);
      origin.respondWith('small.apk', 503);
      assert.equal((await fetchRaw(origin.url('small.apk'))).status, 503);
      origin.respondWith('small.apk', undefined);
      origin.lieAboutLength('small.apk', 5000);
      const short = await fetchRaw(origin.url('small.apk'));
      assert.equal(short.body.length, 5000);
      origin.lieAboutLength('small.apk', undefined);
      assert.equal((await fetchRaw(origin.url('small.apk'))).body.length, small.size);
    });

    it('counts bytes of a throttled transfer the client abandons', async () => {
      const before = origin.stats('small.apk');
      origin.throttleBytesPerSec = 512 * 1024;
      const res = await request(origin.url('small.apk'));
      origin.throttleBytesPerSec = undefined;
      let got = 0;
      for await (const chunk of res.body) {
        got += (chunk as Buffer).length;
        if (got >= 100 * 1024) break;
      }
      await waitFor(() => origin.stats('small.apk').inFlight === 0);
      const served = origin.stats('small.apk').bytesServed - before.bytesServed;
      assert.ok(served >= got, `served ${served} < received ${got}`);
      assert.ok(served < small.size / 2, `served ${served} of ${small.size} despite the abort`);
    });
  });

  describe('parseMultipart', () => {
    it('handles boundaries split across arbitrarily small chunks', async () => {
      const boundary = 'xYz123';
      const payload = Buffer.concat([Buffer.from('\r\n--xYz12 almost a boundary \r\n-'), Buffer.alloc(300, 7), Buffer.from('\r\n--xY')]);
      const body = Buffer.concat([
        Buffer.from(`preamble\r\n--${boundary}\r\nContent-Disposition: form-data; name="packageName"\r\n\r\ncom.example\r\n`),
        Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="apk"; filename="a.apk"\r\n\r\n`),
        payload,
        Buffer.from(`\r\n--${boundary}--\r\nepilogue`),
      ]);
      for (const size of [1, 2, 3, 7, 11, 64, body.length]) {
        const parts: Array<{ info: PartInfo; data: Buffer }> = [];
        const chunks = (function* () {
          for (let i = 0; i < body.length; i += size) yield body.subarray(i, i + size);
        })();
        await parseMultipart(Readable.from(chunks), boundary, (info) => {
          const bufs: Buffer[] = [];
          return { write: (c) => bufs.push(Buffer.from(c)), end: () => parts.push({ info, data: Buffer.concat(bufs) }) };
        });
        assert.equal(parts.length, 2, `chunk size ${size}`);
        assert.equal(parts[0]?.info.name, 'packageName');
        assert.equal(parts[0]?.data.toString(), 'com.example');
        assert.equal(parts[1]?.info.filename, 'a.apk');
        assert.deepEqual(parts[1]?.data, payload, `chunk size ${size}`);
      }
      await assert.rejects(parseMultipart(Readable.from([body.subarray(0, 150)]), boundary, () => ({ write: () => {}, end: () => {} })), /closing boundary/);
    });
  });

  describe('AgentSimulator', () => {
    let sim: AgentSimulator;
    let base: string;
    let big: ApkInfo;

    before(async () => {
      big = await origin.addApk('big.apk', 20 * 1024 * 1024 + 17);
      sim = new AgentSimulator({ devices: ['sim-1', 'sim-2', 'sim-3', 'sim-4'], offline: ['sim-4'], coldStartMs: [300, 400] });
      base = await sim.start(0, '127.0.0.1');
    });

    after(async () => {
      await sim.close();
      await sim.close();
    });

    it('reports status, 404 for unknown devices and 503 for offline ones', async () => {
      const ok = await call(`${base}/mobile/sim-1`);
      assert.equal(ok.status, 200);
      assert.equal(ok.json.online, true);
      assert.equal(typeof ok.json.model, 'string');
      assert.equal(typeof ok.json.sdk, 'number');
      assert.deepEqual(ok.json.installed, []);
      const unknown = await call(`${base}/mobile/nope/reset`, {});
      assert.equal(unknown.status, 404);
      assert.match(String(unknown.json.error), /nope/);
      const off = await call(`${base}/mobile/sim-4`);
      assert.equal(off.status, 503);
      assert.equal(off.json.online, false);
      sim.setOffline('sim-4', false);
      assert.equal((await call(`${base}/mobile/sim-4`)).status, 200);
      sim.setOffline('sim-4', true);
      assert.equal((await call(`${base}/mobile/sim-4/reset`, {})).status, 503);
    });

    it('installs by downloading from the origin and checking the hash', async () => {
      const dl = sim.stats.downloadedBytes;
      const r = await call(`${base}/mobile/sim-1/installApp`, { url: origin.url('small.apk'), packageName: 'com.example.small', sha256: small.sha256 });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      assert.equal(r.json.installed, true);
      assert.equal(r.json.bytes, small.size);
      assert.equal(r.json.sha256, small.sha256);
      assert.equal(typeof r.json.versionCode, 'number');
      assert.equal(sim.stats.downloadedBytes, dl + small.size);
      assert.deepEqual(sim.installed('sim-1'), ['com.example.small']);
      const again = await call(`${base}/mobile/sim-1/installApp`, { url: origin.url('small.apk'), packageName: 'com.example.small' });
      assert.equal(again.status, 200);
      assert.deepEqual(sim.installed('sim-1'), ['com.example.small']);
    });

    it('answers 422 on hash mismatch or when the origin fails, 400 on a bad body', async () => {
      const wrong = 'ab'.repeat(32);
      const mismatch = await call(`${base}/mobile/sim-2/installApp`, { url: origin.url('small.apk'), packageName: 'com.bad', sha256: wrong });
      assert.equal(mismatch.status, 422);
      assert.equal(mismatch.json.error, `sha256 mismatch: expected ${wrong}, got ${small.sha256}`);
      const missing = await call(`${base}/mobile/sim-2/installApp`, { url: origin.url('ghost.apk'), packageName: 'com.bad' });
      assert.equal(missing.status, 422);
      assert.match(String(missing.json.error), /404/);
      origin.respondWith('small.apk', 500);
      const broken = await call(`${base}/mobile/sim-2/installApp`, { url: origin.url('small.apk'), packageName: 'com.bad' });
      origin.respondWith('small.apk', undefined);
      assert.equal(broken.status, 422);
      assert.match(String(broken.json.error), /500/);
      assert.equal((await call(`${base}/mobile/sim-2/installApp`, { packageName: 'com.bad' })).status, 400);
      assert.equal((await call(`${base}/mobile/sim-2/installApp`, { url: origin.url('small.apk') })).status, 400);
      assert.deepEqual(sim.installed('sim-2'), []);
    });

    it('accepts a streamed multipart upload and checks its hash', async () => {
      const up = sim.stats.uploadedBytes;
      const boundary = '----sims-test-boundary-42';
      const headers = { 'content-type': `multipart/form-data; boundary=${boundary}` };
      const body = multipart(boundary, [{ name: 'packageName', value: 'com.example.big' }, { name: 'sha256', value: big.sha256 }, { name: 'apk', file: big.path }]);
      const r = await fetchRaw(`${base}/mobile/sim-3/installApp`, { method: 'POST', headers, body });
      const json = JSON.parse(r.body.toString()) as Record<string, unknown>;
      assert.equal(r.status, 200, JSON.stringify(json));
      assert.equal(json.bytes, big.size);
      assert.equal(json.sha256, big.sha256);
      assert.equal(sim.stats.uploadedBytes, up + big.size);
      assert.deepEqual(sim.installed('sim-3'), ['com.example.big']);
      assert.equal(sim.calls.at(-1)?.op, 'install-multipart');

      // Fields after the file part must work too, since the hash is only compared at the end.
      const bad = multipart(boundary, [{ name: 'apk', file: small.path }, { name: 'packageName', value: 'com.example.bad' }, { name: 'sha256', value: big.sha256 }]);
      const r2 = await fetchRaw(`${base}/mobile/sim-3/installApp`, { method: 'POST', headers, body: bad });
      assert.equal(r2.status, 422);
      assert.match(r2.body.toString(), /sha256 mismatch/);
    });

    it('answers 409 while a device is busy and never overlaps operations on one device', async () => {
      const slow = await origin.addApk('slow.apk', 1024 * 1024);
      origin.throttleBytesPerSec = 2 * 1024 * 1024;
      const first = call(`${base}/mobile/sim-2/installApp`, { url: slow.url, packageName: 'com.slow', sha256: slow.sha256 });
      await waitFor(() => origin.stats('slow.apk').inFlight === 1);
      origin.throttleBytesPerSec = undefined;
      const second = await call(`${base}/mobile/sim-2/installApp`, { url: slow.url, packageName: 'com.slow2' });
      assert.equal(second.status, 409);
      assert.match(String(second.json.error), /sim-2.*busy/);
      assert.equal((await call(`${base}/mobile/sim-2/launchApp`, { packageName: 'com.slow' })).status, 409);
      const status = await call(`${base}/mobile/sim-2`);
      assert.equal(status.status, 200);
      assert.equal(status.json.busy, true);
      // Other devices are independent.
      assert.equal((await call(`${base}/mobile/sim-1/installApp`, { url: slow.url, packageName: 'com.other' })).status, 200);
      assert.equal((await first).status, 200);
      assert.equal((await call(`${base}/mobile/sim-2/launchApp`, { packageName: 'com.slow' })).status, 200);

      const held = sim.calls
        .filter((c) => c.deviceId === 'sim-2' && c.op !== 'status' && c.status !== 409)
        .sort((a, b) => a.startedAt - b.startedAt);
      assert.ok(held.length >= 3);
      for (let i = 1; i < held.length; i++) {
        const prev = held[i - 1]!;
        const cur = held[i]!;
        assert.ok(cur.startedAt >= prev.endedAt, `${prev.op} and ${cur.op} overlapped on sim-2`);
      }
    });

    it('launches, uninstalls idempotently and resets', async () => {
      const launch = await call(`${base}/mobile/sim-1/launchApp`, { packageName: 'com.example.small', activity: '.Main' });
      assert.equal(launch.status, 200);
      const cold = Number(launch.json.coldStartMs);
      assert.ok(cold >= 300 && cold <= 400, `coldStartMs ${cold}`);
      assert.equal((await call(`${base}/mobile/sim-1/launchApp`, { packageName: 'com.never' })).status, 422);
      const u1 = await call(`${base}/mobile/sim-1/uninstallApp`, { packageName: 'com.example.small' });
      assert.deepEqual([u1.status, u1.json.uninstalled], [200, true]);
      const u2 = await call(`${base}/mobile/sim-1/uninstallApp`, { packageName: 'com.example.small' });
      assert.deepEqual([u2.status, u2.json.uninstalled], [200, false]);
      const reset = await call(`${base}/mobile/sim-1/reset`, {});
      assert.deepEqual([reset.status, reset.json.reset], [200, true]);
    });

    it('injects failures with failNext and failure rate', async () => {
      sim.failNext('sim-3', 'launch', 500, 2);
      const codes: number[] = [];
      for (let i = 0; i < 3; i++) codes.push((await call(`${base}/mobile/sim-3/launchApp`, { packageName: 'com.example.big' })).status);
      assert.deepEqual(codes, [500, 500, 200]);
      sim.setFailureRate(1);
      assert.equal((await call(`${base}/mobile/sim-3`)).status, 503);
      sim.setFailureRate(0);
      sim.setLatency(30);
      const t0 = Date.now();
      assert.equal((await call(`${base}/mobile/sim-3`)).status, 200);
      assert.ok(Date.now() - t0 >= 25);
      sim.setLatency(0);
      const last = sim.calls.at(-1);
      assert.equal(last?.deviceId, 'sim-3');
      assert.equal(last?.op, 'status');
      assert.ok((last?.endedAt ?? 0) >= (last?.startedAt ?? Infinity));
    });
  });
});
