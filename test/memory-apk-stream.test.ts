/**
 * "APKs are never held in memory", as a test: a child process holding the worker's real APK cache
 * and artifact server (built from the same modules and the same dispatcher the worker uses)
 * downloads a 1 GiB APK from the origin simulator and then serves it to a reader over loopback. The
 * child's peak resident memory (VmHWM in /proc/<pid>/status, kept by the kernel) must grow by far
 * less than the APK during each phase. A copy of the APK held in memory anywhere on either path
 * would add at least 1 GiB.
 *
 * Why a child process: the peak of this test process would include the origin simulator and the
 * reader, and the kernel's peak is per process.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { PROJECT_ROOT } from '../src/config';
import { ApkOrigin } from '../sim/origin';
import { mib, readMemory } from '../dev/rss';

const MiB = 1024 * 1024;
const APK_BYTES = 1024 * MiB;
/** Growth of the child's peak RSS allowed per phase: a sixth of the APK, far above streaming buffers. */
const GROWTH_LIMIT = 160 * MiB;

/** The child: the worker's cache and artifact server, driven by messages from the test. */
const CHILD = `
const { ApkCache } = require('./src/apk-cache');
const { ArtifactServer } = require('./src/worker/artifact-server');
const { Metrics } = require('./src/metrics');
const { UrlPolicy } = require('./src/net/url-policy');
const { createDispatcher } = require('./src/net/dispatcher');
const metrics = new Metrics();
const dispatcher = createDispatcher(new UrlPolicy('127.0.0.1'));
const cache = new ApkCache({ dir: process.env.CACHE_DIR, maxBytes: 2 * ${APK_BYTES}, dispatcher, metrics });
const server = new ArtifactServer({ cache, metrics, host: '127.0.0.1', port: 0 });
process.on('message', async (m) => {
  try {
    if (m.op === 'download') {
      const apk = await cache.resolve(m.url);
      process.send({ op: 'downloaded', sha256: apk.sha256, size: apk.size });
    } else if (m.op === 'stop') {
      await server.close();
      await dispatcher.close();
      process.disconnect();
    }
  } catch (err) {
    process.send({ op: 'error', error: String(err && err.stack || err) });
  }
});
server.start().then((base) => process.send({ op: 'ready', base }));
`;

/** Resident memory figures of the child, bytes; fails the test once it is gone. */
function memoryOf(pid: number): { rss: number; hwm: number } {
  const m = readMemory(pid);
  assert.ok(m, `no memory figures for pid ${pid}: the child is gone`);
  return m;
}

describe('APK memory', function () {
  this.timeout(180_000);
  let tmp: string;
  let origin: ApkOrigin;
  let child: ChildProcess | undefined;

  before(async () => {
    tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'dt-memory-'));
    origin = new ApkOrigin({ dir: path.join(tmp, 'origin') });
    await origin.start();
  });
  after(async () => {
    if (child?.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await new Promise((r) => child!.once('exit', r));
    }
    await origin?.close();
    await fsp.rm(tmp, { recursive: true, force: true });
  });

  it('a worker downloads and serves a 1 GiB APK while its peak memory grows by far less than the APK', async () => {
    const t0 = Date.now();
    const info = await origin.addApk('big.apk', APK_BYTES);
    console.log(`      generated the 1 GiB APK in ${Date.now() - t0} ms`);

    const proc = spawn(process.execPath, ['-r', 'ts-node/register/transpile-only', '-e', CHILD], {
      cwd: PROJECT_ROOT,
      env: { ...process.env, CACHE_DIR: path.join(tmp, 'cache') },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    child = proc;
    const exited = new Promise<never>((_, reject) =>
      proc.once('exit', (code, signal) => reject(new Error(`the child exited (${code ?? signal})`))),
    );
    exited.catch(() => undefined);
    /** The next message of the child with this op; its errors and exit fail the test. */
    const next = <T>(op: string): Promise<T> =>
      Promise.race([
        exited,
        new Promise<T>((resolve, reject) => {
          const on = (m: { op: string; error?: string }) => {
            if (m.op === 'error') reject(new Error(`the child failed: ${m.error}`));
            else if (m.op === op) resolve(m as T);
            else return;
            proc.off('message', on);
          };
          proc.on('message', on);
        }),
      ]);

    const { base } = await next<{ base: string }>('ready');
    const start = memoryOf(proc.pid!);

    const t1 = Date.now();
    const downloadedP = next<{ sha256: string; size: number }>('downloaded');
    proc.send({ op: 'download', url: origin.url('big.apk') });
    const downloaded = await downloadedP;
    const afterDownload = memoryOf(proc.pid!);
    console.log(`      downloaded into the cache in ${Date.now() - t1} ms`);
    assert.equal(downloaded.sha256, info.sha256);
    assert.equal(downloaded.size, APK_BYTES);

    // Start the serving phase's peak afresh where the kernel allows it (writing 5 to clear_refs
    // resets VmHWM to the current RSS); otherwise its peak is measured against the download's.
    const reset = await fsp.writeFile(`/proc/${proc.pid}/clear_refs`, '5').then(
      () => true,
      () => false,
    );
    const beforeServe = memoryOf(proc.pid!);
    const t2 = Date.now();
    const served = await new Promise<{ sha256: string; bytes: number }>((resolve, reject) => {
      http
        .get(`${base}/apk/${downloaded.sha256}.apk`, { agent: false }, (res) => {
          if (res.statusCode !== 200) {
            res.resume();
            reject(new Error(`the artifact server answered ${res.statusCode}, not 200`));
            return;
          }
          const hash = createHash('sha256');
          let bytes = 0;
          res.on('data', (c: Buffer) => {
            hash.update(c);
            bytes += c.length;
          });
          res.on('end', () => resolve({ sha256: hash.digest('hex'), bytes }));
          res.on('error', reject);
        })
        .on('error', reject);
    });
    const afterServe = memoryOf(proc.pid!);
    console.log(`      served to a reader in ${Date.now() - t2} ms`);
    assert.equal(served.bytes, APK_BYTES);
    assert.equal(served.sha256, info.sha256);

    const downloadGrowth = afterDownload.hwm - start.hwm;
    const serveGrowth = afterServe.hwm - (reset ? beforeServe.rss : afterDownload.hwm);
    console.log(
      `      child RSS: ${mib(start.rss)} at start, peak ${mib(afterDownload.hwm)} after the download ` +
        `(+${mib(downloadGrowth)}), peak ${mib(afterServe.hwm)} while serving (+${mib(serveGrowth)} over ` +
        `${reset ? `its RSS of ${mib(beforeServe.rss)} when serving began` : 'the download’s peak'}); ` +
        `limit +${mib(GROWTH_LIMIT)} per phase`,
    );
    assert.ok(downloadGrowth < GROWTH_LIMIT, `the download raised the peak by ${mib(downloadGrowth)}`);
    assert.ok(serveGrowth < GROWTH_LIMIT, `serving raised the peak by ${mib(serveGrowth)}`);

    proc.send({ op: 'stop' });
    await new Promise((r) => proc.once('exit', r));
  });
});
