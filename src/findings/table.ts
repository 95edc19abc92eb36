/**
 * Findings as terminal tables: a task's findings by signature, and an app's groups. Plain text in
 * Markdown's pipe-table shape, so a table pasted into an issue or a chat renders too.
 */
import { topFrame } from '../contract/signature-groups';
import type { FindingGroup } from './groups';
import type { TaskFindingGroup } from './read';

/** A pipe table with padded columns. */
export function textTable(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => '| ' + cells.map((c, i) => (c ?? '').padEnd(widths[i]!)).join(' | ') + ' |';
  return [line(head), '|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|', ...rows.map(line)].join('\n');
}

/** Text on one line, without control characters (an app's text must not drive the terminal), cut to `max` characters. */
export function clip(text: string, max: number): string {
  const flat = text
    .replace(/[\u0000-\u001f\u007f-\u009f]+/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

/** `new`, `seen before`, or `?` when the results do not say. */
function novelty(isNew: boolean | undefined): string {
  return isNew === undefined ? '?' : isNew ? 'new' : 'seen before';
}

/** A task's findings, one row per signature. */
export function taskFindingsTable(groups: readonly TaskFindingGroup[]): string {
  return textTable(
    ['signature', 'kind', 'exception', 'message', 'top frame', 'seen', 'devices', 'for the app'],
    groups.map((g) => [
      clip(g.signature, 12),
      g.kind,
      clip(g.exception, 40),
      clip(g.message, 40),
      clip(topFrame(g.example.frames) || '-', 50),
      String(g.count),
      String(g.devices.length),
      novelty(g.newForApp),
    ]),
  );
}

/** An app's groups, one row per signature; `sinceMs` decides what counts as new in the window. */
export function appGroupsTable(groups: readonly FindingGroup[], sinceMs: number): string {
  return textTable(
    ['signature', 'kind', 'exception', 'message', 'count', 'devices', 'tasks', 'first seen', 'last seen', 'in window'],
    groups.map((g) => [
      clip(g.signature, 12),
      g.kind,
      clip(g.exception, 40),
      clip(g.message, 40),
      String(g.count),
      String(g.devices.length),
      String(g.tasks.length),
      g.firstSeen.slice(0, 16).replace('T', ' '),
      g.lastSeen.slice(0, 16).replace('T', ' '),
      Date.parse(g.firstSeen) >= sinceMs ? 'new' : 'seen before',
    ]),
  );
}
