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
 *
 * This file holds the activity's interface and its slot limit. One attempt is a TraversalRun (run.ts),
 * which uses the engine (engines/: the jar's command template, or Monkey or Fastbot on the phone), the
 * process group and its records (process-group.ts), a ProgressReporter (progress-reporter.ts) and a
 * ControlChannel (control-channel.ts).
 */
import { Context } from '@temporalio/activity';
import type { ProgressUpdate, TraversalBudget } from '../../contract/messages';
import type { Metrics } from '../../metrics';
import type { ReportStore } from '../report-store';
import { extraArgsPolicyFor } from '../../contract/extra-args';
import { InvalidTaskError } from '../../contract/errors';
import { checkRequest, type CommandRequest } from './command';
import type { Engine } from './engines';
import { JarEngine } from './engines/jar';
import { runOne } from './run';

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
  /** How long an attempt that finds its device offline waits for it before failing, ms (default 0: no wait). */
  deviceReturnMs?: number;
  /** Commands this worker runs at once; later calls wait (heartbeating) for a slot. 0 or unset: no limit. */
  maxConcurrent?: number;
  /** The traversal engine (DT_ENGINE); unset: the jar engine on `command` and the patterns above. */
  engine?: Engine;
  metrics?: Metrics;
}

/** Input of runTraversal: what the command is run for (device, agent, app, budget, extraArgs), and the task. */
export interface RunTraversalInput extends CommandRequest {
  taskId: string;
  /**
   * Set by a workflow that scheduled the traversal again after its host's worker did not take it in
   * time (host routing): where to resume, as the last attempt heartbeated it. A fresh activity has
   * no heartbeat details of its own.
   */
  resume?: TraversalCheckpoint;
  /** Added to this activity's attempt numbers, so a rescheduled traversal's attempts follow the earlier ones'. */
  attemptBase?: number;
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
  /** Where a retry resumes: the jar's own checkpoint, or for monkey and fastbot the seconds of budget used. */
  checkpoint?: string;
  percent: number;
  screens: number;
  crashes: number;
  anrs: number;
  pid?: number;
  /** The engine's pid on the phone (monkey, fastbot), as recorded there right after the start. */
  enginePid?: number;
  /** Findings this attempt reported so far. */
  findings?: number;
  paused?: boolean;
  /** The attempt that sent these details (attemptOf). */
  attempt?: number;
}

/** Builds the runTraversal activity. */
export function createTraversalRunnerActivities(deps: TraversalRunnerDeps) {
  let running = 0;
  const engine = deps.engine ?? new JarEngine(deps);
  const extraArgs = extraArgsPolicyFor({
    traversalExtraArgs: deps.extraArgs ?? '',
    traversalCommand: deps.command,
    traversalResumeArgs: deps.resumeArgs,
  });
  return {
    /** Runs the traversal command to the end, heartbeating its progress; resumes from the last checkpoint on retry. */
    async runTraversal(input: RunTraversalInput): Promise<RunTraversalResult> {
      // The starter checks this too, but a workflow can be started around it (CLI, Web UI, a client).
      checkRequest(extraArgs, input);
      // Arguments for the jar mean nothing to an engine on the phone, and would be pasted into its shell line.
      if (engine.id !== 'jar' && input.extraArgs?.length)
        throw new InvalidTaskError([`traversal.extraArgs: the ${engine.id} engine takes none`]);
      const ctx = Context.current();
      const previous = (ctx.info.heartbeatDetails ?? input.resume ?? undefined) as TraversalCheckpoint | undefined;
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
        return await runOne(deps, engine, ctx, input, previous);
      } finally {
        running--;
      }
    },
  };
}
