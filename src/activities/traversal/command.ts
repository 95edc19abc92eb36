/**
 * The traversal command template: which argv one run gets, and which requests it refuses.
 *
 * The template is an argument array whose entries may hold placeholders: {jar}, {device}, {agent},
 * {package}, {activity}, {outDir}, {durationSec} and {controlFile}; the resume arguments may also
 * use {checkpoint}. A request's extraArgs go last, after the allow-list has checked them. A command
 * naming {controlFile} polls that file for its budget, pause and stop (see controlText).
 */
import { InvalidTaskError } from '../../contract/errors';
import { ExtraArgsPolicy } from '../../contract/extra-args';
import type { TraversalBudget } from '../../contract/messages';

/** The parts of the runner's options that shape the command. */
export interface CommandTemplate {
  /** Command template (argument array with placeholders). */
  command: string[];
  /** Arguments added on resume; placeholder {checkpoint}. */
  resumeArgs: string[];
  /** Allow-list of a request's extraArgs (DT_TRAVERSAL_EXTRA_ARGS syntax). Unset or empty: none allowed. */
  extraArgs?: string;
  /** Value of {jar}. */
  jar: string;
}

/** What one run of the command is about, as placed into the template. */
export interface CommandRequest {
  deviceId: string;
  agentUrl: string;
  packageName: string;
  mainActivity?: string;
  durationSec: number;
  extraArgs?: string[];
}

/** Folders and files of one run, and the checkpoint it resumes from (if any). */
export interface CommandPlaces {
  reportDir: string;
  controlFile: string;
  resumeFrom?: string;
}

/** Fills `{name}` placeholders; unknown names are left as they are. */
export function fillTemplate(args: string[], values: Record<string, string>): string[] {
  return args.map((a) => a.replace(/\{(\w+)\}/g, (m, k: string) => values[k] ?? m));
}

/**
 * A budget as the tool reads it: whole seconds, rounded up (a budget signal may carry a fraction,
 * and `1e-7` is no number a tool parses).
 */
export function wholeSeconds(sec: number): string {
  return String(Math.max(0, Math.ceil(sec)));
}

/** The control file's text: the budget, and `pause` or `stop` when asked. */
export function controlText(b: TraversalBudget): string {
  return `duration=${wholeSeconds(b.durationSec)}\n${b.paused ? 'pause\n' : ''}${b.finishNow ? 'stop\n' : ''}`;
}

/** True when the command reads its budget and pause from a control file. */
export function usesControlFile(command: string[]): boolean {
  return command.some((a) => a.includes('{controlFile}'));
}

/** Throws InvalidTaskError for extraArgs the allow-list refuses or a duration that is no number of seconds. */
export function checkRequest(policy: ExtraArgsPolicy, req: CommandRequest): void {
  const refused = policy.check(req.extraArgs ?? []);
  if (refused) throw new InvalidTaskError([refused]);
  if (typeof req.durationSec !== 'number' || !Number.isFinite(req.durationSec) || req.durationSec < 0) {
    throw new InvalidTaskError([`traversal.durationSec: must be a number of seconds, got ${String(req.durationSec)}`]);
  }
}

/** The full argv of one run: the template, the resume arguments when resuming, then the request's extraArgs. */
export function commandLine(t: CommandTemplate, req: CommandRequest, places: CommandPlaces): [string, ...string[]] {
  const values: Record<string, string> = {
    jar: t.jar,
    device: req.deviceId,
    agent: req.agentUrl,
    package: req.packageName,
    activity: req.mainActivity ?? '',
    outDir: places.reportDir,
    durationSec: wholeSeconds(req.durationSec),
    controlFile: places.controlFile,
  };
  const argv = fillTemplate(t.command, values);
  if (places.resumeFrom) argv.push(...fillTemplate(t.resumeArgs, { ...values, checkpoint: places.resumeFrom }));
  argv.push(...(req.extraArgs ?? []));
  return argv as [string, ...string[]];
}
