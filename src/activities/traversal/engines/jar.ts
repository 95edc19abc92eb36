/**
 * The `jar` engine (the default): the configured command template (DT_TRAVERSAL_COMMAND), its
 * progress and finding patterns. The tool runs on this host, keeps its own budget (through the
 * control file or TERM), resumes from its checkpoint, and its exit code is its verdict.
 */
import { TraversalExitError } from '../../../contract/errors';
import { parseFindingLine } from '../../findings';
import { commandLine, type CommandTemplate } from '../command';
import type { AttemptPlan, Engine, EngineAttempt, EndFacts, LineReading } from './index';

/** What the jar engine takes from the runner's options. */
export interface JarSettings extends CommandTemplate {
  /** Regex with named groups percent, screens, crashes, anrs, checkpoint. */
  progressPattern: RegExp;
  /** Regex with a named group json: a line reporting one finding. Unset: findings are not parsed. */
  findingPattern?: RegExp;
}

/** The configured traversal command, run on this host. */
export class JarEngine implements Engine {
  readonly id = 'jar';

  constructor(private readonly settings: JarSettings) {}

  /** Nothing to check ahead: a command that cannot start fails its first attempt as TraversalStartFailed. */
  async checkSetup(): Promise<void> {}

  /** The template filled for this attempt. */
  async prepare(plan: AttemptPlan): Promise<EngineAttempt> {
    const { settings } = this;
    const argv = commandLine(settings, plan.input, {
      reportDir: plan.reportDir,
      controlFile: plan.controlFile,
      resumeFrom: plan.resumeFrom,
    });
    return {
      argv,
      budgetKeeper: 'tool',
      read: (stream, line) => readJarLine(settings, stream, line),
      endOfOutput: () => [],
      afterStart: async () => undefined,
      // Everything the tool started is in its host process group, which the runner ends.
      stop: async () => undefined,
      cleanup: async () => undefined,
      verdict: async (facts) => jarVerdict(facts),
    };
  }
}

/** A finding line, else a progress line; stderr carries neither. */
function readJarLine(s: JarSettings, stream: 'stdout' | 'stderr', line: string): LineReading {
  if (stream === 'stderr') return { findings: [], alive: false };
  const raw = s.findingPattern ? parseFindingLine(line, s.findingPattern) : undefined;
  if (raw) return { findings: [raw], alive: false };
  const groups = s.progressPattern.exec(line)?.groups;
  return groups ? { progress: groups, findings: [], alive: true } : { findings: [], alive: false };
}

/** Exit 0 is done (the tool's summary.json has the rest); TERM after finish-now is a stop; anything else failed. */
function jarVerdict({ exit, stoppedBy, stderrTail }: EndFacts): { status?: string } {
  const stoppedOnRequest = stoppedBy === 'finish' && (exit.signal === 'SIGTERM' || exit.code === 143);
  if (exit.code !== 0 && !stoppedOnRequest) throw new TraversalExitError(exit.code, exit.signal, stderrTail);
  return stoppedOnRequest ? { status: 'stopped' } : {};
}
