/**
 * Budget changes and pause, from the workflow to the running tool. The workflow's state is read with
 * a query every DT_CONTROL_POLL_INTERVAL (a query writes no history). A command that names
 * {controlFile} is told through that file; any other is stopped with TERM (finish now) and held
 * with STOP/CONT of its process group (pause). An engine whose budget the runner keeps (monkey,
 * fastbot) is handed the budget, and paused and stopped on the phone, through `engine`.
 */
import type { Context } from '@temporalio/activity';
import { promises as fsp } from 'node:fs';
import type { TraversalBudget } from '../../contract/messages';
import { controlText } from './command';
import { signalGroup } from './process-group';

/** What the channel needs to know about the workflow and the running tool. */
export interface ControlTarget {
  workflowId: string;
  /** Reads the workflow's current time budget and pause state. Unset: the budget never changes. */
  readBudget?: (workflowId: string) => Promise<TraversalBudget | undefined>;
  /** The tool's control file, when its command names one; unset: signals instead. */
  controlFile?: string;
  /** The tool's process group. */
  pid: number;
  /** Called when the tool was paused or continued. */
  onPause: (paused: boolean) => void;
  /** Set for an engine whose budget the runner keeps: it takes the budget, pause and finish-now instead of the process group. */
  engine?: EngineControl;
}

/** How the runner applies the workflow's budget to an engine that runs on a phone. */
export interface EngineControl {
  /** The budget in force, seconds. */
  budget(durationSec: number): void;
  /** Holds or continues the engine; rejects when it cannot. */
  pause(paused: boolean): Promise<void>;
  /** Ends the engine now; the run counts as stopped. */
  finish(): void;
}

/** Applies the workflow's budget and pause state to the running tool. */
export class ControlChannel {
  private version = 0;
  private paused = false;
  /** Set once the tool was asked with TERM to finish: its exit by TERM is then a normal end. */
  stopRequested = false;
  private reading = false;

  constructor(
    private readonly ctx: Context,
    private readonly target: ControlTarget,
  ) {}

  /** One read of the workflow's budget and pause state. */
  poll(): void {
    const read = this.target.readBudget;
    if (!read || this.reading) return;
    this.reading = true;
    read(this.target.workflowId)
      .then((b) => this.apply(b))
      .catch((err) => this.ctx.log.debug('reading the traversal budget failed', { error: String(err) }))
      .finally(() => (this.reading = false));
  }

  private async apply(b: TraversalBudget | undefined): Promise<void> {
    if (!b) return;
    const paused = b.paused === true;
    if (b.version <= this.version && paused === this.paused) return;
    const pauseChanged = paused !== this.paused;
    this.version = Math.max(this.version, b.version);
    this.paused = paused;
    const { pid, controlFile, engine } = this.target;
    this.ctx.log.info(
      pauseChanged
        ? paused
          ? 'pausing the traversal tool'
          : 'continuing the traversal tool'
        : 'applying a new time budget',
      {
        durationSec: b.durationSec,
        finishNow: b.finishNow,
        paused,
        childPid: pid,
      },
    );
    let held = pauseChanged;
    if (engine) {
      engine.budget(b.durationSec);
      if (pauseChanged)
        held = await engine.pause(paused).then(
          () => true,
          (err: Error) => {
            this.ctx.log.warn(
              paused
                ? 'pause is not supported for this engine here; it keeps running and its budget keeps counting'
                : 'could not continue the engine',
              { error: err.message, childPid: pid },
            );
            return false;
          },
        );
      if (b.finishNow && !this.stopRequested) {
        this.stopRequested = true;
        engine.finish();
      }
    } else if (controlFile) {
      // The tool polls this file: 'stop' ends it gracefully, 'pause' holds it, 'duration=N' sets its budget.
      const tmp = `${controlFile}.tmp`;
      await fsp.writeFile(tmp, controlText(b));
      await fsp.rename(tmp, controlFile);
    } else {
      if (pauseChanged) signalGroup(pid, paused ? 'SIGSTOP' : 'SIGCONT');
      if (b.finishNow && !this.stopRequested) {
        // A tool without a control channel is asked to stop with TERM and keeps its report.
        this.stopRequested = true;
        if (paused) signalGroup(pid, 'SIGCONT');
        signalGroup(pid, 'SIGTERM');
      }
    }
    if (held) this.target.onPause(paused);
  }
}
