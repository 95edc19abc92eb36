/**
 * Finding groups and task summaries in a real Redis: publishResult folds each result's findings into
 * one group per app and signature, marks every finding new or seen before, keeps a task's summary,
 * and does all of it once per run however often the publish is retried.
 */
import { strict as assert } from 'node:assert';
import Redis from 'ioredis';
import { createResultPublisherActivities } from '../src/activities/result-publisher';
import type { Finding, TaskSummary, TraversalResult } from '../src/contract/messages';
import { appFindingsKey, findingGroupKeys, resultKey, resultsStream, taskSummaryKey } from '../src/contract/redis-keys';
import { readAppGroups, readGroup, readTaskFindings, groupTaskFindings } from '../src/findings/read';
import { recordTask } from '../src/starter/task-record';
import { signatureOf } from '../src/activities/findings';
import { madeUpResult } from '../dev/results';

const APP = 'com.example.groups';

function finding(kind: 'crash' | 'anr', exception: string, frames: string[], foundAt: string, step = 1): Finding {
  return {
    kind,
    signature: signatureOf(kind, exception, frames),
    exception,
    message: `${exception} happened`,
    frames,
    step,
    attempt: 1,
    foundAt,
  };
}
const CART = ['at com.example.cart.Cart.checkout(Cart.java:10)', 'at android.app.Activity.performCreate(A.java:1)'];
const SEARCH = ['at com.example.search.Query.parse(Query.java:3)'];
const MAIN = ['at com.example.MainActivity.onClick(MainActivity.java:5)'];
const crashA = (at: string, step = 1) => finding('crash', 'java.lang.IllegalStateException', CART, at, step);
const anrB = (at: string) => finding('anr', 'ANR', MAIN, at);
const crashC = (at: string) => finding('crash', 'java.lang.NullPointerException', SEARCH, at);

function result(taskId: string, deviceId: string, findings: Finding[], runId = `run-${taskId}-${deviceId}`) {
  return madeUpResult(taskId, deviceId, APP, findings, {
    runId,
    startedAt: '2026-11-01T10:00:00.000Z',
    finishedAt: '2026-11-01T10:05:00.000Z',
  });
}

describe('finding groups in Redis', function () {
  this.timeout(30_000);
  let redis: Redis;
  const prefix = `fg-${process.pid}-${Date.now()}:`;
  let publishResult: ReturnType<typeof createResultPublisherActivities>['publishResult'];
  const stored = async (taskId: string, deviceId: string) =>
    JSON.parse((await redis.get(resultKey(taskId, deviceId, prefix)))!) as TraversalResult;
  const events = async () =>
    (await redis.xrange(resultsStream(prefix), '-', '+')).map(([, f]) => {
      const o: Record<string, string> = {};
      for (let i = 0; i < f.length; i += 2) o[f[i]!] = f[i + 1]!;
      return o;
    });

  before(async function () {
    redis = new Redis(process.env.TEST_REDIS_URL!);
    publishResult = createResultPublisherActivities({ redis, keyPrefix: prefix }).publishResult;
  });
  after(async function () {
    const keys = await redis.keys(`${prefix}*`);
    if (keys.length) await redis.del(...keys);
    redis.disconnect();
  });

  it('groups a task across devices, says which signatures are new, and finishes the task once', async function () {
    await recordTask(
      redis,
      [
        { taskId: 't1', deviceId: 'd1', packageName: APP } as never,
        { taskId: 't1', deviceId: 'd2', packageName: APP } as never,
      ],
      '2026-11-01T09:59:00.000Z',
      60_000,
      prefix,
    );
    const r1 = result('t1', 'd1', [
      crashA('2026-11-01T10:01:00.000Z', 4),
      { ...crashA('2026-11-01T10:02:00.000Z', 9), message: '', frames: [] },
    ]);
    const out1 = await publishResult(r1);
    assert.deepEqual(out1.newSignatures, [r1.findings[0]!.signature]);
    assert.equal(out1.taskFinished, false, 'd2 is still pending');
    let summary = JSON.parse((await redis.get(taskSummaryKey('t1', prefix)))!) as TaskSummary;
    assert.equal(summary.pending, 1);
    assert.equal(summary.finished, false);

    const r2 = result('t1', 'd2', [crashA('2026-11-01T10:03:00.000Z'), anrB('2026-11-01T10:04:00.000Z')]);
    const out2 = await publishResult(r2);
    assert.equal(out2.taskFinished, true);
    assert.deepEqual(out2.newSignatures.sort(), [crashA('x').signature, anrB('x').signature].sort());
    // Both devices of the first task that met crash A say it is new: the group's first task is t1.
    assert.ok((await stored('t1', 'd1')).findings.every((f) => f.newForApp === true));
    assert.ok((await stored('t1', 'd2')).findings.every((f) => f.newForApp === true));

    const a = (await readGroup(redis, APP, crashA('x').signature, prefix))!;
    assert.equal(a.count, 3, 'two occurrences on d1, one on d2');
    assert.deepEqual(a.devices.sort(), ['d1', 'd2']);
    assert.deepEqual(a.tasks, ['t1']);
    assert.deepEqual(a.apks, ['a'.repeat(64)]);
    assert.equal(a.firstSeen, '2026-11-01T10:01:00.000Z');
    assert.equal(a.lastSeen, '2026-11-01T10:03:00.000Z');
    assert.equal(a.firstTask, 't1');
    assert.deepEqual(a.example?.frames, CART, 'the example keeps its frames');

    summary = JSON.parse((await redis.get(taskSummaryKey('t1', prefix)))!) as TaskSummary;
    assert.deepEqual(
      { devices: summary.devices, completed: summary.completed, pending: summary.pending, finished: summary.finished },
      { devices: 2, completed: 2, pending: 0, finished: true },
    );
    assert.deepEqual({ unique: summary.uniqueFindings, new: summary.newFindings }, { unique: 2, new: 2 });
    assert.deepEqual({ crashes: summary.crashes, anrs: summary.anrs }, { crashes: 3, anrs: 1 });
    assert.ok(summary.finishedAt);
    const finished = (await events()).filter((e) => e.event === 'task-finished');
    assert.equal(finished.length, 1);
    assert.equal((JSON.parse(finished[0]!.summary!) as TaskSummary).uniqueFindings, 2);
    const resultEvents = (await events()).filter((e) => e.event === 'result');
    assert.equal(resultEvents.length, 2);
    assert.equal(resultEvents[1]!.newSignatures!.split(',').length, 2);
    assert.ok((JSON.parse(resultEvents[1]!.result!) as TraversalResult).findings.every((f) => f.newForApp));
  });

  it('counts nothing twice when a publish is retried, and answers the same', async function () {
    const before = (await readGroup(redis, APP, crashA('x').signature, prefix))!.count;
    const length = await redis.xlen(resultsStream(prefix));
    const r2 = result('t1', 'd2', [crashA('2026-11-01T10:03:00.000Z'), anrB('2026-11-01T10:04:00.000Z')]);
    const again = await publishResult(r2);
    assert.equal(again.streamId, null);
    assert.equal(again.taskFinished, true);
    assert.equal(again.newSignatures.length, 2, 'the stored result says which were new');
    assert.equal((await readGroup(redis, APP, crashA('x').signature, prefix))!.count, before);
    assert.equal(await redis.xlen(resultsStream(prefix)), length, 'no second result or task-finished event');
  });

  it('marks a later task\u2019s repeat as seen before and its new bug as new; lists the app by count, new first', async function () {
    const out = await publishResult(
      result('t2', 'd1', [crashA('2026-11-02T10:00:00.000Z'), crashC('2026-11-02T10:01:00.000Z')]),
    );
    assert.deepEqual(out.newSignatures, [crashC('x').signature]);
    const [a, c] = (await stored('t2', 'd1')).findings;
    assert.equal(a!.newForApp, false);
    assert.equal(c!.newForApp, true);
    const group = (await readGroup(redis, APP, crashA('x').signature, prefix))!;
    assert.deepEqual([group.firstTask, group.lastTask, group.count], ['t1', 't2', 4]);
    assert.deepEqual(group.tasks, ['t2', 't1'], 'newest first');

    const all = await readAppGroups(redis, APP, { prefix });
    assert.deepEqual(
      all.map((g) => g.count),
      [4, 1, 1],
    );
    // Since Dec 2: A (seen again) and C (first seen then); C is new in the window, so it comes first.
    const recent = await readAppGroups(redis, APP, { prefix, sinceMs: Date.parse('2026-11-02T00:00:00.000Z') });
    assert.deepEqual(
      recent.map((g) => g.signature),
      [crashC('x').signature, crashA('x').signature],
    );
    assert.equal(await redis.zcard(appFindingsKey(APP, prefix)), 3);
  });

  it('reads a task back, grouped by signature, with pending devices', async function () {
    await recordTask(
      redis,
      ['d1', 'd2', 'd3'].map((d) => ({ taskId: 't3', deviceId: d, packageName: APP }) as never),
      'x',
      60_000,
      prefix,
    );
    await publishResult(result('t3', 'd1', [crashA('2026-11-03T10:00:00.000Z')]));
    await publishResult(
      result('t3', 'd2', [crashA('2026-11-03T10:00:00.000Z'), { ...crashA('2026-11-03T10:01:00.000Z'), frames: [] }]),
    );
    const t = await readTaskFindings(redis, 't3', prefix);
    assert.deepEqual(t.pending, ['d3']);
    assert.equal(t.results.length, 2);
    assert.equal(t.summary?.finished, false);
    const groups = groupTaskFindings(t.results);
    assert.equal(groups.length, 1);
    assert.deepEqual([groups[0]!.count, groups[0]!.devices, groups[0]!.newForApp], [3, ['d1', 'd2'], false]);
  });

  it('counts exactly under concurrent publishes of many devices', async function () {
    const devices = Array.from({ length: 30 }, (_, i) => `c${i}`);
    await recordTask(
      redis,
      devices.map((d) => ({ taskId: 't4', deviceId: d, packageName: APP }) as never),
      'x',
      60_000,
      prefix,
    );
    const outs = await Promise.all(
      devices.map((d) =>
        publishResult(result('t4', d, [crashA('2026-11-04T10:00:00.000Z'), crashA('2026-11-04T10:00:01.000Z')])),
      ),
    );
    assert.equal(outs.filter((o) => o.taskFinished).length, 1, 'exactly one publish sees the task finish');
    assert.equal((await events()).filter((e) => e.event === 'task-finished' && e.taskId === 't4').length, 1);
    const group = (await readGroup(redis, APP, crashA('x').signature, prefix))!;
    assert.equal(group.count, 4 + 3 + 60);
    const summary = JSON.parse((await redis.get(taskSummaryKey('t4', prefix)))!) as TaskSummary;
    assert.deepEqual([summary.completed, summary.crashes, summary.newFindings, summary.uniqueFindings], [30, 60, 0, 1]);
  });

  it('keeps odd text intact and writes nothing when a group key has the wrong type', async function () {
    const odd = {
      ...crashC('2026-11-05T10:00:00.000Z'),
      message: 'quote " slash \\ @@findings@@ "findings":"@@findings@@" \u2603 \ud83d\ude00 tab\t',
    };
    await publishResult(result('t5', 'd1', [odd]));
    const back = (await stored('t5', 'd1')).findings[0]!;
    assert.equal(back.message, odd.message);
    assert.equal(back.newForApp, false);

    const bug = finding(
      'crash',
      'java.lang.ArithmeticException',
      ['at com.example.Calc.div(Calc.java:1)'],
      '2026-11-05T10:00:00.000Z',
    );
    await redis.set(findingGroupKeys(APP, bug.signature, prefix).devices, 'not a zset');
    await assert.rejects(
      publishResult(result('t6', 'd1', [bug])),
      /WRONGTYPE .*devices holds a string, not a zset; nothing was written/,
    );
    assert.equal(
      await redis.exists(resultKey('t6', 'd1', prefix), findingGroupKeys(APP, bug.signature, prefix).group),
      0,
    );
  });

  it('forgets groups not seen within the retention, and never dates one into the future', async function () {
    const short = createResultPublisherActivities({ redis, keyPrefix: prefix, findingRetentionMs: 60_000 });
    const old = finding(
      'crash',
      'java.lang.OutOfMemoryError',
      ['at com.example.Big.load(Big.java:1)'],
      new Date(Date.now() - 3_600_000).toISOString(),
    );
    await short.publishResult(result('t8', 'd1', [old]));
    const keys = findingGroupKeys(APP, old.signature, prefix);
    const ttl = await redis.ttl(keys.group);
    assert.ok(ttl > 0 && ttl <= 60, `the group expires with the retention (ttl ${ttl} s)`);
    assert.equal(
      await redis.zscore(appFindingsKey(APP, prefix), old.signature),
      null,
      'last seen an hour ago: out of the app index',
    );

    const future = finding(
      'crash',
      'java.lang.IllegalArgumentException',
      ['at com.example.Clock.tick(Clock.java:1)'],
      '2099-01-01T00:00:00.000Z',
    );
    const before = Date.now();
    await publishResult(result('t9', 'd1', [future]));
    const g = (await readGroup(redis, APP, future.signature, prefix))!;
    assert.ok(Date.parse(g.lastSeen) <= Date.now() && Date.parse(g.lastSeen) >= before - 1000, g.lastSeen);
  });

  it('publishes a result that carries no findings field (runs from before findings existed)', async function () {
    const old = result('t7', 'd1', []);
    delete (old as Partial<TraversalResult>).findings;
    const out = await publishResult(old);
    assert.ok(out.streamId);
    assert.deepEqual((await stored('t7', 'd1')).findings, []);
  });
});
