/**
 * The local dev server tooling: search attributes exist on a fresh SQLite file and are still there
 * after a restart on the same file; registering them is idempotent; `npm run dev:server` refuses a
 * port that is taken and stops cleanly on SIGINT.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { PROJECT_ROOT } from '../src/config';
import { freePort } from '../src/net/ports';
import {
  ensureSearchAttributes,
  findTemporalCli,
  startDevServer,
  waitForNamespace,
  type DevServer,
} from '../dev/temporal-dev';
import { SEARCH_ATTRIBUTE_NAMES } from '../src/contract/search-attributes';
import { stopProcess } from '../dev/process';

const run = promisify(execFile);
const SCRIPT = path.join(PROJECT_ROOT, 'scripts', 'dev-server.ts');

/** Custom search attributes and their types, as the CLI lists them. */
async function customAttributes(server: DevServer): Promise<Record<string, string>> {
  const { stdout } = await run(server.cli, [
    'operator',
    'search-attribute',
    'list',
    '-o',
    'json',
    '--address',
    server.address,
    '-n',
    server.namespace,
  ]);
  const doc = JSON.parse(stdout) as { customAttributes?: Record<string, string> };
  return doc.customAttributes ?? {};
}

function assertRegistered(attrs: Record<string, string>): void {
  for (const name of SEARCH_ATTRIBUTE_NAMES) {
    assert.ok(name in attrs, `${name} is registered (found: ${Object.keys(attrs).join(', ')})`);
    assert.match(String(attrs[name]), /keyword/i, `${name} is a Keyword attribute`);
  }
}

/** Runs scripts/dev-server.ts as `npm run dev:server` would, with its output collected. */
function runScript(args: string[], env: NodeJS.ProcessEnv) {
  const child = spawn(process.execPath, ['-r', 'ts-node/register/transpile-only', SCRIPT, ...args], {
    cwd: PROJECT_ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (b: Buffer) => (output += b.toString()));
  child.stderr.on('data', (b: Buffer) => (output += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, exited, output: () => output };
}

async function until(pred: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A dev server started the plain way (no search attributes) on `dbFile`, until `stop()`. */
async function startPlainDevServer(cli: string, dbFile: string): Promise<{ address: string; stop(): Promise<void> }> {
  mkdirSync(path.dirname(dbFile), { recursive: true });
  const port = await freePort();
  const address = `127.0.0.1:${port}`;
  const args = ['server', 'start-dev', '--ip', '127.0.0.1', '--port', String(port), '--headless'];
  const child = spawn(cli, [...args, '--db-filename', dbFile, '--log-level', 'error'], { stdio: 'ignore' });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const stop = async () => {
    child.kill('SIGTERM');
    await exited;
  };
  try {
    await waitForNamespace(cli, address, 'default', 60_000);
  } catch (err) {
    await stop();
    throw err;
  }
  return { address, stop };
}

describe('local dev server', function () {
  this.timeout(90_000);
  let dir: string;
  let server: DevServer | undefined;
  // The script must not see the test run's Temporal or data settings.
  const scriptEnv = (): NodeJS.ProcessEnv => {
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      DT_DATA_DIR: path.join(dir, 'data'),
    };
    if (process.env.TEMPORAL_CLI) env.TEMPORAL_CLI = process.env.TEMPORAL_CLI;
    return env;
  };

  before(function () {
    dir = mkdtempSync(path.join(os.tmpdir(), 'dt-devserver-'));
  });
  afterEach(async function () {
    await server?.stop();
    server = undefined;
  });
  after(function () {
    rmSync(dir, { recursive: true, force: true });
  });

  it('registers the search attributes on a new db file and still has them after a restart on the same file', async function () {
    const dbFile = path.join(dir, 'restart', 'temporal.db');
    server = await startDevServer({ port: await freePort(), uiPort: 0, dbFile });
    assertRegistered(await customAttributes(server));
    assert.deepEqual(
      await ensureSearchAttributes(server.cli, server.address, server.namespace),
      [],
      'nothing left to register',
    );
    await server.stop();
    await server.stop(); // safe twice
    assert.ok(existsSync(dbFile), 'the SQLite file was written');

    server = await startDevServer({ port: await freePort(), uiPort: 0, dbFile });
    assertRegistered(await customAttributes(server));
    assert.deepEqual(
      await ensureSearchAttributes(server.cli, server.address, server.namespace),
      [],
      'still nothing to register',
    );
  });

  it('registers missing search attributes on an existing database that was created without them', async function () {
    const cli = findTemporalCli();
    // A database made by a plain `temporal server start-dev`, as a user may already have.
    const plain = await startPlainDevServer(cli, path.join(dir, 'plain', 'temporal.db'));
    try {
      const listed = () => customAttributes({ cli, address: plain.address, namespace: 'default' } as DevServer);
      for (const name of SEARCH_ATTRIBUTE_NAMES) assert.ok(!(name in (await listed())), `${name} absent at first`);
      // The registration step creates every missing one, and only those.
      assert.deepEqual(
        [...(await ensureSearchAttributes(cli, plain.address, 'default'))].sort(),
        [...SEARCH_ATTRIBUTE_NAMES].sort(),
      );
      assertRegistered(await listed());
      assert.deepEqual(await ensureSearchAttributes(cli, plain.address, 'default'), [], 'idempotent');
    } finally {
      await plain.stop();
    }

    // Another plain database, then the project's own start on it: the attributes are there.
    const dbFile2 = path.join(dir, 'plain2', 'temporal.db');
    await (await startPlainDevServer(cli, dbFile2)).stop();
    server = await startDevServer({ port: await freePort(), uiPort: 0, dbFile: dbFile2 });
    assertRegistered(await customAttributes(server));
  });

  it('`npm run dev:server` refuses a port that is already in use', async function () {
    const taken = Number(/:(\d+)$/.exec(process.env.TEST_TEMPORAL_ADDRESS!)![1]);
    const script = runScript(['--port', String(taken), '--ui-port', String(await freePort())], scriptEnv());
    const code = await script.exited;
    assert.equal(code, 1, script.output());
    assert.match(script.output(), new RegExp(`already listens on 127\\.0\\.0\\.1:${taken}`));
  });

  it('`npm run dev:server` prints the address, UI and attributes, and stops on SIGINT', async function () {
    const port = await freePort();
    const uiPort = await freePort();
    const dbFile = path.join(dir, 'script', 'temporal.db');
    const script = runScript(['--port', String(port), '--ui-port', String(uiPort), '--db', dbFile], scriptEnv());
    try {
      await until(
        () => script.output().includes('Press Ctrl-C') || script.child.exitCode !== null,
        60_000,
        'the dev server script',
      );
      const out = script.output();
      assert.ok(out.includes(`127.0.0.1:${port}`), out);
      assert.ok(out.includes(`http://127.0.0.1:${uiPort}`), out);
      for (const name of SEARCH_ATTRIBUTE_NAMES) assert.ok(out.includes(name), `${name} printed`);
      script.child.kill('SIGINT');
      assert.equal(await script.exited, 0, script.output());
      assert.match(script.output(), /Stopped/);
      assert.ok(existsSync(dbFile));
    } finally {
      // TERM lets the script stop its own temporal child; KILL only if it does not.
      await stopProcess(script.child, 15_000);
    }
  });
});
