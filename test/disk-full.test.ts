/**
 * A full disk on real parts: the data folder on a real 20 MiB tmpfs mounted by this suite (root
 * only), the real worker stack (Temporal, Redis, origin and agent simulators, the traversal jar),
 * and the APK cache alone on the same tmpfs. A download that does not fit fails as the typed,
 * retryable InsufficientStorage with its numbers and leaves no part file; the next one works.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { ActivityFailure, ApplicationFailure, RetryState } from '@temporalio/common';
import type { Dispatcher } from 'undici';
import { ApkCache, urlKey } from '../src/apk-cache';
import { PROJECT_ROOT } from '../src/config';
import { traversalWorkflowId, type TraversalRequest } from '../src/contract/messages';
import { ApkOrigin } from '../sim/origin';
import { requestTraversal } from '../src/starter/task-bridge';
import { createDispatcher } from '../src/net/dispatcher';
import { startStack, type Stack } from '../dev/stack';
import { waitFor } from '../dev/wait';

const MiB = 1024 * 1024;
/** Size of the tmpfs; the reserve a download leaves on it is 5% of it (the default 64 MiB is capped). */
const DISK = 20 * MiB;
const RESERVE = Math.floor(DISK * 0.05);

interface StorageFacts {
  url: string;
  path: string;
  neededBytes?: number;
  freeBytes: number;
  reserveBytes: number;
  writtenBytes?: number;
}

/** Bytes free on the disk holding `dir`. */
async function freeBytes(dir: string): Promise<number> {
  const st = await fsp.statfs(dir);
  return st.bavail * st.bsize;
}

/** Names in a folder ending in `.part` or `.part.json` (none when the folder is missing). */
async function partFiles(dir: string): Promise<string[]> {
  return (await fsp.readdir(dir).catch(() => [] as string[])).filter((n) => /\.part(\.json)?$/.test(n));
}

/** The failure chain of a traversal whose resolveApk gave up: WorkflowFailedError → ApplicationFailure → ActivityFailure → ApplicationFailure. */
async function downloadFailure(
  handle: WorkflowHandle,
): Promise<{ activity: ActivityFailure; cause: ApplicationFailure }> {
  const err = await handle.result().then(
    () => assert.fail('the traversal should have failed'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof WorkflowFailedError, String(err));
  assert.ok(err.cause instanceof ApplicationFailure, String(err.cause));
  assert.equal(err.cause.type, 'InsufficientStorage');
  const activity = err.cause.cause;
  assert.ok(activity instanceof ActivityFailure, String(activity));
  assert.equal(activity.activityType, 'resolveApk');
  const cause = activity.cause;
  assert.ok(cause instanceof ApplicationFailure, String(cause));
  assert.equal(cause.type, 'InsufficientStorage');
  assert.equal(cause.nonRetryable, false);
  return { activity, cause };
}

describe('a full disk', function () {
  this.timeout(180_000);
  let mnt: string;
  let mounted = false;

  before(async function () {
    mnt = await fsp.mkdtemp(path.join(os.tmpdir(), 'dt-disk-full-'));
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${DISK / MiB}m`, 'tmpfs', mnt], { stdio: 'pipe' });
      mounted = true;
    } catch (err) {
      await fsp.rm(mnt, { recursive: true, force: true });
      const why = (err as { stderr?: Buffer }).stderr?.toString().trim() || String(err);
      console.warn(`    skipped: these tests mount a 20 MiB tmpfs and need root (uid ${process.getuid?.()}): ${why}`);
      this.skip();
    }
  });

  after(async () => {
    if (mounted) execFileSync('umount', [mnt]);
    if (mnt) await fsp.rm(mnt, { recursive: true, force: true });
  });

  describe('through the worker stack, the data folder on the full disk', () => {
    let stack: Stack;
    let dataDir: string;
    let cacheDir: string;

    before(async function () {
      if (!mounted) this.skip();
      dataDir = path.join(mnt, 'data');
      cacheDir = path.join(dataDir, 'apk-cache');
      stack = await startStack({
        devices: ['disk-1'],
        apks: [
          { name: 'disk-big.apk', size: 30 * MiB },
          { name: 'disk-stream.apk', size: 30 * MiB },
          { name: 'disk-small.apk', size: 1 * MiB },
          { name: 'disk-small-2.apk', size: 1 * MiB },
        ],
        config: { dataDir, apkCacheDir: cacheDir },
      });
    });
    after(async () => {
      stack?.origin.omitLength('disk-stream.apk', false);
      await stack?.stop();
      if (dataDir) await fsp.rm(dataDir, { recursive: true, force: true });
    });

    function request(taskId: string, apk: string): TraversalRequest {
      return {
        taskId,
        deviceId: 'disk-1',
        agentUrl: stack.agent.url,
        apkUrl: stack.apks[apk]!.url,
        packageName: `com.example.${taskId.replace(/\W/g, '')}`,
        traversal: { durationSec: 1, extraArgs: ['--tick-ms', '100'] },
        // A short first retry delay keeps the download's ten attempts within seconds.
        policy: { heartbeatTimeoutMs: 10_000, initialRetryMs: 10, maxAttempts: 2, measureLaunch: false },
      };
    }
    async function run(req: TraversalRequest): Promise<WorkflowHandle> {
      await requestTraversal(stack.client, stack.taskQueue, req);
      const handle = stack.client.workflow.getHandle(traversalWorkflowId(req.taskId, req.deviceId));
      // The device workflow starts the traversal as its child once it dequeues the request.
      await waitFor(() => handle.describe().then(() => true), 30_000, `${handle.workflowId} started`);
      return handle;
    }

    it('an APK larger than the free space fails as InsufficientStorage with its numbers, after retries, leaving no part file; a small APK right after installs', async () => {
      const big = stack.apks['disk-big.apk']!;
      const { activity, cause } = await downloadFailure(await run(request('too-big', 'disk-big.apk')));

      assert.equal(
        activity.retryState,
        RetryState.MAXIMUM_ATTEMPTS_REACHED,
        'retried with backoff until the attempts ran out',
      );
      assert.equal(stack.worker.metrics.failures.get({ activity: 'resolveApk', type: 'InsufficientStorage' }), 10);
      const facts = cause.details?.[0] as StorageFacts;
      assert.equal(facts.url, big.url);
      assert.equal(facts.path, cacheDir);
      assert.equal(facts.neededBytes, big.size);
      assert.equal(facts.reserveBytes, RESERVE);
      assert.ok(facts.freeBytes > 0 && facts.freeBytes < big.size, `free ${facts.freeBytes}`);
      assert.ok(
        cause.message.includes(`needs ${big.size} bytes, ${facts.freeBytes} free on ${cacheDir}`),
        cause.message,
      );
      assert.match(cause.message, /will retry/);
      // Refused before writing: no part file, and the disk is as free as before.
      assert.deepEqual(await partFiles(path.join(cacheDir, 'tmp')), []);
      assert.ok((await freeBytes(mnt)) > 18 * MiB, `free after the failure: ${await freeBytes(mnt)}`);

      const small = stack.apks['disk-small.apk']!;
      const ok = await (await run(request('small-after-big', 'disk-small.apk'))).result();
      assert.equal(ok.status, 'completed', JSON.stringify(ok.error));
      assert.equal(ok.apk?.sha256, small.sha256);
      assert.ok(
        stack.agent.calls.some(
          (c) => c.op === 'install' && c.status === 200 && c.packageName === 'com.example.smallafterbig',
        ),
      );
    });

    it('an APK without Content-Length that fills the disk while streaming fails as InsufficientStorage (not a raw ENOSPC) and its part file is removed', async () => {
      const stream = stack.apks['disk-stream.apk']!;
      stack.origin.omitLength('disk-stream.apk');
      const before = stack.worker.metrics.failures.get({ activity: 'resolveApk', type: 'InsufficientStorage' });
      const { activity, cause } = await downloadFailure(await run(request('streamed', 'disk-stream.apk')));

      assert.equal(activity.retryState, RetryState.MAXIMUM_ATTEMPTS_REACHED);
      assert.equal(
        stack.worker.metrics.failures.get({ activity: 'resolveApk', type: 'InsufficientStorage' }) - before,
        10,
      );
      assert.equal(
        stack.worker.metrics.failures.get({ activity: 'resolveApk', type: 'ApkDownloadFailed' }),
        0,
        'never a raw ENOSPC',
      );
      const facts = cause.details?.[0] as StorageFacts;
      assert.equal(facts.path, cacheDir);
      assert.equal(facts.neededBytes, undefined, 'the origin announced no length');
      assert.ok(facts.writtenBytes! > 10 * MiB && facts.writtenBytes! < stream.size, `written ${facts.writtenBytes}`);
      assert.match(cause.message, /the disk filled up after \d+ bytes/);
      assert.deepEqual(await partFiles(path.join(cacheDir, 'tmp')), []);
      assert.deepEqual(await fsp.readdir(path.join(cacheDir, 'locks')), []);
      assert.ok((await freeBytes(mnt)) > 17 * MiB, `free after the failure: ${await freeBytes(mnt)}`);

      const ok = await (await run(request('small-after-stream', 'disk-small-2.apk'))).result();
      assert.equal(ok.status, 'completed', JSON.stringify(ok.error));
      assert.equal(ok.apk?.sha256, stack.apks['disk-small-2.apk']!.sha256);
    });
  });

  describe('the APK cache alone on the full disk', () => {
    let origin: ApkOrigin;
    let dispatcher: Dispatcher;
    let n = 0;

    before(async function () {
      if (!mounted) this.skip();
      dispatcher = createDispatcher();
      origin = new ApkOrigin({ dir: path.join(PROJECT_ROOT, '.tools', 'apks') });
      await origin.start();
    });
    after(async () => {
      await origin?.close();
      await dispatcher?.close();
    });
    afterEach(async () => {
      for (const name of await fsp.readdir(mnt)) await fsp.rm(path.join(mnt, name), { recursive: true, force: true });
    });

    function cache(opts: Partial<ConstructorParameters<typeof ApkCache>[0]> = {}): { cache: ApkCache; dir: string } {
      const dir = path.join(mnt, `cache-${++n}`);
      return { cache: new ApkCache({ dir, maxBytes: 64 * MiB, dispatcher, lockPollMs: 20, leaseMs: 1, ...opts }), dir };
    }

    it('makes room by removing part files nobody holds, then evicting unleased APKs least recently used first', async () => {
      const [a, b, c] = await Promise.all([
        origin.addApk('disk-evict-a.apk', 5 * MiB),
        origin.addApk('disk-evict-b.apk', 5 * MiB),
        origin.addApk('disk-evict-c.apk', 10 * MiB),
      ]);
      const { cache: apks, dir } = cache();
      await apks.resolve(origin.url('disk-evict-a.apk'));
      await apks.resolve(origin.url('disk-evict-b.apk'));
      // A part left by a download nobody resumed (no lock), written just now.
      const orphan = path.join(dir, 'tmp', `${urlKey('http://gone.example/x.apk')}.part`);
      await fsp.writeFile(orphan, Buffer.alloc(2 * MiB, 1));
      assert.ok((await freeBytes(mnt)) - RESERVE < c!.size, 'the third APK does not fit as things are');

      const r = await apks.resolve(origin.url('disk-evict-c.apk'));
      assert.equal(r.sha256, c!.sha256);
      await assert.rejects(fsp.access(orphan), 'the orphaned part file was removed');
      assert.equal(await apks.stat(a!.sha256), undefined, 'the least recently used APK was evicted');
      assert.equal(await apks.stat(b!.sha256), b!.size, 'only as much as needed was evicted');
    });

    it('fails before writing a byte when what is left is in use, keeps those APKs, and succeeds once one is released', async () => {
      const [a, b] = await Promise.all([
        origin.addApk('disk-use-a.apk', 7 * MiB),
        origin.addApk('disk-use-b.apk', 7 * MiB),
      ]);
      const d = await origin.addApk('disk-use-d.apk', 6 * MiB);
      const { cache: apks, dir } = cache();
      await apks.resolve(origin.url('disk-use-a.apk'));
      await apks.resolve(origin.url('disk-use-b.apk'));
      const releaseA = apks.retain(a!.sha256);
      const releaseB = apks.retain(b!.sha256);

      await assert.rejects(
        apks.resolve(origin.url('disk-use-d.apk')),
        (err: { code?: string; nonRetryable?: boolean; details?: StorageFacts }) => {
          assert.equal(err.code, 'InsufficientStorage', String(err));
          assert.equal(err.nonRetryable, false);
          assert.equal(err.details?.neededBytes, d.size);
          assert.equal(err.details?.reserveBytes, RESERVE);
          assert.equal(err.details?.path, dir);
          assert.ok(err.details!.freeBytes < d.size + RESERVE);
          return true;
        },
      );
      assert.equal(await apks.stat(a!.sha256), a!.size);
      assert.equal(await apks.stat(b!.sha256), b!.size);
      assert.deepEqual(await partFiles(path.join(dir, 'tmp')), []);
      assert.deepEqual(await fsp.readdir(path.join(dir, 'locks')), []);

      releaseA();
      const r = await apks.resolve(origin.url('disk-use-d.apk'));
      assert.equal(r.sha256, d.sha256);
      assert.equal(await apks.stat(a!.sha256), undefined);
      assert.equal(await apks.stat(b!.sha256), b!.size);
      releaseB();
    });

    it('turns ENOSPC while streaming into InsufficientStorage and removes the part file, its metadata and its lock', async () => {
      const big = await origin.addApk('disk-enospc.apk', 30 * MiB);
      origin.omitLength('disk-enospc.apk');
      try {
        // A reserve of one byte: only the disk itself stops the download.
        const { cache: apks, dir } = cache({ diskReserveBytes: 1 });
        await assert.rejects(
          apks.resolve(origin.url('disk-enospc.apk')),
          (err: { code?: string; message: string; details?: StorageFacts }) => {
            assert.equal(err.code, 'InsufficientStorage', String(err));
            assert.equal(err.details?.reserveBytes, 1);
            assert.ok(err.details!.writtenBytes! > 15 * MiB && err.details!.writtenBytes! < big.size, err.message);
            return true;
          },
        );
        assert.deepEqual(await partFiles(path.join(dir, 'tmp')), []);
        assert.deepEqual(await fsp.readdir(path.join(dir, 'locks')), []);
        assert.ok((await freeBytes(mnt)) > 19 * MiB);
      } finally {
        origin.omitLength('disk-enospc.apk', false);
      }
    });
  });
});
