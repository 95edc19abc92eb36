/**
 * Findings as the lab reads them, through the whole stack (real Temporal, Redis, starter, worker,
 * agent simulator and the traversal simulator in java): groups across tasks and devices with the
 * new/seen flag, the task summary and its stream event, the JUnit file uploaded when the task's
 * last device finishes (checked by xmllint against Jenkins' junit-10.xsd), the Web UI details of
 * traversals and devices, and `npm run findings` as a real process.
 */
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { PROJECT_ROOT } from '../src/config';
import {
  deviceStateQuery,
  deviceWorkflowId,
  traversalWorkflowId,
  type DeviceState,
  type TaskSummary,
  type TraversalResult,
} from '../src/contract/messages';
import { resultsStream, taskSummaryKey } from '../src/contract/redis-keys';
import { readGroup } from '../src/findings/read';
import { startStack, task, type Stack } from '../dev/stack';
import { waitFor } from '../dev/wait';
import { requireJunitSchema, validateJunit } from './support/junit-schema';

const APP = 'com.example.findings';
const run = promisify(execFile);

/** `npm run findings -- <args>` for this stack's Redis and prefix, as a real process. */
async function findingsCli(stack: Stack, ...args: string[]): Promise<{ code: number; out: string; err: string }> {
  try {
    const { stdout, stderr } = await run(
      process.execPath,
      ['-r', 'ts-node/register/transpile-only', 'src/findings-cli.ts', ...args],
      {
        cwd: PROJECT_ROOT,
        env: { ...process.env, REDIS_URL: process.env.TEST_REDIS_URL, DT_REDIS_KEY_PREFIX: stack.prefix },
        timeout: 60_000,
      },
    );
    return { code: 0, out: stdout, err: stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, out: e.stdout ?? '', err: e.stderr ?? '' };
  }
}

/** Asserts that Jenkins' JUnit schema accepts the file. */
function assertJunitValid(file: string): void {
  const { status, output } = validateJunit(file);
  assert.equal(status, 0, `xmllint rejected ${file}:\n${output}`);
}

describe('findings across runs, in Redis, the Web UI details and CI', function () {
  this.timeout(300_000);
  let stack: Stack;
  let out: string;
  const devices = ['fd-1', 'fd-2', 'fd-3'];

  before(async function () {
    requireJunitSchema();
    stack = await startStack({ devices, apks: [{ name: 'findings.apk', size: 200_000 }], starter: true });
    out = mkdtempSync(path.join(os.tmpdir(), 'dt-findings-'));
  });
  after(async function () {
    await stack?.stop();
    if (out) rmSync(out, { recursive: true, force: true });
  });

  const traversal = (taskId: string, list: string[], args: string[], durationSec = 2) =>
    task(stack, {
      taskId,
      devices: list,
      apkUrl: stack.apks['findings.apk']!.url,
      packageName: APP,
      traversal: { durationSec, extraArgs: ['--tick-ms', '100', ...args] },
    });

  it('groups a task over three devices, marks every bug new, sums the task up and uploads its JUnit file', async function () {
    await stack.push(traversal('fa', devices, ['--crashes', '2', '--anrs', '1']));
    const results = await Promise.all(devices.map((d) => stack.waitResult('fa', d, 120_000)));
    for (const r of results) {
      assert.equal(r.status, 'completed', JSON.stringify(r.error));
      assert.equal(r.findings.length, 3);
      assert.ok(
        r.findings.every((f) => f.newForApp === true),
        'the first task to meet a bug marks it new on every device',
      );
    }
    // The same bugs on three phones are three groups, each seen three times on three devices.
    const signatures = [...new Set(results.flatMap((r) => r.findings.map((f) => f.signature)))];
    assert.equal(signatures.length, 3);
    for (const sig of signatures) {
      const g = (await readGroup(stack.redis, APP, sig, stack.prefix))!;
      assert.equal(g.count, 3);
      assert.deepEqual([...g.devices].sort(), devices);
      assert.deepEqual(g.tasks, ['fa']);
      assert.ok(g.example && g.example.frames.length > 0, 'the group keeps an example with frames');
      assert.equal(g.apks.length, 1);
    }

    // The summary and its event, once the last device is in.
    const summary = await waitFor(
      async () => {
        const text = await stack.redis.get(taskSummaryKey('fa', stack.prefix));
        const s = text ? (JSON.parse(text) as TaskSummary) : undefined;
        return s?.finished && s.junitUrl ? s : undefined;
      },
      60_000,
      'the task summary with its JUnit URL',
    );
    assert.deepEqual(
      [
        summary.devices,
        summary.completed,
        summary.failed,
        summary.pending,
        summary.uniqueFindings,
        summary.newFindings,
      ],
      [3, 3, 0, 0, 3, 3],
    );
    assert.deepEqual([summary.crashes, summary.anrs], [6, 3]);
    const events = await stack.redis.xrange(resultsStream(stack.prefix), '-', '+');
    const finished = events.filter(([, f]) => f.includes('task-finished') && f.includes('fa'));
    assert.equal(finished.length, 1, 'one task-finished event');

    // The JUnit file beside the task's reports, valid for Jenkins and GitLab.
    assert.match(summary.junitUrl!, /^file:\/\/.*\/fa\/junit\.xml$/);
    const junit = summary.junitUrl!.replace('file://', '');
    assertJunitValid(junit);
    const xml = readFileSync(junit, 'utf8');
    assert.equal((xml.match(/<testcase /g) ?? []).length, 3, 'one test case per device');
    assert.equal((xml.match(/<failure /g) ?? []).length, 9, 'a failure per crash or ANR on each device');
    assert.match(xml, /at com\.example\.findings\./, 'with the frames');

    // The traversal workflow waited for the publish, so its own result and details say "new".
    const handle = stack.client.workflow.getHandle(traversalWorkflowId('fa', 'fd-1'));
    const wfResult = (await handle.result()) as TraversalResult;
    assert.ok(wfResult.findings.every((f) => f.newForApp === true));
    const meta = await handle.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
    const details = String(meta.currentDetails);
    assert.match(details, /^\*\*com\.example\.findings on fd-1 — completed\*\*/);
    assert.match(details, /\| kind \| signature \| for the app \| times \| exception \| message \|/);
    for (const sig of signatures) assert.match(details, new RegExp(`\`${sig}\`.*\\*\\*new\\*\\*`));
    assert.match(details, /Report: `file:\/\/.*fa\/fd-1\.tar\.gz`/);
    const description = await handle.describe();
    assert.match(String(await description.staticDetails()), /\| Task \| `fa` \|/);
  });

  it('marks bugs met again in a later task as seen before and its new bug as new', async function () {
    await stack.push(traversal('fb', ['fd-1'], ['--crashes', '3', '--anrs', '1']));
    const r = await stack.waitResult('fb', 'fd-1', 120_000);
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    const seen = r.findings.filter((f) => f.newForApp === false).length;
    const fresh = r.findings.filter((f) => f.newForApp === true);
    assert.deepEqual([seen, fresh.length], [3, 1], JSON.stringify(r.findings.map((f) => [f.exception, f.newForApp])));
    const summary = await waitFor(
      async () => {
        const text = await stack.redis.get(taskSummaryKey('fb', stack.prefix));
        return text ? (JSON.parse(text) as TaskSummary) : undefined;
      },
      30_000,
      'summary of fb',
    );
    assert.deepEqual([summary.uniqueFindings, summary.newFindings], [4, 1]);

    // The device workflow's details list its last results, newest first.
    const device = stack.client.workflow.getHandle(deviceWorkflowId('fd-1'));
    // The result reaches Redis a moment before the traversal ends and the device counts it.
    const state = await waitFor(
      async () => {
        const s = (await device.query(deviceStateQuery)) as DeviceState;
        return s.recent?.length === 2 ? s : undefined;
      },
      30_000,
      'the device remembers both results',
    );
    assert.deepEqual(
      state.recent?.map((x) => [x.taskId, x.status, x.newFindings]),
      [
        ['fa', 'completed', 3],
        ['fb', 'completed', 1],
      ],
    );
    const meta = await device.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
    assert.match(
      String(meta.currentDetails),
      /Last results:[^]*\| `fb` \| com\.example\.findings \| completed \| 3 \| 1 \| 1 \|[^]*\| `fa` \|/,
    );
  });

  it('shows the findings of a running traversal as they arrive', async function () {
    // The simulator spreads findings evenly and reports the last at the very end: 3 crashes put two
    // of them in the middle of the run.
    await stack.push(traversal('fc', ['fd-2'], ['--crashes', '3'], 12));
    const handle = stack.client.workflow.getHandle(traversalWorkflowId('fc', 'fd-2'));
    const live = await waitFor(
      async () => {
        const meta = await handle
          .query<{ currentDetails?: string }>('__temporal_workflow_metadata')
          .catch(() => undefined);
        const text = String(meta?.currentDetails ?? '');
        return /— traversing/.test(text) && /Found so far \(2 distinct\)/.test(text) ? text : undefined;
      },
      90_000,
      'both crashes in the details while the run is traversing',
    );
    assert.match(live, /\| crash \| `[0-9a-f]{12}` \| 1 \| \w+Exception \|/);
    const r = await stack.waitResult('fc', 'fd-2', 120_000);
    assert.equal(r.status, 'completed');
  });

  it('prints a task by signature, as JSON, as JUnit, and an app by count, new first (npm run findings)', async function () {
    const table = await findingsCli(stack, '--task', 'fa');
    assert.equal(table.code, 0, table.err);
    assert.match(
      table.out,
      /Task fa \(com\.example\.findings\): 3 devices, 3 completed, 0 failed, 0 cancelled, 0 pending; 3 distinct findings, 3 new for the app/,
    );
    assert.equal((table.out.match(/^\| [0-9a-f]{12} /gm) ?? []).length, 3, table.out);
    assert.match(table.out, /\| 3 +\| 3 +\| new +\|/);

    const json = await findingsCli(stack, '--task', 'fb', '--json');
    assert.equal(json.code, 0, json.err);
    const doc = JSON.parse(json.out) as { groups: { newForApp?: boolean; count: number }[]; summary: TaskSummary };
    assert.equal(doc.groups.length, 4);
    assert.equal(doc.groups.filter((g) => g.newForApp).length, 1);
    assert.equal(doc.summary.finished, true);

    const file = path.join(out, 'fa.xml');
    const junit = await findingsCli(stack, '--task', 'fa', '--junit', file);
    assert.equal(junit.code, 0, junit.err);
    assertJunitValid(file);
    assert.equal((readFileSync(file, 'utf8').match(/<testcase /g) ?? []).length, 3);

    const app = await findingsCli(stack, '--app', APP, '--since', '1d');
    assert.equal(app.code, 0, app.err);
    const rows = app.out.split('\n').filter((l) => /^\| [0-9a-f]{12} /.test(l));
    // Every group was first seen today, so all are new in the window and come by count: the first two
    // crashes 3 (fa) + 1 (fb) + 1 (fc), the ANR 3 + 1, the third crash 1 (fb) + 1 (fc).
    assert.equal(rows.length, 4, app.out);
    const counts = rows.map((l) => Number(l.split('|')[5]));
    assert.deepEqual(counts, [5, 5, 4, 2], app.out);

    const unknown = await findingsCli(stack, '--task', 'no-such-task');
    assert.equal(unknown.code, 1);
    assert.match(unknown.err, /no task no-such-task in Redis/);
    const bad = await findingsCli(stack, '--app', APP, '--since', 'yesterday-ish');
    assert.equal(bad.code, 2);
    assert.match(bad.err, /--since expects a duration like 7d/);
    writeFileSync(path.join(out, 'done'), '');
  });
});
