/**
 * The artifact server facing strangers, over real sockets on 127.0.0.1: connection caps (total and
 * per address) and timeouts, the token checked before any work, leases renewed only by installs,
 * Range as RFC 9110 has it (the APK origin simulator too), canonical signed-URL expiries, query
 * strings kept out of the logs, and the SDK's own metrics exporter kept on loopback.
 *
 * Timing: waits are on events (a socket's close, a server-side count); the limits on them are
 * generous, for a busy machine, and the measured figures are printed.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { ApkCache } from '../src/apk-cache';
import { ArtifactServer, artifactInstallUrl, type ArtifactServerOptions } from '../src/worker/artifact-server';
import { addressKey } from '../src/worker/connection-limiter';
import { loadConfig, OPTIONS, PROJECT_ROOT } from '../src/config';
import { freePort } from '../src/net/ports';
import { JsonLogger } from '../src/logger';
import { Metrics } from '../src/metrics';
import { scrapeSdkMetrics, SDK_METRICS_HOST, sdkTelemetryOptions } from '../src/worker/sdk-metrics';
import { ApkOrigin } from '../sim/origin';
import { createDispatcher } from '../src/net/dispatcher';

const MiB = 1024 * 1024;

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** One request on its own connection (no pool, so no idle socket is left behind to count). */
function get(
  base: string,
  p: string,
  opts: { method?: string; headers?: Record<string, string>; localAddress?: string } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      `${base}${p}`,
      { method: opts.method ?? 'GET', headers: opts.headers, agent: false, localAddress: opts.localAddress },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** A raw TCP connection to the server, reading whatever comes so a close is noticed. */
async function connect(
  port: number,
  localAddress?: string,
): Promise<net.Socket & { gone: Promise<void>; isClosed: () => boolean }> {
  const socket = net.connect({ host: '127.0.0.1', port, ...(localAddress ? { localAddress } : {}) });
  let isClosed = false;
  const gone = new Promise<void>((r) => socket.once('close', () => r()));
  socket.once('close', () => (isClosed = true));
  socket.on('error', () => undefined);
  socket.resume();
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return Object.assign(socket, { gone, isClosed: () => isClosed });
}

/** True when `p` settles within `ms`. */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)));
  const done = await Promise.race([p.then(() => true), t]);
  clearTimeout(timer);
  return done;
}

/** Polls `cond` until it holds; the default limit is for a busy machine, not a bound on the behaviour. */
async function waitFor(what: string, cond: () => boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

const sha256Of = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('artifact server against strangers', function () {
  this.timeout(60_000);
  let tmp: string;
  let cache: ApkCache;
  let small: Buffer;
  let smallSha: string;
  let big: Buffer;
  let bigSha: string;
  const servers: ArtifactServer[] = [];
  const sockets: net.Socket[] = [];
  const dispatcher = createDispatcher();

  before(async () => {
    tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'dt-artifact-'));
    cache = new ApkCache({ dir: tmp, maxBytes: 64 * MiB, dispatcher, leaseMs: 60_000 });
    await fsp.mkdir(path.join(tmp, 'blobs'), { recursive: true });
    small = randomBytes(64 * 1024);
    smallSha = sha256Of(small);
    big = randomBytes(32 * MiB);
    bigSha = sha256Of(big);
    await fsp.writeFile(cache.blobPath(smallSha), small);
    await fsp.writeFile(cache.blobPath(bigSha), big);
  });
  afterEach(async () => {
    for (const s of sockets.splice(0)) s.destroy();
    for (const s of servers.splice(0)) await s.close();
  });
  after(async () => {
    await dispatcher.close();
    await fsp.rm(tmp, { recursive: true, force: true });
  });

  async function start(
    opts: Partial<ArtifactServerOptions> = {},
    apkCache: ApkCache = cache,
  ): Promise<{ server: ArtifactServer; base: string; port: number }> {
    const server = new ArtifactServer({ cache: apkCache, metrics: new Metrics(), ...opts });
    servers.push(server);
    const base = await server.start();
    return { server, base, port: server.port };
  }

  async function junk(port: number, n: number, localAddress?: string) {
    const out: Awaited<ReturnType<typeof connect>>[] = [];
    for (let i = 0; i < n; i++) {
      const s = await connect(port, localAddress);
      sockets.push(s);
      out.push(s);
      // Each connect completes before the next starts, and the kernel's accept queue is FIFO, so
      // the server accepts them in this order and "oldest" is well defined.
    }
    return out;
  }

  describe('connections', () => {
    it('reads the caps from the environment', () => {
      assert.equal(loadConfig({}).artifactMaxConnections, 256);
      assert.equal(loadConfig({}).artifactMaxPerAddress, 64);
      const c = loadConfig({ DT_ARTIFACT_MAX_CONNECTIONS: '10', DT_ARTIFACT_MAX_PER_ADDRESS: '0' });
      assert.equal(c.artifactMaxConnections, 10);
      assert.equal(c.artifactMaxPerAddress, 0);
      assert.throws(
        () => loadConfig({ DT_ARTIFACT_MAX_CONNECTIONS: 'many' }),
        /DT_ARTIFACT_MAX_CONNECTIONS="many" is invalid/,
      );
    });

    it('holds no more idle sockets than the cap: the oldest ones are closed at once, and a real request still gets in', async () => {
      // Headers may take far longer than any wait here: only the cap can close a socket.
      const { server, base, port } = await start({
        maxConnections: 4,
        maxPerAddress: 0,
        timeouts: { headersMs: 300_000 },
      });
      const idle = await junk(port, 10);
      await waitFor('the excess to close', () => idle.filter((s) => s.isClosed()).length >= 6);
      assert.deepEqual(
        idle.map((s) => s.isClosed()),
        [true, true, true, true, true, true, false, false, false, false],
        'the six oldest went, the four newest stay',
      );
      assert.equal(server.openConnections, 4);
      const r = await get(base, `/apk/${smallSha}.apk`);
      assert.equal(r.status, 200);
      assert.equal(sha256Of(r.body), smallSha);
      assert.ok(server.openConnections <= 4, `${server.openConnections} open`);
      const metrics = (await get(base, '/metrics')).body.toString();
      assert.match(metrics, /^dt_artifact_connections_dropped_total\{reason="max_connections"\} (\d+)$/m);
      assert.ok(Number(/reason="max_connections"\} (\d+)/.exec(metrics)![1]) >= 7);
    });

    it('caps the sockets of one remote address and leaves other addresses their share', async () => {
      const { server, port } = await start({ maxConnections: 20, maxPerAddress: 3, timeouts: { headersMs: 300_000 } });
      const one = await junk(port, 5, '127.0.0.1');
      await waitFor('the excess of 127.0.0.1 to close', () => one.filter((s) => s.isClosed()).length >= 2);
      const two = await junk(port, 3, '127.0.0.2');
      // The server holds six only once it has accepted all three from 127.0.0.2 and closed none of them.
      await waitFor('the server to hold three from each address', () => server.openConnections === 6);
      assert.equal(one.filter((s) => s.isClosed()).length, 2, 'two of five from 127.0.0.1 closed');
      assert.equal(two.filter((s) => s.isClosed()).length, 0, '127.0.0.2 keeps all three');
      assert.equal(addressKey('2001:db8:1:2:3:4:5:6'), '2001:db8:1:2::/64', 'an IPv6 /64 counts as one address');
      assert.equal(addressKey('::ffff:10.1.2.3'), '10.1.2.3');
    });

    it('closes a socket that sends no complete request headers in time, and an idle keep-alive socket', async () => {
      const { base, port } = await start({ timeouts: { headersMs: 300, keepAliveMs: 300 } });
      const t0 = Date.now();
      const [silent] = await junk(port, 1);
      const slow = await connect(port);
      sockets.push(slow);
      slow.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
      const drip = setInterval(() => slow.isClosed() || slow.write('X'), 50);
      try {
        // Generous against the 300 ms set here, yet short of the 10 s default it must not fall back to.
        assert.ok(await within(Promise.all([silent!.gone, slow.gone]), 8000), 'both closed');
        const took = Date.now() - t0;
        console.log(`      the silent and the slow socket were closed after ${took} ms (headers timeout 300 ms)`);
        assert.ok(took >= 250, 'not before the timeout');
      } finally {
        clearInterval(drip);
      }
      // A client that asks at once is served; once answered, its idle keep-alive socket goes too.
      const kept = await connect(port);
      sockets.push(kept);
      let answer = '';
      kept.on('data', (c: Buffer) => (answer += c.toString()));
      kept.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
      await waitFor('the answer', () => answer.includes('ok\n'));
      assert.match(answer, /^HTTP\/1\.1 200/);
      assert.match(answer, /keep-alive/i);
      const answered = Date.now();
      // Node closes a keep-alive socket about 1 s after keepAliveMs; its own default would take 6 s.
      assert.ok(await within(kept.gone, 4500), 'idle keep-alive socket closed');
      console.log(
        `      the idle keep-alive socket was closed ${Date.now() - answered} ms after its answer (keep-alive 300 ms)`,
      );
      assert.equal((await get(base, '/healthz')).status, 200);
    });

    it('never drops a socket that is serving a download for a newcomer, and junk never locks out an authorised client', async () => {
      const token = `t-${randomBytes(8).toString('hex')}`;
      const { server, base, port } = await start({
        token,
        maxConnections: 3,
        maxPerAddress: 0,
        timeouts: { headersMs: 300_000, keepAliveMs: 300_000 },
      });
      const signed = artifactInstallUrl(base, bigSha, token).slice(base.length);
      // An agent starts the big download and reads it slowly: the response stays open.
      const chunks: Buffer[] = [];
      let res!: http.IncomingMessage;
      const done = new Promise<void>((resolve, reject) => {
        const req = http.get(`${base}${signed}`, { agent: false }, (r) => {
          res = r;
          r.pause();
          r.on('data', (c: Buffer) => chunks.push(c));
          r.on('end', resolve);
          r.on('error', reject);
        });
        req.on('error', reject);
      });
      await waitFor('the download to start', () => res !== undefined);
      // Junk fills what is left of the cap many times over, and strangers without the token come and go.
      const idle = await junk(port, 6);
      await waitFor('junk to hold at most the rest of the cap', () => idle.filter((s) => !s.isClosed()).length <= 2);
      const stranger = await get(base, `/apk/${bigSha}.apk`, { headers: { range: 'bytes=0-0' } });
      assert.equal(stranger.status, 401);
      assert.equal(stranger.headers.connection, 'close');
      // An authorised client still gets in: a junk socket makes room for it.
      const other = await get(base, `/apk/${smallSha}.apk`, { headers: { authorization: `Bearer ${token}` } });
      assert.equal(other.status, 200);
      assert.equal(sha256Of(other.body), smallSha);
      assert.ok(server.openConnections <= 3);
      // No junk left: the download and two idle keep-alive clients fill the cap. The download is the
      // oldest of the three, yet a newcomer makes an idle one go, never the download.
      for (const s of idle) s.destroy();
      await waitFor('only the download to remain', () => server.openConnections === 1);
      const kept: Awaited<ReturnType<typeof connect>>[] = [];
      for (let i = 0; i < 2; i++) {
        const k = await connect(port);
        sockets.push(k);
        kept.push(k);
        let answer = '';
        k.on('data', (c: Buffer) => (answer += c.toString()));
        k.write(`GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n\r\n`);
        await waitFor('the keep-alive answer', () => answer.includes('ok\n'));
      }
      await waitFor('the cap to be full', () => server.openConnections === 3);
      const [newcomer] = await junk(port, 1);
      await waitFor('the oldest idle client to make room', () => kept[0]!.isClosed());
      assert.equal(newcomer!.isClosed(), false, 'the newcomer got in');
      res.resume();
      await done;
      assert.equal(sha256Of(Buffer.concat(chunks)), bigSha, 'the slow download was never cut');
    });

    it('closes a newcomer at once when every socket is serving a download', async () => {
      // A headers timeout far beyond the wait below, so only the cap can close the newcomer.
      const { base, port } = await start({ maxConnections: 2, maxPerAddress: 0, timeouts: { headersMs: 300_000 } });
      const responses: http.IncomingMessage[] = [];
      const reqs = [0, 1].map(() =>
        http.get(`${base}/apk/${bigSha}.apk`, { agent: false }, (r) => responses.push(r.pause())),
      );
      for (const r of reqs) r.on('error', () => undefined);
      await waitFor('both downloads to start', () => responses.length === 2);
      const t0 = Date.now();
      const [late] = await junk(port, 1);
      assert.ok(await within(late!.gone, 30_000), 'the newcomer is closed');
      console.log(`      the newcomer was closed ${Date.now() - t0} ms after connecting`);
      for (const r of responses) {
        assert.equal(r.destroyed, false, 'the downloads go on');
        r.destroy();
      }
    });

    it('cuts a response whose reader stopped reading, but never one that keeps reading, however long it runs', async function () {
      // Headers (and so the whole GET) must come within 500 ms; that never limits the response.
      const { server, base } = await start({ timeouts: { idleMs: 1000, headersMs: 500 } });
      // Reads 1 MiB, pauses 100 ms, and so on: about 3 s for 32 MiB, three times the idle timeout.
      const t0 = Date.now();
      const steady = await new Promise<Buffer>((resolve, reject) => {
        http
          .get(`${base}/apk/${bigSha}.apk`, { agent: false }, (r) => {
            const chunks: Buffer[] = [];
            let sinceLastPause = 0;
            r.on('data', (c: Buffer) => {
              chunks.push(c);
              sinceLastPause += c.length;
              if (sinceLastPause >= MiB) {
                sinceLastPause = 0;
                r.pause();
                setTimeout(() => r.resume(), 100);
              }
            });
            r.on('end', () => resolve(Buffer.concat(chunks)));
            r.on('error', reject);
            r.on('aborted', () => reject(new Error('aborted')));
          })
          .on('error', reject);
      });
      assert.equal(sha256Of(steady), bigSha);
      assert.ok(Date.now() - t0 > 2000, `the transfer outlasted the idle timeout (${Date.now() - t0} ms)`);
      // This reader takes nothing: once the socket buffers are full no byte moves, and the server hangs up.
      const stalled = await new Promise<http.IncomingMessage>((resolve, reject) => {
        http.get(`${base}/apk/${bigSha}.apk`, { agent: false }, (r) => resolve(r.pause())).on('error', reject);
      });
      const stalledAt = Date.now();
      await waitFor('the server to hang up on the stalled reader', () => server.openConnections === 0, 45_000);
      console.log(
        `      the stalled reader was cut ${Date.now() - stalledAt} ms after its response began (idle timeout 1000 ms)`,
      );
      let got = 0;
      stalled.on('data', (c: Buffer) => (got += c.length));
      stalled.on('error', () => undefined);
      const ended = new Promise((r) => stalled.once('close', r));
      stalled.resume();
      await ended;
      assert.ok(got < big.length, `cut short: ${got} of ${big.length} bytes`);
    });
  });

  describe('token and leases', () => {
    const token = `t-${randomBytes(8).toString('hex')}`;
    const past = () => new Date(Date.now() - 3_600_000);
    async function leaseEnd(sha: string): Promise<number> {
      return (await fsp.stat(cache.blobPath(sha))).mtimeMs;
    }
    async function expireLease(sha: string): Promise<number> {
      const t = past();
      await fsp.utimes(cache.blobPath(sha), t, t);
      return leaseEnd(sha);
    }

    it('checks the token before touching the cache, and closes the connection of a request without it', async () => {
      const calls: string[] = [];
      const spy = new Proxy(cache, {
        get(target, prop, receiver) {
          const v = Reflect.get(target, prop, receiver) as unknown;
          if (typeof v !== 'function') return v;
          return (...args: unknown[]) => {
            calls.push(String(prop));
            return (v as (...a: unknown[]) => unknown).apply(target, args);
          };
        },
      });
      // Timeouts far beyond the waits here: only the refusal itself can close the stranger's connection.
      const { base, port } = await start({ token, timeouts: { headersMs: 300_000, keepAliveMs: 300_000 } }, spy);
      const before = await expireLease(smallSha);
      const p = `/apk/${smallSha}.apk`;
      const refused: [string, Parameters<typeof get>[2], number][] = [
        ['GET without a token', {}, 401],
        ['HEAD without a token', { method: 'HEAD' }, 401],
        ['a 1-byte range without a token', { headers: { range: 'bytes=0-0' } }, 401],
        ['a wrong bearer token', { headers: { authorization: 'Bearer nope' } }, 403],
      ];
      for (const [what, opts, status] of refused) {
        const r = await get(base, p, opts);
        assert.equal(r.status, status, what);
        assert.equal(r.headers.connection, 'close', what);
      }
      assert.equal((await get(base, `${p}?token=1.${'A'.repeat(43)}`)).status, 403, 'a forged signature');
      assert.deepEqual(calls, [], 'the cache was never asked');
      assert.equal(await leaseEnd(smallSha), before, 'nor its lease touched');
      // On a raw keep-alive connection too: answered, then closed by the server.
      const s = await connect(port);
      sockets.push(s);
      s.write(`GET ${p} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n`);
      assert.ok(await within(s.gone, 30_000), 'the stranger’s connection was closed');
    });

    it('renews a lease only for an install: a GET from byte 0 through a signed install URL', async () => {
      const { base } = await start({ token });
      const signed = artifactInstallUrl(base, smallSha, token).slice(base.length);
      const plain = `/apk/${smallSha}.apk`;
      const bearer = { authorization: `Bearer ${token}` };
      const reads: [string, Parameters<typeof get>[1], Parameters<typeof get>[2], number][] = [
        ['HEAD through the signed URL', signed, { method: 'HEAD' }, 200],
        ['a 1-byte range from byte 100 through the signed URL', signed, { headers: { range: 'bytes=100-100' } }, 206],
        ['a suffix range through the signed URL', signed, { headers: { range: 'bytes=-1' } }, 206],
        ['a 1-byte range with the bearer token', plain, { headers: { ...bearer, range: 'bytes=0-0' } }, 206],
        ['a whole GET with the bearer token', plain, { headers: bearer }, 200],
        ['HEAD with the bearer token', plain, { method: 'HEAD', headers: bearer }, 200],
        ['a range past the end through the signed URL', signed, { headers: { range: 'bytes=99999999-' } }, 416],
      ];
      for (const [what, p, opts, status] of reads) {
        const before = await expireLease(smallSha);
        assert.equal((await get(base, p, opts)).status, status, what);
        assert.equal(await leaseEnd(smallSha), before, `${what} does not renew the lease`);
      }
      for (const [what, opts] of [
        ['a whole GET through the signed URL', {}],
        ['a range from byte 0 through the signed URL', { headers: { range: 'bytes=0-0' } }],
      ] as const) {
        await expireLease(smallSha);
        assert.ok([200, 206].includes((await get(base, signed, opts)).status), what);
        assert.ok((await leaseEnd(smallSha)) > Date.now() + 50_000, `${what} renews the lease`);
      }
    });

    it('renews no lease when no token is configured, since every reader is then anonymous', async () => {
      const { base } = await start();
      for (const opts of [{}, { method: 'HEAD' }, { headers: { range: 'bytes=0-0' } }]) {
        const before = await expireLease(smallSha);
        assert.ok([200, 206].includes((await get(base, `/apk/${smallSha}.apk`, opts)).status));
        assert.equal(await leaseEnd(smallSha), before, JSON.stringify(opts));
      }
    });

    it('accepts a signed URL only with its expiry written exactly as the signer wrote it', async () => {
      const { base } = await start({ token });
      const url = artifactInstallUrl(base, smallSha, token);
      const [, expiry, sig] = /token=(\d+)\.(.+)$/.exec(url)!;
      const p = `/apk/${smallSha}.apk?token=`;
      assert.equal((await get(base, `${p}${expiry}.${sig}`)).status, 200, 'canonical');
      for (const bad of [
        `0${expiry}`,
        `00${expiry}`,
        `%2B${expiry}`,
        `%20${expiry}`,
        `${expiry}%20`,
        `${expiry}.0`,
        `${Number(expiry) / 1e9}e9`,
      ]) {
        assert.equal((await get(base, `${p}${bad}.${sig}`)).status, 403, bad);
      }
      assert.equal((await get(base, `/apk/${smallSha}.apk`)).status, 401, 'nothing presented: 401');
    });
  });

  describe('Range (RFC 9110)', () => {
    const cases: [
      string,
      string | undefined,
      number,
      (size: number) => { body?: [number, number]; contentRange?: string },
    ][] = [
      ['two ranges', 'bytes=0-1,5-6', 200, (n) => ({ body: [0, n] })],
      ['an unknown unit', 'items=0-5', 200, (n) => ({ body: [0, n] })],
      ['no numbers', 'bytes=abc', 200, (n) => ({ body: [0, n] })],
      ['last before first', 'bytes=5-2', 200, (n) => ({ body: [0, n] })],
      ['an empty range set', 'bytes=', 200, (n) => ({ body: [0, n] })],
      ['a range past the end', 'bytes=999999999-', 416, (n) => ({ contentRange: `bytes */${n}` })],
      ['a zero suffix', 'bytes=-0', 416, (n) => ({ contentRange: `bytes */${n}` })],
      ['the first byte', 'bytes=0-0', 206, (n) => ({ body: [0, 1], contentRange: `bytes 0-0/${n}` })],
      ['the unit in capitals', 'BYTES=0-0', 206, (n) => ({ body: [0, 1], contentRange: `bytes 0-0/${n}` })],
      [
        'one range among empty list elements',
        'bytes=, 10-19 ,',
        206,
        (n) => ({ body: [10, 20], contentRange: `bytes 10-19/${n}` }),
      ],
      [
        'an end past the end',
        'bytes=100-999999999',
        206,
        (n) => ({ body: [100, n], contentRange: `bytes 100-${n - 1}/${n}` }),
      ],
      ['a suffix', 'bytes=-10', 206, (n) => ({ body: [n - 10, n], contentRange: `bytes ${n - 10}-${n - 1}/${n}` })],
    ];

    async function check(base: string, p: string, file: Buffer) {
      for (const [what, range, status, expect] of cases) {
        const r = await get(base, p, { headers: range ? { range } : {} });
        const e = expect(file.length);
        assert.equal(r.status, status, `${what} (${range})`);
        if (e.body) assert.deepEqual(r.body, file.subarray(...e.body), what);
        assert.equal(r.headers['content-range'], e.contentRange, what);
      }
      // Range handling is defined for GET only: HEAD ignores it.
      const head = await get(base, p, { method: 'HEAD', headers: { range: 'bytes=0-0' } });
      assert.equal(head.status, 200);
      assert.equal(head.headers['content-length'], String(file.length));
    }

    it('the artifact server ignores multi-ranges, unknown units and bad syntax, and answers 416 only to an unsatisfiable range', async () => {
      const { base } = await start();
      await check(base, `/apk/${smallSha}.apk`, small);
    });

    it('so does the APK origin simulator', async () => {
      const origin = new ApkOrigin({ dir: path.join(tmp, 'origin') });
      const base = await origin.start();
      try {
        const info = await origin.addApk('range.apk', 64 * 1024);
        await check(base, new URL(origin.url('range.apk')).pathname, await fsp.readFile(info.path));
      } finally {
        await origin.close();
      }
    });
  });

  describe('logs', () => {
    it('a failed request is logged with its path and without its query string: no signature, no token', async () => {
      const token = `t-${randomBytes(8).toString('hex')}`;
      // A blob that cannot be read (a folder where the file should be): the read fails after the
      // answer has begun, which is the failure the server logs.
      const dir = path.join(tmp, 'unreadable');
      const broken = new ApkCache({ dir, maxBytes: MiB, dispatcher });
      const sha = sha256Of(randomBytes(16));
      await fsp.mkdir(broken.blobPath(sha), { recursive: true });
      // The worker's logger and wiring (src/worker.ts), the token among the secrets it masks.
      const out = new PassThrough();
      let text = '';
      out.on('data', (c: Buffer) => (text += c.toString()));
      const logger = new JsonLogger({ service: 'worker' }, 'info', out, [token]);
      const { base } = await start({ token, log: (msg, meta) => logger.info(msg, meta) }, broken);
      const signed = artifactInstallUrl(base, sha, token);
      const signature = /token=(\d+\.[A-Za-z0-9_-]+)$/.exec(signed)![1]!;
      const asked = [
        signed,
        `${base}/apk/${sha}.apk?token=${token}&sig=${signature}`,
        `${base}/apk/${sha}.apk?sig=${signature}&token=${encodeURIComponent(token)}`,
      ];
      for (const url of asked) {
        // The answer is cut once the read fails; whatever the client sees, the log line follows.
        await new Promise<void>((resolve) => {
          http
            .get(url, { agent: false, headers: url === signed ? {} : { authorization: `Bearer ${token}` } }, (r) => {
              r.on('error', () => undefined);
              r.on('close', () => resolve());
              r.resume();
            })
            .on('error', () => resolve());
        });
      }
      await waitFor('three failures in the log', () => text.split('artifact server request failed').length - 1 === 3);
      const lines = text
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .filter((e) => e.msg === 'artifact server request failed');
      assert.doesNotMatch(text, /\?|token=|sig=/, 'no query string');
      assert.ok(!text.includes(signature), 'no signature');
      assert.ok(!text.includes(token), 'no token');
      for (const line of lines) assert.equal(line.path, `/apk/${sha}.apk`, 'the path is logged');
    });
  });

  describe("the SDK's metrics exporter", () => {
    let child: ChildProcess | undefined;
    after(() => {
      if (child?.pid && child.exitCode === null) process.kill(child.pid, 'SIGKILL');
    });

    it('listens on 127.0.0.1 only, and no setting can move it', async function () {
      assert.equal(SDK_METRICS_HOST, '127.0.0.1');
      assert.deepEqual(sdkTelemetryOptions(9464), { metrics: { prometheus: { bindAddress: '127.0.0.1:9464' } } });
      assert.throws(() => sdkTelemetryOptions(0), /not a TCP port/);
      const sdkSettings = Object.values(OPTIONS)
        .filter((o) => /SDK/.test(o.env))
        .map((o) => o.env);
      assert.deepEqual(sdkSettings, ['DT_SDK_METRICS_PORT'], 'a port, never a host');

      // The real exporter, installed the way src/worker.ts installs it, in a process of its own.
      const port = await freePort();
      const code = [
        "const { Runtime, DefaultLogger } = require('@temporalio/worker');",
        "const { sdkTelemetryOptions } = require('./src/worker/sdk-metrics');",
        "Runtime.install({ logger: new DefaultLogger('ERROR'), telemetryOptions: sdkTelemetryOptions(Number(process.env.PORT)) });",
        'setInterval(() => undefined, 1000);',
      ].join('\n');
      child = spawn(process.execPath, ['-r', 'ts-node/register/transpile-only', '-e', code], {
        cwd: PROJECT_ROOT,
        env: { ...process.env, PORT: String(port) },
        stdio: ['ignore', 'ignore', 'inherit'],
      });
      let text = '';
      const deadline = Date.now() + 30_000;
      while (!(text = await scrapeSdkMetrics(port))) {
        assert.ok(Date.now() < deadline, 'the exporter never answered on 127.0.0.1');
        await sleep(200);
      }
      assert.match(text, /^# Temporal SDK metrics\n/);

      // Another loopback address (Linux routes all of 127.0.0.0/8 to lo, so a listener on every
      // address would answer there), and every address of this machine off loopback (link-local
      // IPv6 left out: it needs a zone).
      const outside = Object.values(os.networkInterfaces())
        .flat()
        .filter((a) => a && !a.internal && !a.address.startsWith('fe80:'))
        .map((a) => a!.address);
      for (const address of ['127.0.0.2', ...outside]) {
        const err = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
          const s = net.connect({ host: address, port }, () => {
            s.destroy();
            resolve(undefined);
          });
          s.on('error', resolve);
        });
        assert.equal(err?.code, 'ECONNREFUSED', `${address}:${port} must refuse the connection`);
      }
    });
  });
});
