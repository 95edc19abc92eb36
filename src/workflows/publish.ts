/**
 * The publish workflow (id `publish/<taskId>/<deviceId>`): writes one finished traversal's result
 * into Redis, retrying until Redis takes it. The traversal starts it and waits for it only briefly,
 * so its device takes the next task while Redis is away; the result itself is already safe as the
 * traversal's workflow result. When the result was its task's last, it starts the task's report
 * workflow (task-report.ts), which writes the task's JUnit XML beside the task's reports.
 */
import {
  log,
  ParentClosePolicy,
  patched,
  proxyActivities,
  setCurrentDetails,
  startChild,
  upsertSearchAttributes,
  workflowInfo,
  type ActivityOptions,
} from '@temporalio/workflow';
import type { Activities } from '../activities';
import {
  parseWorkflowId,
  PUBLISH_RETRY_CAP_MS,
  taskReportWorkflowId,
  type TraversalResult,
} from '../contract/messages';
import { taskReportWorkflow } from './task-report';
import { TRAVERSAL_PHASE } from '../contract/search-attributes';

/** Input of the publish workflow. */
export interface PublishInput {
  result: TraversalResult;
  /** First retry delay, ms (default 1000). */
  initialRetryMs?: number;
  /** Longest wait between two attempts, ms (default PUBLISH_RETRY_CAP_MS): how soon a result follows Redis's return. */
  maxRetryMs?: number;
}

/** What publishing found out; runs recorded before it existed returned nothing. */
export interface PublishedResult {
  /** Signatures of the result first seen for the app in this task. */
  newSignatures: string[];
  /** No device of the task is pending any more: this publish started the task's report. */
  taskFinished: boolean;
}

/** Attempts before the workflow says it is waiting for Redis (about 15 s with the defaults). */
export const QUICK_ATTEMPTS = 5;

/** Publishes the result; returns when it is in Redis. Never gives up: its history stays a few events long. */
export async function publishWorkflow(input: PublishInput): Promise<PublishedResult | void> {
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
  let outcome: Awaited<ReturnType<Activities['publishResult']>>;
  try {
    outcome = await proxyActivities<Activities>({
      startToCloseTimeout: '1m',
      retry: retry(QUICK_ATTEMPTS),
    }).publishResult(result);
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
    outcome = await proxyActivities<Activities>({ startToCloseTimeout: '1m', retry: retry() }).publishResult(result);
  }
  upsertSearchAttributes([{ key: TRAVERSAL_PHASE, value: 'published' }]);
  const fresh = outcome.newSignatures ?? [];
  setCurrentDetails(
    `published the ${what}; ${fresh.length} of its signatures new for the app${outcome.taskFinished ? '; the task is finished' : ''}`,
  );
  if (!patched('task-report')) return;
  const published: PublishedResult = { newSignatures: fresh, taskFinished: outcome.taskFinished ?? false };
  if (published.taskFinished) {
    // The report is a workflow of its own: this one answers its traversal now, and one id per task
    // keeps a task to one report while it is being written.
    const deployment = parseWorkflowId(workflowInfo().workflowId)?.deployment;
    try {
      await startChild(taskReportWorkflow, {
        workflowId: taskReportWorkflowId(result.taskId, deployment),
        args: [{ taskId: result.taskId, initialRetryMs: input.initialRetryMs }],
        parentClosePolicy: ParentClosePolicy.ABANDON,
        staticSummary: `JUnit report of task ${result.taskId}`,
      });
    } catch (err) {
      log.info("the task's report workflow is already running", {
        taskId: result.taskId,
        error: (err as Error).message,
      });
    }
  }
  return published;
}
