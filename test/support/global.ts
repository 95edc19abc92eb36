/**
 * Mocha global fixture: one real Temporal dev server and one real redis-server for the whole run,
 * on free ports. Suites isolate themselves with unique task queues and Redis key prefixes.
 */
import os from 'node:os';
import path from 'node:path';
import { mkdtempSync, rmSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { onFreePorts, startDevServer, type DevServer } from '../../dev/temporal-dev';
import { startRedis, type LocalRedis } from '../../dev/redis-local';
import { freePort } from '../../src/net/ports';

// Marks every process this run starts (workers and their jars inherit it), so that a test looking for
// jars in /proc never finds, or kills, those of another test run on the same machine.
process.env.TEST_SUITE_ID ??= randomUUID();

let temporal: DevServer | undefined;
let redis: LocalRedis | undefined;
let dir: string | undefined;

export async function mochaGlobalSetup(): Promise<void> {
  dir = mkdtempSync(path.join(os.tmpdir(), 'dt-test-'));
  const rport = await freePort();
  const t0 = Date.now();
  [temporal, redis] = await Promise.all([
    process.env.TEST_TEMPORAL_ADDRESS
      ? Promise.resolve(undefined)
      : startDevServer(await onFreePorts(path.join(dir, 'temporal.log'))),
    process.env.TEST_REDIS_URL ? Promise.resolve(undefined) : startRedis({ port: rport, dir: path.join(dir, 'redis') }),
  ]);
  if (temporal) process.env.TEST_TEMPORAL_ADDRESS = temporal.address;
  if (redis) process.env.TEST_REDIS_URL = redis.url;
  process.env.TEST_TEMPORAL_CLI = temporal?.cli ?? '';
  console.log(
    `[global] temporal ${process.env.TEST_TEMPORAL_ADDRESS}, redis ${process.env.TEST_REDIS_URL} ready in ${Date.now() - t0} ms`,
  );
}

export async function mochaGlobalTeardown(): Promise<void> {
  await Promise.all([temporal?.stop(), redis?.stop()]);
  if (dir) rmSync(dir, { recursive: true, force: true });
  reportLeaksAfter(5000);
}

/**
 * Mocha runs without `exit: true`, so a handle a test forgot to close keeps the run from ending. Name the
 * survivors instead of hanging silently; the timer is unref'd, so it fires only when something else holds
 * the process open.
 */
function reportLeaksAfter(ms: number): void {
  setTimeout(() => {
    const kinds = process.getActiveResourcesInfo().filter((k) => k !== 'TTYWrap');
    console.error(`[global] the run is still alive ${ms} ms after teardown; open handles: ${kinds.join(', ')}`);
    const handles = (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles();
    for (const h of handles) {
      const name = (h as object)?.constructor?.name ?? typeof h;
      const sock = h as { remoteAddress?: string; remotePort?: number; localPort?: number };
      const child = h as { pid?: number; spawnfile?: string };
      console.error(
        `  ${name}${sock.remotePort ? ` ${sock.remoteAddress}:${sock.remotePort}` : ''}${sock.localPort ? ` local :${sock.localPort}` : ''}${child.pid ? ` pid ${child.pid} ${child.spawnfile ?? ''}` : ''}`,
      );
    }
  }, ms).unref();
}
