/**
 * What every scenario shares for reporting: the scenario contract, option parsing, units,
 * statistics, Markdown tables, progress lines and a description of the machine.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PROJECT_ROOT } from '../../src/config';

/** Bytes in a MiB. */
export const MiB = 1024 * 1024;
/** Bytes in a GiB. */
export const GiB = 1024 * MiB;

/** What a scenario hands back: the Markdown body, every measured number, and optionally its own file name. */
export interface ScenarioResult {
  markdown: string;
  json: unknown;
  /** Base name of the result files (default: the scenario's name). */
  file?: string;
}

/** A scenario: runs with the command-line options and the results folder (for extra files such as charts). */
export type ScenarioRun = (ctx: { args: string[]; resultsDir: string }) => Promise<ScenarioResult>;

/** The machine a run happened on, written into every result. */
export interface Machine {
  cpu: string;
  cores: number;
  ramGiB: number;
  os: string;
  kernel: string;
  node: string;
  java: string;
  python: string;
  temporalCli: string;
  commit: string;
  /** ISO time of the run. */
  at: string;
}

/** First line a command prints (stdout, else stderr), or `fallback` when it cannot run. */
function firstLine(cmd: string, args: string[], fallback: string): string {
  const r = spawnSync(cmd, args, { cwd: PROJECT_ROOT, encoding: 'utf8', timeout: 15_000 });
  if (r.error || r.status !== 0) return fallback;
  const line = `${r.stdout}\n${r.stderr}`.split('\n').find((l) => l.trim());
  return line?.trim() ?? fallback;
}

/** Describes this machine and the tool versions; `temporalCli` is the CLI binary, when found. */
export function machineInfo(temporalCli?: string): Machine {
  const read = (file: string) => {
    try {
      return readFileSync(file, 'utf8');
    } catch {
      return '';
    }
  };
  const cpu =
    /^model name\s*:\s*(.+)$/m.exec(read('/proc/cpuinfo'))?.[1]?.trim() ?? os.cpus()[0]?.model ?? 'unknown CPU';
  const osName = /^PRETTY_NAME="?([^"\n]+)"?$/m.exec(read('/etc/os-release'))?.[1] ?? `${os.type()} ${os.release()}`;
  return {
    cpu,
    cores: os.cpus().length,
    ramGiB: round(os.totalmem() / GiB),
    os: osName,
    kernel: os.release(),
    node: process.version,
    // `java -version` writes to stderr.
    java: firstLine('java', ['-version'], 'java not found'),
    python: firstLine('python3', ['--version'], 'python3 not found'),
    temporalCli: temporalCli
      ? firstLine(temporalCli, ['--version'], 'temporal CLI did not answer')
      : 'temporal CLI not found',
    commit: firstLine('git', ['describe', '--always', '--dirty', '--abbrev=7'], 'unknown'),
    at: new Date().toISOString(),
  };
}

/** Prints one progress line of the benchmark (stdout, so it interleaves with the results). */
export function say(msg: string): void {
  process.stdout.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}


/** Rounds to `digits` decimals (1 by default); NaN and infinities pass through. */
export function round(x: number, digits = 1): number {
  if (!Number.isFinite(x)) return x;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** Bytes as MiB with one decimal, as a number for tables and JSON. */
export function toMiB(bytes: number): number {
  return round(bytes / MiB);
}

/** A size for people: "512 KiB", "50 MiB", "1 GiB". */
export function sizeLabel(bytes: number): string {
  if (bytes >= GiB) return `${round(bytes / GiB, 2)} GiB`;
  if (bytes >= MiB) return `${round(bytes / MiB)} MiB`;
  if (bytes >= 1024) return `${round(bytes / 1024)} KiB`;
  return `${bytes} B`;
}

/** Arithmetic mean; NaN for no values. */
export function mean(values: number[]): number {
  return values.length ? values.reduce((a, b) => a + b, 0) / values.length : NaN;
}

/** The p-th percentile (0–100), linear between closest ranks; NaN for no values. */
export function percentile(values: number[], p: number): number {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const at = (Math.min(100, Math.max(0, p)) / 100) * (sorted.length - 1);
  const lo = Math.floor(at);
  const hi = Math.ceil(at);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (at - lo);
}

/** The median; NaN for no values. */
export function median(values: number[]): number {
  return percentile(values, 50);
}

/** A GitHub-flavoured Markdown table; empty, null and undefined cells stay blank. */
export function mdTable(head: string[], rows: unknown[][]): string {
  const cell = (v: unknown) =>
    v === undefined || v === null ? '' : String(v).replace(/\|/g, '\\|').replace(/\r?\n/g, ' ');
  const line = (cells: unknown[]) => `| ${cells.map(cell).join(' | ')} |`;
  return [line(head), `|${head.map(() => '---').join('|')}|`, ...rows.map(line)].join('\n');
}

/** Typed access to `--name value`, `--name=value` and bare `--flag` options. */
export interface Options {
  /** True when `--name` was given (with or without a value). */
  has(name: string): boolean;
  /** The value of `--name`, or `fallback`. */
  str(name: string, fallback: string): string;
  /** The numeric value of `--name`, or `fallback`; throws when it is not a number. */
  num(name: string, fallback: number): number;
  /** A comma-separated list of numbers, or `fallback`. */
  list(name: string, fallback: number[]): number[];
}

/**
 * Reads options lazily: the word after `--name` is its value whatever it looks like, so
 * `--worker-node-args --max-semi-space-size=1` works. Options no scenario asks for are ignored,
 * because every scenario of a run receives the same options.
 */
export function parseOptions(args: string[]): Options {
  const raw = (name: string): string | undefined => {
    const flag = `--${name}`;
    let value: string | undefined;
    args.forEach((a, i) => {
      if (a === flag) {
        const next = args[i + 1];
        if (next === undefined) throw new Error(`${flag} needs a value`);
        value = next;
      } else if (a.startsWith(`${flag}=`)) {
        value = a.slice(flag.length + 1);
      }
    });
    return value;
  };
  const toNum = (name: string, text: string) => {
    const n = Number(text);
    if (text.trim() === '' || !Number.isFinite(n))
      throw new Error(`--${name} expects a number, got ${JSON.stringify(text)}`);
    return n;
  };
  return {
    has: (name) => args.some((a) => a === `--${name}` || a.startsWith(`--${name}=`)),
    str: (name, fallback) => raw(name) ?? fallback,
    num: (name, fallback) => {
      const v = raw(name);
      return v === undefined ? fallback : toNum(name, v);
    },
    list: (name, fallback) => {
      const v = raw(name);
      if (v === undefined) return fallback;
      const items = v
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean)
        .map((s) => toNum(name, s));
      if (!items.length)
        throw new Error(`--${name} expects a comma-separated list of numbers, got ${JSON.stringify(v)}`);
      return items;
    },
  };
}

/** Removes a work folder after a clean run; keeps it (and says where) after a failure, for its logs. */
export function keepOrRemove(dir: string, clean: boolean): void {
  if (clean) {
    rmSync(dir, { recursive: true, force: true });
    return;
  }
  if (existsSync(dir)) say(`logs kept in ${path.relative(PROJECT_ROOT, dir) || dir}`);
}
