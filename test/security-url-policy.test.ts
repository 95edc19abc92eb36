/**
 * The URL policy against real HTTP servers: schemes, metadata and link-local addresses, private and
 * loopback addresses with and without the allow-list, names that resolve inside, redirects that
 * lead inside, the redirect limit, agents and report sinks, and the same rules end to end.
 *
 * Stand-ins, and why: host names other than localhost resolve through a fixed table (fakeDns) handed
 * to the policy as its lookup, because the system resolver cannot be pointed at made-up names
 * without editing /etc/hosts; test/security-net-dns.test.ts runs the same check against a real name
 * server. The report sink activity runs in MockActivityEnvironment, which only supplies the activity
 * context; the sink's HTTP request goes through the real dispatcher.
 */
import assert from 'node:assert/strict';
import { lookup as dnsLookup } from 'node:dns/promises';
import { promises as fsp } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger } from '@temporalio/worker';
import type { Dispatcher } from 'undici';
import { ApkCache } from '../src/apk-cache';
import { agentCall } from '../src/activities/device-agent';
import { createReportSinkActivities } from '../src/activities/report-sink';
import { loadDeviceRegistry, urlPolicyFor } from '../src/device-registry';
import { InvalidTaskError } from '../src/contract/errors';
import { parseTask } from '../src/starter/task';
import { classifyAddress } from '../src/net/ip';
import { UrlPolicy, type LookupFn } from '../src/net/url-policy';
import { createDispatcher } from '../src/net/dispatcher';
import { startStack, task, type Stack } from '../dev/stack';

interface Coded {
  code: string;
  nonRetryable: boolean;
  message: string;
}

/** Matcher for assert.rejects: a UrlRefused error whose message matches. */
function refused(pattern: RegExp) {
  return (err: unknown): boolean => {
    const e = err as Coded;
    assert.equal(e.code, 'UrlRefused', `expected UrlRefused, got ${String(err)}`);
    assert.equal(e.nonRetryable, true);
    assert.match(e.message, pattern);
    return true;
  };
}

/** A resolver with a few fixed names; everything else goes to the system resolver. */
function fakeDns(names: Record<string, string[]>): LookupFn {
  return async (hostname) => {
    const fixed = names[hostname];
    if (fixed) return fixed.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
    return dnsLookup(hostname, { all: true });
  };
}

/** A server on 127.0.0.1 answering with `handler`; counts requests. */
async function server(
  handler: http.RequestListener,
): Promise<{ url: string; port: number; hits: string[]; close(): Promise<void> }> {
  const hits: string[] = [];
  const s = http.createServer((req, res) => {
    hits.push(req.url ?? '');
    handler(req, res);
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    hits,
    async close() {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    },
  };
}

describe('URL policy', function () {
  this.timeout(30_000);

  describe('address classes and the allow-list', () => {
    it('classifies metadata, link-local, loopback and private addresses, IPv4 hidden in IPv6 included', () => {
      const table: [string, string][] = [
        ['169.254.169.254', 'metadata'],
        ['fd00:ec2::254', 'metadata'],
        ['::ffff:169.254.169.254', 'metadata'],
        ['64:ff9b::a9fe:a9fe', 'metadata'],
        ['169.254.10.1', 'link-local'],
        ['fe80::1%eth0', 'link-local'],
        ['0.0.0.0', 'unspecified'],
        ['224.0.0.1', 'reserved'],
        ['127.0.0.1', 'loopback'],
        ['127.8.9.10', 'loopback'],
        ['::1', 'loopback'],
        ['::ffff:7f00:1', 'loopback'],
        ['2002:7f00:1::', 'loopback'],
        ['10.1.2.3', 'private'],
        ['172.16.0.1', 'private'],
        ['192.168.1.1', 'private'],
        ['100.64.0.1', 'private'],
        ['fd12::1', 'private'],
        ['172.32.0.1', 'public'],
        ['8.8.8.8', 'public'],
        ['2606:4700::1111', 'public'],
      ];
      for (const [addr, cls] of table) assert.equal(classifyAddress(addr), cls, addr);
    });

    it('classes IPv6 translation forms like the IPv4 they carry and refuses the other IPv6 special-purpose ranges', () => {
      const table: [string, string][] = [
        // SIIT ::ffff:0:0:0/96 (the report's vector), beside the mapped and compatible forms.
        ['::ffff:0:7f00:2', 'loopback'],
        ['::ffff:0:127.0.0.2', 'loopback'],
        ['::ffff:0:a9fe:a9fe', 'metadata'],
        ['::ffff:0:a00:1', 'private'],
        ['::ffff:0:808:808', 'public'],
        ['::ffff:a9fe:a9fe', 'metadata'],
        ['::7f00:1', 'loopback'],
        // NAT64: the well-known prefix carries its IPv4 in the low 32 bits; the local-use one cannot be read.
        ['64:ff9b::7f00:1', 'loopback'],
        ['64:ff9b::a00:1', 'private'],
        ['64:ff9b::808:808', 'public'],
        ['64:ff9b:1::7f00:1', 'reserved'],
        ['64:ff9b:1::a9fe:a9fe', 'reserved'],
        ['64:ff9b:1:ffff::808:808', 'reserved'],
        ['64:ff9b:0:0:1::1', 'reserved'],
        // Teredo: server 65.54.227.120, client 127.0.0.1 obfuscated (XOR 0xffffffff); refused outright.
        ['2001:0:4136:e378:8000:63bf:80ff:fffe', 'reserved'],
        ['2001:0:4136:e378:8000:63bf:3fff:fdd2', 'reserved'],
        // 6to4 carries its IPv4 in bits 16-47.
        ['2002:a9fe:a9fe::1', 'metadata'],
        ['2002:c0a8:101::1', 'private'],
        ['2002:808:808::1', 'public'],
        ['::', 'unspecified'],
        ['::1', 'loopback'],
        ['100::1', 'reserved'],
        ['100:0:0:1::1', 'reserved'],
        ['2001:1::1', 'reserved'],
        ['2001:1::2', 'reserved'],
        ['2001:1::3', 'reserved'],
        ['2001:2::1', 'private'],
        ['2001:3::1', 'reserved'],
        ['2001:4:112::1', 'reserved'],
        ['2001:10::1', 'reserved'],
        ['2001:20::1', 'reserved'],
        ['2001:30::1', 'reserved'],
        ['2001:1ff::1', 'reserved'],
        ['2001:db8::1', 'reserved'],
        ['2620:4f:8000::1', 'reserved'],
        ['3fff::1', 'reserved'],
        ['3fff:fff:ffff::1', 'reserved'],
        ['5f00::1', 'reserved'],
        ['fc00::1', 'private'],
        ['fdff::1', 'private'],
        ['fe80::1', 'link-local'],
        ['febf::1', 'link-local'],
        ['ff02::1', 'reserved'],
        // Outside global unicast 2000::/3: unassigned, never an origin.
        ['4000::1', 'reserved'],
        ['::1:0:0:1', 'reserved'],
        // Just outside the special ranges: ordinary global unicast.
        ['2001:200::1', 'public'],
        ['2001:db9::1', 'public'],
        ['2620:4f:8001::1', 'public'],
        ['3fff:1000::1', 'public'],
        ['2a00:1450:4001::1', 'public'],
      ];
      for (const [addr, cls] of table) assert.equal(classifyAddress(addr), cls, addr);
    });

    it('refuses IPv6 literals that a translator would send to loopback or metadata, naming the range', () => {
      const open = new UrlPolicy('*');
      const closed = new UrlPolicy('');
      assert.match(
        closed.precheck('http://[::ffff:0:7f00:2]/a.apk')!,
        /::ffff:0:7f00:2, a loopback address \(IPv4 127\.0\.0\.2 in IPv4-translated \(SIIT\) ::ffff:0:0:0\/96\); add the host/,
      );
      // Trusting loopback 127.0.0.1 alone does not open 127.0.0.2, whatever the IPv6 spelling.
      assert.match(new UrlPolicy('127.0.0.1').precheck('http://[::ffff:0:7f00:2]/')!, /loopback address/);
      assert.match(open.precheck('http://[::ffff:0:a9fe:a9fe]/')!, /metadata address .*never allowed/);
      assert.match(
        open.precheck('http://[64:ff9b:1::a9fe:a9fe]/')!,
        /local-use NAT64 64:ff9b:1::\/48\), which is never allowed/,
      );
      assert.match(
        open.precheck('http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/')!,
        /Teredo 2001::\/32\), which is never allowed/,
      );
      assert.match(open.precheck('http://[2001:db8::1]/')!, /documentation 2001:db8::\/32/);
      assert.match(open.precheck('http://[100::1]/')!, /discard-only/);
      assert.equal(open.precheck('http://[2001:2::1]/'), undefined, 'benchmarking is private: the allow-list opens it');
      assert.match(
        closed.precheck('http://[2001:2::1]/')!,
        /a private address \(benchmarking 2001:2::\/48\); add the host/,
      );
    });

    it('rejects a malformed allow-list entry by name', () => {
      assert.throws(() => new UrlPolicy('10.0.0.0/8, 10.0.0.0/33'), /"10\.0\.0\.0\/33"/);
      assert.throws(() => new UrlPolicy('http://agent'), /"http:\/\/agent"/);
      assert.throws(
        () => urlPolicyFor({ allowedHosts: 'a b/c', deviceRegistry: '', defaultAgentUrl: '' }),
        /DT_ALLOWED_HOSTS/,
      );
    });

    it('prechecks schemes, credentials, metadata names and IP literals without DNS', () => {
      const p = new UrlPolicy('10.0.0.0/8');
      assert.match(p.precheck('file:///etc/passwd')!, /scheme file:/);
      assert.match(p.precheck('ftp://example.com/a.apk')!, /scheme ftp:/);
      assert.match(p.precheck('http://user:pw@example.com/a.apk')!, /credentials/);
      assert.match(p.precheck('http://169.254.169.254/latest/meta-data/')!, /metadata address, which is never allowed/);
      assert.match(p.precheck('http://[fd00:ec2::254]/')!, /metadata/);
      assert.match(p.precheck('http://metadata.google.internal./computeMetadata/v1/')!, /metadata service/);
      assert.match(p.precheck('http://0x7f000001/')!, /127\.0\.0\.1, a loopback address/);
      assert.match(
        p.precheck('http://192.168.0.10/')!,
        /private address; add the host or its network to DT_ALLOWED_HOSTS/,
      );
      assert.equal(p.precheck('http://10.20.30.40:7301/'), undefined);
      assert.equal(p.precheck('https://apk.example.com/a.apk'), undefined);
      // '*' trusts private networks, never metadata.
      assert.match(new UrlPolicy('*').precheck('http://169.254.169.254/')!, /never allowed/);
    });
  });

  describe('APK downloads', () => {
    let tmp: string;
    let internal: Awaited<ReturnType<typeof server>>;
    let origin: Awaited<ReturnType<typeof server>>;
    let dispatchers: Dispatcher[] = [];

    function cacheWith(policy: UrlPolicy): ApkCache {
      const dispatcher = createDispatcher(policy);
      dispatchers.push(dispatcher);
      return new ApkCache({ dir: path.join(tmp, `c${dispatchers.length}`), maxBytes: 1024 * 1024, dispatcher });
    }

    before(async () => {
      tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'dt-policy-'));
      // Stands for a service on the worker's network that tasks must not reach.
      internal = await server((_req, res) => res.writeHead(200).end('internal secret'));
      origin = await server((req, res) => {
        const u = new URL(req.url!, 'http://x');
        if (u.pathname === '/ok.apk') return void res.writeHead(200, { 'content-length': 5 }).end('apk!!');
        if (u.pathname === '/to-loopback.apk')
          return void res.writeHead(302, { location: `${internal.url}/secret.apk` }).end();
        if (u.pathname === '/to-localhost.apk')
          return void res.writeHead(307, { location: `http://localhost:${internal.port}/secret.apk` }).end();
        if (u.pathname === '/to-metadata.apk')
          return void res.writeHead(302, { location: 'http://169.254.169.254/latest/meta-data/iam' }).end();
        if (u.pathname === '/to-file.apk') return void res.writeHead(301, { location: 'file:///etc/passwd' }).end();
        const hop = /^\/hop\/(\d+)$/.exec(u.pathname);
        if (hop) return void res.writeHead(302, { location: `/hop/${Number(hop[1]) + 1}` }).end();
        res.writeHead(404).end();
      });
    });

    after(async () => {
      for (const d of dispatchers) await d.close();
      dispatchers = [];
      await internal.close();
      await origin.close();
      await fsp.rm(tmp, { recursive: true, force: true });
    });

    it('refuses file:// and ftp:// APK URLs', async () => {
      const cache = cacheWith(new UrlPolicy('*'));
      await assert.rejects(cache.resolve('file:///etc/passwd'), refused(/only http and https/));
      await assert.rejects(cache.resolve('ftp://127.0.0.1/app.apk'), refused(/only http and https/));
    });

    it('refuses cloud metadata addresses and names even when every private address is allowed', async () => {
      const cache = cacheWith(new UrlPolicy('*'));
      await assert.rejects(
        cache.resolve('http://169.254.169.254/latest/meta-data/app.apk'),
        refused(/169\.254\.169\.254, a metadata address/),
      );
      await assert.rejects(cache.resolve('http://[fd00:ec2::254]/app.apk'), refused(/metadata address/));
      await assert.rejects(
        cache.resolve('http://metadata.google.internal/computeMetadata/v1/app.apk'),
        refused(/metadata service/),
      );
      await assert.rejects(cache.resolve('http://169.254.1.1/app.apk'), refused(/link-local address/));
    });

    it('refuses IPv6 translation forms of loopback and metadata before connecting, as literals and as DNS answers', async () => {
      const lookup = fakeDns({
        'siit.example.com': ['::ffff:0:7f00:2'],
        'nat64.example.com': ['64:ff9b:1::a9fe:a9fe'],
        'teredo.example.com': ['2001:0:4136:e378:8000:63bf:80ff:fffe'],
      });
      const cache = cacheWith(new UrlPolicy('10.0.0.0/8', { lookup }));
      const trustAll = cacheWith(new UrlPolicy('*', { lookup }));
      await assert.rejects(
        cache.resolve(`http://[::ffff:0:7f00:2]:${internal.port}/secret.apk`),
        refused(/loopback address/),
      );
      await assert.rejects(
        cache.resolve(`http://siit.example.com:${internal.port}/secret.apk`),
        refused(/resolves to ::ffff:0:7f00:2, a loopback address/),
      );
      await assert.rejects(
        trustAll.resolve('http://[::ffff:0:a9fe:a9fe]/latest/meta-data/a.apk'),
        refused(/metadata address/),
      );
      await assert.rejects(trustAll.resolve('http://nat64.example.com/a.apk'), refused(/local-use NAT64/));
      await assert.rejects(trustAll.resolve('http://teredo.example.com/a.apk'), refused(/Teredo/));
      await assert.rejects(trustAll.resolve('http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/a.apk'), refused(/Teredo/));
      assert.deepEqual(internal.hits, [], 'the internal server was never reached');
    });

    it('refuses a loopback origin unless it is on the allow-list', async () => {
      await assert.rejects(
        cacheWith(new UrlPolicy('')).resolve(`${origin.url}/ok.apk`),
        refused(/127\.0\.0\.1, a loopback address/),
      );
      const ok = await cacheWith(new UrlPolicy('127.0.0.1')).resolve(`${origin.url}/ok.apk`);
      assert.equal(ok.size, 5);
    });

    it('refuses a host name that resolves to a private address, checking every address it resolves to', async () => {
      const lookup = fakeDns({
        'apk.example.com': ['10.1.2.3'],
        'mixed.example.com': ['93.184.216.34', '192.168.7.7'],
      });
      const cache = cacheWith(new UrlPolicy('', { lookup }));
      await assert.rejects(
        cache.resolve('http://apk.example.com/app.apk'),
        refused(/apk\.example\.com resolves to 10\.1\.2\.3, a private address/),
      );
      await assert.rejects(cache.resolve('http://mixed.example.com/app.apk'), refused(/resolves to 192\.168\.7\.7/));
    });

    it('refuses localhost through the real resolver when loopback is not allow-listed', async () => {
      const cache = cacheWith(new UrlPolicy('10.0.0.0/8'));
      await assert.rejects(
        cache.resolve(`http://localhost:${origin.port}/ok.apk`),
        refused(/localhost resolves to (127\.0\.0\.1|::1), a loopback address/),
      );
    });

    it('allows a trusted lab host by name and refuses its redirect to loopback', async () => {
      // origin.lab.test is trusted by name; it resolves to this machine, which itself is not trusted.
      const policy = new UrlPolicy('origin.lab.test', { lookup: fakeDns({ 'origin.lab.test': ['127.0.0.1'] }) });
      const cache = cacheWith(policy);
      const base = `http://origin.lab.test:${origin.port}`;
      assert.equal((await cache.resolve(`${base}/ok.apk`)).size, 5);
      await assert.rejects(cache.resolve(`${base}/to-loopback.apk`), refused(/127\.0\.0\.1, a loopback address/));
      await assert.rejects(cache.resolve(`${base}/to-localhost.apk`), refused(/localhost resolves to/));
      assert.deepEqual(internal.hits, [], 'the internal server was never reached');
    });

    it('refuses redirects to metadata addresses and to file://', async () => {
      const cache = cacheWith(new UrlPolicy('127.0.0.1'));
      await assert.rejects(cache.resolve(`${origin.url}/to-metadata.apk`), refused(/metadata address/));
      await assert.rejects(cache.resolve(`${origin.url}/to-file.apk`), refused(/scheme file:/));
    });

    it('stops after five redirects', async () => {
      const cache = cacheWith(new UrlPolicy('127.0.0.1'));
      await assert.rejects(cache.resolve(`${origin.url}/hop/0`), refused(/more than 5 redirects/));
      assert.equal(origin.hits.filter((h) => h.startsWith('/hop/')).length, 6, 'the first request and five redirects');
    });
  });

  describe('device agents and report sinks', () => {
    let dispatcher: Dispatcher;
    before(() => {
      dispatcher = createDispatcher(new UrlPolicy('127.0.0.1'));
    });
    after(async () => {
      await dispatcher.close();
    });

    it('refuses an agent at a metadata or private address as UrlRefused, not as a retryable AgentUnavailable', async () => {
      await assert.rejects(
        agentCall({ dispatcher }, 'http://169.254.169.254', 'sim-1', ''),
        refused(/device agent http:\/\/169\.254\.169\.254/),
      );
      await assert.rejects(
        agentCall({ dispatcher }, 'http://10.0.0.7:7301', 'sim-1', 'reset', {}),
        refused(/10\.0\.0\.7, a private address/),
      );
    });

    it('refuses an HTTP report sink at a private address', async () => {
      const runsDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'dt-sink-policy-'));
      try {
        await fsp.mkdir(path.join(runsDir, 't1', 'd1', 'report'), { recursive: true });
        await fsp.writeFile(path.join(runsDir, 't1', 'd1', 'report', 'summary.json'), '{}');
        const acts = createReportSinkActivities({ runsDir, sink: 'http://192.168.50.5:8080/reports', dispatcher });
        await assert.rejects(
          new MockActivityEnvironment(undefined, { logger: new DefaultLogger('ERROR') }).run(acts.uploadReport, {
            taskId: 't1',
            deviceId: 'd1',
          }),
          refused(/report sink http:\/\/192\.168\.50\.5:8080\/reports.*private address/),
        );
      } finally {
        await fsp.rm(runsDir, { recursive: true, force: true });
      }
    });

    it('refuses a report sink URL that carries credentials', () => {
      assert.throws(
        () => createReportSinkActivities({ runsDir: '/tmp', sink: 'https://user:pw@sink.example.com/r', dispatcher }),
        /DT_REPORT_SINK_TOKEN/,
      );
    });
  });

  describe('agents named by tasks', () => {
    const base = {
      taskId: 't1',
      apkUrl: 'https://apk.example.com/a.apk',
      packageName: 'com.example.app',
      traversal: { durationSec: 1 },
    };

    it('dead-letters an agentUrl that is neither in the registry nor on the allow-list', () => {
      const agents = loadDeviceRegistry('', 'http://10.0.0.5:7301');
      const policy = new UrlPolicy('lab.internal');
      const cases = [
        { ...base, deviceId: 'sim-1', agentUrl: 'http://attacker.example.com:7301' },
        { ...base, deviceId: 'sim-1', agentUrl: 'http://10.0.0.99:7301' },
        { ...base, devices: [{ deviceId: 'sim-1', agentUrl: 'https://evil.example.net' }] },
      ];
      for (const c of cases) {
        assert.throws(
          () => parseTask(JSON.stringify(c), agents, { policy }),
          (err: unknown) =>
            err instanceof InvalidTaskError &&
            err.problems.some((p) =>
              /agentUrl: .* is not an agent of the device registry and its host is not on DT_ALLOWED_HOSTS/.test(p),
            ),
        );
      }
    });

    it('dead-letters agent URLs at metadata addresses whatever the allow-list says', () => {
      const agents = loadDeviceRegistry('', 'http://10.0.0.5:7301');
      assert.throws(
        () =>
          parseTask(JSON.stringify({ ...base, deviceId: 'sim-1', agentUrl: 'http://169.254.169.254/' }), agents, {
            policy: new UrlPolicy('*'),
          }),
        /agentUrl: refused by the URL policy: 169\.254\.169\.254, a metadata address/,
      );
    });

    it('accepts agents of the registry and agents whose host is on the allow-list', () => {
      const agents = loadDeviceRegistry('', 'http://10.0.0.5:7301/');
      const policy = new UrlPolicy('*.lab.internal');
      const fromRegistry = parseTask(
        JSON.stringify({ ...base, deviceId: 'sim-1', agentUrl: 'http://10.0.0.5:7301' }),
        agents,
        { policy },
      );
      assert.equal(fromRegistry[0]!.agentUrl, 'http://10.0.0.5:7301');
      const allowed = parseTask(
        JSON.stringify({ ...base, deviceId: 'sim-1', agentUrl: 'http://rack3.lab.internal:7301' }),
        agents,
        { policy },
      );
      assert.equal(allowed[0]!.agentUrl, 'http://rack3.lab.internal:7301');
      // Without a policy only the registry counts.
      assert.throws(
        () =>
          parseTask(JSON.stringify({ ...base, deviceId: 'sim-1', agentUrl: 'http://rack3.lab.internal:7301' }), agents),
        /not an agent of the device registry/,
      );
    });

    it('dead-letters file://, ftp:// and metadata APK URLs before any workflow starts', () => {
      const agents = loadDeviceRegistry('', 'http://10.0.0.5:7301');
      for (const [apkUrl, rule] of [
        ['file:///etc/passwd', /apkUrl: must use http or https, not file:/],
        ['ftp://example.com/a.apk', /apkUrl: must use http or https, not ftp:/],
        [
          'http://169.254.169.254/latest/meta-data/',
          /apkUrl: refused by the URL policy: 169\.254\.169\.254, a metadata address/,
        ],
        [
          'http://metadata.google.internal/x.apk',
          /apkUrl: refused by the URL policy: metadata\.google\.internal is a cloud metadata service/,
        ],
        ['http://192.168.1.20/a.apk', /apkUrl: refused by the URL policy: 192\.168\.1\.20, a private address/],
      ] as const) {
        assert.throws(
          () =>
            parseTask(JSON.stringify({ ...base, deviceId: 'sim-1', apkUrl }), agents, { policy: new UrlPolicy('') }),
          rule,
        );
      }
    });
  });

  describe('end to end', function () {
    let stack: Stack;
    before(async function () {
      // The worker trusts 127.0.0.1 (the test servers); apk.internal.test resolves into a private network.
      const lookup = fakeDns({ 'apk.internal.test': ['192.168.77.1'] });
      stack = await startStack({
        devices: ['pol-1'],
        apks: [{ name: 'pol.apk', size: 64 * 1024 }],
        starter: true,
        urlPolicy: new UrlPolicy('127.0.0.1', { lookup }),
      });
    });
    after(async function () {
      await stack?.stop();
    });

    it('a task whose APK host resolves to a private address fails once as UrlRefused and still cleans the device', async function () {
      await stack.push(
        task(stack, { taskId: 'pol-private', deviceId: 'pol-1', apkUrl: 'http://apk.internal.test/app.apk' }),
      );
      const r = await stack.waitResult('pol-private', 'pol-1');
      assert.equal(r.status, 'failed');
      assert.equal(r.error?.type, 'UrlRefused');
      assert.equal(r.error?.nonRetryable, true);
      assert.match(r.error!.message, /apk\.internal\.test resolves to 192\.168\.77\.1, a private address/);
      assert.ok(
        stack.agent.calls.some((c) => c.deviceId === 'pol-1' && c.op === 'uninstall'),
        'cleanup ran',
      );
      assert.equal(
        stack.agent.calls.filter((c) => c.deviceId === 'pol-1' && c.op === 'install').length,
        0,
        'nothing was installed',
      );
    });

    it('tasks naming a metadata APK URL or a foreign agent are dead-lettered and the starter goes on', async function () {
      await stack.push(
        task(stack, {
          taskId: 'pol-meta',
          deviceId: 'pol-1',
          apkUrl: 'http://169.254.169.254/latest/meta-data/app.apk',
        }),
      );
      await stack.push(
        task(stack, {
          taskId: 'pol-agent',
          deviceId: 'pol-1',
          apkUrl: stack.apks['pol.apk']!.url,
          agentUrl: 'http://agent.attacker.example:7301',
        }),
      );
      await stack.push(task(stack, { taskId: 'pol-ok', deviceId: 'pol-1', apkUrl: stack.apks['pol.apk']!.url }));
      assert.equal((await stack.waitResult('pol-ok', 'pol-1')).status, 'completed');
      const dead = (await stack.redis.lrange(`${stack.prefix}traversal:tasks:dead`, 0, -1)).map(
        (x) => JSON.parse(x) as { reason: string; payload: string },
      );
      assert.match(
        dead.find((d) => d.payload.includes('pol-meta'))!.reason,
        /apkUrl: refused by the URL policy: 169\.254\.169\.254, a metadata address/,
      );
      assert.match(
        dead.find((d) => d.payload.includes('pol-agent'))!.reason,
        /agentUrl: "http:\/\/agent\.attacker\.example:7301" is not an agent of the device registry/,
      );
    });
  });
});
