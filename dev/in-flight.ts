/**
 * Work an earlier demo left in flight, for a restarted demo to resume watching. Temporal keeps the
 * runs themselves (running traversals on the task queue, tasks queued in the device workflows);
 * Redis may still hold tasks pushed but not yet turned into requests (in the task list, or in the
 * processing list of a starter stopped mid-item). Traversals and device queues are the workflows'
 * own answers; nothing here changes them.
 */
import type { Client } from '@temporalio/client';
import type Redis from 'ioredis';
import { parseWorkflowId, progressQuery, traversalWorkflowId, type TraversalProgress } from '../src/contract/messages';
import { deviceStates, queuedReason } from '../src/starter/progress-board';
import { APP_PACKAGE, DEVICE_ID, TASK_ID } from '../src/contract/search-attributes';

/** One traversal an earlier run left unfinished. */
export interface InFlightRun {
  taskId: string;
  deviceId: string;
  packageName?: string;
  /** running: its traversal workflow runs; queued: in its device's queue; pending: a task still in Redis. */
  state: 'running' | 'queued' | 'pending';
  /** For people: "traversing 40%", "queued behind traversal/…", "in traversal:tasks". */
  detail: string;
  /** The traversal workflow's id, for running ones. */
  workflowId?: string;
}

/** Where to look. */
export interface InFlightScope {
  taskQueue: string;
  /** Device ids whose queues count (device workflows `[<deployment>/]device/<id>`). */
  devices: string[];
  /** Redis lists that may still hold tasks (the task list, the starter's processing list). */
  taskLists?: string[];
  /** Only tasks in those lists whose id starts with this count (other producers' tasks are not ours). */
  taskIdPrefix?: string;
}

/** Running traversal workflows on a task queue, from visibility alone (no worker needed). */
export async function runningTraversals(
  client: Client,
  taskQueue: string,
  max = 500,
): Promise<Omit<InFlightRun, 'detail'>[]> {
  const query = `WorkflowType = "traversalWorkflow" AND ExecutionStatus = "Running" AND TaskQueue = "${taskQueue}"`;
  const out: Omit<InFlightRun, 'detail'>[] = [];
  for await (const wf of client.workflow.list({ query, pageSize: 100 })) {
    const sa = wf.typedSearchAttributes;
    // The attributes say what the id says, without parsing it.
    const id = parseWorkflowId(wf.workflowId);
    out.push({
      workflowId: wf.workflowId,
      taskId: sa.get(TASK_ID) ?? id?.taskId ?? '',
      deviceId: sa.get(DEVICE_ID) ?? id?.deviceId ?? '',
      packageName: sa.get(APP_PACKAGE),
      state: 'running',
    });
    if (out.length >= max) break;
  }
  return out;
}

/** Tasks still waiting in Redis lists, one entry per device they name. */
export async function pendingTasks(redis: Redis, lists: string[], taskIdPrefix = ''): Promise<InFlightRun[]> {
  const out: InFlightRun[] = [];
  for (const list of lists) {
    for (const raw of await redis.lrange(list, 0, -1)) {
      let doc: { taskId?: unknown; deviceId?: unknown; devices?: unknown; packageName?: unknown };
      try {
        doc = JSON.parse(raw) as typeof doc;
      } catch {
        continue;
      }
      if (typeof doc.taskId !== 'string' || !doc.taskId.startsWith(taskIdPrefix)) continue;
      const devices = Array.isArray(doc.devices) ? doc.devices : [doc.deviceId];
      for (const d of devices) {
        const deviceId =
          typeof d === 'string'
            ? d
            : typeof d === 'object' && d !== null
              ? (d as { deviceId?: unknown }).deviceId
              : undefined;
        if (typeof deviceId !== 'string') continue;
        const packageName = typeof doc.packageName === 'string' ? doc.packageName : undefined;
        out.push({ taskId: doc.taskId, deviceId, packageName, state: 'pending', detail: `in ${list}` });
      }
    }
  }
  return out;
}

/**
 * Everything in flight in a scope, with what each run is doing. The `progress` and `state` queries
 * need a worker on the task queue, so call this once one runs.
 */
export async function findInFlight(client: Client, redis: Redis, scope: InFlightScope): Promise<InFlightRun[]> {
  const devices = new Set(scope.devices);
  const runs: InFlightRun[] = [];
  for (const r of await runningTraversals(client, scope.taskQueue)) {
    let detail = 'running';
    try {
      const p: TraversalProgress = await client.connection.withDeadline(Date.now() + 10_000, () =>
        client.workflow.getHandle(r.workflowId!).query(progressQuery),
      );
      detail = p.phase === 'traversing' ? `traversing ${Math.round(p.percent)}%` : p.phase;
    } catch {
      // unanswered in time: still listed, without its phase
    }
    runs.push({ ...r, detail });
  }
  const states = await deviceStates(client, scope.taskQueue, {
    accept: (id) => devices.has(parseWorkflowId(id)?.deviceId ?? ''),
    max: devices.size,
  });
  for (const s of states) {
    s.queue.forEach((q, i) =>
      runs.push({
        taskId: q.taskId,
        deviceId: s.deviceId,
        packageName: q.packageName,
        state: 'queued',
        detail: queuedReason(s, i),
      }),
    );
  }
  const seen = new Set(runs.map((r) => `${r.taskId}/${r.deviceId}`));
  for (const p of await pendingTasks(redis, scope.taskLists ?? [], scope.taskIdPrefix)) {
    if (!seen.has(`${p.taskId}/${p.deviceId}`)) runs.push(p);
  }
  return runs;
}

/** One sentence naming what was found, e.g. "found 3 runs in flight …: traversal/T/sim-1 (traversing 40%), …; 2 queued behind them". */
export function describeInFlight(runs: InFlightRun[], what = 'from an earlier demo'): string {
  const running = runs
    .filter((r) => r.state === 'running')
    .sort((a, b) => a.taskId.localeCompare(b.taskId) || a.deviceId.localeCompare(b.deviceId));
  const queued = runs.filter((r) => r.state === 'queued').length;
  const pending = runs.filter((r) => r.state === 'pending').length;
  const list = running
    .map((r) => `${r.workflowId ?? traversalWorkflowId(r.taskId, r.deviceId)} (${r.detail})`)
    .join(', ');
  let text = `found ${running.length} run${running.length === 1 ? '' : 's'} in flight ${what}${list ? `: ${list}` : ''}`;
  if (queued) text += `; ${queued} queued behind them`;
  if (pending) text += `; ${pending} not yet started, still in Redis`;
  return text;
}
