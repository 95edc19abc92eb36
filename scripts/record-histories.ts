/**
 * Records the workflow histories that test/replay.test.ts replays against the current workflow code
 * (the determinism guard). It runs a few real scenarios on a throwaway stack: an in-memory dev
 * server, a local Redis, the APK origin and agent simulators and the traversal jar, then writes one
 * JSON file per history to test/histories/ and replays each once as a self-check.
 *
 *   npx ts-node --transpile-only scripts/record-histories.ts [--only <name>] [--out <dir>]
 *
 * `--out` writes the recordings to another folder (a trial run that leaves test/histories alone).
 *
 * Re-record only on purpose: a history recorded by old code is exactly what the guard needs. When a
 * workflow change is made behind `patched()`, add a new recording next to the old ones.
 */
import type { WorkflowHandle } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import { AgentSimulator } from '../sim/agent-sim';
import { createTraversalWorker, type TraversalWorker } from '../src/worker/setup';
import { UrlPolicy } from '../src/net/url-policy';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { PROJECT_ROOT } from '../src/config';
import { freePort } from '../src/net/ports';
import { startRedis, type LocalRedis } from '../dev/redis-local';
import { onFreePorts, startDevServer, type DevServer } from '../dev/temporal-dev';
import { requestTraversal } from '../src/starter/task-bridge';
import {
  deviceWorkflowId,
  publishWorkflowId,
  taskReportWorkflowId,
  traversalWorkflowId,
  type DeviceState,
  type TraversalProgress,
} from '../src/contract/messages';
import { TRAVERSAL_PHASE } from '../src/contract/search-attributes';
import { farmHostsKey } from '../src/contract/redis-keys';
import { startStack, task, workflowBundle, type Stack } from '../dev/stack';
import { waitFor } from '../dev/wait';

/** Where the recordings live; test/replay.test.ts reads every *.json here. */
const HISTORIES_DIR = path.join(PROJECT_ROOT, 'test', 'histories');

/** One recorded file: the history in the standard JSON form, plus what replay needs besides it. */
interface RecordedHistory {
  /** Histories do not carry the workflow id, and the traversal puts it into its result. */
  workflowId: string;
  workflowType: string;
  /** What the scenario did, for whoever reads a failing replay. */
  scenario: string;
  /** The history exactly as `temporal workflow show -o json` writes it (proto JSON). */
  history: unknown;
}

const run = promisify(execFile);

const MiB = 1024 * 1024;

/** One scenario: drives the stack, returns the handle whose history to keep. */
interface Scenario {
  name: string;
  scenario: string;
  run(stack: Stack): Promise<WorkflowHandle>;
}

/** The recording's dev server (scenarios that start workers of their own connect to it). */
let recordingAddress = '';

const SCENARIOS: Scenario[] = [
  {
    name: 'traversal-completed',
    scenario: 'a traversal that ran every step and completed',
    run: (stack) => completedTraversal(stack, 'completed', 'rec-1'),
  },
  {
    name: 'traversal-apk-not-found',
    scenario: 'a traversal whose APK URL answered 404: failed at resolveApk, cleanup and publish still ran',
    async run(stack) {
      const url = stack.origin.url('app.apk').replace('app.apk', 'missing.apk');
      await stack.push(
        task(stack, { taskId: 'missing', deviceId: 'rec-2', apkUrl: url, packageName: 'com.example.missing' }),
      );
      const r = await stack.waitResult('missing', 'rec-2');
      expect(
        r.status === 'failed' && r.error?.type === 'ApkNotFound',
        `traversal-apk-not-found ended ${r.status} ${r.error?.type}`,
      );
      return stack.client.workflow.getHandle(traversalWorkflowId('missing', 'rec-2'));
    },
  },
  {
    name: 'traversal-cancelled',
    scenario: 'a traversal cancelled while the jar ran: partial report, cleanup and publish in a non-cancellable scope',
    async run(stack) {
      const handle = await pushTask(stack, 'cancel', 'rec-3', {
        packageName: 'com.example.cancel',
        traversal: { durationSec: 60, extraArgs: ['--tick-ms', '100'] },
      });
      await progressUntil(handle, (p) => p.screens > 0, 'the cancel scenario to traverse');
      await handle.cancel();
      const r = await stack.waitResult('cancel', 'rec-3');
      expect(r.status === 'cancelled', `traversal-cancelled ended ${r.status}`);
      return handle;
    },
  },
  {
    name: 'traversal-paused-resumed',
    scenario: 'a traversal paused by signal while traversing (the pause took effect before the upload), then resumed',
    async run(stack) {
      const handle = await pushTask(stack, 'pause', 'rec-4', {
        packageName: 'com.example.pause',
        traversal: { durationSec: 3, extraArgs: ['--tick-ms', '100'] },
      });
      await progressUntil(handle, (p) => p.phase === 'traversing', 'the pause scenario to traverse');
      await handle.signal('pause');
      // Since pause also holds the running tool, finish it now so the pause shows between steps.
      await handle.signal('budget', { finishNow: true });
      await progressUntil(handle, (p) => p.phase === 'paused', 'the traversal to pause');
      await handle.signal('resume');
      const r = await stack.waitResult('pause', 'rec-4');
      expect(r.status === 'completed', `traversal-paused-resumed ended ${r.status}`);
      return handle;
    },
  },
  {
    name: 'traversal-findings-paused',
    scenario:
      'a traversal whose tool reported crashes and an ANR (shipped to the sink as found), was paused while it ran ' +
      '(the tool held, progress only on 5-point steps) and resumed; the result carries the merged findings',
    async run(stack) {
      const handle = await pushTask(stack, 'findings', 'rec-7', {
        apkSha256: stack.apks['app.apk']!.sha256,
        packageName: 'com.example.findings',
        traversal: { durationSec: 4, extraArgs: ['--tick-ms', '100', '--crashes', '2', '--anrs', '1'] },
      });
      await progressUntil(handle, (p) => p.percent >= 10, 'the findings scenario to traverse');
      await handle.signal('pause');
      await progressUntil(handle, (p) => p.paused, 'the traversal to pause');
      await new Promise((r) => setTimeout(r, 1500));
      await handle.signal('resume');
      const r = await stack.waitResult('findings', 'rec-7');
      expect(
        r.status === 'completed' && r.findings.length === 3,
        `traversal-findings-paused ended ${r.status} with ${r.findings?.length} findings`,
      );
      return handle;
    },
  },
  {
    name: 'device-two-tasks',
    scenario:
      'a device workflow that ran two traversals one after the other and is idle (device workflows never complete)',
    run: (stack) => twoTasks(stack, 'rec-5', ''),
  },
  {
    name: 'device-two-tasks-queue-in-input',
    scenario:
      'two traversals one after the other on a device workflow whose input names its task queue, as the starter ' +
      'gives it since requests carry their task queue (the replay worker polls a queue of its own)',
    run: (stack) => twoTasks(stack, 'rec-11', 'q-'),
  },
  {
    name: 'traversal-completed-agent-heartbeats',
    scenario:
      'a completed traversal recorded after the agent-call-heartbeats patch (agent steps heartbeat; the patch marker is in the history)',
    run: (stack) => completedTraversal(stack, 'patched', 'rec-1', { packageName: 'com.example.patched' }),
  },
  {
    name: 'device-quarantined-resumed',
    scenario:
      'a device workflow (device-quarantine patch) whose agent was offline: two DeviceOffline failures quarantined it, ' +
      'a resume signal released it and the held task completed',
    async run(stack) {
      const apk = stack.apks['app.apk']!;
      const deviceId = 'rec-6';
      stack.agent.setOffline(deviceId, true);
      const policy = {
        heartbeatTimeoutMs: 3000,
        initialRetryMs: 100,
        maxAttempts: 2,
        measureLaunch: false,
        quarantineAfter: 2,
      };
      for (const taskId of ['q1', 'q2', 'q3']) {
        await requestTraversal(stack.client, stack.taskQueue, {
          taskId,
          deviceId,
          agentUrl: stack.agent.url,
          apkUrl: apk.url,
          packageName: 'com.example.quarantine',
          traversal: { durationSec: 1, extraArgs: ['--tick-ms', '100'] },
          policy,
        });
      }
      const handle = stack.client.workflow.getHandle(deviceWorkflowId(deviceId));
      await waitFor(
        async () => (await handle.query<DeviceState>('state')).quarantine !== undefined,
        120_000,
        'the quarantine',
      );
      stack.agent.setOffline(deviceId, false);
      await handle.signal('resume');
      const r = await stack.waitResult('q3', deviceId);
      expect(r.status === 'completed', `the held task ended ${r.status}`);
      await deviceIdle(handle, 3, 'the device workflow to settle after the resume');
      return handle;
    },
  },
  {
    name: 'traversal-completed-publish-apart',
    scenario:
      'a completed traversal recorded after the publish-apart patch: it starts its publish workflow (abandoned child) and ends',
    run: (stack) => completedTraversal(stack, 'apart', 'rec-8', { packageName: 'com.example.apart' }),
  },
  {
    name: 'traversal-completed-install-on-worker',
    scenario:
      'a completed traversal recorded after the install-url-on-worker patch: installApp is told the APK source and ' +
      'derives the install URL itself, so no artifact server URL is in the history',
    run: (stack) => completedTraversal(stack, 'on-worker', 'rec-10', { packageName: 'com.example.onworker' }),
  },
  {
    name: 'traversal-findings-new-or-seen',
    scenario:
      'a traversal recorded after the findings-details patch: its tool found crashes and an ANR (each new signature ' +
      'signalled once, for the live details), the publish workflow said which are new for the app, and the traversal ' +
      'waited for that answer (a child completion and a cancelled timer) before it ended',
    async run(stack) {
      const handle = await pushTask(stack, 'new-or-seen', 'rec-12', {
        packageName: 'com.example.newseen',
        traversal: { durationSec: 3, extraArgs: ['--tick-ms', '100', '--crashes', '3', '--anrs', '1'] },
      });
      const r = await stack.waitResult('new-or-seen', 'rec-12');
      expect(
        r.status === 'completed' && r.findings.length === 4 && r.findings.every((f) => f.newForApp === true),
        `traversal-findings-new-or-seen ended ${r.status} with ${JSON.stringify(r.findings?.map((f) => f.newForApp))}`,
      );
      await handle.result();
      return handle;
    },
  },
  {
    name: 'publish-task-report',
    scenario:
      'a publish workflow recorded after the task-report patch whose result was its task\u2019s last: it published, ' +
      'started the task report workflow (abandoned child) and returned the new signatures',
    async run(stack) {
      await pushTask(stack, 'task-report', 'rec-13', {
        packageName: 'com.example.taskreport',
        traversal: { durationSec: 1, extraArgs: ['--tick-ms', '100', '--crashes', '1'] },
      });
      await stack.waitResult('task-report', 'rec-13');
      const publish = stack.client.workflow.getHandle(publishWorkflowId('task-report', 'rec-13'));
      const out = (await publish.result()) as { taskFinished?: boolean; newSignatures?: string[] } | undefined;
      expect(
        out?.taskFinished === true && out.newSignatures?.length === 1,
        `publish-task-report returned ${JSON.stringify(out)}`,
      );
      return publish;
    },
  },
  {
    name: 'task-report-written',
    scenario:
      'the task report workflow of a finished task: it wrote the task\u2019s JUnit XML to the sink and returned its URL',
    async run(stack) {
      const handle = stack.client.workflow.getHandle(taskReportWorkflowId('task-report'));
      await waitFor(async () => (await handle.describe()) !== undefined, 60_000, 'the task report workflow to start');
      const out = (await handle.result()) as { junitUrl?: string } | undefined;
      expect(!!out?.junitUrl, `task-report-written returned ${JSON.stringify(out)}`);
      return handle;
    },
  },
  {
    name: 'traversal-publish-wait-timed-out',
    scenario:
      'a traversal recorded after the findings-details patch whose Redis refused writes: it waited for its publish ' +
      'workflow up to PUBLISH_WAIT_MS, its timer fired, and it ended saying new-or-seen is not known yet',
    async run(stack) {
      const traversal = await pushTask(stack, 'wait-timeout', 'rec-14', {
        packageName: 'com.example.waittimeout',
        traversal: { durationSec: 1, extraArgs: ['--tick-ms', '100', '--crashes', '1'] },
      });
      await waitFor(async () => (await traversal.describe()) !== undefined, 60_000, 'wait-timeout to start');
      await stack.redis.config('SET', 'maxmemory-policy', 'noeviction');
      await stack.redis.config('SET', 'maxmemory', '1');
      try {
        const r = (await traversal.result()) as { findings: { newForApp?: boolean }[] };
        expect(
          r.findings.every((f) => f.newForApp === undefined),
          'the traversal ended before its publish answered',
        );
      } finally {
        await stack.redis.config('SET', 'maxmemory', '0');
      }
      await stack.waitResult('wait-timeout', 'rec-14');
      return traversal;
    },
  },
  {
    name: 'traversal-host-routed',
    scenario:
      'a completed traversal recorded after the host-routing patch: locateDevice on the shared queue found the ' +
      "phone's host through its agent, and every device step ran on that host's task queue with a schedule-to-start bound",
    run: (stack) => completedTraversal(stack, 'host-routed', 'rec-15', { packageName: 'com.example.hostrouted' }),
  },
  {
    name: 'traversal-waited-for-host',
    scenario:
      "a traversal whose phone's host (known to the farm) had no worker running: resolveApk ended with a " +
      "schedule-to-start timeout on that host's queue, the run said waiting-for-host and scheduled the step there " +
      'again with no bound (activity id host-wait-1); a worker of that host came up, took it and signalled ' +
      'host-took-step, and the run completed',
    async run(stack) {
      const agent = new AgentSimulator({ devices: ['rec-16'], coldStartMs: [50, 100], hostId: 'rec-host' });
      await agent.start();
      const dataDir = mkdtempSync(path.join(os.tmpdir(), 'dt-rec-host-'));
      let late: TraversalWorker | undefined;
      let running: Promise<void> | undefined;
      const connection = await NativeConnection.connect({ address: recordingAddress });
      try {
        const apk = stack.apks['app.apk']!;
        // A host of the farm whose worker ran before and is down now.
        await stack.redis.hset(
          farmHostsKey(stack.prefix),
          'rec-host',
          JSON.stringify({ artifactUrl: '', lastSeen: Date.now() - 3_600_000 }),
        );
        await requestTraversal(stack.client, stack.taskQueue, {
          taskId: 'waited',
          deviceId: 'rec-16',
          agentUrl: agent.url,
          apkUrl: apk.url,
          apkSha256: apk.sha256,
          packageName: 'com.example.waitedforhost',
          traversal: { durationSec: 1, extraArgs: ['--tick-ms', '100'] },
          policy: { initialRetryMs: 200, measureLaunch: false },
        });
        const handle = stack.client.workflow.getHandle(traversalWorkflowId('waited', 'rec-16'));
        await progressUntil(handle, (p) => p.phase === 'waiting-for-host', 'waiting for host rec-host');
        late = await createTraversalWorker({
          config: {
            ...stack.config,
            hostId: 'rec-host',
            dataDir,
            apkCacheDir: path.join(dataDir, 'apk-cache'),
            reportSink: stack.config.reportSink,
          },
          connection,
          namespace: 'default',
          client: stack.client,
          redis: stack.redis,
          workflowBundle: await workflowBundle(),
          redisKeyPrefix: stack.prefix,
          urlPolicy: new UrlPolicy('127.0.0.1'),
        });
        running = late.run();
        const r = await stack.waitResult('waited', 'rec-16');
        expect(r.status === 'completed', `waited ended ${r.status}: ${JSON.stringify(r.error)}`);
        await handle.result();
        return handle;
      } finally {
        late?.shutdown();
        await running?.catch(() => undefined);
        await connection.close();
        await agent.close();
        rmSync(dataDir, { recursive: true, force: true });
      }
    },
  },
  {
    name: 'publish-waited-for-redis',
    scenario:
      'a publish workflow whose Redis refused writes (maxmemory 1 byte, noeviction): its quick attempts failed, it said ' +
      'waiting-for-redis and published once Redis took writes again',
    async run(stack) {
      const traversal = await pushTask(stack, 'oom', 'rec-9', { packageName: 'com.example.oom' });
      await waitFor(async () => (await traversal.describe()) !== undefined, 60_000, 'oom to start');
      await stack.redis.config('SET', 'maxmemory-policy', 'noeviction');
      await stack.redis.config('SET', 'maxmemory', '1');
      try {
        await traversal.result();
        const publish = stack.client.workflow.getHandle(publishWorkflowId('oom', 'rec-9'));
        await waitFor(
          async () => (await publish.describe()).typedSearchAttributes.get(TRAVERSAL_PHASE) === 'waiting-for-redis',
          60_000,
          'the publish workflow to wait for Redis',
        );
      } finally {
        await stack.redis.config('SET', 'maxmemory', '0');
      }
      const r = await stack.waitResult('oom', 'rec-9');
      expect(r.status === 'completed', `publish-waited-for-redis: the traversal ended ${r.status}`);
      const publish = stack.client.workflow.getHandle(publishWorkflowId('oom', 'rec-9'));
      await publish.result();
      return publish;
    },
  },
];

function expect(ok: boolean, message: string): asserts ok {
  if (!ok) throw new Error(message);
}

/**
 * Pushes a task for app.apk (the stack's defaults under `fields`) and returns its traversal
 * workflow's handle; the workflow may not have started yet.
 */
async function pushTask(
  stack: Stack,
  taskId: string,
  deviceId: string,
  fields: Record<string, unknown> = {},
): Promise<WorkflowHandle> {
  await stack.push(task(stack, { taskId, deviceId, apkUrl: stack.apks['app.apk']!.url, ...fields }));
  return stack.client.workflow.getHandle(traversalWorkflowId(taskId, deviceId));
}

/** Two tasks for one device (ids `<prefix>first`, `<prefix>second`), run in turn; returns the idle device workflow. */
async function twoTasks(stack: Stack, deviceId: string, prefix: string): Promise<WorkflowHandle> {
  for (const name of ['first', 'second'])
    await pushTask(stack, `${prefix}${name}`, deviceId, {
      packageName: `com.example.${prefix.replace(/\W/g, '')}${name}`,
    });
  for (const name of ['first', 'second']) await stack.waitResult(`${prefix}${name}`, deviceId);
  const handle = stack.client.workflow.getHandle(deviceWorkflowId(deviceId));
  await deviceIdle(handle, 2, 'the device workflow to finish both children');
  return handle;
}

/** Pushes a task for app.apk with its hash and waits until the traversal completed; returns its handle. */
async function completedTraversal(
  stack: Stack,
  taskId: string,
  deviceId: string,
  fields: Record<string, unknown> = {},
): Promise<WorkflowHandle> {
  const handle = await pushTask(stack, taskId, deviceId, { apkSha256: stack.apks['app.apk']!.sha256, ...fields });
  const r = await stack.waitResult(taskId, deviceId);
  expect(r.status === 'completed', `${taskId} on ${deviceId} ended ${r.status}: ${JSON.stringify(r.error)}`);
  return handle;
}

/** Waits until the traversal's progress satisfies `ok` (a query before it started counts as "not yet"). */
async function progressUntil(
  handle: WorkflowHandle,
  ok: (p: TraversalProgress) => boolean,
  what: string,
): Promise<void> {
  await waitFor(async () => ok(await handle.query<TraversalProgress>('progress')), 60_000, what);
}

/** Waits until the device workflow finished `completed` traversals, runs and queues none, and is not quarantined. */
async function deviceIdle(handle: WorkflowHandle, completed: number, what: string): Promise<void> {
  await waitFor(
    async () => {
      const s = await handle.query<DeviceState>('state');
      return s.completed === completed && s.current === undefined && s.queue.length === 0 && s.quarantine === undefined;
    },
    60_000,
    what,
  );
}

/**
 * The history once it has settled: closed, or (for the never-ending device workflow) ending in a
 * completed workflow task with no activity or child pending, so the recording stops at a quiet point.
 */
async function quietHistory(handle: WorkflowHandle) {
  let history = await handle.fetchHistory();
  await waitFor(
    async () => {
      const desc = await handle.describe();
      history = await handle.fetchHistory();
      if (desc.status.name !== 'RUNNING') return true;
      const last = history.events?.at(-1);
      return (
        last?.workflowTaskCompletedEventAttributes != null &&
        !desc.raw.pendingActivities?.length &&
        !desc.raw.pendingChildren?.length
      );
    },
    60_000,
    `${handle.workflowId} to go quiet`,
  );
  return history;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      only: { type: 'string', multiple: true },
      out: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(
      `usage: record-histories.ts [--only <name>]… [--out <dir>]\nscenarios: ${SCENARIOS.map((s) => s.name).join(', ')}`,
    );
    return;
  }
  const outDir = values.out ? path.resolve(values.out) : HISTORIES_DIR;
  const chosen = values.only?.length ? SCENARIOS.filter((s) => values.only!.includes(s.name)) : SCENARIOS;
  if (chosen.length === 0)
    throw new Error(`--only matched nothing; scenarios: ${SCENARIOS.map((s) => s.name).join(', ')}`);

  const dir = mkdtempSync(path.join(os.tmpdir(), 'dt-record-'));
  let temporal: DevServer | undefined;
  let redis: LocalRedis | undefined;
  let stack: Stack | undefined;
  try {
    [temporal, redis] = await Promise.all([
      onFreePorts(path.join(dir, 'temporal.log')).then((options) => startDevServer(options)),
      freePort().then((port) => startRedis({ port, dir: path.join(dir, 'redis') })),
    ]);
    stack = await startStack({
      address: (recordingAddress = temporal.address),
      redisUrl: redis.url,
      devices: [
        'rec-1',
        'rec-2',
        'rec-3',
        'rec-4',
        'rec-5',
        'rec-6',
        'rec-7',
        'rec-8',
        'rec-9',
        'rec-10',
        'rec-11',
        'rec-12',
        'rec-13',
        'rec-14',
        'rec-15',
      ],
      apks: [{ name: 'app.apk', size: 2 * MiB }],
      starter: true,
      // A result reaches Redis within 2 s of its return (publish-waited-for-redis).
      policy: { publishRetryMaxMs: 2000 },
      // A step its host's worker does not take says so after 2 s (traversal-waited-for-host).
      config: { hostWaitMs: 2000 },
    });

    mkdirSync(outDir, { recursive: true });
    const bundle = await workflowBundle();
    for (const s of chosen) {
      const t0 = Date.now();
      const handle = await s.run(stack);
      const history = await quietHistory(handle);
      const desc = await handle.describe();
      // Prove the run replays before keeping it.
      await Worker.runReplayHistory({ workflowBundle: bundle }, history, handle.workflowId);
      // The CLI writes the standard proto JSON; the SDK's historyToJSON throws "type must be a Type"
      // in this install (two copies of protobufjs 8, see test/replay.test.ts).
      const shown = await run(
        temporal.cli,
        [
          'workflow',
          'show',
          '--address',
          temporal.address,
          '-n',
          temporal.namespace,
          '-w',
          handle.workflowId,
          '-o',
          'json',
        ],
        {
          maxBuffer: 64 * 1024 * 1024,
        },
      );
      const json = JSON.parse(shown.stdout) as { events?: unknown[] };
      expect(
        json.events?.length === history.events?.length,
        `the CLI showed ${json.events?.length} events of ${handle.workflowId}, the SDK fetched ${history.events?.length}`,
      );
      const record: RecordedHistory = {
        workflowId: handle.workflowId,
        workflowType: desc.type,
        scenario: s.scenario,
        history: json,
      };
      const file = path.join(outDir, `${s.name}.json`);
      writeFileSync(file, `${JSON.stringify(record, null, 2)}\n`);
      console.log(
        `${s.name}: ${history.events?.length ?? 0} events, ${desc.status.name}, ${Date.now() - t0} ms → ${path.relative(PROJECT_ROOT, file)}`,
      );
    }
  } finally {
    await stack?.stop();
    await Promise.all([temporal?.stop(), redis?.stop()]);
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(`record-histories: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  process.exit(1);
});
