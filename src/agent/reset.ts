/**
 * reset: the phone back to how it was before any run, so the next traversal starts clean. Stops the
 * app, ends engines left running (recorded pid, then by name; Monkey survives its host's adb
 * hanging up), and puts the settings engines change back to the phone's baseline (baseline.ts).
 * Every step is a no-op when there is nothing to do, so a retried reset is harmless.
 */
import type { Adb } from '../adb';
import { sweepEngines } from '../adb/device';
import { restoreSettings, type PhoneRecords, type Restored } from './baseline';
import { requirePackage } from './install';
import type { AgentLog, Phone, PhoneTracker } from './phones';
import { HttpError, type Json } from './protocol';

/** What reset needs. */
export interface ResetDeps {
  adb: Adb;
  phones: PhoneTracker;
  records: PhoneRecords;
  log?: AgentLog;
}

/** `POST reset {packageName?}` → `{reset, ended, restored}`. */
export async function reset(deps: ResetDeps, phone: Phone, body: Json): Promise<Json> {
  if (body.packageName !== undefined && body.packageName !== null) {
    const pkg = requirePackage(body.packageName, phone);
    await deps.phones.shell(phone, `am force-stop ${pkg}`, `stopping ${pkg} on ${phone.id}`);
  }
  const ended = await endEngines(deps, phone);
  const record = await deps.records.read(phone.id);
  let restored: Restored[] = [];
  if (record) restored = await restoreSettings(deps.phones, phone, record.baseline);
  else deps.log?.('no settings baseline for phone; settings left as they are', { phone: phone.id });
  return { reset: true, ended, restored };
}

/**
 * Ends every engine on the phone and checks none is left; returns the pids ended. Used by reset and
 * by the preparation of a phone that (re)appeared.
 */
export async function endEngines(deps: Pick<ResetDeps, 'adb' | 'phones'>, phone: Phone): Promise<number[]> {
  const o = { signal: deps.phones.signal };
  let ended: number[];
  try {
    ended = await sweepEngines(deps.adb, phone.serial, o);
  } catch (err) {
    if (o.signal.aborted) throw err;
    await deps.phones.refresh();
    deps.phones.requireOnline(phone);
    throw new HttpError(502, `ending engines on ${phone.id} failed: ${(err as Error).message}`);
  }
  // sweepEngines (killOnPhone) has checked that every engine it found is gone, and throws otherwise.
  return ended;
}
