/**
 * The Markdown the Temporal Web UI shows on a workflow's page ("Summary & Details"): what a
 * traversal is (static details, fixed at start), how it goes and what it found (current details,
 * answered from the workflow's memory, so it writes no history), and a device's last results.
 * Pure functions of workflow state: workflow code calls them.
 */
import type { Finding, FindingBrief, FindingKind, TraversalRequest, TraversalResult } from './messages';
import { signatureGroups } from './signature-groups';

/** Most finding rows a details table shows; the rest are counted below it. */
export const DETAILS_MAX_ROWS = 20;

/** Text on one line, cut to `max` characters. */
function oneLine(text: string | number | undefined, max: number): string {
  const flat = String(text ?? '')
    .replace(/\s+/g, ' ')
    .trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

/**
 * Text made safe for a Markdown table cell: one line, cut short, and every character Markdown
 * gives a meaning escaped, so what an app under test prints (a crash message) shows as written and
 * never becomes a link, an image, markup or a new column.
 */
export function cell(text: string | number | undefined, max = 80): string {
  return (
    oneLine(text, max)
      .replace(/[\\`*_[\]()<>|#!~]/g, '\\$&')
      // A zero-width space keeps a bare address from being turned into a link.
      .replace(/:\/\//g, ':\u200b//')
      .replace(/\bwww\./gi, (w) => `${w}\u200b`)
      .replace(/@/g, '@\u200b')
  );
}

/** Text for a code span in a table cell: no backtick can end the span, no pipe can end the cell. */
export function code(text: string | number | undefined, max = 80): string {
  return `\`${oneLine(text, max).replace(/`/g, "'").replace(/\|/g, '\\|')}\``;
}

/** A Markdown table; every cell already made safe with `cell`. */
function table(head: string[], rows: string[][]): string {
  return [
    `| ${head.join(' | ')} |`,
    `|${head.map(() => '---').join('|')}|`,
    ...rows.map((r) => `| ${r.join(' | ')} |`),
  ].join('\n');
}

/** The last segment of a URL's path (the APK's file name), or the URL. */
function fileOf(url: string): string {
  const noQuery = url.split(/[?#]/, 1)[0]!;
  return noQuery.slice(noQuery.lastIndexOf('/') + 1) || url;
}

const KIND: Record<FindingKind, string> = { crash: 'crash', anr: 'ANR' };

/** What a traversal is, set once when its device workflow starts it. */
export function traversalStaticDetails(req: TraversalRequest): string {
  const rows = [
    ['App', `${code(req.packageName)}${req.mainActivity ? ` (${code(req.mainActivity)})` : ''}`],
    ['Device', code(req.deviceId)],
    ['Task', code(req.taskId)],
    ['APK', `${cell(fileOf(req.apkUrl))}${req.apkSha256 ? ` (sha256 ${req.apkSha256.slice(0, 12)}…)` : ''}`],
    ['Time budget', `${req.traversal.durationSec} s`],
  ];
  if (req.enqueuedAt) rows.push(['Accepted', cell(req.enqueuedAt)]);
  if (req.deployment) rows.push(['Deployment', cell(req.deployment)]);
  return `### Traversal of ${cell(req.packageName)} on ${cell(req.deviceId)}\n\n${table(['', ''], rows)}`;
}

/** One line of state, the first line of the current details (and all of it before anything is found). */
export interface TraversalHeadline {
  packageName: string;
  deviceId: string;
  phase: string;
  /** Set while traversing: `, 45%, 12 screens, 1 crashes, 0 ANRs`. */
  progress?: string;
}

/** The first line of a traversal's details: `<app> on <device> — <phase><progress>`. */
export function headline(h: TraversalHeadline): string {
  return `${h.packageName} on ${h.deviceId} — ${h.phase}${h.progress ?? ''}`;
}

/** A running traversal's details: the headline, then the signatures found so far, as they arrived. */
export function runningDetails(h: TraversalHeadline, found: readonly FindingBrief[], more: number): string {
  if (found.length === 0) return headline(h);
  const rows = found
    .slice(0, DETAILS_MAX_ROWS)
    .map((f) => [
      KIND[f.kind],
      code(f.signature, 20),
      String(f.attempt),
      cell(shortClass(f.exception), 40),
      cell(f.message, 50),
    ]);
  const hidden = more + Math.max(0, found.length - DETAILS_MAX_ROWS);
  return [
    `**${headline(h)}**`,
    '',
    `Found so far (${found.length + more} distinct):`,
    '',
    table(['kind', 'signature', 'attempt', 'exception', 'message'], rows),
    ...(hidden > 0 ? ['', `…and ${hidden} more (all are in the report's findings.json).`] : []),
  ].join('\n');
}

/** The `for the app` column: whether the app met the signature before this task, when publishing has said. */
function novelty(f: Finding): string {
  if (f.newForApp === undefined) return 'not known yet';
  return f.newForApp ? '**new**' : 'seen before';
}

/** A Java class name without its package (`android.view.WindowManager$BadTokenException` → `WindowManager$BadTokenException`). */
export function shortClass(name: string): string {
  return /^[\w$]+(\.[\w$]+)+$/.test(name) ? name.slice(name.lastIndexOf('.') + 1) : name;
}

/**
 * A finished traversal's details: status and counts, the findings by signature (kind, exception,
 * message, signature, how often, new or seen before; frames are in the report and `npm run
 * findings`, the Web UI's half-width panel has no room for them) and where the report is.
 * `publishNote` says why new/seen is not known when publishing had not answered.
 */
export function finishedDetails(result: TraversalResult, publishNote?: string): string {
  const lines = [
    `**${headline({ packageName: result.packageName, deviceId: result.deviceId, phase: result.status })}**`,
    '',
  ];
  const facts = [
    ['Status', result.status + (result.stoppedEarly ? ' (stopped early)' : '')],
    ['Screens', String(result.screens)],
    ['Crashes', String(result.crashes)],
    ['ANRs', String(result.anrs)],
  ];
  if (result.traversalAttempt && result.traversalAttempt > 1)
    facts.push(['Attempts', `${result.traversalAttempt} (resumed from ${cell(result.resumedFrom ?? 'the start')})`]);
  if (result.error)
    facts.push([
      'Error',
      `${cell(result.error.type)} in ${cell(result.error.step ?? '?')}: ${cell(result.error.message, 200)}`,
    ]);
  lines.push(table(['', ''], facts), '');
  const groups = signatureGroups(result.findings ?? []);
  if (groups.length === 0) lines.push('No crash or ANR found.');
  else {
    const rows = groups
      .slice(0, DETAILS_MAX_ROWS)
      .map(({ example: f, occurrences }) => [
        KIND[f.kind],
        code(f.signature, 20),
        novelty(f),
        String(occurrences.length),
        cell(shortClass(f.exception), 40),
        cell(f.message, 50),
      ]);
    lines.push(
      `Findings (${groups.length} distinct):`,
      '',
      table(['kind', 'signature', 'for the app', 'times', 'exception', 'message'], rows),
    );
    if (groups.length > DETAILS_MAX_ROWS)
      lines.push('', `…and ${groups.length - DETAILS_MAX_ROWS} more (all are in the report's findings.json).`);
    if (publishNote) lines.push('', publishNote);
  }
  lines.push('', `Report: ${result.reportUrl ? code(result.reportUrl, 300) : 'none uploaded'}`);
  return lines.join('\n');
}

/** One line of a device's recent results. */
export interface DeviceRecentResult {
  taskId: string;
  packageName: string;
  status: string;
  crashes?: number;
  anrs?: number;
  /** Signatures new for the app, when the result says. */
  newFindings?: number;
  finishedAt?: string;
  /** The failure type of a failed run. */
  error?: string;
}

/** How many results a device workflow remembers for its details. */
export const DEVICE_RECENT_RESULTS = 5;

/** A device workflow's details: its headline, then its last results, newest first. */
export function deviceDetails(line: string, recent: readonly DeviceRecentResult[]): string {
  if (recent.length === 0) return line;
  const rows = [...recent]
    .reverse()
    .map((r) => [
      code(r.taskId, 40),
      cell(r.packageName, 50),
      r.error ? `${r.status} (${cell(r.error, 40)})` : r.status,
      r.crashes === undefined ? '' : String(r.crashes),
      r.anrs === undefined ? '' : String(r.anrs),
      r.newFindings === undefined ? '' : String(r.newFindings),
      cell(r.finishedAt ?? ''),
    ]);
  return [
    `**${cell(line, 300)}**`,
    '',
    'Last results:',
    '',
    table(['task', 'app', 'status', 'crashes', 'ANRs', 'new findings', 'finished'], rows),
  ].join('\n');
}

/** The short form of a result a device keeps. */
export function recentOf(result: TraversalResult): DeviceRecentResult {
  const fresh = new Set((result.findings ?? []).filter((f) => f.newForApp).map((f) => f.signature));
  const findings = result.findings ?? [];
  const known = findings.length === 0 || findings.some((f) => f.newForApp !== undefined);
  return {
    taskId: result.taskId,
    packageName: result.packageName,
    status: result.status,
    crashes: result.crashes,
    anrs: result.anrs,
    ...(known ? { newFindings: fresh.size } : {}),
    finishedAt: result.finishedAt,
    ...(result.error ? { error: result.error.type } : {}),
  };
}
