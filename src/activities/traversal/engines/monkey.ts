/**
 * The `monkey` engine: Android's Monkey on the phone, through `adb -s <serial> shell monkey …`.
 *
 * Monkey takes an event count, not a time, so the count is set to cover the attempt's budget and
 * the runner ends Monkey when the budget (which a signal may change) is used up. Monkey's launcher
 * script ignores hang-up, so ending the host-side adb leaves it running: its pid is found with
 * `pidof` right after the start, recorded on the phone (src/adb/device.ts), and killed there.
 * Pause sends `kill -STOP` / `-CONT` to that pid.
 * PhoneAttempt holds what Monkey and Fastbot share; FastbotEngine (fastbot.ts) builds on it.
 */
import { createHash } from 'node:crypto';
import {
  clearEngineRecord,
  ENGINE_PROCESS_NAMES,
  killOnPhone,
  pidsOf,
  readEngineRecord,
  sweepEngines,
  writeEngineRecord,
} from '../../../adb/device';
import { shellQuote, tail } from '../../../adb';
import { DeviceOfflineError, EngineSetupError, TraversalExitError } from '../../../contract/errors';
import type { RawFinding } from '../../findings';
import { MonkeyOutput } from './monkey-output';
import type { AttemptPlan, Engine, EngineAttempt, EndFacts, EngineId, LineReading, PhoneAccess } from './index';

/** Longest wait for the engine's process to show up on the phone after the start, ms. */
const FIND_PID_MS = 15_000;
/** Time limit of one adb call made around the run (pidof, kill, records), ms. */
const CALL_MS = 20_000;
/** Events on top of those the budget covers: Monkey must never run out of events before the runner stops it. */
const EXTRA_EVENTS = 1000;

/** A seed that is the same for the same task, device and attempt, so a run can be replayed with `-s`. */
export function seedFor(taskId: string, deviceId: string, attempt: number): number {
  return parseInt(createHash('sha256').update(`${taskId}/${deviceId}/${attempt}`).digest('hex').slice(0, 7), 16);
}

/**
 * Monkey's event count for a budget: the events the budget holds at the throttle, twice over (a
 * budget signal may raise the budget while it runs), plus a margin.
 */
export function eventCount(remainingSec: number, throttleMs: number): number {
  return Math.min(1e9, Math.ceil((2 * remainingSec * 1000) / Math.max(1, throttleMs)) + EXTRA_EVENTS);
}

/** One attempt of an engine that runs on the phone under the given shell line. */
export class PhoneAttempt implements EngineAttempt {
  readonly budgetKeeper = 'runner';
  readonly argv: [string, ...string[]];
  private readonly output = new MonkeyOutput();
  private enginePid?: number;
  private finding?: Promise<number | undefined>;
  private stopped = false;

  constructor(
    private readonly engine: EngineId,
    private readonly phone: PhoneAccess,
    readonly serial: string,
    private readonly plan: AttemptPlan,
    shellLine: string,
    /** Extra work after the run (Fastbot pulls its files). */
    private readonly collect?: () => Promise<void>,
  ) {
    this.argv = phone.adb.argv(serial, 'shell', shellLine);
  }

  read(stream: 'stdout' | 'stderr', line: string): LineReading {
    // The runner counts the findings (earlier attempts' included); any line shows the engine is
    // alive: with -v -v Monkey prints each event it sends.
    return { findings: this.output.feed(stream, line), alive: line.trim() !== '' };
  }

  endOfOutput(): RawFinding[] {
    return this.output.end();
  }

  /** Polls `pidof` until the engine shows up (the sweep before the start ended any other), then records it on the phone. */
  afterStart(): Promise<number | undefined> {
    this.finding ??= this.findAndRecord();
    return this.finding;
  }

  private async findAndRecord(): Promise<number | undefined> {
    const { adb } = this.phone;
    const deadline = Date.now() + FIND_PID_MS;
    while (Date.now() < deadline && !this.stopped && !this.output.finished && !this.output.neverRan) {
      const pids = await pidsOf(adb, this.serial, ENGINE_PROCESS_NAMES[0]!, { timeoutMs: CALL_MS }).catch(() => []);
      if (pids.length) {
        this.enginePid = Math.max(...pids);
        await writeEngineRecord(
          adb,
          this.serial,
          { pid: this.enginePid, engine: this.engine, runId: this.plan.runId },
          { timeoutMs: CALL_MS },
        ).catch((err: Error) => this.plan.log.warn('could not record the engine on the phone', { error: err.message }));
        this.plan.log.info('engine running on the phone', {
          engine: this.engine,
          enginePid: this.enginePid,
          serial: this.serial,
          deviceId: this.plan.input.deviceId,
        });
        return this.enginePid;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    return undefined;
  }

  /** Holds or continues the engine on the phone (STOP/CONT to its recorded pid); events stop meanwhile. */
  async pause(paused: boolean): Promise<void> {
    const pid = this.enginePid ?? (await this.finding);
    if (!pid) throw new Error('the engine has no recorded pid on the phone yet');
    const r = await this.phone.adb.shell(this.serial, `kill -${paused ? 'STOP' : 'CONT'} ${pid}`, {
      timeoutMs: CALL_MS,
    });
    if (r.code !== 0) throw new Error(`kill -${paused ? 'STOP' : 'CONT'} ${pid} on ${this.serial}: ${tail(r)}`);
  }

  /** Kills the recorded pid on the phone, then checks it is gone. */
  async stop(): Promise<void> {
    this.stopped = true;
    const pid = this.enginePid ?? (await this.finding);
    const { adb } = this.phone;
    const pids = pid ? [pid] : await pidsOf(adb, this.serial, ENGINE_PROCESS_NAMES[0]!, { timeoutMs: CALL_MS });
    if (!pids.length) return;
    // killOnPhone checks each pid in `ps` after TERM and KILL, and throws when one survives.
    await killOnPhone(adb, this.serial, pids, { timeoutMs: CALL_MS });
  }

  /** Makes sure the engine is gone (the host adb may have ended on its own), drops the record, collects files. */
  async cleanup(): Promise<void> {
    const { adb } = this.phone;
    const meta = { engine: this.engine, serial: this.serial, deviceId: this.plan.input.deviceId };
    try {
      // After a stop() the engine was already ended and checked gone.
      if (this.enginePid && !this.stopped)
        await killOnPhone(adb, this.serial, [this.enginePid], { timeoutMs: CALL_MS });
      // Another attempt may already have replaced the record: only ours is removed.
      const rec = await readEngineRecord(adb, this.serial, { timeoutMs: CALL_MS });
      if (rec?.runId === this.plan.runId) await clearEngineRecord(adb, this.serial, { timeoutMs: CALL_MS });
    } catch (err) {
      this.plan.log.warn('could not end or forget the engine on the phone; the next attempt sweeps it', {
        ...meta,
        error: (err as Error).message,
      });
    }
    await this.collect?.().catch((err: Error) =>
      this.plan.log.warn("could not collect the engine's files", { ...meta, error: err.message }),
    );
  }

  /** From the output: the phone gone, the tool never ran, a stop by the runner, the end line, an abort after a crash. */
  async verdict({ exit, stoppedBy, stderrTail }: EndFacts): Promise<{ status?: string }> {
    const out = this.output;
    const { deviceId } = this.plan.input;
    if (out.deviceGone && !out.finished) throw new DeviceOfflineError(deviceId, `adb said "${out.deviceGone}"`);
    if (out.neverRan)
      throw new EngineSetupError(
        this.engine,
        `it never ran on ${this.serial}: "${out.neverRan}"`,
        this.engine === 'fastbot'
          ? 'check that the app is installed and that DT_FASTBOT_DIR holds working Fastbot files'
          : 'check that the app is installed on the phone and has a launcher activity',
      );
    if (stoppedBy === 'budget') return { status: 'completed' };
    if (stoppedBy === 'finish') return { status: 'stopped' };
    if (out.finished) return { status: 'completed' };
    // Monkey stops at the first crash it does not ignore; what it found is the result.
    if (out.aborted && out.crashes + out.anrs > 0) return { status: 'completed' };
    // The output just ended: a phone that dropped off says nothing, so ask adb.
    const state = await this.phone.adb.run(this.serial, ['get-state'], { timeoutMs: CALL_MS }).catch(() => undefined);
    if (!state || state.stdout.trim() !== 'device')
      throw new DeviceOfflineError(
        deviceId,
        `the ${this.engine} output ended and adb get-state says "${(
          state?.stdout ||
          state?.stderr ||
          'nothing'
        ).trim()}"`,
      );
    throw new TraversalExitError(
      exit.code,
      exit.signal,
      stderrTail || `the ${this.engine} output ended without its end line`,
    );
  }
}

/** Ends what earlier runs left on the phone: the recorded engine and any Monkey process. */
export async function sweepPhone(phone: PhoneAccess, serial: string, plan: AttemptPlan): Promise<void> {
  const ended = await sweepEngines(phone.adb, serial, { timeoutMs: CALL_MS });
  if (ended.length)
    plan.log.warn('ended engine processes left on the phone by an earlier run', {
      serial,
      deviceId: plan.input.deviceId,
      pids: ended,
    });
}

/** Android's Monkey, with crashes, timeouts and security exceptions ignored, so one run finds many. */
export class MonkeyEngine implements Engine {
  readonly id = 'monkey';

  constructor(private readonly phone: PhoneAccess) {}

  /** Nothing to push; adb itself is checked by the first call. */
  async checkSetup(): Promise<void> {}

  async prepare(plan: AttemptPlan): Promise<EngineAttempt> {
    const { phone } = this;
    const serial = await phone.serialOf(plan.input.agentUrl, plan.input.deviceId, plan.signal);
    await sweepPhone(phone, serial, plan);
    const count = eventCount(plan.remainingSec, phone.throttleMs);
    const seed = seedFor(plan.input.taskId, plan.input.deviceId, plan.attempt);
    const line = [
      'monkey',
      '-p',
      shellQuote(plan.input.packageName),
      '--ignore-crashes',
      '--ignore-timeouts',
      '--ignore-security-exceptions',
      '--throttle',
      String(phone.throttleMs),
      '-s',
      String(seed),
      '-v',
      '-v',
      String(count),
    ].join(' ');
    return new PhoneAttempt('monkey', phone, serial, plan, line);
  }
}
