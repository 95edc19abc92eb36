/**
 * Runs the traversal command (by default the simulator jar via `java -jar`) as a child process:
 * an argument array and never a shell, its own process group, output to a log file line by line.
 *
 * What reaches Temporal, and what it costs in workflow history (a 10-hour run must stay far below
 * the 10,240-event warning, so nothing periodic may write history):
 * - every progress line → a heartbeat with the checkpoint (no history; throttled by the SDK), which
 *   the Web UI and `temporal workflow describe` show and a retry resumes from;
 * - a signal to the workflow only when the phase starts or the percent crosses a 5-point step
 *   (at most ~21 per attempt, whatever the duration), for the `progress` query and the details;
 * - budget and pause are read with a query every DT_CONTROL_POLL_INTERVAL (no history);
 * - each finding (crash or ANR) is shipped to the report sink at once, and the report files every
 *   DT_REPORT_SHIP_INTERVAL (report-parts.ts); the checkpoint does not move past a finding until it
 *   is in the sink, so a lost host at worst makes the retry find it again.
 */
import { Context } from '@temporalio/activity';
import { randomUUID } from 'node:crypto';
import { createWriteStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { ReportUploadError, TraversalExitError, TraversalHungError, TraversalStartError } from '../../contract/errors';
import { parseFindingLine, toFinding } from '../findings';
import type { ProgressUpdate, TraversalBudget } from '../../contract/messages';
import type { Metrics } from '../../metrics';
import { AttemptShipper } from '../report-parts';
import type { ReportStore } from '../report-store';
import { checkRequest, commandLine, controlText, extraArgsPolicy, usesControlFile } from './command';
import { childEnv, endStaleRun, forgetRun, killGroup, recordRun, signalGroup, spawnGroup, type RunningGroup } from './process-group';

/** Options of the traversal runner. */
export interface TraversalRunnerDeps {
  /** Root of per-run folders (reports and logs). */
  runsDir: string;
  /** Folder of per-device process records, used to end a stale run left by a killed worker. */
  pidsDir: string;
  /** Command template (argument array with placeholders). */
  command: string[];
  /** Arguments added on resume; placeholder {checkpoint}. */
  resumeArgs: string[];
  /**
   * Allow-list of a request's extraArgs (DT_TRAVERSAL_EXTRA_ARGS syntax, src/contract/extra-args.ts), checked
   * against this runner's own command and resume arguments. Unset or empty: none allowed.
   */
  extraArgs?: string;
  /** Values for {jar} and any other fixed placeholders. */
  jar: string;
  /** Regex with named groups percent, screens, crashes, anrs, checkpoint. */
  progressPattern: RegExp;
  /** Regex with a named group json: a line reporting one finding. Unset: findings are not parsed. */
  findingPattern?: RegExp;
  /** The report sink, where findings and report files go while the tool runs. Unset: they stay local. */
  store?: ReportStore;
  /** Time between two shipments of changed report files, ms (default 30000). */
  reportShipMs?: number;
  /** TERM-to-KILL grace period, ms. */
  killGraceMs: number;
  /** Signals progress to the workflow (called on phase start and 5-point steps); failures are ignored. */
  pushProgress?: (workflowId: string, update: ProgressUpdate) => Promise<void>;
  /** Reads the workflow's current time budget and pause state (a query: no history). */
  readBudget?: (workflowId: string) => Promise<TraversalBudget | undefined>;
  /** Time between two budget reads, ms. */
  controlPollMs: number;
  /**
   * Asks the agent whether the device is online: throws DeviceOfflineError when it is not,
   * returns other trouble (agent unreachable) without throwing. Unset: the device is not watched.
   */
  checkDevice?: (agentUrl: string, deviceId: string, signal: AbortSignal) => Promise<Error | undefined>;
  /** Time between two device checks while the command runs, ms (default 5000). */
  deviceCheckMs?: number;
  /** Commands this worker runs at once; later calls wait (heartbeating) for a slot. 0 or unset: no limit. */
  maxConcurrent?: number;
  metrics?: Metrics;
}

/** Input of runTraversal. */
export interface RunTraversalInput {
  taskId: string;
  deviceId: string;
  agentUrl: string;
  packageName: string;
  mainActivity?: string;
  durationSec: number;
  extraArgs?: string[];
}

/** What a finished traversal produced. */
export interface RunTraversalResult {
  status: string;
  screens: number;
  crashes: number;
  anrs: number;
  /** Findings this attempt reported (all attempts' are merged by uploadReport). */
  findings?: number;
  reportDir: string;
  logFile: string;
  resumedFrom?: string;
  attempt: number;
  exitCode: number;
  durationMs: number;
}

/** Heartbeat details of runTraversal; the checkpoint is what a retry resumes from. */
export interface TraversalCheckpoint {
  checkpoint?: string;
  percent: number;
  screens: number;
  crashes: number;
  anrs: number;
  pid?: number;
  /** Findings this attempt reported so far. */
  findings?: number;
  paused?: boolean;
}

/** Progress reaches the workflow in steps of this many percent. */
export const PROGRESS_STEP_PERCENT = 5;
/** Longest wait for the last shipment of an attempt's report parts, ms. */
const FINAL_SHIP_MS = 120_000;

/** Folder of one run (report, logs, control file). */
export function runDir(runsDir: string, taskId: string, deviceId: string): string {
  return path.join(runsDir, taskId, deviceId);
}

/** Builds the runTraversal activity. */
export function createTraversalRunnerActivities(deps: TraversalRunnerDeps) {
  let running = 0;
  const extraArgs = extraArgsPolicy(deps);
  return {
    /** Runs the traversal command to the end, heartbeating its progress; resumes from the last checkpoint on retry. */
    async runTraversal(input: RunTraversalInput): Promise<RunTraversalResult> {
      // The starter checks this too, but a workflow can be started around it (CLI, Web UI, a client).
      checkRequest(extraArgs, input);
      const ctx = Context.current();
      const previous = (ctx.info.heartbeatDetails ?? undefined) as TraversalCheckpoint | undefined;
      if (deps.maxConcurrent && running >= deps.maxConcurrent) {
        ctx.log.info('waiting for a free traversal slot', {
          deviceId: input.deviceId,
          running,
          max: deps.maxConcurrent,
        });
        // Heartbeat the earlier checkpoint while waiting, so a resume point is not lost; sleep ends on cancel.
        while (running >= deps.maxConcurrent) {
          ctx.heartbeat(previous);
          await ctx.sleep(500);
        }
      }
      running++;
      try {
        return await runOne(deps, ctx, input, previous);
      } finally {
        running--;
      }
    },
  };
}

/**
 * The progress of one attempt and where it goes: heartbeats on every change, a signal to the
 * workflow only on a new 5-point step. The checkpoint in the heartbeat is held back while a
 * finding is on its way to the sink.
 */
class ProgressReporter {
  readonly state: TraversalCheckpoint;
  /** The tool's latest checkpoint; `state.checkpoint` lags behind it while findings ship. */
  private latest?: string;
  private lastStep = -1;
  private pushing?: Promise<void>;

  constructor(
    private readonly ctx: Context,
    private readonly deps: TraversalRunnerDeps,
    private readonly workflowId: string,
    previous: TraversalCheckpoint | undefined,
    resumeFrom: string | undefined,
    pid: number,
    private readonly shipper: AttemptShipper,
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
    if (!this.shipper.busy) this.state.checkpoint = this.latest;
    this.state.findings = this.shipper.findings;
  }

  heartbeat(): void {
    this.ctx.heartbeat(this.state);
  }

  /** Signals the workflow when the percent entered a new step (or always with `force`). */
  signal(force: boolean): void {
    const step = Math.floor(this.state.percent / PROGRESS_STEP_PERCENT);
    if (!this.deps.pushProgress || this.pushing || (!force && step === this.lastStep)) return;
    this.lastStep = step;
    const { percent, screens, crashes, anrs, checkpoint } = this.state;
    this.pushing = this.deps
      .pushProgress(this.workflowId, { percent, screens, crashes, anrs, checkpoint, attempt: this.ctx.info.attempt })
      .catch((err) => this.ctx.log.debug('progress signal failed', { error: String(err) }))
      .finally(() => (this.pushing = undefined));
  }

  /** Waits for a signal still on its way (so the last one is not lost when the activity returns). */
  async settle(): Promise<void> {
    await this.pushing;
  }
}

/**
 * Brings budget changes and pause from the workflow to the running tool: through its control file
 * when the command has one, else with TERM (finish now) and STOP/CONT of its process group (pause).
 */
class ControlChannel {
  private version = 0;
  private paused = false;
  stopRequested = false;
  private reading = false;

  constructor(
    private readonly ctx: Context,
    private readonly deps: TraversalRunnerDeps,
    private readonly workflowId: string,
    private readonly controlFile: string,
    private readonly pid: number,
    private readonly onPause: (paused: boolean) => void,
  ) {}

  private get usesFile(): boolean {
    return usesControlFile(this.deps.command);
  }

  /** One read of the workflow's budget and pause state. */
  poll(): void {
    if (!this.deps.readBudget || this.reading) return;
    this.reading = true;
    this.deps
      .readBudget(this.workflowId)
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
    this.ctx.log.info(pauseChanged ? (paused ? 'pausing the traversal tool' : 'continuing the traversal tool') : 'applying a new time budget', {
      durationSec: b.durationSec,
      finishNow: b.finishNow,
      paused,
      childPid: this.pid,
    });
    if (this.usesFile) {
      // The tool polls this file: 'stop' ends it gracefully, 'pause' holds it, 'duration=N' sets its budget.
      const tmp = `${this.controlFile}.tmp`;
      await fsp.writeFile(tmp, controlText(b));
      await fsp.rename(tmp, this.controlFile);
    } else {
      if (pauseChanged) signalGroup(this.pid, paused ? 'SIGSTOP' : 'SIGCONT');
      if (b.finishNow && !this.stopRequested) {
        // A tool without a control channel is asked to stop with TERM and keeps its report.
        this.stopRequested = true;
        if (paused) signalGroup(this.pid, 'SIGCONT');
        signalGroup(this.pid, 'SIGTERM');
      }
    }
    if (pauseChanged) this.onPause(paused);
  }
}

/** One run of the command, from spawn to its result. */
async function runOne(
  deps: TraversalRunnerDeps,
  ctx: Context,
  input: RunTraversalInput,
  previous: TraversalCheckpoint | undefined,
): Promise<RunTraversalResult> {
  const info = ctx.info;
  const dir = runDir(deps.runsDir, input.taskId, input.deviceId);
  const reportDir = path.join(dir, 'report');
  const controlFile = path.join(dir, 'control');
  const logFile = path.join(dir, `attempt-${info.attempt}.log`);
  const workflowId = info.workflowExecution?.workflowId ?? '';
  await fsp.mkdir(dir, { recursive: true });
  await endStaleRun(deps, input.deviceId, ctx.log);
  // A retry after the device dropped off fails fast here instead of starting the tool blind.
  await deps.checkDevice?.(input.agentUrl, input.deviceId, ctx.cancellationSignal);

  const resumeFrom = previous?.checkpoint && previous.checkpoint !== '0' ? previous.checkpoint : undefined;
  if (!resumeFrom) await fsp.rm(reportDir, { recursive: true, force: true });
  await fsp.mkdir(reportDir, { recursive: true });
  await fsp.rm(controlFile, { force: true });
  const shipper = new AttemptShipper({
    store: deps.store,
    taskId: input.taskId,
    deviceId: input.deviceId,
    attempt: info.attempt,
    reportDir,
    runDir: dir,
    log: ctx.log,
  });
  await shipper.open();

  const argv = commandLine(deps, input, { reportDir, controlFile, resumeFrom });
  const [cmd, ...args] = argv;

  // Recorded before the spawn: a worker killed between the spawn and the pid's record still leaves
  // a record that the next worker or attempt finds the process by.
  const runId = randomUUID();
  await recordRun(deps.pidsDir, input.deviceId, { runId, workflowId });

  const log = createWriteStream(logFile, { flags: 'a' });
  log.write(`# attempt ${info.attempt} ${new Date().toISOString()} argv=${JSON.stringify(argv)}\n`);
  const started = Date.now();
  let group: RunningGroup;
  try {
    group = await spawnGroup(cmd, args, { cwd: dir, env: childEnv(input.deviceId, runId) });
  } catch (err) {
    log.end();
    await shipper.close();
    await forgetRun(deps.pidsDir, input.deviceId, runId);
    throw new TraversalStartError(cmd, (err as Error).message);
  }
  const { child, pid, exited } = group;
  await recordRun(deps.pidsDir, input.deviceId, { runId, pid, workflowId });
  ctx.log.info('traversal command started', {
    childPid: pid,
    deviceId: input.deviceId,
    taskId: input.taskId,
    resumeFrom,
    logFile,
  });

  const progress = new ProgressReporter(ctx, deps, workflowId, previous, resumeFrom, pid, shipper);
  // A silent tool stops heartbeating, so the server times the attempt out and retries it, maybe on
  // another host; end it here too (a second after the server's timeout), so it does not run on alone.
  // A paused tool is silent on purpose: the clock starts again when it continues.
  let lastProgressAt = Date.now();
  const paused = () => progress.state.paused === true;
  const control = new ControlChannel(ctx, deps, workflowId, controlFile, pid, (p) => {
    progress.state.paused = p || undefined;
    lastProgressAt = Date.now();
    progress.heartbeat();
  });
  // Budget and pause must arrive even while the tool prints nothing.
  const controlTimer = setInterval(() => control.poll(), deps.controlPollMs);
  const shipTimer = setInterval(() => void shipper.shipFiles(), deps.reportShipMs ?? 30_000);
  // While paused no line arrives; keep the heartbeat (and with it a cancel) flowing.
  const pausedTimer = setInterval(() => paused() && progress.heartbeat(), 1000);

  const stderrTail: string[] = [];
  const out = readline.createInterface({ input: child.stdout!, crlfDelay: Infinity });
  out.on('line', (line) => {
    log.write(line + '\n');
    const raw = deps.findingPattern ? parseFindingLine(line, deps.findingPattern) : undefined;
    if (raw) {
      const finding = toFinding(raw, info.attempt);
      if (typeof finding === 'string') ctx.log.warn('ignoring a malformed finding line', { problem: finding, deviceId: input.deviceId });
      else {
        ctx.log.info('finding reported', { kind: finding.kind, signature: finding.signature, exception: finding.exception, step: finding.step, deviceId: input.deviceId });
        shipper.addFinding(finding, () => progress.release());
      }
      return;
    }
    const m = deps.progressPattern.exec(line);
    if (!m?.groups) return;
    lastProgressAt = Date.now();
    progress.update(m.groups);
  });
  const err = readline.createInterface({ input: child.stderr!, crlfDelay: Infinity });
  err.on('line', (line) => {
    log.write(`[stderr] ${line}\n`);
    stderrTail.push(line.length > 500 ? line.slice(0, 500) + '…' : line);
    if (stderrTail.length > 20) stderrTail.shift();
  });

  const onCancel = () => {
    ctx.log.warn('traversal cancelled; stopping its process group', { childPid: pid });
    signalGroup(pid, 'SIGCONT');
    void killGroup(child, deps.killGraceMs);
  };
  ctx.cancellationSignal.addEventListener('abort', onCancel, { once: true });
  progress.heartbeat();
  progress.signal(true);

  // The tool may not notice a phone that dropped off; stop it and let a retry resume later.
  let offline: Error | undefined;
  let checking = false;
  let hung: TraversalHungError | undefined;
  const silenceLimitMs = info.heartbeatTimeoutMs ? info.heartbeatTimeoutMs + 1000 : undefined;
  const hangTimer = silenceLimitMs
    ? setInterval(() => {
        const silentMs = Date.now() - lastProgressAt;
        if (hung || paused() || silentMs <= silenceLimitMs) return;
        hung = new TraversalHungError(silentMs, pid);
        ctx.log.warn('traversal command printed no progress within the heartbeat timeout; ending it', {
          deviceId: input.deviceId,
          childPid: pid,
          silentMs,
        });
        void killGroup(child, deps.killGraceMs);
      }, Math.min(1000, silenceLimitMs / 4))
    : undefined;
  const deviceTimer = deps.checkDevice
    ? setInterval(() => {
        if (checking || offline) return;
        checking = true;
        deps.checkDevice!(input.agentUrl, input.deviceId, ctx.cancellationSignal)
          .then((trouble) => {
            if (trouble) ctx.log.debug('device check failed', { deviceId: input.deviceId, error: trouble.message });
          })
          .catch((err: Error) => {
            if (ctx.cancellationSignal.aborted) return;
            offline = err;
            ctx.log.warn('device went offline; stopping the traversal so a retry resumes it', {
              deviceId: input.deviceId,
              childPid: pid,
              error: err.message,
            });
            signalGroup(pid, 'SIGCONT');
            void killGroup(child, deps.killGraceMs);
          })
          .finally(() => (checking = false));
      }, deps.deviceCheckMs ?? 5000)
    : undefined;

  const exit = await exited;
  ctx.cancellationSignal.removeEventListener('abort', onCancel);
  for (const t of [controlTimer, shipTimer, pausedTimer, hangTimer, deviceTimer]) if (t) clearInterval(t);
  await new Promise<void>((resolve) => log.end(resolve));
  await forgetRun(deps.pidsDir, input.deviceId, runId);
  const durationMs = Date.now() - started;
  deps.metrics?.traversalSeconds.inc({}, durationMs / 1000);

  // Everything found must be in the sink before the attempt ends, whatever the outcome; keep
  // heartbeating meanwhile (the sink may be slow).
  const shipping = setInterval(() => progress.heartbeat(), 1000);
  const problems = await Promise.race([
    shipper.close(),
    new Promise<string[]>((r) => setTimeout(() => r(['timed out']), FINAL_SHIP_MS).unref()),
  ]).finally(() => clearInterval(shipping));
  progress.release();
  if (problems.length) ctx.log.warn('report parts did not all reach the sink', { problems: problems.slice(0, 5), deviceId: input.deviceId });

  // A hung tool first: the SDK cancels an attempt that sent no heartbeat for the heartbeat timeout
  // plus 5 s, which lands while a tool that ignores TERM still has its kill grace to run.
  if (hung) {
    deps.metrics?.traversals.inc({ outcome: 'hung' });
    throw hung;
  }
  if (ctx.cancellationSignal.aborted) {
    deps.metrics?.traversals.inc({ outcome: 'cancelled' });
    throw ctx.cancellationSignal.reason;
  }
  if (offline) {
    deps.metrics?.traversals.inc({ outcome: 'device-offline' });
    throw offline;
  }
  const stoppedOnRequest = control.stopRequested && (exit.signal === 'SIGTERM' || exit.code === 143);
  if (exit.code !== 0 && !stoppedOnRequest) {
    deps.metrics?.traversals.inc({ outcome: 'failed' });
    throw new TraversalExitError(exit.code, exit.signal, stderrTail.join('\n'));
  }
  // A retry resumes at the end and ships again; nothing found is given up for a sink hiccup.
  if (problems.length && deps.store) throw new ReportUploadError(deps.store.url([input.taskId]), `report parts not shipped: ${problems.slice(0, 3).join(', ')}`);
  const summary = await readSummary(reportDir);
  deps.metrics?.traversals.inc({ outcome: 'completed' });
  progress.state.percent = 100;
  progress.signal(false);
  await progress.settle();
  return {
    status: stoppedOnRequest ? 'stopped' : typeof summary.status === 'string' ? summary.status : 'completed',
    screens: num(summary.screens, progress.state.screens),
    crashes: num(summary.crashes, progress.state.crashes),
    anrs: num(summary.anrs, progress.state.anrs),
    findings: shipper.findings,
    reportDir,
    logFile,
    ...(resumeFrom ? { resumedFrom: resumeFrom } : {}),
    attempt: info.attempt,
    exitCode: 0,
    durationMs,
  };
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
