/**
 * The `fastbot` engine: ByteDance's Fastbot, Monkey's class from the operator's jars started with
 * `app_process` on the phone, in its timed mode (`--running-minutes`), which keeps going after a
 * crash. Fastbot counts whole minutes, so the runner still keeps the exact budget and stops it.
 * Unlike Monkey it dies with the adb session, but it is recorded and killed on the phone all the same.
 * Its files go to the phone once (fastbot-files.ts); its logs come back into the report after the run.
 */
import { shellQuote } from '../../../adb';
import { CRASH_DUMP, FASTBOT_JARS, fastbotFiles, pullFastbotFiles, pushFastbotFiles } from './fastbot-files';
import { PhoneAttempt, seedFor, sweepPhone } from './monkey';
import type { AttemptPlan, Engine, EngineAttempt, PhoneAccess } from './index';

/** Folder on the phone under which each attempt gets its output folder. */
export const PHONE_OUTPUT_ROOT = '/sdcard/device-traversal';

/** Fastbot run from the jars of DT_FASTBOT_DIR. */
export class FastbotEngine implements Engine {
  readonly id = 'fastbot';

  constructor(
    private readonly phone: PhoneAccess,
    private readonly dir: string,
  ) {}

  /** A missing or incomplete DT_FASTBOT_DIR is a setup error, never a reason to run something else. */
  async checkSetup(): Promise<void> {
    await fastbotFiles(this.dir);
  }

  async prepare(plan: AttemptPlan): Promise<EngineAttempt> {
    const { phone } = this;
    const { input } = plan;
    // Checked again here: the folder may have changed since the worker started.
    const files = await fastbotFiles(this.dir);
    const serial = await phone.serialOf(input.agentUrl, input.deviceId, plan.signal);
    await sweepPhone(phone, serial, plan);
    const pushed = await pushFastbotFiles(phone.adb, serial, files);
    plan.log.info(pushed.length ? 'pushed Fastbot files to the phone' : 'Fastbot files already on the phone', {
      serial,
      deviceId: input.deviceId,
      pushed,
    });
    // Fastbot appends to the crash dump forever; start it empty so the copy in the report is this run's.
    await phone.adb.shell(serial, `rm -f ${CRASH_DUMP}`, { timeoutMs: 20_000 });
    const outputDir = `${PHONE_OUTPUT_ROOT}/${plan.runId}`;
    const minutes = Math.max(1, Math.ceil(plan.remainingSec / 60));
    const line = [
      `CLASSPATH=${FASTBOT_JARS.map((n) => `/sdcard/${n}`).join(':')}`,
      'exec app_process /system/bin com.android.commands.monkey.Monkey',
      `-p ${shellQuote(input.packageName)}`,
      '--agent reuseq',
      `--running-minutes ${minutes}`,
      `--throttle ${phone.throttleMs}`,
      `-s ${seedFor(input.taskId, input.deviceId, plan.attempt)}`,
      '-v -v',
      `--output-directory ${outputDir}`,
    ].join(' ');
    const collect = async () => {
      const pulled = await pullFastbotFiles(phone.adb, serial, outputDir, plan.reportDir);
      plan.log.info("collected Fastbot's files", { serial, deviceId: input.deviceId, pulled });
    };
    return new PhoneAttempt('fastbot', phone, serial, plan, line, collect);
  }
}
