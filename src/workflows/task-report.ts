/**
 * The task report workflow (id `[<deployment>/]task-report/<taskId>`): started by the publish
 * workflow of a task's last device, it writes the task's JUnit XML beside the task's reports. A
 * workflow of its own, so the publish that finished the task answers its traversal at once, and a
 * task gets one report however its results arrive.
 */
import { log, proxyActivities, setCurrentDetails } from '@temporalio/workflow';
import type { Activities } from '../activities';
import type { TaskReportResult } from '../activities/task-report';

/** Input of the task report workflow. */
export interface TaskReportInput {
  taskId: string;
  /** First retry delay, ms (default 1000). */
  initialRetryMs?: number;
}

/** Writes the report; gives up after ten attempts (`npm run findings -- --task <id> --junit` builds it any time). */
export async function taskReportWorkflow(input: TaskReportInput): Promise<TaskReportResult | undefined> {
  const { taskId } = input;
  setCurrentDetails(`writing the JUnit report of task ${taskId}`);
  try {
    const report = await proxyActivities<Activities>({
      startToCloseTimeout: '10m',
      heartbeatTimeout: '1m',
      retry: { initialInterval: input.initialRetryMs ?? 1000, maximumInterval: '1m', maximumAttempts: 10 },
    }).publishTaskReport({ taskId });
    setCurrentDetails(
      `JUnit report of task ${taskId}: ${report.junitUrl} (${report.devices} devices, ${report.uniqueFindings} distinct findings)`,
    );
    return report;
  } catch (err) {
    const cause = (err as Error).cause instanceof Error ? ((err as Error).cause as Error) : (err as Error);
    log.error("the task's JUnit report was not written", { taskId, error: cause.message });
    setCurrentDetails(
      `the JUnit report of task ${taskId} was not written (${cause.message.slice(0, 200)}); npm run findings -- --task ${taskId} --junit out.xml builds it`,
    );
    return undefined;
  }
}
