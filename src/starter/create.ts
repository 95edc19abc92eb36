/**
 * Assembles a starter's task bridge from explicit parts, as src/worker/setup.ts does for the worker:
 * the entry point (src/starter.ts), the local stack and the benchmarks hand in their own clients,
 * and the settings that come from the configuration are mapped here, once.
 */
import type { Client } from '@temporalio/client';
import type Redis from 'ioredis';
import type { Config } from '../config';
import { extraArgsPolicyFor } from '../contract/extra-args';
import type { RunPolicy } from '../contract/messages';
import { loadDeviceRegistry, urlPolicyFor, type AgentDirectory } from '../device-registry';
import type { UrlPolicy } from '../net/url-policy';
import { TaskBridge, type TaskBridgeOptions } from './task-bridge';

/** Parts a starter needs; the caller owns and closes the client and both Redis connections. */
export interface StarterOptions {
  config: Config;
  client: Client;
  /** Connection for ordinary commands. */
  redis: Redis;
  /** Dedicated connection for the blocking BLMOVE. */
  blocking: Redis;
  /** Where each device's agent listens; default the device registry of the config. */
  agents?: AgentDirectory;
  /** Where task URLs may point; default built from config (DT_ALLOWED_HOSTS plus registry agents). */
  urlPolicy?: UrlPolicy;
  /** Run policy fields over the ones the config gives. */
  policy?: Partial<RunPolicy>;
  /** Prefix of the bridge's Redis keys; default config.redisKeyPrefix. */
  keyPrefix?: string;
  /** Seconds one BLMOVE waits before checking for stop (the bridge's default when absent). */
  blockTimeoutSec?: number;
  log?: TaskBridgeOptions['log'];
}

/** The run policy a starter puts into every request, from the settings the starter reads. */
function runPolicyFor(config: Config): RunPolicy {
  return {
    heartbeatTimeoutMs: config.heartbeatTimeoutMs,
    maxAttempts: config.maxAttempts,
    delivery: config.delivery,
    measureLaunch: config.measureLaunch,
    quarantineAfter: config.quarantineAfter,
    publishRetryMaxMs: config.publishRetryMaxMs,
  };
}

/** A task bridge configured from `config`; not started (call `start()`). */
export function createStarter(opts: StarterOptions): TaskBridge {
  const { config } = opts;
  // The registry file is read at most once, for the agents and the URL policy alike.
  const registry =
    opts.agents && opts.urlPolicy ? undefined : loadDeviceRegistry(config.deviceRegistry, config.defaultAgentUrl);
  return new TaskBridge({
    redis: opts.redis,
    blocking: opts.blocking,
    client: opts.client,
    taskQueue: config.taskQueue,
    starterId: config.starterId,
    concurrency: config.starterConcurrency,
    agents: opts.agents ?? registry!,
    urlPolicy: opts.urlPolicy ?? urlPolicyFor(config, {}, registry),
    extraArgs: extraArgsPolicyFor(config),
    keyPrefix: opts.keyPrefix ?? config.redisKeyPrefix,
    taskRetentionMs: config.taskRetentionMs,
    deployment: config.deployment,
    policy: { ...runPolicyFor(config), ...opts.policy },
    ...(opts.blockTimeoutSec !== undefined ? { blockTimeoutSec: opts.blockTimeoutSec } : {}),
    ...(opts.log ? { log: opts.log } : {}),
  });
}
