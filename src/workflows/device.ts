/**
 * The device workflow (id `[<deployment>/]device/<deviceId>`): the device's FIFO queue. Requests arrive by the
 * `enqueue` signal and run one at a time as child traversal workflows, so two traversals never
 * touch one phone at once. It continues-as-new between children, carrying queue and dedupe memory.
 */
import {
  allHandlersFinished,
  ApplicationFailure,
  CancelledFailure,
  ChildWorkflowFailure,
  condition,
  continueAsNew,
  executeChild,
  log,
  ParentClosePolicy,
  patched,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
  WorkflowIdReusePolicy,
} from '@temporalio/workflow';
import {
  deviceStateQuery,
  enqueueSignal,
  pauseSignal,
  resumeSignal,
  traversalWorkflowId,
  type DeviceQuarantine,
  type DeviceState,
  type DeviceWorkflowInput,
  type InfraFailure,
  type TraversalRequest,
  type TraversalResult,
} from '../contract/messages';
import { isDeviceFault } from '../contract/errors';
import {
  DEVICE_RECENT_RESULTS,
  deviceDetails,
  recentOf,
  traversalStaticDetails,
  type DeviceRecentResult,
} from '../contract/details';
import { APP_PACKAGE, DEVICE_HEALTH, DEVICE_ID, TASK_ID, TRAVERSAL_PHASE } from '../contract/search-attributes';
import { traversalWorkflow } from './traversal';

/** How many task ids the dedupe memory keeps (oldest forgotten first). */
export const DEDUPE_MEMORY = 2000;
/** History length after which the workflow continues as new between children. */
export const HISTORY_LIMIT = 5000;
/** Consecutive device faults after which a device is quarantined when the request does not say. */
export const QUARANTINE_AFTER = 3;

/** The device fault behind a failed child, or undefined when the failure is not the device's. */
function deviceFault(err: unknown, taskId: string): InfraFailure | undefined {
  const app = err instanceof ChildWorkflowFailure ? err.cause : undefined;
  if (!(app instanceof ApplicationFailure)) return undefined;
  const result = app.details?.[0] as Partial<TraversalResult> | undefined;
  const type = app.type ?? 'Error';
  if (!isDeviceFault(type, result?.error?.step)) return undefined;
  return { taskId, type, message: app.message, at: result?.finishedAt ?? new Date().toISOString() };
}

/** A failed or cancelled child as one of the device's recent results. */
function recentOfFailure(err: unknown, req: TraversalRequest): DeviceRecentResult {
  const app = err instanceof ChildWorkflowFailure ? err.cause : undefined;
  const result = app instanceof ApplicationFailure ? (app.details?.[0] as TraversalResult | undefined) : undefined;
  if (result?.taskId) return recentOf(result);
  const cancelled = app instanceof CancelledFailure;
  return {
    taskId: req.taskId,
    packageName: req.packageName,
    status: cancelled ? 'cancelled' : 'failed',
    ...(cancelled ? {} : { error: (app ?? (err as Error))?.message?.slice(0, 100) ?? 'unknown' }),
  };
}

/** The device workflow. */
export async function deviceWorkflow(input: DeviceWorkflowInput): Promise<void> {
  const { deviceId } = input;
  const deployment = input.deployment ?? '';
  // Replay uses a queue of its own; the starter's record of the queue keeps decisions the same there.
  const ownQueue = input.taskQueue ?? workflowInfo().taskQueue;
  let refused = 0;
  let duplicates = 0;
  const queue: TraversalRequest[] = [...(input.queue ?? [])];
  const seen = new Set<string>(input.seenTaskIds ?? []);
  let paused = input.paused ?? false;
  let completed = input.completed ?? 0;
  let current: DeviceState['current'];
  const historyLimit = input.historyLimit ?? HISTORY_LIMIT;
  // Quarantine changes which children start, so runs recorded before it existed replay without it.
  const quarantines = patched('device-quarantine');
  let infraFailures: InfraFailure[] = [...(input.infraFailures ?? [])];
  let quarantine: DeviceQuarantine | undefined = input.quarantine;
  // The last few results, for the details (carried across continue-as-new, bounded).
  const recent: DeviceRecentResult[] = [...(input.recent ?? [])];
  const remember = (r: DeviceRecentResult) => {
    recent.push(r);
    if (recent.length > DEVICE_RECENT_RESULTS) recent.splice(0, recent.length - DEVICE_RECENT_RESULTS);
  };

  const describe = () => {
    const doing = quarantine
      ? `QUARANTINED (${quarantine.reason}); send the resume signal once fixed`
      : paused
        ? 'paused'
        : current
          ? `running ${current.taskId} (${current.packageName})`
          : 'idle';
    setCurrentDetails(deviceDetails(`${deviceId}: ${doing}, ${queue.length} queued, ${completed} done`, recent));
  };
  const setHealth = (value: 'ok' | 'quarantined') => upsertSearchAttributes([{ key: DEVICE_HEALTH, value }]);

  setHandler(enqueueSignal, (req) => {
    if (req.deviceId !== deviceId) {
      log.warn('request for another device ignored', { deviceId, requestDevice: req.deviceId, taskId: req.taskId });
      return;
    }
    if ((req.deployment ?? '') !== deployment || (req.taskQueue !== undefined && req.taskQueue !== ownQueue)) {
      // The starter checks this before it signals; this catches a request sent around it.
      refused++;
      log.warn('request from another deployment refused', {
        deviceId,
        deployment,
        requestDeployment: req.deployment,
        requestTaskQueue: req.taskQueue,
        taskId: req.taskId,
      });
      return;
    }
    if (seen.has(req.taskId)) {
      duplicates++;
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
    if (quarantine) {
      log.info('device quarantine lifted', { deviceId, reason: quarantine.reason });
      quarantine = undefined;
      infraFailures = [];
      setHealth('ok');
    }
    describe();
  });
  setHandler(deviceStateQuery, () => ({
    deviceId,
    paused,
    queue: queue.map((r) => ({ taskId: r.taskId, packageName: r.packageName })),
    current,
    completed,
    seen: seen.size,
    ...(quarantine ? { quarantine } : {}),
    infraFailuresInRow: infraFailures.length,
    ...(refused ? { refused } : {}),
    ...(duplicates ? { duplicates } : {}),
    ...(recent.length > 0 ? { recent } : {}),
  }));
  describe();

  const shouldRollOver = () => workflowInfo().continueAsNewSuggested || workflowInfo().historyLength > historyLimit;
  for (;;) {
    await condition(() => (!paused && !quarantine && queue.length > 0) || shouldRollOver());
    if (shouldRollOver()) {
      await condition(allHandlersFinished);
      await continueAsNew<typeof deviceWorkflow>({
        deviceId,
        ...(deployment ? { deployment } : {}),
        ...(input.taskQueue ? { taskQueue: input.taskQueue } : {}),
        queue,
        seenTaskIds: [...seen],
        paused,
        completed,
        ...(input.historyLimit ? { historyLimit: input.historyLimit } : {}),
        ...(infraFailures.length > 0 ? { infraFailures } : {}),
        ...(quarantine ? { quarantine } : {}),
        ...(recent.length > 0 ? { recent } : {}),
      });
    }
    const req = queue.shift()!;
    const workflowId = traversalWorkflowId(req.taskId, deviceId, deployment);
    current = { taskId: req.taskId, workflowId, packageName: req.packageName };
    describe();
    try {
      const result = await executeChild(traversalWorkflow, {
        workflowId,
        args: [req],
        // A traversal that already ran (even one the dedupe memory forgot) is never run again.
        workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
        // Finish the phone's current run even if the device workflow is terminated.
        parentClosePolicy: ParentClosePolicy.ABANDON,
        staticSummary: `${req.packageName} on ${deviceId} (task ${req.taskId})`,
        staticDetails: traversalStaticDetails(req),
        typedSearchAttributes: [
          { key: TASK_ID, value: req.taskId },
          { key: DEVICE_ID, value: deviceId },
          { key: APP_PACKAGE, value: req.packageName },
          { key: TRAVERSAL_PHASE, value: 'queued' },
        ],
      });
      infraFailures = [];
      remember(recentOf(result));
    } catch (err) {
      log.warn('traversal ended without success', { deviceId, taskId: req.taskId, error: (err as Error).message });
      remember(recentOfFailure(err, req));
      const fault = quarantines ? deviceFault(err, req.taskId) : undefined;
      if (fault) {
        infraFailures.push(fault);
        const limit = req.policy?.quarantineAfter ?? QUARANTINE_AFTER;
        if (limit > 0 && infraFailures.length >= limit) {
          quarantine = {
            reason: `${infraFailures.length} infrastructure failures in a row, last ${fault.type}: ${fault.message.slice(0, 200)}`,
            since: fault.at,
            failures: infraFailures.slice(-limit),
          };
          log.warn('device quarantined: it takes no work until the resume signal', {
            deviceId,
            reason: quarantine.reason,
          });
          setHealth('quarantined');
        }
      }
    }
    current = undefined;
    completed++;
    describe();
  }
}
