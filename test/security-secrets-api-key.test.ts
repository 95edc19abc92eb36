/**
 * The Temporal API key is sent. A real HTTP/2 proxy on 127.0.0.1 stands in front of the dev server
 * (which checks no key itself): it forwards a gRPC call only when its `authorization` header is
 * `Bearer <key>`, and answers UNAUTHENTICATED otherwise, recording every call either way. The real
 * worker and starter processes, configured through TEMPORAL_API_KEY, run a task through it; without
 * the key, or with a wrong one, they are refused and exit.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { starterKeys } from '../src/contract/redis-keys';
import { AgentSimulator } from '../sim/agent-sim';
import { spawnStarter, spawnWorker } from './support/procs';
import { FaultSuite } from './support/fault-suite';
import { waitForResult } from '../dev/wait';

const hex = (n: number) => randomBytes(n).toString('hex');

/** One gRPC call as the proxy saw it. */
interface SeenCall {
  path: string;
  authorization?: string;
  userAgent?: string;
  forwarded: boolean;
}

/** An HTTP/2 (h2c) proxy that forwards gRPC calls carrying `authorization: Bearer <key>` and refuses the rest. */
class KeyCheckingProxy {
  readonly calls: SeenCall[] = [];
  private readonly server = http2.createServer();
  private readonly sessions = new Set<http2.ServerHttp2Session>();
  private upstream?: http2.ClientHttp2Session;

  constructor(
    private readonly target: string,
    private readonly key: string,
  ) {}

  /** Listens on 127.0.0.1; resolves to `host:port`. */
  async start(): Promise<string> {
    this.upstream = http2.connect(`http://${this.target}`);
    this.upstream.on('error', () => undefined);
    this.server.on('session', (s) => {
      this.sessions.add(s);
      s.on('close', () => this.sessions.delete(s));
      s.on('error', () => undefined);
    });
    this.server.on('stream', (stream, headers) => this.handle(stream, headers));
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    return `127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  private handle(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    stream.on('error', () => undefined);
    const authorization = headers.authorization;
    const forwarded = authorization === `Bearer ${this.key}`;
    this.calls.push({ path: String(headers[':path']), authorization, userAgent: headers['user-agent'], forwarded });
    if (!forwarded) {
      // A trailers-only gRPC response: status 16 is UNAUTHENTICATED.
      stream.respond(
        {
          ':status': 200,
          'content-type': 'application/grpc',
          'grpc-status': '16',
          'grpc-message': 'missing or wrong API key',
        },
        { endStream: true },
      );
      return;
    }
    const up = this.upstream!.request({ ...headers });
    up.on('error', () => {
      if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
    });
    stream.on('close', () => {
      if (!up.destroyed) up.close(http2.constants.NGHTTP2_CANCEL);
    });
    stream.pipe(up);
    let trailers: http2.IncomingHttpHeaders | undefined;
    up.on('trailers', (t) => (trailers = t));
    stream.on('wantTrailers', () => stream.sendTrailers(withoutPseudo(trailers ?? { 'grpc-status': '0' })));
    up.on('response', (h) => {
      if (stream.destroyed) return;
      if (h['grpc-status'] !== undefined) {
        // Trailers-only answer (an error): pass it on as it is.
        stream.respond(h, { endStream: true });
        return;
      }
      stream.respond(h, { waitForTrailers: true });
      up.pipe(stream);
    });
  }

  async close(): Promise<void> {
    for (const s of this.sessions) s.destroy();
    this.upstream?.destroy();
    await new Promise((r) => this.server.close(r));
  }
}

function withoutPseudo(h: http2.IncomingHttpHeaders): http2.OutgoingHttpHeaders {
  return Object.fromEntries(Object.entries(h).filter(([k]) => !k.startsWith(':')));
}

describe('the Temporal API key, checked by a proxy in front of the server', function () {
  this.timeout(180_000);
  const suite = new FaultSuite('key');
  const { id, prefix, taskQueue, procs } = suite;
  const key = `tk-${hex(16)}`;
  const deviceId = `key-${id}`;
  let proxy: KeyCheckingProxy;
  let address: string;
  let apkUrl: string;
  let agent: AgentSimulator;

  const service = (name: string, env: Record<string, string>) => ({
    temporalAddress: address,
    taskQueue,
    redisKeyPrefix: prefix,
    logDir: suite.logDir,
    dataDir: path.join(suite.dir, name),
    starterId: `${name}-${id}`,
    env: {
      // The proxy speaks plaintext; an API key would otherwise switch TLS on.
      TEMPORAL_TLS: 'false',
      DT_DEFAULT_AGENT_URL: agent.url,
      ...env,
    },
  });

  before(async () => {
    proxy = new KeyCheckingProxy(process.env.TEST_TEMPORAL_ADDRESS!, key);
    address = await proxy.start();
    await suite.start();
    ({ url: apkUrl } = await suite.addApk('key.apk', 128 * 1024));
    agent = new AgentSimulator({ devices: [deviceId], coldStartMs: [50, 100] });
    await agent.start();
  });
  after(async () => {
    await suite.stopProcs();
    const keys = await suite.clients?.redis.keys(`${prefix}*`);
    if (keys?.length) await suite.redis.del(...keys);
    await agent?.close();
    await proxy?.close();
    await suite.close();
  });

  it('the worker and the starter send the key on every call and run a task through the proxy', async () => {
    const worker = await spawnWorker(service('worker', { TEMPORAL_API_KEY: key }));
    procs.push(worker);
    const starter = await spawnStarter(service('starter', { TEMPORAL_API_KEY: key }));
    procs.push(starter);
    const taskId = `tkey-${id}`;
    await suite.redis.lpush(
      starterKeys(`starter-${id}`, prefix).tasks,
      JSON.stringify({
        taskId,
        deviceId,
        apkUrl,
        packageName: 'com.example.key',
        traversal: { durationSec: 1, extraArgs: ['--tick-ms', '100'] },
      }),
    );
    const result = await waitForResult(suite.redis, prefix, taskId, deviceId);
    assert.equal(result.status, 'completed', JSON.stringify(result.error));

    const methods = new Set(proxy.calls.map((c) => c.path.split('/').pop()));
    // The starter's signal and the worker's polls went through the proxy, not around it.
    for (const m of [
      'SignalWithStartWorkflowExecution',
      'PollWorkflowTaskQueue',
      'PollActivityTaskQueue',
      'RespondActivityTaskCompleted',
    ])
      assert.ok(methods.has(m), `${m} through the proxy (saw ${[...methods].join(', ')})`);
    const refused = proxy.calls.filter((c) => !c.forwarded);
    assert.deepEqual(refused, [], 'every call carried the key');
    const agents = new Set(proxy.calls.map((c) => (c.userAgent ?? '').split('/')[0]));
    console.log(
      `      ${proxy.calls.length} calls through the proxy, all with the key; clients: ${[...agents].join(', ')}`,
    );
    await starter.stop();
    await worker.stop();
  });

  it('a worker without the key and a starter with a wrong one are refused and exit', async () => {
    const before = proxy.calls.length;
    const worker = spawnWorker(service('worker-nokey', {}));
    await assert.rejects(worker, /worker exited before logging worker started[\s\S]*missing or wrong API key/);
    const starter = spawnStarter(service('starter-wrongkey', { TEMPORAL_API_KEY: `${key}-wrong` }));
    // grpc-js reports the refused first call only as a failed connection; the proxy's record shows why.
    await assert.rejects(
      starter,
      /starter exited before logging starter consuming[\s\S]*Failed to connect to Temporal server/,
    );
    const calls = proxy.calls.slice(before);
    assert.ok(calls.length > 0, 'both tried through the proxy');
    assert.ok(
      calls.every((c) => !c.forwarded),
      'nothing was forwarded',
    );
    assert.ok(
      calls.some((c) => c.authorization === undefined),
      'the worker sent no key',
    );
    assert.ok(
      calls.some((c) => c.authorization === `Bearer ${key}-wrong`),
      'the starter sent the wrong key',
    );
  });
});
