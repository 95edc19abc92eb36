/** A local redis-server for the demo and the tests, with append-only persistence. */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { canConnect, waitForPort } from './ports';
import { stopProcess } from './process';

/** A running local Redis. */
export interface LocalRedis {
  url: string;
  port: number;
  process?: ChildProcess;
  /** Stops it (TERM, then KILL) when this process started it; safe to call twice. */
  stop(): Promise<void>;
}

/**
 * Starts redis-server on 127.0.0.1:<port> with its files in `dir`; `detached` puts it in its own
 * process group, so a Ctrl-C at the terminal reaches only the caller, which stops it last.
 */
export async function startRedis(opts: {
  port: number;
  dir: string;
  bin?: string;
  detached?: boolean;
}): Promise<LocalRedis> {
  mkdirSync(opts.dir, { recursive: true });
  const bin = opts.bin ?? 'redis-server';
  const child = spawn(
    bin,
    // appendfsync always: a write is in the append-only file before Redis answers it, so a killed Redis
    // loses no acknowledged write (everysec may hold back the last one or two seconds on a busy disk).
    [
      ...['--port', String(opts.port), '--bind', '127.0.0.1', '--dir', opts.dir],
      ...['--appendonly', 'yes', '--appendfsync', 'always', '--save', '', '--protected-mode', 'yes'],
    ],
    { stdio: 'ignore', detached: opts.detached ?? false },
  );
  let exitNote: string | undefined;
  child.once(
    'error',
    (err) =>
      (exitNote = `${err.message}; install it (Debian: apt-get install redis-server) or set REDIS_URL to a running Redis`),
  );
  child.once('exit', (code, sig) => (exitNote ??= `exit ${code ?? sig}`));
  let stopping: Promise<void> | undefined;
  // A second call waits for the same stop, so no caller returns before the server has exited.
  const stop = () => (stopping ??= stopProcess(child));
  try {
    await waitForPort('127.0.0.1', opts.port, 30_000, 'redis-server', () => exitNote);
  } catch (err) {
    await stop();
    throw err;
  }
  return { url: `redis://127.0.0.1:${opts.port}`, port: opts.port, process: child, stop };
}

/** Uses the Redis at `url` when reachable; otherwise starts one on that port when the URL is local. */
export async function ensureRedis(url: string, dir: string, opts: { detached?: boolean } = {}): Promise<LocalRedis> {
  const u = new URL(url);
  const port = Number(u.port || 6379);
  if (await canConnect(u.hostname, port)) return { url, port, stop: async () => undefined };
  if (!['127.0.0.1', 'localhost', '::1', '[::1]'].includes(u.hostname)) {
    throw new Error(`Redis at ${u.hostname}:${port} is not reachable; check REDIS_URL`);
  }
  return startRedis({ port, dir, ...opts });
}
