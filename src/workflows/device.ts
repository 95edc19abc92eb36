/**
 * The device workflow (id `device/<deviceId>`): the device's FIFO queue. Requests arrive by the
 * `enqueue` signal and run one at a time as child traversal workflows, so two traversals never
 * touch one phone at once. It continues-as-new between children, carrying queue and dedupe memory.
 */
import {
  allHandlersFinished,
  condition,
  continueAsNew,
  executeChild,
  log,
  ParentClosePolicy,
  setCurrentDetails,
  setHandler,
  workflowInfo,
  WorkflowIdReusePolicy,
} from '@temporalio/workflow';
import {
  deviceStateQuery,
  enqueueSignal,
  pauseSignal,
  resumeSignal,
  traversalWorkflowId,
  type DeviceState,
  type DeviceWorkflowInput,
  type TraversalRequest,
} from '../messages';
import { APP_PACKAGE, DEVICE_ID, TASK_ID, TRAVERSAL_PHASE } from '../search-attributes';
import { traversalWorkflow } from './traversal';

/** How many task ids the dedupe memory keeps (oldest forgotten first). */
export const DEDUPE_MEMORY = 2000;
/** History length after which the workflow continues as new between children. */
export const HISTORY_LIMIT = 5000;

/** The device workflow. */
export async function deviceWorkflow(input: DeviceWorkflowInput): Promise<void> {
  const { deviceId } = input;
  const queue: TraversalRequest[] = [...(input.queue ?? [])];
  const seen = new Set<string>(input.seenTaskIds ?? []);
  let paused = input.paused ?? false;
  let completed = input.completed ?? 0;
  let current: DeviceState['current'];
  const historyLimit = input.historyLimit ?? HISTORY_LIMIT;

  const describe = () =>
    setCurrentDetails(
      `${deviceId}: ${paused ? 'paused' : current ? `running ${current.taskId} (${current.packageName})` : 'idle'}, ${queue.length} queued, ${completed} done`,
    );

  setHandler(enqueueSignal, (req) => {
    if (req.deviceId !== deviceId) {
      log.warn('request for another device ignored', { deviceId, requestDevice: req.deviceId, taskId: req.taskId });
      return;
    }
    if (seen.has(req.taskId)) {
      log.info('duplicate task ignored', { deviceId, taskId: req.taskId });
      return;
    }
    seen.add(req.taskId);
    if (seen.size > DEDUPE_MEMORY) seen.delete(seen.values().next().value as string);
    queue.push(req);
    describe();
  });
  setHandler(pauseSignal, () => {
    paused = true;
    describe();
  });
  setHandler(resumeSignal, () => {
    paused = false;
    describe();
  });
  setHandler(deviceStateQuery, () => ({
    deviceId,
    paused,
    queue: queue.map((r) => ({ taskId: r.taskId, packageName: r.packageName })),
    current,
    completed,
    seen: seen.size,
  }));
  describe();

  const shouldRollOver = () => workflowInfo().continueAsNewSuggested || workflowInfo().historyLength > historyLimit;
  for (;;) {
    await condition(() => (!paused && queue.length > 0) || shouldRollOver());
    if (shouldRollOver()) {
      await condition(allHandlersFinished);
      await continueAsNew<typeof deviceWorkflow>({
        deviceId,
        queue,
        seenTaskIds: [...seen],
        paused,
        completed,
        ...(input.historyLimit ? { historyLimit: input.historyLimit } : {}),
      });
    }
    const req = queue.shift()!;
    const workflowId = traversalWorkflowId(req.taskId, deviceId);
    current = { taskId: req.taskId, workflowId, packageName: req.packageName };
    describe();
    try {
      await executeChild(traversalWorkflow, {
        workflowId,
        args: [req],
        // A traversal that already ran (even one the dedupe memory forgot) is never run again.
        workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
        // Finish the phone's current run even if the device workflow is terminated.
        parentClosePolicy: ParentClosePolicy.ABANDON,
        staticSummary: `${req.packageName} on ${deviceId} (task ${req.taskId})`,
        typedSearchAttributes: [
          { key: TASK_ID, value: req.taskId },
          { key: DEVICE_ID, value: deviceId },
          { key: APP_PACKAGE, value: req.packageName },
          { key: TRAVERSAL_PHASE, value: 'queued' },
        ],
      });
    } catch (err) {
      log.warn('traversal ended without success', { deviceId, taskId: req.taskId, error: (err as Error).message });
    }
    current = undefined;
    completed++;
    describe();
  }
}
