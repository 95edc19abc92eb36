/**
 * The traversal runner on its own: real child processes (node, /bin/true), real files and signals.
 * Temporal's MockActivityEnvironment stands in for the worker here, because these cases are about
 * process handling whose timing a full stack would blur (a command that exits in a millisecond, a
 * silent one, an orphan left by a dead worker). A hung jar and the jars of a killed worker are also
 * tested end to end (dev server, Redis, agent simulator, the real jar) in test/faults-*.test.ts.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DefaultLogger } from '@temporalio/worker';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createTraversalRunnerActivities, type TraversalRunnerDeps } from '../src/activities/traversal/runner';
import { endStaleRun } from '../src/activities/traversal/process-group';
import { pidAlive } from './support/procs';
import { waitFor } from '../dev/wait';

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
    controlPollMs: 1000,
  });
  const input = {
    taskId: 't1',
    deviceId: 'd1',
    agentUrl: 'http://127.0.0.1:9',
    packageName: 'com.example.app',
    durationSec: 0,
  };
  const env = () => new MockActivityEnvironment(undefined, { logger: new DefaultLogger('ERROR') });

  it('returns promptly for a command that exits at once, with and without output', async function () {
    this.timeout(20_000);
    for (const command of [['/bin/true'], [process.execPath, '-e', 'console.log("progress percent=100")']]) {
      const t0 = Date.now();
      const result = await env().run(createTraversalRunnerActivities(deps(command)).runTraversal, input);
      const ms = Date.now() - t0;
      assert.ok(result, `${command.join(' ')} gave a result`);
      console.log(`      ${command[0] === '/bin/true' ? '/bin/true' : 'node -e'} gave its result after ${ms} ms`);
      assert.ok(ms < 30_000, `${command.join(' ')} took ${ms} ms`);
    }
  });

  it('hands the tool a budget in whole seconds, and refuses one that is no number', async function () {
    this.timeout(20_000);
    const out = path.join(tmp, 'argv.json');
    const command = [
      process.execPath,
      '-e',
      'require("fs").writeFileSync(process.argv[1], JSON.stringify(process.argv.slice(2)))',
      out,
      '{durationSec}',
    ];
    // A workflow started around the starter may carry any number; 1e-7 once burnt every attempt.
    for (const [given, seen] of [
      [1e-7, '1'],
      [2.5, '3'],
      [0, '0'],
    ] as const) {
      await env().run(createTraversalRunnerActivities(deps(command)).runTraversal, { ...input, durationSec: given });
      assert.deepEqual(JSON.parse(readFileSync(out, 'utf8')), [seen], `durationSec ${given}`);
    }
    await assert.rejects(
      env().run(createTraversalRunnerActivities(deps(command)).runTraversal, { ...input, durationSec: Number.NaN }),
      /durationSec: must be a number of seconds, got NaN/,
    );
  });

  it('reports a quick non-zero exit with its code and stderr tail', async function () {
    this.timeout(20_000);
    const command = [process.execPath, '-e', 'console.error("boom on stderr"); process.exit(3)'];
    await assert.rejects(
      env().run(createTraversalRunnerActivities(deps(command)).runTraversal, input),
      (err: Error) => {
        assert.match(err.message, /exit code 3|code 3/);
        assert.match(String((err as { details?: unknown }).details ?? err.message) + err.message, /boom on stderr/);
        return true;
      },
    );
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

  it("a starting worker ends only runs whose worker died, never a live worker's run", async function () {
    this.timeout(30_000);
    const d = deps([process.execPath, '-e', 'setTimeout(() => {}, 60_000)']);
    const acts = createTraversalRunnerActivities(d);
    const running = env().run(acts.runTraversal, input);
    running.catch(() => undefined);
    const record = path.join(d.pidsDir, 'd1.json');
    await waitFor(async () => existsSync(record), 10_000, 'the run recorded');
    const rec = JSON.parse(readFileSync(record, 'utf8')) as { pid: number; workerPid: number };
    assert.equal(rec.workerPid, process.pid);
    // This process (the run's worker) is alive: a starting worker's sweep leaves the run alone.
    assert.equal(await endStaleRun(d, 'd1', undefined, { onlyOrphans: true }), false);
    assert.ok(pidAlive(rec.pid), 'the live worker kept its traversal');

    // Now pretend the recording worker died: the same sweep ends the orphan.
    const gone = spawnSync('true').pid!;
    writeFileSync(record, JSON.stringify({ ...rec, workerPid: gone }));
    assert.equal(await endStaleRun(d, 'd1', undefined, { onlyOrphans: true }), true);
    await waitFor(async () => !pidAlive(rec.pid), 10_000, 'the orphan ended');
    await assert.rejects(running);
  });

  it('ends a command that prints no progress for longer than the heartbeat timeout, as a retryable TraversalHung', async function () {
    this.timeout(30_000);
    const d = deps([process.execPath, '-e', 'console.log("starting"); setTimeout(() => {}, 60_000)']);
    const hungEnv = new MockActivityEnvironment({ heartbeatTimeoutMs: 1000 }, { logger: new DefaultLogger('ERROR') });
    const t0 = Date.now();
    let pid = 0;
    await assert.rejects(
      hungEnv.run(createTraversalRunnerActivities(d).runTraversal, input),
      (err: Error & { code?: string; nonRetryable?: boolean; details?: { pid: number } }) => {
        // The raw activity throws the project's error; the worker turns it into an ApplicationFailure of this type.
        assert.equal(err.code, 'TraversalHung', err.message);
        assert.equal(err.nonRetryable, false);
        pid = err.details!.pid;
        return true;
      },
    );
    const ms = Date.now() - t0;
    console.log(`      the silent command was ended after ${ms} ms`);
    // At least the heartbeat timeout plus its grace; well short of the command's own 60 s.
    assert.ok(ms >= 2000 && ms < 45_000, `ended after ${ms} ms (heartbeat timeout 1 s + 1 s)`);
    assert.ok(!pidAlive(pid), 'the silent process is gone');
  });

  it('asks a tool without a control file to stop with TERM when the budget says finish now, and reports it stopped', async function () {
    this.timeout(30_000);
    const script = 'let p = 0; setInterval(() => console.log(`progress percent=${Math.min(99, ++p)}`), 100);';
    let asked = 0;
    const d: TraversalRunnerDeps = {
      ...deps([process.execPath, '-e', script]),
      controlPollMs: 200,
      pushProgress: async () => undefined,
      // The workflow's budget, read with each progress push: "finish now" from the second read on.
      readBudget: async () => (++asked >= 2 ? { version: 1, durationSec: 60, finishNow: true } : undefined),
    };
    const t0 = Date.now();
    const result = (await env().run(createTraversalRunnerActivities(d).runTraversal, {
      ...input,
      durationSec: 60,
    })) as { status: string };
    assert.equal(result.status, 'stopped');
    const ms = Date.now() - t0;
    console.log(`      stopped ${ms} ms after it started`);
    assert.ok(ms < 45_000, `stopped after ${ms} ms: soon after the request, not at the end of its 60 s`);
  });
});
