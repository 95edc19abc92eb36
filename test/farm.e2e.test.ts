/**
 * A farm of three phone hosts on one machine. Each host is a network namespace made by the suite
 * (root only; test/support/farm-hosts.ts) with its own address, its own worker process (DT_HOST_ID,
 * data folder, artifact server) and its own agent process (reporting that host as the owner of its
 * phones); a bridge joins them to the suite's Temporal dev server and Redis (through forwarders) and
 * to the APK origin. Without root (or with DT_TEST_FARM=loopback) the hosts share loopback instead,
 * and the suite says so.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import type { WorkflowHandle } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { promises as fsp, readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { APK_DIR, startAgentSim, type AgentSimProc } from '../dev/services';
import { Scope } from '../dev/scope';
import { testServers } from '../dev/clients';
import { placeFarm, type FarmPlacement } from './support/farm-hosts';
import { apkPeersKey } from '../src/contract/redis-keys';
import { readHostRecords } from '../src/worker/host-records';
import {
  budgetSignal,
  hostTaskQueue,
  progressQuery,
  type TraversalRequest,
  type TraversalResult,
} from '../src/contract/messages';
import type { ApkInfo } from '../sim/origin';
import { pendingActivity, spawnWorker, type Proc } from './support/procs';
import { faultRequest, FaultSuite, HEARTBEAT_MS, LONG_SEC, MiB } from './support/fault-suite';
import { waitFor, waitForResult } from '../dev/wait';

const HOSTS = ['farm-a', 'farm-b', 'farm-c'] as const;
type Host = (typeof HOSTS)[number];
/** DT_HOST_WAIT of the suite's workers. */
const HOST_WAIT_MS = 3000;
/** The steps bound to the phone's host. */
const DEVICE_STEPS = ['resolveApk', 'prepareDevice', 'installApp', 'runTraversal', 'uploadReport', 'cleanupDevice'];

const { EventType } = temporal.api.enums.v1;
/** DT_ARTIFACT_TOKEN shared by the farm's hosts. */
const FARM_TOKEN = 'farm-test-token-0123456789abcdef';

/** The JSON lines of a log file. */
function logLines(file: string): Record<string, unknown>[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, unknown>;
      } catch {
        return {};
      }
    });
}

/** Per activity run of a workflow: its type, the task queue it was scheduled on and the identity of the worker that started it. */
async function activityRuns(handle: WorkflowHandle): Promise<{ type: string; queue: string; identity: string }[]> {
  const history = await handle.fetchHistory();
  const scheduled = new Map<string, { type: string; queue: string }>();
  const runs: { type: string; queue: string; identity: string }[] = [];
  for (const e of history.events ?? []) {
    if (e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) {
      const a = e.activityTaskScheduledEventAttributes!;
      scheduled.set(String(e.eventId), { type: a.activityType?.name ?? '', queue: a.taskQueue?.name ?? '' });
    } else if (e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED) {
      const a = e.activityTaskStartedEventAttributes!;
      const s = scheduled.get(String(a.scheduledEventId));
      if (s) runs.push({ ...s, identity: a.identity ?? '' });
    }
  }
  return runs;
}

describe('a farm of hosts: per-host routing, waiting for a host that is down', function () {
  const suite = new FaultSuite('farm');
  const { taskQueue, prefix, logDir, dir } = suite;
  const phones: Record<Host, string[]> = { 'farm-a': ['fa-1', 'fa-2'], 'farm-b': ['fb-1', 'fb-2'], 'farm-c': ['fc-1'] };
  const agents = {} as Record<Host, AgentSimProc>;
  const workers = {} as Record<Host, Proc>;
  const scope = new Scope('farm');
  let farm: FarmPlacement;
  let apk: ApkInfo & { url: string };
  const hostOf = (host: Host) => farm.hosts.find((h) => h.name === host)!;

  const startWorker = async (host: Host, env: Record<string, string> = {}) => {
    const h = hostOf(host);
    const w = await spawnWorker({
      taskQueue,
      redisKeyPrefix: prefix,
      dataDir: path.join(dir, host),
      logDir,
      temporalAddress: farm.temporalAddress,
      redisUrl: farm.redisUrl,
      wrap: h.wrap,
      env: {
        DT_HOST_ID: host,
        DT_HOST_WAIT: `${HOST_WAIT_MS}ms`,
        DT_HEARTBEAT_TIMEOUT: `${HEARTBEAT_MS}ms`,
        DT_STICKY_TIMEOUT: '2s',
        DT_ARTIFACT_HOST: h.ip,
        DT_ALLOWED_HOSTS: farm.allowedHosts,
        // The hosts' artifact servers sign the URLs they hand each other with the farm's token.
        DT_ARTIFACT_TOKEN: FARM_TOKEN,
        // The farm's one report sink (a folder every namespace sees; an HTTP sink in a real farm).
        DT_REPORT_SINK: `file://${path.join(dir, 'sink')}`,
        ...env,
      },
    });
    suite.procs.push(w);
    workers[host] = w;
    return w;
  };
  const request = (host: Host, deviceId: string, fields: Partial<TraversalRequest> & { taskId: string }) =>
    faultRequest(apk, { agentUrl: agents[host].url, deviceId, ...fields });
  const waitResult = (taskId: string, deviceId: string, timeoutMs = 90_000): Promise<TraversalResult> =>
    waitForResult(suite.redis, prefix, taskId, deviceId, timeoutMs);

  /** Every phone of the farm, with its host. */
  const allPhones = HOSTS.flatMap((host) => phones[host].map((deviceId) => ({ host, deviceId })));
  /** One task on every phone of the farm, all for `apk`; the handles of its traversals by device. */
  const enqueueEverywhere = async (taskId: string, apk: { url: string; sha256: string }) => {
    const handles = new Map<string, WorkflowHandle>();
    for (const { host, deviceId } of allPhones)
      handles.set(
        deviceId,
        await suite.enqueue({ ...request(host, deviceId, { taskId }), apkUrl: apk.url, apkSha256: apk.sha256 }),
      );
    return handles;
  };
  /** Waits for every phone's result of `taskId` and checks each completed. */
  const allCompleted = async (taskId: string) => {
    const results = await Promise.all(allPhones.map(({ deviceId }) => waitResult(taskId, deviceId)));
    for (const r of results) assert.equal(r.status, 'completed', `${r.deviceId}: ${JSON.stringify(r.error)}`);
    return results;
  };

  before(async function () {
    const servers = testServers();
    farm = await placeFarm([...HOSTS], servers.address, servers.redisUrl);
    scope.add('farm hosts', () => farm.close());
    console.log(
      farm.kind === 'netns'
        ? `      hosts in network namespaces: ${farm.hosts.map((h) => `${h.name} ${h.ip}`).join(', ')}; services at ${farm.serviceIp}`
        : `      hosts on loopback (${farm.why})`,
    );
    await suite.start(farm.serviceIp);
    apk = await suite.addApk('farm.apk', 2 * MiB);
    for (const host of HOSTS) {
      const h = hostOf(host);
      agents[host] = await startAgentSim(scope, {
        devices: phones[host],
        coldStartMs: [50, 100],
        hostId: host,
        host: h.ip,
        wrap: h.wrap,
        logFile: path.join(logDir, `agent-${host}.log`),
      });
    }
    await Promise.all(HOSTS.map((h) => startWorker(h)));
  });

  after(async function () {
    await suite.stopProcs(Object.values(phones).flat());
    await scope.close();
    await suite.close();
  });

  it("runs every device step of a phone on its own host's queue and worker", async function () {
    const runs: { host: Host; deviceId: string; handle: WorkflowHandle }[] = [];
    for (const host of HOSTS)
      for (const deviceId of phones[host])
        runs.push({ host, deviceId, handle: await suite.enqueue(request(host, deviceId, { taskId: 'route' })) });
    for (const r of runs) {
      const result = await waitResult('route', r.deviceId);
      assert.equal(result.status, 'completed', JSON.stringify(result.error));
      const acts = await activityRuns(r.handle);
      const locate = acts.find((a) => a.type === 'locateDevice');
      assert.equal(locate?.queue, taskQueue, 'the host is looked up on the shared queue');
      for (const step of DEVICE_STEPS) {
        const ran = acts.filter((a) => a.type === step);
        assert.ok(ran.length > 0, `${r.deviceId}: ${step} ran`);
        for (const a of ran) {
          assert.equal(a.queue, hostTaskQueue(taskQueue, r.host), `${r.deviceId}: ${step} on its host's queue`);
          assert.ok(a.identity.endsWith(`/${r.host}`), `${r.deviceId}: ${step} ran on ${a.identity}, not ${r.host}`);
        }
      }
      // The agent installed from its own host's artifact server.
      const installs = logLines(agents[r.host].proc.logFile).filter(
        (l) => l.msg === 'agent call' && l.deviceId === r.deviceId && l.op === 'install',
      );
      assert.equal(installs.length, 1, `${r.deviceId} installed once`);
      assert.ok(
        String(installs[0]!.url ?? '').startsWith(`http://${hostOf(r.host).ip}:`),
        `${r.deviceId} installed from ${String(installs[0]!.url)}, its own host's artifact server`,
      );
    }
  });

  it('an APK leaves the origin once for the whole farm: the other hosts fetch it from the host that has it', async function () {
    const once = await suite.addApk('farm-once.apk', 8 * MiB);
    await enqueueEverywhere('once', once);
    const results = await allCompleted('once');
    const stats = suite.origin.stats('farm-once.apk');
    assert.equal(stats.bytesServed, once.size, `the origin sent ${stats.bytesServed / once.size}× the APK`);
    assert.equal(stats.gets, 1, 'one GET at the origin');
    // One host took it from the origin; every other host from a peer.
    const fetchedBy = new Map<Host, string | undefined>();
    allPhones.forEach(({ host }, i) => {
      const apkOf = results[i]!.apk;
      if (apkOf && !apkOf.fromCache) fetchedBy.set(host, apkOf.fromPeer);
    });
    assert.equal(fetchedBy.size, HOSTS.length, `each host downloaded once (${JSON.stringify([...fetchedBy])})`);
    const fromOrigin = [...fetchedBy].filter(([, peer]) => peer === undefined);
    assert.equal(fromOrigin.length, 1, `one host from the origin: ${JSON.stringify([...fetchedBy])}`);
    for (const [host, peer] of fetchedBy) if (peer) assert.notEqual(peer, host, 'a peer is another host');
    console.log(
      `      farm: ${HOSTS.length} hosts, ${allPhones.length} phones, one ${once.size / MiB} MiB APK: origin sent ${stats.bytesServed / once.size}× ` +
        `(${[...fetchedBy].map(([h, p]) => `${h} ← ${p ?? 'origin'}`).join(', ')})`,
    );
  });

  it('holders listed for an APK they no longer have (evicted, a wiped disk) cost no second origin download', async function () {
    const wiped = await suite.addApk('farm-wiped.apk', 8 * MiB);
    // Every host listed as a holder, as after a run whose caches were wiped since: each answers 404.
    const hosts = await readHostRecords(suite.redis, prefix);
    for (const host of HOSTS)
      await suite.redis.hset(apkPeersKey(wiped.sha256, prefix), host, hosts.get(host)!.artifactUrl);
    await enqueueEverywhere('wiped', wiped);
    await allCompleted('wiped');
    const stats = suite.origin.stats('farm-wiped.apk');
    assert.equal(stats.bytesServed, wiped.size, `the origin sent ${stats.bytesServed / wiped.size}× the APK`);
  });

  it('for contrast, with DT_PEER_FETCH=off every host downloads the APK from the origin', async function () {
    await Promise.all(HOSTS.map((h) => workers[h].stop()));
    await Promise.all(HOSTS.map((h) => startWorker(h, { DT_PEER_FETCH: 'off' })));
    try {
      const alone = await suite.addApk('farm-alone.apk', 8 * MiB);
      await enqueueEverywhere('alone', alone);
      await allCompleted('alone');
      const stats = suite.origin.stats('farm-alone.apk');
      assert.equal(stats.bytesServed, HOSTS.length * alone.size, 'one origin download per host');
      console.log(
        `      farm: the same shape without peer fetch: origin sent ${stats.bytesServed / alone.size}× the ${alone.size / MiB} MiB APK`,
      );
    } finally {
      await Promise.all(HOSTS.map((h) => workers[h].stop()));
      await Promise.all(HOSTS.map((h) => startWorker(h)));
    }
  });

  it('a peer failing mid-transfer: the download goes on from the origin with Range, and the APK is whole', async function () {
    const apkHalf = await suite.addApk('farm-half.apk', 6 * MiB);
    // A real HTTP server posing as a host that holds the APK: it sends half, then drops the connection.
    const bytes = await fsp.readFile(path.join(APK_DIR, 'farm-half.apk'));
    const half = Math.floor(bytes.length / 2);
    const flaky = http.createServer((req, res) => {
      res.writeHead(200, {
        'content-length': String(bytes.length),
        'content-type': 'application/vnd.android.package-archive',
      });
      res.write(bytes.subarray(0, half), () => res.destroy());
    });
    await new Promise<void>((resolve) => flaky.listen(0, farm.serviceIp, resolve));
    try {
      const port = (flaky.address() as { port: number }).port;
      await suite.redis.hset(apkPeersKey(apkHalf.sha256, prefix), 'farm-gone', `http://${farm.serviceIp}:${port}`);
      const deviceId = phones['farm-c'][0]!;
      await suite.enqueue({
        ...request('farm-c', deviceId, { taskId: 'half' }),
        apkUrl: apkHalf.url,
        apkSha256: apkHalf.sha256,
      });
      const r = await waitResult('half', deviceId);
      assert.equal(r.status, 'completed', JSON.stringify(r.error));
      assert.equal(r.apk?.sha256, apkHalf.sha256, 'the APK is whole: its sha256 checked');
      assert.equal(r.apk?.fromPeer, undefined, 'it ended at the origin');
      const stats = suite.origin.stats('farm-half.apk');
      assert.equal(stats.rangeGets, 1, 'the origin was asked for the rest with Range');
      // What reached the disk before the drop is kept: the origin sends at most the rest of the file.
      assert.ok(
        stats.bytesServed >= bytes.length - half && stats.bytesServed < bytes.length,
        `the origin sent ${stats.bytesServed} of ${bytes.length} bytes (the peer had sent ${half})`,
      );
    } finally {
      flaky.closeAllConnections();
      await new Promise((resolve) => flaky.close(resolve));
    }
  });

  it("a host's worker killed: its phones wait for it and say so, the others finish; restarted, its runs resume", async function () {
    const long = { durationSec: LONG_SEC, extraArgs: ['--tick-ms', '100'] };
    const handles = new Map<string, { host: Host; handle: WorkflowHandle }>();
    for (const host of HOSTS) {
      const deviceId = phones[host][0]!;
      handles.set(deviceId, {
        host,
        handle: await suite.enqueue(request(host, deviceId, { taskId: 'down', traversal: long })),
      });
    }
    // Every run traversing, with a checkpoint past the start.
    for (const [deviceId, { handle }] of handles)
      await waitFor(
        async () => Number((await pendingActivity(handle, 'runTraversal'))?.details?.screens ?? 0) >= 3,
        60_000,
        `${deviceId} traversing`,
      );
    const victim = 'farm-a';
    const waiting = handles.get(phones[victim][0]!)!.handle;
    const before = (await pendingActivity(waiting, 'runTraversal'))!.details!;
    const killedAt = Date.now();
    await workers[victim].kill('SIGKILL');

    // Its phone says it waits for its host; it never moves to another one.
    let waitingAt = 0;
    await waitFor(
      async () => {
        const p = await waiting.query(progressQuery);
        if (p.phase === 'waiting-for-host' && p.waitingForHost === victim) waitingAt = Date.now();
        return waitingAt > 0;
      },
      HEARTBEAT_MS + HOST_WAIT_MS + 30_000,
      `${phones[victim][0]} waiting for ${victim}`,
    );
    const desc = await waiting.describe();
    assert.equal(desc.searchAttributes?.TraversalPhase?.[0], 'waiting-for-host', 'the Web UI and the CLI find it');
    const meta = await waiting.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
    assert.match(
      String(meta.currentDetails),
      new RegExp(`waiting for host ${victim}: its worker has not taken the runTraversal step for 3 s`),
      'the Web UI says which host it waits for',
    );

    // The other hosts finish their runs meanwhile.
    for (const [deviceId, { host, handle }] of handles) {
      if (host === victim) continue;
      await handle.signal(budgetSignal, { finishNow: true });
      const r = await waitResult('down', deviceId);
      assert.equal(r.status, 'completed', JSON.stringify(r.error));
    }
    const still = await waiting.query(progressQuery);
    assert.equal(still.phase, 'waiting-for-host', 'still waiting while its host is down');

    // Back: the run resumes on its own host from its checkpoint.
    const restartedAt = Date.now();
    await startWorker(victim);
    let resumedAt = 0;
    await waitFor(
      async () => {
        const p = await waiting.query(progressQuery);
        if (p.phase === 'traversing' && p.waitingForHost === undefined) resumedAt = Date.now();
        return resumedAt > 0;
      },
      60_000,
      `${phones[victim][0]} traversing again`,
    );
    await waiting.signal(budgetSignal, { finishNow: true });
    const r = await waitResult('down', phones[victim][0]!);
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    assert.ok(r.resumedFrom, 'resumed from a checkpoint, not from zero');
    assert.ok(r.screens >= Number(before.screens), `kept its screens (${r.screens} ≥ ${String(before.screens)})`);
    assert.ok(
      (r.traversalAttempt ?? 0) > 3,
      `a rescheduled traversal's attempts follow the earlier ones (${r.traversalAttempt})`,
    );
    const acts = await activityRuns(waiting);
    for (const a of acts.filter((x) => DEVICE_STEPS.includes(x.type)))
      assert.ok(a.identity.endsWith(`/${victim}`), `${a.type} ran on ${a.identity}`);
    console.log(
      `      farm: ${victim} killed → its phone waiting after ${((waitingAt - killedAt) / 1000).toFixed(1)} s ` +
        `(heartbeat ${HEARTBEAT_MS / 1000} s + DT_HOST_WAIT ${HOST_WAIT_MS / 1000} s); ` +
        `restarted → traversing again after ${((resumedAt - restartedAt) / 1000).toFixed(1)} s`,
    );
  });
  it('a run cancelled while its host is down still ends, with its partial report and result', async function () {
    const victim = 'farm-b';
    const deviceId = phones[victim][1]!;
    const handle = await suite.enqueue(
      request(victim, deviceId, {
        taskId: 'cancel-down',
        traversal: { durationSec: LONG_SEC, extraArgs: ['--tick-ms', '100', '--crashes', '1'] },
      }),
    );
    await waitFor(
      async () => Number((await pendingActivity(handle, 'runTraversal'))?.details?.screens ?? 0) >= 3,
      60_000,
      `${deviceId} traversing`,
    );
    await workers[victim].kill('SIGKILL');
    try {
      await waitFor(
        async () => (await handle.query(progressQuery)).phase === 'waiting-for-host',
        HEARTBEAT_MS + HOST_WAIT_MS + 30_000,
        `${deviceId} waiting for ${victim}`,
      );
      const cancelledAt = Date.now();
      await handle.cancel();
      const r = await waitResult('cancel-down', deviceId, 60_000);
      assert.equal(r.status, 'cancelled', JSON.stringify(r.error));
      // The report parts the host shipped before it died are in the sink: the partial report holds them.
      assert.ok(
        r.reportUrl?.startsWith(`file://${path.join(dir, 'sink')}/`),
        `a partial report was uploaded to the farm's sink (${r.reportUrl})`,
      );
      console.log(
        `      farm: a run cancelled while ${victim} was down ended ${((Date.now() - cancelledAt) / 1000).toFixed(1)} s later ` +
          `(partial upload on the shared queue, cleanup given up after DT_HOST_WAIT)`,
      );
    } finally {
      await startWorker(victim);
    }
  });

  it("a host whose disk is full fails only its own downloads; the other hosts' runs complete", async function () {
    if (process.getuid?.() !== 0) {
      console.warn('      skipped: this test mounts a small tmpfs and needs root');
      this.skip();
    }
    // farm-c's APK cache on an 8 MiB tmpfs; the APK is 12 MiB.
    const small = path.join(dir, 'farm-c-small-disk');
    await fsp.mkdir(small, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', small], { stdio: 'pipe' });
    scope.add('small disk', () => execFileSync('umount', ['-l', small], { stdio: 'pipe' }));
    await workers['farm-c'].stop();
    await startWorker('farm-c', { DT_APK_CACHE_DIR: small });
    const big = await suite.addApk('farm-big.apk', 12 * MiB);
    const handles = await enqueueEverywhere('full', big);
    const full = phones['farm-c'][0]!;
    await waitFor(
      async () =>
        (await pendingActivity(handles.get(full)!, 'resolveApk'))?.lastFailure?.type === 'InsufficientStorage',
      60_000,
      `${full}: the download fails as InsufficientStorage`,
    );
    for (const { host, deviceId } of allPhones) {
      if (host === 'farm-c') continue;
      const r = await waitResult('full', deviceId);
      assert.equal(r.status, 'completed', `${deviceId} on ${host}: ${JSON.stringify(r.error)}`);
    }
    const failing = await pendingActivity(handles.get(full)!, 'resolveApk');
    assert.match(failing?.lastFailure?.message ?? '', /disk|space|storage/i, 'the failure says the disk is full');
    await handles.get(full)!.cancel();
    const r = await waitResult('full', full);
    assert.equal(r.status, 'cancelled');
    // Its host is back to a disk with room for the suite's next runs.
    await workers['farm-c'].stop();
    await startWorker('farm-c');
  });
});
