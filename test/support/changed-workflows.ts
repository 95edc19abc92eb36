/**
 * A deliberately incompatible edit of the traversal workflow, for the negative check in
 * test/replay.test.ts: the first two steps are swapped without `patched()`, so a recorded history
 * (resolveApk scheduled first) no longer matches the commands this code issues.
 */
import { proxyActivities, upsertSearchAttributes } from '@temporalio/workflow';
import type { Activities } from '../../src/activities';
import type { TraversalRequest, TraversalResult } from '../../src/contract/messages';
import { TRAVERSAL_PHASE } from '../../src/contract/search-attributes';

const { prepareDevice, resolveApk } = proxyActivities<Activities>({ startToCloseTimeout: '2m' });

/** Same name and signature as the real one, different command sequence. */
export async function traversalWorkflow(req: TraversalRequest): Promise<TraversalResult> {
  upsertSearchAttributes([{ key: TRAVERSAL_PHASE, value: 'preparing' }]);
  await prepareDevice({ deviceId: req.deviceId, agentUrl: req.agentUrl });
  await resolveApk({ url: req.apkUrl, sha256: req.apkSha256 });
  throw new Error('not reached in replay: the history diverges at the first activity');
}
