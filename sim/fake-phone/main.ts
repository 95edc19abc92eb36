/**
 * Test double of real phones for local runs: starts fake adb daemons and, on request, has the real adb
 * server adopt them.
 *
 *   npm run fake-phone -- --phones 3 [--port-base 5601] [--state-dir .data/fake-phones] [--adb-connect]
 *                         [--model 'Pixel 7'] [--sdk 34] [--time-scale 1] [--trace]
 *
 * `--adb-connect` runs `<adb> connect` per phone, with the adb binary from DT_ADB (default `adb`) and the
 * server port from ANDROID_ADB_SERVER_PORT (passed as -P), the variables the rest of the project uses.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startFakePhones, type FakePhone } from './index';

interface CliArgs {
  phones: number;
  portBase: number;
  stateDir: string;
  adbConnect: boolean;
  model?: string;
  sdk?: number;
  timeScale?: number;
  trace: boolean;
}

const USAGE = `usage: npm run fake-phone -- [--phones 1] [--port-base 5601 | 0 for free ports] [--state-dir .data/fake-phones]
       [--adb-connect] [--model 'Pixel 7'] [--sdk 34] [--time-scale 1] [--trace]   (--trace prints each service adb opens)`;

// Returns undefined for --help; throws with the usage text on bad input.
function parseArgs(argv: string[]): CliArgs | undefined {
  const out: CliArgs = { phones: 1, portBase: 5601, stateDir: '.data/fake-phones', adbConnect: false, trace: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? '';
    if (arg === '--help' || arg === '-h') return undefined;
    if (arg === '--adb-connect' || arg === '--trace') {
      if (arg === '--trace') out.trace = true;
      else out.adbConnect = true;
      continue;
    }
    const eq = arg.indexOf('=');
    const flag = eq > 0 ? arg.slice(0, eq) : arg;
    const value = eq > 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined) throw new Error(`${flag} needs a value\n${USAGE}`);
    const num = (): number => {
      const n = Number(value);
      if (!Number.isFinite(n) || n < 0)
        throw new Error(`${flag} must be a non-negative number (got ${value})\n${USAGE}`);
      return n;
    };
    if (flag === '--phones') out.phones = num();
    else if (flag === '--port-base') out.portBase = num();
    else if (flag === '--state-dir') out.stateDir = value;
    else if (flag === '--model') out.model = value;
    else if (flag === '--sdk') out.sdk = num();
    else if (flag === '--time-scale') out.timeScale = num();
    else throw new Error(`unknown option ${flag}\n${USAGE}`);
  }
  return out;
}

async function adbConnect(phones: FakePhone[]): Promise<void> {
  const adb = process.env.DT_ADB || 'adb';
  const port = process.env.ANDROID_ADB_SERVER_PORT;
  const base = port ? ['-P', port] : [];
  for (const p of phones) {
    const { stdout } = await promisify(execFile)(adb, [...base, 'connect', p.address]);
    console.log(stdout.trim());
  }
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (!args) {
    console.log(USAGE);
    return;
  }
  const phones = await startFakePhones(args.phones, {
    stateDir: args.stateDir,
    portBase: args.portBase,
    model: args.model,
    sdk: args.sdk,
    timeScale: args.timeScale,
    trace: args.trace ? (line) => console.error(line) : undefined,
  });
  for (const p of phones) console.log(`fake phone ${p.address} state ${p.stateDir}`);
  if (args.adbConnect) await adbConnect(phones);
  const stop = (): void => {
    void Promise.all(phones.map((p) => p.close())).then(() => process.exit(0));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

main().catch((err: Error) => {
  console.error(err.message);
  process.exit(1);
});
