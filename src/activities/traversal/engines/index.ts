/**
 * Traversal engines (DT_ENGINE): what the runner needs to know about the tool it runs.
 *
 * The runner (run.ts) owns the host side of every engine the same way: a child process in its own
 * process group, its output to a log file, heartbeats, findings shipped at once, cancellation. An
 * engine adds what differs: the argv of that child, what its lines mean, what runs on the phone
 * and how to end it there, and the verdict.
 * - `jar` (jar.ts): the configured command template; the tool keeps its own budget, resumes from a
 *   checkpoint, and its exit code is its verdict.
 * - `monkey`, `fastbot` (monkey.ts, fastbot.ts): `adb -s <serial> shell …`; the engine runs on the
 *   phone and outlives the host-side adb (Monkey ignores hang-up), so it is found and recorded on
 *   the phone right after the start and killed there. They cannot resume, so the runner keeps the
 *   time budget: the checkpoint is the seconds of budget used, and the next attempt runs the rest.
 *   Their verdict comes from their output (Monkey's exit status is the event count it stopped at).
 */
import type { Config } from '../../../config';
import type { Adb } from '../../../adb';
import type { RawFinding } from '../../findings';
import type { GroupExit } from '../process-group';
import type { RunTraversalInput } from '../runner';
import { FastbotEngine } from './fastbot';
import { JarEngine, type JarSettings } from './jar';
import { MonkeyEngine } from './monkey';

/** Names of the engines (DT_ENGINE). */
export type EngineId = 'jar' | 'monkey' | 'fastbot';

/** Logging an engine does (the activity's logger). */
export interface EngineLog {
  info(msg: string, meta?: Record<string, unknown>): void;
  warn(msg: string, meta?: Record<string, unknown>): void;
  debug(msg: string, meta?: Record<string, unknown>): void;
}

/** One attempt as the runner hands it to an engine. */
export interface AttemptPlan {
  input: RunTraversalInput;
  attempt: number;
  /** Names this attempt (the host record, the phone record, Fastbot's output folder). */
  runId: string;
  reportDir: string;
  controlFile: string;
  /** The jar's checkpoint to resume from (unset: from the start). */
  resumeFrom?: string;
  /** Seconds of the time budget this attempt may use (engines whose budget the runner keeps). */
  remainingSec: number;
  signal: AbortSignal;
  log: EngineLog;
}

/** What one output line meant. */
export interface LineReading {
  /** Progress as the jar's progress pattern names it (percent, screens, crashes, anrs, checkpoint). */
  progress?: Record<string, string | undefined>;
  /** Findings the line completed. */
  findings: RawFinding[];
  /** True when the line shows the tool is making progress (it restarts the hang clock). */
  alive: boolean;
}

/** What the runner knows about how an attempt ended. */
export interface EndFacts {
  exit: GroupExit;
  /** Why the runner ended the engine, if it did: the budget was used up, or finish-now was asked. */
  stoppedBy?: 'budget' | 'finish';
  /** The last lines of stderr. */
  stderrTail: string;
}

/** One attempt of an engine on one device, from its start to its verdict. */
export interface EngineAttempt {
  /** The host-side child process. */
  readonly argv: [string, ...string[]];
  /** 'tool': the tool keeps its budget and resumes from its checkpoint; 'runner': the runner keeps time and stops it. */
  readonly budgetKeeper: 'tool' | 'runner';
  /** Reads one line of stdout or stderr. */
  read(stream: 'stdout' | 'stderr', line: string): LineReading;
  /** The output ended: findings of blocks still open. */
  endOfOutput(): RawFinding[];
  /** Right after the start: finds the engine's process where it runs and records it; its pid, if any. */
  afterStart(): Promise<number | undefined>;
  /** Holds or continues the engine where it runs. Unset: the runner signals the host process group. */
  pause?(paused: boolean): Promise<void>;
  /** Ends the engine where it runs and checks it is gone (the runner then ends the host process group). */
  stop(): Promise<void>;
  /** After the end: removes the engine's record and collects its files into the report folder. */
  cleanup(): Promise<void>;
  /** The status of an attempt that ended; throws the typed error of one that failed. */
  verdict(facts: EndFacts): Promise<{ status?: string }>;
}

/** A traversal engine, set up once per worker. */
export interface Engine {
  readonly id: EngineId;
  /** Checks this worker's setup for the engine (tools, files); throws EngineSetupError when it cannot run. */
  checkSetup(): Promise<void>;
  /** Gets the phone ready for one attempt (ends leftovers, pushes files) and describes the attempt. */
  prepare(plan: AttemptPlan): Promise<EngineAttempt>;
}

/** How the monkey and fastbot engines reach a phone. */
export interface PhoneAccess {
  adb: Adb;
  /** The phone's adb serial; production asks the device's agent, which knows it. */
  serialOf: (agentUrl: string, deviceId: string, signal: AbortSignal) => Promise<string>;
  /** Pause between two events, ms (DT_ENGINE_THROTTLE). */
  throttleMs: number;
}

/** The engine DT_ENGINE names. */
export function engineFor(
  config: Pick<Config, 'engine' | 'fastbotDir' | 'engineThrottleMs'>,
  adb: Adb,
  opts: { serialOf: PhoneAccess['serialOf']; jar: JarSettings },
): Engine {
  const phone: PhoneAccess = { adb, serialOf: opts.serialOf, throttleMs: config.engineThrottleMs };
  switch (config.engine) {
    case 'monkey':
      return new MonkeyEngine(phone);
    case 'fastbot':
      return new FastbotEngine(phone, config.fastbotDir);
    default:
      return new JarEngine(opts.jar);
  }
}
