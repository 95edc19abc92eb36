/**
 * The publish workflow (id `publish/<taskId>/<deviceId>`): writes one finished traversal's result
 * into Redis, retrying until Redis takes it. The traversal starts it and ends at once, so its device
 * takes the next task while Redis is away; the result itself is already safe as the traversal's
 * workflow result.
 */
import {
  log,
  proxyActivities,
  setCurrentDetails,
  upsertSearchAttributes,
  type ActivityOptions,
} from '@temporalio/workflow';
import type { Activities } from '../activities';
import { PUBLISH_RETRY_CAP_MS, type TraversalResult } from '../contract/messages';
import { TRAVERSAL_PHASE } from '../contract/search-attributes';

/** Input of the publish workflow. */
export interface PublishInput {
  result: TraversalResult;
  /** First retry delay, ms (default 1000). */
  initialRetryMs?: number;
  /** Longest wait between two attempts, ms (default PUBLISH_RETRY_CAP_MS): how soon a result follows Redis's return. */
  maxRetryMs?: number;
}

/** Attempts before the workflow says it is waiting for Redis (about 15 s with the defaults). */
export const QUICK_ATTEMPTS = 5;

/** Publishes the result; returns when it is in Redis. Never gives up: its history stays a few events long. */
export async function publishWorkflow(input: PublishInput): Promise<void> {
  const { result } = input;
  // No maximumAttempts: unlimited.
  const retry = (maximumAttempts?: number): ActivityOptions['retry'] => ({
    initialInterval: input.initialRetryMs ?? 1000,
    backoffCoefficient: 2,
    maximumInterval: input.maxRetryMs ?? PUBLISH_RETRY_CAP_MS,
    ...(maximumAttempts ? { maximumAttempts } : {}),
    // Every failure may pass (a full Redis, a key of the wrong type an operator can fix).
    nonRetryableErrorTypes: [],
  });
  const what = `result of ${result.taskId} on ${result.deviceId} (${result.status})`;
  setCurrentDetails(`publishing the ${what}`);
  try {
    await proxyActivities<Activities>({ startToCloseTimeout: '1m', retry: retry(QUICK_ATTEMPTS) }).publishResult(
      result,
    );
  } catch (err) {
    // Retries from here on are the server's: the history does not grow while Redis is away.
    const reason =
      (err as Error).cause instanceof Error ? ((err as Error).cause as Error).message : (err as Error).message;
    log.warn('Redis does not take the result; retrying until it does', {
      taskId: result.taskId,
      deviceId: result.deviceId,
      reason,
    });
    upsertSearchAttributes([{ key: TRAVERSAL_PHASE, value: 'waiting-for-redis' }]);
    setCurrentDetails(`waiting for Redis to take the ${what}; last error: ${reason.slice(0, 300)}`);
    await proxyActivities<Activities>({ startToCloseTimeout: '1m', retry: retry() }).publishResult(result);
  }
  upsertSearchAttributes([{ key: TRAVERSAL_PHASE, value: 'published' }]);
  setCurrentDetails(`published the ${what}`);
}
