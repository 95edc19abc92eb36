/**
 * The APK cache's host lock on its own, without HTTP: real lock files in a temporary folder,
 * parallel callers in this process, and a child process as a live (then killed) owner.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PROJECT_ROOT } from '../src/config';
import { breakLock, createLock, staleLock, tryLock } from '../src/apk-cache/host-lock';

/** Takes a lock in its own process and holds it until killed; prints 'held' once it has it. */
const HOLDER = `
const { createLock } = require(${JSON.stringify(path.join(PROJECT_ROOT, 'src/apk-cache/host-lock'))});
createLock(process.argv[1], 'held by a child').then((lock) => {
  if (!lock) process.exit(3);
  process.stdout.write('held\\n');
  setInterval(() => undefined, 60_000);
});
`;

/** A pid that surely belongs to no running process: a child that has already exited. */
async function deadPid(): Promise<number> {
  const child = spawn('true');
  await new Promise((resolve) => child.once('exit', resolve));
  assert.ok(child.pid);
  return child.pid;
}

async function owner(lockPath: string): Promise<{ pid: number; host: string; purpose: string }> {
  return JSON.parse(await fsp.readFile(lockPath, 'utf8')) as { pid: number; host: string; purpose: string };
}

async function writeOwner(lockPath: string, body: Record<string, unknown>, ageMs = 0): Promise<void> {
  await fsp.writeFile(lockPath, JSON.stringify(body));
  if (ageMs) await fsp.utimes(lockPath, new Date(Date.now() - ageMs), new Date(Date.now() - ageMs));
}

const HOUR = 3600_000;

describe('host lock', function () {
  this.timeout(30_000);
  let dir: string;
  let locks = 0;
  let lockPath: string;

  before(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'dt-host-lock-'));
  });

  beforeEach(() => {
    lockPath = path.join(dir, `lock-${++locks}.lock`);
  });

  after(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('lets exactly one of several parallel callers take a free lock, and the next caller after its release', async () => {
    const results = await Promise.all(Array.from({ length: 5 }, (_, i) => createLock(lockPath, `caller ${i}`)));
    const held = results.filter((r) => r !== undefined);
    assert.equal(held.length, 1);
    const mine = await owner(lockPath);
    assert.equal(mine.pid, process.pid);
    assert.equal(mine.host, os.hostname());
    assert.equal(await staleLock(lockPath), undefined, 'a lock this process holds is not abandoned');

    await held[0]!.release();
    await assert.rejects(fsp.access(lockPath));
    const next = await createLock(lockPath, 'next caller');
    assert.ok(next);
    await next.release();
  });

  it('leaves the lock to its new owner when the old holder releases after it was broken and retaken', async () => {
    const lock = await createLock(lockPath, 'old holder');
    assert.ok(lock);
    const newOwner = { pid: 1, host: 'another-host', purpose: 'new owner', at: new Date().toISOString() };
    await fsp.rm(lockPath);
    await writeOwner(lockPath, newOwner);

    await lock.release();
    assert.deepEqual(await owner(lockPath), newOwner);
  });

  it('does not break a lock a live process holds, and breaks it once that process is killed', async () => {
    const child = spawn(process.execPath, ['-r', 'ts-node/register/transpile-only', '-e', HOLDER, lockPath], {
      cwd: PROJECT_ROOT,
    });
    const exited = new Promise((resolve) => child.once('exit', resolve));
    try {
      await new Promise<void>((resolve, reject) => {
        child.stdout.once('data', () => resolve());
        child.once('exit', (code) => reject(new Error(`holder exited early (${code})`)));
      });
      assert.equal((await owner(lockPath)).pid, child.pid);
      assert.equal(await staleLock(lockPath), undefined);
      assert.equal(await tryLock(lockPath, 'waiting for a live owner'), undefined);
      assert.equal((await owner(lockPath)).pid, child.pid);
    } finally {
      child.kill('SIGKILL');
      await exited;
    }

    const release = await tryLock(lockPath, 'after the owner died');
    assert.ok(release, 'a lock whose owner was killed is broken');
    assert.equal((await owner(lockPath)).pid, process.pid);
    await release();
    await assert.rejects(fsp.access(lockPath));
  });

  it('judges a leftover lock carrying its own pid abandoned (a restarted process that got the same pid)', async () => {
    await writeOwner(lockPath, { pid: process.pid, host: os.hostname(), purpose: 'before the restart' });
    assert.ok(await staleLock(lockPath));
    const release = await tryLock(lockPath, 'after the restart');
    assert.ok(release);
    await release();
  });

  it('waits for a fresh lock from another host and breaks it once it has not been refreshed for long', async () => {
    await writeOwner(lockPath, { pid: 1, host: 'container-that-is-gone', purpose: 'elsewhere' });
    assert.equal(await staleLock(lockPath), undefined, 'a pid on another host cannot be probed; only age counts');
    assert.equal(await tryLock(lockPath, 'too early'), undefined);

    await writeOwner(lockPath, { pid: 1, host: 'container-that-is-gone', purpose: 'elsewhere' }, HOUR);
    const release = await tryLock(lockPath, 'after an hour');
    assert.ok(release);
    await release();
  });

  it('does not judge a lock whose owner has not written its line yet, unless it is old', async () => {
    await fsp.writeFile(lockPath, '');
    assert.equal(await staleLock(lockPath), undefined);
    await fsp.utimes(lockPath, new Date(Date.now() - HOUR), new Date(Date.now() - HOUR));
    assert.ok(await staleLock(lockPath));
  });

  it('gives an abandoned lock to only one of two callers that judged it at the same time', async () => {
    await writeOwner(lockPath, { pid: await deadPid(), host: os.hostname(), purpose: 'dead owner' });
    const [first, late] = await Promise.all([staleLock(lockPath), staleLock(lockPath)]);
    assert.ok(first && late);
    await breakLock(lockPath, first);
    const lock = await createLock(lockPath, 'first breaker');
    assert.ok(lock);
    const taken = await owner(lockPath);

    // The late caller's judgement is about the dead owner's file, not the one that replaced it.
    await breakLock(lockPath, late);
    assert.deepEqual(await owner(lockPath), taken, 'the fresh lock is put back');
    assert.equal(await createLock(lockPath, 'late breaker'), undefined);

    const racers = await Promise.all([tryLock(lockPath, 'racer 1'), tryLock(lockPath, 'racer 2')]);
    assert.deepEqual(racers, [undefined, undefined], 'a lock this process holds is not broken');
    await lock.release();
    await assert.rejects(fsp.access(lockPath));
    assert.deepEqual(
      (await fsp.readdir(dir)).filter((n) => n.endsWith('.stale')),
      [],
      'no lock set aside while breaking is left behind',
    );
  });

  it('lets only one of two parallel callers break and take an abandoned lock', async () => {
    await writeOwner(lockPath, { pid: await deadPid(), host: os.hostname(), purpose: 'dead owner' });
    const releases = await Promise.all([tryLock(lockPath, 'racer 1'), tryLock(lockPath, 'racer 2')]);
    const held = releases.filter((r) => r !== undefined);
    assert.equal(held.length, 1);
    assert.equal((await owner(lockPath)).pid, process.pid);
    await held[0]!();
    await assert.rejects(fsp.access(lockPath));
  });
});
