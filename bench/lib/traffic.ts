/**
 * Load for the benchmarks: traversal requests sent straight to device workflows (the same
 * signalWithStart the starter sends, without Redis in between), and results read back from Redis.
 */
import type { Client } from '@temporalio/client';
import type Redis from 'ioredis';
import { resultKey, resultsStream } from '../../src/contract/redis-keys';
import type { TraversalRequest, TraversalResult } from '../../src/contract/messages';
import { requestTraversal } from '../../src/starter/task-bridge';
import { setTimeout as sleep } from 'node:timers/promises';

/** Sends one request the way TaskBridge does (src/starter/task-bridge.ts), stamped with the time it was sent. */
export async function enqueue(client: Client, taskQueue: string, req: TraversalRequest): Promise<void> {
  await requestTraversal(client, taskQueue, { enqueuedAt: new Date().toISOString(), ...req });
}

/** Identifies one traversal. */
export interface TraversalId {
  taskId: string;
  deviceId: string;
}

/**
 * Polls Redis until every traversal has published its result; returns them in the order asked.
 * Throws after `timeoutMs`, or as soon as `isDead` names a process that exited (no result would come).
 */
export async function waitResults(
  redis: Redis,
  ids: TraversalId[],
  timeoutMs: number,
  isDead?: () => string | undefined,
  keyPrefix = '',
): Promise<TraversalResult[]> {
  const keys = ids.map((id) => resultKey(id.taskId, id.deviceId, keyPrefix));
  const found = new Map<string, TraversalResult>();
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pending = keys.filter((k) => !found.has(k));
    for (let i = 0; i < pending.length; i += 500) {
      const batch = pending.slice(i, i + 500);
      const values = await redis.mget(...batch);
      values.forEach((raw, j) => {
        if (raw) found.set(batch[j]!, JSON.parse(raw) as TraversalResult);
      });
    }
    if (found.size === keys.length) return keys.map((k) => found.get(k)!);
    const dead = isDead?.();
    if (dead) throw new Error(`${found.size} of ${keys.length} results arrived, then ${dead}`);
    if (Date.now() > deadline) {
      const missing = keys.find((k) => !found.has(k));
      throw new Error(
        `only ${found.size} of ${keys.length} results arrived within ${Math.round(timeoutMs / 1000)} s (missing e.g. ${missing})`,
      );
    }
    await sleep(250);
  }
}

/** Traversals finished so far: the length of the results stream (one event per published result). */
export function finishedCount(redis: Redis, keyPrefix = ''): Promise<number> {
  return redis.xlen(resultsStream(keyPrefix));
}
