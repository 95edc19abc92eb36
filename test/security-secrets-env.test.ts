/**
 * The traversal tool's environment. The worker hands the tool its own environment minus the
 * service's credentials: every TEMPORAL_* and REDIS_* variable, DT_ARTIFACT_TOKEN and
 * DT_REPORT_SINK_TOKEN. A real worker process runs with all of them set, plus one harmless
 * variable; a task runs the real simulator jar under `java`, and the jar's environment is read from
 * /proc while it runs.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { budgetSignal } from '../src/contract/messages';
import { AgentSimulator } from '../sim/agent-sim';
import { spawnWorker, type Proc } from './support/procs';
import { FaultSuite } from './support/fault-suite';
import { traversalPids, waitFor, waitForResult } from '../dev/wait';

const hex = (n: number) => randomBytes(n).toString('hex');

describe("the traversal tool's environment", function () {
  this.timeout(180_000);
  const suite = new FaultSuite('env');
  const { id, prefix, taskQueue } = suite;
  const deviceId = `env-${id}`;
  const secrets = {
    TEMPORAL_API_KEY: `tk-${hex(12)}`,
    DT_ARTIFACT_TOKEN: `at-${hex(12)}`,
    DT_REPORT_SINK_TOKEN: `st-${hex(12)}`,
    REDIS_TLS_CA_SECRET: `rc-${hex(12)}`,
  };
  const probe = `kept-${hex(6)}`;
  let apkUrl: string;
  let agent: AgentSimulator;
  let worker: Proc | undefined;

  before(async () => {
    await suite.start();
    ({ url: apkUrl } = await suite.addApk('env.apk', 128 * 1024));
    agent = new AgentSimulator({ devices: [deviceId], coldStartMs: [50, 100] });
    await agent.start();
    worker = await spawnWorker({
      taskQueue,
      redisKeyPrefix: prefix,
      logDir: suite.logDir,
      dataDir: path.join(suite.dir, 'data'),
      env: {
        ...secrets,
        // The dev server speaks plaintext; an API key would otherwise switch TLS on.
        TEMPORAL_TLS: 'false',
        TRAVERSAL_ENV_PROBE: probe,
      },
    });
    suite.procs.push(worker);
  });
  after(async () => {
    await suite.stopProcs();
    const keys = await suite.clients?.redis.keys(`${prefix}*`);
    if (keys?.length) await suite.redis.del(...keys);
    await agent?.close();
    await suite.close();
  });

  it('has no TEMPORAL_*, REDIS_* or token variable, and no secret value, while other variables pass', async () => {
    const taskId = `tenv-${id}`;
    const handle = await suite.enqueue({
      taskId,
      deviceId,
      agentUrl: agent.url,
      apkUrl,
      packageName: 'com.example.env',
      // Long enough to be read while it runs; it is told to finish once read.
      traversal: { durationSec: 600 },
      policy: { heartbeatTimeoutMs: 10_000, initialRetryMs: 200, measureLaunch: false },
    });
    const [pid] = await waitFor(
      () => {
        const pids = traversalPids(deviceId);
        return pids.length > 0 ? pids : undefined;
      },
      120_000,
      'the traversal process',
    );
    const environ = readFileSync(`/proc/${pid}/environ`, 'utf8');
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    await handle.signal(budgetSignal, { finishNow: true });

    assert.equal(path.basename(cmdline[0]!), 'java', `the process read is the tool itself: ${cmdline.join(' ')}`);
    const env = new Map(
      environ
        .split('\0')
        .filter(Boolean)
        .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)] as const),
    );
    const leaked = [...env.keys()].filter((k) =>
      /^(TEMPORAL_|REDIS_|DT_ARTIFACT_TOKEN$|DT_REPORT_SINK_TOKEN$)/.test(k),
    );
    assert.deepEqual(leaked, [], 'credentials variables reached the tool');
    for (const [name, value] of Object.entries(secrets))
      assert.ok(!environ.includes(value), `the value of ${name} reached the tool`);
    assert.equal(env.get('TRAVERSAL_ENV_PROBE'), probe, 'an ordinary variable passes');
    assert.equal(env.get('DT_TRAVERSAL_DEVICE'), deviceId, 'the marker of the run is set');
    assert.ok(env.has('PATH'));
    // The worker itself had them: they were stripped on the way to the tool.
    const workerEnv = readFileSync(`/proc/${worker!.pid}/environ`, 'utf8');
    for (const name of [
      'TEMPORAL_ADDRESS',
      'TEMPORAL_API_KEY',
      'REDIS_URL',
      'REDIS_TLS_CA_SECRET',
      'DT_ARTIFACT_TOKEN',
      'DT_REPORT_SINK_TOKEN',
    ])
      assert.ok(
        workerEnv.split('\0').some((kv) => kv.startsWith(`${name}=`)),
        `the worker has ${name}`,
      );

    const result = await waitForResult(suite.redis, prefix, taskId, deviceId);
    assert.equal(result.status, 'completed', JSON.stringify(result.error));
    console.log(
      `      the tool (pid ${pid}) had ${env.size} variables; the worker ${workerEnv.split('\0').filter(Boolean).length}`,
    );
  });
});
