/**
 * `npm run dev:server`: the local Temporal dev server in the foreground, with a SQLite file so
 * workflows survive a restart, and the project's search attributes registered. Ctrl-C stops it.
 *
 *   npm run dev:server -- [--port 7233] [--ui-port 8233] [--db .data/temporal.db]
 *
 * Defaults: the port of TEMPORAL_ADDRESS (else 7233); the UI on that port + 1000 (8233), as the
 * CLI itself does; the database at <DT_DATA_DIR>/temporal.db.
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../src/config';
import { canConnect } from '../dev/ports';
import { startDevServer } from '../dev/temporal-dev';
import { SEARCH_ATTRIBUTE_NAMES } from '../src/contract/search-attributes';
import { temporalSettings } from '../src/temporal-connection';

const HOST = '127.0.0.1';

/** Parses a port option; names the flag in the error. */
function portOption(flag: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new Error(`${flag} ${text} is not a port number (1-65535)`);
  return n;
}

/** The port part of "host:port" (IPv6 hosts in brackets allowed); undefined when absent. */
function portOf(address: string): string | undefined {
  return /:(\d+)$/.exec(address)?.[1];
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { port: { type: 'string' }, 'ui-port': { type: 'string' }, db: { type: 'string' } },
    strict: true,
  });
  const config = loadConfig();
  const settings = temporalSettings();
  const port = portOption('--port', values.port, Number(portOf(settings.address) ?? 7233));
  const uiPort = portOption('--ui-port', values['ui-port'], port + 1000);
  // A path typed on the command line is relative to where the user is; the default follows DT_DATA_DIR.
  const dbFile = values.db ? path.resolve(values.db) : path.join(config.dataDir, 'temporal.db');
  const logFile = path.join(config.dataDir, 'temporal-dev.log');

  for (const [what, p] of [
    ['gRPC', port],
    ['Web UI', uiPort],
  ] as const) {
    if (await canConnect(HOST, p)) {
      console.error(
        `Something already listens on ${HOST}:${p} (the ${what} port). ` +
          (what === 'gRPC'
            ? 'Maybe a dev server is running already: use it, stop it, or pass --port <other>.'
            : 'Pass --ui-port <other>.'),
      );
      process.exit(1);
    }
  }

  console.log(`Starting the Temporal dev server (db ${dbFile}, server log ${logFile}) …`);
  const server = await startDevServer({ ip: HOST, port, uiPort, dbFile, logFile });

  console.log(`Temporal dev server ready
  gRPC address       ${server.address}   (TEMPORAL_ADDRESS=${server.address})
  namespace          ${server.namespace}
  Web UI             ${server.uiUrl}
  search attributes  ${SEARCH_ATTRIBUTE_NAMES.map((n) => `${n} (Keyword)`).join(', ')}
  database           ${dbFile}
Press Ctrl-C to stop.`);

  const outcome = await new Promise<{ signal: NodeJS.Signals } | { exit: string }>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => resolve({ signal });
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    server.process.once('exit', (code, sig) =>
      resolve({ exit: code !== null ? `exit code ${code}` : `signal ${sig}` }),
    );
  });

  if ('exit' in outcome) {
    console.error(`The Temporal dev server stopped by itself (${outcome.exit}); see ${logFile}`);
    process.exit(1);
  }
  console.log(`${outcome.signal}: stopping the dev server …`);
  await server.stop();
  console.log('Stopped. Workflows are kept in', dbFile);
}

main().catch((err) => {
  console.error(`dev-server: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
