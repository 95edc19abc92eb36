/**
 * Processes of the local stack, shared by the tests, the benchmarks and the demo: spawn one with its
 * output in a log file, and stop one with TERM, a grace period, then KILL.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, createWriteStream, existsSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { PROJECT_ROOT } from '../src/config';
import type { Scope } from './scope';

/** True until the child has exited (or was never started). */
export function running(child: ChildProcess): boolean {
  return child.pid !== undefined && child.exitCode === null && child.signalCode === null;
}

/**
 * Stops a child: SIGTERM, then SIGKILL when it is still there after `graceMs`; resolves once it has
 * exited. A child that already exited resolves at once.
 */
export async function stopProcess(child: ChildProcess, graceMs = 10_000): Promise<void> {
  if (!running(child)) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** The last lines of a log file, for error messages ('' when it does not exist). */
export function logTail(file: string, lines = 15): string {
  return existsSync(file) ? readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n') : '';
}

/**
 * The environment of a child: this process's without the variables that select services (Temporal,
 * Redis, task queue, DT_*), so a child sees only the settings its caller gives it, plus `env`.
 */
export function childEnv(env: Record<string, string> = {}): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(TEMPORAL_|REDIS_URL$|TASK_QUEUE$|DT_)/.test(k)) out[k] = v;
  }
  return { ...out, ...env };
}

/** How a spawned process ended. */
export interface ProcessExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A spawned process whose output goes to a log file (kept after it exits). */
export interface LoggedProcess {
  name: string;
  child: ChildProcess;
  /** -1 when the command could not be started. */
  pid: number;
  logFile: string;
  /** Settles when the process has exited or could not start. */
  exited: Promise<ProcessExit>;
  /** True until the process has exited. */
  alive(): boolean;
  /** Undefined while it runs; how it ended (and where its log is) once it has exited. */
  exitNote(): string | undefined;
  /** Sends a signal (SIGKILL by default) and waits for the exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** TERM, then KILL after `graceMs` (default: the spawn option, else 10 s); safe to call twice. */
  stop(graceMs?: number): Promise<void>;
  /** JSON log lines written so far (other lines are skipped). */
  logs(): Record<string, unknown>[];
  /** Waits for a JSON log line whose `msg` matches and whose fields include `fields`. */
  waitForLog(
    msg: string | RegExp,
    timeoutMs?: number,
    fields?: Record<string, unknown>,
  ): Promise<Record<string, unknown>>;
}

/** Options of {@link spawnLogged}. */
export interface SpawnOptions {
  logFile: string;
  /** Environment on top of {@link childEnv}. */
  env?: Record<string, string>;
  /** Pass this environment as it is instead (the demo hands its own settings through). */
  fullEnv?: NodeJS.ProcessEnv;
  /** Default: the project root. */
  cwd?: string;
  /** 'pipe' gives the caller `child.stdin` (default: none). */
  stdin?: 'pipe' | 'ignore';
  /** 'pipe' gives the caller `child.stdout` (a copy still goes to the log); default: the log only. */
  stdout?: 'pipe' | 'log';
  /** Own process group, so a Ctrl-C at the terminal reaches only the caller (default false). */
  detached?: boolean;
  /** Registers `stop()` with this scope. */
  scope?: Scope;
  /** Grace of `stop()` between TERM and KILL when the caller gives none, ms (default 10 s). */
  graceMs?: number;
}

/** Spawns `command` with its stdout and stderr appended to `opts.logFile`. */
export function spawnLogged(name: string, command: string, args: string[], opts: SpawnOptions): LoggedProcess {
  const { logFile } = opts;
  mkdirSync(path.dirname(logFile), { recursive: true });
  const fd = openSync(logFile, 'a');
  const pipeOut = opts.stdout === 'pipe';
  const child = spawn(command, args, {
    cwd: opts.cwd ?? PROJECT_ROOT,
    env: opts.fullEnv ?? childEnv(opts.env),
    stdio: [opts.stdin ?? 'ignore', pipeOut ? 'pipe' : fd, fd],
    detached: opts.detached ?? false,
  });
  closeSync(fd);
  if (pipeOut && child.stdout) {
    const copy = createWriteStream(logFile, { flags: 'a' });
    child.stdout.on('data', (chunk: Buffer) => copy.write(chunk));
    child.stdout.once('close', () => copy.end());
  }
  let note: string | undefined;
  const exited = new Promise<ProcessExit>((resolve) => {
    child.once('exit', (code, signal) => {
      note = `${name} exited (${signal ?? `code ${code}`}); see ${path.relative(PROJECT_ROOT, logFile)}`;
      resolve({ code, signal });
    });
    child.once('error', (err) => {
      note = `${name} could not run: ${err.message}`;
      resolve({ code: null, signal: null });
    });
  });
  const alive = () => note === undefined && running(child);
  const logs = () => jsonLines(logFile);
  let stopping: Promise<void> | undefined;
  const proc: LoggedProcess = {
    name,
    child,
    pid: child.pid ?? -1,
    logFile,
    exited,
    alive,
    exitNote: () => note,
    logs,
    async kill(signal = 'SIGKILL') {
      if (!alive()) return;
      child.kill(signal);
      await exited;
    },
    stop(graceMs = opts.graceMs ?? 10_000) {
      stopping ??= alive() ? stopProcess(child, graceMs) : Promise.resolve();
      return stopping;
    },
    async waitForLog(msg, timeoutMs = 60_000, fields = {}) {
      const deadline = Date.now() + timeoutMs;
      const matches = (e: Record<string, unknown>) =>
        (typeof msg === 'string' ? e.msg === msg : msg.test(String(e.msg))) &&
        Object.entries(fields).every(([k, v]) => e[k] === v);
      for (;;) {
        const hit = logs().find(matches);
        if (hit) return hit;
        if (!alive())
          throw new Error(`${name} exited before logging ${String(msg)}; see ${logFile}:\n${logTail(logFile)}`);
        if (Date.now() > deadline)
          throw new Error(
            `${name} did not log ${String(msg)} within ${timeoutMs} ms; see ${logFile}:\n${logTail(logFile)}`,
          );
        await new Promise((r) => setTimeout(r, 100));
      }
    },
  };
  opts.scope?.add(name, () => proc.stop());
  return proc;
}

/** The JSON lines of a log file; a line cut short by a kill is skipped. */
function jsonLines(file: string): Record<string, unknown>[] {
  const text = existsSync(file) ? readFileSync(file, 'utf8') : '';
  const out: Record<string, unknown>[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // cut by a kill
    }
  }
  return out;
}
