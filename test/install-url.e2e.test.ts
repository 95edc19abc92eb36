/**
 * The install URL belongs to the worker that runs installApp: it is derived there and never enters
 * workflow history. Real parts: the dev server, Redis, the APK origin and agent simulators, a worker
 * whose artifact server signs its URLs. Inputs as an earlier version recorded them are handed to the
 * real worker by a small workflow (test/support/install-workflow.ts) on a task queue of its own.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { DefaultLogger, NativeConnection, Worker, bundleWorkflowCode } from '@temporalio/worker';
import type { InstallAppInput } from '../src/activities/device-agent';
import { deviceWorkflowId, publishWorkflowId, traversalWorkflowId } from '../src/contract/messages';
import { historyText, runHistories } from './support/history';
import { installOnce } from './support/install-workflow';
import { installRuntime, startStack, task, type Stack } from '../dev/stack';

const MiB = 1024 * 1024;

describe('the install URL is derived by the worker that installs', function () {
  this.timeout(120_000);
  let stack: Stack;
  let connection: NativeConnection;
  let worker: Worker;
  let running: Promise<void>;
  const queue = `install-wf-${randomUUID().slice(0, 8)}`;

  before(async function () {
    stack = await startStack({
      devices: ['iu-1', 'iu-2', 'iu-3', 'iu-4'],
      apks: [
        { name: 'iu.apk', size: 1 * MiB },
        { name: 'iu-fresh.apk', size: 1 * MiB },
      ],
      config: { artifactToken: `tok-${randomUUID()}` },
      starter: true,
    });
    await installRuntime();
    connection = await NativeConnection.connect({ address: process.env.TEST_TEMPORAL_ADDRESS! });
    worker = await Worker.create({
      connection,
      taskQueue: queue,
      workflowBundle: await bundleWorkflowCode({
        workflowsPath: require.resolve('./support/install-workflow'),
        logger: new DefaultLogger('WARN'),
      }),
    });
    running = worker.run();
  });
  after(async function () {
    if (worker?.getState() === 'RUNNING') worker.shutdown();
    await running?.catch(() => undefined);
    await connection?.close();
    await stack?.stop();
  });

  /** Installs through the real worker with `input`, and returns the URL the agent was told to fetch. */
  async function install(input: InstallAppInput): Promise<string> {
    const before = stack.agent.calls.length;
    const result = await stack.client.workflow.execute(installOnce, {
      taskQueue: queue,
      workflowId: `install-${randomUUID()}`,
      args: [stack.taskQueue, input],
    });
    assert.equal(result.installed, true);
    const call = stack.agent.calls
      .slice(before)
      .find((c) => c.op === 'install' && c.deviceId === input.deviceId && c.status === 200);
    assert.ok(call?.url, `the agent installed on ${input.deviceId}`);
    return call.url;
  }

  it('a cache-delivery traversal leaves neither the artifact server address nor its signature in any history', async function () {
    const apk = stack.apks['iu.apk']!;
    await stack.push(task(stack, { taskId: 'no-url', deviceId: 'iu-1', apkUrl: apk.url, apkSha256: apk.sha256 }));
    const r = await stack.waitResult('no-url', 'iu-1');
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    assert.deepEqual(
      Object.keys(r.apk ?? {}).sort(),
      ['fromCache', 'sha256', 'size'],
      'the result names no install URL',
    );

    const installUrl = stack.agent.calls.find((c) => c.op === 'install' && c.deviceId === 'iu-1')?.url ?? '';
    assert.ok(installUrl.startsWith(`${stack.worker.artifactUrl}/apk/`), `installed from this worker: ${installUrl}`);
    const signature = new URL(installUrl).searchParams.get('token') ?? '';
    assert.match(signature, /^\d+\.[\w-]{43}$/, 'the agent got a signed URL');
    const address = new URL(stack.worker.artifactUrl).host;

    const histories: Record<string, string> = {};
    for (const id of [
      traversalWorkflowId('no-url', 'iu-1'),
      publishWorkflowId('no-url', 'iu-1'),
      deviceWorkflowId('iu-1'),
    ]) {
      for (const { runId, events } of await runHistories(stack.client, id))
        histories[`${id} (${runId})`] = historyText({ events });
    }
    const traversal = Object.entries(histories).find(([name]) =>
      name.startsWith(traversalWorkflowId('no-url', 'iu-1')),
    )![1];
    assert.match(traversal, /install-url-on-worker/, 'the run took the patched path');
    assert.ok(traversal.includes(apk.url), 'payloads are searched decoded');
    for (const [name, text] of Object.entries(histories)) {
      assert.ok(!text.includes(address), `the history of ${name} names the artifact server ${address}`);
      assert.ok(!text.includes(signature.split('.')[1]!), `the history of ${name} holds the signature`);
      assert.ok(!text.includes('token='), `the history of ${name} holds a token parameter`);
    }
  });

  it('an installApp input recorded before the upgrade, naming a gone artifact server, installs from this worker', async function () {
    const apk = stack.apks['iu.apk']!;
    await stack.worker.cache.resolve(apk.url, apk.sha256);
    const url = await install({
      deviceId: 'iu-2',
      agentUrl: stack.agent.url,
      packageName: 'com.example.recorded',
      url: `http://127.0.0.1:9/apk/${apk.sha256}.apk?token=1.${'A'.repeat(43)}`,
      sha256: apk.sha256,
    });
    assert.ok(url.startsWith(`${stack.worker.artifactUrl}/apk/${apk.sha256}.apk?token=`), `a fresh signed URL: ${url}`);
  });

  it('an installApp input recorded before the upgrade in direct delivery installs from the origin', async function () {
    const apk = stack.apks['iu.apk']!;
    const url = await install({
      deviceId: 'iu-3',
      agentUrl: stack.agent.url,
      packageName: 'com.example.direct',
      url: apk.url,
      sha256: apk.sha256,
    });
    assert.equal(url, apk.url);
  });

  it('an install on a worker whose cache lacks the APK fetches it from the origin first', async function () {
    const apk = stack.apks['iu-fresh.apk']!;
    assert.equal(await stack.worker.cache.stat(apk.sha256), undefined, 'not cached yet');
    const url = await install({
      deviceId: 'iu-4',
      agentUrl: stack.agent.url,
      packageName: 'com.example.fresh',
      apk: { originUrl: apk.url, sha256: apk.sha256, delivery: 'cache' },
    });
    assert.ok(
      url.startsWith(`${stack.worker.artifactUrl}/apk/${apk.sha256}.apk?token=`),
      `installed from this worker: ${url}`,
    );
    assert.equal(await stack.worker.cache.stat(apk.sha256), apk.size, 'the APK is in this host cache');
    assert.equal(stack.origin.stats('iu-fresh.apk').gets, 1, 'one origin download');
  });
});
