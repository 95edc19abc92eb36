/**
 * One attempt of the traversal command, from spawn to its result. `TraversalRun.start` prepares the
 * run folder, has the engine (engines/) prepare the phone and spawns the command; `watch` follows it
 * (progress lines, findings, budget, hangs, the device, cancellation) until it exits; `wrapUp` ships
 * what is left; `outcome` turns the engine's verdict into a result or a typed error. The fields hold
 * what happened on the way, so the outcome reads them rather than flags spread over closures.
 *
 * An engine that runs on the phone and cannot resume (monkey, fastbot) has its time budget kept
 * here: the checkpoint is the seconds of budget used (paused time does not count), a retry gets
 * the rest, and when the budget is used up the engine is stopped on the phone.
 */
import type { Context } from '@temporalio/activity';
import { randomUUID } from 'node:crypto';
import { createWriteStream, promises as fsp, type WriteStream } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { DeviceOfflineError, ReportUploadError, TraversalHungError, TraversalStartError } from '../../contract/errors';
import { toFinding, type RawFinding } from '../findings';
import { AttemptShipper } from '../report-parts';
import { usesControlFile } from './command';
import { ControlChannel } from './control-channel';
import type { Engine, EngineAttempt } from './engines';
import {
  childEnv,
  endStaleRun,
  forgetRun,
  killGroup,
  recordRun,
  signalGroup,
  spawnGroup,
  type GroupExit,
  type RunningGroup,
} from './process-group';
import { ProgressReporter } from './progress-reporter';
import type { RunTraversalInput, RunTraversalResult, TraversalCheckpoint, TraversalRunnerDeps } from './runner';

/** The traversal's attempt number: this activity's, after those of the activities scheduled before it. */
export function attemptOf(ctx: Context, input: Pick<RunTraversalInput, 'attemptBase'>): number {
  return (input.attemptBase ?? 0) + ctx.info.attempt;
}

/** Longest wait for the last shipment of an attempt's report parts, ms. */
const FINAL_SHIP_MS = 120_000;
/** Lines of the command's stderr kept for the error of a failed run. */
const STDERR_TAIL_LINES = 20;

/** Folder of one run (report, logs, control file). */
export function runDir(runsDir: string, taskId: string, deviceId: string): string {
  return path.join(runsDir, taskId, deviceId);
}

/** What `start` set up for a run whose command is now running. */
interface StartedRun {
  reportDir: string;
  controlFile: string;
  logFile: string;
  workflowId: string;
  resumeFrom?: string;
  runId: string;
  shipper: AttemptShipper;
  log: WriteStream;
  group: RunningGroup;
  startedAt: number;
  /** The engine's side of this attempt. */
  engine: EngineAttempt;
  /** Seconds of the time budget earlier attempts used (engines whose budget the runner keeps). */
  usedBeforeSec: number;
}

/** One run of the command, from spawn to its result. */
export async function runOne(
  deps: TraversalRunnerDeps,
  engine: Engine,
  ctx: Context,
  input: RunTraversalInput,
  previous: TraversalCheckpoint | undefined,
): Promise<RunTraversalResult> {
  const run = await TraversalRun.start(deps, engine, ctx, input, previous);
  const exit = await run.watch();
  const problems = await run.wrapUp();
  return run.outcome(exit, problems);
}

/** A running attempt of the traversal command and what happened to it so far. */
export class TraversalRun {
  private readonly progress: ProgressReporter;
  private readonly control: ControlChannel;
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly stderrTail: string[] = [];
  /** Last progress line, pause or continue: the hang clock starts from here. */
  private lastProgressAt = Date.now();
  /** Set when the tool printed no progress for longer than the heartbeat timeout and was ended. */
  private hung?: TraversalHungError;
  /** Set when the device went offline and the tool was ended so a retry resumes later. */
  private offline?: Error;
  private checkingDevice = false;
  /** From spawn to exit, ms; set once the command has exited. */
  private durationMs = 0;
  /** Why the runner ended the engine, when it did. */
  private stoppedBy?: 'budget' | 'finish';
  /** Set once the engine is being ended: the ending in progress. */
  private stopping?: Promise<void>;
  /** The time budget in force, seconds (a budget signal may change it while the engine runs). */
  private budgetSec: number;
  /** Time spent paused so far, and since when the current pause holds, ms. */
  private pausedMs = 0;
  private pausedSince?: number;

  private constructor(
    private readonly deps: TraversalRunnerDeps,
    private readonly ctx: Context,
    private readonly input: RunTraversalInput,
    previous: TraversalCheckpoint | undefined,
    private readonly started: StartedRun,
  ) {
    const { workflowId, shipper, resumeFrom, group, engine } = started;
    this.budgetSec = input.durationSec;
    this.progress = new ProgressReporter(
      ctx,
      { workflowId, shipper, pushProgress: deps.pushProgress },
      previous,
      resumeFrom,
      group.pid,
      attemptOf(ctx, input),
    );
    this.control = new ControlChannel(ctx, {
      workflowId,
      readBudget: deps.readBudget,
      controlFile: engine.budgetKeeper === 'tool' && usesControlFile(deps.command) ? started.controlFile : undefined,
      pid: group.pid,
      engine:
        engine.budgetKeeper === 'runner'
          ? {
              budget: (sec) => (this.budgetSec = sec),
              pause: (paused) =>
                engine.pause ? engine.pause(paused) : Promise.reject(new Error('this engine cannot be paused')),
              finish: () => {
                this.stoppedBy ??= 'finish';
                void this.stopGroup();
              },
            }
          : undefined,
      onPause: (paused) => {
        const now = Date.now();
        if (paused) this.pausedSince ??= now;
        else if (this.pausedSince !== undefined) {
          this.pausedMs += now - this.pausedSince;
          this.pausedSince = undefined;
        }
        this.progress.state.paused = paused || undefined;
        this.lastProgressAt = Date.now();
        this.progress.heartbeat();
      },
    });
  }

  /** Prepares the run folder, ends a stale run of the device and spawns the command. */
  static async start(
    deps: TraversalRunnerDeps,
    engine: Engine,
    ctx: Context,
    input: RunTraversalInput,
    previous: TraversalCheckpoint | undefined,
  ): Promise<TraversalRun> {
    const attempt = attemptOf(ctx, input);
    const dir = runDir(deps.runsDir, input.taskId, input.deviceId);
    const reportDir = path.join(dir, 'report');
    const controlFile = path.join(dir, 'control');
    const logFile = path.join(dir, `attempt-${attempt}.log`);
    const workflowId = ctx.info.workflowExecution?.workflowId ?? '';
    await fsp.mkdir(dir, { recursive: true });
    await endStaleRun(deps, input.deviceId, ctx.log);
    // A retry after the device dropped off does not start the tool blind: it waits for the phone.
    await waitForDevice(deps, ctx, input, previous);

    const resumeFrom = previous?.checkpoint && previous.checkpoint !== '0' ? previous.checkpoint : undefined;
    if (!resumeFrom) await fsp.rm(reportDir, { recursive: true, force: true });
    await fsp.mkdir(reportDir, { recursive: true });
    await fsp.rm(controlFile, { force: true });
    const shipper = new AttemptShipper({
      store: deps.store,
      taskId: input.taskId,
      deviceId: input.deviceId,
      attempt,
      reportDir,
      runDir: dir,
      log: ctx.log,
    });
    await shipper.open();

    const runId = randomUUID();
    // For an engine whose budget the runner keeps, the checkpoint is the seconds of budget used.
    const usedBeforeSec = Math.max(0, Number(resumeFrom ?? 0) || 0);
    let attemptEngine: EngineAttempt;
    try {
      attemptEngine = await engine.prepare({
        input,
        attempt,
        runId,
        reportDir,
        controlFile,
        resumeFrom,
        remainingSec: Math.max(0, input.durationSec - usedBeforeSec),
        signal: ctx.cancellationSignal,
        log: ctx.log,
      });
    } catch (err) {
      await shipper.close();
      throw err;
    }
    const argv = attemptEngine.argv;
    const [cmd, ...args] = argv;
    // Recorded before the spawn: a worker killed between the spawn and the pid's record still leaves
    // a record that the next worker or attempt finds the process by.
    await recordRun(deps.pidsDir, input.deviceId, { runId, workflowId });
    const log = createWriteStream(logFile, { flags: 'a' });
    log.write(`# attempt ${attempt} ${new Date().toISOString()} argv=${JSON.stringify(argv)}\n`);
    const startedAt = Date.now();
    let group: RunningGroup;
    try {
      group = await spawnGroup(cmd, args, { cwd: dir, env: childEnv(input.deviceId, runId) });
    } catch (err) {
      log.end();
      await shipper.close();
      await forgetRun(deps.pidsDir, input.deviceId, runId);
      await attemptEngine.cleanup();
      throw new TraversalStartError(cmd, (err as Error).message);
    }
    await recordRun(deps.pidsDir, input.deviceId, { runId, pid: group.pid, workflowId });
    ctx.log.info('traversal command started', {
      engine: engine.id,
      childPid: group.pid,
      deviceId: input.deviceId,
      taskId: input.taskId,
      resumeFrom,
      logFile,
    });
    const started = {
      reportDir,
      controlFile,
      logFile,
      workflowId,
      resumeFrom,
      runId,
      shipper,
      log,
      group,
      startedAt,
      engine: attemptEngine,
      usedBeforeSec: attemptEngine.budgetKeeper === 'runner' ? usedBeforeSec : 0,
    };
    return new TraversalRun(deps, ctx, input, previous, started);
  }

  /** Follows the command until it exits, then stops the timers and closes its log and record. */
  async watch(): Promise<GroupExit> {
    const { ctx, deps, progress, started } = this;
    // Budget and pause must arrive even while the tool prints nothing.
    this.every(deps.controlPollMs, () => this.control.poll());
    this.every(deps.reportShipMs ?? 30_000, () => void started.shipper.shipFiles());
    // While paused no line arrives; keep the heartbeat (and with it a cancel) flowing.
    this.every(1000, () => progress.paused && progress.heartbeat());
    this.readOutput();
    const onCancel = () => {
      ctx.log.warn('traversal cancelled; stopping its process group', { childPid: started.group.pid });
      void this.stopGroup();
    };
    ctx.cancellationSignal.addEventListener('abort', onCancel, { once: true });
    progress.heartbeat();
    progress.signal(true);
    this.watchForHang();
    this.watchDevice();
    if (started.engine.budgetKeeper === 'runner') this.keepBudget();
    void started.engine.afterStart().then((enginePid) => {
      if (enginePid === undefined) return;
      progress.state.enginePid = enginePid;
      progress.heartbeat();
    });

    const exit = await started.group.exited;
    ctx.cancellationSignal.removeEventListener('abort', onCancel);
    for (const t of this.timers) clearInterval(t);
    for (const raw of started.engine.endOfOutput()) this.addFinding(raw);
    await this.stopping;
    await started.engine.cleanup();
    await new Promise<void>((resolve) => started.log.end(resolve));
    await forgetRun(deps.pidsDir, this.input.deviceId, started.runId);
    this.durationMs = Date.now() - started.startedAt;
    deps.metrics?.traversalSeconds.inc({}, this.durationMs / 1000);
    return exit;
  }

  /**
   * Ships everything found before the attempt ends, whatever the outcome, heartbeating meanwhile
   * (the sink may be slow). Returns what could not be shipped.
   */
  async wrapUp(): Promise<string[]> {
    const shipping = setInterval(() => this.progress.heartbeat(), 1000);
    const problems = await Promise.race([
      this.started.shipper.close(),
      new Promise<string[]>((resolve) => setTimeout(() => resolve(['timed out']), FINAL_SHIP_MS).unref()),
    ]).finally(() => clearInterval(shipping));
    this.progress.release();
    if (problems.length)
      this.ctx.log.warn('report parts did not all reach the sink', {
        problems: problems.slice(0, 5),
        deviceId: this.input.deviceId,
      });
    return problems;
  }

  /** The attempt's result, or the error that tells Temporal whether to retry it. */
  async outcome(exit: GroupExit, problems: string[]): Promise<RunTraversalResult> {
    const { ctx, deps, progress, started } = this;
    // A hung tool first: the SDK cancels an attempt that sent no heartbeat for the heartbeat timeout
    // plus 5 s, which lands while a tool that ignores TERM still has its kill grace to run.
    if (this.hung) {
      deps.metrics?.traversals.inc({ outcome: 'hung' });
      throw this.hung;
    }
    if (ctx.cancellationSignal.aborted) {
      deps.metrics?.traversals.inc({ outcome: 'cancelled' });
      throw ctx.cancellationSignal.reason;
    }
    if (this.offline) {
      deps.metrics?.traversals.inc({ outcome: 'device-offline' });
      throw this.offline;
    }
    const stoppedBy = this.stoppedBy ?? (this.control.stopRequested ? 'finish' : undefined);
    let verdict: { status?: string };
    try {
      verdict = await started.engine.verdict({ exit, stoppedBy, stderrTail: this.stderrTail.join('\n') });
    } catch (err) {
      deps.metrics?.traversals.inc({ outcome: err instanceof DeviceOfflineError ? 'device-offline' : 'failed' });
      throw err;
    }
    // A retry resumes at the end and ships again; nothing found is given up for a sink hiccup.
    if (problems.length && deps.store)
      throw new ReportUploadError(
        deps.store.url([this.input.taskId]),
        `report parts not shipped: ${problems.slice(0, 3).join(', ')}`,
      );
    const summary = await readSummary(started.reportDir);
    deps.metrics?.traversals.inc({ outcome: 'completed' });
    progress.state.percent = 100;
    progress.signal(false);
    await progress.settle();
    return {
      status: verdict.status ?? (typeof summary.status === 'string' ? summary.status : 'completed'),
      screens: num(summary.screens, progress.state.screens),
      crashes: num(summary.crashes, progress.state.crashes),
      anrs: num(summary.anrs, progress.state.anrs),
      findings: started.shipper.findings,
      reportDir: started.reportDir,
      logFile: started.logFile,
      ...(started.resumeFrom ? { resumedFrom: started.resumeFrom } : {}),
      attempt: attemptOf(ctx, this.input),
      exitCode: 0,
      durationMs: this.durationMs,
    };
  }

  private every(ms: number, tick: () => void): void {
    this.timers.push(setInterval(tick, ms));
  }

  /**
   * Ends the engine where it runs (on the phone: by its recorded pid, checked gone), then the host
   * process group, continuing it first in case it is paused. Safe to call twice.
   */
  private stopGroup(): Promise<void> {
    this.stopping ??= (async () => {
      const { engine, group } = this.started;
      await engine.stop().catch((err: Error) =>
        this.ctx.log.warn('could not end the engine on the phone; the next attempt sweeps it', {
          deviceId: this.input.deviceId,
          error: err.message,
        }),
      );
      signalGroup(group.pid, 'SIGCONT');
      await killGroup(group.child, this.deps.killGraceMs);
    })();
    return this.stopping;
  }

  /** Seconds of the time budget used so far, earlier attempts included; paused time does not count. */
  private usedSec(): number {
    const now = Date.now();
    const pausedMs = this.pausedMs + (this.pausedSince !== undefined ? now - this.pausedSince : 0);
    return this.started.usedBeforeSec + (now - this.started.startedAt - pausedMs) / 1000;
  }

  /**
   * For an engine that cannot keep a time budget: progress is the budget used, the checkpoint the
   * seconds used, and the engine is stopped once
   * the budget is used up.
   */
  private keepBudget(): void {
    const tick = () => {
      if (this.progress.paused) return;
      const used = this.usedSec();
      const budget = this.budgetSec;
      const byTime = budget > 0 ? (100 * used) / budget : 100;
      const percent = Math.min(99, byTime);
      this.progress.update({ percent: String(Math.floor(percent)), checkpoint: String(Math.floor(used)) });
      if (used >= budget && !this.stoppedBy) {
        this.stoppedBy = 'budget';
        this.ctx.log.info('time budget used up; stopping the engine', {
          deviceId: this.input.deviceId,
          budgetSec: budget,
          usedSec: Math.round(used),
        });
        void this.stopGroup();
      }
    };
    this.every(250, tick);
  }

  /** Ships one finding at once; for an engine whose budget the runner keeps, it also counts it. */
  private addFinding(raw: RawFinding): void {
    const { ctx, input, started } = this;
    const finding = toFinding(raw, attemptOf(ctx, this.input));
    if (typeof finding === 'string') {
      ctx.log.warn('ignoring a malformed finding line', { problem: finding, deviceId: input.deviceId });
      return;
    }
    ctx.log.info('finding reported', {
      kind: finding.kind,
      signature: finding.signature,
      exception: finding.exception,
      step: finding.step,
      deviceId: input.deviceId,
    });
    if (started.engine.budgetKeeper === 'runner') {
      if (finding.kind === 'crash') this.progress.state.crashes++;
      else this.progress.state.anrs++;
    }
    started.shipper.addFinding(finding, () => this.progress.release());
    this.progress.found(finding);
  }

  /** Writes stdout and stderr to the attempt's log; the engine reads progress and findings; keeps stderr's tail. */
  private readOutput(): void {
    const { started } = this;
    const follow = (stream: 'stdout' | 'stderr') => (line: string) => {
      if (stream === 'stdout') started.log.write(line + '\n');
      else {
        started.log.write(`[stderr] ${line}\n`);
        this.stderrTail.push(line.length > 500 ? line.slice(0, 500) + '…' : line);
        if (this.stderrTail.length > STDERR_TAIL_LINES) this.stderrTail.shift();
      }
      const reading = started.engine.read(stream, line);
      for (const raw of reading.findings) this.addFinding(raw);
      if (reading.alive) this.lastProgressAt = Date.now();
      if (reading.progress) this.progress.update(reading.progress);
    };
    const { stdout, stderr } = started.group.child;
    readline.createInterface({ input: stdout!, crlfDelay: Infinity }).on('line', follow('stdout'));
    readline.createInterface({ input: stderr!, crlfDelay: Infinity }).on('line', follow('stderr'));
  }

  /**
   * A silent tool stops heartbeating, so the server times the attempt out and retries it, maybe on
   * another host; end it here too (a second after the server's timeout), so it does not run on alone.
   * A paused tool is silent on purpose: the clock starts again when it continues.
   */
  private watchForHang(): void {
    const timeoutMs = this.ctx.info.heartbeatTimeoutMs;
    if (!timeoutMs) return;
    const silenceLimitMs = timeoutMs + 1000;
    this.every(Math.min(1000, silenceLimitMs / 4), () => {
      const silentMs = Date.now() - this.lastProgressAt;
      if (this.hung || this.progress.paused || silentMs <= silenceLimitMs) return;
      const pid = this.started.group.pid;
      this.hung = new TraversalHungError(silentMs, pid);
      this.ctx.log.warn('traversal command printed no progress within the heartbeat timeout; ending it', {
        deviceId: this.input.deviceId,
        childPid: pid,
        silentMs,
      });
      void this.stopGroup();
    });
  }

  /** The tool may not notice a phone that dropped off; stop it and let a retry resume later. */
  private watchDevice(): void {
    const { ctx, deps, input } = this;
    const checkDevice = deps.checkDevice;
    if (!checkDevice) return;
    this.every(deps.deviceCheckMs ?? 5000, () => {
      if (this.checkingDevice || this.offline) return;
      this.checkingDevice = true;
      checkDevice(input.agentUrl, input.deviceId, ctx.cancellationSignal)
        .then((trouble) => {
          if (trouble) ctx.log.debug('device check failed', { deviceId: input.deviceId, error: trouble.message });
        })
        .catch((err: Error) => {
          if (ctx.cancellationSignal.aborted) return;
          this.offline = err;
          ctx.log.warn('device went offline; stopping the traversal so a retry resumes it', {
            deviceId: input.deviceId,
            childPid: this.started.group.pid,
            error: err.message,
          });
          void this.stopGroup();
        })
        .finally(() => (this.checkingDevice = false));
    });
  }
}

/**
 * Returns once the agent says the device is online. A phone that was unplugged (or dropped off USB)
 * mostly comes back within seconds, so an offline device is waited for, heartbeating the earlier
 * checkpoint, up to deps.deviceReturnMs; only then does the attempt fail as DeviceOffline.
 */
async function waitForDevice(
  deps: TraversalRunnerDeps,
  ctx: Context,
  input: RunTraversalInput,
  previous: TraversalCheckpoint | undefined,
): Promise<void> {
  if (!deps.checkDevice) return;
  const deadline = Date.now() + (deps.deviceReturnMs ?? 0);
  let since: number | undefined;
  for (;;) {
    try {
      await deps.checkDevice(input.agentUrl, input.deviceId, ctx.cancellationSignal);
      if (since !== undefined)
        ctx.log.info('device back online', { deviceId: input.deviceId, waitedMs: Date.now() - since });
      return;
    } catch (err) {
      if (!(err instanceof DeviceOfflineError) || Date.now() >= deadline) throw err;
      if (since === undefined) {
        since = Date.now();
        ctx.log.warn('device offline; waiting for it to come back before starting', {
          deviceId: input.deviceId,
          waitMs: deps.deviceReturnMs,
          error: err.message,
        });
      }
      ctx.heartbeat(previous);
      await ctx.sleep(1000);
    }
  }
}

function num(v: unknown, fallback: number): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : fallback;
}

async function readSummary(reportDir: string): Promise<Record<string, unknown>> {
  try {
    return JSON.parse(await fsp.readFile(path.join(reportDir, 'summary.json'), 'utf8')) as Record<string, unknown>;
  } catch {
    return {};
  }
}
