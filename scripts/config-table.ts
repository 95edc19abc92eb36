/**
 * Prints the README's configuration table from the declarations in src/config/options.ts;
 * with --write, replaces the table in README.md (the block starting with "| variable |").
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { OPTIONS, PROJECT_ROOT } from '../src/config';

const rows = Object.values(OPTIONS).map(
  (o) =>
    `| \`${o.env}\` | ${o.default ? `\`${o.default.replace(/\|/g, '\\|')}\`` : '(empty)'} | ${o.doc.replace(/\|/g, '\\|')} |`,
);
const table = ['| variable | default | meaning |', '|---|---|---|', ...rows].join('\n');

if (process.argv.includes('--write')) {
  const file = path.join(PROJECT_ROOT, 'README.md');
  const lines = readFileSync(file, 'utf8').split('\n');
  const start = lines.findIndex((l) => l.startsWith('| variable | default | meaning |'));
  if (start < 0) throw new Error('README.md has no configuration table to replace');
  let end = start;
  while (end < lines.length && lines[end]!.startsWith('|')) end++;
  lines.splice(start, end - start, ...table.split('\n'));
  writeFileSync(file, lines.join('\n'));
  console.log(`README.md: configuration table updated (${rows.length} options)`);
} else {
  console.log(table);
}
