/**
 * Parsing and validation of the task JSON that producers push into Redis.
 * Identifiers are checked against strict patterns here, before they reach a file path,
 * a URL, a Redis key, a workflow id or a command's argv.
 */
import { InvalidTaskError } from './errors';
import type { TraversalRequest } from './messages';

/** Task ids: letters, digits, dot, dash, underscore; 1–128 characters; no leading dot. */
export const TASK_ID_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
/** Device ids: same alphabet, 1–64 characters. */
export const DEVICE_ID_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$/;
/** Android application ids: at least two dot-separated Java identifiers. */
export const PACKAGE_PATTERN = /^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+$/;
/** Activity names as given to `am start` (relative `.Main` or fully qualified). */
export const ACTIVITY_PATTERN = /^[A-Za-z0-9_.$/]{1,255}$/;
const SHA256_PATTERN = /^[A-Fa-f0-9]{64}$/;
const MAX_URL_LENGTH = 2048;
const MAX_DURATION_SEC = 7 * 24 * 3600;
const MAX_DEVICES = 200;
const MAX_EXTRA_ARGS = 32;
/** Largest raw task accepted, bytes; anything larger is dead-lettered unparsed. */
export const MAX_TASK_BYTES = 64 * 1024;

const TOP_FIELDS = new Set([
  'taskId',
  'deviceId',
  'devices',
  'agentUrl',
  'apkUrl',
  'packageName',
  'apkSha256',
  'mainActivity',
  'traversal',
]);
const TRAVERSAL_FIELDS = new Set(['durationSec', 'extraArgs']);

/** Where device ids are looked up when a task names no agent. */
export interface AgentDirectory {
  /** Agent base URL for a device, or undefined when unknown. */
  agentFor(deviceId: string): string | undefined;
}

/** Checks a URL is absolute http(s) and reasonably short; returns the problem or undefined. */
export function checkHttpUrl(field: string, value: unknown): string | undefined {
  if (typeof value !== 'string') return `${field} must be a string URL`;
  if (value.length > MAX_URL_LENGTH) return `${field} is longer than ${MAX_URL_LENGTH} characters`;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return `${field} is not a valid URL`;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return `${field} must use http or https, not ${url.protocol}`;
  if (url.username || url.password) return `${field} must not carry credentials`;
  return undefined;
}

function checkId(field: string, value: unknown, pattern: RegExp): string | undefined {
  if (typeof value !== 'string') return `${field} must be a string`;
  if (!pattern.test(value)) return `${field} must match ${pattern.source}`;
  return undefined;
}

/**
 * Parses one raw Redis item into one request per device.
 * Throws InvalidTaskError naming every problem found; never throws anything else.
 */
export function parseTask(raw: string, agents: AgentDirectory): TraversalRequest[] {
  if (Buffer.byteLength(raw) > MAX_TASK_BYTES) throw new InvalidTaskError([`task is larger than ${MAX_TASK_BYTES} bytes`]);
  let doc: unknown;
  try {
    doc = JSON.parse(raw);
  } catch (err) {
    throw new InvalidTaskError([`not JSON: ${(err as Error).message}`]);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    throw new InvalidTaskError(['task must be a JSON object']);
  }
  const t = doc as Record<string, unknown>;
  const problems: string[] = [];
  const unknown = Object.keys(t).filter((k) => !TOP_FIELDS.has(k));
  if (unknown.length) problems.push(`unknown field(s): ${unknown.slice(0, 10).join(', ')}`);

  const idProblem = checkId('taskId', t.taskId, TASK_ID_PATTERN);
  if (idProblem) problems.push(idProblem);
  const urlProblem = checkHttpUrl('apkUrl', t.apkUrl);
  if (urlProblem) problems.push(urlProblem);
  const pkgProblem = checkId('packageName', t.packageName, PACKAGE_PATTERN);
  if (pkgProblem) problems.push(pkgProblem);
  else if ((t.packageName as string).length > 255) problems.push('packageName is longer than 255 characters');
  if (t.apkSha256 !== undefined && (typeof t.apkSha256 !== 'string' || !SHA256_PATTERN.test(t.apkSha256))) {
    problems.push('apkSha256 must be 64 hex characters');
  }
  if (t.mainActivity !== undefined) {
    const p = checkId('mainActivity', t.mainActivity, ACTIVITY_PATTERN);
    if (p) problems.push(p);
  }
  if (t.agentUrl !== undefined) {
    const p = checkHttpUrl('agentUrl', t.agentUrl);
    if (p) problems.push(p);
  }

  // Traversal settings.
  let durationSec = 0;
  let extraArgs: string[] | undefined;
  if (typeof t.traversal !== 'object' || t.traversal === null || Array.isArray(t.traversal)) {
    problems.push('traversal must be an object like {"durationSec": 60}');
  } else {
    const tr = t.traversal as Record<string, unknown>;
    const unknownTr = Object.keys(tr).filter((k) => !TRAVERSAL_FIELDS.has(k));
    if (unknownTr.length) problems.push(`unknown field(s) in traversal: ${unknownTr.slice(0, 10).join(', ')}`);
    if (typeof tr.durationSec !== 'number' || !Number.isFinite(tr.durationSec)) {
      problems.push('traversal.durationSec must be a number of seconds');
    } else if (tr.durationSec < 0 || tr.durationSec > MAX_DURATION_SEC) {
      problems.push(`traversal.durationSec must be between 0 and ${MAX_DURATION_SEC}`);
    } else {
      durationSec = tr.durationSec;
    }
    if (tr.extraArgs !== undefined) {
      if (!Array.isArray(tr.extraArgs) || tr.extraArgs.length > MAX_EXTRA_ARGS) {
        problems.push(`traversal.extraArgs must be an array of at most ${MAX_EXTRA_ARGS} strings`);
      } else if (!tr.extraArgs.every((a) => typeof a === 'string' && a.length <= 256 && !/[\0\r\n]/.test(a))) {
        problems.push('traversal.extraArgs entries must be strings of at most 256 characters without NUL or newlines');
      } else {
        extraArgs = tr.extraArgs as string[];
      }
    }
  }

  // Devices: exactly one of deviceId or devices[]; entries are ids or {deviceId, agentUrl}.
  const targets: { deviceId: string; agentUrl?: string }[] = [];
  if (t.deviceId !== undefined && t.devices !== undefined) {
    problems.push('give either deviceId or devices, not both');
  } else if (t.deviceId !== undefined) {
    const p = checkId('deviceId', t.deviceId, DEVICE_ID_PATTERN);
    if (p) problems.push(p);
    else targets.push({ deviceId: t.deviceId as string });
  } else if (Array.isArray(t.devices)) {
    if (t.devices.length === 0 || t.devices.length > MAX_DEVICES) {
      problems.push(`devices must list 1 to ${MAX_DEVICES} devices`);
    } else {
      t.devices.forEach((d: unknown, i: number) => {
        if (typeof d === 'string') {
          const p = checkId(`devices[${i}]`, d, DEVICE_ID_PATTERN);
          if (p) problems.push(p);
          else targets.push({ deviceId: d });
        } else if (typeof d === 'object' && d !== null && !Array.isArray(d)) {
          const e = d as Record<string, unknown>;
          const extra = Object.keys(e).filter((k) => k !== 'deviceId' && k !== 'agentUrl');
          if (extra.length) problems.push(`unknown field(s) in devices[${i}]: ${extra.slice(0, 5).join(', ')}`);
          const p = checkId(`devices[${i}].deviceId`, e.deviceId, DEVICE_ID_PATTERN);
          if (p) problems.push(p);
          const u = e.agentUrl === undefined ? undefined : checkHttpUrl(`devices[${i}].agentUrl`, e.agentUrl);
          if (u) problems.push(u);
          if (!p && !u) targets.push({ deviceId: e.deviceId as string, agentUrl: e.agentUrl as string | undefined });
        } else {
          problems.push(`devices[${i}] must be a device id or {"deviceId","agentUrl"}`);
        }
      });
      const ids = targets.map((x) => x.deviceId);
      if (new Set(ids).size !== ids.length) problems.push('devices lists a device more than once');
    }
  } else if (t.devices !== undefined) {
    problems.push('devices must be an array');
  } else {
    problems.push('deviceId (or devices) is required');
  }

  // Every device needs an agent: from the task, the registry, or the default.
  for (const target of targets) {
    const agentUrl = target.agentUrl ?? (t.agentUrl as string | undefined) ?? agents.agentFor(target.deviceId);
    if (!agentUrl) problems.push(`no agent known for device ${target.deviceId}: give agentUrl or add it to the device registry`);
    target.agentUrl = agentUrl;
  }

  if (problems.length) throw new InvalidTaskError(problems);
  return targets.map((target) => ({
    taskId: t.taskId as string,
    deviceId: target.deviceId,
    agentUrl: (target.agentUrl as string).replace(/\/+$/, ''),
    apkUrl: t.apkUrl as string,
    packageName: t.packageName as string,
    apkSha256: typeof t.apkSha256 === 'string' ? t.apkSha256.toLowerCase() : undefined,
    mainActivity: t.mainActivity as string | undefined,
    traversal: { durationSec, ...(extraArgs ? { extraArgs } : {}) },
  }));
}
