/**
 * Assembles a traversal worker from explicit parts: APK cache, artifact server, activities and the
 * Temporal Worker. Used by src/worker.ts and by the tests (which hand in their own servers).
 *
 * Start-up on a host where a worker died: end its orphaned traversal process groups, then fail the
 * attempts its journal names (src/activities/traversal/attempt-journal.ts) so Temporal retries them now rather than
 * after their heartbeat timeout, then take work. From then on, at start and every DT_SWEEP_INTERVAL,
 * the disk sweep (src/worker/disk-sweeper.ts) removes orphaned APK part files and old run folders.
 */
import type { Client } from '@temporalio/client';
import { Worker, type NativeConnection, type WorkerOptions, type WorkflowBundleOption } from '@temporalio/worker';
import type Redis from 'ioredis';
import type { Dispatcher } from 'undici';
import { loadDeviceRegistry, urlPolicyFor } from '../device-registry';
import { createDispatcher } from '../net/dispatcher';
import type { UrlPolicy } from '../net/url-policy';
import { createActivities, engineOf } from '../activities';
import { ApkCache } from '../apk-cache';
import { endOrphanedRuns } from '../activities/traversal/process-group';
import { ArtifactServer, artifactInstallUrl } from './artifact-server';
import { dataFolders, type Config } from '../config';
import { DiskSweeper } from './disk-sweeper';
import { PeerDirectory } from './peer-directory';
import { HostRecordKeeper } from './host-records';
import { budgetQuery, hostTaskQueue, hostTookStepSignal, progressSignal } from '../contract/messages';
import { Metrics } from '../metrics';
import os from 'node:os';
import { AttemptJournal, failDeadWorkerAttempts, journalDir } from '../activities/traversal/attempt-journal';

/** Parts a worker needs; the caller owns and closes the connection, client and Redis. */
export interface TraversalWorkerOptions {
  config: Config;
  connection: NativeConnection;
  namespace: string;
  /** Client used to push progress into running traversal workflows. */
  client: Client;
  redis: Redis;
  /** Prebuilt workflow bundle; default bundles src/workflows at start. */
  workflowBundle?: WorkflowBundleOption;
  /** Prefix for Redis keys written by activities (tests). */
  redisKeyPrefix?: string;
  /** Extra exposition text appended to /metrics (the SDK's own metrics). */
  sdkMetrics?: () => Promise<string>;
  /** Worker identity shown in the Web UI. */
  identity?: string;
  /** Where outgoing requests may go; default built from config (DT_ALLOWED_HOSTS plus registry agents). */
  urlPolicy?: UrlPolicy;
  log?: (msg: string, meta?: Record<string, unknown>) => void;
}

/** Deadline of one progress signal or budget query sent by an activity, ms. */
const CLIENT_CALL_DEADLINE_MS = 5000;

/** A worker with its side servers; `run()` polls until `shutdown()`. */
export interface TraversalWorker {
  worker: Worker;
  artifactServer: ArtifactServer;
  artifactUrl: string;
  metrics: Metrics;
  cache: ApkCache;
  dispatcher: Dispatcher;
  /** Removes orphaned APK part files and old run folders (started with the worker). */
  sweeper: DiskSweeper;
  /** Runs the worker until shutdown, then closes the side servers. */
  run(): Promise<void>;
  /** The worker polling this host's task queue (DT_ROUTING=host). */
  hostWorker?: Worker;
  /** This worker's host (DT_HOST_ID). */
  hostId: string;
  /** Asks the worker to stop (graceful); safe to call twice. */
  shutdown(): void;
}

/** Builds a worker and its artifact server (listening once this resolves). */
export async function createTraversalWorker(opts: TraversalWorkerOptions): Promise<TraversalWorker> {
  const { config } = opts;
  const metrics = new Metrics();
  const registry = loadDeviceRegistry(config.deviceRegistry, config.defaultAgentUrl);
  const dispatcher = createDispatcher(opts.urlPolicy ?? urlPolicyFor(config, {}, registry));
  // A worker that cannot run its engine (DT_ENGINE=fastbot without a complete DT_FASTBOT_DIR) says so before taking work.
  const engine = engineOf(config, { dispatcher, callTimeoutMs: config.agentTimeoutMs });
  await engine.checkSetup().catch(async (err) => {
    await dispatcher.close().catch(() => undefined);
    throw err;
  });
  // Set once the artifact server listens; the peer directory announces nothing before.
  let artifactUrl = config.artifactPublicUrl.replace(/\/+$/, '');
  const peers =
    config.peerFetch === 'on'
      ? new PeerDirectory({
          redis: opts.redis,
          prefix: opts.redisKeyPrefix,
          hostId: config.hostId,
          baseUrl: () => artifactUrl,
          token: config.artifactToken,
          urlTtlMs: config.artifactUrlTtlMs,
        })
      : undefined;
  const cache = new ApkCache({
    peers,
    dir: config.apkCacheDir,
    maxBytes: config.apkMaxBytes,
    maxCacheBytes: config.apkCacheMaxBytes,
    leaseMs: config.apkCacheLeaseMs,
    maxConcurrentDownloads: config.maxOriginDownloads,
    diskReserveBytes: config.apkDiskReserveBytes,
    dispatcher,
    metrics,
    log: opts.log,
  });
  const artifactServer = new ArtifactServer({
    cache,
    metrics,
    host: config.artifactHost,
    port: config.artifactPort,
    extraMetrics: opts.sdkMetrics,
    token: config.artifactToken,
    maxConnections: config.artifactMaxConnections,
    maxPerAddress: config.artifactMaxPerAddress,
    log: opts.log,
  });

  // A worker that died left its traversal processes running; end them before taking new work.
  await endOrphanedRuns(dataFolders(config.dataDir).pids, config.killGraceMs, opts.log && { warn: opts.log });

  // Only once those processes are gone: fail the attempts a dead worker was running, so their retries
  // start now (from the last heartbeat's checkpoint) instead of after the heartbeat timeout.
  const identity =
    opts.identity ??
    `${process.pid}@${config.hostId === os.hostname() ? config.hostId : `${os.hostname()}/${config.hostId}`}`;
  const journalFolder = journalDir(config.dataDir);
  const journal = new AttemptJournal({
    dir: journalFolder,
    identity,
    namespace: opts.namespace,
    log: opts.log,
  });
  await journal.open();
  const sweepAbort = new AbortController();
  const sweep = await failDeadWorkerAttempts({
    dir: journalFolder,
    client: opts.client,
    namespace: opts.namespace,
    identity,
    ownFile: journal.file,
    log: opts.log,
    signal: sweepAbort.signal,
  });
  const closeJournal = async () => {
    sweepAbort.abort();
    await sweep.undecided;
    await journal.close();
  };

  // Progress signals and budget queries are best effort and may outlive the activity that sent
  // them; give each a deadline and let run() wait for them, so the client connection is never
  // closed under a call that is still retrying (grpc-js throws from a timer then).
  const pendingCalls = new Set<Promise<unknown>>();
  const clientCall = <T>(fn: () => Promise<T>): Promise<T> => {
    const call = opts.client.withDeadline(Date.now() + CLIENT_CALL_DEADLINE_MS, fn);
    const tracked = call.catch(() => undefined).finally(() => pendingCalls.delete(tracked));
    pendingCalls.add(tracked);
    return call;
  };

  const activities = createActivities({
    config,
    cache,
    dispatcher,
    redis: opts.redis,
    metrics,
    installUrlFor: (sha256) => artifactInstallUrl(artifactUrl, sha256, config.artifactToken, config.artifactUrlTtlMs),
    redisKeyPrefix: opts.redisKeyPrefix,
    engine,
    hostFor: (deviceId) => registry.hostFor?.(deviceId),
    pushProgress: (workflowId, update) =>
      clientCall(() => opts.client.workflow.getHandle(workflowId).signal(progressSignal, update)),
    readBudget: (workflowId) => clientCall(() => opts.client.workflow.getHandle(workflowId).query(budgetQuery)),
    hostTookStep: (workflowId, step) =>
      clientCall(() => opts.client.workflow.getHandle(workflowId).signal(hostTookStepSignal, step)),
  });

  const activityOptions: Omit<WorkerOptions, 'taskQueue'> = {
    connection: opts.connection,
    namespace: opts.namespace,
    identity,
    interceptors: { activity: [journal.interceptors] },
    activities,
    // Worker Deployment versioning: runs auto-upgrade, so a traversal of hours moves to the current
    // version (its workflow changes are behind patched(), its steps resume from their checkpoints).
    ...(config.workerDeployment
      ? {
          workerDeploymentOptions: {
            version: { deploymentName: config.workerDeployment, buildId: config.buildId },
            useWorkerVersioning: true,
            defaultVersioningBehavior: 'AUTO_UPGRADE',
          },
        }
      : {}),
    maxConcurrentActivityTaskExecutions: config.maxConcurrentActivities,
    shutdownGraceTime: '10s',
    // Heartbeats normally wait up to 0.8 × heartbeatTimeout; a cancel only arrives with one, so keep them frequent.
    maxHeartbeatThrottleInterval: config.heartbeatThrottleMs,
    defaultHeartbeatThrottleInterval: config.heartbeatThrottleMs,
  };
  let worker: Worker;
  let hostWorker: Worker | undefined;
  try {
    // The shared queue: workflows, and the steps any worker may run (all of them, for runs routed
    // before host routing existed and for DT_ROUTING=any).
    worker = await Worker.create({
      ...activityOptions,
      taskQueue: config.taskQueue,
      ...(opts.workflowBundle
        ? { workflowBundle: opts.workflowBundle }
        : { workflowsPath: require.resolve('../workflows') }),
      maxCachedWorkflows: config.maxCachedWorkflows,
      maxConcurrentWorkflowTaskExecutions: 20,
      stickyQueueScheduleToStartTimeout: config.stickyTimeoutMs,
    });
    // This host's queue: the device steps of the phones hanging off this host (activities only).
    if (config.routing === 'host')
      hostWorker = await Worker.create({
        ...activityOptions,
        taskQueue: hostTaskQueue(config.taskQueue, config.hostId),
      });
  } catch (err) {
    await closeJournal();
    throw err;
  }
  // Listen only once the worker exists, so an open port means the worker is ready.
  const boundUrl = await artifactServer.start();
  artifactUrl ||= boundUrl;
  // The farm learns of this host before it takes work (locateDevice routes only to known hosts).
  const hostRecord = new HostRecordKeeper({
    redis: opts.redis,
    prefix: opts.redisKeyPrefix,
    hostId: config.hostId,
    artifactUrl: () => artifactUrl,
    log: opts.log,
  });
  await hostRecord.start();
  // The attempt journals of the workers on this data folder (ours is open) tell it which run folders are in use.
  const sweeper = new DiskSweeper({
    dataDir: config.dataDir,
    cache,
    partMaxAgeMs: config.apkPartMaxAgeMs,
    runsMaxAgeMs: config.runsMaxAgeMs,
    runsMaxBytes: config.runsMaxBytes,
    intervalMs: config.sweepIntervalMs,
    metrics,
    log: opts.log,
  });
  sweeper.start();

  let closed = false;
  return {
    worker,
    hostWorker,
    hostId: config.hostId,
    artifactServer,
    artifactUrl,
    metrics,
    cache,
    dispatcher,
    sweeper,
    async run() {
      try {
        // One stopping stops both, so a host never keeps taking device steps without its workflows' worker.
        const runs = [worker, hostWorker]
          .filter((w): w is Worker => w !== undefined)
          .map((w) => w.run().finally(() => stopWorker(worker) && stopWorker(hostWorker)));
        const outcomes = await Promise.allSettled(runs);
        const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
        if (failed) throw failed.reason;
      } finally {
        hostRecord.stop();
        await sweeper.close();
        await Promise.all([...pendingCalls]);
        await closeJournal();
        await artifactServer.close();
        if (!closed) {
          closed = true;
          await dispatcher.close().catch(() => undefined);
        }
      }
    },
    shutdown() {
      stopWorker(worker);
      stopWorker(hostWorker);
    },
  };
}

/** Asks a running worker to stop; true, so calls chain. */
function stopWorker(w: Worker | undefined): boolean {
  if (w?.getState() === 'RUNNING') w.shutdown();
  return true;
}
