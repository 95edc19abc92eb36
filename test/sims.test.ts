import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import readline from 'node:readline';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { ApkOrigin, type ApkInfo } from '../sim/origin';
import { AgentSimulator, parseMultipart, type PartInfo } from '../sim/agent-sim';
import { PROJECT_ROOT } from '../src/config';

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

async function fetchRaw(
  url: string,
  opts: { method?: 'GET' | 'HEAD' | 'POST'; headers?: Record<string, string>; body?: string | Readable } = {},
): Promise<Reply> {
  const res = await request(url, { method: opts.method ?? 'GET', headers: opts.headers, body: opts.body });
  const body = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, headers: res.headers, body };
}

async function call(url: string, body?: object): Promise<{ status: number; json: Record<string, unknown> }> {
  const r = await fetchRaw(
    url,
    body === undefined
      ? {}
      : { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) },
  );
  return { status: r.status, json: JSON.parse(r.body.toString('utf8')) as Record<string, unknown> };
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

function multipart(boundary: string, parts: Array<{ name: string; value?: string; file?: string }>): Readable {
  async function* gen(): AsyncGenerator<Buffer> {
    for (const p of parts) {
      if (p.file) {
        yield Buffer.from(
          `--${boundary}\r\nContent-Disposition: form-data; name="${p.name}"; filename="app.apk"\r\nContent-Type: application/vnd.android.package-archive\r\n\r\n`,
        );
        yield* fs.createReadStream(p.file) as AsyncIterable<Buffer>;
        yield Buffer.from('\r\n');
      } else {
        yield Buffer.from(
          `--${boundary}\r\nContent-Disposition: form-data; name="${p.name}"\r\n\r\n${p.value ?? ''}\r\n`,
        );
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
      const payload = Buffer.concat([
        Buffer.from('\r\n--xYz12 almost a boundary \r\n-'),
        Buffer.alloc(300, 7),
        Buffer.from('\r\n--xY'),
      ]);
      const body = Buffer.concat([
        Buffer.from(
          `preamble\r\n--${boundary}\r\nContent-Disposition: form-data; name="packageName"\r\n\r\ncom.example\r\n`,
        ),
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
          return {
            write: (c) => bufs.push(Buffer.from(c)),
            end: () => parts.push({ info, data: Buffer.concat(bufs) }),
          };
        });
        assert.equal(parts.length, 2, `chunk size ${size}`);
        assert.equal(parts[0]?.info.name, 'packageName');
        assert.equal(parts[0]?.data.toString(), 'com.example');
        assert.equal(parts[1]?.info.filename, 'a.apk');
        assert.deepEqual(parts[1]?.data, payload, `chunk size ${size}`);
      }
      await assert.rejects(
        parseMultipart(Readable.from([body.subarray(0, 150)]), boundary, () => ({ write: () => {}, end: () => {} })),
        /closing boundary/,
      );
    });
  });

  describe('AgentSimulator', () => {
    let sim: AgentSimulator;
    let base: string;
    let big: ApkInfo;

    before(async () => {
      big = await origin.addApk('big.apk', 20 * 1024 * 1024 + 17);
      sim = new AgentSimulator({
        devices: ['sim-1', 'sim-2', 'sim-3', 'sim-4'],
        offline: ['sim-4'],
        coldStartMs: [300, 400],
      });
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
      const r = await call(`${base}/mobile/sim-1/installApp`, {
        url: origin.url('small.apk'),
        packageName: 'com.example.small',
        sha256: small.sha256,
      });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      assert.equal(r.json.installed, true);
      assert.equal(r.json.bytes, small.size);
      assert.equal(r.json.sha256, small.sha256);
      assert.equal(typeof r.json.versionCode, 'number');
      assert.equal(sim.stats.downloadedBytes, dl + small.size);
      assert.deepEqual(sim.installed('sim-1'), ['com.example.small']);
      const again = await call(`${base}/mobile/sim-1/installApp`, {
        url: origin.url('small.apk'),
        packageName: 'com.example.small',
      });
      assert.equal(again.status, 200);
      assert.deepEqual(sim.installed('sim-1'), ['com.example.small']);
    });

    it('answers 422 on hash mismatch or when the origin fails, 400 on a bad body', async () => {
      const wrong = 'ab'.repeat(32);
      const mismatch = await call(`${base}/mobile/sim-2/installApp`, {
        url: origin.url('small.apk'),
        packageName: 'com.bad',
        sha256: wrong,
      });
      assert.equal(mismatch.status, 422);
      assert.equal(mismatch.json.error, `sha256 mismatch: expected ${wrong}, got ${small.sha256}`);
      const missing = await call(`${base}/mobile/sim-2/installApp`, {
        url: origin.url('ghost.apk'),
        packageName: 'com.bad',
      });
      assert.equal(missing.status, 422);
      assert.match(String(missing.json.error), /404/);
      origin.respondWith('small.apk', 500);
      const broken = await call(`${base}/mobile/sim-2/installApp`, {
        url: origin.url('small.apk'),
        packageName: 'com.bad',
      });
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
      const body = multipart(boundary, [
        { name: 'packageName', value: 'com.example.big' },
        { name: 'sha256', value: big.sha256 },
        { name: 'apk', file: big.path },
      ]);
      const r = await fetchRaw(`${base}/mobile/sim-3/installApp`, { method: 'POST', headers, body });
      const json = JSON.parse(r.body.toString()) as Record<string, unknown>;
      assert.equal(r.status, 200, JSON.stringify(json));
      assert.equal(json.bytes, big.size);
      assert.equal(json.sha256, big.sha256);
      assert.equal(sim.stats.uploadedBytes, up + big.size);
      assert.deepEqual(sim.installed('sim-3'), ['com.example.big']);
      assert.equal(sim.calls.at(-1)?.op, 'install-multipart');

      // Fields after the file part must work too, since the hash is only compared at the end.
      const bad = multipart(boundary, [
        { name: 'apk', file: small.path },
        { name: 'packageName', value: 'com.example.bad' },
        { name: 'sha256', value: big.sha256 },
      ]);
      const r2 = await fetchRaw(`${base}/mobile/sim-3/installApp`, { method: 'POST', headers, body: bad });
      assert.equal(r2.status, 422);
      assert.match(r2.body.toString(), /sha256 mismatch/);
    });

    it('answers 409 while a device is busy and never overlaps operations on one device', async () => {
      const slow = await origin.addApk('slow.apk', 1024 * 1024);
      origin.throttleBytesPerSec = 2 * 1024 * 1024;
      const first = call(`${base}/mobile/sim-2/installApp`, {
        url: slow.url,
        packageName: 'com.slow',
        sha256: slow.sha256,
      });
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
      assert.equal(
        (await call(`${base}/mobile/sim-1/installApp`, { url: slow.url, packageName: 'com.other' })).status,
        200,
      );
      assert.equal((await first).status, 200);
      assert.equal((await call(`${base}/mobile/sim-2/launchApp`, { packageName: 'com.slow' })).status, 200);
      assert.equal((await call(`${base}/mobile/sim-2/uninstallApp`, { packageName: 'com.slow' })).status, 200);

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
      const install = { url: origin.url('small.apk'), packageName: 'com.example.small', sha256: small.sha256 };
      assert.equal((await call(`${base}/mobile/sim-1/installApp`, install)).status, 200);
      const launch = await call(`${base}/mobile/sim-1/launchApp`, {
        packageName: 'com.example.small',
        activity: '.Main',
      });
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
      const install = { url: origin.url('small.apk'), packageName: 'com.example.big', sha256: small.sha256 };
      assert.equal((await call(`${base}/mobile/sim-3/installApp`, install)).status, 200);
      sim.failNext('sim-3', 'launch', 500, 2);
      const codes: number[] = [];
      for (let i = 0; i < 3; i++)
        codes.push((await call(`${base}/mobile/sim-3/launchApp`, { packageName: 'com.example.big' })).status);
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

  describe('traversal simulator jar', () => {
    const jar = path.join(PROJECT_ROOT, '.tools', 'traversal-sim.jar');
    const running = new Set<ChildProcess>();
    let runs = 0;

    interface Line {
      text: string;
      at: number;
    }
    interface FindingJson {
      kind: string;
      index: number;
      exception: string;
      message: string;
      frames: string[];
      step: number;
      screen: string;
      screenshot: string;
      foundAt: string;
    }
    const FINDING_KEYS = ['kind', 'index', 'exception', 'message', 'frames', 'step', 'screen', 'screenshot', 'foundAt'];

    before(() => {
      execFileSync('bash', [path.join(PROJECT_ROOT, 'sim', 'traversal-sim', 'build.sh'), jar], { stdio: 'pipe' });
    });

    after(() => {
      for (const child of running) child.kill('SIGKILL');
    });

    const outDir = (): string => path.join(tmp, 'traversal', `run-${++runs}`);

    /** Runs the jar; onLine sees every stdout line the moment it arrives (files it names must exist then). */
    function runSim(
      args: string[],
      onLine: (line: Line) => void = () => {},
    ): { lines: Line[]; done: Promise<{ lines: Line[]; code: number | null }> } {
      const child = spawn('java', ['-jar', jar, '--package', 'com.example.app', ...args], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      running.add(child);
      const lines: Line[] = [];
      readline.createInterface({ input: child.stdout! }).on('line', (text) => {
        const line = { text, at: Date.now() };
        lines.push(line);
        onLine(line);
      });
      child.stderr!.resume();
      const done = new Promise<{ lines: Line[]; code: number | null }>((resolve, reject) => {
        child.on('error', reject);
        // 'close' waits for stdout to end, so every line has been seen.
        child.on('close', (code) => {
          running.delete(child);
          resolve({ lines, code });
        });
      });
      return { lines, done };
    }

    const findingsOf = (lines: Line[]): FindingJson[] =>
      lines
        .filter((l) => l.text.startsWith('FINDING '))
        .map((l) => JSON.parse(l.text.slice('FINDING '.length)) as FindingJson);
    const stepOf = (line: Line): number => Number(/^PROGRESS step=(\d+) /.exec(line.text)?.[1] ?? NaN);
    /** What a grouper keeps: the exception and the in-app frames without line numbers. */
    const signature = (f: FindingJson): string =>
      [
        f.exception,
        ...f.frames.filter((fr) => fr.startsWith('com.example.app.')).map((fr) => fr.replace(/\(.*\)$/, '')),
      ].join('|');

    it('prints each finding once its record and screenshot are written, before the PROGRESS line of its step', async () => {
      const out = outDir();
      const problems: string[] = [];
      const { done } = runSim(
        ['--device', 'a', '--out', out, '--duration', '1.5', '--tick-ms', '25', '--crashes', '3', '--anrs', '2'],
        (line) => {
          if (!line.text.startsWith('FINDING ')) return;
          const f = JSON.parse(line.text.slice('FINDING '.length)) as FindingJson;
          const record = path.join(out, 'findings', `${f.kind}-${f.index}.json`);
          if (!fs.existsSync(path.join(out, f.screenshot)))
            problems.push(`${f.screenshot} missing when its line was printed`);
          if (!fs.existsSync(record)) problems.push(`${record} missing when its line was printed`);
          else if (fs.readFileSync(record, 'utf8').trim() !== line.text.slice('FINDING '.length))
            problems.push(`${record} differs from its line`);
        },
      );
      const { lines, code } = await done;
      assert.equal(code, 0);
      assert.deepEqual(problems, []);

      const findings = findingsOf(lines);
      assert.deepEqual(
        findings.filter((f) => f.kind === 'crash').map((f) => f.index),
        [1, 2, 3],
      );
      assert.deepEqual(
        findings.filter((f) => f.kind === 'anr').map((f) => f.index),
        [1, 2],
      );
      for (const f of findings) {
        assert.deepEqual(Object.keys(f), FINDING_KEYS);
        assert.equal(f.exception === 'ANR', f.kind === 'anr');
        assert.match(f.exception, /^(ANR|[a-z]+(\.[a-z]+)+\.[A-Z][\w$]*)$/);
        assert.ok(f.message.length > 0);
        assert.ok(f.frames.length >= 6 && f.frames.length <= 12, `${f.frames.length} frames`);
        assert.ok(
          f.frames.some((fr) => /^com\.example\.app\.[\w.$]+\.lambda\$\w+\$\d+\(\w+\.java:\d+\)$/.test(fr)),
          'a lambda frame',
        );
        assert.ok(
          f.frames.some((fr) => fr.includes('$$ExternalSyntheticLambda')),
          'a synthetic lambda frame',
        );
        assert.equal(
          f.frames.at(-1)?.replace(/:\d+\)$/, ')'),
          'com.android.internal.os.ZygoteInit.main(ZygoteInit.java)',
        );
        assert.equal(f.screen, `screen-${f.step}`);
        assert.equal(f.screenshot, `findings/${f.kind}-${f.index}.png`);
        assert.ok(Math.abs(Date.parse(f.foundAt) - Date.now()) < 60_000, f.foundAt);
      }
      // The line right after a step's findings is that step's PROGRESS line.
      lines.forEach((l, i) => {
        if (!l.text.startsWith('FINDING ')) return;
        const step = (JSON.parse(l.text.slice('FINDING '.length)) as FindingJson).step;
        const next = lines.slice(i + 1).find((n) => !n.text.startsWith('FINDING '));
        assert.ok(next && stepOf(next) === step, `after ${l.text.slice(0, 60)} came ${next?.text}`);
      });
      assert.match(lines.at(-1)?.text ?? '', /^DONE .* crashes=3 anrs=2 status=completed$/);

      const summary = JSON.parse(fs.readFileSync(path.join(out, 'summary.json'), 'utf8')) as {
        crashes: number;
        findings: unknown[];
      };
      assert.equal(summary.crashes, 3);
      assert.deepEqual(
        summary.findings,
        findings.map((f) => ({ kind: f.kind, index: f.index, exception: f.exception, step: f.step })),
      );
      const html = fs.readFileSync(path.join(out, 'index.html'), 'utf8');
      for (const f of findings)
        assert.ok(html.includes(`<a href="${f.screenshot}">`), `index.html links ${f.screenshot}`);
    });

    it('gives an index the same bug on every device and different indexes different bugs', async () => {
      const args = ['--duration', '0.2', '--tick-ms', '10', '--crashes', '6', '--anrs', '4'];
      const [a, b] = await Promise.all([
        runSim(['--device', 'a', '--out', outDir(), ...args]).done,
        runSim(['--device', 'emulator-5554', '--out', outDir(), ...args]).done,
      ]);
      const fa = findingsOf(a.lines);
      const fb = findingsOf(b.lines);
      assert.equal(fa.length, 10);
      assert.deepEqual(fa.map(signature), fb.map(signature));
      assert.deepEqual(
        fa.map((f) => f.message.replace(/@?\b[0-9a-f]{7}\b/g, '')),
        fb.map((f) => f.message.replace(/@?\b[0-9a-f]{7}\b/g, '')),
      );
      // Line numbers are what differs between these two devices; a grouper has to ignore them.
      assert.notDeepEqual(
        fa.map((f) => f.frames),
        fb.map((f) => f.frames),
      );
      for (const kind of ['crash', 'anr']) {
        const sigs = fa.filter((f) => f.kind === kind).map(signature);
        assert.equal(new Set(sigs).size, sigs.length, `${kind} signatures repeat: ${sigs.join('\n')}`);
      }
    });

    it('continues the numbering after --resume-from without printing earlier findings again', async () => {
      const args = ['--device', 'a', '--duration', '1', '--tick-ms', '10', '--crashes', '5', '--anrs', '3'];
      const full = findingsOf((await runSim([...args, '--out', outDir()]).done).lines);
      const out = outDir();
      const { lines, code } = await runSim([...args, '--out', out, '--resume-from', '50']).done;
      assert.equal(code, 0);
      assert.equal(lines[0]?.text, 'RESUMED from=50');
      const strip = (f: FindingJson) => ({ ...f, foundAt: '' });
      assert.deepEqual(findingsOf(lines).map(strip), full.filter((f) => f.step > 50).map(strip));
      assert.deepEqual(
        findingsOf(lines)
          .filter((f) => f.kind === 'crash')
          .map((f) => f.index),
        [3, 4, 5],
      );
      // The report still lists what the earlier attempt found.
      const summary = JSON.parse(fs.readFileSync(path.join(out, 'summary.json'), 'utf8')) as {
        findings: Array<{ kind: string; index: number }>;
      };
      assert.equal(summary.findings.length, 8);
    });

    it('holds the step count while the control file says pause and continues without catching up', async () => {
      const out = outDir();
      const control = path.join(out, 'control');
      fs.mkdirSync(out, { recursive: true });
      const write = (text: string) => {
        fs.writeFileSync(`${control}.tmp`, text);
        fs.renameSync(`${control}.tmp`, control);
      };
      let requested = false;
      const { lines, done } = runSim(
        ['--device', 'a', '--out', out, '--duration', '20', '--tick-ms', '20', '--control', control],
        (line) => {
          if (!requested && stepOf(line) >= 5) {
            requested = true;
            write('duration=20\npause\n');
          }
        },
      );
      const lineWith = (prefix: string): number => lines.findIndex((l) => l.text.startsWith(prefix));
      await waitFor(() => lineWith('PAUSED ') >= 0, 10_000);
      const paused = lines[lineWith('PAUSED ')]!;
      const pausedStep = Number(/^PAUSED step=(\d+)$/.exec(paused.text)?.[1]);
      assert.ok(pausedStep >= 5, paused.text);
      await new Promise((r) => setTimeout(r, 600));
      assert.deepEqual(
        lines.slice(lineWith('PAUSED ') + 1).map((l) => l.text),
        [],
        'no steps while paused',
      );

      write('duration=20\n');
      await waitFor(() => lines.filter((l) => l.at >= paused.at && stepOf(l) > 0).length >= 10, 10_000);
      const continued = lines[lineWith('CONTINUED ')]!;
      assert.equal(continued.text, `CONTINUED step=${pausedStep}`);
      const after = lines.slice(lineWith('CONTINUED ') + 1);
      assert.equal(after[0]?.text.startsWith(`PROGRESS step=${pausedStep + 1} total=1000 `), true, after[0]?.text);
      // Without a fresh tick deadline the 600 ms paused would be made up by ~30 steps in a burst.
      const tenth = after[9]!;
      assert.equal(stepOf(tenth), pausedStep + 10);
      assert.ok(tenth.at - continued.at >= 9 * 20 - 30, `10 steps took ${tenth.at - continued.at} ms after CONTINUED`);

      write('pause\nstop\n');
      const { code } = await done;
      assert.equal(code, 0);
      assert.match(lines.at(-1)?.text ?? '', /^DONE .*status=stopped$/);
    });
  });
});
