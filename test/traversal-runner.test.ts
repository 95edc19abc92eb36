/**
 * The traversal runner on its own, with real child processes and Temporal's activity test
 * environment standing in for a worker (no server is needed to run one activity).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DefaultLogger } from '@temporalio/worker';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createTraversalRunnerActivities, type TraversalRunnerDeps } from '../src/activities/traversal-runner';

describe('the traversal runner', function () {
  let tmp: string;
  beforeEach(() => (tmp = mkdtempSync(path.join(os.tmpdir(), 'dt-runner-'))));
  afterEach(() => rmSync(tmp, { recursive: true, force: true }));

  const deps = (command: string[]): TraversalRunnerDeps => ({
    runsDir: path.join(tmp, 'runs'),
    pidsDir: path.join(tmp, 'pids'),
    command,
    resumeArgs: [],
    jar: '',
    progressPattern: /^progress percent=(?<percent>\d+)$/,
    killGraceMs: 200,
    progressPushMs: 1000,
  });
  const input = { taskId: 't1', deviceId: 'd1', agentUrl: 'http://127.0.0.1:9', packageName: 'com.example.app', durationSec: 0 };
  const env = () => new MockActivityEnvironment(undefined, { logger: new DefaultLogger('ERROR') });

  it('returns promptly for a command that exits at once, with and without output', async function () {
    this.timeout(20_000);
    for (const command of [['/bin/true'], [process.execPath, '-e', 'console.log("progress percent=100")']]) {
      const t0 = Date.now();
      const result = await env().run(createTraversalRunnerActivities(deps(command)).runTraversal, input);
      const ms = Date.now() - t0;
      assert.ok(result, `${command.join(' ')} gave a result`);
      assert.ok(ms < 5000, `${command.join(' ')} took ${ms} ms`);
    }
  });

  it('reports a quick non-zero exit with its code and stderr tail', async function () {
    this.timeout(20_000);
    const command = [process.execPath, '-e', 'console.error("boom on stderr"); process.exit(3)'];
    await assert.rejects(env().run(createTraversalRunnerActivities(deps(command)).runTraversal, input), (err: Error) => {
      assert.match(err.message, /3/);
      assert.match(String((err as { details?: unknown }).details ?? err.message) + err.message, /boom on stderr/);
      return true;
    });
  });

  it('runs at most maxConcurrent commands at once; the others wait for a slot', async function () {
    this.timeout(30_000);
    const marks = path.join(tmp, 'marks.txt');
    const script = `const f = require('fs'); f.appendFileSync(${JSON.stringify(marks)}, 'start\\n'); setTimeout(() => f.appendFileSync(${JSON.stringify(marks)}, 'end\\n'), 700);`;
    const acts = createTraversalRunnerActivities({ ...deps([process.execPath, '-e', script]), maxConcurrent: 1 });
    await Promise.all(['d1', 'd2', 'd3'].map((deviceId) => env().run(acts.runTraversal, { ...input, deviceId })));
    const lines = readFileSync(marks, 'utf8').trim().split('\n');
    assert.deepEqual(lines, ['start', 'end', 'start', 'end', 'start', 'end'], 'never two commands at once');
  });
});
