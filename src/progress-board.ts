/**
 * Live progress of running traversals for people: bars redrawn in place on a terminal, or one
 * plain line per phase change when the output is not a TTY. Reads Temporal only (visibility
 * list + the `progress` query), so it shows runs started by any starter.
 */
import type { Client } from '@temporalio/client';
import { progressQuery, type TraversalProgress } from './messages';

/** How progress is shown. */
export type ProgressMode = 'bars' | 'lines' | 'off';

/** Renders one progress row: device, task, phase, a 20-cell bar, percent and screens. */
export function progressRow(p: Pick<TraversalProgress, 'deviceId' | 'taskId' | 'phase' | 'percent' | 'screens'>): string {
  const pct = Math.max(0, Math.min(100, Math.round(p.percent)));
  const bar = '█'.repeat(Math.round(pct / 5)).padEnd(20, '░');
  return `${p.deviceId.padEnd(10)} ${p.taskId.slice(0, 24).padEnd(24)} ${p.phase.padEnd(11)} ${bar} ${String(pct).padStart(3)}%  ${p.screens} screens`;
}

/** Polls running traversals on a task queue and draws them. */
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
    private readonly emit?: (p: TraversalProgress) => void,
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
      const rows: TraversalProgress[] = [];
      const query = `WorkflowType = "traversalWorkflow" AND ExecutionStatus = "Running" AND TaskQueue = "${this.taskQueue}"`;
      for await (const wf of this.client.workflow.list({ query, pageSize: 100 })) {
        try {
          rows.push(await this.client.workflow.getHandle(wf.workflowId, wf.runId).query(progressQuery));
        } catch {
          // finished between list and query
        }
        if (rows.length >= 50) break;
      }
      rows.sort((a, b) => a.deviceId.localeCompare(b.deviceId));
      if (this.mode === 'bars') this.drawBars(rows);
      else this.writeLines(rows);
    } catch {
      // the server may be restarting; try again next tick
    } finally {
      this.busy = false;
    }
  }

  private drawBars(rows: TraversalProgress[]): void {
    const lines = rows.length ? rows.map(progressRow) : ['(no traversal running)'];
    if (this.drawn) this.out.write(`\x1b[${this.drawn}A`);
    this.out.write(lines.map((l) => `\x1b[2K${l}`).join('\n') + '\n');
    // Clear rows left over from a longer previous frame.
    for (let i = lines.length; i < this.drawn; i++) this.out.write('\x1b[2K\n');
    if (this.drawn > lines.length) this.out.write(`\x1b[${this.drawn - lines.length}A`);
    this.drawn = lines.length;
  }

  private writeLines(rows: TraversalProgress[]): void {
    for (const p of rows) {
      const key = `${p.taskId}/${p.deviceId}`;
      const bucket = `${p.phase}:${Math.floor(p.percent / 25)}`;
      if (this.lastPhase.get(key) === bucket) continue;
      this.lastPhase.set(key, bucket);
      if (this.emit) this.emit(p);
      else this.out.write(`progress ${key} ${p.phase} ${Math.round(p.percent)}% ${p.screens} screens\n`);
    }
  }
}
