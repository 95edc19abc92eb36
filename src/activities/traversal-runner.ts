/**
 * Runs the traversal command (by default the simulator jar via `java -jar`) as a child process:
 * an argument array and never a shell, its own process group, output to a log file line by line,
 * progress lines turned into heartbeats (the checkpoint a retry resumes from).
 */
import { Context } from '@temporalio/activity';
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { TraversalExitError, TraversalHungError, TraversalStartError } from '../errors';
import type { ProgressUpdate, TraversalBudget } from '../messages';
import type { Metrics } from '../metrics';

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
  /** Values for {jar} and any other fixed placeholders. */
  jar: string;
  /** Regex with named groups percent, screens, crashes, anrs, checkpoint. */
  progressPattern: RegExp;
  /** TERM-to-KILL grace period, ms. */
  killGraceMs: number;
  /** Pushes progress to the workflow (throttled by the caller); failures are ignored. */
  pushProgress?: (workflowId: string, update: ProgressUpdate) => Promise<void>;
  /** Reads the workflow's current time budget (polled with each progress push). */
  readBudget?: (workflowId: string) => Promise<TraversalBudget | undefined>;
  /** Minimum time between two progress pushes, ms. */
  progressPushMs: number;
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
}

/** Environment variable set in the child so a stale process can be recognised after a crash. */
const MARKER = 'DT_TRAVERSAL_DEVICE';
/** Variables never handed to the traversal command: credentials of this service. */
const SECRET_ENV = /^(TEMPORAL_|REDIS_|DT_REPORT_SINK_TOKEN|DT_ARTIFACT_TOKEN)/;

/** Folder of one run (report, logs, control file). */
export function runDir(runsDir: string, taskId: string, deviceId: string): string {
  return path.join(runsDir, taskId, deviceId);
}

/** Fills `{name}` placeholders; unknown names are left as they are. */
export function fillTemplate(args: string[], values: Record<string, string>): string[] {
  return args.map((a) => a.replace(/\{(\w+)\}/g, (m, k: string) => values[k] ?? m));
}

/** Builds the runTraversal activity. */
export function createTraversalRunnerActivities(deps: TraversalRunnerDeps) {
  let running = 0;
  return {
    /** Runs the traversal command to the end, heartbeating its progress; resumes from the last checkpoint on retry. */
    async runTraversal(input: RunTraversalInput): Promise<RunTraversalResult> {
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
  await fsp.mkdir(dir, { recursive: true });
  await endStaleRun(deps, input.deviceId, ctx.log);
  // A retry after the device dropped off fails fast here instead of starting the tool blind.
  await deps.checkDevice?.(input.agentUrl, input.deviceId, ctx.cancellationSignal);

  const resumeFrom = previous?.checkpoint && previous.checkpoint !== '0' ? previous.checkpoint : undefined;
  if (!resumeFrom) await fsp.rm(reportDir, { recursive: true, force: true });
  await fsp.mkdir(reportDir, { recursive: true });
  await fsp.rm(controlFile, { force: true });

  const values: Record<string, string> = {
    jar: deps.jar,
    device: input.deviceId,
    agent: input.agentUrl,
    package: input.packageName,
    activity: input.mainActivity ?? '',
    outDir: reportDir,
    durationSec: String(input.durationSec),
    controlFile,
  };
  const argv = fillTemplate(deps.command, values);
  if (resumeFrom) argv.push(...fillTemplate(deps.resumeArgs, { ...values, checkpoint: resumeFrom }));
  argv.push(...(input.extraArgs ?? []));
  const [cmd, ...args] = argv as [string, ...string[]];

  const env: NodeJS.ProcessEnv = { [MARKER]: input.deviceId };
  for (const [k, v] of Object.entries(process.env)) if (!SECRET_ENV.test(k)) env[k] = v;
  env[MARKER] = input.deviceId;

  const log = createWriteStream(logFile, { flags: 'a' });
  log.write(`# attempt ${info.attempt} ${new Date().toISOString()} argv=${JSON.stringify(argv)}\n`);
  const started = Date.now();
  const child = spawn(cmd, args, { cwd: dir, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  // Listen for the end at once: a command that exits quickly must not be missed while we await below.
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
  const spawned = await new Promise<Error | undefined>((resolve) => {
    child.once('spawn', () => resolve(undefined));
    child.once('error', (err) => resolve(err));
  });
  if (spawned) {
    log.end();
    throw new TraversalStartError(cmd, spawned.message);
  }
  const pid = child.pid!;
  await recordRun(deps, input.deviceId, pid, info.workflowExecution?.workflowId ?? '');
  ctx.log.info('traversal command started', {
    childPid: pid,
    deviceId: input.deviceId,
    taskId: input.taskId,
    resumeFrom,
    logFile,
  });

  const progress: TraversalCheckpoint = {
    checkpoint: resumeFrom,
    percent: previous?.percent ?? 0,
    screens: previous?.screens ?? 0,
    crashes: previous?.crashes ?? 0,
    anrs: previous?.anrs ?? 0,
    pid,
  };
  const workflowId = info.workflowExecution?.workflowId ?? '';
  const usesControlFile = deps.command.some((a) => a.includes('{controlFile}'));
  let budgetVersion = 0;
  let stopRequested = false;
  const applyBudget = async (b: TraversalBudget | undefined) => {
    if (!b || b.version <= budgetVersion) return;
    budgetVersion = b.version;
    ctx.log.info('applying a new time budget', {
      durationSec: b.durationSec,
      finishNow: b.finishNow,
      deviceId: input.deviceId,
    });
    if (usesControlFile) {
      // The tool polls this file: 'stop' ends it gracefully, 'duration=N' changes its budget.
      const tmp = `${controlFile}.tmp`;
      await fsp.writeFile(tmp, b.finishNow ? 'stop\n' : `duration=${b.durationSec}\n`);
      await fsp.rename(tmp, controlFile);
    } else if (b.finishNow && !stopRequested) {
      // A tool without a control channel is asked to stop with TERM and keeps its report.
      stopRequested = true;
      signalGroup(pid, 'SIGTERM');
    }
  };
  let lastPush = 0;
  let pushing = false;
  const push = (force: boolean) => {
    const now = Date.now();
    if (!deps.pushProgress || pushing || (!force && now - lastPush < deps.progressPushMs)) return;
    lastPush = now;
    pushing = true;
    const update: ProgressUpdate = { ...progress, attempt: info.attempt };
    delete (update as { pid?: number }).pid;
    deps
      .pushProgress(workflowId, update)
      .then(() => deps.readBudget?.(workflowId))
      .then(applyBudget)
      .catch((err) => ctx.log.debug('progress push failed', { error: String(err) }))
      .finally(() => (pushing = false));
  };
  // Budget changes must arrive even while the tool prints nothing.
  const budgetTimer = setInterval(() => push(false), deps.progressPushMs);

  const stderrTail: string[] = [];
  const out = readline.createInterface({ input: child.stdout!, crlfDelay: Infinity });
  out.on('line', (line) => {
    log.write(line + '\n');
    const m = deps.progressPattern.exec(line);
    if (!m?.groups) return;
    const g = m.groups;
    progress.percent = Number(g.percent ?? progress.percent);
    progress.screens = Number(g.screens ?? progress.screens);
    progress.crashes = Number(g.crashes ?? progress.crashes);
    progress.anrs = Number(g.anrs ?? progress.anrs);
    if (g.checkpoint !== undefined) progress.checkpoint = g.checkpoint;
    lastProgressAt = Date.now();
    ctx.heartbeat(progress);
    push(false);
  });
  const err = readline.createInterface({ input: child.stderr!, crlfDelay: Infinity });
  err.on('line', (line) => {
    log.write(`[stderr] ${line}\n`);
    stderrTail.push(line.length > 500 ? line.slice(0, 500) + '…' : line);
    if (stderrTail.length > 20) stderrTail.shift();
  });

  const onCancel = () => {
    ctx.log.warn('traversal cancelled; stopping its process group', { childPid: pid });
    void killGroup(child, deps.killGraceMs);
  };
  ctx.cancellationSignal.addEventListener('abort', onCancel, { once: true });
  ctx.heartbeat(progress);
  push(true);

  // The tool may not notice a phone that dropped off; stop it and let a retry resume later.
  let offline: Error | undefined;
  let checking = false;
  // A silent tool stops heartbeating, so the server times the attempt out and retries it, maybe on
  // another host; end it here too (a second after the server's timeout), so it does not run on alone.
  let lastProgressAt = Date.now();
  let hung: TraversalHungError | undefined;
  const silenceLimitMs = info.heartbeatTimeoutMs ? info.heartbeatTimeoutMs + 1000 : undefined;
  const hangTimer = silenceLimitMs
    ? setInterval(() => {
        const silentMs = Date.now() - lastProgressAt;
        if (hung || silentMs <= silenceLimitMs) return;
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
            void killGroup(child, deps.killGraceMs);
          })
          .finally(() => (checking = false));
      }, deps.deviceCheckMs ?? 5000)
    : undefined;

  const exit = await exited;
  ctx.cancellationSignal.removeEventListener('abort', onCancel);
  clearInterval(budgetTimer);
  if (deviceTimer) clearInterval(deviceTimer);
  if (hangTimer) clearInterval(hangTimer);
  await new Promise<void>((resolve) => log.end(resolve));
  await forgetRun(deps, input.deviceId, pid);
  const durationMs = Date.now() - started;
  deps.metrics?.traversalSeconds.inc({}, durationMs / 1000);

  if (ctx.cancellationSignal.aborted) {
    deps.metrics?.traversals.inc({ outcome: 'cancelled' });
    throw ctx.cancellationSignal.reason;
  }
  if (hung) {
    deps.metrics?.traversals.inc({ outcome: 'hung' });
    throw hung;
  }
  if (offline) {
    deps.metrics?.traversals.inc({ outcome: 'device-offline' });
    throw offline;
  }
  const stoppedOnRequest = stopRequested && (exit.signal === 'SIGTERM' || exit.code === 143);
  if (exit.code !== 0 && !stoppedOnRequest) {
    deps.metrics?.traversals.inc({ outcome: 'failed' });
    throw new TraversalExitError(exit.code, exit.signal, stderrTail.join('\n'));
  }
  const summary = await readSummary(reportDir);
  deps.metrics?.traversals.inc({ outcome: 'completed' });
  progress.percent = 100;
  push(true);
  return {
    status: stoppedOnRequest ? 'stopped' : typeof summary.status === 'string' ? summary.status : 'completed',
    screens: num(summary.screens, progress.screens),
    crashes: num(summary.crashes, progress.crashes),
    anrs: num(summary.anrs, progress.anrs),
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

/** Sends TERM to the whole group, then KILL after the grace period if anything is left. */
export async function killGroup(child: ChildProcess, graceMs: number): Promise<void> {
  const pid = child.pid;
  if (!pid) return;
  signalGroup(pid, 'SIGTERM');
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  const timer = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), graceMs).unref());
  await Promise.race([exited, timer]);
  // The leader may be gone while grandchildren still hold the group: KILL the group regardless.
  signalGroup(pid, 'SIGKILL');
}

function signalGroup(pgid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(-pgid, sig);
    return true;
  } catch {
    return false;
  }
}

function pidFile(deps: TraversalRunnerDeps, deviceId: string): string {
  return path.join(deps.pidsDir, `${deviceId}.json`);
}

async function recordRun(deps: TraversalRunnerDeps, deviceId: string, pid: number, workflowId: string): Promise<void> {
  await fsp.mkdir(deps.pidsDir, { recursive: true });
  await fsp.writeFile(
    pidFile(deps, deviceId),
    JSON.stringify({
      pid,
      workflowId,
      startedAt: new Date().toISOString(),
      workerPid: process.pid,
      workerStart: await OWN_START,
    }),
  );
}

async function forgetRun(deps: TraversalRunnerDeps, deviceId: string, pid: number): Promise<void> {
  try {
    const rec = JSON.parse(await fsp.readFile(pidFile(deps, deviceId), 'utf8')) as { pid: number };
    if (rec.pid === pid) await fsp.rm(pidFile(deps, deviceId), { force: true });
  } catch {
    // nothing recorded
  }
}

/**
 * Ends a traversal of this device left running by a worker that died (a child process outlives
 * its parent). The process is recognised by the marker variable in /proc/<pid>/environ, so a
 * recycled pid belonging to something else is never signalled.
 */
export async function endStaleRun(
  deps: Pick<TraversalRunnerDeps, 'pidsDir' | 'killGraceMs'>,
  deviceId: string,
  log?: { warn(msg: string, meta?: Record<string, unknown>): void },
  opts: { onlyOrphans?: boolean } = {},
): Promise<boolean> {
  let rec: RunRecord;
  try {
    rec = JSON.parse(await fsp.readFile(path.join(deps.pidsDir, `${deviceId}.json`), 'utf8')) as RunRecord;
  } catch {
    return false;
  }
  // A worker starting up ends only runs whose worker is gone: workers sharing a data folder must not
  // end each other's runs. (A new attempt for the device ends the old run whoever started it.)
  if (opts.onlyOrphans && (await workerAlive(rec))) return false;
  const alive = await isOurProcess(rec.pid, deviceId);
  if (alive) {
    log?.warn('ending stale traversal process group left by a previous attempt', {
      pid: rec.pid,
      deviceId,
      workflowId: rec.workflowId,
    });
    signalGroup(rec.pid, 'SIGTERM');
    const deadline = Date.now() + deps.killGraceMs;
    while (Date.now() < deadline && (await isOurProcess(rec.pid, deviceId)))
      await new Promise((r) => setTimeout(r, 100));
    signalGroup(rec.pid, 'SIGKILL');
  }
  await fsp.rm(path.join(deps.pidsDir, `${deviceId}.json`), { force: true });
  return alive;
}

/** What a worker records about a running traversal command, one file per device. */
interface RunRecord {
  pid: number;
  workflowId?: string;
  workerPid?: number;
  workerStart?: string;
}

/** The start time of a process (clock ticks since boot, /proc/<pid>/stat field 22), to tell a reused pid apart. */
export async function processStartTime(pid: number): Promise<string | undefined> {
  try {
    const stat = await fsp.readFile(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name, which may itself contain spaces and parentheses.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** This process's start time, read once. */
const OWN_START = processStartTime(process.pid);

/** True when the worker that recorded a run is still that same living process. */
async function workerAlive(rec: RunRecord): Promise<boolean> {
  if (!rec.workerPid || !rec.workerStart) return false;
  const start = await processStartTime(rec.workerPid);
  return start === rec.workerStart;
}

async function isOurProcess(pid: number, deviceId: string): Promise<boolean> {
  try {
    const environ = await fsp.readFile(`/proc/${pid}/environ`, 'utf8');
    const stat = await fsp.readFile(`/proc/${pid}/stat`, 'utf8');
    if (/\) Z /.test(stat)) return false; // a zombie is already dead
    return environ.split('\0').includes(`${MARKER}=${deviceId}`);
  } catch {
    return false;
  }
}
