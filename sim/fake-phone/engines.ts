/**
 * Test double of a real phone: the two traversal engines a farm runs through `adb shell`.
 *
 * - `monkey` is AOSP Monkey: its launcher script does `trap "" HUP` before `exec app_process`, so it
 *   ignores the hang-up when the adb session goes away and keeps running until its count is done or it is
 *   killed. It stops at the first crash or ANR unless told to ignore them.
 * - `app_process … com.android.commands.monkey.Monkey --agent …` is Fastbot, started from jars pushed to
 *   /sdcard. It takes the default action on SIGHUP (it dies with the session), runs for
 *   `--running-minutes` and keeps going after crashes, which it also appends to /sdcard/crash-dump.log.
 * Both show up as `com.android.commands.monkey` in ps, and both meet the faults of the package's scenario.
 */
import type { Command, Io } from './io';
import { sleep, stamp } from './io';
import { appProcess, signalStatus, stopApp } from './processes';
import type { ScenarioEvent } from './state';

/** Name both engines carry in ps. */
export const PROCESS_NAME = 'com.android.commands.monkey';
/** Main class of both engines. */
export const MONKEY_MAIN = 'com.android.commands.monkey.Monkey';
/** Build fingerprint in crash reports. */
export const BUILD_LABEL = 'google/panther/panther:14/UQ1A.240205.004/11269751:user/release-keys';

/** A process that an engine run owns; `stop` says which signal ended it. */
export class EngineProcess {
  stop: 'HUP' | 'TERM' | 'KILL' | undefined;
  readonly pid: number;
  private wake: (() => void) | undefined;
  /** Set while a STOP holds the process; resolved by CONT or by a signal that ends it. */
  private held: { until: Promise<void>; release: () => void } | undefined;
  private readonly offHangup: () => void;

  constructor(
    private readonly io: Io,
    args: string,
    ignoresHup: boolean,
  ) {
    const proc = io.phone.state.spawn(PROCESS_NAME, args, (sig) => {
      if (sig === 'STOP') {
        if (!this.held) {
          let release = () => {};
          const until = new Promise<void>((resolve) => (release = resolve));
          this.held = { until, release };
        }
        return;
      }
      if (sig === 'CONT') return this.continue();
      if (sig === 'HUP' && ignoresHup) return;
      this.stop ??= sig;
      // A held process takes KILL at once; TERM and HUP wait for CONT, as on Linux.
      if (sig === 'KILL') this.continue();
      this.wake?.();
    });
    this.pid = proc.pid;
    this.offHangup = io.onHangup(() => proc.signal('HUP'));
  }

  /** Sleeps, waking early when a signal ends the process; while a STOP holds it, waits for CONT. */
  async pause(ms: number): Promise<void> {
    if (!this.stop && ms > 0) {
      await Promise.race([sleep(ms), new Promise<void>((resolve) => (this.wake = resolve))]);
      this.wake = undefined;
    }
    while (this.held) await this.held.until;
  }

  private continue(): void {
    const held = this.held;
    this.held = undefined;
    held?.release();
  }

  /** Leaves the process table; returns the status sh reports. */
  exit(status: number): number {
    this.offHangup();
    this.io.phone.state.exit(this.pid);
    return this.stop ? signalStatus(this.stop) : status;
  }
}

/** Buffers lines and sends them in batches, so a fast run does not cost one WRTE per line. */
export class Lines {
  private buf: string[] = [];

  constructor(private readonly write: (t: string) => Promise<void>) {}

  add(...lines: string[]): void {
    this.buf.push(...lines);
  }

  async flush(): Promise<void> {
    if (!this.buf.length) return;
    const text = this.buf.join('\n') + '\n';
    this.buf = [];
    await this.write(text);
  }
}

/** Options Monkey and Fastbot share. */
export interface MonkeyArgs {
  packages: string[];
  count: number;
  seed: number;
  throttle: number;
  verbose: number;
  ignoreCrashes: boolean;
  ignoreTimeouts: boolean;
  killAfterError: boolean;
  agent?: string;
  runningMinutes?: number;
  outputDir?: string;
}

const VALUE_OPTIONS = new Set([
  '-p',
  '-s',
  '--throttle',
  '-c',
  '--pct-touch',
  '--pct-motion',
  '--pct-trackball',
  '--pct-nav',
  '--pct-majornav',
  '--pct-syskeys',
  '--pct-appswitch',
  '--pct-flip',
  '--pct-anyevent',
  '--pct-pinchzoom',
  '--pct-permission',
  '--pct-rotation',
  '-f',
  '--port',
  '--setup',
  '--agent',
  '--running-minutes',
  '--output-directory',
  '--act-whitelist-file',
  '--act-blacklist-file',
  '--bugreport',
  '--periodic-bugreport',
]);
const FLAG_OPTIONS = new Set([
  '--ignore-crashes',
  '--ignore-timeouts',
  '--ignore-security-exceptions',
  '--ignore-native-crashes',
  '--kill-process-after-error',
  '--monitor-native-crashes',
  '--hprof',
  '--randomize-throttle',
  '--wait-dbg',
  '--dbg-no-events',
]);

/** Parses Monkey's command line (Fastbot's adds a few options); a string is the error to print. */
export function parseArgs(args: string[]): MonkeyArgs | string {
  const a: MonkeyArgs = {
    packages: [],
    count: NaN,
    seed: Date.now() % 1e12,
    throttle: 0,
    verbose: 0,
    ignoreCrashes: false,
    ignoreTimeouts: false,
    killAfterError: false,
  };
  for (let i = 0; i < args.length; i++) {
    const o = args[i] as string;
    if (/^-v+$/.test(o)) a.verbose += o.length - 1;
    else if (FLAG_OPTIONS.has(o)) {
      if (o === '--ignore-crashes') a.ignoreCrashes = true;
      if (o === '--ignore-timeouts') a.ignoreTimeouts = true;
      if (o === '--kill-process-after-error') a.killAfterError = true;
    } else if (VALUE_OPTIONS.has(o)) {
      const v = args[++i];
      if (v === undefined) return `** Error: Missing argument for option: ${o}`;
      if (o === '-p') a.packages.push(v);
      else if (o === '-s') a.seed = Number(v);
      else if (o === '--throttle') a.throttle = Number(v);
      else if (o === '--agent') a.agent = v;
      else if (o === '--running-minutes') a.runningMinutes = Number(v);
      else if (o === '--output-directory') a.outputDir = v;
    } else if (o.startsWith('-')) return `** Error: Unknown option: ${o}`;
    else if (i === args.length - 1 && /^\d+$/.test(o)) a.count = Number(o);
    else return `** Error: Invalid argument: ${o}`;
  }
  if (Number.isNaN(a.count) && a.runningMinutes === undefined) return '** Error: Count not specified';
  return a;
}

const USAGE =
  'usage: monkey [-p ALLOWED_PACKAGE [-p ALLOWED_PACKAGE] ...] [-c MAIN_CATEGORY ...]\n              [--ignore-crashes] [--ignore-timeouts] [--throttle MILLISEC] [-s SEED] [-v [-v] ...] COUNT\n';

/** The lines ActivityManager hands Monkey for an ANR. */
export function anrReport(pkg: string, pid: number, reason: string): string[] {
  return [
    `ANR in ${pkg} (${pkg}/.MainActivity)`,
    `PID: ${pid}`,
    `Reason: Input dispatching timed out (${reason})`,
    'Load: 1.52 / 1.21 / 0.98',
    'CPU usage from 0ms to 5012ms later:',
    `  98% ${pid}/${pkg}: 95% user + 3% kernel`,
  ];
}

/** A short traces.txt excerpt for the app's main thread. */
export function anrTraces(pkg: string, pid: number, frames: string[]): string[] {
  return [
    `----- pid ${pid} at ${stamp().slice(0, 19)} -----`,
    `Cmd line: ${pkg}`,
    '"main" prio=5 tid=1 Blocked',
    ...frames.map((f) => `  ${f}`),
    `----- end ${pid} -----`,
  ];
}

/** Frames of a scenario fault, defaulting to one plausible frame in the app. */
export function faultText(pkg: string, e: ScenarioEvent): { short: string; long: string; frames: string[] } {
  const exception = e.exception ?? 'java.lang.RuntimeException';
  const long = e.message ? `${exception}: ${e.message}` : exception;
  const frames = e.frames ?? [`at ${pkg}.MainActivity.onClick(MainActivity.java:42)`];
  return { short: exception, long, frames };
}

/** `monkey [options] <count>`: AOSP Monkey. */
export const monkey: Command = async (argv, io) => {
  const a = parseArgs(argv.slice(1));
  if (typeof a === 'string') {
    await io.err(`${a}\n${USAGE}`);
    return 255;
  }
  const st = io.phone.state;
  const out = new Lines(io.out);
  const err = new Lines(io.err);
  const missing = a.packages.filter((p) => !st.pkg(p));
  if (missing.length || (!a.packages.length && !st.packages().length)) {
    if (a.verbose) out.add(`:Monkey: seed=${a.seed} count=${a.count}`);
    out.add('** No activities found to run, monkey aborted.');
    await out.flush();
    return 251;
  }
  const pkg = a.packages[0] ?? (st.packages()[0]?.name as string);
  const proc = new EngineProcess(io, PROCESS_NAME, true);
  const t0 = Date.now();
  if (a.verbose) {
    out.add(`:Monkey: seed=${a.seed} count=${a.count}`);
    for (const p of a.packages) out.add(`:AllowPackage: ${p}`);
    out.add(':IncludeCategory: android.intent.category.LAUNCHER', ':IncludeCategory: android.intent.category.MONKEY');
    out.add('// Event percentages:');
    [15, 10, 2, 15, -0, -0, 25, 15, 2, 2, 1, 13].forEach((p, i) => out.add(`//   ${i}: ${p.toFixed(1)}%`));
    const cmp = `${pkg}/.MainActivity`;
    out.add(
      `:Switch: #Intent;action=android.intent.action.MAIN;category=android.intent.category.LAUNCHER;launchFlags=0x10200000;component=${cmp};end`,
    );
    out.add(
      `    // Allowing start of Intent { act=android.intent.action.MAIN cat=[android.intent.category.LAUNCHER] cmp=${cmp} } in package ${pkg}`,
    );
  }
  appProcess(io.phone, pkg);
  const faults = new Map((st.scenario(pkg).events ?? []).map((e) => [e.atEvent, e]));
  const per = Math.max(a.throttle, 1);
  let injected = 0;
  let aborted = false;
  for (let n = 1; n <= a.count && !proc.stop; n++) {
    injected = n;
    if (a.verbose && n % 100 === 0) {
      out.add(`    //[calendar_time:${stamp()} system_uptime:${Math.floor(process.uptime() * 1000)}]`);
      out.add(`    // Sending event #${n}`);
    }
    if (a.verbose) {
      const x = ((n * 7919 + a.seed) % 1080).toFixed(1);
      const y = ((n * 104729 + a.seed) % 2400).toFixed(1);
      out.add(`:Sending Touch (ACTION_DOWN): 0:(${x},${y})`, `:Sending Touch (ACTION_UP): 0:(${x},${y})`);
    }
    const fault = faults.get(n);
    if (fault) {
      const app = appProcess(io.phone, pkg).proc;
      const f = faultText(pkg, fault);
      await out.flush();
      if (fault.kind === 'crash') {
        err.add(`// CRASH: ${pkg} (pid ${app.pid})`, `// Short Msg: ${f.short}`, `// Long Msg: ${f.long}`);
        err.add(`// Build Label: ${BUILD_LABEL}`, '// Build Changelist: 11269751', '// Build Time: 1704326400000');
        err.add(`// ${f.long}`, ...f.frames.map((fr) => `// \t${fr}`), '// ');
        stopApp(io.phone, pkg);
      } else {
        err.add(`// NOT RESPONDING: ${pkg} (pid ${app.pid})`, ...anrReport(pkg, app.pid, f.long));
        err.add('anr traces:', ...anrTraces(pkg, app.pid, f.frames), '// ');
        if (a.killAfterError) stopApp(io.phone, pkg);
      }
      await err.flush();
      aborted = fault.kind === 'crash' ? !a.ignoreCrashes : !a.ignoreTimeouts;
      if (aborted) break;
    }
    const ahead = t0 + n * per - Date.now();
    if (ahead >= 4) {
      await out.flush();
      await proc.pause(ahead);
    }
  }
  await out.flush();
  if (proc.stop) return proc.exit(0);
  if (aborted) out.add('** Monkey aborted due to error.');
  const elapsed = Date.now() - t0;
  out.add(`Events injected: ${injected}`, ':Sending rotation degree=0, persist=false');
  out.add(':Dropped: keys=0 pointers=0 trackballs=0 flips=0 rotations=0');
  out.add(`## Network stats: elapsed time=${elapsed}ms (0ms mobile, ${elapsed}ms wifi, 0ms not connected)`);
  await out.flush();
  if (aborted) {
    await io.err(`** System appears to have crashed at event ${injected} of ${a.count} using seed ${a.seed}\n`);
    return proc.exit(injected & 0xff);
  }
  if (a.verbose) await io.out('// Monkey finished\n');
  return proc.exit(0);
};
