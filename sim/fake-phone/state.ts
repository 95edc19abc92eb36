/**
 * Test double of a real phone: its persistent state, one folder per phone.
 *
 * Layout of `<stateDir>/<serial>/`:
 *   packages/<pkg>.json   installed package: name, sha256, size, versionCode (the APK bytes are hashed, not kept)
 *   settings.json         `settings` table as { "global": {...}, "secure": {...}, "system": {...} }
 *   processes.json        running processes, rewritten on every change (for inspection; a restart is a reboot)
 *   scenario-<pkg>.json   what the engines meet when they exercise <pkg>
 *   files/                the phone's filesystem; /sdcard/x lives at files/sdcard/x
 */
import fs from 'node:fs';
import path from 'node:path';

/** One crash or ANR an engine meets at a given event of a run. */
export interface ScenarioEvent {
  /** 1-based event number at which the fault appears. */
  atEvent: number;
  kind: 'crash' | 'anr';
  /** Exception class for crashes, e.g. java.lang.IllegalStateException. */
  exception?: string;
  message?: string;
  /** Stack frames without the leading tab, e.g. "at com.example.Foo.bar(Foo.java:42)". */
  frames?: string[];
}

/** What the engines meet when they exercise one package. */
export interface EngineScenario {
  events?: ScenarioEvent[];
  /** versionCode recorded for the next install of this package (default 1). */
  versionCode?: number;
}

/** An installed package as the phone records it. */
export interface PackageRecord {
  name: string;
  sha256: string;
  /** bytes */
  size: number;
  versionCode: number;
}

/** A process in the phone's process table. */
export interface ProcessInfo {
  pid: number;
  name: string;
  args: string;
}

/** Everything a test may want to assert about a phone. */
export interface PhoneStateSnapshot {
  packages: PackageRecord[];
  settings: Record<Namespace, Record<string, string>>;
  processes: ProcessInfo[];
  /** bytes left for installs */
  freeBytes: number;
}

/** The three tables of `settings`. */
export type Namespace = 'system' | 'secure' | 'global';

const DEFAULT_SETTINGS: Record<Namespace, Record<string, string>> = {
  secure: { default_input_method: 'com.android.inputmethod.latin/.LatinIME' },
  global: { wifi_on: '1', airplane_mode_on: '0', always_finish_activities: '0' },
  system: { accelerometer_rotation: '1', user_rotation: '0' },
};

/** Folders the shell user may write to, as on a real phone. */
const WRITABLE = ['/sdcard', '/data/local/tmp', '/storage/emulated/0'];

/** A running process plus how it reacts to signals. */
/** The signals the fake phone delivers: the ending ones, and STOP/CONT, which hold and continue a process. */
export type Signal = 'HUP' | 'TERM' | 'KILL' | 'STOP' | 'CONT';

export interface LiveProcess extends ProcessInfo {
  /** Delivers a signal; the process decides whether it dies (it then calls {@link PhoneState.exit}). */
  signal(sig: Signal): void;
}

/** The phone's state folder with the in-memory process table. */
export class PhoneState {
  private readonly procs = new Map<number, LiveProcess>();
  private nextPid = 12000;
  private settingsCache: Record<Namespace, Record<string, string>>;

  constructor(
    readonly dir: string,
    /** total storage for installs, bytes */
    private readonly capacity: number,
  ) {
    for (const d of ['packages', 'files/sdcard', 'files/data/local/tmp'])
      fs.mkdirSync(path.join(dir, d), { recursive: true });
    this.settingsCache = this.loadSettings();
    this.saveProcesses();
  }

  /** Maps an absolute phone path to the host file that backs it. */
  hostPath(phonePath: string): string {
    const norm = path.posix.normalize(phonePath.startsWith('/') ? phonePath : `/${phonePath}`);
    const aliased = norm
      .replace(/^\/storage\/emulated\/0(?=\/|$)/, '/sdcard')
      .replace(/^\/storage\/self\/primary(?=\/|$)/, '/sdcard');
    return path.join(this.dir, 'files', aliased);
  }

  /** True when the shell user may create or delete files at this phone path. */
  writable(phonePath: string): boolean {
    const norm = path.posix.normalize(phonePath);
    return WRITABLE.some((w) => norm === w || norm.startsWith(`${w}/`));
  }

  /** Installed packages, read from the state folder. */
  packages(): PackageRecord[] {
    const dir = path.join(this.dir, 'packages');
    return fs
      .readdirSync(dir)
      .filter((f) => f.endsWith('.json'))
      .map((f) => JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as PackageRecord)
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  /** One installed package, or undefined. */
  pkg(name: string): PackageRecord | undefined {
    const f = this.pkgFile(name);
    return fs.existsSync(f) ? (JSON.parse(fs.readFileSync(f, 'utf8')) as PackageRecord) : undefined;
  }

  /** Records an install (replacing any earlier one). */
  install(rec: PackageRecord): void {
    writeJson(this.pkgFile(rec.name), rec);
  }

  /** Removes a package; false if it was not installed. */
  uninstall(name: string): boolean {
    const f = this.pkgFile(name);
    if (!fs.existsSync(f)) return false;
    fs.rmSync(f);
    return true;
  }

  /** Bytes left for installs: the capacity minus what installed packages take. */
  freeBytes(): number {
    return Math.max(0, this.capacity - this.packages().reduce((n, p) => n + p.size, 0));
  }

  /** A setting, or undefined ("null" in the shell). */
  getSetting(ns: Namespace, key: string): string | undefined {
    return this.settingsCache[ns][key];
  }

  /** Writes a setting through to settings.json. */
  putSetting(ns: Namespace, key: string, value: string): void {
    this.settingsCache[ns][key] = value;
    writeJson(path.join(this.dir, 'settings.json'), this.settingsCache);
  }

  /** Scenario for a package (empty when none was set). */
  scenario(pkg: string): EngineScenario {
    const f = path.join(this.dir, `scenario-${pkg}.json`);
    return fs.existsSync(f) ? (JSON.parse(fs.readFileSync(f, 'utf8')) as EngineScenario) : {};
  }

  /** Persists the scenario for a package. */
  setScenario(pkg: string, s: EngineScenario): void {
    writeJson(path.join(this.dir, `scenario-${pkg}.json`), s);
  }

  /** Adds a process with the next pid. */
  spawn(name: string, args: string, signal: LiveProcess['signal']): LiveProcess {
    const p: LiveProcess = { pid: this.nextPid++, name, args, signal };
    this.procs.set(p.pid, p);
    this.saveProcesses();
    return p;
  }

  /** Removes a process from the table (it ended). */
  exit(pid: number): void {
    if (this.procs.delete(pid)) this.saveProcesses();
  }

  /** A live process by pid. */
  process(pid: number): LiveProcess | undefined {
    return this.procs.get(pid);
  }

  /** Live processes, oldest first. */
  processes(): LiveProcess[] {
    return [...this.procs.values()];
  }

  /** Copy for tests. */
  snapshot(): PhoneStateSnapshot {
    return {
      packages: this.packages(),
      settings: JSON.parse(JSON.stringify(this.settingsCache)) as PhoneStateSnapshot['settings'],
      processes: this.processes().map(({ pid, name, args }) => ({ pid, name, args })),
      freeBytes: this.freeBytes(),
    };
  }

  private pkgFile(name: string): string {
    return path.join(this.dir, 'packages', `${name}.json`);
  }

  private loadSettings(): Record<Namespace, Record<string, string>> {
    const f = path.join(this.dir, 'settings.json');
    const saved = fs.existsSync(f)
      ? (JSON.parse(fs.readFileSync(f, 'utf8')) as Partial<PhoneStateSnapshot['settings']>)
      : {};
    return {
      system: { ...DEFAULT_SETTINGS.system, ...saved.system },
      secure: { ...DEFAULT_SETTINGS.secure, ...saved.secure },
      global: { ...DEFAULT_SETTINGS.global, ...saved.global },
    };
  }

  private saveProcesses(): void {
    writeJson(
      path.join(this.dir, 'processes.json'),
      this.processes().map(({ pid, name, args }) => ({ pid, name, args })),
    );
  }
}

function writeJson(file: string, value: unknown): void {
  // Write-then-rename so a reader never sees half a file.
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(value, null, 2));
  fs.renameSync(tmp, file);
}
