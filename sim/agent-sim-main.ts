import { AgentSimulator } from './agent-sim';

interface AgentSimArgs {
  devices: string[];
  port: number;
  host: string;
  latencyMs: number;
  failureRate: number;
  offline: string[];
  installDelayMs: number;
  stateFile?: string;
  hostId?: string;
}

const USAGE = `usage: npm run agent-sim -- [--devices 5 | --devices sim-1,sim-2] [--port 7301] [--host 127.0.0.1]
       [--latency-ms 0] [--failure-rate 0] [--offline sim-2,sim-3] [--install-delay-ms 0]
       [--state-file path.json]   keep installed apps across restarts (default: memory only)
       [--host-id rack-a]         the phone host named as the owner of the devices (default: DT_HOST_ID or the host name)`;

// Returns undefined for --help; throws with the usage text on bad input.
function parseArgs(argv: string[]): AgentSimArgs | undefined {
  const out: AgentSimArgs = {
    devices: numbered(5),
    port: 7301,
    host: '127.0.0.1',
    latencyMs: 0,
    failureRate: 0,
    offline: [],
    installDelayMs: 0,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? '';
    if (arg === '--help' || arg === '-h') return undefined;
    // Accept both "--flag value" and "--flag=value" since both show up in scripts.
    const eq = arg.indexOf('=');
    const flag = eq > 0 ? arg.slice(0, eq) : arg;
    const value = eq > 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined) throw new Error(`${flag} needs a value\n${USAGE}`);
    switch (flag) {
      case '--devices':
        out.devices = /^\d+$/.test(value) ? numbered(Number(value)) : list(value);
        break;
      case '--port':
        out.port = num(flag, value);
        break;
      case '--host':
        out.host = value;
        break;
      case '--latency-ms':
        out.latencyMs = num(flag, value);
        break;
      case '--failure-rate':
        out.failureRate = num(flag, value);
        break;
      case '--offline':
        out.offline = list(value);
        break;
      case '--install-delay-ms':
        out.installDelayMs = num(flag, value);
        break;
      case '--host-id':
        out.hostId = value;
        break;
      case '--state-file':
        out.stateFile = value;
        break;
      default:
        throw new Error(`unknown option ${flag}\n${USAGE}`);
    }
  }
  if (out.devices.length === 0) throw new Error(`--devices must name at least one device\n${USAGE}`);
  return out;
}

function numbered(n: number): string[] {
  return Array.from({ length: n }, (_, i) => `sim-${i + 1}`);
}

function list(value: string): string[] {
  return value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

function num(flag: string, value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${flag} expects a non-negative number, got ${value}`);
  return n;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (!args) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const sim = new AgentSimulator({
    devices: args.devices,
    latencyMs: args.latencyMs,
    failureRate: args.failureRate,
    offline: args.offline,
    installDelayMs: args.installDelayMs,
    ...(args.stateFile ? { stateFile: args.stateFile } : {}),
    ...(args.hostId ? { hostId: args.hostId } : {}),
    // One JSON object per line keeps the output greppable and machine-readable for the demo.
    log: (msg, meta) => process.stdout.write(`${JSON.stringify({ msg, ...meta })}\n`),
  });
  const url = await sim.start(args.port, args.host).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'EADDRINUSE')
      throw new Error(
        `port ${args.port} on ${args.host} is in use by another program; stop it or pick another with --port`,
      );
    throw err;
  });
  process.stdout.write(`${JSON.stringify({ msg: 'agent-sim listening', url, devices: sim.deviceIds() })}\n`);

  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) {
      // A second Ctrl-C means the user does not want to wait for in-flight transfers.
      process.exit(130);
    }
    stopping = true;
    process.stdout.write(`${JSON.stringify({ msg: 'agent-sim stopping', signal })}\n`);
    sim.close().then(
      () => process.exit(0),
      (err) => {
        console.error(err);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
