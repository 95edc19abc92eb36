/**
 * The JUnit schema check shared by the tests: Debian's real `xmllint` against junit-10.xsd, the
 * schema of Jenkins' xunit plugin, which scripts/setup.sh fetches into .tools/schemas/.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { PROJECT_ROOT } from '../../src/config';

export const JUNIT_XSD = path.join(PROJECT_ROOT, '.tools', 'schemas', 'junit-10.xsd');

/** Throws, naming the fix, when xmllint or the schema is missing. */
export function requireJunitSchema(): void {
  if (spawnSync('xmllint', ['--version']).error)
    throw new Error('xmllint is not installed: run `bash scripts/setup.sh` (it installs Debian libxml2-utils)');
  if (!existsSync(JUNIT_XSD))
    throw new Error(
      `${JUNIT_XSD} is missing: run \`bash scripts/setup.sh\`, which fetches it from PyPI's pytest sdist`,
    );
}

/** Runs xmllint on a file; its exit status and what it printed. */
export function xmllint(file: string, ...args: string[]): { status: number | null; output: string } {
  const run = spawnSync('xmllint', [...args, file], { encoding: 'utf8' });
  return { status: run.status, output: `${run.stdout}${run.stderr}` };
}

/** xmllint's verdict on a file against the JUnit schema. */
export function validateJunit(file: string): { status: number | null; output: string } {
  return xmllint(file, '--noout', '--schema', JUNIT_XSD);
}
