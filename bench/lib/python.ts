/**
 * The Python that runs bench/old_service.py (the old service's install path): the project's venv
 * `.tools/venv` (which setup creates for the temporal CLI), with `requests` installed by pip when
 * missing.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { PROJECT_ROOT } from '../../src/config';
import { say } from './report';

const VENV = path.join(PROJECT_ROOT, '.tools', 'venv');

function hasRequests(python: string): boolean {
  return spawnSync(python, ['-c', 'import requests'], { stdio: 'ignore' }).status === 0;
}

/** Returns the path of a python that can import `requests`, creating the venv or installing it as needed. */
export function ensureOldServicePython(): string {
  const python = path.join(VENV, 'bin', 'python3');
  if (!existsSync(python)) {
    say('creating the Python venv .tools/venv for the old service');
    const r = spawnSync('python3', ['-m', 'venv', VENV], { stdio: 'inherit' });
    if (r.status !== 0 || !existsSync(python))
      throw new Error(
        'python3 -m venv .tools/venv failed: install Python 3 with venv (Debian: apt-get install python3-venv)',
      );
  }
  if (hasRequests(python)) return python;
  say('installing requests into .tools/venv (pip)');
  const r = spawnSync(python, ['-m', 'pip', 'install', '-q', 'requests'], { stdio: 'inherit' });
  if (r.status !== 0 || !hasRequests(python))
    throw new Error('pip could not install requests into .tools/venv; install it there by hand or use --no-old');
  return python;
}
