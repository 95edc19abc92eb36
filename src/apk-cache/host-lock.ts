/**
 * A lock shared by every process on the hosts that see one folder: a file created with O_EXCL.
 *
 * The file holds its owner as JSON ({ pid, host, purpose, at, nonce }) and its mtime is refreshed
 * while the lock is held. Another process judges it abandoned when its mtime is older than
 * LOCK_STALE_MS, or, for an owner on this host, when that pid is gone (or is our own pid on a lock
 * this process does not hold: a restart that got the same pid). An owner on another host is
 * judged by age alone, since its pid cannot be probed from here.
 */
import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';

/** How often the holder touches its lock file, ms. */
const LOCK_REFRESH_MS = 15_000;
/** A lock file untouched for this long is abandoned whatever it says (owner on a gone host, reused pid), ms. */
const LOCK_STALE_MS = 120_000;
/** Lock files this process holds right now, across all users of this module (they share one pid). */
const heldLocks = new Set<string>();

/** A lock this process holds. */
export interface HeldLock {
  /** Removes the lock file unless someone broke and retook it meanwhile; call it once. */
  release: () => Promise<void>;
  /** Set when the owner's line could not be written (a full disk); the lock still excludes others. */
  writeError?: unknown;
}

/** A lock file as judged abandoned: its content and inode, so breakLock removes exactly that one. */
export interface StaleLock {
  raw: string;
  ino: number;
}

/**
 * Creates the lock file, or resolves to undefined when it exists. Its mtime is refreshed until
 * release: the heartbeat other hosts judge it by. On a full disk even the owner's line may not fit
 * (`writeError`); the lock still excludes others while it exists, and release removes it all the same.
 */
export async function createLock(lockPath: string, purpose: string): Promise<HeldLock | undefined> {
  const handle = await fsp.open(lockPath, 'wx').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'EEXIST') return undefined;
    throw err;
  });
  if (!handle) return undefined;
  heldLocks.add(lockPath);
  const body = JSON.stringify({
    pid: process.pid,
    host: os.hostname(),
    purpose,
    at: new Date().toISOString(),
    nonce: randomUUID(),
  });
  const refresh = setInterval(() => {
    const now = new Date();
    fsp.utimes(lockPath, now, now).catch(() => undefined);
  }, LOCK_REFRESH_MS);
  refresh.unref();
  let writeError: unknown;
  await handle.writeFile(body).catch((err: unknown) => (writeError = err ?? new Error('lock write failed')));
  await handle.close().catch(() => undefined);
  const release = async () => {
    clearInterval(refresh);
    heldLocks.delete(lockPath);
    // Remove only our own lock; if it was broken and taken over meanwhile, the new owner keeps it.
    const current = await fsp.readFile(lockPath, 'utf8').catch(() => undefined);
    if (stillOurs(current, body, writeError === undefined)) await fsp.rm(lockPath, { force: true });
  };
  return { release, ...(writeError !== undefined ? { writeError } : {}) };
}

/**
 * Takes the lock for a short job when nobody holds it, breaking an abandoned one first; resolves to
 * the function that releases it, or undefined when a live owner holds it.
 */
export async function tryLock(lockPath: string, purpose: string): Promise<(() => Promise<void>) | undefined> {
  let lock = await createLock(lockPath, purpose);
  if (!lock) {
    const stale = await staleLock(lockPath);
    if (!stale) return undefined;
    await breakLock(lockPath, stale);
    lock = await createLock(lockPath, purpose);
  }
  return lock?.release;
}

/** The lock file as judged abandoned (content and inode, for breakLock), or undefined while its owner may live. */
export async function staleLock(lockPath: string): Promise<StaleLock | undefined> {
  let judged: StaleLock;
  let mtimeMs: number;
  try {
    const [raw, st] = await Promise.all([fsp.readFile(lockPath, 'utf8'), fsp.stat(lockPath)]);
    judged = { raw, ino: st.ino };
    mtimeMs = st.mtimeMs;
  } catch {
    return undefined; // released meanwhile; the next round tries to take it
  }
  if (Date.now() - mtimeMs > LOCK_STALE_MS) return judged; // the holder stopped refreshing it
  let owner: { pid?: unknown; host?: unknown };
  try {
    owner = JSON.parse(judged.raw) as typeof owner;
  } catch {
    return undefined; // its owner is between creating and writing it; only age breaks it
  }
  if (owner.host && owner.host !== os.hostname()) return undefined; // cannot probe another host's pid; age decides
  if (typeof owner.pid !== 'number') return judged;
  // Our own pid on a lock we do not hold: left by an earlier process that had the same pid
  // (common in containers, where the worker is often pid 1 after every restart).
  if (owner.pid === process.pid) return heldLocks.has(lockPath) ? undefined : judged;
  try {
    process.kill(owner.pid, 0);
    return undefined;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM' ? undefined : judged; // EPERM: alive, another user's
  }
}

/**
 * Removes a lock judged abandoned. Two waiters may judge the same lock at once; the one that
 * renames second could move the first one's fresh lock aside, so it checks and puts that back.
 */
export async function breakLock(lockPath: string, judged: StaleLock): Promise<void> {
  const aside = `${lockPath}.${process.pid}.${randomUUID()}.stale`;
  try {
    await fsp.rename(lockPath, aside);
  } catch {
    return; // already gone
  }
  try {
    const [raw, st] = await Promise.all([fsp.readFile(aside, 'utf8'), fsp.stat(aside)]);
    if (raw !== judged.raw || st.ino !== judged.ino) await fsp.link(aside, lockPath).catch(() => undefined);
  } finally {
    await fsp.rm(aside, { force: true });
  }
}

/** True when a lock file still holds what we wrote, or the start of it when the disk was too full to write it all. */
function stillOurs(current: string | undefined, body: string, wrote: boolean): boolean {
  return current === body || (!wrote && current !== undefined && body.startsWith(current));
}
