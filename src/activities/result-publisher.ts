/**
 * Publishes traversal results to Redis for the systems that read it. Redis is a projection of the
 * workflow result, which Temporal keeps: publishing may be retried at any time, and is idempotent.
 */
import type Redis from 'ioredis';
import type { TraversalResult } from '../contract/messages';
import type { Metrics } from '../metrics';
import { resultKey, resultsStream } from '../contract/redis-keys';

/**
 * Writes the result key and the stream event in one step, or neither.
 *
 * - The `#!lua` line makes Redis (7.0 or later) judge the whole script before it runs: when Redis is
 *   out of memory it refuses the script, instead of letting the first write through and failing the
 *   second.
 * - Both key types are checked first, so a key of the wrong type fails the publish without writing.
 * - A result key that already holds this run's result means an earlier attempt published it (its
 *   reply was lost): nothing is written again, so the stream never gets a second event for one run.
 *
 * KEYS: result key, stream. ARGV: result JSON, runId, stream max length, taskId, deviceId, status.
 * Returns the new stream id, or `false` when the run was already published.
 */
const PUBLISH_SCRIPT = `#!lua
local function check(key, wanted)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= wanted then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a ' .. wanted .. '; nothing was written')
  end
end
local bad = check(KEYS[1], 'string') or check(KEYS[2], 'stream')
if bad then return bad end
local old = redis.call('GET', KEYS[1])
if old then
  local ok, prev = pcall(cjson.decode, old)
  if ok and type(prev) == 'table' and prev.runId == ARGV[2] then return false end
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
  'taskId', ARGV[4], 'deviceId', ARGV[5], 'status', ARGV[6], 'runId', ARGV[2], 'result', ARGV[1])
redis.call('SET', KEYS[1], ARGV[1])
return id
`;

/** Options of the result publisher. */
export interface ResultPublisherDeps {
  redis: Redis;
  /** Prefix for every key (tests use a unique one; production leaves it empty). */
  keyPrefix?: string;
  /** Approximate cap of the results stream length. */
  streamMaxLen?: number;
  metrics?: Metrics;
}

/** What publishResult did. */
export interface PublishOutcome {
  key: string;
  /** Id of the stream event written now; null when an earlier attempt had published this run. */
  streamId: string | null;
}

/** Builds the publishResult activity. */
export function createResultPublisherActivities(deps: ResultPublisherDeps) {
  const prefix = deps.keyPrefix ?? '';
  const waiting = deps.metrics?.resultsWaiting;
  return {
    /** Writes the result JSON under its key and appends an event to the results stream, atomically, once per run. */
    async publishResult(result: TraversalResult): Promise<PublishOutcome> {
      const key = resultKey(result.taskId, result.deviceId, prefix);
      const json = JSON.stringify(result);
      const args = [
        json,
        result.runId,
        String(deps.streamMaxLen ?? 100_000),
        result.taskId,
        result.deviceId,
        result.status,
      ];
      try {
        const id = (await deps.redis.eval(PUBLISH_SCRIPT, 2, key, resultsStream(prefix), ...args)) as string | null;
        waiting?.remove(result.workflowId);
        return { key, streamId: id ?? null };
      } catch (err) {
        const message = (err as Error).message;
        deps.metrics?.publishFailures.inc({ reason: message.split(' ', 1)[0]! });
        waiting?.add(result.workflowId);
        throw new Error(`publishing result ${key} failed: ${message}`);
      }
    },
  };
}
