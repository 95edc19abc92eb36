/**
 * What the adb agent and the engine adapters both do on a phone: read its properties, find and end
 * processes, and keep the record of the engine that runs on it.
 *
 * The engine's pid is recorded on the phone itself (ENGINE_PID_FILE), not on the host that started
 * it: a worker that dies takes its disk records with it, and the run's next attempt, or the agent's
 * reset, may come from another host. Monkey ignores hang-up, so ending the host-side `adb` leaves it
 * running; only a `kill` on the phone ends it.
 */
import { Adb, shellQuote, tail, type AdbCallOptions } from './client';

/** Where the running engine's pid is kept on the phone: `<pid> <engine> <runId>`. */
export const ENGINE_PID_FILE = '/data/local/tmp/device-traversal-engine.pid';
/** The process name of Monkey, and of Fastbot, which runs Monkey's class through app_process. */
export const ENGINE_PROCESS_NAMES = ['com.android.commands.monkey'];
/** Time for a killed process to be gone before it gets SIGKILL, ms. */
const KILL_GRACE_MS = 3000;
/** Default time limit of one short shell call, ms. */
const SHELL_TIMEOUT_MS = 30_000;

/** The engine recorded as running on a phone. */
export interface EngineRecord {
  pid: number;
  engine: string;
  runId: string;
}

/** Runs one shell line on the phone; throws when adb fails or the command exits non-zero. */
export async function shellOk(adb: Adb, serial: string, command: string, o: AdbCallOptions = {}): Promise<string> {
  const r = await adb.shell(serial, command, { timeoutMs: SHELL_TIMEOUT_MS, ...o });
  if (r.code !== 0) throw new Error(`adb -s ${serial} shell ${command}: ${tail(r)}`);
  return r.stdout;
}

/** One system property (`getprop <key>`), '' when unset. */
export async function getprop(adb: Adb, serial: string, key: string, o: AdbCallOptions = {}): Promise<string> {
  return (await shellOk(adb, serial, `getprop ${shellQuote(key)}`, o)).trim();
}

/** The pids of processes with this name on the phone (`pidof`; none is an empty list). */
export async function pidsOf(adb: Adb, serial: string, name: string, o: AdbCallOptions = {}): Promise<number[]> {
  const r = await adb.shell(serial, `pidof ${shellQuote(name)}`, { timeoutMs: SHELL_TIMEOUT_MS, ...o });
  if (r.timedOut || r.code === null) throw new Error(`adb -s ${serial} shell pidof ${name}: ${tail(r)}`);
  return r.stdout
    .split(/\s+/)
    .filter((w) => /^\d+$/.test(w))
    .map(Number);
}

/**
 * Which of these pids are running on the phone, from one `ps` call. Read from `ps` rather than
 * probed with `kill -0`, so looking never signals anything. The PID column is found by its header,
 * which toybox (`-o PID,NAME`) and the older toolbox ps (full table) both print.
 */
export async function alivePids(adb: Adb, serial: string, pids: number[], o: AdbCallOptions = {}): Promise<number[]> {
  if (!pids.length) return [];
  const r = await adb.shell(serial, 'ps -A -o PID,NAME', { timeoutMs: SHELL_TIMEOUT_MS, ...o });
  if (r.timedOut || r.code === null) throw new Error(`adb -s ${serial} shell ps: ${tail(r)}`);
  const [header = '', ...rows] = r.stdout.split('\n');
  const col = header.trim().split(/\s+/).indexOf('PID');
  if (col < 0) throw new Error(`adb -s ${serial} shell ps: no PID column in "${header.trim()}"`);
  const running = new Set(rows.map((row) => row.trim().split(/\s+/)[col]));
  return pids.filter((pid) => running.has(String(pid)));
}

/**
 * Ends processes on the phone: TERM, then KILL for any still there after a grace period. Resolves
 * with the pids that were found running; throws when one survives KILL.
 */
export async function killOnPhone(adb: Adb, serial: string, pids: number[], o: AdbCallOptions = {}): Promise<number[]> {
  const found = await alivePids(adb, serial, pids, o);
  if (!found.length) return [];
  // CONT after TERM: a process held by STOP (a paused engine) acts on TERM only once it runs again.
  await adb.shell(serial, `kill ${found.join(' ')}; kill -CONT ${found.join(' ')}`, {
    timeoutMs: SHELL_TIMEOUT_MS,
    ...o,
  });
  const deadline = Date.now() + KILL_GRACE_MS;
  let alive = found;
  while (alive.length && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200));
    alive = await alivePids(adb, serial, alive, o);
  }
  if (alive.length) {
    await adb.shell(serial, `kill -9 ${alive.join(' ')}`, { timeoutMs: SHELL_TIMEOUT_MS, ...o });
    await new Promise((r) => setTimeout(r, 200));
    alive = await alivePids(adb, serial, alive, o);
    if (alive.length) throw new Error(`processes ${alive.join(', ')} on ${serial} survived kill -9`);
  }
  return found;
}

/** Records the running engine on the phone. */
export async function writeEngineRecord(adb: Adb, serial: string, rec: EngineRecord, o: AdbCallOptions = {}) {
  const line = `${rec.pid} ${rec.engine} ${rec.runId}`;
  await shellOk(adb, serial, `echo ${shellQuote(line)} > ${ENGINE_PID_FILE}`, o);
}

/** The engine recorded on the phone, if any. */
export async function readEngineRecord(
  adb: Adb,
  serial: string,
  o: AdbCallOptions = {},
): Promise<EngineRecord | undefined> {
  const r = await adb.shell(serial, `cat ${ENGINE_PID_FILE}`, { timeoutMs: SHELL_TIMEOUT_MS, ...o });
  const m = r.code === 0 ? /^(\d+)\s+(\S+)\s+(\S+)/.exec(r.stdout.trim()) : null;
  return m ? { pid: Number(m[1]), engine: m[2]!, runId: m[3]! } : undefined;
}

/** Removes the engine record. */
export async function clearEngineRecord(adb: Adb, serial: string, o: AdbCallOptions = {}): Promise<void> {
  await adb.shell(serial, `rm -f ${ENGINE_PID_FILE}`, { timeoutMs: SHELL_TIMEOUT_MS, ...o });
}

/**
 * Ends every engine left on a phone: the recorded pid first, then any process with an engine's
 * name (a run whose record was never written). Returns the pids it ended.
 */
export async function sweepEngines(adb: Adb, serial: string, o: AdbCallOptions = {}): Promise<number[]> {
  const pids = new Set<number>();
  const rec = await readEngineRecord(adb, serial, o);
  if (rec) pids.add(rec.pid);
  for (const name of ENGINE_PROCESS_NAMES) for (const pid of await pidsOf(adb, serial, name, o)) pids.add(pid);
  const ended = await killOnPhone(adb, serial, [...pids], o);
  await clearEngineRecord(adb, serial, o);
  return ended;
}
