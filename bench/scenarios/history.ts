/**
 * history — workflow history does not grow with time. Part 1 runs traversals of several durations
 * side by side (one device each, the same app and findings) and counts the events and progress
 * signals of each traversal workflow. Part 2 sends a burst of tasks to ONE device and checks its
 * device workflow: how often it continued as new, the largest history of one run, the largest
 * input it carried over, and that every task ran exactly once.
 *
 * Options: --quick, --durations 15,60,240 (seconds, part 1), --device-tasks 1000 (part 2; 0 skips it).
 */
import path from 'node:path';
import { temporal as proto } from '@temporalio/proto';
import { deviceWorkflowId, traversalWorkflowId, type TraversalRequest } from '../../src/contract/messages';
import { mdTable, MiB, parseOptions, round, say, type ScenarioRun } from '../lib/report';
import { inScenarioDir, startBenchStack } from '../lib/stack';
import { requireBuild, startAgentSim, startWorkerProc } from '../../dev/services';
import { enqueue, waitResults } from '../lib/traffic';

const EventType = proto.api.enums.v1.EventType;

/** Runs the history scenario. */
export const run: ScenarioRun = async ({ args }) => {
  requireBuild(say);
  const o = parseOptions(args);
  const quick = o.has('quick');
  const durations = o.list('durations', quick ? [15, 60] : [15, 60, 240]);
  const deviceTasks = o.num('device-tasks', quick ? 200 : 1000);
  const { rows, soak } = await inScenarioDir('history', async (scope, workDir) => {
    const { temporal, redisUrl, redis, origin } = await startBenchStack(scope, workDir);
    const apk = await origin.addApk('bench-history.apk', 2 * MiB);
    const devices = [...durations.map((d) => `hist-${d}s`), 'soak-1'];
    const agent = await startAgentSim(scope, { devices, logFile: path.join(workDir, 'agent.log') });
    const taskQueue = 'bench-history';
    await startWorkerProc(scope, {
      temporalAddress: temporal.address,
      redisUrl,
      taskQueue,
      dataDir: path.join(workDir, 'data'),
      logFile: path.join(workDir, 'worker.log'),
      env: { DT_LOG_LEVEL: 'warn', DT_MAX_CACHED_WORKFLOWS: '400' },
    });
    const client = temporal.client;
    const request = (taskId: string, deviceId: string, durationSec: number, extraArgs: string[]): TraversalRequest => ({
      taskId,
      deviceId,
      agentUrl: agent.url,
      apkUrl: origin.url('bench-history.apk'),
      apkSha256: apk.sha256,
      packageName: 'com.example.history',
      traversal: { durationSec, extraArgs },
      policy: { heartbeatTimeoutMs: 30_000, initialRetryMs: 500, measureLaunch: true },
    });
    const historyOf = async (workflowId: string, runId?: string) =>
      (await client.workflow.getHandle(workflowId, runId).fetchHistory()).events ?? [];

    // Part 1: the same traversal at several durations, side by side.
    say(`part 1: traversals of ${durations.join(', ')} s side by side`);
    const t0 = Date.now();
    for (const d of durations)
      await enqueue(client, taskQueue, request(`h${d}`, `hist-${d}s`, d, ['--crashes', '3', '--anrs', '1']));
    const results = await waitResults(
      redis,
      durations.map((d) => ({ taskId: `h${d}`, deviceId: `hist-${d}s` })),
      (Math.max(...durations) + 120) * 1000,
    );
    const rows: { durationSec: number; events: number; progressSignals: number; findings: number; status: string }[] =
      [];
    for (const [i, d] of durations.entries()) {
      const events = await historyOf(traversalWorkflowId(`h${d}`, `hist-${d}s`));
      const progressSignals = events.filter(
        (e) =>
          e.eventType === EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED &&
          e.workflowExecutionSignaledEventAttributes?.signalName === 'progress-update',
      ).length;
      rows.push({
        durationSec: d,
        events: events.length,
        progressSignals,
        findings: results[i]!.findings.length,
        status: results[i]!.status,
      });
    }
    say(
      `part 1 done in ${round((Date.now() - t0) / 1000)} s: ${rows.map((r) => `${r.durationSec} s → ${r.events} events`).join(', ')}`,
    );

    // Part 2: a burst of short tasks on one device.
    let soak: Record<string, unknown> | undefined;
    if (deviceTasks > 0) {
      say(`part 2: ${deviceTasks} tasks sent at once to one device`);
      const t1 = Date.now();
      const ids = Array.from({ length: deviceTasks }, (_, i) => ({
        taskId: `soak-${String(i + 1).padStart(5, '0')}`,
        deviceId: 'soak-1',
      }));
      for (const id of ids)
        await enqueue(client, taskQueue, {
          ...request(id.taskId, id.deviceId, 0, []),
          policy: { initialRetryMs: 500, measureLaunch: false },
        });
      const soakResults = await waitResults(redis, ids, deviceTasks * 10_000);
      const wallS = (Date.now() - t1) / 1000;
      // Walk the device workflow's chain of runs, newest first.
      const runs: { runId: string; events: number; inputBytes: number }[] = [];
      let runId: string | undefined = (await client.workflow.getHandle(deviceWorkflowId('soak-1')).describe()).runId;
      while (runId) {
        const events = await historyOf(deviceWorkflowId('soak-1'), runId);
        const started = events[0]?.workflowExecutionStartedEventAttributes;
        const inputBytes = (started?.input?.payloads ?? []).reduce((n, p) => n + (p.data?.length ?? 0), 0);
        runs.push({ runId, events: events.length, inputBytes });
        runId = started?.continuedExecutionRunId || undefined;
      }
      const starts = new Map<string, number>();
      for (const r of runs)
        for (const e of await historyOf(deviceWorkflowId('soak-1'), r.runId)) {
          const id = e.startChildWorkflowExecutionInitiatedEventAttributes?.workflowId;
          if (id) starts.set(id, (starts.get(id) ?? 0) + 1);
        }
      soak = {
        tasks: deviceTasks,
        completed: soakResults.filter((r) => r.status === 'completed').length,
        childStartsPerTask: { max: Math.max(...starts.values()), distinct: starts.size },
        runs: runs.length,
        maxEventsPerRun: Math.max(...runs.map((r) => r.events)),
        maxInputKiB: round(Math.max(...runs.map((r) => r.inputBytes)) / 1024),
        wallS: round(wallS),
        traversalsPerS: round(deviceTasks / wallS, 2),
      };
      say(`part 2 done: ${JSON.stringify(soak)}`);
    }
    return { rows, soak };
  });

  const md = [
    '## History events vs traversal duration',
    '',
    mdTable(
      ['traversal duration', 'history events', 'progress signals', 'findings', 'status'],
      rows.map((r) => [`${r.durationSec} s`, r.events, r.progressSignals, r.findings, r.status]),
    ),
    '',
    'Every traversal runs the same app with 3 crashes and 1 ANR; the count does not depend on the duration, because progress is signalled only per 5-point step (heartbeats and queries write no history).',
    ...(soak
      ? [
          '',
          '## One device, a burst of tasks',
          '',
          mdTable(
            [
              'tasks',
              'completed',
              'distinct children (starts per task, max)',
              'device workflow runs',
              'max events in one run',
              'max carried input',
              'wall',
              'traversals/s',
            ],
            [
              [
                soak.tasks,
                soak.completed,
                `${(soak.childStartsPerTask as { distinct: number }).distinct} (${(soak.childStartsPerTask as { max: number }).max})`,
                soak.runs,
                soak.maxEventsPerRun,
                `${soak.maxInputKiB} KiB`,
                `${soak.wallS} s`,
                soak.traversalsPerS,
              ],
            ],
          ),
          '',
          'All tasks are sent at once, so the first runs of the device workflow carry most of the queue in their continue-as-new input.',
        ]
      : []),
  ].join('\n');
  return { markdown: md, json: { durations: rows, deviceSoak: soak } };
};
