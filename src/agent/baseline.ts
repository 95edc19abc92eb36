/**
 * The settings a traversal engine changes on a phone, and the values `reset` puts back.
 *
 * The baseline is what the phone had the FIRST time this agent saw it (with this data dir): it is
 * written once to `<dataDir>/phones/<id>.json` and never overwritten, so an agent restart, or a
 * phone coming back after a run that died mid-way, restores the values from before any run rather
 * than whatever a broken run left. To take a new baseline (the phone's owner changed a setting on
 * purpose), delete that file while the phone is connected and restart the agent.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { shellQuote } from '../adb';
import { HttpError } from './protocol';
import type { Phone, PhoneTracker } from './phones';

/** A setting table of Android's `settings` command. */
export type Namespace = 'system' | 'secure' | 'global';

/** One tracked setting. */
export interface TrackedSetting {
  ns: Namespace;
  key: string;
}

/**
 * The settings engines change: the keyboard (Fastbot installs its own IME), network switches,
 * "don't keep activities", and rotation. Airplane mode comes before wifi: turning it off may turn
 * wifi back on, which the wifi step then corrects.
 */
export const TRACKED_SETTINGS: readonly TrackedSetting[] = [
  { ns: 'secure', key: 'default_input_method' },
  { ns: 'global', key: 'airplane_mode_on' },
  { ns: 'global', key: 'wifi_on' },
  { ns: 'global', key: 'always_finish_activities' },
  { ns: 'system', key: 'accelerometer_rotation' },
  { ns: 'system', key: 'user_rotation' },
];

/** Settings values by `<ns>/<key>`; null where the phone has the setting unset. */
export type Settings = Record<string, string | null>;

/** What the data dir keeps about one phone. */
export interface PhoneRecord {
  id: string;
  serial: string;
  /** ISO time of the first sighting, which took the baseline. */
  firstSeen: string;
  model?: string;
  sdk?: number;
  baseline: Settings;
}

/** The name of a tracked setting in Settings. */
export function settingName(s: TrackedSetting): string {
  return `${s.ns}/${s.key}`;
}

/** The phone records under `<dataDir>/phones/`. */
export class PhoneRecords {
  private readonly dir: string;

  constructor(dataDir: string) {
    this.dir = path.join(dataDir, 'phones');
  }

  /** Every record (a phone seen by this or an earlier run of the agent). */
  async all(): Promise<PhoneRecord[]> {
    const names = await fsp.readdir(this.dir).catch(() => [] as string[]);
    const out: PhoneRecord[] = [];
    for (const name of names.filter((n) => n.endsWith('.json'))) {
      const rec = await this.read(name.slice(0, -5));
      if (rec) out.push(rec);
    }
    return out;
  }

  /** The record of one phone, if any. */
  async read(id: string): Promise<PhoneRecord | undefined> {
    try {
      return JSON.parse(await fsp.readFile(this.file(id), 'utf8')) as PhoneRecord;
    } catch {
      return undefined;
    }
  }

  /** Writes a record (aside, then renamed, so a crash never leaves half a baseline). */
  async write(rec: PhoneRecord): Promise<void> {
    await fsp.mkdir(this.dir, { recursive: true });
    const tmp = `${this.file(rec.id)}.${process.pid}.tmp`;
    await fsp.writeFile(tmp, JSON.stringify(rec, null, 2));
    await fsp.rename(tmp, this.file(rec.id));
  }

  private file(id: string): string {
    return path.join(this.dir, `${id}.json`);
  }
}

/** Reads every tracked setting in one shell call. */
export async function readSettings(phones: PhoneTracker, phone: Phone): Promise<Settings> {
  const command = TRACKED_SETTINGS.map((s) => `settings get ${s.ns} ${s.key}`).join('; ');
  const r = await phones.shell(phone, command, `reading the settings of ${phone.id}`);
  const lines = r.stdout.replace(/\r/g, '').split('\n');
  if (lines.length < TRACKED_SETTINGS.length)
    throw new HttpError(
      502,
      `reading the settings of ${phone.id} gave ${lines.length} lines: ${r.stdout.slice(0, 200)}`,
    );
  const out: Settings = {};
  TRACKED_SETTINGS.forEach((s, i) => {
    const v = (lines[i] ?? '').trim();
    out[settingName(s)] = v === 'null' || v === '' ? null : v;
  });
  return out;
}

/** A setting that reset changed: what it was, and what it is now. */
export interface Restored {
  setting: string;
  from: string | null;
  to: string | null;
}

/**
 * Puts the tracked settings back to the baseline and checks they took. Settings unset in the
 * baseline are left alone (there is no value to put back). Idempotent: nothing is run for a
 * setting that already matches.
 */
export async function restoreSettings(phones: PhoneTracker, phone: Phone, baseline: Settings): Promise<Restored[]> {
  const current = await readSettings(phones, phone);
  const restored: Restored[] = [];
  for (const s of TRACKED_SETTINGS) {
    const name = settingName(s);
    const want = baseline[name];
    const have = current[name];
    if (want === null || want === undefined || same(s, have ?? null, want)) continue;
    for (const command of restoreCommands(s, want)) {
      const r = await phones.shell(phone, command, `restoring ${name} on ${phone.id}`);
      if (r.code === 0 && !/^(Error|Exception)/m.test(r.stdout)) break;
    }
    restored.push({ setting: name, from: have ?? null, to: want });
  }
  if (!restored.length) return restored;
  const after = await readSettings(phones, phone);
  const stuck = TRACKED_SETTINGS.filter((s) => {
    const want = baseline[settingName(s)];
    return want !== null && want !== undefined && !same(s, after[settingName(s)] ?? null, want);
  });
  if (stuck.length) {
    const list = stuck.map((s) => `${settingName(s)} is ${after[settingName(s)]}, want ${baseline[settingName(s)]}`);
    throw new HttpError(502, `reset of ${phone.id} could not restore ${list.join('; ')}; check the phone by hand`);
  }
  return restored;
}

/** Wifi reads 1, 2 or 3 when on (2 and 3 around airplane mode), so only on/off is compared. */
function same(s: TrackedSetting, have: string | null, want: string): boolean {
  if (s.key === 'wifi_on') return ((have ?? '0') !== '0') === (want !== '0');
  return have === want;
}

/**
 * The commands that put one setting back, tried in order until one succeeds. Radios go through the
 * services (writing wifi_on or airplane_mode_on alone changes the number, not the radio); the
 * keyboard goes through `ime set`, with `settings put` for an IME that is not enabled.
 */
function restoreCommands(s: TrackedSetting, want: string): string[] {
  const put = `settings put ${s.ns} ${s.key} ${shellQuote(want)}`;
  switch (s.key) {
    case 'wifi_on':
      return [`svc wifi ${want === '0' ? 'disable' : 'enable'}`];
    case 'airplane_mode_on':
      return [`cmd connectivity airplane-mode ${want === '0' ? 'disable' : 'enable'}`];
    case 'default_input_method':
      return [`ime set ${shellQuote(want)}`, put];
    default:
      return [put];
  }
}
