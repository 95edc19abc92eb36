/**
 * launchApp: a cold start measured by the activity manager. The app is stopped first so the start
 * is cold, and `am start -W` waits for the first frame and prints `TotalTime`, the figure Android's
 * own tooling reports as the launch time.
 */
import { ACTIVITY_PATTERN } from '../contract/ids';
import { HttpError, type Json } from './protocol';
import { isInstalled, requirePackage, type PackageDeps } from './install';
import type { Phone } from './phones';

/** Time `am start -W` may take, ms: a first start after install compiles and can be slow. */
const START_TIMEOUT_MS = 120_000;

/** `POST launchApp {packageName, activity?}` → `{coldStartMs, activity}`. */
export async function launchApp(deps: Pick<PackageDeps, 'phones'>, phone: Phone, body: Json): Promise<Json> {
  const pkg = requirePackage(body.packageName, phone);
  const given = body.activity;
  if (given !== undefined && given !== null && (typeof given !== 'string' || !ACTIVITY_PATTERN.test(given)))
    throw new HttpError(400, `"activity" must be an activity name like .MainActivity or com.x/.Main on ${phone.id}`);
  if (!(await isInstalled(deps, phone, pkg)))
    throw new HttpError(422, `package ${pkg} is not installed on device ${phone.id}; call installApp first`);
  await deps.phones.shell(phone, `am force-stop ${pkg}`, `stopping ${pkg} on ${phone.id}`);
  const activity = typeof given === 'string' && given ? given : await launcherActivity(deps, phone, pkg);
  const component = activity.includes('/') ? activity : `${pkg}/${activity}`;
  const r = await deps.phones.shell(phone, `am start -W -n ${component}`, `starting ${component} on ${phone.id}`, {
    timeoutMs: START_TIMEOUT_MS,
  });
  const out = `${r.stdout}\n${r.stderr}`;
  const error = /^Error.*$/m.exec(out);
  if (error) throw new HttpError(422, `start of ${component} on ${phone.id} failed: ${error[0]}`);
  const total = /^TotalTime:\s*(\d+)/m.exec(out);
  if (!total)
    throw new HttpError(
      502,
      `am start on ${phone.id} printed no TotalTime for ${component}: ${out.trim().slice(-300)}`,
    );
  return { coldStartMs: Number(total[1]), activity: component };
}

/**
 * The launcher activity: the last line of `cmd package resolve-activity --brief`, the way
 * `monkey -p` would pick it. A package without one needs `activity` in the call.
 */
async function launcherActivity(deps: Pick<PackageDeps, 'phones'>, phone: Phone, pkg: string): Promise<string> {
  const r = await deps.phones.shell(
    phone,
    `cmd package resolve-activity --brief -c android.intent.category.LAUNCHER ${pkg}`,
    `resolving the launcher activity of ${pkg} on ${phone.id}`,
  );
  const last = r.stdout.trim().split('\n').pop()?.trim() ?? '';
  if (!/^[A-Za-z0-9_.$]+\/[A-Za-z0-9_.$]+$/.test(last))
    throw new HttpError(
      422,
      `package ${pkg} on ${phone.id} has no launcher activity (resolve-activity said ${JSON.stringify(last)}); pass "activity"`,
    );
  return last;
}
