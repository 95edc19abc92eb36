/**
 * Identifiers reach file paths, URL path segments, Redis keys, workflow ids and argv. Hostile ids
 * (`../`, `/`, NUL, newlines, 10,000 characters, shell metacharacters) are refused by the starter
 * and again at the activity boundary; no process is ever started through a shell. The boundary is
 * tested as production assembles it: the activities createActivities builds for the worker, and a
 * real worker (createTraversalWorker) running workflows started around the starter.
 *
 * Stand-ins, and why: single activities are called through MockActivityEnvironment where a test
 * checks many inputs against one activity (hundreds of hostile ids; a workflow each would add
 * minutes and prove nothing more; the real worker covers one id of each field). The argv test runs
 * `node -e` instead of java as the traversal command: it must record the argv it received, which
 * the simulator jar does not.
 */
import assert from 'node:assert/strict';
import { existsSync, promises as fsp, readFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger } from '@temporalio/worker';
import Redis from 'ioredis';
import { createActivities } from '../src/activities';
import { createReportSinkActivities } from '../src/activities/report-sink';
import { createTraversalRunnerActivities } from '../src/activities/traversal/runner';
import { ApkCache } from '../src/apk-cache';
import { ArtifactServer } from '../src/worker/artifact-server';
import { loadConfig, PROJECT_ROOT } from '../src/config';
import { InvalidTaskError } from '../src/contract/errors';
import {
  traversalWorkflowId,
  publishWorkflowId,
  type TraversalRequest,
  type TraversalResult,
} from '../src/contract/messages';
import { Metrics } from '../src/metrics';
import type { AgentDirectory } from '../src/device-registry';
import { parseTask } from '../src/starter/task';
import { traversalWorkflow } from '../src/workflows';
import { createDispatcher } from '../src/net/dispatcher';
import { startStack, type Stack } from '../dev/stack';
import { terminateAll, WELL_FORMED_TASK } from './support/device-tasks';

/** Identifiers that must never pass. */
export const HOSTILE_IDS: [string, string][] = [
  ['../', 'parent directory'],
  ['../../etc/passwd', 'path traversal'],
  ['..', 'dot-dot'],
  ['.hidden', 'leading dot'],
  ['a/b', 'slash'],
  ['a\\b', 'backslash'],
  ['a\0b', 'NUL'],
  ['a\nb', 'newline'],
  ['a\rb', 'carriage return'],
  ['x'.repeat(10_000), '10,000 characters'],
  ['$(touch /tmp/pwned)', 'command substitution'],
  ['`id`', 'backticks'],
  ['a;rm -rf /', 'semicolon'],
  ['a|b', 'pipe'],
  ['a&&b', 'and-and'],
  ['-rf', 'leading dash (option injection)'],
  ['a b', 'space'],
  ['a:b', 'colon (Redis key separator)'],
  ['%2e%2e%2f', 'percent-encoding'],
  ['é', 'non-ASCII'],
  ['', 'empty'],
];

const agents: AgentDirectory = { agentFor: () => 'http://127.0.0.1:9' };
const quiet = () => new MockActivityEnvironment(undefined, { logger: new DefaultLogger('ERROR') });

function problemsOf(task: Record<string, unknown>): string[] {
  try {
    parseTask(JSON.stringify(task), agents);
  } catch (err) {
    assert.ok(err instanceof InvalidTaskError, String(err));
    return err.problems;
  }
  return [];
}

describe('identifiers', function () {
  this.timeout(30_000);
  let tmp: string;
  before(async () => {
    tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'dt-ids-'));
  });
  after(async () => {
    await fsp.rm(tmp, { recursive: true, force: true });
  });

  it('the starter refuses every hostile taskId, deviceId, devices entry and packageName, naming the field', () => {
    for (const [id, what] of HOSTILE_IDS) {
      const cases: [Record<string, unknown>, RegExp][] = [
        [{ ...WELL_FORMED_TASK, taskId: id }, /^taskId: must be 1-128 letters/],
        [{ ...WELL_FORMED_TASK, deviceId: id }, /^deviceId: must be 1-64 letters/],
        [{ ...WELL_FORMED_TASK, deviceId: undefined, devices: ['ok-1', id] }, /^devices\[1\]: must be 1-64 letters/],
        [
          { ...WELL_FORMED_TASK, deviceId: undefined, devices: [{ deviceId: id }] },
          /^devices\[0\]\.deviceId: must be 1-64 letters/,
        ],
        [{ ...WELL_FORMED_TASK, packageName: id }, /^packageName: must be an Android application id/],
      ];
      for (const [task, rule] of cases) {
        const problems = problemsOf(task);
        assert.ok(
          problems.some((p) => rule.test(p)),
          `${what} (${JSON.stringify(id).slice(0, 30)}): ${problems.join(' | ')}`,
        );
        assert.ok(
          problems.every((p) => p.length < 400),
          'a 10,000-character id is previewed, not echoed',
        );
      }
    }
  });

  it('the activities the worker is built with refuse hostile ids before touching the disk, an agent or a process', async () => {
    const dataDir = path.join(tmp, 'assembled');
    const config = loadConfig(
      {},
      {
        dataDir,
        apkCacheDir: path.join(dataDir, 'apk-cache'),
        reportSink: `file://${path.join(dataDir, 'sink')}`,
        traversalCommand: ['/bin/true', '{outDir}'],
        killGraceMs: 100,
      },
    );
    const dispatcher = createDispatcher();
    // Never connected: an activity that got as far as Redis would fail another way.
    const redis = new Redis({ lazyConnect: true, enableOfflineQueue: false });
    // The same factory src/worker/setup.ts hands to the Temporal Worker.
    const acts = createActivities({
      config,
      cache: new ApkCache({ dir: config.apkCacheDir, maxBytes: 1024, dispatcher }),
      dispatcher,
      redis,
      metrics: new Metrics(),
      installUrlFor: (sha256) => `http://127.0.0.1:9/apk/${sha256}.apk`,
    });
    // Port 9 (discard) refuses connections: without the check these calls fail as AgentUnavailable.
    const device = { deviceId: 'd1', agentUrl: 'http://127.0.0.1:9' };
    const calls: [keyof typeof acts, Record<string, unknown>][] = [
      ['runTraversal', { taskId: 't1', ...device, packageName: 'com.example.app', durationSec: 1 }],
      ['prepareDevice', { ...device }],
      ['installApp', { ...device, url: 'http://127.0.0.1:9/a.apk', packageName: 'com.example.app' }],
      ['cleanupDevice', { ...device, packageName: 'com.example.app' }],
      ['uploadReport', { taskId: 't1', deviceId: 'd1' }],
    ];
    let refused = 0;
    try {
      for (const [id] of HOSTILE_IDS) {
        for (const [name, good] of calls) {
          const fn = acts[name] as unknown as (input: Record<string, unknown>) => Promise<unknown>;
          for (const field of ['taskId', 'deviceId', 'packageName'] as const) {
            if (!(field in good)) continue;
            await assert.rejects(
              quiet().run(fn, { ...good, [field]: id }),
              (err: unknown) =>
                err instanceof ApplicationFailure &&
                err.type === 'InvalidTask' &&
                err.nonRetryable === true &&
                err.message.startsWith(`invalid task: ${field}: `),
              `${name} with a hostile ${field} ${JSON.stringify(id).slice(0, 30)}`,
            );
            refused++;
          }
        }
      }
    } finally {
      await dispatcher.close();
      redis.disconnect();
    }
    assert.equal(existsSync(path.join(dataDir, 'runs')), false, 'no run folder was created');
    assert.ok(refused >= HOSTILE_IDS.length * 8, `${refused} refusals`);
  });

  it('the report sink refuses hostile ids and report folders outside the runs folder', async () => {
    const runsDir = path.join(tmp, 'sink-runs');
    const sinkDir = path.join(tmp, 'sink');
    await fsp.mkdir(path.join(runsDir, 't1', 'd1', 'report'), { recursive: true });
    const acts = createReportSinkActivities({ runsDir, sink: `file://${sinkDir}`, dispatcher: createDispatcher() });
    for (const [id] of HOSTILE_IDS) {
      await assert.rejects(quiet().run(acts.uploadReport, { taskId: id, deviceId: 'd1' }), { code: 'InvalidTask' });
      await assert.rejects(quiet().run(acts.uploadReport, { taskId: 't1', deviceId: id }), { code: 'InvalidTask' });
    }
    for (const reportDir of ['/etc', path.join(runsDir, '..', '..'), `${runsDir}-other/x`]) {
      await assert.rejects(
        quiet().run(acts.uploadReport, { taskId: 't1', deviceId: 'd1', reportDir }),
        /reportDir: must lie inside the runs folder/,
      );
    }
    assert.equal(existsSync(sinkDir), false, 'nothing was written to the sink');
  });

  it('the artifact server answers 404 to NUL, newline and encoded tricks in the APK path', async () => {
    const dir = path.join(tmp, 'cache');
    const cache = new ApkCache({ dir, maxBytes: 1024, dispatcher: createDispatcher() });
    await fsp.mkdir(path.join(dir, 'blobs'), { recursive: true });
    const sha = 'a'.repeat(64);
    await fsp.writeFile(path.join(dir, 'blobs', `${sha}.apk`), 'apk');
    await fsp.writeFile(path.join(dir, 'secret.txt'), 'secret');
    const server = new ArtifactServer({ cache, metrics: new Metrics() });
    const url = new URL(await server.start());
    try {
      const get = (p: string) =>
        new Promise<number>((resolve, reject) => {
          const req = http.request({ host: url.hostname, port: url.port, path: p, agent: false }, (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          });
          req.on('error', reject);
          req.end();
        });
      assert.equal(await get(`/apk/${sha}.apk`), 200);
      for (const p of [
        `/apk/${sha}%00.apk`,
        `/apk/${sha}.apk%0a`,
        `/apk/${sha}%2f..%2f..%2fsecret.txt`,
        '/apk/..%2fsecret.txt',
        '/secret.txt',
        '/apk/',
        '/apk',
      ]) {
        assert.equal(await get(p), 404, p);
      }
    } finally {
      await server.close();
    }
  });

  it('passes shell metacharacters to the traversal command as plain argv entries, never through a shell', async () => {
    const runsDir = path.join(tmp, 'argv-runs');
    const marker = path.join(tmp, 'pwned');
    const hostile = [
      `$(touch ${marker}-1)`,
      `\`touch ${marker}-2\``,
      `x; touch ${marker}-3`,
      `| touch ${marker}-4`,
      `&& touch ${marker}-5`,
      '\'"*?~{a,b}>out',
    ];
    // A command that only records the argv it received.
    const record = "require('fs').writeFileSync(process.argv[1] + '/argv.json', JSON.stringify(process.argv.slice(2)))";
    const acts = createTraversalRunnerActivities({
      runsDir,
      pidsDir: path.join(tmp, 'argv-pids'),
      command: [process.execPath, '-e', record, '{outDir}', '{device}', '{package}'],
      resumeArgs: [],
      // Any argument the template does not set: this is about how argv is passed, not which options.
      extraArgs: '*',
      jar: '',
      progressPattern: /^$/,
      killGraceMs: 100,
      controlPollMs: 60_000,
    });
    await quiet().run(acts.runTraversal, {
      taskId: 'argv',
      deviceId: 'dev-1',
      agentUrl: 'http://127.0.0.1:9',
      packageName: 'com.example.app',
      durationSec: 1,
      extraArgs: hostile,
    });
    const argv = JSON.parse(
      await fsp.readFile(path.join(runsDir, 'argv', 'dev-1', 'report', 'argv.json'), 'utf8'),
    ) as string[];
    assert.deepEqual(argv, ['dev-1', 'com.example.app', ...hostile]);
    for (let i = 1; i <= 5; i++)
      assert.equal(existsSync(`${marker}-${i}`), false, `marker ${i} was created: a shell ran`);
    assert.equal(existsSync(path.join(runsDir, 'argv', 'dev-1', 'out')), false);
  });

  it('no source file starts a process through a shell', async () => {
    const files: string[] = [];
    const walk = async (dir: string) => {
      for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
        const full = path.join(dir, e.name);
        if (e.isDirectory()) await walk(full);
        else if (e.name.endsWith('.ts')) files.push(full);
      }
    };
    await walk(path.join(PROJECT_ROOT, 'src'));
    const spawning = files.filter((f) => /from ['"](node:)?child_process['"]/.test(readFileSync(f, 'utf8')));
    assert.ok(
      spawning.some((f) => f.includes(path.join('src', 'activities', 'traversal'))),
      'the scan sees the runner',
    );
    for (const f of spawning) {
      const text = readFileSync(f, 'utf8');
      const imported = /import\s*\{([^}]*)\}\s*from ['"](?:node:)?child_process['"]/.exec(text)?.[1] ?? '';
      const names = imported.split(',').map(
        (s) =>
          s
            .trim()
            .replace(/^type\s+/, '')
            .split(/\s+as\s+/)[0],
      );
      assert.ok(
        !names.includes('exec') && !names.includes('execSync'),
        `${f} imports exec/execSync, which run a shell`,
      );
      assert.doesNotMatch(text, /\bshell\s*:\s*(true|['"`])/, `${f} passes shell: to a child process`);
      assert.doesNotMatch(text, /['"](\/bin\/)?(ba)?sh['"]\s*,\s*\[\s*['"]-c['"]/, `${f} runs sh -c`);
    }
  });
});

describe('identifiers through a real worker, in workflows started around the starter', function () {
  this.timeout(120_000);
  let stack: Stack;
  const devices = ['idw-1', 'idw-2', 'idw-3'];
  const started: string[] = [];

  before(async () => {
    stack = await startStack({ devices, apks: [{ name: 'ids.apk', size: 64 * 1024 }] });
  });
  after(async () => {
    if (stack) await terminateAll(stack.client, started, 'test over');
    await stack?.stop();
  });

  /** Runs a traversal workflow straight through Temporal (no starter) and returns its result. */
  async function runAround(fields: Partial<TraversalRequest> & { deviceId: string }): Promise<TraversalResult> {
    const req: TraversalRequest = {
      taskId: `ids-${Math.random().toString(36).slice(2, 8)}`,
      agentUrl: stack.agent.url,
      apkUrl: stack.apks['ids.apk']!.url,
      packageName: 'com.example.ids',
      traversal: { durationSec: 1, extraArgs: ['--tick-ms', '100'] },
      policy: { heartbeatTimeoutMs: 10_000, initialRetryMs: 200, measureLaunch: false },
      ...fields,
    };
    // The ids are hostile, so the workflow id is not built from them.
    const workflowId = `ids-around-${Math.random().toString(36).slice(2, 10)}`;
    started.push(
      workflowId,
      publishWorkflowId(req.taskId, req.deviceId),
      traversalWorkflowId(req.taskId, req.deviceId),
    );
    try {
      return await stack.client.workflow.execute(traversalWorkflow, {
        workflowId,
        taskQueue: stack.taskQueue,
        args: [req],
      });
    } catch (err) {
      // A failed run ends the workflow with its result as the failure's details.
      if (err instanceof WorkflowFailedError && err.cause instanceof ApplicationFailure && err.cause.details?.[0])
        return err.cause.details[0] as TraversalResult;
      throw err;
    }
  }

  it('a hostile taskId fails the run as InvalidTask before the tool starts, and no folder is made outside the runs folder', async () => {
    const escape = `dt-ids-escape-${Math.random().toString(36).slice(2, 8)}`;
    const taskId = `../../${escape}`;
    const r = await runAround({ taskId, deviceId: 'idw-1' });
    assert.equal(r.status, 'failed');
    assert.deepEqual(
      { type: r.error?.type, step: r.error?.step, nonRetryable: r.error?.nonRetryable },
      { type: 'InvalidTask', step: 'runTraversal', nonRetryable: true },
    );
    assert.match(r.error!.message, /^invalid task: taskId: must be 1-128 letters/);
    const runs = path.join(stack.dataDir, 'runs');
    assert.equal(existsSync(path.resolve(runs, taskId)), false, 'no folder where the taskId points');
    assert.equal(existsSync(path.resolve(runs, '..', '..', escape)), false);
    assert.deepEqual(
      (existsSync(runs) ? await fsp.readdir(runs) : []).filter((f) => f.includes(escape)),
      [],
      'no run folder of it inside the runs folder either',
    );
  });

  it('a hostile deviceId fails the run as InvalidTask before the agent is asked anything about it', async () => {
    const r = await runAround({ deviceId: '-rf' });
    assert.equal(r.status, 'failed');
    assert.deepEqual({ type: r.error?.type, step: r.error?.step }, { type: 'InvalidTask', step: 'prepareDevice' });
    assert.match(r.error!.message, /^invalid task: deviceId: must be 1-64 letters/);
    assert.deepEqual(
      stack.agent.calls.filter((c) => c.deviceId === '-rf'),
      [],
      'the agent never heard of the device',
    );
  });

  it('a hostile packageName fails the run as InvalidTask before anything is installed', async () => {
    const r = await runAround({ deviceId: 'idw-2', packageName: '../../pkg' });
    assert.equal(r.status, 'failed');
    assert.deepEqual({ type: r.error?.type, step: r.error?.step }, { type: 'InvalidTask', step: 'installApp' });
    assert.match(r.error!.message, /^invalid task: packageName: must be an Android application id/);
    assert.deepEqual(
      stack.agent.calls.filter((c) => c.deviceId === 'idw-2' && (c.op === 'install' || c.packageName === '../../pkg')),
      [],
      'no install and no call naming the package reached the agent',
    );
  });

  it('the same worker runs a task with good ids to completion (the refusals above are about the ids)', async () => {
    const r = await runAround({ deviceId: 'idw-3' });
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
  });
});
