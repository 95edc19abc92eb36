/**
 * Secrets and the artifact server. The bearer token guards every request; install URLs carry an
 * expiring per-APK signature, never the token. Then the real worker and starter run as processes
 * with a Redis password, a Temporal API key, an artifact token and a report sink token, a few
 * tasks go through (one good, one failing, one dead-lettered), and their logs, the recorded
 * workflow histories and everything they wrote to Redis are searched for the secrets.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, promises as fsp, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { Client, Connection } from '@temporalio/client';
import Redis from 'ioredis';
import { request } from 'undici';
import { ApkCache } from '../src/apk-cache';
import { resultKey } from '../src/contract/redis-keys';
import { ArtifactServer, artifactInstallUrl } from '../src/worker/artifact-server';
import { deploymentFromPrefix, PROJECT_ROOT } from '../src/config';
import { JsonLogger } from '../src/logger';
import {
  deviceWorkflowId,
  publishWorkflowId,
  traversalWorkflowId,
  type TraversalResult,
} from '../src/contract/messages';
import { Metrics } from '../src/metrics';
import { AgentSimulator } from '../sim/agent-sim';
import { SIM_EXTRA_ARGS } from '../sim/traversal-sim-args';
import { ApkOrigin } from '../sim/origin';
import { temporalApiKey, temporalSettings } from '../src/temporal-connection';
import { createDispatcher } from '../src/net/dispatcher';
import { stopProcess } from '../dev/process';
import { workflowBundle } from '../dev/stack';
import { historyText } from './support/history';

const hex = (n: number) => randomBytes(n).toString('hex');

describe('artifact server token', function () {
  this.timeout(30_000);
  const secret = `at-${hex(12)}`;
  let tmp: string;
  let server: ArtifactServer;
  let base: string;
  const sha = 'b'.repeat(64);

  before(async () => {
    tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'dt-token-'));
    const cache = new ApkCache({ dir: tmp, maxBytes: 1024, dispatcher: createDispatcher() });
    await fsp.mkdir(path.join(tmp, 'blobs'), { recursive: true });
    await fsp.writeFile(cache.blobPath(sha), 'apk bytes');
    server = new ArtifactServer({ cache, metrics: new Metrics(), token: secret });
    base = await server.start();
  });
  after(async () => {
    await server.close();
    await fsp.rm(tmp, { recursive: true, force: true });
  });

  async function status(p: string, headers: Record<string, string> = {}): Promise<number> {
    const res = await request(`${base}${p}`, { headers });
    await res.body.dump();
    return res.statusCode;
  }

  it('answers 401 to every request without the token, listing and metrics included, and 403 to a wrong one', async () => {
    for (const p of [`/apk/${sha}.apk`, '/metrics', '/healthz', '/', '/apk/']) assert.equal(await status(p), 401, p);
    assert.equal(await status(`/apk/${sha}.apk`, { authorization: 'Bearer wrong' }), 403);
    assert.equal(await status(`/apk/${sha}.apk?token=wrong`), 403);
  });

  it('accepts the token as a bearer header or in the query string', async () => {
    assert.equal(await status(`/apk/${sha}.apk`, { authorization: `Bearer ${secret}` }), 200);
    assert.equal(await status(`/metrics?token=${secret}`), 200);
    assert.equal(await status('/', { authorization: `Bearer ${secret}` }), 404, 'still no listing');
  });

  it('gives agents install URLs with an expiring signature for that APK only, never the token', async () => {
    const url = artifactInstallUrl(base, sha, secret, 60_000);
    assert.ok(!url.includes(secret), url);
    assert.match(url, /\/apk\/b{64}\.apk\?token=\d+\.[A-Za-z0-9_-]{43}$/);
    assert.equal(await status(url.slice(base.length)), 200);
    const token = new URL(url).searchParams.get('token')!;
    assert.equal(await status(`/apk/${'c'.repeat(64)}.apk?token=${token}`), 403, 'not valid for another APK');
    assert.equal(await status(`/metrics?token=${token}`), 403, 'not valid for metrics');
    const expired = artifactInstallUrl(base, sha, secret, -1000);
    assert.equal(await status(expired.slice(base.length)), 403, 'expired');
    const tampered = url.replace(/token=(\d+)/, (_m, e: string) => `token=${Number(e) + 3600}`);
    assert.equal(await status(tampered.slice(base.length)), 403, 'expiry cannot be extended');
    assert.equal(artifactInstallUrl(base, sha), `${base}/apk/${sha}.apk`, 'no token configured: a plain URL');
  });

  it('masks secrets in log lines in every form they take: plain, URL-encoded, JSON-escaped', () => {
    const out = new PassThrough();
    let text = '';
    out.on('data', (c: Buffer) => (text += c.toString()));
    const pw = 'p@ss"w/rd';
    const logger = new JsonLogger({}, 'debug', out, [encodeURIComponent(pw), 'tok-123']);
    logger.info('connecting', {
      url: `redis://u:${encodeURIComponent(pw)}@h:1`,
      raw: pw,
      header: 'Bearer tok-123',
      err: new Error(`bad ${pw}`),
    });
    assert.ok(!text.includes('p@ss') && !text.includes('p%40ss') && !text.includes('tok-123'), text);
    assert.match(text, /\*\*\*/);
  });
});

interface Proc {
  child: ChildProcess;
  out: () => string;
  stop(): Promise<void>;
}

function spawnService(script: string, env: NodeJS.ProcessEnv): Proc {
  const child = spawn(process.execPath, ['-r', 'ts-node/register/transpile-only', script], {
    cwd: PROJECT_ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (out += c.toString()));
  return { child, out: () => out, stop: () => stopProcess(child, 15_000) };
}

async function waitFor<T>(
  fn: () => Promise<T | undefined> | T | undefined,
  what: string,
  timeoutMs = 90_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== null && (v as unknown) !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe('secrets stay out of logs, errors, histories and Redis', function () {
  this.timeout(180_000);
  const id = hex(4);
  const secrets = {
    redisPassword: `rp-${hex(12)}`,
    temporalApiKey: `tk-${hex(12)}`,
    artifactToken: `at-${hex(12)}`,
    reportSinkToken: `st-${hex(12)}`,
  };
  const prefix = `sec${id}:`;
  const user = `dt-sec-${id}`;
  let tmp: string;
  let admin: Redis;
  let origin: ApkOrigin;
  let agent: AgentSimulator;
  let sink: http.Server;
  const sinkAuth: string[] = [];
  let worker: Proc | undefined;
  let starter: Proc | undefined;
  let client: Client;
  let connection: Connection;

  before(async function () {
    tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'dt-secrets-'));
    const redisUrl = new URL(process.env.TEST_REDIS_URL!);
    admin = new Redis(process.env.TEST_REDIS_URL!);
    await admin.call('ACL', 'SETUSER', user, 'on', `>${secrets.redisPassword}`, '~*', '&*', '+@all');

    origin = new ApkOrigin({ dir: path.join(PROJECT_ROOT, '.tools', 'apks') });
    await origin.start();
    await origin.addApk('sec.apk', 512 * 1024);
    agent = new AgentSimulator({ devices: ['sec-1'], coldStartMs: [50, 100] });
    const agentUrl = await agent.start();
    sink = http.createServer((req, res) => {
      sinkAuth.push(req.headers.authorization ?? '');
      req.resume();
      req.on('end', () =>
        res.writeHead(req.headers.authorization === `Bearer ${secrets.reportSinkToken}` ? 201 : 401).end(),
      );
    });
    await new Promise<void>((r) => sink.listen(0, '127.0.0.1', () => r()));

    const bundleFile = path.join(tmp, 'workflow-bundle.js');
    await fsp.writeFile(bundleFile, (await workflowBundle()).code);
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      TEMPORAL_ADDRESS: process.env.TEST_TEMPORAL_ADDRESS,
      TEMPORAL_NAMESPACE: 'default',
      TEMPORAL_API_KEY: secrets.temporalApiKey,
      // The dev server speaks plaintext; an API key would otherwise switch TLS on.
      TEMPORAL_TLS: 'false',
      REDIS_URL: `redis://${user}:${secrets.redisPassword}@${redisUrl.host}`,
      TASK_QUEUE: `sec-${id}`,
      DT_REDIS_KEY_PREFIX: prefix,
      DT_DATA_DIR: tmp,
      DT_ARTIFACT_PORT: '0',
      DT_ARTIFACT_TOKEN: secrets.artifactToken,
      DT_REPORT_SINK: `http://127.0.0.1:${(sink.address() as AddressInfo).port}/reports`,
      DT_REPORT_SINK_TOKEN: secrets.reportSinkToken,
      DT_ALLOWED_HOSTS: '127.0.0.1',
      DT_TRAVERSAL_EXTRA_ARGS: SIM_EXTRA_ARGS,
      DT_DEFAULT_AGENT_URL: agentUrl,
      DT_WORKFLOW_BUNDLE: bundleFile,
      DT_STARTER_ID: `sec-${id}`,
      DT_PROGRESS: 'off',
      DT_LOG_LEVEL: 'debug',
      DT_KILL_GRACE: '2s',
      DT_CONTROL_POLL_INTERVAL: '500ms',
    };
    worker = spawnService('src/worker.ts', env);
    starter = spawnService('src/starter.ts', env);
    connection = await Connection.connect({ address: process.env.TEST_TEMPORAL_ADDRESS! });
    client = new Client({ connection });
    await waitFor(
      () =>
        worker!.out().includes('"worker started"') ||
        (worker!.child.exitCode !== null ? Promise.reject(new Error(worker!.out())) : undefined),
      'the worker to start',
    );
    await waitFor(
      () =>
        starter!.out().includes('"starter consuming"') ||
        (starter!.child.exitCode !== null ? Promise.reject(new Error(starter!.out())) : undefined),
      'the starter',
    );
  });

  after(async () => {
    await starter?.stop();
    await worker?.stop();
    await connection?.close();
    const keys = await admin.keys(`${prefix}*`);
    if (keys.length) await admin.del(...keys);
    await admin.call('ACL', 'DELUSER', user);
    admin.disconnect();
    await agent.close();
    await origin.close();
    sink.closeAllConnections();
    await new Promise((r) => sink.close(r));
    await fsp.rm(tmp, { recursive: true, force: true });
  });

  it('runs tasks with every secret in use and none of them appears anywhere it could leak', async () => {
    const traversal = { durationSec: 1, extraArgs: ['--tick-ms', '100'] };
    const good = {
      taskId: `sec-ok-${id}`,
      deviceId: 'sec-1',
      apkUrl: origin.url('sec.apk'),
      packageName: 'com.example.secret',
      traversal,
    };
    const missing = {
      ...good,
      taskId: `sec-404-${id}`,
      apkUrl: origin.url('sec.apk').replace('sec.apk', 'missing.apk'),
    };
    const refused = { ...good, taskId: `sec-meta-${id}`, apkUrl: 'http://169.254.169.254/latest/meta-data/app.apk' };
    await admin.lpush(
      `${prefix}traversal:tasks`,
      JSON.stringify(good),
      JSON.stringify(missing),
      JSON.stringify(refused),
      '{"taskId": "sec-broken"',
    );

    const readResult = async (taskId: string) => {
      const raw = await admin.get(resultKey(taskId, 'sec-1', prefix));
      return raw ? (JSON.parse(raw) as TraversalResult) : undefined;
    };
    const ok = await waitFor(() => readResult(good.taskId), 'the good result');
    const failed = await waitFor(() => readResult(missing.taskId), 'the failed result');
    assert.equal(ok.status, 'completed', JSON.stringify(ok.error));
    assert.equal(failed.status, 'failed');
    await waitFor(
      async () => (await admin.llen(`${prefix}traversal:tasks:dead`)) === 2 || undefined,
      'two dead letters',
    );

    // Every secret was really used: the sink saw its token, the agent installed through a signed URL.
    assert.ok(sinkAuth.includes(`Bearer ${secrets.reportSinkToken}`), 'the report sink received the bearer token');
    const install = agent.calls.find((c) => c.op === 'install' && c.status === 200);
    assert.ok(install?.url?.includes('?token='), `the agent installed from a signed URL: ${install?.url}`);
    const artifactUrl = /"artifactServer":"([^"]+)"/.exec(worker!.out())![1]!;
    assert.equal((await request(`${artifactUrl}/metrics`)).statusCode, 401);
    const authed = await request(`${artifactUrl}/metrics`, {
      headers: { authorization: `Bearer ${secrets.artifactToken}` },
    });
    assert.equal(authed.statusCode, 200);
    await authed.body.dump();

    // Everything that could carry a secret.
    const places: Record<string, string> = { 'worker log': worker!.out(), 'starter log': starter!.out() };
    // The spawned services take their deployment name from the key prefix.
    const deployment = deploymentFromPrefix(prefix);
    assert.ok(deployment, 'the key prefix names a deployment');
    for (const taskId of [good.taskId, missing.taskId]) {
      const history = await client.workflow.getHandle(traversalWorkflowId(taskId, 'sec-1', deployment)).fetchHistory();
      places[`history of ${taskId}`] = historyText(history);
      // The publish workflow carries the whole result into Redis.
      const published = await client.workflow.getHandle(publishWorkflowId(taskId, 'sec-1', deployment)).fetchHistory();
      places[`history of publish ${taskId}`] = historyText(published);
    }
    const device = await client.workflow.getHandle(deviceWorkflowId('sec-1', deployment)).fetchHistory();
    places['history of device/sec-1'] = historyText(device);
    for (const key of await admin.keys(`${prefix}*`)) {
      const type = await admin.type(key);
      const value =
        type === 'string'
          ? await admin.get(key)
          : type === 'list'
            ? await admin.lrange(key, 0, -1)
            : type === 'stream'
              ? await admin.xrange(key, '-', '+')
              : type;
      places[`redis ${key}`] = JSON.stringify(value);
    }
    assert.ok(
      places['worker log']!.includes('APK ready') && places['starter log']!.includes('task dead-lettered'),
      'the logs are the real ones',
    );
    const goodHistory = places[`history of ${good.taskId}`]!;
    assert.ok(/originUrl[^,]*sec\.apk/.test(goodHistory), 'the history is searched decoded');
    assert.ok(
      !goodHistory.includes('token=') && !goodHistory.includes(new URL(artifactUrl).host),
      'no install URL, signed or not, is in the history: the installing worker derives it',
    );

    for (const [name, secret] of Object.entries(secrets)) {
      const forms = [secret, encodeURIComponent(secret), Buffer.from(secret).toString('base64')];
      for (const [where, text] of Object.entries(places)) {
        for (const form of forms) assert.ok(!text.includes(form), `${name} appears in the ${where}`);
      }
    }
    console.log(
      `      searched ${Object.keys(places).length} logs, histories and Redis keys (${Object.values(places).reduce((n, t) => n + t.length, 0)} characters) for 4 secrets`,
    );
  });
});

describe('the Temporal API key from a config-file profile', function () {
  it('is known to the log masking even when it is not in the environment', function () {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'dt-profile-'));
    try {
      const file = path.join(dir, 'temporal.toml');
      writeFileSync(file, '[profile.default]\naddress = "127.0.0.1:7233"\napi_key = "key-from-profile-123"\n');
      const settings = temporalSettings({ TEMPORAL_CONFIG_FILE: file });
      assert.equal(temporalApiKey(settings), 'key-from-profile-123');
      const lines: string[] = [];
      const sink = { write: (t: string) => lines.push(t) } as unknown as NodeJS.WritableStream;
      new JsonLogger({ service: 'test' }, 'info', sink, [temporalApiKey(settings)]).info(
        'connecting with key-from-profile-123',
      );
      assert.ok(!lines.join('').includes('key-from-profile-123'), lines.join(''));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
