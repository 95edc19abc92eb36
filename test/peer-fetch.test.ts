/**
 * Peer fetch between two hosts' APK caches in one process: real Redis (the test run's), the real
 * peer directory, a real artifact server in front of host A's cache and a real, throttled origin.
 * The one thing added is a pause in host B's claim, to hold B at the exact moment of a race that
 * a busy machine produces now and then.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Dispatcher } from 'undici';
import { ApkCache } from '../src/apk-cache';
import { Metrics } from '../src/metrics';
import { createDispatcher } from '../src/net/dispatcher';
import { ArtifactServer } from '../src/worker/artifact-server';
import { PeerDirectory, type PeerDirectoryOptions } from '../src/worker/peer-directory';
import { ApkOrigin, type ApkInfo } from '../sim/origin';
import { APK_DIR } from '../dev/services';
import { connectClients, type Clients } from '../dev/clients';

const MiB = 1024 * 1024;

/** The real directory, whose claim first waits for `gate` (the moment the test picks). */
class GatedDirectory extends PeerDirectory {
  constructor(
    opts: PeerDirectoryOptions,
    private readonly gate: Promise<unknown>,
  ) {
    super(opts);
  }
  override async claim(sha256: string) {
    await this.gate;
    return super.claim(sha256);
  }
}

describe('peer fetch between two hosts', function () {
  const prefix = `pf${randomUUID().slice(0, 8)}:`;
  let dir: string;
  let clients: Clients;
  let origin: ApkOrigin;
  let dispatcher: Dispatcher;
  let server: ArtifactServer;
  let apk: ApkInfo & { url: string };

  before(async function () {
    dir = mkdtempSync(path.join(os.tmpdir(), 'dt-peer-fetch-'));
    clients = await connectClients();
    origin = new ApkOrigin({ dir: APK_DIR });
    await origin.start();
    apk = { ...(await origin.addApk('peer-fetch.apk', 4 * MiB)), url: '' };
    apk.url = origin.url('peer-fetch.apk');
    dispatcher = createDispatcher();
  });

  after(async function () {
    await server?.close();
    await dispatcher?.close();
    await origin?.close();
    await clients?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a host that claims the origin download just after another host let go of it fetches from that host', async function () {
    const directory = (hostId: string, baseUrl: () => string): PeerDirectoryOptions => ({
      redis: clients.redis,
      prefix,
      hostId,
      baseUrl,
      token: 'peer-fetch-test-token',
      urlTtlMs: 60_000,
    });
    let aUrl = '';
    const cacheA = new ApkCache({
      dir: path.join(dir, 'a'),
      maxBytes: 64 * MiB,
      dispatcher,
      peers: new PeerDirectory(directory('host-a', () => aUrl)),
    });
    server = new ArtifactServer({ cache: cacheA, metrics: new Metrics(), port: 0, token: 'peer-fetch-test-token' });
    aUrl = await server.start();

    // Host A downloads from the origin (4 MiB at 4 MiB/s); host B looks for holders at once (none
    // yet), and its claim comes only after A announced the APK and let go of its claim.
    origin.throttleBytesPerSec = 4 * MiB;
    const aDone = cacheA.resolve(apk.url, apk.sha256);
    const cacheB = new ApkCache({
      dir: path.join(dir, 'b'),
      maxBytes: 64 * MiB,
      dispatcher,
      peers: new GatedDirectory(
        directory('host-b', () => 'http://127.0.0.1:9'),
        aDone.catch(() => undefined),
      ),
    });
    const [a, b] = await Promise.all([aDone, cacheB.resolve(apk.url, apk.sha256)]);
    assert.equal(a.fromPeer, undefined, 'A took it from the origin');
    assert.equal(b.fromPeer, 'host-a', 'B took it from A');
    assert.equal(b.sha256, apk.sha256);
    const stats = origin.stats('peer-fetch.apk');
    assert.equal(stats.bytesServed, apk.size, `the origin sent ${stats.bytesServed / apk.size}× the APK`);
  });
});
