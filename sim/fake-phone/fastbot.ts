/**
 * Test double of a real phone: Fastbot (bytedance/Fastbot_Android) as `app_process` runs it from the jars
 * pushed to /sdcard. Timed mode only: it runs for --running-minutes (scaled by the phone's timeScale),
 * keeps going after crashes and ANRs, records them in /sdcard/crash-dump.log and the output folder, and
 * dies with the adb session (SIGHUP). At start it switches the IME and flips two settings, as the real
 * one does through its mutations, so that the farm's restore step has something to undo.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command, Io } from './io';
import { stamp } from './io';
import { appProcess } from './processes';
import {
  anrReport,
  anrTraces,
  EngineProcess,
  faultText,
  Lines,
  MONKEY_MAIN,
  parseArgs,
  PROCESS_NAME,
  type MonkeyArgs,
} from './engines';

const ADB_IME = 'com.android.adbkeyboard/.AdbIME';
const APP_VERSION = '1.0';

/** "yyyyMMddHHmmss", the record stamp of crash-dump.log. */
function compactStamp(): string {
  return stamp().slice(0, 19).replace(/[-: ]/g, '');
}

async function fastbot(a: MonkeyArgs & { runningMinutes: number }, io: Io): Promise<number> {
  const st = io.phone.state;
  const pkg = a.packages[0] ?? '';
  const out = new Lines((t) => io.out(t));
  const log = (...msgs: string[]): void => out.add(...msgs.map((m) => `[Fastbot][${stamp()}] ${m}`));
  const errLines = (msgs: string[]): Promise<void> => io.err(msgs.map((m) => `[Fastbot]*** ERROR *** ${m}\n`).join(''));
  const outDir = a.outputDir ?? `/sdcard/fastbot-${pkg}--running-minutes-${a.runningMinutes}`;
  fs.mkdirSync(st.hostPath(outDir), { recursive: true });
  const proc = new EngineProcess(io, PROCESS_NAME, false);
  st.putSetting('secure', 'default_input_method', ADB_IME);
  st.putSetting('global', 'always_finish_activities', '1');
  st.putSetting('system', 'accelerometer_rotation', '0');
  const t0 = Date.now();
  const started = process.hrtime.bigint();
  log(
    `:Monkey: seed=${a.seed} count=1000`,
    `:AllowPackage: ${pkg}`,
    ':IncludeCategory: android.intent.category.LAUNCHER',
  );
  log(`// device uuid is ${io.phone.props['ro.serialno'] ?? ''}`, `// set IME to ${ADB_IME}`);
  log(
    `:Switch: #Intent;action=android.intent.action.MAIN;category=android.intent.category.LAUNCHER;component=${pkg}/.MainActivity;end`,
  );
  if (!st.pkg(pkg)) log(`*** WARNING *** package ${pkg} is not installed`);
  else appProcess(io.phone, pkg);
  const faults = new Map((st.scenario(pkg).events ?? []).map((e) => [e.atEvent, e]));
  const per = a.throttle > 0 ? a.throttle : 100;
  const endAt = t0 + a.runningMinutes * 60_000 * io.phone.timeScale;
  let crashes = 0;
  let anrs = 0;
  let n = 0;
  while (!proc.stop && Date.now() < endAt) {
    n++;
    if (n % 100 === 0) log(`// Sending event #${n}`);
    const fault = faults.get(n);
    if (fault) {
      await out.flush();
      const app = appProcess(io.phone, pkg).proc;
      const f = faultText(pkg, fault);
      const dumpTime = stamp().slice(0, 19);
      const frames = [`// ${f.long}`, ...f.frames.map((fr) => `// \t${fr}`)];
      if (fault.kind === 'crash') {
        crashes++;
        const nanos = process.hrtime.bigint() - started;
        await errLines([
          `// CRASH: ${pkg} (pid ${app.pid}) (elapsed nanos: ${nanos})`,
          `// Version: ${APP_VERSION}`,
          `// Short Msg: ${f.short}`,
          `// Long Msg: ${f.long}`,
          ...frames,
          '// ',
        ]);
        const rec = [
          compactStamp(),
          'crash:',
          `// CRASH: ${pkg} (pid ${app.pid}) (dump time: ${dumpTime}`,
          `// Version: ${APP_VERSION}`,
          `// Long Msg: ${f.long}`,
          ...frames.slice(1),
        ];
        fs.appendFileSync(st.hostPath('/sdcard/crash-dump.log'), rec.join('\n') + '\ncrash end\n');
        // The killed app comes back on the next event, under a new pid.
        st.exit(app.pid);
        log('Encounter abort but we are in continuous mode.');
      } else {
        anrs++;
        await errLines([`// NOT RESPONDING: ${pkg} (pid ${app.pid})`, ...anrReport(pkg, app.pid, f.long)]);
        const rec = [
          compactStamp(),
          'anr:',
          `// ANR: ${pkg} (pid ${app.pid}) (dump time: ${dumpTime}`,
          `// Version: ${APP_VERSION}`,
          `// NOT RESPONDING: ${pkg} (pid ${app.pid}) (stat ${anrReport(pkg, app.pid, f.long).join('\n')}`,
        ];
        fs.appendFileSync(st.hostPath('/sdcard/crash-dump.log'), rec.join('\n') + '\nanr end\n');
        fs.appendFileSync(
          st.hostPath(path.posix.join(outDir, 'oom-traces.log')),
          anrTraces(pkg, app.pid, f.frames).join('\n') + '\n',
        );
      }
    }
    const ahead = t0 + n * per - Date.now();
    if (ahead > 0) {
      await out.flush();
      await proc.pause(Math.min(ahead, endAt - Date.now()));
    }
  }
  if (proc.stop) return proc.exit(0);
  const activities = [`${pkg}.MainActivity`, `${pkg}.SettingsActivity`];
  log('Total app activities:', ...activities.map((x, i) => `${String(i + 1).padStart(4)} ${x}`));
  log('Explored app activities:', `   1 ${activities[0] ?? ''}`, 'Activity of Coverage: 50.0%');
  log(':Dropped: keys=0 pointers=0 trackballs=0 flips=0 rotations=0');
  log(`// App appears ${crashes} crash, ${anrs} anr, monkey using seed: ${a.seed}`, '// Monkey finished');
  await out.flush();
  const stats = {
    TestedActivity: activities.slice(0, 1),
    TotalActivity: activities,
    Coverage: 50.0,
    Sampling: n,
    ActivityTimes: { [activities[0] ?? '']: n },
  };
  fs.writeFileSync(st.hostPath(path.posix.join(outDir, 'max.activity.statistics.log')), JSON.stringify(stats));
  // Fastbot returns the event counter when the run stopped short of Monkey's default count of 1000.
  return proc.exit(n < 999 ? n & 0xff : 0);
}

/** `app_process <dir> <main-class> …`: only Monkey's main class (that is, Fastbot) is known here. */
export const appProcessCommand: Command = async (argv, io) => {
  const main = argv[2] ?? '';
  const classpath = (io.env.CLASSPATH ?? '').split(':').filter(Boolean);
  const missing = classpath.filter((jar) => !fs.existsSync(io.phone.state.hostPath(jar)));
  if (main !== MONKEY_MAIN || !classpath.length || missing.length) {
    const zips = classpath.map((j) => `zip file "${j}"`).join(', ');
    await io.err(
      `Error: Could not find or load main class ${main}\n` +
        `Caused by: java.lang.ClassNotFoundException: Didn't find class "${main}" on path: DexPathList[[${zips}],nativeLibraryDirectories=[/system/lib64, /system_ext/lib64, /system/lib64, /system_ext/lib64]]\n`,
    );
    return 1;
  }
  const a = parseArgs(argv.slice(3));
  if (typeof a === 'string' || !a.agent || a.runningMinutes === undefined) {
    await io.err(
      `${typeof a === 'string' ? a : '** Error: this fake runs Fastbot only with --agent and --running-minutes'}\n`,
    );
    return 255;
  }
  return fastbot({ ...a, runningMinutes: a.runningMinutes }, io);
};
