/** Publishes traversal results to Redis for the systems that read it. */
import type Redis from 'ioredis';
import type { TraversalResult } from '../messages';

/** Redis key of one traversal's result. */
export function resultKey(taskId: string, deviceId: string, prefix = ''): string {
  return `${prefix}traversal:result:${taskId}:${deviceId}`;
}

/** Stream that gets one event per finished traversal. */
export function resultsStream(prefix = ''): string {
  return `${prefix}traversal:results`;
}

/** Options of the result publisher. */
export interface ResultPublisherDeps {
  redis: Redis;
  /** Prefix for every key (tests use a unique one; production leaves it empty). */
  keyPrefix?: string;
  /** Approximate cap of the results stream length. */
  streamMaxLen?: number;
}

/** Builds the publishResult activity. */
export function createResultPublisherActivities(deps: ResultPublisherDeps) {
  const prefix = deps.keyPrefix ?? '';
  return {
    /** Writes the result JSON under its key and appends an event to the results stream (idempotent per run). */
    async publishResult(result: TraversalResult): Promise<{ key: string; streamId: string | null }> {
      const key = resultKey(result.taskId, result.deviceId, prefix);
      const json = JSON.stringify(result);
      // A retry after a crash may publish again; the event carries runId so readers can drop repeats.
      const replies = await deps.redis
        .multi()
        .set(key, json)
        .xadd(
          resultsStream(prefix),
          'MAXLEN',
          '~',
          String(deps.streamMaxLen ?? 100_000),
          '*',
          'taskId',
          result.taskId,
          'deviceId',
          result.deviceId,
          'status',
          result.status,
          'runId',
          result.runId,
          'result',
          json,
        )
        .exec();
      const failed = replies?.find(([err]) => err);
      if (!replies || failed) throw new Error(`publishing result ${key} failed: ${failed?.[0]?.message ?? 'transaction aborted'}`);
      const streamId = (replies[1]?.[1] as string | null) ?? null;
      return { key, streamId };
    },
  };
}
