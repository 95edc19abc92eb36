/**
 * The `adb` client binary, run as a child process: the one way this project talks to phones.
 *
 * Everything goes through the real adb and its server (the server keeps the USB or TCP transports),
 * so a phone on this host, a phone behind an adb server on another host (`-H`/`-P`, or the
 * `ADB_SERVER_SOCKET` variable, which adb reads itself) and a fake phone in the tests are driven the
 * same way. Output of one call is captured up to a cap, never without bound; an install hands adb the
 * file's path (`adb install`), so its bytes never pass through this process.
 */
import { spawn } from 'node:child_process';
import type { Readable } from 'node:stream';

/** Which adb binary to run and which server it talks to. */
export interface AdbOptions {
  /** The adb binary (DT_ADB, else `adb` on PATH). */
  bin: string;
  /** Host of the adb server (`-H`); unset: adb's default or ADB_SERVER_SOCKET. */
  serverHost?: string;
  /** Port of the adb server (`-P`); unset: adb's default (5037) or ANDROID_ADB_SERVER_PORT. */
  serverPort?: number;
  /** Environment of the adb processes; unset: this process's. */
  env?: NodeJS.ProcessEnv;
}

/** Per-call options. */
export interface AdbCallOptions {
  /** Ends the call (SIGKILL to the adb client) after this long, ms; the result then says timedOut. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Most bytes of stdout (and of stderr) kept; the rest is dropped. Default 1 MiB. */
  maxOutputBytes?: number;
}

/** How one adb call ended. */
export interface AdbResult {
  /** Exit code of adb; for `shell` on a phone with shell protocol v2, the remote command's. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** True when the call was ended by timeoutMs. */
  timedOut: boolean;
}

/** One line of `adb devices -l`. */
export interface AdbDevice {
  serial: string;
  /** `device`, `offline`, `unauthorized`, `no permissions`, `recovery`, … as adb says it. */
  state: string;
  /** The `key:value` words after the state (product, model, device, transport_id, usb). */
  props: Record<string, string>;
}

/** adb could not be run at all (missing binary), or a call was cancelled. */
export class AdbUnavailableError extends Error {
  override readonly name = 'AdbUnavailableError';
}

const DEFAULT_MAX_OUTPUT = 1024 * 1024;

/** Quotes one word for the phone's shell (`adb shell` joins its arguments with spaces). */
export function shellQuote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** Parses the text of `adb devices -l`. */
export function parseDevices(text: string): AdbDevice[] {
  const out: AdbDevice[] = [];
  for (const line of text.split('\n')) {
    const t = line.trim();
    if (!t || t.startsWith('List of devices') || t.startsWith('*')) continue;
    // "<serial>  <state> k:v k:v"; the state may be two words ("no permissions (…)").
    const m = /^(\S+)\s+(no permissions|\S+)(.*)$/.exec(t);
    if (!m) continue;
    const props: Record<string, string> = {};
    for (const word of m[3]!.trim().split(/\s+/)) {
      const i = word.indexOf(':');
      if (i > 0) props[word.slice(0, i)] = word.slice(i + 1);
    }
    out.push({ serial: m[1]!, state: m[2]!, props });
  }
  return out;
}

/** The adb client, with the server it talks to fixed. */
export class Adb {
  constructor(readonly options: AdbOptions) {}

  /** The full argv of an adb call (binary first), for a caller that spawns it itself. */
  argv(serial: string | undefined, ...args: string[]): [string, ...string[]] {
    const { bin, serverHost, serverPort } = this.options;
    const out: [string, ...string[]] = [bin];
    if (serverHost) out.push('-H', serverHost);
    if (serverPort) out.push('-P', String(serverPort));
    if (serial) out.push('-s', serial);
    out.push(...args);
    return out;
  }

  /** The environment adb processes run with. */
  get env(): NodeJS.ProcessEnv {
    return this.options.env ?? process.env;
  }

  /** Runs one adb call to its end and returns its exit and (capped) output. */
  run(serial: string | undefined, args: string[], o: AdbCallOptions = {}): Promise<AdbResult> {
    const [bin, ...rest] = this.argv(serial, ...args);
    const max = o.maxOutputBytes ?? DEFAULT_MAX_OUTPUT;
    return new Promise<AdbResult>((resolve, reject) => {
      if (o.signal?.aborted) return reject(new AdbUnavailableError(`adb ${args[0] ?? ''} cancelled`));
      const child = spawn(bin, rest, { env: this.env, stdio: ['ignore', 'pipe', 'pipe'] });
      const out = capture(child.stdout!, max);
      const err = capture(child.stderr!, max);
      let timedOut = false;
      const timer = o.timeoutMs
        ? setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, o.timeoutMs)
        : undefined;
      const onAbort = () => child.kill('SIGKILL');
      o.signal?.addEventListener('abort', onAbort, { once: true });
      child.once('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        o.signal?.removeEventListener('abort', onAbort);
        reject(
          new AdbUnavailableError(
            e.code === 'ENOENT' ? `adb binary not found: ${bin} (install adb or set DT_ADB)` : `adb: ${e.message}`,
          ),
        );
      });
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        o.signal?.removeEventListener('abort', onAbort);
        if (o.signal?.aborted && !timedOut) return reject(new AdbUnavailableError(`adb ${args[0] ?? ''} cancelled`));
        resolve({ code, signal, stdout: out(), stderr: err(), timedOut });
      });
    });
  }

  /** `adb -s <serial> shell <command>`: the command is one line of the phone's shell. */
  shell(serial: string, command: string, o: AdbCallOptions = {}): Promise<AdbResult> {
    return this.run(serial, ['shell', command], o);
  }

  /** The phones the server knows, with their states. */
  async devices(o: AdbCallOptions = {}): Promise<AdbDevice[]> {
    const r = await this.run(undefined, ['devices', '-l'], { timeoutMs: 15_000, ...o });
    if (r.code !== 0) throw new AdbUnavailableError(`adb devices failed: ${(r.stderr || r.stdout).trim()}`);
    return parseDevices(r.stdout);
  }

  /** Starts the server when none is running (adb does so itself on first use, but slowly and silently). */
  async startServer(o: AdbCallOptions = {}): Promise<void> {
    const r = await this.run(undefined, ['start-server'], { timeoutMs: 30_000, ...o });
    if (r.code !== 0) throw new AdbUnavailableError(`adb start-server failed: ${(r.stderr || r.stdout).trim()}`);
  }

  /** Copies a file from this host to the phone. */
  async push(serial: string, local: string, remote: string, o: AdbCallOptions = {}): Promise<void> {
    const r = await this.run(serial, ['push', local, remote], o);
    if (r.code !== 0) throw new Error(`adb push ${local} ${remote} failed: ${tail(r)}`);
  }

  /** Copies a file from the phone to this host. */
  async pull(serial: string, remote: string, local: string, o: AdbCallOptions = {}): Promise<void> {
    const r = await this.run(serial, ['pull', remote, local], o);
    if (r.code !== 0) throw new Error(`adb pull ${remote} ${local} failed: ${tail(r)}`);
  }
}

/** The last line adb printed, for error messages. */
export function tail(r: AdbResult): string {
  if (r.timedOut) return 'timed out';
  const text = (r.stderr.trim() || r.stdout.trim()).split('\n').pop() ?? '';
  return text || `exit ${r.code ?? r.signal}`;
}

/** Collects a stream's text up to `max` bytes; returns a reader of what was kept. */
function capture(stream: Readable, max: number): () => string {
  const chunks: Buffer[] = [];
  let kept = 0;
  stream.on('data', (c: Buffer) => {
    if (kept >= max) return;
    const part = c.length > max - kept ? c.subarray(0, max - kept) : c;
    chunks.push(part);
    kept += part.length;
  });
  return () => Buffer.concat(chunks).toString('utf8');
}
