/**
 * A workflow that schedules one installApp with the input it is given, so a test can hand the real
 * worker an input exactly as a workflow of an earlier version recorded it.
 */
import { proxyActivities } from '@temporalio/workflow';
import type { Activities } from '../../src/activities';
import type { InstallAppInput, InstallResult } from '../../src/activities/device-agent';

/** Runs installApp once on `taskQueue` (the worker under test) and returns its result. */
export async function installOnce(taskQueue: string, input: InstallAppInput): Promise<InstallResult> {
  const { installApp } = proxyActivities<Activities>({
    taskQueue,
    startToCloseTimeout: '2m',
    heartbeatTimeout: '30s',
    retry: { maximumAttempts: 1 },
  });
  return installApp(input);
}
