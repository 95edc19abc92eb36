/**
 * findings — what grouping costs per published finding. publishResult writes a result, its stream
 * event, the app's finding groups and the task's summary in one Redis script; this scenario
 * publishes results of several shapes side by side (rounds of one block per shape, in turn) against
 * one redis-server and reports, per shape, the time of one publish as the client sees it and as
 * Redis spent it (INFO commandstats, reset before each block), and the cost of one finding: the
 * difference to the result with no findings, divided by the findings. A last shape runs after the
 * app already holds many groups, to show that the cost does not grow with what Redis keeps.
 *
 * Options: --quick, --rounds 5, --block 100 (publishes per shape and round), --seed-groups 20000.
 */
import type Redis from 'ioredis';
import path from 'node:path';
import { createResultPublisherActivities } from '../../src/activities/result-publisher';
import { signatureOf } from '../../src/activities/findings';
import type { Finding, TraversalResult } from '../../src/contract/messages';
import { findingGroupKeys } from '../../src/contract/redis-keys';
import { redisClient, startLocalRedis } from '../../dev/services';
import { madeUpResult } from '../../dev/results';
import { mdTable, mean, parseOptions, percentile, round, say, type ScenarioRun } from '../lib/report';
import { inScenarioDir } from '../lib/stack';

const APP = 'com.example.bench';

/** One result shape: how many findings, over how many signatures. */
interface Shape {
  name: string;
  findings: number;
  signatures: number;
}

/** An in-app stack of 14 frames, like a real Android crash, distinct per bug. */
function frames(bug: number): string[] {
  return [
    `at com.example.bench.area${bug % 37}.Screen${bug}.onAction(Screen${bug}.java:${40 + bug})`,
    `at com.example.bench.area${bug % 37}.Presenter${bug}.handle(Presenter${bug}.java:88)`,
    'at android.view.View.performClick(View.java:7448)',
    'at android.view.View.performClickInternal(View.java:7425)',
    'at android.view.View.access$3600(View.java:810)',
    'at android.view.View$PerformClick.run(View.java:28305)',
    'at android.os.Handler.handleCallback(Handler.java:938)',
    'at android.os.Handler.dispatchMessage(Handler.java:99)',
    'at android.os.Looper.loopOnce(Looper.java:201)',
    'at android.os.Looper.loop(Looper.java:288)',
    'at android.app.ActivityThread.main(ActivityThread.java:7870)',
    'at java.lang.reflect.Method.invoke(Native Method)',
    'at com.android.internal.os.RuntimeInit$MethodAndArgsCaller.run(RuntimeInit.java:548)',
    'at com.android.internal.os.ZygoteInit.main(ZygoteInit.java:1003)',
  ];
}

/** A result of `shape`, as a traversal publishes it: frames only on the first of each signature. */
function resultOf(shape: Shape, taskId: string, deviceId: string, firstBug: number): TraversalResult {
  const findings: Finding[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < shape.findings; i++) {
    const bug = firstBug + (i % Math.max(1, shape.signatures));
    const exception = 'java.lang.IllegalStateException';
    const stack = frames(bug);
    const signature = signatureOf('crash', exception, stack);
    const first = !seen.has(signature);
    seen.add(signature);
    findings.push({
      kind: 'crash',
      signature,
      exception,
      message: first ? `state ${bug} is not allowed here (in ${APP}, pid 4242)` : '',
      frames: first ? stack : [],
      step: i,
      attempt: 1,
      foundAt: new Date(Date.now() + i).toISOString(),
    });
  }
  return madeUpResult(taskId, deviceId, APP, findings, {
    apk: { sha256: 'b'.repeat(64), size: 1, fromCache: true },
    screens: 40,
    runId: `${taskId}-${deviceId}`,
  });
}

/** Redis's own time in EVAL/EVALSHA since the last reset, µs, and the calls. */
async function scriptTime(redis: Redis): Promise<{ usec: number; calls: number }> {
  const info = await redis.info('commandstats');
  let usec = 0;
  let calls = 0;
  for (const m of info.matchAll(/cmdstat_(?:eval|evalsha):calls=(\d+),usec=(\d+)/g)) {
    calls += Number(m[1]);
    usec += Number(m[2]);
  }
  return { usec, calls };
}

/** Runs the findings scenario. */
export const run: ScenarioRun = async ({ args }) => {
  const o = parseOptions(args);
  const quick = o.has('quick');
  const rounds = o.num('rounds', quick ? 2 : 5);
  const block = o.num('block', quick ? 40 : 100);
  const seedGroups = o.num('seed-groups', quick ? 2000 : 20_000);
  const shapes: Shape[] = [
    { name: 'no findings', findings: 0, signatures: 0 },
    { name: '10 findings, 10 signatures', findings: 10, signatures: 10 },
    { name: '50 findings, 5 signatures', findings: 50, signatures: 5 },
    { name: '200 findings, 50 signatures', findings: 200, signatures: 50 },
  ];
  const rows = await inScenarioDir('findings', async (scope, workDir) => {
    const local = await startLocalRedis(scope, path.join(workDir, 'redis'));
    const redis = redisClient(scope, local.url);
    const { publishResult } = createResultPublisherActivities({ redis, keyPrefix: 'bench:' });
    const client: Record<string, number[]> = {};
    const server: Record<string, { usec: number; calls: number }> = {};
    let serial = 0;
    const measureBlock = async (shape: Shape, label: string, bugBase: number) => {
      await redis.config('RESETSTAT');
      for (let i = 0; i < block; i++) {
        serial++;
        // Every result comes from its own task and device, and meets bugs the app already knows
        // (after the first block), as a lab's runs of one app mostly do.
        const result = resultOf(shape, `task-${serial}`, `dev-${serial % 60}`, bugBase);
        const t0 = process.hrtime.bigint();
        await publishResult(result);
        (client[label] ??= []).push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
      const s = await scriptTime(redis);
      const acc = (server[label] ??= { usec: 0, calls: 0 });
      acc.usec += s.usec;
      acc.calls += s.calls;
    };
    say(`${rounds} rounds of ${block} publishes per shape, shapes in turn`);
    for (let r = 0; r < rounds; r++) for (const shape of shapes) await measureBlock(shape, shape.name, 0);

    // The app now holds groups of many other bugs: the same 10-signature shape again.
    say(`seeding ${seedGroups} other groups of the app`);
    for (let b = 0; b < seedGroups; b += 50)
      await publishResult(
        resultOf({ name: 'seed', findings: 50, signatures: 50 }, `seed-${b}`, 'seed-dev', 10_000 + b),
      );
    const after = {
      name: `10 findings, 10 signatures, app holding ${seedGroups} more groups`,
      findings: 10,
      signatures: 10,
    };
    for (let r = 0; r < rounds; r++) await measureBlock(after, after.name, 0);

    const base = server['no findings']!;
    const baseUs = base.usec / Math.max(1, base.calls);
    const baseMs = mean(client['no findings']!);
    const memory = Number(/used_memory:(\d+)/.exec(await redis.info('memory'))?.[1] ?? 0);
    // What one group keeps, measured on a group met by every result of the run (its sets are full).
    const busy = resultOf(shapes[1]!, 'probe', 'probe', 0).findings[0]!.signature;
    const keys = Object.values(findingGroupKeys(APP, busy, 'bench:'));
    const groupBytes = (await Promise.all(keys.map((k) => redis.memory('USAGE', k)))).reduce<number>(
      (sum, n) => sum + Number(n ?? 0),
      0,
    );
    return [...shapes, after].map((shape) => {
      const times = client[shape.name]!;
      const s = server[shape.name]!;
      const us = s.usec / Math.max(1, s.calls);
      const perFinding = shape.findings ? (us - baseUs) / shape.findings : undefined;
      const perFindingClient = shape.findings ? ((mean(times) - baseMs) * 1000) / shape.findings : undefined;
      return {
        shape: shape.name,
        publishes: times.length,
        clientMeanMs: round(mean(times), 2),
        clientP95Ms: round(percentile(times, 95), 2),
        redisUsPerPublish: round(us, 0),
        redisUsPerFinding: perFinding === undefined ? undefined : round(perFinding, 1),
        clientUsPerFinding: perFindingClient === undefined ? undefined : round(perFindingClient, 1),
        redisMemoryMiB: round(memory / 1024 / 1024, 1),
        busiestGroupKiB: round(groupBytes / 1024, 1),
      };
    });
  });
  const markdown = [
    '# findings — what grouping costs per published finding',
    '',
    'Each publish writes the result, its stream event, the finding groups of its signatures and the',
    "task's summary in one Redis script. Per finding = (time of the shape − time of a result with no",
    'findings) / findings. Redis time from INFO commandstats (EVAL), reset before each block; client time',
    'around `publishResult` (one connection, one publish at a time, loopback). Shapes ran in turn, in',
    'rounds, so they share the machine alike; the last shape ran after seeding the app with more groups.',
    '',
    mdTable(
      [
        'shape',
        'publishes',
        'client mean ms',
        'client p95 ms',
        'Redis µs / publish',
        'Redis µs / finding',
        'client µs / finding',
      ],
      rows.map((r) => [
        r.shape,
        r.publishes,
        r.clientMeanMs,
        r.clientP95Ms,
        r.redisUsPerPublish,
        r.redisUsPerFinding ?? '-',
        r.clientUsPerFinding ?? '-',
      ]),
    ),
    '',
    `Redis memory at the end: ${rows[0]?.redisMemoryMiB} MiB (results, stream and groups). The busiest group ` +
      `(met by most results, its device, task and APK sets at their caps) takes ${rows[0]?.busiestGroupKiB} KiB in all four keys.`,
  ].join('\n');
  return { markdown, json: { rows }, file: 'findings' };
};
