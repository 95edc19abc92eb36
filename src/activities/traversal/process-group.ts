/**
 * The traversal command as a process group, and the records that let a later worker find it.
 *
 * The command leads its own process group, so one signal reaches the tool and everything it started
 * (a JVM, adb, emulator helpers). A worker that dies leaves that group running on the phone, so each
 * run is recorded under `<pidsDir>/<deviceId>.json` before the spawn (a worker killed in between
 * still leaves a record) and again once the pid is known:
 *   {runId, pid?, workflowId, startedAt, workerPid, workerStart}
 * A recorded pid is signalled only when /proc shows our marker variables in its environment, so a
 * recycled pid that now belongs to something else is never touched.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { parseWorkflowId } from '../../contract/messages';

/** Environment variable set in the child so a stale process can be recognised after a crash. */
const MARKER = 'DT_TRAVERSAL_DEVICE';
/** Environment variable naming one run of the command, so a run recorded before its pid was known can be found. */
const RUN_MARKER = 'DT_TRAVERSAL_RUN';
/** Variables never handed to the traversal command: credentials of this service. */
const SECRET_ENV = /^(TEMPORAL_|REDIS_|DT_REPORT_SINK_TOKEN|DT_ARTIFACT_TOKEN)/;

/** How the command ended: an exit code, or the signal that ended it. */
export interface GroupExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A command running as the leader of its own process group. */
export interface RunningGroup {
  child: ChildProcess;
  pid: number;
  /** Settles when the command has exited and its output is closed. */
  exited: Promise<GroupExit>;
}

/** Where the sweep logs what it ended. */
export interface SweepLog {
  warn(msg: string, meta?: Record<string, unknown>): void;
}

/** This worker's environment without its credentials, plus the markers of one run on one device. */
export function childEnv(deviceId: string, runId: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!SECRET_ENV.test(k)) env[k] = v;
  return Object.assign(env, { [MARKER]: deviceId, [RUN_MARKER]: runId });
}

/**
 * Starts a command (an argument array, never a shell) as the leader of a new process group, with
 * stdout and stderr piped. Rejects with the spawn error when it could not start.
 */
export async function spawnGroup(
  cmd: string,
  args: string[],
  opts: { cwd: string; env: NodeJS.ProcessEnv },
): Promise<RunningGroup> {
  const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  // Listen for the end at once: a command that exits quickly must not be missed while we await below.
  const exited = new Promise<GroupExit>((resolve) => {
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
  await new Promise<void>((resolve, reject) => {
    child.once('spawn', () => resolve());
    child.once('error', reject);
  });
  return { child, pid: child.pid!, exited };
}

/** Sends a signal to a whole process group; false when the group is gone. */
export function signalGroup(pgid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(-pgid, sig);
    return true;
  } catch {
    return false;
  }
}

/** TERM to the group, then KILL once `gone` settles or the grace period ends, whichever is first. */
async function termThenKill(pgid: number, graceMs: number, gone: Promise<unknown>): Promise<void> {
  signalGroup(pgid, 'SIGTERM');
  const grace = new Promise<void>((resolve) => setTimeout(resolve, graceMs).unref());
  await Promise.race([gone, grace]);
  // The leader may be gone while grandchildren still hold the group: KILL the group regardless.
  signalGroup(pgid, 'SIGKILL');
}

/** Sends TERM to the whole group, then KILL after the grace period if anything is left. */
export async function killGroup(child: ChildProcess, graceMs: number): Promise<void> {
  const pid = child.pid;
  if (!pid) return;
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  await termThenKill(pid, graceMs, exited);
}

/** What a worker records about a running traversal command, one file per device. */
export interface RunRecord {
  /** Set once the command runs; a record without one was written just before the spawn. */
  pid?: number;
  /** The value of DT_TRAVERSAL_RUN in the command's environment. */
  runId?: string;
  workflowId?: string;
  workerPid?: number;
  workerStart?: string;
}

function recordFile(pidsDir: string, deviceId: string): string {
  return path.join(pidsDir, `${deviceId}.json`);
}

/** Records a run of a device's command, stamped with this worker's pid and start time. */
export async function recordRun(
  pidsDir: string,
  deviceId: string,
  run: { runId: string; pid?: number; workflowId: string },
): Promise<void> {
  await fsp.mkdir(pidsDir, { recursive: true });
  await fsp.writeFile(
    recordFile(pidsDir, deviceId),
    JSON.stringify({
      ...run,
      startedAt: new Date().toISOString(),
      workerPid: process.pid,
      workerStart: await OWN_START,
    }),
  );
}

/** Removes a device's record if it is still the one of this run (a later attempt may have replaced it). */
export async function forgetRun(pidsDir: string, deviceId: string, runId: string): Promise<void> {
  const file = recordFile(pidsDir, deviceId);
  if ((await readRunRecord(file))?.runId === runId) await fsp.rm(file, { force: true });
}

async function readRunRecord(file: string): Promise<RunRecord | undefined> {
  try {
    return JSON.parse(await fsp.readFile(file, 'utf8')) as RunRecord;
  } catch {
    return undefined; // nothing recorded
  }
}

/** Every run a worker on this data folder recorded as started and not yet ended. */
export async function recordedRuns(pidsDir: string): Promise<RunRecord[]> {
  const names = (await fsp.readdir(pidsDir).catch(() => [] as string[])).filter((n) => n.endsWith('.json'));
  const records = await Promise.all(names.map((n) => readRunRecord(path.join(pidsDir, n))));
  return records.filter((r): r is RunRecord => r !== undefined);
}

/**
 * Ends a traversal of this device left running by a worker that died (a child process outlives
 * its parent). The process is recognised by the marker variable in /proc/<pid>/environ, so a
 * recycled pid belonging to something else is never signalled.
 */
export async function endStaleRun(
  deps: { pidsDir: string; killGraceMs: number },
  deviceId: string,
  log?: SweepLog,
  opts: { onlyOrphans?: boolean } = {},
): Promise<boolean> {
  const rec = await readRunRecord(recordFile(deps.pidsDir, deviceId));
  if (!rec) return false;
  // A worker starting up ends only runs whose worker is gone: workers sharing a data folder must not
  // end each other's runs. (A new attempt for the device ends the old run whoever started it.)
  if (opts.onlyOrphans && (await workerAlive(rec))) return false;
  // A record without a pid was written just before a spawn that a kill may or may not have let happen.
  const pid = rec.pid ?? (rec.runId ? await findRun(rec.runId, deviceId) : undefined);
  const alive = pid !== undefined && (await isOurProcess(pid, deviceId));
  if (alive) {
    const meta = {
      childPid: pid,
      deviceId,
      taskId: parseWorkflowId(rec.workflowId ?? '')?.taskId,
      workflowId: rec.workflowId,
      workerPid: rec.workerPid,
    };
    await termThenKill(pid, deps.killGraceMs, leaves(pid, deviceId, Date.now() + deps.killGraceMs));
    // Logged once it is done, so the line tells an operator what was taken off the phone.
    const what = opts.onlyOrphans
      ? 'ended the traversal process group of a dead worker at start-up'
      : 'ending stale traversal process group left by a previous attempt';
    log?.warn(what, meta);
  }
  await fsp.rm(recordFile(deps.pidsDir, deviceId), { force: true });
  return alive;
}

/**
 * The start-up sweep: ends every recorded run whose worker died, before this worker takes new work
 * (runs of other live workers sharing the data folder are left alone).
 */
export async function endOrphanedRuns(pidsDir: string, killGraceMs: number, log?: SweepLog): Promise<void> {
  const names = (await fsp.readdir(pidsDir).catch(() => [] as string[])).filter((n) => n.endsWith('.json'));
  for (const name of names) {
    await endStaleRun({ pidsDir, killGraceMs }, name.slice(0, -'.json'.length), log, { onlyOrphans: true });
  }
}

/** Settles once the device's process is gone, or at the deadline (ms since the epoch). */
async function leaves(pid: number, deviceId: string, deadline: number): Promise<void> {
  while (Date.now() < deadline && (await isOurProcess(pid, deviceId))) await new Promise((r) => setTimeout(r, 100));
}

/** The start time of a process (clock ticks since boot, /proc/<pid>/stat field 22), to tell a reused pid apart. */
export async function processStartTime(pid: number): Promise<string | undefined> {
  try {
    const stat = await fsp.readFile(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name, which may itself contain spaces and parentheses.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** This process's start time, read once (the attempt journal records the same value). */
export const OWN_START = processStartTime(process.pid);

/** True when the worker that recorded a run is still that same living process. */
async function workerAlive(rec: RunRecord): Promise<boolean> {
  if (!rec.workerPid || !rec.workerStart) return false;
  const start = await processStartTime(rec.workerPid);
  return start === rec.workerStart;
}

/** The environment and process group of a live process; undefined when it is gone, a zombie or not ours to read. */
async function liveProcess(pid: number | string): Promise<{ env: string[]; pgrp: number } | undefined> {
  try {
    const [environ, stat] = await Promise.all([
      fsp.readFile(`/proc/${pid}/environ`, 'utf8'),
      fsp.readFile(`/proc/${pid}/stat`, 'utf8'),
    ]);
    // Fields after the command name: state, ppid, pgrp.
    const [state, , pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return state === 'Z' ? undefined : { env: environ.split('\0'), pgrp: Number(pgrp) };
  } catch {
    return undefined;
  }
}

/** The process group of a live process started with DT_TRAVERSAL_RUN=`runId` for a device (its children inherit the variable). */
async function findRun(runId: string, deviceId: string): Promise<number | undefined> {
  for (const entry of await fsp.readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry)) continue;
    const p = await liveProcess(entry);
    if (p && p.pgrp > 0 && p.env.includes(`${RUN_MARKER}=${runId}`) && p.env.includes(`${MARKER}=${deviceId}`))
      return p.pgrp;
  }
  return undefined;
}

async function isOurProcess(pid: number, deviceId: string): Promise<boolean> {
  return (await liveProcess(pid))?.env.includes(`${MARKER}=${deviceId}`) ?? false;
}
