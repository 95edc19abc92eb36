/**
 * Agents the operator configured are trusted by the worker's URL policy; agents a request names on
 * its own are not. A real worker process (src/worker.ts, so its policy is the one it assembles
 * from DT_ALLOWED_HOSTS, DT_DEVICE_REGISTRY and DT_DEFAULT_AGENT_URL) runs traversals against agent
 * simulators on loopback addresses that DT_ALLOWED_HOSTS does not list. Requests are signalled
 * straight to the device workflow, around the starter, so what decides is the worker's own policy,
 * not the starter's check of the task.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import type { TraversalRequest } from '../src/contract/messages';
import { AgentSimulator } from '../sim/agent-sim';
import { spawnWorker } from './support/procs';
import { FaultSuite } from './support/fault-suite';
import { waitForResult } from '../dev/wait';

describe("agents of the device registry and DT_DEFAULT_AGENT_URL pass the worker's URL policy", function () {
  this.timeout(180_000);
  const suite = new FaultSuite('reg');
  const { taskQueue, prefix } = suite;
  let apkUrl: string;
  /** Named in the registry file, on 127.0.0.3. */
  let registered: AgentSimulator;
  /** DT_DEFAULT_AGENT_URL, on 127.0.0.5. */
  let fallback: AgentSimulator;
  /** Named by no configuration, on 127.0.0.4: the kind of address the others have. */
  let stranger: AgentSimulator;

  before(async () => {
    await suite.start();
    ({ url: apkUrl } = await suite.addApk('reg.apk', 64 * 1024));
    registered = new AgentSimulator({ devices: ['reg-1'], coldStartMs: [100, 200] });
    fallback = new AgentSimulator({ devices: ['def-1'], coldStartMs: [100, 200] });
    stranger = new AgentSimulator({ devices: ['rogue-1'], coldStartMs: [100, 200] });
    await registered.start(0, '127.0.0.3');
    await fallback.start(0, '127.0.0.5');
    await stranger.start(0, '127.0.0.4');
    const registry = path.join(suite.dir, 'devices.json');
    writeFileSync(registry, JSON.stringify({ 'reg-1': registered.url }));
    const worker = await spawnWorker({
      taskQueue,
      redisKeyPrefix: prefix,
      logDir: suite.logDir,
      dataDir: path.join(suite.dir, 'data'),
      env: {
        // Only the origin's address; the agents' addresses come from the registry and the default.
        DT_ALLOWED_HOSTS: '127.0.0.1',
        DT_DEVICE_REGISTRY: registry,
        DT_DEFAULT_AGENT_URL: fallback.url,
      },
    });
    suite.procs.push(worker);
  });
  after(async () => {
    await suite.stopProcs();
    for (const s of [registered, fallback, stranger]) await s?.close();
    await suite.close();
  });

  function request(taskId: string, deviceId: string, agentUrl: string): TraversalRequest {
    return {
      taskId,
      deviceId,
      agentUrl,
      apkUrl,
      packageName: 'com.example.app',
      traversal: { durationSec: 1, extraArgs: ['--tick-ms', '100'] },
      policy: { initialRetryMs: 200, heartbeatTimeoutMs: 10_000 },
      taskQueue,
    };
  }

  it('a traversal through the registry agent and one through the default agent complete, though DT_ALLOWED_HOSTS lists neither', async () => {
    await suite.enqueue(request('reg-task', 'reg-1', registered.url));
    await suite.enqueue(request('def-task', 'def-1', fallback.url));
    const [viaRegistry, viaDefault] = await Promise.all([
      waitForResult(suite.redis, prefix, 'reg-task', 'reg-1'),
      waitForResult(suite.redis, prefix, 'def-task', 'def-1'),
    ]);
    assert.equal(viaRegistry.status, 'completed', JSON.stringify(viaRegistry.error));
    assert.equal(viaDefault.status, 'completed', JSON.stringify(viaDefault.error));
    assert.ok(registered.calls.some((c) => c.deviceId === 'reg-1' && c.op === 'install' && c.status === 200));
    assert.ok(fallback.calls.some((c) => c.deviceId === 'def-1' && c.op === 'install' && c.status === 200));
  });

  it('a request naming an agent that no configuration lists, on the same kind of address, fails as UrlRefused and never reaches it', async () => {
    await suite.enqueue(request('rogue-task', 'rogue-1', stranger.url));
    const r = await waitForResult(suite.redis, prefix, 'rogue-task', 'rogue-1');
    assert.equal(r.status, 'failed');
    assert.equal(r.error?.type, 'UrlRefused');
    assert.equal(r.error?.nonRetryable, true);
    assert.match(
      r.error!.message,
      new RegExp(
        `device agent ${stranger.url.replace(/\./g, '\\.')}: 127\\.0\\.0\\.4, a loopback address; add the host or its network to DT_ALLOWED_HOSTS`,
      ),
    );
    assert.equal(stranger.stats.requests, 0, 'the stranger agent was never contacted');
  });
});
