/**
 * The task schema's messages: every problem names the field and the rule it broke, unknown fields
 * are listed by name, and all problems of a task are reported at once.
 */
import assert from 'node:assert/strict';
import { loadConfig } from '../src/config';
import { InvalidTaskError } from '../src/contract/errors';
import { extraArgsPolicyFor } from '../src/contract/extra-args';
import type { AgentDirectory } from '../src/device-registry';
import { MAX_TASK_BYTES, parseTask, TASK_SCHEMA } from '../src/starter/task';
import { UrlPolicy } from '../src/net/url-policy';
import { WELL_FORMED_TASK as good } from './support/device-tasks';

const agents: AgentDirectory = { agentFor: (d) => (d.startsWith('lab-') ? 'http://10.0.0.5:7301' : undefined) };
const policy = new UrlPolicy('10.0.0.0/8');
/** The default DT_TRAVERSAL_EXTRA_ARGS (none) against the default command template. */
const defaultExtraArgs = extraArgsPolicyFor(loadConfig({}));

function problems(raw: unknown): string[] {
  try {
    parseTask(typeof raw === 'string' || raw instanceof Uint8Array ? raw : JSON.stringify(raw), agents, {
      policy,
      extraArgs: defaultExtraArgs,
    });
  } catch (err) {
    assert.ok(err instanceof InvalidTaskError);
    return err.problems;
  }
  assert.fail('the task was accepted');
}

/** Bad input, and the problem it must produce (also listed in docs/SECURITY.md). */
export const SCHEMA_CASES: [string, unknown, RegExp][] = [
  ['truncated JSON', '{"taskId": "t-1", ', /^task: not JSON: /],
  ['a JSON array', '[1,2]', /^task: must be a JSON object, got an array/],
  ['a JSON string', '"task"', /^task: must be a JSON object, got "task"/],
  ['oversized payload', `{"taskId":"${'x'.repeat(MAX_TASK_BYTES)}"}`, /^task: must be at most 65536 bytes/],
  ['missing apkUrl', { ...good, apkUrl: undefined }, /^apkUrl: is required/],
  ['taskId as a number', { ...good, taskId: 42 }, /^taskId: must be a string .*got a number/],
  [
    'durationSec as a string',
    { ...good, traversal: { durationSec: '60' } },
    /^traversal\.durationSec: must be a whole number of seconds from 1 to 604800 \(7 days\), got "60"/,
  ],
  [
    'negative duration',
    { ...good, traversal: { durationSec: -1 } },
    /^traversal\.durationSec: must be a whole number of seconds from 1 to 604800 \(7 days\), got -1$/,
  ],
  ['zero duration', { ...good, traversal: { durationSec: 0 } }, /^traversal\.durationSec: must be .*, got 0$/],
  [
    'duration of 1e-7 s',
    '{"taskId":"t-1","deviceId":"lab-1","apkUrl":"https://apk.example.com/a.apk","packageName":"com.example.app","traversal":{"durationSec":1e-7}}',
    /^traversal\.durationSec: must be a whole number of seconds .*, got 1e-7$/,
  ],
  [
    'fractional duration',
    { ...good, traversal: { durationSec: 1.5 } },
    /^traversal\.durationSec: must be .*, got 1\.5$/,
  ],
  [
    'duration over 7 days',
    { ...good, traversal: { durationSec: 604801 } },
    /^traversal\.durationSec: must be .*, got 604801$/,
  ],
  [
    'huge duration',
    { ...good, traversal: { durationSec: 1e300 } },
    /^traversal\.durationSec: must be .*, got 1e\+300$/,
  ],
  [
    'extraArgs with the default (empty) DT_TRAVERSAL_EXTRA_ARGS',
    { ...good, traversal: { durationSec: 1, extraArgs: ['--faults-once', '/tmp/x'] } },
    /^traversal\.extraArgs\[0\]: "--faults-once" is not allowed by DT_TRAVERSAL_EXTRA_ARGS \(allowed: none\)$/,
  ],
  [
    'extraArgs naming an option the runner sets',
    { ...good, traversal: { durationSec: 1, extraArgs: ['--device', 'other'] } },
    /^traversal\.extraArgs\[0\]: "--device" sets --device, which the runner sets itself/,
  ],
  [
    'invalid UTF-8 inside a field',
    Buffer.concat([Buffer.from('{"taskId":"t-1","deviceId":"lab-'), Buffer.from([0xff]), Buffer.from('"}')]),
    /^task: is not valid UTF-8 \(first bad byte at offset 32\); JSON text must be UTF-8 \(RFC 8259\)$/,
  ],
  [
    'extraArgs with a newline',
    { ...good, traversal: { durationSec: 1, extraArgs: ['ok', 'a\nb'] } },
    /^traversal\.extraArgs\[1\]: must be a string .* without NUL or line breaks/,
  ],
  [
    '33 extraArgs',
    { ...good, traversal: { durationSec: 1, extraArgs: Array(33).fill('x') } },
    /^traversal\.extraArgs: must be an array of at most 32 strings/,
  ],
  ['unknown fields', { ...good, priority: 1, 'we\u0000ird': 2 }, /^task: unknown field\(s\) priority, "we\\u0000ird"/],
  [
    'unknown traversal field',
    { ...good, traversal: { durationSec: 1, shell: 'rm -rf /' } },
    /^traversal: unknown field\(s\) shell/,
  ],
  ['bad sha256', { ...good, apkSha256: 'abc' }, /^apkSha256: must be 64 hexadecimal characters, got "abc"/],
  ['deviceId and devices', { ...good, devices: ['lab-2'] }, /^deviceId: give either deviceId or devices, not both/],
  ['empty devices', { ...good, deviceId: undefined, devices: [] }, /^devices: must list 1 to 200 devices, got 0/],
  [
    'duplicate devices',
    { ...good, deviceId: undefined, devices: ['lab-1', 'lab-1'] },
    /^devices: lists a device more than once/,
  ],
  ['device without an agent', { ...good, deviceId: 'nowhere-1' }, /^agentUrl: no agent known for device nowhere-1/],
  [
    'apkUrl with credentials',
    { ...good, apkUrl: 'https://u:p@apk.example.com/a.apk' },
    /^apkUrl: must not carry credentials/,
  ],
  [
    'apkUrl of 3000 characters',
    { ...good, apkUrl: `https://a.example.com/${'x'.repeat(3000)}` },
    /^apkUrl: must be at most 2048 characters/,
  ],
  ['relative apkUrl', { ...good, apkUrl: '/a.apk' }, /^apkUrl: must be an absolute URL/],
];

describe('task schema', () => {
  it('accepts a well-formed task', () => {
    const [req] = parseTask(JSON.stringify(good), agents, { policy });
    assert.equal(req!.agentUrl, 'http://10.0.0.5:7301');
  });

  it('accepts the same task as UTF-8 bytes, multi-byte characters included', () => {
    const apkUrl = 'https://apk.example.com/äpp-😀.apk';
    const [req] = parseTask(Buffer.from(JSON.stringify({ ...good, apkUrl })), agents, { policy });
    assert.equal(req!.apkUrl, apkUrl);
  });

  it('accepts the shortest and the longest duration, as whole seconds', () => {
    for (const durationSec of [1, 604800]) {
      const [req] = parseTask(JSON.stringify({ ...good, traversal: { durationSec } }), agents, { policy });
      assert.equal(req!.traversal.durationSec, durationSec);
    }
  });

  for (const [what, raw, rule] of SCHEMA_CASES) {
    it(`reports ${what} by field and rule`, () => {
      const ps = problems(raw);
      assert.ok(
        ps.some((p) => rule.test(p)),
        ps.join(' | '),
      );
    });
  }

  it('reports every problem of a task at once', () => {
    const ps = problems({
      taskId: '../x',
      deviceId: 'a/b',
      apkUrl: 'ftp://x/a.apk',
      packageName: 'nodots',
      traversal: 5,
      extra: true,
    });
    for (const field of ['task', 'taskId', 'deviceId', 'apkUrl', 'packageName', 'traversal']) {
      assert.ok(
        ps.some((p) => p.startsWith(`${field}: `)),
        `${field} missing from ${ps.join(' | ')}`,
      );
    }
  });

  it('declares a rule for every field it accepts', () => {
    for (const [field, spec] of Object.entries(TASK_SCHEMA)) assert.ok(spec.rule.length > 5, field);
  });
});
