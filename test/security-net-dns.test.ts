/**
 * The URL policy against a real DNS server: a small UDP name server on 127.0.0.1 that this suite
 * controls, queried through a `dns.Resolver` pointed at it and handed to the worker's policy as its
 * lookup (the one seam production offers; its default is the system resolver, which a test cannot
 * steer without editing /etc/hosts). Requests go through the worker's own dispatcher
 * (createDispatcher + urlPolicyFor) to real HTTP servers on loopback addresses, so the checks
 * exercised are the ones made when a connection opens.
 *
 * Covered: DNS rebinding (an answer that changes from one look-up to the next), and unspecified and
 * multicast addresses refused as URLs and as DNS answers, even when every private and loopback
 * address is trusted.
 */
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { promises as dnsp } from 'node:dns';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { request, type Dispatcher } from 'undici';
import { urlPolicyFor } from '../src/device-registry';
import { InvalidTaskError } from '../src/contract/errors';
import { parseTask } from '../src/starter/task';
import type { LookupFn } from '../src/net/url-policy';
import { createDispatcher } from '../src/net/dispatcher';

/** Answers of one name: fixed lists, or a function called once per query (a rebinding name). */
interface Zone {
  A?: string[] | (() => string[]);
  AAAA?: string[] | (() => string[]);
}

const TYPE_A = 1;
const TYPE_AAAA = 28;

function ipv6Bytes(address: string): Buffer {
  const [head, tail] = address.includes('::') ? address.split('::') : [address, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

/** A UDP name server on 127.0.0.1 answering A and AAAA queries from `zones`; logs every query. */
async function startNameServer(zones: Record<string, Zone>): Promise<{
  server: string;
  queries: { name: string; type: number }[];
  close(): Promise<void>;
}> {
  const queries: { name: string; type: number }[] = [];
  const socket = dgram.createSocket('udp4');
  socket.on('message', (msg, from) => {
    // Question: labels from offset 12 up to a zero byte, then type and class.
    const labels: string[] = [];
    let at = 12;
    while (at < msg.length && msg[at] !== 0) {
      labels.push(msg.subarray(at + 1, at + 1 + msg[at]!).toString('ascii'));
      at += msg[at]! + 1;
    }
    const qEnd = at + 5;
    const name = labels.join('.').toLowerCase();
    const type = msg.readUInt16BE(at + 1);
    queries.push({ name, type });
    const zone = zones[name];
    const pick = type === TYPE_A ? zone?.A : type === TYPE_AAAA ? zone?.AAAA : undefined;
    const answers = typeof pick === 'function' ? pick() : (pick ?? []);
    const header = Buffer.alloc(12);
    header.writeUInt16BE(msg.readUInt16BE(0), 0);
    // Response, recursion desired and available; NXDOMAIN for names outside the zones.
    header.writeUInt16BE(zone ? 0x8180 : 0x8183, 2);
    header.writeUInt16BE(1, 4);
    header.writeUInt16BE(answers.length, 6);
    const records = answers.map((address) => {
      const rdata = type === TYPE_A ? Buffer.from(address.split('.').map(Number)) : ipv6Bytes(address);
      const rr = Buffer.alloc(12);
      rr.writeUInt16BE(0xc00c, 0); // the name, by pointer to the question
      rr.writeUInt16BE(type, 2);
      rr.writeUInt16BE(1, 4); // class IN
      rr.writeUInt32BE(0, 6); // TTL 0: nothing may keep an answer
      rr.writeUInt16BE(rdata.length, 10);
      return Buffer.concat([rr, rdata]);
    });
    socket.send(Buffer.concat([header, msg.subarray(12, qEnd), ...records]), from.port, from.address);
  });
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  return {
    server: `127.0.0.1:${socket.address().port}`,
    queries,
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}

/** A lookup through a resolver that asks only `server`, in the shape the policy takes. */
function lookupVia(server: string): LookupFn {
  const resolver = new dnsp.Resolver({ timeout: 5000, tries: 3 });
  resolver.setServers([server]);
  const none = (err: NodeJS.ErrnoException): string[] => {
    if (err.code === 'ENODATA') return [];
    throw err;
  };
  return async (hostname) => {
    const [v4, v6] = await Promise.all([
      resolver.resolve4(hostname).catch(none),
      resolver.resolve6(hostname).catch(none),
    ]);
    return [...v4.map((address) => ({ address, family: 4 })), ...v6.map((address) => ({ address, family: 6 }))];
  };
}

/** An HTTP server on `host:port` that records the paths it was asked for and closes each connection. */
async function listen(
  host: string,
  port: number,
  body: string,
): Promise<{ hits: string[]; port: number; close(): Promise<void> }> {
  const hits: string[] = [];
  const server = http.createServer((req, res) => {
    hits.push(req.url ?? '');
    res.writeHead(200, { connection: 'close' }).end(body);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    hits,
    port: (server.address() as AddressInfo).port,
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

type Server = Awaited<ReturnType<typeof listen>>;

/** Servers on one port at several addresses; retried when another process holds that port somewhere. */
async function onePort(hosts: [string, string][]): Promise<Server[]> {
  for (let attempt = 0; ; attempt++) {
    const first = await listen(hosts[0]![0], 0, hosts[0]![1]);
    const rest: Server[] = [];
    try {
      for (const [host, body] of hosts.slice(1)) rest.push(await listen(host, first.port, body));
      return [first, ...rest];
    } catch (err) {
      for (const s of [first, ...rest]) await s.close();
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt > 20) throw err;
    }
  }
}

/** Matcher for assert.rejects: the policy's refusal, with its message. */
function refused(pattern: RegExp) {
  return (err: unknown): boolean => {
    const e = err as { code?: string; message?: string };
    assert.equal(e.code, 'UrlRefused', `expected UrlRefused, got ${String(err)}`);
    assert.match(e.message ?? '', pattern);
    return true;
  };
}

async function fetchText(dispatcher: Dispatcher, url: string): Promise<string> {
  const res = await request(url, { dispatcher });
  return res.body.text();
}

describe('URL policy against a real name server', function () {
  this.timeout(60_000);
  let dns: Awaited<ReturnType<typeof startNameServer>>;
  /** Stands for a service on the worker's own network: loopback, on IPv4 and IPv6. */
  let internal: Server;
  let internal6: Server;
  /** A trusted lab server on 127.0.0.2, the same port. */
  let lab: Server;
  let port: number;
  let rebindAnswers = 0;
  const dispatchers: Dispatcher[] = [];

  before(async () => {
    [internal, internal6, lab] = (await onePort([
      ['127.0.0.1', 'internal secret'],
      ['::1', 'internal secret'],
      ['127.0.0.2', 'lab'],
    ])) as [Server, Server, Server];
    port = lab.port;
    dns = await startNameServer({
      // First the trusted lab address, then loopback, and so on: an attacker's rebinding name.
      'rebind.test': { A: () => [rebindAnswers++ % 2 === 0 ? '127.0.0.2' : '127.0.0.1'] },
      'zero4.test': { A: ['0.0.0.0'] },
      'zero6.test': { AAAA: ['::'] },
      'mcast4.test': { A: ['224.0.0.251'] },
      'mcast6.test': { AAAA: ['ff02::1'] },
      'lab-and-zero.test': { A: ['127.0.0.2', '0.0.0.0'] },
    });
  });
  beforeEach(() => {
    for (const s of [internal, internal6, lab]) s.hits.length = 0;
  });
  after(async () => {
    for (const d of dispatchers.splice(0)) await d.close();
    await dns?.close();
    for (const s of [internal, internal6, lab]) await s?.close();
  });

  /** The worker's dispatcher, built as createTraversalWorker builds it, resolving through `dns`. */
  function workerDispatcher(allowedHosts: string): Dispatcher {
    const policy = urlPolicyFor(
      { allowedHosts, deviceRegistry: '', defaultAgentUrl: '' },
      { lookup: lookupVia(dns.server) },
    );
    const d = createDispatcher(policy);
    dispatchers.push(d);
    return d;
  }

  it('a name that rebinds from a trusted address to loopback is looked up once per connection and refused on the connection that gets loopback', async () => {
    const dispatcher = workerDispatcher('127.0.0.2');
    const base = `http://rebind.test:${port}`;
    const aQueries = () => dns.queries.filter((q) => q.name === 'rebind.test' && q.type === TYPE_A).length;
    rebindAnswers = 0;
    const before = aQueries();

    assert.equal(await fetchText(dispatcher, `${base}/first`), 'lab');
    // One look-up for the connection: a check that asked the name again before connecting would
    // have been answered 127.0.0.1 and connected there.
    assert.equal(aQueries() - before, 1, 'one A query for the first connection');
    // The lab server closed that connection, so the next request opens a new one and asks again.
    await assert.rejects(
      fetchText(dispatcher, `${base}/second`),
      refused(/rebind\.test resolves to 127\.0\.0\.1, a loopback address; add the host/),
    );
    assert.equal(aQueries() - before, 2, 'asked again for the new connection');
    assert.equal(await fetchText(dispatcher, `${base}/third`), 'lab', 'the name still works when it answers the lab');
    assert.deepEqual(lab.hits, ['/first', '/third']);
    assert.deepEqual(internal.hits, [], 'loopback was never reached');
  });

  it('unspecified and multicast addresses are refused as URLs, even when every private and loopback address is trusted', async () => {
    const dispatcher = workerDispatcher('*');
    const cases: [string, RegExp][] = [
      [`http://0.0.0.0:${port}/`, /0\.0\.0\.0, an unspecified address, which is never allowed/],
      [`http://0.1.2.3:${port}/`, /0\.1\.2\.3, an unspecified address, which is never allowed/],
      [`http://[::]:${port}/`, /::, an unspecified address, which is never allowed/],
      [`http://224.0.0.251:${port}/`, /224\.0\.0\.251, a reserved address, which is never allowed/],
      [`http://239.255.255.250:${port}/`, /239\.255\.255\.250, a reserved address, which is never allowed/],
      [`http://[ff02::1]:${port}/`, /ff02::1, a reserved address \(multicast ff00::\/8\), which is never allowed/],
    ];
    for (const [url, why] of cases) await assert.rejects(fetchText(dispatcher, url), refused(why), url);
    // The starter's precheck dead-letters such a task before any workflow starts.
    const policy = urlPolicyFor({ allowedHosts: '*', deviceRegistry: '', defaultAgentUrl: '' });
    const agents = { agentFor: () => 'http://10.0.0.5:7301', knows: () => true };
    for (const [url, why] of cases) {
      const task = {
        taskId: 't1',
        deviceId: 'd1',
        apkUrl: url,
        packageName: 'com.example.app',
        traversal: { durationSec: 1 },
      };
      assert.throws(
        () => parseTask(JSON.stringify(task), agents, { policy }),
        (err: unknown) => err instanceof InvalidTaskError && err.problems.some((p) => why.test(p)),
        url,
      );
    }
    assert.deepEqual([...internal.hits, ...internal6.hits], [], 'nothing on this host was reached');
  });

  it('names that resolve to unspecified or multicast addresses are refused, even when every private and loopback address is trusted', async () => {
    const dispatcher = workerDispatcher('*');
    const cases: [string, RegExp][] = [
      ['zero4.test', /zero4\.test resolves to 0\.0\.0\.0, an unspecified address, which is never allowed/],
      ['zero6.test', /zero6\.test resolves to ::, an unspecified address, which is never allowed/],
      ['mcast4.test', /mcast4\.test resolves to 224\.0\.0\.251, a reserved address, which is never allowed/],
      [
        'mcast6.test',
        /mcast6\.test resolves to ff02::1, a reserved address \(multicast ff00::\/8\), which is never allowed/,
      ],
      // One bad address among good ones refuses the name: the socket could pick any of them.
      ['lab-and-zero.test', /lab-and-zero\.test resolves to 0\.0\.0\.0, an unspecified address/],
    ];
    for (const [name, why] of cases) {
      await assert.rejects(fetchText(dispatcher, `http://${name}:${port}/`), refused(why), name);
      assert.ok(
        dns.queries.some((q) => q.name === name),
        `${name} was asked of the name server (the refusal came after resolution)`,
      );
    }
    assert.deepEqual([...internal.hits, ...internal6.hits], [], 'nothing on this host was reached');
  });
});
