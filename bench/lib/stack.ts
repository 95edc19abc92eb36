/**
 * What a scenario runs in and against: a work folder with a {@link Scope} that stops everything
 * started in it (the folder is removed after a clean run and kept for its logs otherwise), and the
 * servers most scenarios share, as separate processes (dev/services.ts): a Temporal dev server,
 * redis-server with a client, and an APK origin serving .tools/apks.
 */
import type Redis from 'ioredis';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { PROJECT_ROOT } from '../../src/config';
import { ApkOrigin } from '../../sim/origin';
import { Scope } from '../../dev/scope';
import { APK_DIR, redisClient, startLocalRedis, startTemporal, type LocalTemporal } from '../../dev/services';
import { keepOrRemove, say } from './report';

/**
 * Runs `body` in a fresh folder `dir` with a scope named `label`, then closes the scope; the folder
 * goes only when `body` returned and `isClean` accepts its result (by default every result).
 */
export async function inWorkDir<T>(
  label: string,
  dir: string,
  body: (scope: Scope, dir: string) => Promise<T>,
  isClean: (result: T) => boolean = () => true,
): Promise<T> {
  rmSync(dir, { recursive: true, force: true });
  const scope = new Scope(label, say);
  let clean = false;
  try {
    const result = await body(scope, dir);
    clean = isClean(result);
    return result;
  } finally {
    await scope.close();
    keepOrRemove(dir, clean);
  }
}

/** {@link inWorkDir} for a whole scenario: the folder is .data/bench/<name>. */
export function inScenarioDir<T>(name: string, body: (scope: Scope, workDir: string) => Promise<T>): Promise<T> {
  return inWorkDir(name, path.join(PROJECT_ROOT, '.data', 'bench', name), body);
}

/** Starts an APK origin on a free port, serving the shared APK folder; the scope closes it. */
export async function startOrigin(scope: Scope): Promise<ApkOrigin> {
  const origin = new ApkOrigin({ dir: APK_DIR });
  await origin.start();
  scope.add('origin', () => origin.close());
  return origin;
}

/** The servers a scenario's workers and load talk to. */
export interface BenchStack {
  temporal: LocalTemporal;
  /** URL of the local redis-server, for the workers. */
  redisUrl: string;
  /** A client of it, for the scenario. */
  redis: Redis;
  origin: ApkOrigin;
}

/** Starts Temporal (logging into `workDir`), redis-server (files in `workDir`/redis) and an origin. */
export async function startBenchStack(scope: Scope, workDir: string): Promise<BenchStack> {
  const temporal = await startTemporal(scope, workDir);
  const redisLocal = await startLocalRedis(scope, path.join(workDir, 'redis'));
  const redis = redisClient(scope, redisLocal.url);
  const origin = await startOrigin(scope);
  return { temporal, redisUrl: redisLocal.url, redis, origin };
}
