/**
 * installApp and uninstallApp on a phone through adb.
 *
 * An install downloads the URL into the agent's APK cache (src/apk-cache: on disk, never in memory;
 * one download per URL on this host however many phones install it at once, the same rule as the
 * worker's cache; bounded, least recently used first), checks the sha256 before the phone sees a
 * byte, then has `adb install` stream the file into `cmd package install -r -S <size>` (adb's own
 * streamed install: no copy in /data/local/tmp; on a phone without `cmd` adb pushes and runs pm).
 * Never incremental, which would need this host to keep serving blocks after "Success". pm's one
 * status line is the verdict.
 *
 * Why not `adb exec-in cmd package install …` fed from here: the adb client's exec-in only copies
 * stdin to the phone and drops what the phone answers, so pm's Success/Failure line never arrives.
 */
import type { Adb } from '../adb';
import type { ApkCache, CachedApk } from '../apk-cache';
import { ApkHashMismatchError, InsufficientStorageError, TraversalError } from '../contract/errors';
import { PACKAGE_PATTERN } from '../contract/ids';
import { HttpError, type Json } from './protocol';
import type { Phone, PhoneTracker } from './phones';

const MIB = 1024 * 1024;
const SHA_RE = /^[0-9a-fA-F]{64}$/;

/** How long an install may take: `baseMs` plus `msPerMiB` per MiB of APK. */
export interface InstallTimeout {
  /** ms (default 60 s). */
  baseMs: number;
  /** ms per MiB (default 200, i.e. 1 s per 5 MiB). */
  msPerMiB: number;
}

/** What the package operations need. */
export interface PackageDeps {
  adb: Adb;
  phones: PhoneTracker;
  cache: ApkCache;
  installTimeout: InstallTimeout;
}

/** The package name of a body, checked (it goes into shell lines). */
export function requirePackage(value: unknown, phone: Phone): string {
  if (typeof value !== 'string' || !PACKAGE_PATTERN.test(value))
    throw new HttpError(
      400,
      `"packageName" must be a package name like com.example.app (got ${JSON.stringify(value) ?? 'nothing'}) on device ${phone.id}`,
    );
  return value;
}

/** The install time limit for an APK of `bytes`. */
export function installTimeoutMs(t: InstallTimeout, bytes: number): number {
  return t.baseMs + Math.ceil((bytes / MIB) * t.msPerMiB);
}

/** `POST installApp {url, packageName, sha256?}` → `{installed, versionCode, ms, bytes, sha256}`. */
export async function installApp(deps: PackageDeps, phone: Phone, body: Json, signal: AbortSignal): Promise<Json> {
  const t0 = performance.now();
  const pkg = requirePackage(body.packageName, phone);
  const url = body.url;
  if (typeof url !== 'string' || !/^https?:\/\//i.test(url))
    throw new HttpError(400, `installApp on device ${phone.id} needs "url" (http or https)`);
  let expected: string | undefined;
  if (body.sha256 !== undefined && body.sha256 !== null) {
    if (typeof body.sha256 !== 'string' || !SHA_RE.test(body.sha256))
      throw new HttpError(400, '"sha256" must be 64 hex characters when given');
    expected = body.sha256.toLowerCase();
  }

  const apk = await download(deps, phone, url, expected, signal);
  // Kept from eviction while the phone reads it.
  const release = deps.cache.retain(apk.sha256);
  try {
    deps.phones.requireOnline(phone);
    await streamInstall(deps, phone, pkg, apk, signal);
  } finally {
    release();
  }
  const versionCode = await readVersionCode(deps, phone, pkg);
  return {
    installed: true,
    packageName: pkg,
    ...(versionCode !== undefined ? { versionCode } : {}),
    ms: Math.round(performance.now() - t0),
    bytes: apk.size,
    sha256: apk.sha256,
    fromCache: apk.fromCache,
  };
}

async function download(
  deps: PackageDeps,
  phone: Phone,
  url: string,
  expected: string | undefined,
  signal: AbortSignal,
): Promise<CachedApk> {
  try {
    return await deps.cache.resolve(url, expected, { signal });
  } catch (err) {
    if (signal.aborted) throw err;
    if (err instanceof ApkHashMismatchError)
      throw new HttpError(422, `${err.message}; nothing was installed on device ${phone.id}`, { code: err.code });
    // This host's disk, not the APK: retryable, and not the phone's fault (so not 503).
    if (err instanceof InsufficientStorageError)
      throw new HttpError(507, `the agent's disk is full: ${err.message}`, { code: err.code });
    // UrlRefusedError is a TraversalError too.
    if (err instanceof TraversalError) {
      const code = err.code;
      throw new HttpError(
        422,
        `download of ${url} failed for device ${phone.id}: ${err.message}; check the URL is reachable from the agent`,
        code ? { code } : {},
      );
    }
    throw err;
  }
}

/** Streams the APK file into pm on the phone and turns its status line into the answer. */
async function streamInstall(
  deps: PackageDeps,
  phone: Phone,
  pkg: string,
  apk: CachedApk,
  signal: AbortSignal,
): Promise<void> {
  const timeoutMs = installTimeoutMs(deps.installTimeout, apk.size);
  // adb passes options it does not know on to pm; --pkg makes pm refuse an APK whose manifest names
  // another package (INSTALL_FAILED_INVALID_APK) instead of installing something else.
  const args = ['install', '-r', ...(await noIncremental(deps.adb)), '--pkg', pkg, apk.path];
  const r = await deps.adb.run(phone.serial, args, { timeoutMs, signal });
  const out = `${r.stdout}\n${r.stderr}`;
  if (/^Success/m.test(r.stdout)) return;
  const failure = /Failure \[((?:INSTALL_|DELETE_)?[A-Z0-9_]+)[^\]]*\]/.exec(out);
  if (failure)
    throw new HttpError(
      422,
      `install of ${pkg} on ${phone.id} refused: ${failure[1]} (${failure[0]}); ${hintFor(failure[1]!)}`,
      { code: failure[1] },
    );
  if (r.timedOut) {
    await deps.phones.refresh();
    deps.phones.requireOnline(phone);
    throw new HttpError(
      504,
      `install of ${pkg} (${apk.size} bytes) on ${phone.id} timed out after ${timeoutMs} ms; the phone may be slow or stuck; retry`,
    );
  }
  throw await deps.phones.callFailure(phone, `install of ${pkg} on ${phone.id}`, r);
}

const incrementalFlags = new WeakMap<Adb, Promise<string[]>>();

/**
 * `--no-incremental` when this adb knows it (adb 30 and later try an incremental install first by
 * default); older adb never installs incrementally and refuses the flag.
 */
function noIncremental(adb: Adb): Promise<string[]> {
  let flags = incrementalFlags.get(adb);
  if (!flags) {
    flags = adb.run(undefined, ['help'], { timeoutMs: 10_000 }).then(
      (r) => (`${r.stdout}${r.stderr}`.includes('--no-incremental') ? ['--no-incremental'] : []),
      () => [],
    );
    incrementalFlags.set(adb, flags);
  }
  return flags;
}

function hintFor(code: string): string {
  switch (code) {
    case 'INSTALL_FAILED_INSUFFICIENT_STORAGE':
      return 'free space on the phone (uninstall apps, clear /data/local/tmp) and retry';
    case 'INSTALL_FAILED_UPDATE_INCOMPATIBLE':
    case 'INSTALL_PARSE_FAILED_INCONSISTENT_CERTIFICATES':
      return 'another signature of the app is installed; uninstall it first';
    case 'INSTALL_FAILED_VERSION_DOWNGRADE':
      return 'a newer version is installed; uninstall it first';
    default:
      return 'check the APK';
  }
}

/** versionCode of an installed package from `pm list packages --show-versioncode`, if the phone says. */
async function readVersionCode(deps: PackageDeps, phone: Phone, pkg: string): Promise<number | undefined> {
  const r = await deps.phones.shell(phone, `pm list packages --show-versioncode ${pkg}`, `reading ${pkg}'s version`);
  // The filter matches substrings, so pick the exact package.
  for (const line of r.stdout.split('\n')) {
    const m = /^package:(\S+)\s+versionCode:(\d+)/.exec(line.trim());
    if (m && m[1] === pkg) return Number(m[2]);
  }
  return undefined;
}

/** True when the package is installed (`pm path` prints its APK paths). */
export async function isInstalled(deps: Pick<PackageDeps, 'phones'>, phone: Phone, pkg: string): Promise<boolean> {
  const r = await deps.phones.shell(phone, `pm path ${pkg}`, `looking up ${pkg} on ${phone.id}`);
  return r.code === 0 && /^package:/m.test(r.stdout);
}

/** `POST uninstallApp {packageName}` → `{uninstalled}`; a package that is not there is success. */
export async function uninstallApp(deps: PackageDeps, phone: Phone, body: Json): Promise<Json> {
  const pkg = requirePackage(body.packageName, phone);
  const r = await deps.phones.shell(phone, `pm uninstall ${pkg}`, `uninstall of ${pkg} on ${phone.id}`, {
    timeoutMs: 120_000,
  });
  if (/^Success/m.test(r.stdout)) return { uninstalled: true, packageName: pkg };
  if (!(await isInstalled(deps, phone, pkg))) return { uninstalled: false, packageName: pkg };
  const line = (r.stdout.trim() || r.stderr.trim()).split('\n').pop() ?? `exit ${r.code}`;
  throw new HttpError(422, `uninstall of ${pkg} on ${phone.id} refused: ${line}`);
}
