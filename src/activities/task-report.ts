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

/**
 * Records the JUnit URL in the task's record and summary, in one step, keeping their expiry; a
 * record or summary that expired is not brought back. KEYS: task, summary. ARGV: the URL.
 */
const RECORD_JUNIT_SCRIPT = `
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'junitUrl', ARGV[1]) end
local text = redis.call('GET', KEYS[2])
if text then
  local ok, summary = pcall(cjson.decode, text)
  if ok and type(summary) == 'table' then
    summary.junitUrl = ARGV[1]
    redis.call('SET', KEYS[2], cjson.encode(summary), 'KEEPTTL')
  end
end
return 1
`;

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
      await deps.redis.eval(
        RECORD_JUNIT_SCRIPT,
        2,
        taskKey(input.taskId, prefix),
        taskSummaryKey(input.taskId, prefix),
        junitUrl,
      );
      return {
        junitUrl,
        devices: task.results.length + task.pending.length,
        uniqueFindings: groupTaskFindings(task.results).length,
      };
    },
  };
}
