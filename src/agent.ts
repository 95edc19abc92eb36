/**
 * Entry point of the adb device agent: `npm run agent -- --adb [options]`. Serves the device agent
 * protocol for the phones of one adb server (src/agent/http.ts); the simulator is `npm run agent-sim`.
 */
import path from 'node:path';
import { Adb, adbFor } from './adb';
import { AdbAgent } from './agent/http';
import { loadConfig, parseDuration } from './config';

const USAGE = `usage: npm run agent -- --adb [--port 7301] [--host 127.0.0.1] [-H <adb server host>] [-P <adb server port>]
       [--data-dir <dir>]          phone baselines and the APK cache (default <DT_DATA_DIR>/agent)
       [--poll 2s]                 how often adb devices is read
       [--install-timeout 60s]     install time limit, plus --install-per-mib (default 200ms) per MiB of APK
The adb binary is DT_ADB (default adb), its server DT_ADB_SERVER (host:port), unless -H/-P are given.
For simulated phones run: npm run agent-sim`;

interface AgentArgs {
  port: number;
  host: string;
  adbHost?: string;
  adbPort?: number;
  dataDir?: string;
  pollMs?: number;
  installBaseMs?: number;
  installMsPerMiB?: number;
}

// Returns undefined for --help; throws with the usage text on bad input.
function parseArgs(argv: string[]): AgentArgs | undefined {
  if (argv.includes('--help') || argv.includes('-h')) return undefined;
  if (!argv.includes('--adb'))
    throw new Error(`the agent drives real phones through adb: pass --adb (or run npm run agent-sim)\n${USAGE}`);
  const out: AgentArgs = { port: 7301, host: '127.0.0.1' };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? '';
    if (arg === '--adb') continue;
    const eq = arg.indexOf('=');
    const flag = eq > 0 ? arg.slice(0, eq) : arg;
    const value = eq > 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined) throw new Error(`${flag} needs a value\n${USAGE}`);
    switch (flag) {
      case '--port':
        out.port = port(flag, value);
        break;
      case '--host':
        out.host = value;
        break;
      case '-H':
        out.adbHost = value;
        break;
      case '-P':
        out.adbPort = port(flag, value);
        break;
      case '--data-dir':
        out.dataDir = path.resolve(value);
        break;
      case '--poll':
        out.pollMs = duration(flag, value);
        break;
      case '--install-timeout':
        out.installBaseMs = duration(flag, value);
        break;
      case '--install-per-mib':
        out.installMsPerMiB = duration(flag, value);
        break;
      default:
        throw new Error(`unknown option ${flag}\n${USAGE}`);
    }
  }
  return out;
}

function port(flag: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new Error(`${flag} expects a port number, got ${value}`);
  return n;
}

function duration(flag: string, value: string): number {
  const n = parseDuration(value);
  if (n === undefined) throw new Error(`${flag} expects milliseconds or a duration like 30s, got ${value}`);
  return n;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (!args) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const config = loadConfig();
  const configured = adbFor(config).options;
  const adb = new Adb({
    ...configured,
    serverHost: args.adbHost ?? configured.serverHost,
    serverPort: args.adbPort ?? configured.serverPort,
  });
  const log = (msg: string, meta?: Record<string, unknown>) =>
    process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), msg, ...meta })}\n`);
  const agent = new AdbAgent({
    adb,
    dataDir: args.dataDir ?? path.join(config.dataDir, 'agent'),
    pollMs: args.pollMs,
    apkMaxBytes: config.apkMaxBytes,
    apkCacheMaxBytes: config.apkCacheMaxBytes,
    apkDiskReserveBytes: config.apkDiskReserveBytes,
    maxDownloads: config.maxOriginDownloads,
    hostId: config.hostId,
    installTimeout: {
      ...(args.installBaseMs !== undefined ? { baseMs: args.installBaseMs } : {}),
      ...(args.installMsPerMiB !== undefined ? { msPerMiB: args.installMsPerMiB } : {}),
    },
    log,
  });
  let stopping = false;
  const stop = (signal: string): void => {
    // A second signal means the operator does not want to wait for installs in progress.
    if (stopping) process.exit(130);
    stopping = true;
    log('adb agent stopping', { signal });
    agent.close().then(
      () => process.exit(0),
      (err) => {
        console.error(err);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  await agent.start(args.port, args.host).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'EADDRINUSE')
      throw new Error(`port ${args.port} on ${args.host} is in use by another program; pick another with --port`);
    throw err;
  });
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
