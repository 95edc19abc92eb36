/**
 * Operating runs with the real `temporal` CLI: query progress, pause/resume traversals and devices,
 * cancel, change a running traversal's time budget, and find runs by search attribute.
 */
import { requestTraversal } from '../src/starter/task-bridge';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  deviceStateQuery,
  deviceWorkflowId,
  traversalWorkflowId,
  type DeviceState,
  type TraversalProgress,
  type TraversalRequest,
} from '../src/contract/messages';
import { ProgressBoard } from '../src/starter/progress-board';
import { findTemporalCli } from '../dev/temporal-dev';
import { startStack, type Stack } from '../dev/stack';
import { childStarts, runHistories } from './support/history';
import { traversalPids, waitFor } from '../dev/wait';

const run = promisify(execFile);
const MiB = 1024 * 1024;

/** Runs the real CLI against the test server; returns stdout. */
async function temporal(...args: string[]): Promise<string> {
  const cli = process.env.TEST_TEMPORAL_CLI || findTemporalCli();
  const { stdout } = await run(
    cli,
    [...args, '--address', process.env.TEST_TEMPORAL_ADDRESS!, '--namespace', 'default'],
    { timeout: 30_000 },
  );
  return stdout;
}

/** The progress object in `temporal workflow query -o json` output, whatever envelope the CLI uses. */
function findProgress(json: unknown): Record<string, unknown> | undefined {
  if (json && typeof json === 'object') {
    if ('phase' in json && 'percent' in json) return json as Record<string, unknown>;
    for (const v of Object.values(json)) {
      const found = findProgress(v);
      if (found) return found;
    }
  }
  return undefined;
}

/** The device state in `temporal workflow query --name state -o json` output. */
function findState(json: unknown): DeviceState | undefined {
  if (json && typeof json === 'object') {
    if ('paused' in json && 'queue' in json && 'completed' in json) return json as DeviceState;
    for (const v of Object.values(json)) {
      const found = findState(v);
      if (found) return found;
    }
  }
  return undefined;
}

async function queryProgress(workflowId: string): Promise<Record<string, unknown> | undefined> {
  try {
    return findProgress(
      JSON.parse(await temporal('workflow', 'query', '--workflow-id', workflowId, '--name', 'progress', '-o', 'json')),
    );
  } catch {
    return undefined;
  }
}

describe('operating runs with the temporal CLI', function () {
  let stack: Stack;
  const devices = ['op-1', 'op-2', 'op-3', 'op-4', 'op-5', 'op-6'];

  function req(taskId: string, deviceId: string, durationSec: number, tickMs = 100): TraversalRequest {
    return {
      taskId,
      deviceId,
      agentUrl: stack.agent.url,
      apkUrl: stack.apks['op.apk']!.url,
      packageName: 'com.example.operate',
      traversal: { durationSec, extraArgs: ['--tick-ms', String(tickMs)] },
      policy: { heartbeatTimeoutMs: 10_000, initialRetryMs: 200 },
    };
  }
  async function enqueue(r: TraversalRequest): Promise<void> {
    await requestTraversal(stack.client, stack.taskQueue, r);
  }
  const traversing = (id: string, minScreens = 1) =>
    waitFor(
      async () => {
        const p = await queryProgress(id);
        return p && p.phase === 'traversing' && Number(p.screens) >= minScreens ? p : undefined;
      },
      60_000,
      `${id} traversing`,
    );

  before(async function () {
    stack = await startStack({ devices, apks: [{ name: 'op.apk', size: 1 * MiB }] });
  });
  after(async function () {
    await stack?.stop();
  });

  it('`workflow query --name progress` returns phase, percent, screens, elapsed and attempt', async function () {
    await enqueue(req('q', 'op-1', 30));
    const p = await traversing(traversalWorkflowId('q', 'op-1'), 2);
    for (const k of ['phase', 'percent', 'screens', 'elapsedMs', 'attempt', 'taskId', 'deviceId'])
      assert.ok(k in p, `progress has ${k}`);
    assert.equal(p.deviceId, 'op-1');
    assert.ok(Number(p.elapsedMs) > 0);
    assert.equal(p.attempt, 1);

    // While it runs, the Web UI's view of it is current: the phase attribute and the details line.
    await waitFor(
      async () =>
        /traversal\/q\/op-1/.test(
          await temporal(
            'workflow',
            'list',
            '--query',
            'TraversalPhase="traversing" AND DeviceId="op-1"',
            '-o',
            'json',
          ),
        ),
      25_000,
      'the run listed as traversing',
    );
    const meta = await stack.client.workflow
      .getHandle(traversalWorkflowId('q', 'op-1'))
      .query<{ currentDetails?: string }>('__temporal_workflow_metadata');
    assert.match(String(meta.currentDetails), /^com\.example\.operate on op-1 — traversing, \d+%, \d+ screens$/);

    // The starter's progress board on the same run: bars for a terminal, one record per change otherwise.
    const written: string[] = [];
    const out = { write: (t: string) => written.push(t) } as unknown as NodeJS.WriteStream;
    await new ProgressBoard(stack.client, stack.taskQueue, 'bars', out).tick();
    assert.match(written.join(''), /op-1\s+q\s+traversing\s+[█░]{20}\s+\d+%\s+\d+ screens/);
    const emitted: TraversalProgress[] = [];
    const board = new ProgressBoard(stack.client, stack.taskQueue, 'lines', out, 1000, (row) => emitted.push(row));
    await board.tick();
    assert.deepEqual(
      emitted.map((row) => [row.taskId, row.deviceId, row.phase]),
      [['q', 'op-1', 'traversing']],
    );
    await board.tick();
    const bucket = (row: TraversalProgress) => Math.floor(row.percent / 25);
    assert.ok(
      emitted.length === 1 || (emitted.length === 2 && bucket(emitted[1]!) !== bucket(emitted[0]!)),
      'one record per change (phase or 25 % step), not one per poll',
    );

    await temporal(
      'workflow',
      'signal',
      '--workflow-id',
      traversalWorkflowId('q', 'op-1'),
      '--name',
      'budget',
      '--input',
      '{"finishNow": true}',
    );
    assert.equal((await stack.waitResult('q', 'op-1')).status, 'completed');
  });

  it('`signal --name budget` with finishNow stops the tool early and still uploads its report', async function () {
    await enqueue(req('early', 'op-2', 120));
    await traversing(traversalWorkflowId('early', 'op-2'), 5);
    const t0 = Date.now();
    await temporal(
      'workflow',
      'signal',
      '--workflow-id',
      traversalWorkflowId('early', 'op-2'),
      '--name',
      'budget',
      '--input',
      '{"finishNow": true}',
    );
    const r = await stack.waitResult('early', 'op-2');
    const tookMs = Date.now() - t0;
    console.log(`      (result ${tookMs} ms after the finishNow signal, of a 120 s budget)`);
    assert.ok(tookMs < 60_000, `finished well within the budget: ${tookMs} ms`);
    assert.equal(r.status, 'completed');
    assert.equal(r.stoppedEarly, true);
    assert.ok(r.reportUrl, 'report uploaded');
    const summary = JSON.parse(
      readFileSync(path.join(stack.dataDir, 'runs', 'early', 'op-2', 'report', 'summary.json'), 'utf8'),
    );
    assert.equal(summary.status, 'stopped');
    assert.ok(summary.steps < summary.totalSteps, `stopped at step ${summary.steps} of ${summary.totalSteps}`);
  });

  it('`signal --name budget` with extendBySec lengthens a running traversal', async function () {
    // A budget long enough that a slow CLI on a loaded machine still delivers the signal mid-run;
    // once the tool shows it counts to the new end, finishNow ends the run early.
    await enqueue(req('longer', 'op-3', 20));
    const id = traversalWorkflowId('longer', 'op-3');
    await traversing(id);
    await temporal('workflow', 'signal', '--workflow-id', id, '--name', 'budget', '--input', '{"extendBySec": 4}');
    const attemptLog = path.join(stack.dataDir, 'runs', 'longer', 'op-3', 'attempt-1.log');
    await waitFor(
      async () => / total=240 /.test(await fsp.readFile(attemptLog, 'utf8')),
      30_000,
      'the tool counting 240 steps (24 s at 100 ms ticks)',
    );
    await temporal('workflow', 'signal', '--workflow-id', id, '--name', 'budget', '--input', '{"finishNow": true}');
    const r = await stack.waitResult('longer', 'op-3');
    assert.equal(r.status, 'completed');
    assert.equal(r.budgetSec, 24);
    const summary = JSON.parse(
      readFileSync(path.join(stack.dataDir, 'runs', 'longer', 'op-3', 'report', 'summary.json'), 'utf8'),
    );
    assert.equal(summary.totalSteps, 240, 'the tool recomputed its steps for 24 s at 100 ms ticks');
  });

  it('`signal --name pause` holds a traversal between steps until `resume`', async function () {
    // A long budget so the run is surely still traversing when the test sees it (the CLI is slow to
    // start on a loaded machine); finishNow then ends the traversal step after the pause arrived.
    await enqueue(req('pause', 'op-4', 60));
    const id = traversalWorkflowId('pause', 'op-4');
    await traversing(id);
    await temporal('workflow', 'signal', '--workflow-id', id, '--name', 'pause');
    await temporal('workflow', 'signal', '--workflow-id', id, '--name', 'budget', '--input', '{"finishNow": true}');
    // The traversal step finishes, then the run waits before uploading.
    await waitFor(async () => (await queryProgress(id))?.phase === 'paused', 30_000, 'paused');
    // Held between the steps: the traversal step is over and the upload was never scheduled.
    const events = (await stack.client.workflow.getHandle(id).fetchHistory()).events ?? [];
    const scheduled = events.filter((e) => e.activityTaskScheduledEventAttributes);
    const names = scheduled.map((e) => e.activityTaskScheduledEventAttributes!.activityType?.name);
    assert.equal(names.at(-1), 'runTraversal', `the last step scheduled: ${names.join(', ')}`);
    const traversalStep = Number(scheduled.at(-1)!.eventId);
    assert.ok(
      events.some((e) => Number(e.activityTaskCompletedEventAttributes?.scheduledEventId) === traversalStep),
      'the traversal step completed',
    );
    assert.equal(await stack.redis.get(`${stack.prefix}traversal:result:pause:op-4`), null, 'no result while paused');
    await temporal('workflow', 'signal', '--workflow-id', id, '--name', 'resume');
    assert.equal((await stack.waitResult('pause', 'op-4')).status, 'completed');
  });

  it('`signal --name pause` on a device stops it taking work until `resume`', async function () {
    await enqueue(req('dev-first', 'op-5', 0));
    await stack.waitResult('dev-first', 'op-5');
    const workflowId = deviceWorkflowId('op-5');
    // The result reaches Redis a moment before its traversal ends (it waits for its publish): the
    // device is idle only once the traversal has ended.
    await waitFor(
      async () => (await stack.client.workflow.getHandle(workflowId).query(deviceStateQuery)).current === undefined,
      30_000,
      'dev-first ended',
    );
    await temporal('workflow', 'signal', '--workflow-id', workflowId, '--name', 'pause');
    await enqueue(req('dev-held', 'op-5', 0));
    // The device decides whether to start a request in the workflow task that delivers it, so once
    // the state shows the request at all, a device that ignored the pause would show it as current.
    const state = await waitFor(
      async () => {
        const s = findState(
          JSON.parse(await temporal('workflow', 'query', '--workflow-id', workflowId, '--name', 'state', '-o', 'json')),
        );
        return s && JSON.stringify(s).includes('dev-held') ? s : undefined;
      },
      30_000,
      'dev-held in the device state',
    );
    assert.equal(state.paused, true);
    assert.deepEqual(
      (state.queue ?? []).map((q) => q.taskId),
      ['dev-held'],
      'the task waits in the queue',
    );
    assert.equal(state.current, undefined, 'nothing runs');
    const children = (await runHistories(stack.client, workflowId)).flatMap((run) => childStarts(run.events));
    assert.ok(!children.includes(traversalWorkflowId('dev-held', 'op-5')), 'no traversal started for dev-held');
    assert.equal(await stack.redis.get(`${stack.prefix}traversal:result:dev-held:op-5`), null);
    await temporal('workflow', 'signal', '--workflow-id', workflowId, '--name', 'resume');
    assert.equal((await stack.waitResult('dev-held', 'op-5')).status, 'completed');
  });

  it('`workflow cancel` ends the jar, uploads the partial report, cleans up and lets the next task start', async function () {
    await enqueue(req('cli-cancel', 'op-6', 120));
    await enqueue(req('cli-next', 'op-6', 0));
    const id = traversalWorkflowId('cli-cancel', 'op-6');
    await traversing(id, 3);
    assert.ok(traversalPids('op-6').length > 0);
    const t0 = Date.now();
    await temporal('workflow', 'cancel', '--workflow-id', id);
    await waitFor(async () => traversalPids('op-6').length === 0, 30_000, 'process group gone');
    const goneMs = Date.now() - t0;
    const r = await stack.waitResult('cli-cancel', 'op-6');
    assert.equal(r.status, 'cancelled');
    assert.ok(r.reportUrl?.includes('partial'), 'partial report uploaded');
    assert.ok(stack.agent.calls.some((c) => c.deviceId === 'op-6' && c.op === 'uninstall'));
    assert.equal((await stack.waitResult('cli-next', 'op-6')).status, 'completed', 'the next queued task ran');
    console.log(`      (jar process group gone ${goneMs} ms after the cancel command)`);
  });

  it('`workflow list --query` finds the runs of the earlier tests of this suite by DeviceId, TaskId, AppPackage and TraversalPhase', async function () {
    const list = async (q: string) =>
      JSON.parse(await temporal('workflow', 'list', '--query', q, '-o', 'json')) as {
        execution?: { workflowId?: string };
        workflowId?: string;
      }[];
    const ids = (rows: { execution?: { workflowId?: string } }[]) =>
      rows.map((r) => r.execution?.workflowId ?? (r as { workflowId?: string }).workflowId);
    await waitFor(
      async () =>
        ids(await list('DeviceId="op-4" AND WorkflowType="traversalWorkflow"')).includes('traversal/pause/op-4'),
      20_000,
      'DeviceId query',
    );
    assert.deepEqual(ids(await list('TaskId="longer"')), ['traversal/longer/op-3']);
    const byPackage = ids(await list('AppPackage="com.example.operate" AND TaskId="early"'));
    assert.deepEqual(byPackage, ['traversal/early/op-2']);
    await waitFor(
      async () =>
        ids(await list('TraversalPhase="cancelled" AND DeviceId="op-6"')).includes('traversal/cli-cancel/op-6'),
      20_000,
      'phase query',
    );
    const completed = ids(await list('TraversalPhase="completed" AND DeviceId="op-6"'));
    assert.deepEqual(completed, ['traversal/cli-next/op-6']);
    await fsp.access(stack.dataDir);
  });
});
