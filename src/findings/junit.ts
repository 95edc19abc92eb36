/**
 * A task's results as JUnit XML, the report format Jenkins (junit and xunit plugins) and GitLab read.
 *
 * One `<testsuite>` per task, one `<testcase>` per device (sorted by device id, so equal input gives
 * equal bytes). What a testcase holds, and which count of the suite it adds to (tests = passed +
 * failures + errors + skipped, one count per testcase, as Surefire counts):
 * - a failed run: an `<error>` naming the failure type, kind and step (errors), plus its findings;
 * - findings: one `<failure>` per distinct signature, its frames and how often it occurred (failures);
 * - a cancelled run without findings, or a device without a result yet: `<skipped>` (skipped). A
 *   cancelled run with findings reports them as failures: a `<skipped>` would hide them in Jenkins.
 *
 * Text from the app and the device (messages, frames) can hold anything: characters XML 1.0 cannot
 * carry become U+FFFD, and no CDATA section is written, so `]]>` needs no special case.
 */
import type { TraversalResult } from '../contract/messages';
import { signatureGroups, type SignatureGroup } from '../contract/signature-groups';

/** What `junitXml` reports on: one task, the results published so far and the devices still running. */
export interface JunitTask {
  taskId: string;
  packageName: string;
  results: TraversalResult[];
  /** Device ids the task was sent to that have no result yet. */
  pending?: string[];
}

/** Longest message attribute, in characters; the whole text is in the element's body. */
export const MESSAGE_MAX = 200;

/** Which count of the suite a testcase adds to. */
type Outcome = 'passed' | 'failure' | 'error' | 'skipped';

/** One testcase, rendered, with the count it adds to. */
interface Testcase {
  deviceId: string;
  outcome: Outcome;
  xml: string;
}

// Everything XML 1.0 allows (its `Char` production). With the `u` flag a surrogate pair is one code
// point above U+FFFF, so only lone surrogates fall outside the class.
const NOT_XML_CHAR = /[^\t\n\r\u0020-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/gu;

/** The text with every character XML 1.0 cannot carry (control characters, lone surrogates) as U+FFFD. */
export function xmlSafe(text: string): string {
  return text.replace(NOT_XML_CHAR, '\uFFFD');
}

/** Text for element content: XML-safe, with `&`, `<` and `>` escaped (`>` so `]]>` never appears). */
export function xmlEscape(text: string): string {
  return xmlSafe(text).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/\r/g, '&#13;');
}

/**
 * Text for an attribute value in double quotes. Tabs and line breaks become character references,
 * since a parser turns literal ones into spaces.
 */
export function xmlAttr(text: string): string {
  return xmlEscape(text).replace(/"/g, '&quot;').replace(/'/g, '&apos;').replace(/\t/g, '&#9;').replace(/\n/g, '&#10;');
}

/** `name="value" …` for the attributes that have a value, in the order given. */
function attrs(pairs: [string, string | number | undefined][]): string {
  return pairs
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}="${xmlAttr(String(v))}"`)
    .join(' ');
}

/** An element with attributes and an optional escaped text body. */
function element(name: string, pairs: [string, string | number | undefined][], body?: string): string {
  const open = [name, attrs(pairs)].filter(Boolean).join(' ');
  return body === undefined || body === '' ? `<${open}/>` : `<${open}>${xmlEscape(body)}</${name}>`;
}

/** Seconds from one ISO time to another with at most 3 decimals ("12.5"); "0" when unknown or negative. */
export function junitSeconds(startedAt: string | undefined, finishedAt: string | undefined): string {
  const ms = Date.parse(finishedAt ?? '') - Date.parse(startedAt ?? '');
  if (!Number.isFinite(ms) || ms <= 0) return '0';
  return String(Math.round(ms) / 1000);
}

/** The first line of a text, spaces collapsed, cut to `max` characters (code points, never half a pair). */
export function shorten(text: string, max = MESSAGE_MAX): string {
  const line = (text.split(/\r?\n/, 1)[0] ?? '').replace(/\s+/g, ' ').trim();
  const chars = Array.from(line);
  return chars.length <= max ? line : `${chars.slice(0, max - 1).join('')}…`;
}

/** `<failure>` for one signature on one device. */
function failureXml(group: SignatureGroup): string {
  const full = group.example;
  const first = group.occurrences[0]!;
  const count = group.occurrences.length;
  const times = count > 1 ? ` (${count} times on this device)` : '';
  const summary = [full.exception, full.message].filter(Boolean).join(': ');
  const message = `${shorten(`${full.kind} ${group.signature}: ${summary}`)}${times}`;
  const novelty = full.newForApp === undefined ? [] : [full.newForApp ? 'new for the app' : 'seen before'];
  const where = `first found at step ${first.step ?? '?'}, attempt ${first.attempt}, ${first.foundAt}`;
  const body = [
    summary,
    ...full.frames.map((frame) => `\tat ${frame}`),
    '',
    `${full.kind} ${group.signature}: ${[...novelty, where].join('; ')}`,
    ...(count > 1 ? [`found ${count} times on this device`] : []),
  ].join('\n');
  return element(
    'failure',
    [
      ['type', full.exception || full.kind],
      ['message', message],
    ],
    body,
  );
}

/** `<error>` for a failed run. */
function errorXml(result: TraversalResult): string {
  const error = result.error;
  if (!error) {
    return element('error', [
      ['type', 'TraversalFailed'],
      ['message', 'the run failed without an error record'],
    ]);
  }
  const where = `${error.kind} failure${error.step ? ` at ${error.step}` : ''}`;
  const body = [
    `${error.type}: ${error.message}`,
    `kind: ${error.kind}`,
    ...(error.step ? [`step: ${error.step}`] : []),
    ...(error.nonRetryable ? ['not retryable'] : []),
  ].join('\n');
  return element(
    'error',
    [
      ['type', error.type],
      ['message', shorten(`${where}: ${error.message}`)],
    ],
    body,
  );
}

/** `<skipped>` for a cancelled run. */
function cancelledXml(result: TraversalResult): string {
  const why = result.error ? `: ${result.error.message}` : '';
  const at = result.error?.step ? ` at ${result.error.step}` : '';
  return element('skipped', [['message', shorten(`cancelled${at}${why}`)]]);
}

/** `<system-out>` of a run: where its report is, what it covered, which APK it installed. */
function systemOutXml(result: TraversalResult): string {
  const lines = [
    `status: ${result.status}`,
    `report: ${result.reportUrl ?? 'none'}`,
    `screens: ${result.screens}`,
    `crashes: ${result.crashes}, ANRs: ${result.anrs}`,
    ...(result.findingsOmitted ? [`${result.findingsOmitted} more findings are only in the report`] : []),
    `apk sha256: ${result.apk?.sha256 ?? 'unknown'}`,
  ];
  return element('system-out', [], lines.join('\n'));
}

/** Which count a result adds to: a failed run is an error, findings a failure, a cancelled run skipped. */
function outcomeOf(result: TraversalResult): Outcome {
  if (result.status === 'failed') return 'error';
  if (result.findings.length > 0) return 'failure';
  return result.status === 'cancelled' ? 'skipped' : 'passed';
}

/** The testcase of one device's result. */
function resultTestcase(result: TraversalResult): Testcase {
  const outcome = outcomeOf(result);
  const children = [
    ...(result.status === 'failed' ? [errorXml(result)] : []),
    ...signatureGroups(result.findings ?? []).map(failureXml),
    ...(outcome === 'skipped' ? [cancelledXml(result)] : []),
    systemOutXml(result),
  ];
  const open = attrs([
    ['name', result.deviceId],
    ['classname', result.packageName],
    ['time', junitSeconds(result.startedAt, result.finishedAt)],
  ]);
  return { deviceId: result.deviceId, outcome, xml: `<testcase ${open}>\n${children.join('\n')}\n</testcase>` };
}

/** The testcase of a device that has no result yet. */
function pendingTestcase(deviceId: string, packageName: string): Testcase {
  const open = attrs([
    ['name', deviceId],
    ['classname', packageName],
    ['time', '0'],
  ]);
  const skipped = element('skipped', [['message', 'no result yet']]);
  return { deviceId, outcome: 'skipped', xml: `<testcase ${open}>\n${skipped}\n</testcase>` };
}

/** Earliest start and latest finish over the results, or undefined when there is none. */
function span(results: TraversalResult[]): { startedAt: string; finishedAt: string } | undefined {
  const starts = results.map((r) => r.startedAt).filter((t) => Number.isFinite(Date.parse(t)));
  const ends = results.map((r) => r.finishedAt).filter((t) => Number.isFinite(Date.parse(t)));
  if (starts.length === 0 || ends.length === 0) return undefined;
  const byTime = (a: string, b: string) => Date.parse(a) - Date.parse(b);
  return { startedAt: starts.sort(byTime)[0]!, finishedAt: ends.sort(byTime).at(-1)! };
}

/** Per-outcome counts of the testcases. */
function countOutcomes(cases: Testcase[]): Record<Outcome, number> {
  const counts: Record<Outcome, number> = { passed: 0, failure: 0, error: 0, skipped: 0 };
  for (const c of cases) counts[c.outcome]++;
  return counts;
}

/** Orders testcases by device id (code unit order, the same on every machine), then as given. */
function byDevice(a: Testcase, b: Testcase): number {
  return a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : 0;
}

/** JUnit XML of one task: a testsuite of its devices' results, and of its pending devices as skipped. */
export function junitXml(task: JunitTask): string {
  const reported = new Set(task.results.map((r) => r.deviceId));
  const cases = [
    ...task.results.map(resultTestcase),
    ...(task.pending ?? []).filter((d) => !reported.has(d)).map((d) => pendingTestcase(d, task.packageName)),
  ].sort(byDevice);
  const counts = countOutcomes(cases);
  const when = span(task.results);
  const time = when ? junitSeconds(when.startedAt, when.finishedAt) : '0';
  const name = `${task.packageName} traversal ${task.taskId}`;
  const totals: [string, number][] = [
    ['tests', cases.length],
    ['failures', counts.failure],
    ['errors', counts.error],
  ];
  const suite = attrs([
    ['name', name],
    ...totals,
    ['skipped', counts.skipped],
    ['time', time],
    ['timestamp', when ? when.startedAt.replace(/\.\d+(?=Z$)/, '') : undefined],
  ]);
  const properties = [
    '<properties>',
    element('property', [
      ['name', 'taskId'],
      ['value', task.taskId],
    ]),
    element('property', [
      ['name', 'packageName'],
      ['value', task.packageName],
    ]),
    '</properties>',
  ].join('\n');
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<testsuites ${attrs([['name', name], ...totals, ['time', time]])}>`,
    `<testsuite ${suite}>`,
    properties,
    ...cases.map((c) => c.xml),
    '</testsuite>',
    '</testsuites>',
    '',
  ].join('\n');
}
