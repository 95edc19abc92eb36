/**
 * Generators of hostile task payloads for the fuzz tests: random JSON, valid tasks with fields
 * replaced by wrong types, huge strings, deep nesting, unicode, NUL and path or shell tricks, and
 * raw-text mutations (truncation, inserted bytes) of valid tasks.
 */
import fc from 'fast-check';

/** Strings that have broken parsers, paths and shells before. */
export const NASTY_STRINGS = [
  '',
  ' ',
  '../',
  '../../etc/passwd',
  '..',
  '.',
  '/',
  '/etc/passwd',
  'a/b',
  'a\\b',
  'a\0b',
  '\0',
  'line\nbreak',
  'cr\rlf',
  '$(touch /tmp/pwned)',
  '`id`',
  'a; rm -rf /',
  'a && reboot',
  '| cat /etc/shadow',
  '-rf',
  '--out=/etc',
  '%2e%2e%2f',
  'traversal:result:x',
  'device/x',
  '\u202e\u0041',
  '\ud800',
  '😀'.repeat(20),
  'x'.repeat(10_000),
  'é'.repeat(300),
  'http://169.254.169.254/latest/meta-data/',
  'file:///etc/passwd',
  'ftp://example.com/app.apk',
  'javascript:alert(1)',
  '__proto__',
  'constructor',
];

/** Any JSON-ish value, hostile strings included, nested up to a few levels. */
export const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...NASTY_STRINGS) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 80 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary-ascii', minLength: 200, maxLength: 5000 }) },
  { weight: 2, arbitrary: fc.oneof(fc.integer(), fc.double({ noNaN: true }), fc.boolean(), fc.constant(null)) },
  { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 3000 }).map((d) => nest(d)) },
);

/** An array nested `depth` levels deep. */
export function nest(depth: number): unknown {
  let v: unknown = 'deep';
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

/** A valid task whose device ids start with `prefix` (unique per run, so fuzzed devices never meet another suite's). */
export function validTask(prefix: string): fc.Arbitrary<Record<string, unknown>> {
  const id = fc.stringMatching(/^[a-z0-9]{1,10}$/);
  const device = id.map((s) => `${prefix}${s}`);
  return fc.record(
    {
      taskId: id.map((s) => `task-${s}`),
      deviceId: device,
      apkUrl: fc.constantFrom('http://127.0.0.1:9/app.apk', 'https://apk.example.com/a/b.apk?v=1'),
      packageName: fc.constantFrom('com.example.app', 'org.fuzz.x_1'),
      apkSha256: fc.stringMatching(/^[a-f0-9]{64}$/),
      mainActivity: fc.constantFrom('.Main', 'com.example.app.MainActivity'),
      traversal: fc.record({ durationSec: fc.integer({ min: 1, max: 3600 }) }),
    },
    { requiredKeys: ['taskId', 'deviceId', 'apkUrl', 'packageName', 'traversal'] },
  );
}

const FIELDS = [
  'taskId',
  'deviceId',
  'devices',
  'agentUrl',
  'apkUrl',
  'packageName',
  'apkSha256',
  'mainActivity',
  'traversal',
];

/**
 * A valid task with one to three mutations: a field replaced by a hostile value, a field removed,
 * an unknown field added, the device moved into `devices`, a nested traversal field spoiled.
 * Device id values stay under `prefix` or are invalid, so a started workflow is always ours.
 */
export function mutatedTask(prefix: string): fc.Arbitrary<Record<string, unknown>> {
  const deviceValue = fc.oneof(
    fc.stringMatching(/^[a-z0-9]{1,8}$/).map((s) => `${prefix}${s}`),
    fc.string({ unit: 'binary', maxLength: 30 }).map((s) => `${prefix}${s}`),
    fc.constantFrom(...NASTY_STRINGS.filter((s) => !/^[A-Za-z0-9_][A-Za-z0-9._-]*$/.test(s))),
    fc.oneof(
      fc.integer(),
      fc.constant(null),
      fc.jsonValue({ maxDepth: 2 }).filter((v) => typeof v !== 'string'),
    ),
  );
  const mutation = fc.oneof(
    fc.record({
      kind: fc.constant('set' as const),
      field: fc.constantFrom(...FIELDS.filter((f) => f !== 'deviceId' && f !== 'devices')),
      value: hostileValue,
    }),
    fc.record({ kind: fc.constant('device' as const), value: deviceValue }),
    fc.record({
      kind: fc.constant('devices' as const),
      value: fc.array(fc.oneof(deviceValue, fc.record({ deviceId: deviceValue, agentUrl: hostileValue })), {
        maxLength: 5,
      }),
    }),
    fc.record({ kind: fc.constant('delete' as const), field: fc.constantFrom(...FIELDS) }),
    fc.record({
      kind: fc.constant('unknown' as const),
      field: fc.string({ unit: 'binary', maxLength: 20 }),
      value: hostileValue,
    }),
    fc.record({
      kind: fc.constant('traversal' as const),
      field: fc.constantFrom('durationSec', 'extraArgs', 'other'),
      value: hostileValue,
    }),
  );
  return fc.tuple(validTask(prefix), fc.array(mutation, { minLength: 1, maxLength: 3 })).map(([task, mutations]) => {
    const t: Record<string, unknown> = { ...task };
    for (const m of mutations) {
      switch (m.kind) {
        case 'set':
          t[m.field] = m.value;
          break;
        case 'device':
          t.deviceId = m.value;
          break;
        case 'devices':
          delete t.deviceId;
          t.devices = m.value;
          break;
        case 'delete':
          delete t[m.field];
          break;
        case 'unknown':
          if (m.field !== 'deviceId' && m.field !== 'devices') t[m.field] = m.value;
          break;
        case 'traversal':
          t.traversal = { ...(typeof t.traversal === 'object' && t.traversal ? t.traversal : {}), [m.field]: m.value };
          break;
      }
    }
    return t;
  });
}

/** A payload whose outcome is known by construction, and the problem it must be dead-lettered with. */
export interface Garbage {
  raw: string;
  /** The only problem of the dead letter (`task: …`, or the first problem for random JSON). */
  problem: RegExp;
}

/** Never part of a valid task: not JSON whitespace, and not allowed unescaped inside a JSON string. */
const JSON_BREAKING = fc.constantFrom(
  ...Array.from({ length: 32 }, (_, i) => String.fromCharCode(i)).filter((c) => !'\t\n\r'.includes(c)),
);

/** True when `raw` is JSON of an object that names an apkUrl (anything else can never be a valid task). */
function namesApkUrl(raw: string): boolean {
  try {
    const v = JSON.parse(raw) as unknown;
    return typeof v === 'object' && v !== null && !Array.isArray(v) && 'apkUrl' in v;
  } catch {
    return false;
  }
}

const NOT_JSON = /^task: not JSON: /;
const NOT_AN_OBJECT = /^task: must be a JSON object, got /;
const TOO_BIG = /^task: must be at most 65536 bytes, got \d+$/;

/**
 * Raw text that is never a valid task, each with the problem it must be dead-lettered with: random
 * JSON text, a valid task cut short, with a character inserted or replaced that JSON never allows
 * there, wrapped in up to 40,000 arrays, up to 100,000 open brackets, oversized, behind a BOM,
 * followed by a NUL, or inside an array.
 */
export function garbage(prefix: string): fc.Arbitrary<Garbage> {
  const valid = validTask(prefix).map((t) => JSON.stringify(t));
  const bySize = (raw: string, small: RegExp): Garbage => ({
    raw,
    problem: Buffer.byteLength(raw) > 65536 ? TOO_BIG : small,
  });
  return fc.oneof(
    {
      weight: 2,
      arbitrary: fc
        .json({ maxDepth: 3 })
        .filter((raw) => !namesApkUrl(raw))
        .map((raw) => ({
          raw,
          problem: /^(task: must be a JSON object, got |task: unknown field|[A-Za-z.[\]0-9]+: )/,
        })),
    },
    {
      weight: 1,
      arbitrary: fc
        .string({ unit: 'binary', maxLength: 200 })
        .filter((raw) => !namesApkUrl(raw))
        .map((raw) => ({ raw, problem: /^(task: |[A-Za-z.[\]0-9]+: )/ })),
    },
    {
      weight: 3,
      arbitrary: fc.tuple(valid, fc.nat()).map(([s, n]) => ({ raw: s.slice(0, n % s.length), problem: NOT_JSON })),
    },
    {
      weight: 3,
      arbitrary: fc
        .tuple(valid, fc.nat(), JSON_BREAKING, fc.string({ unit: 'binary', maxLength: 2 }), fc.boolean())
        .map(([s, n, bad, more, replace]) => {
          const at = n % s.length;
          const ins = bad + more;
          return { raw: s.slice(0, at) + ins + s.slice(at + (replace ? ins.length : 0)), problem: NOT_JSON };
        }),
    },
    {
      weight: 1,
      arbitrary: fc
        .tuple(valid, fc.integer({ min: 1, max: 40_000 }))
        .map(([s, d]) => bySize('['.repeat(d) + s + ']'.repeat(d), NOT_AN_OBJECT)),
    },
    { weight: 1, arbitrary: fc.integer({ min: 1, max: 100_000 }).map((d) => bySize('['.repeat(d), NOT_JSON)) },
    {
      weight: 1,
      arbitrary: valid.map((s) => ({ raw: s.replace('}', `,"pad":"${'x'.repeat(70_000)}"}`), problem: TOO_BIG })),
    },
    { weight: 1, arbitrary: valid.map((s) => ({ raw: `\ufeff${s}`, problem: NOT_JSON })) },
    { weight: 1, arbitrary: valid.map((s) => ({ raw: `${s}\0`, problem: NOT_JSON })) },
    { weight: 1, arbitrary: valid.map((s) => ({ raw: `[${s}]`, problem: NOT_AN_OBJECT })) },
  );
}

/**
 * A valid task's JSON with one to three characters inserted or replaced, any characters: it may
 * still be valid (a letter inside an id, a space between tokens) or not.
 */
export function rawMutation(prefix: string): fc.Arbitrary<string> {
  return fc
    .tuple(
      validTask(prefix).map((t) => JSON.stringify(t)),
      fc.nat(),
      fc.string({ unit: 'binary', minLength: 1, maxLength: 3 }),
      fc.boolean(),
    )
    .map(([s, n, ins, replace]) => {
      const at = n % s.length;
      return s.slice(0, at) + ins + s.slice(at + (replace ? ins.length : 0));
    });
}

/** Every kind of payload, mixed; about a third are valid. */
export function anyPayload(prefix: string): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 3, arbitrary: validTask(prefix).map((t) => JSON.stringify(t)) },
    { weight: 4, arbitrary: mutatedTask(prefix).map((t) => JSON.stringify(t)) },
    { weight: 2, arbitrary: garbage(prefix).map((g) => g.raw) },
    { weight: 1, arbitrary: rawMutation(prefix) },
  );
}
