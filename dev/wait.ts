/** Polling helpers of the harness: a condition, a published result, a device's traversal processes. */
import type Redis from 'ioredis';
import { readdirSync, readFileSync } from 'node:fs';
import { resultKey } from '../src/contract/redis-keys';
import type { TraversalResult } from '../src/contract/messages';

/**
 * Polls `fn` every `intervalMs` (100 ms) until it returns something truthy and returns that; throws
 * naming `what` after the timeout. A throwing `fn` counts as "not yet" (a query before a worker runs, a server
 * restarting); the last error is quoted in the timeout message.
 */
export async function waitFor<T>(
  fn: () => T | undefined | false | null | Promise<T | undefined | false | null>,
  timeoutMs = 60_000,
  what = 'condition',
  intervalMs = 100,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const cause = lastError
        ? ` (last error: ${lastError instanceof Error ? lastError.message : String(lastError)})`
        : '';
      throw new Error(`${what} not met within ${timeoutMs} ms${cause}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Waits for the result a traversal publishes in Redis (`prefix` as the stack's key prefix). */
export async function waitForResult(
  redis: Redis,
  prefix: string,
  taskId: string,
  deviceId: string,
  timeoutMs = 120_000,
): Promise<TraversalResult> {
  const key = resultKey(taskId, deviceId, prefix);
  const raw = await waitFor(() => redis.get(key), timeoutMs, `the result at ${key}`);
  return JSON.parse(raw) as TraversalResult;
}

/**
 * Pids of live processes started by a worker of this test run for a device: the runner marks them with
 * DT_TRAVERSAL_DEVICE, and they inherit the run's TEST_SUITE_ID (another run's jars of the same device
 * are left alone).
 */
export function traversalPids(deviceId: string): number[] {
  const suite = process.env.TEST_SUITE_ID;
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const env = readFileSync(`/proc/${entry}/environ`, 'utf8');
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const vars = env.split('\0');
      const ours = !suite || vars.includes(`TEST_SUITE_ID=${suite}`);
      if (ours && vars.includes(`DT_TRAVERSAL_DEVICE=${deviceId}`) && !/\) Z /.test(stat)) out.push(Number(entry));
    } catch {
      // gone, or not ours to read
    }
  }
  return out;
}
