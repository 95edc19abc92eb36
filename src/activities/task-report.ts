/**
 * The task report: when a task's last device has published its result, the task's JUnit XML is
 * built from the results in Redis and uploaded to the report sink beside the task's reports
 * (`<taskId>/junit.xml`), and the task's summary says where it is.
 */
import { Context } from '@temporalio/activity';
import type Redis from 'ioredis';
import { checkIdentifier } from '../contract/ids';
import { InvalidTaskError } from '../contract/errors';
import { taskKey, taskSummaryKey } from '../contract/redis-keys';
import { junitXml } from '../findings/junit';
import { groupTaskFindings, readTaskFindings } from '../findings/read';
import type { ReportStore } from './report-store';

/** What the task report needs. */
export interface TaskReportDeps {
  redis: Redis;
  store: ReportStore;
  keyPrefix?: string;
}

/** Where the task report went. */
export interface TaskReportResult {
  junitUrl: string;
  devices: number;
  uniqueFindings: number;
}

/** The sink key of a task's JUnit file. */
export function junitKey(taskId: string): string[] {
  return [taskId, 'junit.xml'];
}

/** Builds the publishTaskReport activity. */
export function createTaskReportActivities(deps: TaskReportDeps) {
  const prefix = deps.keyPrefix ?? '';
  return {
    /** Writes the task's JUnit XML to the sink and records its URL in the task's summary; safe to repeat. */
    async publishTaskReport(input: { taskId: string }): Promise<TaskReportResult> {
      const problem = checkIdentifier('taskId', input.taskId);
      if (problem) throw new InvalidTaskError([problem]);
      const ctx = Context.current();
      const task = await readTaskFindings(deps.redis, input.taskId, prefix);
      const xml = junitXml({
        taskId: task.taskId,
        packageName: task.packageName,
        results: task.results,
        pending: task.pending,
      });
      ctx.heartbeat();
      const key = junitKey(input.taskId);
      await deps.store.put(key, xml, ctx.cancellationSignal);
      const junitUrl = deps.store.url(key);
      // The summary keeps its expiry; a summary that expired is not brought back.
      await deps.redis.hset(taskKey(input.taskId, prefix), 'junitUrl', junitUrl);
      const summaryKey = taskSummaryKey(input.taskId, prefix);
      const text = await deps.redis.get(summaryKey);
      if (text) await deps.redis.set(summaryKey, JSON.stringify({ ...JSON.parse(text), junitUrl }), 'KEEPTTL');
      return {
        junitUrl,
        devices: task.results.length + task.pending.length,
        uniqueFindings: groupTaskFindings(task.results).length,
      };
    },
  };
}
