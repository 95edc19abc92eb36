/** Prints the README's configuration table from the declarations in src/config.ts. */
import { OPTIONS } from '../src/config';

const rows = Object.values(OPTIONS).map((o) => `| \`${o.env}\` | ${o.default ? `\`${o.default.replace(/\|/g, '\\|')}\`` : '(empty)'} | ${o.doc.replace(/\|/g, '\\|')} |`);
console.log(['| variable | default | meaning |', '|---|---|---|', ...rows].join('\n'));
