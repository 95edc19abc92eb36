/**
 * Traversal results made up for tests and benchmarks that publish without running a traversal:
 * a completed run of one app on one device with the given findings, counted as a result counts them.
 */
import type { Finding, TraversalResult } from '../src/contract/messages';

/** A completed result of `packageName` on `deviceId` for `taskId`, carrying `findings`; `over` changes any field. */
export function madeUpResult(
  taskId: string,
  deviceId: string,
  packageName: string,
  findings: Finding[],
  over: Partial<TraversalResult> = {},
): TraversalResult {
  const crashes = findings.filter((f) => f.kind === 'crash').length;
  const now = new Date().toISOString();
  return {
    taskId,
    deviceId,
    packageName,
    apkUrl: 'http://127.0.0.1/app.apk',
    status: 'completed',
    timings: {},
    apk: { sha256: 'a'.repeat(64), size: 1, fromCache: false },
    screens: 3,
    crashes,
    anrs: findings.length - crashes,
    findings,
    startedAt: now,
    finishedAt: now,
    workflowId: `traversal/${taskId}/${deviceId}`,
    runId: `run-${taskId}-${deviceId}`,
    ...over,
  };
}
