/** Builds every activity from explicit dependencies, so tests hand them real local servers. */
import type Redis from 'ioredis';
import type { Dispatcher } from 'undici';
import { dataFolders, type Config } from '../config';
import { Context } from '@temporalio/activity';
import {
  HOST_WAIT_ACTIVITY_PREFIX,
  type HostTookStep,
  type ProgressUpdate,
  type TraversalBudget,
} from '../contract/messages';
import type { Metrics } from '../metrics';
import { createApkActivities } from './apk';
import { createLocateActivities } from './locate';
import type { ApkCache } from '../apk-cache';
import { adbFor } from '../adb';
import { agentStatus, checkDeviceOnline, createDeviceAgentActivities, type DeviceAgentDeps } from './device-agent';
import { activityBoundary } from './boundary';
import { installUrlResolver } from './install-source';
import { createReportSinkActivities } from './report-sink';
import { ReportStore } from './report-store';
import { createResultPublisherActivities } from './result-publisher';
import { createTaskReportActivities } from './task-report';
import { engineFor, type Engine } from './traversal/engines';
import { createTraversalRunnerActivities } from './traversal/runner';

/** Everything the activities need; created by the worker entry point (or a test). */
export interface ActivityDeps {
  config: Config;
  cache: ApkCache;
  dispatcher: Dispatcher;
  redis: Redis;
  metrics: Metrics;
  /**
   * URL of a cached APK on this worker's artifact server, as agents reach it (signed when the
   * server has a token); the worker's setup supplies it, and it is valid once the server listens.
   */
  installUrlFor: (sha256: string) => string;
  /** Sends progress to a running traversal workflow. */
  pushProgress?: (workflowId: string, update: ProgressUpdate) => Promise<void>;
  /** Reads a running traversal's time budget. */
  readBudget?: (workflowId: string) => Promise<TraversalBudget | undefined>;
  /** Prefix of every Redis key written (tests use a unique one). */
  redisKeyPrefix?: string;
  /** The traversal engine, already checked by the worker; default engineOf(config). */
  engine?: Engine;
  /** The host the device registry names for a phone (locateDevice asks the agent otherwise). */
  hostFor?: (deviceId: string) => string | undefined;
  /** Tells a run that waited for this host that the host's worker took its step (hostTookStepSignal). */
  hostTookStep?: (workflowId: string, step: HostTookStep) => Promise<void>;
}

/**
 * Called as each activity starts: a device step scheduled again after its run waited for this host
 * (its activity id says so) tells the run that the host is back. Best effort: a lost signal leaves the
 * run saying it waits until the step ends.
 */
function announceHostSteps(deps: ActivityDeps): (activity: string) => void {
  return (activity) => {
    if (!deps.hostTookStep) return;
    let info: ReturnType<typeof Context.current>['info'];
    try {
      info = Context.current().info;
    } catch {
      return; // called outside an activity (a test calling the function directly)
    }
    const workflowId = info.workflowExecution?.workflowId;
    if (!workflowId || !info.activityId.startsWith(HOST_WAIT_ACTIVITY_PREFIX)) return;
    void deps.hostTookStep(workflowId, { host: deps.config.hostId, activityType: activity }).catch(() => undefined);
  };
}

/**
 * The traversal engine DT_ENGINE names. Monkey and Fastbot reach the phone by its adb serial, which
 * the device's agent reports (`GET /mobile/<id>` → `serial`); an agent that reports none means the
 * device id is the serial.
 */
export function engineOf(config: Config, agentDeps: Pick<DeviceAgentDeps, 'dispatcher' | 'callTimeoutMs'>): Engine {
  return engineFor(config, adbFor(config), {
    serialOf: async (agentUrl, deviceId, signal) => {
      const status = await agentStatus<{ serial?: unknown }>(agentDeps, agentUrl, deviceId, signal);
      return typeof status.serial === 'string' && status.serial ? status.serial : deviceId;
    },
    jar: jarTemplate(config),
  });
}

/** The jar engine's command template and output patterns, as the configuration names them. */
function jarTemplate(config: Config) {
  return {
    command: config.traversalCommand,
    resumeArgs: config.traversalResumeArgs,
    extraArgs: config.traversalExtraArgs,
    jar: config.traversalJar,
    progressPattern: config.progressPattern,
    findingPattern: config.findingPattern,
  };
}

/** The activity implementations, behind the activity boundary (identifier guard, typed failures). */
export function createActivities(deps: ActivityDeps) {
  const { config } = deps;
  const folders = dataFolders(config.dataDir);
  const agentDeps: DeviceAgentDeps = {
    dispatcher: deps.dispatcher,
    metrics: deps.metrics,
    callTimeoutMs: config.agentTimeoutMs,
  };
  const store = new ReportStore({
    sink: config.reportSink,
    token: config.reportSinkToken,
    dispatcher: deps.dispatcher,
  });
  return activityBoundary(
    {
      ...createLocateActivities({
        routing: config.routing,
        taskQueue: config.taskQueue,
        hostWaitMs: config.hostWaitMs,
        hostFor: deps.hostFor,
        agent: agentDeps,
        redis: deps.redis,
        keyPrefix: deps.redisKeyPrefix,
      }),
      ...createApkActivities({ cache: deps.cache, dispatcher: deps.dispatcher, delivery: config.delivery }),
      ...createDeviceAgentActivities({
        ...agentDeps,
        installUrlOf: installUrlResolver({ cache: deps.cache, installUrlFor: deps.installUrlFor }),
      }),
      ...createTraversalRunnerActivities({
        runsDir: folders.runs,
        pidsDir: folders.pids,
        ...jarTemplate(config),
        store,
        reportShipMs: config.reportShipMs,
        killGraceMs: config.killGraceMs,
        pushProgress: deps.pushProgress,
        readBudget: deps.readBudget,
        controlPollMs: config.controlPollMs,
        maxConcurrent: config.maxConcurrentTraversals,
        metrics: deps.metrics,
        checkDevice: (agentUrl, deviceId, signal) => checkDeviceOnline(agentDeps, agentUrl, deviceId, signal),
        deviceCheckMs: config.deviceCheckMs,
        deviceReturnMs: config.deviceReturnMs,
        engine: deps.engine ?? engineOf(config, agentDeps),
      }),
      ...createReportSinkActivities({
        runsDir: folders.runs,
        sink: config.reportSink,
        token: config.reportSinkToken,
        dispatcher: deps.dispatcher,
        maxBytes: config.reportMaxBytes,
      }),
      ...createTaskReportActivities({ redis: deps.redis, store, keyPrefix: deps.redisKeyPrefix }),
      ...createResultPublisherActivities({
        redis: deps.redis,
        keyPrefix: deps.redisKeyPrefix,
        taskRetentionMs: config.taskRetentionMs,
        findingRetentionMs: config.findingRetentionMs,
        metrics: deps.metrics,
      }),
    },
    (activity, type) => deps.metrics.failures.inc({ activity, type }),
    announceHostSteps(deps),
  );
}

/** The activity interface workflows proxy. */
export type Activities = ReturnType<typeof createActivities>;
