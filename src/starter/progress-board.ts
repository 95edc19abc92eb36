/**
 * Live progress of traversals for people: bars redrawn in place on a terminal, or one plain line
 * per change when the output is not a TTY. Reads Temporal only, so it shows runs started by any
 * starter: the running traversals (visibility list + their `progress` query) and the tasks waiting
 * in each running device workflow's queue, with the reason they wait (its `state` query).
 * One tick costs two visibility lists, one query per running traversal and one per device, each
 * list capped ({@link MAX_ROWS}, {@link MAX_DEVICES}) and each query bounded by a deadline.
 */
import type { Client } from '@temporalio/client';
import {
  deviceStateQuery,
  progressQuery,
  queuedProgress,
  type DeviceState,
  type TraversalProgress,
} from '../contract/messages';

/** Rows one tick shows at most (running traversals first). */
export const MAX_ROWS = 50;
/** Device workflows whose queue one tick reads at most. */
export const MAX_DEVICES = 50;
/** Deadline of one query, ms: a workflow whose worker is gone must not stall the board. */
const QUERY_DEADLINE_MS = 3000;

/** How progress is shown. */
export type ProgressMode = 'bars' | 'lines' | 'off';

/** One board row: a traversal's progress, or a task still waiting in its device's queue. */
export interface BoardRow extends TraversalProgress {
  /** Why a queued task is not running yet, e.g. "queued behind traversal/T1/sim-1"; unset for running ones. */
  waiting?: string;
}

/**
 * Why the task at `position` in a device's queue does not run yet: quarantine and pause stop the
 * queue whatever runs; otherwise it waits for the device's current traversal.
 */
export function queuedReason(state: DeviceState, position = 0): string {
  if (state.quarantine) return `queued: device quarantined (${clip(state.quarantine.reason, 100)})`;
  if (state.paused) return 'queued: device paused';
  const place = position > 0 ? ` (#${position + 1} in line)` : '';
  if (state.current) return `queued behind ${state.current.workflowId}${place}`;
  // Nothing runs and nothing stops the queue: the device workflow starts it at its next step.
  return position > 0 ? `queued${place}` : 'queued: next on the device';
}

/** The rows of the tasks waiting in one device's queue, in queue order. */
export function queuedRows(state: DeviceState): BoardRow[] {
  return state.queue.map((q, i) => ({
    ...queuedProgress(q.taskId, state.deviceId, 0, state.paused),
    waiting: queuedReason(state, i),
  }));
}

/**
 * The `state` of the running device workflows on a task queue, one query each, at most `max`
 * (default {@link MAX_DEVICES}); `accept` filters by device workflow id before any query.
 * Devices that do not answer in time are left out.
 */
export async function deviceStates(
  client: Client,
  taskQueue: string,
  opts: { max?: number; accept?: (workflowId: string) => boolean } = {},
): Promise<DeviceState[]> {
  const query = `WorkflowType = "deviceWorkflow" AND ExecutionStatus = "Running" AND TaskQueue = "${taskQueue}"`;
  const ids: string[] = [];
  for await (const wf of client.workflow.list({ query, pageSize: 100 })) {
    if (opts.accept && !opts.accept(wf.workflowId)) continue;
    ids.push(wf.workflowId);
    if (ids.length >= (opts.max ?? MAX_DEVICES)) break;
  }
  const states = await Promise.all(
    ids.map((id) =>
      client.connection
        .withDeadline(Date.now() + QUERY_DEADLINE_MS, () => client.workflow.getHandle(id).query(deviceStateQuery))
        .catch(() => undefined),
    ),
  );
  return states.filter((s): s is DeviceState => s !== undefined);
}

/** Renders one row: device, task, then phase, a 20-cell bar, percent and screens, or why it waits. */
export function progressRow(
  p: Pick<BoardRow, 'deviceId' | 'taskId' | 'phase' | 'percent' | 'screens' | 'waiting'>,
): string {
  const head = `${p.deviceId.padEnd(10)} ${p.taskId.slice(0, 24).padEnd(24)}`;
  if (p.waiting) return `${head} ${p.waiting}`;
  const pct = Math.max(0, Math.min(100, Math.round(p.percent)));
  const bar = '█'.repeat(Math.round(pct / 5)).padEnd(20, '░');
  return `${head} ${p.phase.padEnd(11)} ${bar} ${String(pct).padStart(3)}%  ${p.screens} screens`;
}

/** Polls the traversals and device queues of a task queue and draws them. */
export class ProgressBoard {
  private timer?: NodeJS.Timeout;
  private drawn = 0;
  private readonly lastPhase = new Map<string, string>();
  private busy = false;

  constructor(
    private readonly client: Client,
    private readonly taskQueue: string,
    private readonly mode: ProgressMode,
    private readonly out: NodeJS.WriteStream = process.stdout,
    private readonly intervalMs = 1000,
    /** In 'lines' mode, receives each change instead of a text line (e.g. a JSON logger). */
    private readonly emit?: (p: BoardRow) => void,
  ) {}

  /** Starts polling (no-op in mode 'off'). */
  start(): this {
    if (this.mode === 'off') return this;
    this.timer = setInterval(() => void this.tick(), this.intervalMs);
    this.timer.unref();
    return this;
  }

  /** Stops polling; safe to call twice. */
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** One poll and draw; errors are swallowed (progress is best effort). */
  async tick(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      const running = await this.runningRows();
      const queued = (await deviceStates(this.client, this.taskQueue)).flatMap(queuedRows);
      const rows = [...running, ...queued];
      const truncated = rows.length > MAX_ROWS;
      // Stable sort: per device the running traversal first, then its queue in order.
      const shown = rows
        .slice(0, MAX_ROWS)
        .sort((a, b) => a.deviceId.localeCompare(b.deviceId) || Number(!!a.waiting) - Number(!!b.waiting));
      if (this.mode === 'bars') this.drawBars(shown, truncated);
      else this.writeLines(shown);
    } catch {
      // the server may be restarting; try again next tick
    } finally {
      this.busy = false;
    }
  }

  private async runningRows(): Promise<BoardRow[]> {
    const rows: BoardRow[] = [];
    const query = `WorkflowType = "traversalWorkflow" AND ExecutionStatus = "Running" AND TaskQueue = "${this.taskQueue}"`;
    for await (const wf of this.client.workflow.list({ query, pageSize: 100 })) {
      try {
        rows.push(
          await this.client.connection.withDeadline(Date.now() + QUERY_DEADLINE_MS, () =>
            this.client.workflow.getHandle(wf.workflowId, wf.runId).query(progressQuery),
          ),
        );
      } catch {
        // finished between list and query, or no worker answers it
      }
      if (rows.length >= MAX_ROWS) break;
    }
    return rows;
  }

  private drawBars(rows: BoardRow[], truncated: boolean): void {
    const lines = rows.length ? rows.map(progressRow) : ['(no traversal running or queued)'];
    if (truncated) lines.push(`(first ${MAX_ROWS} rows shown)`);
    if (this.drawn) this.out.write(`\x1b[${this.drawn}A`);
    this.out.write(lines.map((l) => `\x1b[2K${l}`).join('\n') + '\n');
    // Clear rows left over from a longer previous frame.
    for (let i = lines.length; i < this.drawn; i++) this.out.write('\x1b[2K\n');
    if (this.drawn > lines.length) this.out.write(`\x1b[${this.drawn - lines.length}A`);
    this.drawn = lines.length;
  }

  private writeLines(rows: BoardRow[]): void {
    // Forget rows that are gone, so a long-running starter's memory stays bounded.
    const live = new Set(rows.map((p) => `${p.taskId}/${p.deviceId}`));
    for (const key of this.lastPhase.keys()) if (!live.has(key)) this.lastPhase.delete(key);
    for (const p of rows) {
      const key = `${p.taskId}/${p.deviceId}`;
      const bucket = p.waiting ?? `${p.phase}:${Math.floor(p.percent / 25)}`;
      if (this.lastPhase.get(key) === bucket) continue;
      this.lastPhase.set(key, bucket);
      if (this.emit) this.emit(p);
      else if (p.waiting) this.out.write(`progress ${key} ${p.waiting}\n`);
      else this.out.write(`progress ${key} ${p.phase} ${Math.round(p.percent)}% ${p.screens} screens\n`);
    }
  }
}

function clip(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}
