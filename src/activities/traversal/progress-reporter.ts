/**
 * The progress of one attempt and where it goes. Every progress line becomes a heartbeat (no history;
 * the SDK throttles it); the workflow gets a signal only when the phase starts or the percent enters a
 * new 5-point step, so an attempt writes at most ~21 progress events into history whatever it lasts.
 */
import type { Context } from '@temporalio/activity';
import type { ProgressUpdate } from '../../contract/messages';
import type { AttemptShipper } from '../report-parts';
import type { TraversalCheckpoint } from './runner';

/** Progress reaches the workflow in steps of this many percent. */
export const PROGRESS_STEP_PERCENT = 5;

/** Where one attempt's progress goes. */
export interface ProgressTarget {
  workflowId: string;
  /** The attempt's findings; the checkpoint waits for them to reach the sink. */
  shipper: AttemptShipper;
  /** Signals progress to the workflow; failures are ignored. Unset: heartbeats only. */
  pushProgress?: (workflowId: string, update: ProgressUpdate) => Promise<void>;
}

/**
 * Heartbeats on every change, a signal to the workflow only on a new 5-point step. The checkpoint
 * in the heartbeat is held back while a finding is on its way to the sink.
 */
export class ProgressReporter {
  readonly state: TraversalCheckpoint;
  /** The tool's latest checkpoint; `state.checkpoint` lags behind it while findings ship. */
  private latest?: string;
  private lastStep = -1;
  private pushing?: Promise<void>;

  constructor(
    private readonly ctx: Context,
    private readonly target: ProgressTarget,
    previous: TraversalCheckpoint | undefined,
    resumeFrom: string | undefined,
    pid: number,
  ) {
    this.latest = resumeFrom;
    this.state = {
      checkpoint: resumeFrom,
      percent: previous?.percent ?? 0,
      screens: previous?.screens ?? 0,
      crashes: previous?.crashes ?? 0,
      anrs: previous?.anrs ?? 0,
      pid,
      findings: 0,
    };
  }

  /** True while the workflow holds the tool paused. */
  get paused(): boolean {
    return this.state.paused === true;
  }

  /** Takes one parsed progress line. */
  update(g: Record<string, string | undefined>): void {
    const s = this.state;
    s.percent = Number(g.percent ?? s.percent);
    s.screens = Number(g.screens ?? s.screens);
    s.crashes = Number(g.crashes ?? s.crashes);
    s.anrs = Number(g.anrs ?? s.anrs);
    if (g.checkpoint !== undefined) this.latest = g.checkpoint;
    this.release();
    this.heartbeat();
    this.signal(false);
  }

  /** Moves the heartbeat's checkpoint up to the tool's once no finding is in flight. */
  release(): void {
    if (!this.target.shipper.busy) this.state.checkpoint = this.latest;
    this.state.findings = this.target.shipper.findings;
  }

  /** Sends the current state as the activity's heartbeat details. */
  heartbeat(): void {
    this.ctx.heartbeat(this.state);
  }

  /** Signals the workflow when the percent entered a new step (or always with `force`). */
  signal(force: boolean): void {
    const push = this.target.pushProgress;
    const step = Math.floor(this.state.percent / PROGRESS_STEP_PERCENT);
    if (!push || this.pushing || (!force && step === this.lastStep)) return;
    this.lastStep = step;
    const { percent, screens, crashes, anrs, checkpoint } = this.state;
    this.pushing = push(this.target.workflowId, {
      percent,
      screens,
      crashes,
      anrs,
      checkpoint,
      attempt: this.ctx.info.attempt,
    })
      .catch((err) => this.ctx.log.debug('progress signal failed', { error: String(err) }))
      .finally(() => (this.pushing = undefined));
  }

  /** Waits for a signal still on its way (so the last one is not lost when the activity returns). */
  async settle(): Promise<void> {
    await this.pushing;
  }
}
