/**
 * JUnit XML of a task: built from results shaped like real ones (repeats without frames, an ANR, a
 * failed, a cancelled and a pending device, hostile text) and validated by a real `xmllint` against
 * junit-10.xsd, the schema of Jenkins' xunit plugin, which scripts/setup.sh fetches into .tools/.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Finding, TraversalResult } from '../src/contract/messages';
import { JUNIT_XSD, requireJunitSchema, xmllint } from './support/junit-schema';
import { junitXml, junitSeconds, shorten, xmlAttr, xmlEscape, xmlSafe } from '../src/findings/junit';

const PKG = 'com.example.shop';
const TASK = 'task-2024-05-01.1';

// Every kind of text XML makes hard: markup, both quotes, a CDATA end, C0 controls (NUL, BEL, ESC),
// a tab, a CR, an emoji (a surrogate pair) and a lone surrogate.
const NASTY = 'a < b && "c" \'d\' ]]> e\u0000f\u0007g\u001b[31mh\ti\r\nj 🐛 k\uD800l';

const NPE_FRAMES = [
  'com.example.shop.cart.CartPresenter.total(CartPresenter.java:88)',
  'com.example.shop.cart.CartFragment.onResume(CartFragment.java:41)',
  'android.app.Fragment.performResume(Fragment.java:2501)',
];

/** A finding as the runner reports it; repeats get no message and no frames. */
function finding(over: Partial<Finding> & Pick<Finding, 'signature'>): Finding {
  return {
    kind: 'crash',
    exception: 'java.lang.NullPointerException',
    message: '',
    frames: [],
    attempt: 1,
    foundAt: '2024-05-01T10:01:00.000Z',
    ...over,
  };
}

/** A published result of one device. */
function result(deviceId: string, over: Partial<TraversalResult> = {}): TraversalResult {
  const findings = over.findings ?? [];
  return {
    taskId: TASK,
    deviceId,
    packageName: PKG,
    apkUrl: 'https://apks.example/shop.apk',
    status: 'completed',
    timings: {},
    apk: { sha256: 'ab'.repeat(32), size: 1234, fromCache: true },
    screens: 17,
    crashes: findings.filter((f) => f.kind === 'crash').length,
    anrs: findings.filter((f) => f.kind === 'anr').length,
    findings,
    reportUrl: `https://reports.example/${TASK}/${deviceId}/report.tar.gz`,
    startedAt: '2024-05-01T10:00:00.000Z',
    finishedAt: '2024-05-01T10:05:12.345Z',
    workflowId: `traversal/${TASK}/${deviceId}`,
    runId: `run-${deviceId}`,
    ...over,
  };
}

const crashy = result('pixel-7', {
  findings: [
    finding({
      signature: 'npe1',
      message: 'Attempt to invoke virtual method on a null object',
      frames: NPE_FRAMES,
      step: 3,
      newForApp: true,
    }),
    finding({ signature: 'npe1', step: 9, attempt: 2, newForApp: true }),
    finding({
      kind: 'anr',
      signature: 'anr7',
      exception: 'ANR',
      message: 'Input dispatching timed out',
      frames: ['java.lang.Thread.sleep(Native Method)', 'com.example.shop.Slow.load(Slow.java:12)'],
      step: 12,
      newForApp: false,
    }),
    finding({ signature: 'npe1', step: 14, attempt: 2, newForApp: true }),
  ],
});
const clean = result('emulator-5554', { finishedAt: '2024-05-01T10:00:01.5Z' });
const failed = result('galaxy-s21', {
  status: 'failed',
  screens: 0,
  error: {
    type: 'DeviceOffline',
    message: 'adb: device galaxy-s21 not found',
    kind: 'infrastructure',
    step: 'installApp',
  },
});
const cancelled = result('moto-g', {
  status: 'cancelled',
  error: { type: 'CancelledFailure', message: 'cancelled by the operator', kind: 'cancelled', step: 'runTraversal' },
});
const hostile = result('nasty-1', {
  reportUrl: `https://reports.example/x?a=1&b=${NASTY}`,
  findings: [
    finding({ signature: 'zz9', exception: 'java.lang.IllegalStateException', message: NASTY, frames: [NASTY] }),
  ],
});

/** The task every structural check below reads. */
const TASK_INPUT = {
  taskId: TASK,
  packageName: PKG,
  results: [crashy, clean, failed, cancelled, hostile],
  pending: ['oneplus-9'],
};

/** The attributes of the first `<name …>` start tag, decoded only as far as the counts need. */
function startTag(xml: string, name: string): Record<string, string> {
  const tag = new RegExp(`<${name}\\s([^>]*)>`).exec(xml);
  assert.ok(tag, `no <${name}> in the XML`);
  return Object.fromEntries([...tag[1]!.matchAll(/([\w-]+)="([^"]*)"/g)].map((m) => [m[1]!, m[2]!]));
}

/** The `<testcase>` element of one device, as text. */
function testcase(xml: string, deviceId: string): string {
  const m = new RegExp(`<testcase name="${deviceId}"[^]*?</testcase>`).exec(xml);
  assert.ok(m, `no testcase for ${deviceId}`);
  return m[0];
}

describe('JUnit XML of a task', function () {
  let dir: string;
  let n = 0;

  /** Runs xmllint on the text; its exit status and what it printed. */
  function xmllintText(xml: string, ...args: string[]): { status: number | null; output: string } {
    const file = path.join(dir, `junit-${++n}.xml`);
    writeFileSync(file, xml);
    return xmllint(file, ...args);
  }

  /** Asserts that the schema accepts the XML, showing xmllint's complaint when it does not. */
  function assertValid(xml: string): void {
    const { status, output } = xmllintText(xml, '--noout', '--schema', JUNIT_XSD);
    assert.equal(status, 0, `xmllint rejected the JUnit XML:\n${output}`);
  }

  /** The string value of an XPath expression, as a conforming parser reads the XML (xmllint adds a newline). */
  function xpath(xml: string, expr: string): string {
    const { status, output } = xmllintText(xml, '--xpath', expr);
    assert.equal(status, 0, `xmllint --xpath ${expr} failed:\n${output}`);
    return output.replace(/\n$/, '');
  }

  before(function () {
    requireJunitSchema();
    dir = mkdtempSync(path.join(os.tmpdir(), 'dt-junit-'));
  });

  after(function () {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('passes the xunit schema for devices that crashed, passed, failed, were cancelled or are pending', function () {
    assertValid(junitXml(TASK_INPUT));
  });

  it('passes the schema with nothing to report, with only pending devices, and with hostile text alone', function () {
    assertValid(junitXml({ taskId: TASK, packageName: PKG, results: [] }));
    assertValid(junitXml({ taskId: TASK, packageName: PKG, results: [], pending: ['a', 'b'] }));
    assertValid(junitXml({ taskId: TASK, packageName: PKG, results: [hostile] }));
  });

  it('counts one outcome per device: failures, errors and skipped add up to the tests', function () {
    const xml = junitXml(TASK_INPUT);
    const suite = startTag(xml, 'testsuite');
    assert.equal(suite.name, `${PKG} traversal ${TASK}`);
    assert.deepEqual(
      [suite.tests, suite.failures, suite.errors, suite.skipped],
      ['6', '2', '1', '2'],
      'pixel-7 and nasty-1 fail, galaxy-s21 errs, moto-g and oneplus-9 are skipped, emulator-5554 passes',
    );
    assert.equal(suite.time, '312.345');
    assert.equal(suite.timestamp, '2024-05-01T10:00:00Z');
    const all = startTag(xml, 'testsuites');
    assert.deepEqual([all.tests, all.failures, all.errors], ['6', '2', '1']);
    assert.equal(xpath(xml, 'count(//testcase)'), '6');
    assert.equal(xpath(xml, 'count(//testcase[failure])'), '2');
    assert.equal(xpath(xml, 'count(//testcase[error])'), '1');
    assert.equal(xpath(xml, 'count(//testcase[skipped])'), '2');
    assert.equal(xpath(xml, 'string(//property[@name="taskId"]/@value)'), TASK);
    assert.equal(xpath(xml, 'string(//property[@name="packageName"]/@value)'), PKG);
  });

  it('orders testcases by device id whatever order the results came in', function () {
    const xml = junitXml(TASK_INPUT);
    const names = [...xml.matchAll(/<testcase name="([^"]+)"/g)].map((m) => m[1]);
    assert.deepEqual(names, ['emulator-5554', 'galaxy-s21', 'moto-g', 'nasty-1', 'oneplus-9', 'pixel-7']);
    const shuffled = { ...TASK_INPUT, results: [...TASK_INPUT.results].reverse(), pending: ['oneplus-9'] };
    assert.equal(junitXml(shuffled), xml);
  });

  it('gives one failure per signature, with the frames of the occurrence that has them and the repeat count', function () {
    const pixel = testcase(junitXml(TASK_INPUT), 'pixel-7');
    const failures = [...pixel.matchAll(/<failure type="([^"]*)" message="([^"]*)">([^<]*)<\/failure>/g)];
    assert.equal(failures.length, 2, pixel);
    const [npe, anr] = failures.map((m) => ({ type: m[1], message: m[2], body: m[3]! }));
    assert.equal(npe!.type, 'java.lang.NullPointerException');
    assert.equal(
      npe!.message,
      'crash npe1: java.lang.NullPointerException: Attempt to invoke virtual method on a null object (3 times on this device)',
    );
    for (const frame of NPE_FRAMES) assert.ok(npe!.body.includes(`\tat ${frame}`), `frame ${frame} missing`);
    assert.match(npe!.body, /new for the app; first found at step 3, attempt 1/);
    assert.equal(anr!.type, 'ANR');
    assert.equal(anr!.message, 'anr anr7: ANR: Input dispatching timed out');
    assert.match(anr!.body, /seen before; first found at step 12, attempt 1/);
    assert.match(pixel, /<testcase name="pixel-7" classname="com\.example\.shop" time="312\.345">/);
    assert.match(
      pixel,
      /<system-out>[^<]*report: https:\/\/reports\.example\/[^<]*screens: 17[^<]*apk sha256: (ab){32}/,
    );
  });

  it('reports a failed run as an error with its kind and step, a cancelled or pending one as skipped', function () {
    const xml = junitXml(TASK_INPUT);
    assert.match(
      testcase(xml, 'galaxy-s21'),
      /<error type="DeviceOffline" message="infrastructure failure at installApp: adb: device galaxy-s21 not found">/,
    );
    assert.match(testcase(xml, 'moto-g'), /<skipped message="cancelled at runTraversal: cancelled by the operator"\/>/);
    assert.match(testcase(xml, 'oneplus-9'), /<skipped message="no result yet"\/>/);
    assert.match(testcase(xml, 'emulator-5554'), /time="1\.5"/);
  });

  it('keeps hostile text intact through a parser, except characters XML cannot carry, which become U+FFFD', function () {
    const xml = junitXml(TASK_INPUT);
    const expected = 'a < b && "c" \'d\' ]]> e\uFFFDf\uFFFDg\uFFFD[31mh\ti\r\nj 🐛 k\uFFFDl';
    const failure = '//testcase[@name="nasty-1"]/failure';
    // The message attribute holds the first line only; the body holds the text exactly.
    assert.equal(
      xpath(xml, `string(${failure}/@message)`),
      `crash zz9: java.lang.IllegalStateException: ${shorten(expected)}`,
    );
    assert.ok(
      xpath(xml, `string(${failure})`).startsWith(`java.lang.IllegalStateException: ${expected}\n\tat ${expected}\n`),
    );
    assert.ok(!xml.includes(']]>'), 'the raw ]]> sequence leaked into the XML');
    assert.equal(xmlAttr('\t\n"'), '&#9;&#10;&quot;');
    assert.equal(xpath(`<a b="${xmlAttr(NASTY)}"/>`, 'string(/a/@b)'), xmlSafe(NASTY));
    assert.equal(xpath(`<a>${xmlEscape(NASTY)}</a>`, 'string(/a)'), xmlSafe(NASTY));
  });

  it('has a validation that bites: a missing required attribute or a raw control character is rejected', function () {
    const xml = junitXml(TASK_INPUT);
    const noName = xml.replace(/<testsuite name="[^"]*"/, '<testsuite');
    assert.notEqual(noName, xml);
    const missing = xmllintText(noName, '--noout', '--schema', JUNIT_XSD);
    assert.notEqual(missing.status, 0, 'xmllint accepted a testsuite without a name');
    assert.match(missing.output, /attribute 'name' is required/);
    const unescaped = xmllintText(xml.replace('no result yet', 'no result\u0007yet'), '--noout', '--schema', JUNIT_XSD);
    assert.notEqual(unescaped.status, 0, 'xmllint accepted a raw BEL character');
    const badTime = xmllintText(xml.replace(/time="312\.345"/, 'time="5 min"'), '--noout', '--schema', JUNIT_XSD);
    assert.notEqual(badTime.status, 0, 'xmllint accepted a suite time the SUREFIRE_TIME pattern forbids');
  });

  it('formats seconds with at most three decimals and never cuts a character in two', function () {
    assert.equal(junitSeconds('2024-05-01T10:00:00Z', '2024-05-01T10:00:00.001Z'), '0.001');
    assert.equal(junitSeconds('2024-05-01T10:00:00Z', '2024-05-01T10:00:02.250Z'), '2.25');
    assert.equal(junitSeconds('2024-05-01T10:00:00Z', '2024-05-01T09:00:00Z'), '0');
    assert.equal(junitSeconds('not a time', '2024-05-01T10:00:00Z'), '0');
    const cut = shorten('🐛'.repeat(300));
    assert.equal(Array.from(cut).length, 200);
    assert.ok(cut.endsWith('🐛…'));
  });
});
