/**
 * "Version 2" of the workflow code, for test/upgrade.e2e.test.ts: every workflow as it is, except
 * that the traversal does one more thing at its end, behind `patched()` as every change must be. A
 * run started on version 1 and finished by a version 2 worker records the patch marker and says so
 * in its result.
 */
import { patched, sleep } from '@temporalio/workflow';
import type { TraversalRequest, TraversalResult } from '../../src/contract/messages';
import { traversalWorkflow as traversalV1 } from '../../src/workflows/traversal';

export * from '../../src/workflows';

/** The patch id version 2 adds. */
export const V2_PATCH = 'upgrade-test-v2';

/** The traversal of version 1, then (in runs that reach this point on version 2) a timer and a mark. */
export async function traversalWorkflow(req: TraversalRequest): Promise<TraversalResult> {
  const result = await traversalV1(req);
  if (!patched(V2_PATCH)) return result;
  await sleep(10);
  return { ...result, finishedBy: 'version 2' } as TraversalResult;
}
