/**
 * Fastbot's files: the operator's DT_FASTBOT_DIR on the way to each phone, and the logs Fastbot
 * leaves on the phone on the way back into the report.
 *
 * DT_FASTBOT_DIR layout (as Fastbot's release ships it):
 *   monkeyq.jar, framework.jar, fastbot-thirdpart.jar   → /sdcard/<name>
 *   libs/<abi>/libfastbot_native.so (optional)           → /data/local/tmp/<abi>/libfastbot_native.so
 * A file is pushed only when the phone's copy is missing or differs, compared by sha256 (one
 * `sha256sum` on the phone for all of them), so a phone gets the files once, not once per run.
 */
import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Adb } from '../../../adb';
import { shellQuote } from '../../../adb';
import { EngineSetupError } from '../../../contract/errors';

/** The jars Fastbot cannot start without. */
export const FASTBOT_JARS = ['monkeyq.jar', 'framework.jar', 'fastbot-thirdpart.jar'];
/** Where Fastbot appends every crash and ANR record, run after run. */
export const CRASH_DUMP = '/sdcard/crash-dump.log';
/** Files of Fastbot's output folder that go into the report. */
export const OUTPUT_FILES = ['oom-traces.log', 'max.activity.statistics.log'];
/** Time limit of one adb call, ms (a push of a jar over a slow link included). */
const CALL_MS = 120_000;

/** One file of DT_FASTBOT_DIR and where it goes on the phone. */
export interface FastbotFile {
  local: string;
  remote: string;
}

/** The files to push; throws EngineSetupError when the folder is unset, missing or lacks a jar. */
export async function fastbotFiles(dir: string): Promise<FastbotFile[]> {
  const fix = "set DT_FASTBOT_DIR to a folder holding Fastbot's monkeyq.jar, framework.jar and fastbot-thirdpart.jar";
  if (!dir) throw new EngineSetupError('fastbot', 'DT_FASTBOT_DIR is not set', fix);
  const missing: string[] = [];
  const files: FastbotFile[] = [];
  for (const name of FASTBOT_JARS) {
    const local = path.join(dir, name);
    const st = await fsp.stat(local).catch(() => undefined);
    if (!st?.isFile()) missing.push(name);
    else files.push({ local, remote: `/sdcard/${name}` });
  }
  if (missing.length) throw new EngineSetupError('fastbot', `DT_FASTBOT_DIR=${dir} lacks ${missing.join(', ')}`, fix);
  const libs = path.join(dir, 'libs');
  for (const abi of await fsp.readdir(libs).catch(() => [] as string[])) {
    const local = path.join(libs, abi, 'libfastbot_native.so');
    if ((await fsp.stat(local).catch(() => undefined))?.isFile())
      files.push({ local, remote: `/data/local/tmp/${abi}/libfastbot_native.so` });
  }
  return files;
}

/** sha256 of local files, kept per path, size and mtime: the folder rarely changes. */
const localHashes = new Map<string, string>();

async function sha256Of(file: string): Promise<string> {
  const st = await fsp.stat(file);
  const key = `${file}|${st.size}|${st.mtimeMs}`;
  const known = localHashes.get(key);
  if (known) return known;
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  const hex = hash.digest('hex');
  localHashes.set(key, hex);
  return hex;
}

/** The phone's sha256 of each path; a missing file is simply absent (sha256sum names it on stderr). */
export async function phoneHashes(adb: Adb, serial: string, remotes: string[]): Promise<Map<string, string>> {
  const r = await adb.shell(serial, `sha256sum ${remotes.map(shellQuote).join(' ')}`, { timeoutMs: CALL_MS });
  if (r.timedOut || r.code === null) throw new Error(`sha256sum on ${serial} did not answer`);
  const out = new Map<string, string>();
  for (const line of r.stdout.split('\n')) {
    const m = /^([0-9a-f]{64})\s+\*?(\S+)\s*$/.exec(line.trim());
    if (m) out.set(m[2]!, m[1]!);
  }
  return out;
}

/** Pushes the files whose copy on the phone is missing or differs; returns the remote paths pushed. */
export async function pushFastbotFiles(adb: Adb, serial: string, files: FastbotFile[]): Promise<string[]> {
  const onPhone = await phoneHashes(
    adb,
    serial,
    files.map((f) => f.remote),
  );
  const pushed: string[] = [];
  for (const f of files) {
    if (onPhone.get(f.remote) === (await sha256Of(f.local))) continue;
    await adb.push(serial, f.local, f.remote, { timeoutMs: CALL_MS });
    pushed.push(f.remote);
  }
  return pushed;
}

/**
 * Copies Fastbot's logs of one run into `<reportDir>/fastbot/`: the crash dump and the output
 * folder's ANR traces and activity statistics. A file Fastbot did not write is skipped.
 */
export async function pullFastbotFiles(
  adb: Adb,
  serial: string,
  outputDir: string,
  reportDir: string,
): Promise<string[]> {
  const into = path.join(reportDir, 'fastbot');
  await fsp.mkdir(into, { recursive: true });
  const pulled: string[] = [];
  for (const remote of [CRASH_DUMP, ...OUTPUT_FILES.map((n) => `${outputDir}/${n}`)]) {
    const local = path.join(into, path.posix.basename(remote));
    const ok = await adb
      .pull(serial, remote, local, { timeoutMs: CALL_MS })
      .then(() => true)
      .catch(() => false);
    if (ok) pulled.push(remote);
  }
  return pulled;
}
