/**
 * Tasks and device workflows from a test's side: a well-formed task for the validation suites to vary
 * one field at a time, waiting until a device workflow counts a repeated task, and terminating the
 * device workflows a suite left waiting on a task queue no worker polls.
 */
import type { Client, WorkflowHandle } from '@temporalio/client';
import { deviceStateQuery, type DeviceState } from '../../src/contract/messages';
import { waitFor } from '../../dev/wait';

/** A task every check of the starter accepts, provided the test's agent directory knows device lab-1. */
export const WELL_FORMED_TASK = {
  taskId: 't-1',
  deviceId: 'lab-1',
  apkUrl: 'https://apk.example.com/a.apk',
  packageName: 'com.example.app',
  traversal: { durationSec: 60 },
} as const;

/** Waits until the device workflow behind `handle` has counted a duplicate task; resolves to its state then. */
export function waitForDuplicate(handle: WorkflowHandle, what: string, timeoutMs = 30_000): Promise<DeviceState> {
  return waitFor(
    async () => {
      const s = await handle.query(deviceStateQuery);
      return s.duplicates ? s : undefined;
    },
    timeoutMs,
    what,
  );
}

/** Terminates each workflow of `workflowIds` that still runs; one already closed or never started is skipped. */
export async function terminateAll(client: Client, workflowIds: Iterable<string>, reason: string): Promise<void> {
  for (const id of workflowIds)
    await client.workflow
      .getHandle(id)
      .terminate(reason)
      .catch(() => undefined);
}
