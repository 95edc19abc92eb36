/**
 * Where a real worker process listens. Linux routes all of 127.0.0.0/8 to the loopback interface,
 * so a second loopback address (127.0.0.2) is a second address of this host that a listener bound
 * to one address does not answer: a connection there is refused, while one bound to every address
 * (0.0.0.0 or ::) would accept it.
 *
 * Claims: the artifact and metrics server binds DT_ARTIFACT_HOST, 127.0.0.1 by default; the SDK's
 * own metrics exporter listens on 127.0.0.1 whatever DT_ARTIFACT_HOST says.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { request } from 'undici';
import { freePort } from '../src/net/ports';
import { spawnWorker, type Proc } from './support/procs';

/** The error code of a TCP connection to host:port, or 'connected'. */
function dial(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port }, () => {
      s.destroy();
      resolve('connected');
    });
    s.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? String(err)));
  });
}

/** The TCP sockets a process listens on, read from /proc (the SDK's native threads included). */
function listenersOf(pid: number): { address: string; port: number }[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`, { encoding: 'utf8' }));
    if (m) inodes.add(m[1]!);
  }
  const out: { address: string; port: number }[] = [];
  for (const table of ['tcp', 'tcp6']) {
    for (const line of readFileSync(`/proc/${pid}/net/${table}`, 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      // local address, state 0A (LISTEN), inode
      if (f.length < 10 || f[3] !== '0A' || !inodes.has(f[9]!)) continue;
      const [hex, port] = f[1]!.split(':') as [string, string];
      // Each 32-bit word of the address is written in host (little-endian) order.
      const words = hex.match(/.{8}/g)!.map((w) => Buffer.from(w, 'hex').reverse());
      const bytes = Buffer.concat(words);
      const address =
        bytes.length === 4
          ? [...bytes].join('.')
          : (bytes
              .toString('hex')
              .match(/.{4}/g)!
              .map((g) => g.replace(/^0+(?=.)/, ''))
              .join(':') as string);
      out.push({ address, port: parseInt(port, 16) });
    }
  }
  return out;
}

async function status(url: string): Promise<number> {
  const res = await request(url);
  await res.body.text();
  return res.statusCode;
}

describe('bind addresses of a worker process', function () {
  this.timeout(180_000);
  let tmp: string;
  const workers: Proc[] = [];
  interface Started {
    pid: number;
    artifact: URL;
    listeners: { address: string; port: number }[];
  }
  /** A worker with DT_ARTIFACT_HOST unset, and one with DT_ARTIFACT_HOST=127.0.0.2. */
  let byDefault: Started;
  let moved: Started;

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'dt-bind-'));
    const start = async (name: string, env: Record<string, string>): Promise<Started> => {
      const id = randomUUID().slice(0, 8);
      const proc = await spawnWorker({
        taskQueue: `tq-bind-${id}`,
        redisKeyPrefix: `tbind${id}:`,
        logDir: path.join(tmp, name, 'logs'),
        dataDir: path.join(tmp, name, 'data'),
        env,
      });
      workers.push(proc);
      const started = proc.logs().find((e) => e.msg === 'worker started')!;
      // Listening is done by then: the artifact server binds last, after the SDK's exporter.
      return { pid: proc.pid, artifact: new URL(String(started.artifactServer)), listeners: listenersOf(proc.pid) };
    };
    // A port that was free on 127.0.0.1 a moment ago, so a refusal there is the worker's doing.
    const movedPort = await freePort();
    [byDefault, moved] = await Promise.all([
      start('default', {}),
      start('moved', { DT_ARTIFACT_HOST: '127.0.0.2', DT_ARTIFACT_PORT: String(movedPort) }),
    ]);
    console.log(
      `      listeners: default ${JSON.stringify(byDefault.listeners)}, moved ${JSON.stringify(moved.listeners)}`,
    );
  });
  after(async () => {
    await Promise.all(workers.map((w) => w.stop()));
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  /** The SDK exporter's port: the worker's one listener that is not the artifact server. */
  function sdkPortOf(w: Started): number {
    const others = w.listeners.filter((l) => l.port !== Number(w.artifact.port));
    assert.equal(others.length, 1, `one listener besides the artifact server: ${JSON.stringify(w.listeners)}`);
    return others[0]!.port;
  }

  /** The worker's artifact server listens on `host` alone, serves health and metrics there, and refuses `other`. */
  async function assertArtifactServerOn(w: Started, host: string, other: string): Promise<void> {
    const port = Number(w.artifact.port);
    assert.deepEqual(
      w.listeners.filter((l) => l.port === port),
      [{ address: host, port }],
    );
    assert.equal(await status(`http://${host}:${port}/healthz`), 200);
    assert.equal(await status(`http://${host}:${port}/metrics`), 200);
    assert.equal(await dial(other, port), 'ECONNREFUSED', `${other}, another address of this host, is refused`);
    assert.equal(w.artifact.hostname, host, 'the URL it reports');
  }

  it('the artifact and metrics server listens on 127.0.0.1 only when DT_ARTIFACT_HOST is not set', async () => {
    await assertArtifactServerOn(byDefault, '127.0.0.1', '127.0.0.2');
  });

  it('the artifact and metrics server listens only on DT_ARTIFACT_HOST when it is set', async () => {
    await assertArtifactServerOn(moved, '127.0.0.2', '127.0.0.1');
  });

  it("the SDK's metrics exporter listens on 127.0.0.1 only, DT_ARTIFACT_HOST moving nothing", async () => {
    for (const w of [byDefault, moved]) {
      const sdkPort = sdkPortOf(w);
      assert.deepEqual(
        w.listeners.filter((l) => l.port === sdkPort),
        [{ address: '127.0.0.1', port: sdkPort }],
      );
      assert.match(await request(`http://127.0.0.1:${sdkPort}/metrics`).then((r) => r.body.text()), /^# (HELP|TYPE) /m);
      assert.equal(await dial('127.0.0.2', sdkPort), 'ECONNREFUSED', `127.0.0.2:${sdkPort} is refused`);
    }
  });
});
