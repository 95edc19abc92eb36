/**
 * The progress of one attempt and where it goes. Every progress line becomes a heartbeat (no history;
 * the SDK throttles it); the workflow gets a signal only when the phase starts, the percent enters a
 * new 5-point step, or a signature is found for the first time in the attempt (at most
 * LIVE_FINDINGS_MAX of them), so an attempt writes at most ~41 progress signals into history
 * whatever it lasts or finds.
 */
import type { Context } from '@temporalio/activity';
import { LIVE_FINDINGS_MAX, type Finding, type FindingBrief, type ProgressUpdate } from '../../contract/messages';
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
  /** Signatures this attempt has queued or sent to the workflow. */
  private readonly announced = new Set<string>();
  /** Briefs waiting for the next signal. */
  private queued: FindingBrief[] = [];

  constructor(
    private readonly ctx: Context,
    private readonly target: ProgressTarget,
    previous: TraversalCheckpoint | undefined,
    resumeFrom: string | undefined,
    pid: number,
    private readonly attempt: number,
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
      attempt,
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

  /** Queues a finding's brief for the workflow's live table, once per signature, and signals it. */
  found(f: Finding): void {
    if (this.announced.has(f.signature) || this.announced.size >= LIVE_FINDINGS_MAX) return;
    this.announced.add(f.signature);
    const message = f.message.length > 200 ? `${f.message.slice(0, 199)}…` : f.message;
    this.queued.push({
      kind: f.kind,
      signature: f.signature,
      exception: f.exception,
      message,
      attempt: f.attempt,
      ...(f.step !== undefined ? { step: f.step } : {}),
    });
    this.signal(true);
  }

  /** Sends the current state as the activity's heartbeat details. */
  heartbeat(): void {
    this.ctx.heartbeat(this.state);
  }

  /**
   * Signals the workflow when the percent entered a new step (or always with `force`), with the
   * briefs queued since the last signal; briefs that arrive while a signal is on its way follow it.
   */
  signal(force: boolean): void {
    const push = this.target.pushProgress;
    const step = Math.floor(this.state.percent / PROGRESS_STEP_PERCENT);
    if (!push || this.pushing || (!force && step === this.lastStep)) return;
    this.lastStep = step;
    const { percent, screens, crashes, anrs, checkpoint } = this.state;
    const found = this.queued;
    this.queued = [];
    this.pushing = push(this.target.workflowId, {
      percent,
      screens,
      crashes,
      anrs,
      checkpoint,
      attempt: this.attempt,
      ...(found.length ? { found } : {}),
    }).then(
      () => {
        this.pushing = undefined;
        if (this.queued.length) this.signal(true);
      },
      (err) => {
        // Kept for the next signal; not retried at once, so an unreachable workflow costs no loop.
        this.pushing = undefined;
        this.queued.unshift(...found);
        this.ctx.log.debug('progress signal failed', { error: String(err) });
      },
    );
  }

  /** Waits for a signal still on its way (so the last one is not lost when the activity returns). */
  async settle(): Promise<void> {
    await this.pushing;
  }
}
