/** The worker's /metrics after a known run, and the JSON log lines. */
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { request } from 'undici';
import { JsonLogger } from '../src/logger';
import { startStack, task, type Stack } from '../dev/stack';

const MiB = 1024 * 1024;

/** Value of one Prometheus series (exact label text), or undefined. */
function series(text: string, name: string, labels = ''): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(labels ? `${name}{${labels}} ` : `${name} `));
  return line ? Number(line.split(' ').pop()) : undefined;
}

describe('metrics and logs', function () {
  let stack: Stack;
  before(async function () {
    stack = await startStack({
      devices: ['m-1', 'm-2', 'm-3'],
      apks: [{ name: 'metrics.apk', size: 3 * MiB }],
      starter: true,
    });
  });
  after(async function () {
    await stack?.stop();
  });

  it('counters in /metrics match what a run did, next to the SDK’s own metrics', async function () {
    const apk = stack.apks['metrics.apk']!;
    await stack.push(task(stack, { taskId: 'm-ok', devices: ['m-1', 'm-2'], apkUrl: apk.url }));
    await stack.push(
      task(stack, { taskId: 'm-404', deviceId: 'm-3', apkUrl: apk.url.replace('metrics.apk', 'nope.apk') }),
    );
    await Promise.all([
      stack.waitResult('m-ok', 'm-1'),
      stack.waitResult('m-ok', 'm-2'),
      stack.waitResult('m-404', 'm-3'),
    ]);
    const res = await request(`${stack.worker.artifactUrl}/metrics`);
    assert.equal(res.statusCode, 200);
    const text = await res.body.text();
    assert.equal(series(text, 'dt_apk_origin_downloads_total'), 2, 'one real download and one 404');
    assert.equal(series(text, 'dt_apk_cache_hits_total'), 1, 'the second device shared the download');
    assert.equal(series(text, 'dt_apk_bytes_downloaded_total'), apk.size);
    assert.equal(series(text, 'dt_artifact_bytes_served_total'), 2 * apk.size, 'two agents fetched it from the cache');
    assert.equal(series(text, 'dt_installs_total'), 2);
    assert.equal(series(text, 'dt_traversals_total', 'outcome="completed"'), 2);
    assert.ok(series(text, 'dt_traversal_seconds_total')! > 0);
    assert.equal(series(text, 'dt_activity_failures_total', 'activity="resolveApk",type="ApkNotFound"'), 1);
    assert.ok(series(text, 'dt_process_resident_memory_bytes')! > 10 * MiB);
    assert.match(text, /^temporal_\w+/m, 'the SDK metrics are merged in');
  });

  it('log lines are JSON with workflowId, taskId and deviceId, and never show a secret', function () {
    const out = new PassThrough();
    const chunks: string[] = [];
    out.on('data', (c: Buffer) => chunks.push(c.toString()));
    const logger = new JsonLogger({ service: 'worker' }, 'info', out as unknown as NodeJS.WritableStream, [
      's3cr3t-token',
    ]);
    logger.info('APK ready', {
      workflowId: 'traversal/task-9/sim-4',
      activityType: 'resolveApk',
      url: 'http://x/?key=s3cr3t-token',
    });
    logger.debug('hidden at info level');
    const lines = chunks.join('').trim().split('\n');
    assert.equal(lines.length, 1);
    const entry = JSON.parse(lines[0]!);
    assert.equal(entry.workflowId, 'traversal/task-9/sim-4');
    assert.equal(entry.taskId, 'task-9');
    assert.equal(entry.deviceId, 'sim-4');
    assert.equal(entry.level, 'info');
    assert.ok(!lines[0]!.includes('s3cr3t-token'), 'secret masked');
  });
});
