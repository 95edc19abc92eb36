/**
 * Parsing and validation of the task JSON that producers push into Redis. Tasks come from a shared
 * Redis that many systems write to, so every field is checked against a declared schema (type,
 * length, format) and every problem is reported as `<field>: <rule>`. Identifiers are checked
 * against strict patterns here, before they reach a file path, a URL, a Redis key, a workflow id or
 * a command's argv.
 *
 * A task is JSON text, which is UTF-8 (RFC 8259): an item with any invalid byte sequence, wherever
 * it sits, is refused whole. Decoding it with replacement characters would run a task other than
 * the one pushed, and the item could no longer be matched byte for byte in Redis.
 */
import type { AgentDirectory } from '../device-registry';
import { InvalidTaskError } from '../contract/errors';
import {
  ACTIVITY_PATTERN,
  checkHttpUrl,
  checkIdentifier,
  ID_RULES,
  MAX_URL_LENGTH,
  preview,
  str,
} from '../contract/ids';
import { ExtraArgsPolicy } from '../contract/extra-args';
import type { TraversalRequest } from '../contract/messages';
import { UrlPolicy } from '../net/url-policy';

const SHA256_PATTERN = /^[A-Fa-f0-9]{64}$/;
/** Shortest traversal a task may ask for, seconds. */
export const MIN_DURATION_SEC = 1;
/** Longest traversal a task may ask for, seconds (7 days). */
export const MAX_DURATION_SEC = 7 * 24 * 3600;
const MAX_DEVICES = 200;
const MAX_EXTRA_ARGS = 32;
const MAX_EXTRA_ARG_LENGTH = 256;
/** Largest raw task accepted, bytes; anything larger is dead-lettered unparsed. */
export const MAX_TASK_BYTES = 64 * 1024;
/** At most this many problems are listed; the rest are counted. */
const MAX_PROBLEMS = 20;

/** Options of parseTask. */
export interface ParseOptions {
  /**
   * URL policy of this deployment: apkUrl and agentUrl literals are prechecked against it, and a
   * task may name an agent that is not in the directory only when its host is on the allow-list.
   * Without it only the never-allowed addresses (metadata, link-local) are refused here and agents
   * must come from the directory.
   */
  policy?: UrlPolicy;
  /** Allow-list of traversal.extraArgs (DT_TRAVERSAL_EXTRA_ARGS). Without it no extra argument is allowed. */
  extraArgs?: ExtraArgsPolicy;
}

/** A field name from the payload, made safe to print. */
function fieldName(k: string): string {
  return /^[A-Za-z0-9_]{1,40}$/.test(k) ? k : preview(k);
}

/** Only the never-allowed rules; used when no policy is given. */
const BASE_POLICY = new UrlPolicy('*');
/** The default allow-list of extra arguments: none. */
const NO_EXTRA_ARGS = new ExtraArgsPolicy('', []);
/** Decodes task bytes; throws on any invalid sequence instead of substituting U+FFFD. */
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * Offset of the first byte of the first ill-formed UTF-8 sequence (Unicode 15, table 3-7), or -1
 * when the bytes are valid UTF-8. Overlong forms, surrogates and code points above U+10FFFF count.
 */
export function firstInvalidUtf8(bytes: Uint8Array): number {
  const cont = (i: number, lo = 0x80, hi = 0xbf) => i < bytes.length && bytes[i]! >= lo && bytes[i]! <= hi;
  for (let i = 0; i < bytes.length;) {
    const b = bytes[i]!;
    let n: number;
    if (b < 0x80) n = 1;
    else if (b >= 0xc2 && b <= 0xdf) n = cont(i + 1) ? 2 : 0;
    else if (b >= 0xe0 && b <= 0xef) {
      const [lo, hi] = b === 0xe0 ? [0xa0, 0xbf] : b === 0xed ? [0x80, 0x9f] : [0x80, 0xbf];
      n = cont(i + 1, lo, hi) && cont(i + 2) ? 3 : 0;
    } else if (b >= 0xf0 && b <= 0xf4) {
      const [lo, hi] = b === 0xf0 ? [0x90, 0xbf] : b === 0xf4 ? [0x80, 0x8f] : [0x80, 0xbf];
      n = cont(i + 1, lo, hi) && cont(i + 2) && cont(i + 3) ? 4 : 0;
    } else n = 0;
    if (n === 0) return i;
    i += n;
  }
  return -1;
}

/** The text of a raw task; throws InvalidTaskError when it is too large or not UTF-8. */
function taskText(raw: string | Uint8Array): string {
  const bytes = typeof raw === 'string' ? Buffer.byteLength(raw) : raw.byteLength;
  if (bytes > MAX_TASK_BYTES)
    throw new InvalidTaskError([`task: must be at most ${MAX_TASK_BYTES} bytes, got ${bytes}`]);
  if (typeof raw === 'string') return raw;
  try {
    return UTF8.decode(raw);
  } catch {
    throw new InvalidTaskError([
      `task: is not valid UTF-8 (first bad byte at offset ${firstInvalidUtf8(raw)}); JSON text must be UTF-8 (RFC 8259)`,
    ]);
  }
}

function checkUrl(field: string, value: unknown, policy: UrlPolicy): string | undefined {
  const p = checkHttpUrl(field, value);
  if (p) return p;
  const refused = policy.precheck(value as string);
  return refused ? `${field}: refused by the URL policy: ${refused}` : undefined;
}

/** The schema of one task: every accepted top-level field, its rule and whether it is required. */
export const TASK_SCHEMA: Record<string, { required?: boolean; rule: string }> = {
  taskId: { required: true, rule: ID_RULES.taskId.rule },
  deviceId: { rule: `${ID_RULES.deviceId.rule}; exactly one of deviceId or devices` },
  devices: { rule: `1-${MAX_DEVICES} distinct device ids or {"deviceId","agentUrl"} objects` },
  agentUrl: {
    rule: `http(s) URL of at most ${MAX_URL_LENGTH} characters, an agent of the registry or on DT_ALLOWED_HOSTS`,
  },
  apkUrl: {
    required: true,
    rule: `http(s) URL of at most ${MAX_URL_LENGTH} characters, no credentials, allowed by the URL policy`,
  },
  packageName: { required: true, rule: ID_RULES.packageName.rule },
  apkSha256: { rule: '64 hexadecimal characters' },
  mainActivity: { rule: "1-255 letters, digits, '.', '_', '$' or '/'" },
  traversal: {
    required: true,
    rule: `{"durationSec": whole seconds ${MIN_DURATION_SEC}-${MAX_DURATION_SEC}, "extraArgs"?: up to ${MAX_EXTRA_ARGS} strings allowed by DT_TRAVERSAL_EXTRA_ARGS}`,
  },
};
const TRAVERSAL_FIELDS = new Set(['durationSec', 'extraArgs']);
const DEVICE_ENTRY_FIELDS = new Set(['deviceId', 'agentUrl']);

function labelled(field: string, problem: string | undefined): string | undefined {
  return problem ? `${field}: ${problem}` : undefined;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function unknownFields(
  where: string,
  obj: Record<string, unknown>,
  allowed: { has(k: string): boolean },
): string | undefined {
  const extra = Object.keys(obj).filter((k) => !allowed.has(k));
  if (!extra.length) return undefined;
  const shown = extra.slice(0, 5).map(fieldName).join(', ');
  return `${where}: unknown field(s) ${shown}${extra.length > 5 ? ` and ${extra.length - 5} more` : ''}`;
}

function sameAgent(a: string, b: string): boolean {
  try {
    const x = new URL(a);
    const y = new URL(b);
    return x.origin === y.origin && x.pathname.replace(/\/+$/, '') === y.pathname.replace(/\/+$/, '');
  } catch {
    return false;
  }
}

/**
 * Parses one raw Redis item (its bytes, or text already decoded) into one request per device.
 * Throws InvalidTaskError naming every problem found (`<field>: <rule>`); never throws anything else.
 */
export function parseTask(
  raw: string | Uint8Array,
  agents: AgentDirectory,
  opts: ParseOptions = {},
): TraversalRequest[] {
  try {
    return parse(raw, agents, opts);
  } catch (err) {
    if (err instanceof InvalidTaskError) throw err;
    // A validator bug must still dead-letter the task, not crash the starter.
    throw new InvalidTaskError([
      `task: could not be validated (${String((err as Error)?.message ?? err).slice(0, 200)})`,
    ]);
  }
}

function parse(raw: string | Uint8Array, agents: AgentDirectory, opts: ParseOptions): TraversalRequest[] {
  const policy = opts.policy ?? BASE_POLICY;
  if (typeof raw !== 'string' && !(raw instanceof Uint8Array))
    throw new InvalidTaskError(['task: must be JSON text or its UTF-8 bytes']);
  const text = taskText(raw);
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new InvalidTaskError([`task: not JSON: ${(err as Error).message.slice(0, 200)}`]);
  }
  if (!isObject(doc)) throw new InvalidTaskError([`task: must be a JSON object, got ${preview(doc)}`]);
  const t = doc;
  const problems: string[] = [];
  const add = (p: string | undefined) => {
    if (p) problems.push(p);
  };

  add(unknownFields('task', t, new Set(Object.keys(TASK_SCHEMA))));
  for (const [field, spec] of Object.entries(TASK_SCHEMA)) {
    if (spec.required && t[field] === undefined) problems.push(`${field}: is required (${spec.rule})`);
  }
  if (t.taskId !== undefined) add(checkIdentifier('taskId', t.taskId));
  if (t.apkUrl !== undefined) add(checkUrl('apkUrl', t.apkUrl, policy));
  if (t.packageName !== undefined) add(checkIdentifier('packageName', t.packageName));
  if (t.apkSha256 !== undefined)
    add(labelled('apkSha256', str(SHA256_PATTERN, TASK_SCHEMA.apkSha256!.rule)(t.apkSha256)));
  if (t.mainActivity !== undefined)
    add(labelled('mainActivity', str(ACTIVITY_PATTERN, TASK_SCHEMA.mainActivity!.rule)(t.mainActivity)));
  // Agents: only the never-allowed rules here; whether a task may name this agent at all is decided
  // per device below (registry or allow-list), which covers private addresses.
  if (t.agentUrl !== undefined) add(checkUrl('agentUrl', t.agentUrl, BASE_POLICY));

  // Traversal settings.
  let durationSec = 0;
  let extraArgs: string[] | undefined;
  if (t.traversal !== undefined && !isObject(t.traversal)) {
    problems.push(`traversal: must be an object like {"durationSec": 60}, got ${preview(t.traversal)}`);
  } else if (isObject(t.traversal)) {
    const tr = t.traversal;
    add(unknownFields('traversal', tr, TRAVERSAL_FIELDS));
    // Whole seconds only: the value reaches the tool's argv as text, and 1e-7 or 0.5 there is
    // refused by a real tool on every attempt (or read as something else).
    const rule = `a whole number of seconds from ${MIN_DURATION_SEC} to ${MAX_DURATION_SEC} (7 days)`;
    if (typeof tr.durationSec !== 'number' || !Number.isInteger(tr.durationSec)) {
      const got = typeof tr.durationSec === 'number' ? String(tr.durationSec) : preview(tr.durationSec);
      problems.push(`traversal.durationSec: must be ${rule}, got ${got}`);
    } else if (tr.durationSec < MIN_DURATION_SEC || tr.durationSec > MAX_DURATION_SEC) {
      problems.push(`traversal.durationSec: must be ${rule}, got ${tr.durationSec}`);
    } else {
      durationSec = tr.durationSec;
    }
    if (tr.extraArgs !== undefined) {
      if (!Array.isArray(tr.extraArgs) || tr.extraArgs.length > MAX_EXTRA_ARGS) {
        problems.push(`traversal.extraArgs: must be an array of at most ${MAX_EXTRA_ARGS} strings`);
      } else {
        const bad = tr.extraArgs.findIndex(
          (a) => typeof a !== 'string' || a.length > MAX_EXTRA_ARG_LENGTH || /[\0\r\n]/.test(a),
        );
        if (bad >= 0) {
          problems.push(
            `traversal.extraArgs[${bad}]: must be a string of at most ${MAX_EXTRA_ARG_LENGTH} characters without NUL or line breaks, got ${preview(tr.extraArgs[bad])}`,
          );
        } else {
          const refused = (opts.extraArgs ?? NO_EXTRA_ARGS).check(tr.extraArgs as string[]);
          if (refused) problems.push(refused);
          else extraArgs = tr.extraArgs as string[];
        }
      }
    }
  }

  // Devices: exactly one of deviceId or devices[]; entries are ids or {deviceId, agentUrl}.
  const targets: { deviceId: string; agentUrl?: string; field: string }[] = [];
  if (t.deviceId !== undefined && t.devices !== undefined) {
    problems.push('deviceId: give either deviceId or devices, not both');
  } else if (t.deviceId !== undefined) {
    const p = checkIdentifier('deviceId', t.deviceId);
    if (p) problems.push(p);
    else targets.push({ deviceId: t.deviceId as string, field: 'agentUrl' });
  } else if (Array.isArray(t.devices)) {
    if (t.devices.length === 0 || t.devices.length > MAX_DEVICES) {
      problems.push(`devices: must list 1 to ${MAX_DEVICES} devices, got ${t.devices.length}`);
    } else {
      t.devices.forEach((d: unknown, i: number) => {
        if (typeof d === 'string') {
          const p = checkIdentifier('deviceId', d, `devices[${i}]`);
          if (p) problems.push(p);
          else targets.push({ deviceId: d, field: 'agentUrl' });
        } else if (isObject(d)) {
          add(unknownFields(`devices[${i}]`, d, DEVICE_ENTRY_FIELDS));
          const p = checkIdentifier('deviceId', d.deviceId, `devices[${i}].deviceId`);
          add(p);
          const u = d.agentUrl === undefined ? undefined : checkUrl(`devices[${i}].agentUrl`, d.agentUrl, BASE_POLICY);
          add(u);
          if (!p && !u)
            targets.push({
              deviceId: d.deviceId as string,
              agentUrl: d.agentUrl as string | undefined,
              field: `devices[${i}].agentUrl`,
            });
        } else {
          problems.push(`devices[${i}]: must be a device id or {"deviceId","agentUrl"}, got ${preview(d)}`);
        }
      });
      const ids = targets.map((x) => x.deviceId);
      if (new Set(ids).size !== ids.length) problems.push('devices: lists a device more than once');
    }
  } else if (t.devices !== undefined) {
    problems.push(`devices: must be an array, got ${preview(t.devices)}`);
  } else {
    problems.push('deviceId: is required (or devices)');
  }

  // Every device needs an agent: from the task, the registry, or the default. A task may name an
  // agent only when the directory knows it or its host is on the allow-list: otherwise any producer
  // could make the worker send requests (and the install URL) to a host of its choice.
  const topAgent =
    typeof t.agentUrl === 'string' && !problems.some((p) => p.startsWith('agentUrl:')) ? t.agentUrl : undefined;
  for (const target of targets) {
    const named = target.agentUrl ?? topAgent;
    const field = target.agentUrl !== undefined ? target.field : 'agentUrl';
    if (named !== undefined) {
      const directory = agents.agentFor(target.deviceId);
      const known = agents.knows?.(named) === true || (directory !== undefined && sameAgent(directory, named));
      if (!known && !(opts.policy?.hostAllowListed(new URL(named).hostname) ?? false)) {
        const msg = `${field}: ${preview(named)} is not an agent of the device registry and its host is not on DT_ALLOWED_HOSTS`;
        if (!problems.includes(msg)) problems.push(msg);
      }
    }
    const agentUrl = named ?? agents.agentFor(target.deviceId);
    if (!agentUrl)
      problems.push(
        `agentUrl: no agent known for device ${target.deviceId}; give agentUrl or add the device to the registry`,
      );
    target.agentUrl = agentUrl;
  }

  if (problems.length) {
    const shown = problems.slice(0, MAX_PROBLEMS);
    if (problems.length > MAX_PROBLEMS) shown.push(`task: ${problems.length - MAX_PROBLEMS} more problem(s)`);
    throw new InvalidTaskError(shown);
  }
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
