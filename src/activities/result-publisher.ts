/**
 * Publishes traversal results to Redis for the systems that read it. Redis is a projection of the
 * workflow result, which Temporal keeps: publishing may be retried at any time, and is idempotent.
 * One script (publish-script.ts) writes the result, its stream event, the app's finding groups and
 * the task's summary together.
 */
import type Redis from 'ioredis';
import type { TraversalResult } from '../contract/messages';
import type { Metrics } from '../metrics';
import { DEFAULT_FINDING_RETENTION_MS, DEFAULT_TASK_RETENTION_MS, resultKey } from '../contract/redis-keys';
import { parseReply, publishCall } from './publish-script';

/** Options of the result publisher. */
export interface ResultPublisherDeps {
  redis: Redis;
  /** Prefix for every key (tests use a unique one; production leaves it empty). */
  keyPrefix?: string;
  /** Approximate cap of the results stream length. */
  streamMaxLen?: number;
  /** How long a task's record and summary outlive its last result, ms (default DEFAULT_TASK_RETENTION_MS). */
  taskRetentionMs?: number;
  /** How long a finding group outlives its last sighting, ms (default DEFAULT_FINDING_RETENTION_MS). */
  findingRetentionMs?: number;
  metrics?: Metrics;
}

/** What publishResult did. */
export interface PublishOutcome {
  key: string;
  /** Id of the stream event written now; null when an earlier attempt had published this run. */
  streamId: string | null;
  /** The signatures of the result's findings that are new for the app (first seen in this task). */
  newSignatures: string[];
  /** True when no device of the task is pending any more: the task's report can be written. */
  taskFinished: boolean;
}

/** Builds the publishResult activity. */
export function createResultPublisherActivities(deps: ResultPublisherDeps) {
  const prefix = deps.keyPrefix ?? '';
  const waiting = deps.metrics?.resultsWaiting;
  return {
    /**
     * Writes the result under its key, its stream event, the app's finding groups and the task's
     * summary, atomically and once per run.
     */
    async publishResult(result: TraversalResult): Promise<PublishOutcome> {
      const key = resultKey(result.taskId, result.deviceId, prefix);
      const call = publishCall(result, {
        prefix,
        streamMaxLen: deps.streamMaxLen ?? 100_000,
        taskRetentionSec: (deps.taskRetentionMs ?? DEFAULT_TASK_RETENTION_MS) / 1000,
        findingRetentionSec: (deps.findingRetentionMs ?? DEFAULT_FINDING_RETENTION_MS) / 1000,
      });
      try {
        const reply = parseReply(await deps.redis.eval(call.script, call.keys.length, ...call.keys, ...call.args));
        waiting?.remove(result.workflowId);
        return {
          key,
          streamId: reply.streamId ?? null,
          newSignatures: reply.newSignatures,
          taskFinished: reply.taskFinished,
        };
      } catch (err) {
        const message = (err as Error).message;
        deps.metrics?.publishFailures.inc({ reason: message.split(' ', 1)[0]! });
        waiting?.add(result.workflowId);
        throw new Error(`publishing result ${key} failed: ${message}`);
      }
    },
  };
}
