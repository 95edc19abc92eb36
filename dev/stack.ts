/**
 * The local stack in one process, for a test suite or the history recorder: a worker on a unique
 * task queue, an APK origin, a device agent simulator, Redis with a unique key prefix, and
 * optionally a starter bridge. Temporal and Redis are servers already running; the mocha global
 * fixture (test/support/global.ts) announces its own in TEST_TEMPORAL_ADDRESS and TEST_REDIS_URL,
 * which are the defaults here. The same stack as separate processes is dev/services.ts.
 */
import type { Client } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import type Redis from 'ioredis';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadConfig, PROJECT_ROOT, type Config } from '../src/config';
import type { RunPolicy, TraversalResult } from '../src/contract/messages';
import { AgentSimulator, type AgentSimOptions } from '../sim/agent-sim';
import { ApkOrigin, type ApkInfo } from '../sim/origin';
import { SIM_EXTRA_ARGS } from '../sim/traversal-sim-args';
import { createStarter } from '../src/starter/create';
import type { TaskBridge } from '../src/starter/task-bridge';
import { createTraversalWorker, type TraversalWorker } from '../src/worker/setup';
import { freePort } from '../src/net/ports';
import { scrapeSdkMetrics, sdkTelemetryOptions } from '../src/worker/sdk-metrics';
import { UrlPolicy } from '../src/net/url-policy';
import { currentWorkflowBundle } from './bundle';
import { APK_DIR } from './services';
import { connectClients, testServers } from './clients';
import { waitForResult } from './wait';

let runtime: Promise<void> | undefined;
/** Port of the SDK's Prometheus exporter in this test process. */
let sdkMetricsPort = 0;

/** Installs the SDK runtime once per test process (quiet logger, Prometheus exporter on a free port). */
export function installRuntime(): Promise<void> {
  runtime ??= (async () => {
    sdkMetricsPort = await freePort();
    Runtime.install({
      logger: new DefaultLogger(process.env.TEST_LOG_LEVEL === 'debug' ? 'DEBUG' : 'ERROR'),
      telemetryOptions: sdkTelemetryOptions(sdkMetricsPort),
    });
  })();
  return runtime;
}

/** The workflow bundle of the current source, built once per process, with the runtime installed. */
export async function workflowBundle(): Promise<WorkflowBundleWithSourceMap> {
  await installRuntime();
  return currentWorkflowBundle();
}

/** Options of a stack. */
export interface StackOptions {
  devices: string[];
  apks?: { name: string; size: number }[];
  agent?: Partial<AgentSimOptions>;
  config?: Partial<Config>;
  /** Start a starter bridge too. */
  starter?: boolean;
  /** Temporal address (default: TEST_TEMPORAL_ADDRESS, the test run's server). */
  address?: string;
  /** URL policy of the worker and starter (default: config.allowedHosts, which allows 127.0.0.1 here). */
  urlPolicy?: UrlPolicy;
  /** Redis of the whole stack, worker and starter (default: TEST_REDIS_URL, the test run's Redis). */
  redisUrl?: string;
  /** Run policy fields the starter puts into every request, over the stack's defaults. */
  policy?: Partial<RunPolicy>;
  /** The starter's DT_DEPLOYMENT (default none: unscoped workflow ids). */
  deployment?: string;
}

/** A running stack; `stop()` tears everything down. */
export interface Stack {
  prefix: string;
  taskQueue: string;
  config: Config;
  client: Client;
  redis: Redis;
  agent: AgentSimulator;
  origin: ApkOrigin;
  apks: Record<string, ApkInfo & { url: string }>;
  worker: TraversalWorker;
  bridge?: TaskBridge;
  dataDir: string;
  /** LPUSH a task (object or raw string) into this stack's task list. */
  push(task: unknown): Promise<void>;
  /** Polls Redis until the result of taskId on deviceId appears. */
  waitResult(taskId: string, deviceId: string, timeoutMs?: number): Promise<TraversalResult>;
  stop(): Promise<void>;
}

/** Starts a stack against running Temporal and Redis servers. */
export async function startStack(opts: StackOptions): Promise<Stack> {
  const id = randomUUID().slice(0, 8);
  const prefix = `t${id}:`;
  const taskQueue = `tq-${id}`;
  const dataDir = mkdtempSync(path.join(os.tmpdir(), `dt-stack-${id}-`));
  const config = loadConfig(
    {},
    {
      taskQueue,
      dataDir,
      apkCacheDir: path.join(dataDir, 'apk-cache'),
      reportSink: `file://${path.join(dataDir, 'sink')}`,
      artifactPort: 0,
      traversalJar: path.join(PROJECT_ROOT, '.tools', 'traversal-sim.jar'),
      heartbeatTimeoutMs: 10_000,
      killGraceMs: 2000,
      controlPollMs: 500,
      // The test servers all listen on loopback; the URL policy refuses it unless allow-listed.
      allowedHosts: '127.0.0.1',
      // Tasks of the suites drive the simulator's speed and fault knobs.
      traversalExtraArgs: SIM_EXTRA_ARGS,
      ...opts.config,
    },
  );
  const address = opts.address ?? testServers().address;
  const redisUrl = opts.redisUrl ?? testServers().redisUrl;
  const wfBundle = await workflowBundle();

  const origin = new ApkOrigin({ dir: APK_DIR });
  await origin.start();
  const apks: Stack['apks'] = {};
  for (const a of opts.apks ?? []) {
    const info = await origin.addApk(a.name, a.size);
    apks[a.name] = { ...info, url: origin.url(a.name) };
  }
  const agent = new AgentSimulator({ devices: opts.devices, coldStartMs: [100, 200], ...opts.agent });
  const agentUrl = await agent.start();

  const clients = await connectClients({ address, redisUrl });
  const { client, redis } = clients;
  const native = await NativeConnection.connect({ address });
  const urlPolicy = opts.urlPolicy ?? new UrlPolicy(config.allowedHosts);
  const worker = await createTraversalWorker({
    config,
    connection: native,
    namespace: 'default',
    client,
    redis,
    workflowBundle: wfBundle,
    redisKeyPrefix: prefix,
    urlPolicy,
    sdkMetrics: () => scrapeSdkMetrics(sdkMetricsPort),
  });
  const running = worker.run();

  let bridge: TaskBridge | undefined;
  if (opts.starter) {
    bridge = createStarter({
      // The deployment is the starter's alone here: the stack's worker keeps unscoped ids.
      config: { ...config, starterId: `starter-${id}`, deployment: opts.deployment ?? '' },
      ...clients,
      agents: { agentFor: () => agentUrl },
      urlPolicy,
      keyPrefix: prefix,
      policy: { initialRetryMs: 200, ...opts.policy },
    }).start();
  }

  let stopped = false;
  return {
    prefix,
    taskQueue,
    config,
    client,
    redis,
    agent,
    origin,
    apks,
    worker,
    bridge,
    dataDir,
    async push(task) {
      await redis.lpush(`${prefix}traversal:tasks`, typeof task === 'string' ? task : JSON.stringify(task));
    },
    waitResult: (taskId, deviceId, timeoutMs) => waitForResult(redis, prefix, taskId, deviceId, timeoutMs),
    async stop() {
      if (stopped) return;
      stopped = true;
      await bridge?.stop();
      worker.shutdown();
      await running.catch(() => undefined);
      await native.close();
      await clients.close();
      await agent.close();
      await origin.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** A task for the stack's agent with sensible test defaults. */
export function task(stack: Stack, fields: Record<string, unknown>): Record<string, unknown> {
  return {
    agentUrl: stack.agent.url,
    packageName: 'com.example.app',
    traversal: { durationSec: 1, extraArgs: ['--tick-ms', '100'] },
    ...fields,
  };
}
