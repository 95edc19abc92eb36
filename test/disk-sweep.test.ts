/**
 * The disk sweep on real folders: orphaned APK part files and run folders, aged with utimes,
 * attempt journals and process records as a worker writes them, and a real worker that sweeps
 * its data folder at start.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Dispatcher } from 'undici';
import { ApkCache, urlKey } from '../src/apk-cache';
import { journalDir } from '../src/activities/traversal/attempt-journal';
import { DiskSweeper, type DiskSweeperOptions } from '../src/worker/disk-sweeper';
import { traversalWorkflowId } from '../src/contract/messages';
import { Metrics } from '../src/metrics';
import { createDispatcher } from '../src/net/dispatcher';
import { startStack } from '../dev/stack';
import { waitFor } from '../dev/wait';

const KiB = 1024;
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

/** Sets the mtime of a path and everything under it to `ms` ago. */
async function age(p: string, ms: number): Promise<void> {
  const at = new Date(Date.now() - ms);
  const st = await fsp.lstat(p);
  if (st.isDirectory()) for (const name of await fsp.readdir(p)) await age(path.join(p, name), ms);
  await fsp.utimes(p, at, at);
}

/** A run folder like the runner leaves one (report, attempt log, local findings), `kib` KiB in all, last changed `ago` ms ago. */
async function runFolder(dataDir: string, taskId: string, deviceId: string, ago: number, kib = 40): Promise<string> {
  const dir = path.join(dataDir, 'runs', taskId, deviceId);
  await fsp.mkdir(path.join(dir, 'report', 'screens'), { recursive: true });
  await fsp.writeFile(path.join(dir, 'report', 'summary.json'), '{"status":"completed"}');
  await fsp.writeFile(path.join(dir, 'attempt-1.log'), Buffer.alloc(kib * KiB - 22, 'x'));
  await age(path.join(dataDir, 'runs', taskId), ago);
  return dir;
}

async function exists(p: string): Promise<boolean> {
  return fsp.access(p).then(
    () => true,
    () => false,
  );
}

/** A pid that surely belongs to no running process: a child that has already exited. */
async function deadPid(): Promise<number> {
  const child = spawn('true');
  await new Promise((resolve) => child.once('exit', resolve));
  return child.pid!;
}

describe('disk sweep', function () {
  this.timeout(60_000);
  let root: string;
  let dispatcher: Dispatcher;
  let n = 0;

  before(async () => {
    root = await fsp.mkdtemp(path.join(os.tmpdir(), 'dt-sweep-'));
    dispatcher = createDispatcher();
  });
  after(async () => {
    await dispatcher.close();
    await fsp.rm(root, { recursive: true, force: true });
  });

  function sweeper(opts: Partial<DiskSweeperOptions> = {}): {
    sweeper: DiskSweeper;
    dataDir: string;
    metrics: Metrics;
  } {
    const dataDir = path.join(root, `data-${++n}`);
    const metrics = new Metrics();
    const s = new DiskSweeper({
      dataDir,
      partMaxAgeMs: HOUR,
      runsMaxAgeMs: 7 * DAY,
      runsMaxBytes: 1024 ** 3,
      intervalMs: 600_000,
      metrics,
      ...opts,
    });
    return { sweeper: s, dataDir, metrics };
  }

  describe('APK part files', () => {
    it('removes part files nobody holds once unwritten for the part age, and keeps younger ones and those of a live download', async () => {
      const cacheDir = path.join(root, `cache-${++n}`);
      const cache = new ApkCache({ dir: cacheDir, maxBytes: 1024 ** 2, dispatcher });
      const tmp = path.join(cacheDir, 'tmp');
      const locks = path.join(cacheDir, 'locks');
      await fsp.mkdir(tmp, { recursive: true });
      await fsp.mkdir(locks, { recursive: true });
      const part = async (url: string, bytes: number, ago: number) => {
        const file = path.join(tmp, `${urlKey(url)}.part`);
        await fsp.writeFile(file, Buffer.alloc(bytes, 1));
        await fsp.writeFile(`${file}.json`, JSON.stringify({ url }));
        await age(file, ago);
        await age(`${file}.json`, ago);
        return file;
      };
      const lock = async (url: string, pid: number) =>
        fsp.writeFile(
          path.join(locks, `${urlKey(url)}.lock`),
          JSON.stringify({ pid, host: os.hostname(), url, at: new Date().toISOString() }),
        );

      const orphan = await part('http://o.example/orphan.apk', 300 * KiB, 2 * HOUR);
      // Left by a worker that died mid-download: its lock names a dead pid, so nobody holds it.
      const crashed = await part('http://o.example/crashed.apk', 200 * KiB, 3 * HOUR);
      await lock('http://o.example/crashed.apk', await deadPid());
      const recent = await part('http://o.example/recent.apk', 100 * KiB, 10 * 60_000);
      // An old part whose download a live process on this host holds (our parent: alive, not us).
      const held = await part('http://o.example/held.apk', 100 * KiB, 5 * HOUR);
      await lock('http://o.example/held.apk', process.ppid);

      const { sweeper: s, metrics } = sweeper({ cache });
      const report = await s.sweep();

      assert.equal(await exists(orphan), false);
      assert.equal(await exists(`${orphan}.json`), false);
      assert.equal(await exists(crashed), false);
      assert.equal(await exists(recent), true, 'a young part stays for a Range resume');
      assert.equal(await exists(held), true, 'a part a live download holds stays');
      assert.equal(report.parts.files, 4);
      assert.ok(report.parts.bytes >= 500 * KiB && report.parts.bytes < 501 * KiB, String(report.parts.bytes));
      assert.equal(metrics.sweptBytes.get({ kind: 'apk-part' }), report.parts.bytes);
      // Only the held lock is left: the sweep released the ones it took.
      assert.deepEqual(await fsp.readdir(locks), [`${urlKey('http://o.example/held.apk')}.lock`]);
    });
  });

  describe('run folders', () => {
    it('removes run folders unchanged for longer than the age limit and keeps recent ones and those of running traversals', async () => {
      const { sweeper: s, dataDir, metrics } = sweeper();
      const old = await runFolder(dataDir, 'T-old', 'd1', 8 * DAY);
      const fresh = await runFolder(dataDir, 'T-fresh', 'd1', 2 * DAY);
      // Old, but one file deep inside changed a minute ago (a tool still writing its report).
      const touched = await runFolder(dataDir, 'T-touched', 'd1', 9 * DAY);
      await age(path.join(touched, 'report', 'summary.json'), 60_000);
      // Old, but a worker's journal lists an attempt of it (a tool paused for days is still running).
      const journaled = await runFolder(dataDir, 'T-journal', 'd1', 9 * DAY);
      await fsp.mkdir(journalDir(dataDir), { recursive: true });
      await fsp.writeFile(
        path.join(journalDir(dataDir), '4242-123.json'),
        JSON.stringify({
          version: 1,
          pid: 4242,
          attempts: [{ workflowId: traversalWorkflowId('T-journal', 'd1'), activityType: 'runTraversal' }],
        }),
      );
      // Old, but a process record names its traversal (a tool left by a worker that died), by the
      // id of a named deployment: run folders carry no deployment name.
      const recorded = await runFolder(dataDir, 'T-pid', 'd2', 9 * DAY);
      await fsp.mkdir(path.join(dataDir, 'pids'), { recursive: true });
      await fsp.writeFile(
        path.join(dataDir, 'pids', 'd2.json'),
        JSON.stringify({ pid: 1, workflowId: traversalWorkflowId('T-pid', 'd2', 'lab-a') }),
      );

      const report = await s.sweep();

      assert.equal(await exists(old), false);
      assert.equal(await exists(path.dirname(old)), false, 'the emptied task folder went too');
      for (const kept of [fresh, touched, journaled, recorded]) assert.equal(await exists(kept), true, kept);
      assert.equal(report.runs.removed, 1);
      assert.equal(report.runs.bytes, 40 * KiB);
      assert.equal(report.runs.active, 2);
      assert.equal(metrics.sweptFiles.get({ kind: 'run' }), 1);
      assert.equal(metrics.sweptBytes.get({ kind: 'run' }), 40 * KiB);
    });

    it('over the size cap removes the least recently changed folders first until under it, but none changed within the last hour', async () => {
      const { sweeper: s, dataDir } = sweeper({ runsMaxBytes: 250 * KiB });
      const byAge: Record<string, string> = {};
      for (const [name, ago] of [
        ['r6h', 6 * HOUR],
        ['r5h', 5 * HOUR],
        ['r4h', 4 * HOUR],
        ['r3h', 3 * HOUR],
        ['r2h', 2 * HOUR],
        ['r10m', 10 * 60_000],
        ['r5m', 5 * 60_000],
      ] as const) {
        byAge[name] = await runFolder(dataDir, `T-${name}`, 'dev', ago, 100);
      }
      // The oldest is running (journaled): kept and passed over.
      await fsp.mkdir(journalDir(dataDir), { recursive: true });
      await fsp.writeFile(
        path.join(journalDir(dataDir), '7-1.json'),
        JSON.stringify({ version: 1, attempts: [{ workflowId: traversalWorkflowId('T-r6h', 'dev') }] }),
      );

      const report = await s.sweep();

      // 700 KiB: the oldest removable go until 250 KiB or less is left, then the grace stops it.
      const left = await Promise.all(Object.entries(byAge).map(async ([k, dir]) => [k, await exists(dir)] as const));
      assert.deepEqual(Object.fromEntries(left), {
        r6h: true,
        r5h: false,
        r4h: false,
        r3h: false,
        r2h: false,
        r10m: true,
        r5m: true,
      });
      assert.equal(report.runs.removed, 4);
      assert.equal(report.runs.totalBytes, 300 * KiB, 'still over the cap: what is left is running or recent');
    });

    it('a worker sweeps its data folder at start and on its interval, and stops sweeping at shutdown', async () => {
      const dataDir = path.join(root, `worker-data-${++n}`);
      const old = await runFolder(dataDir, 'T-before-start', 'w1', 30 * DAY);
      const fresh = await runFolder(dataDir, 'T-yesterday', 'w1', DAY);
      const stack = await startStack({
        devices: ['sweep-1'],
        config: { dataDir, apkCacheDir: path.join(dataDir, 'apk-cache'), sweepIntervalMs: 300 },
      });
      const swept = () => stack.worker.metrics.sweptFiles.get({ kind: 'run' });
      try {
        await waitFor(() => swept() === 1, 30_000, 'the start-up sweep');
        assert.equal(await exists(old), false);
        assert.equal(await exists(fresh), true);
        assert.equal(stack.worker.metrics.sweptBytes.get({ kind: 'run' }), 40 * KiB);
        assert.match(stack.worker.metrics.render(), /dt_disk_swept_bytes_total\{kind="run"\} 40960/);
        const next = await runFolder(dataDir, 'T-while-running', 'w1', 30 * DAY);
        await waitFor(() => swept() === 2, 30_000, 'a scheduled sweep');
        assert.equal(await exists(next), false);
      } finally {
        await stack.stop();
      }
      const afterStop = await runFolder(dataDir, 'T-after-stop', 'w1', 30 * DAY);
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(await exists(afterStop), true, 'no sweep after shutdown');
      assert.equal(swept(), 2);
    });
  });
});
