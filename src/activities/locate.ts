/**
 * locateDevice: which host's workers run a traversal's device steps. On a farm each phone hangs off
 * one host, whose agent, adb and APK cache only that host's workers reach, so the steps go to the
 * task queue of that host (`<TASK_QUEUE>/host/<hostId>`). The answer is recorded in the workflow's
 * history, so a run keeps its host for good: it waits for that host rather than moving to one that
 * cannot reach the phone.
 *
 * Where the host comes from, in order: the device registry's `host`; the `host` the phone's agent
 * reports, if a worker of that host has ever run (src/worker/host-records.ts); when the agent does
 * not answer, the host the phone was last found on. Without any of them the steps run on the shared
 * queue, as before host routing, and the device steps report what is wrong with the agent.
 */
import { Context } from '@temporalio/activity';
import type Redis from 'ioredis';
import { HOST_ID_PATTERN, hostTaskQueue, type DeviceLocation } from '../contract/messages';
import { deviceHostsKey, farmHostsKey } from '../contract/redis-keys';
import { agentStatus, type DeviceAgentDeps, type DeviceRef } from './device-agent';

/** Dependencies of locateDevice. */
export interface LocateDeps {
  /** DT_ROUTING of the worker that runs the locate. */
  routing: 'host' | 'any';
  /** The shared task queue (TASK_QUEUE); a host's queue is named after it. */
  taskQueue: string;
  /** DT_HOST_WAIT, ms. */
  hostWaitMs: number;
  /** The host the device registry names for a phone, if it names one. */
  hostFor?: (deviceId: string) => string | undefined;
  agent: DeviceAgentDeps;
  /** Redis of the farm's host records and the phones' last hosts (none: the agent's word alone). */
  redis?: Redis;
  keyPrefix?: string;
}

/** Builds the locateDevice activity. */
export function createLocateActivities(deps: LocateDeps) {
  const routed = (host: string, source: DeviceLocation['source']): DeviceLocation => ({
    host,
    taskQueue: hostTaskQueue(deps.taskQueue, host),
    hostWaitMs: deps.hostWaitMs,
    source,
  });
  const shared: DeviceLocation = { hostWaitMs: deps.hostWaitMs, source: 'none' };
  return {
    /** The host owning the phone, and the task queue of its device steps. */
    async locateDevice(device: DeviceRef): Promise<DeviceLocation> {
      const ctx = Context.current();
      if (deps.routing === 'any') return { hostWaitMs: deps.hostWaitMs, source: 'routing-any' };
      const registered = deps.hostFor?.(device.deviceId);
      if (registered) return routed(registered, 'registry');

      let reported: unknown;
      try {
        const status = await agentStatus<{ host?: unknown }>(
          deps.agent,
          device.agentUrl,
          device.deviceId,
          ctx.cancellationSignal,
        );
        reported = status.host;
      } catch (err) {
        // The agent (or its whole host) is down: the phone's runs wait for the host it was last on.
        const last = await deps.redis?.hget(deviceHostsKey(deps.keyPrefix), device.deviceId).catch(() => null);
        if (last && HOST_ID_PATTERN.test(last)) {
          ctx.log.warn('the agent did not answer; routing to the host the phone was last found on', {
            deviceId: device.deviceId,
            host: last,
            error: (err as Error).message,
          });
          return routed(last, 'last-known');
        }
        ctx.log.warn('the agent did not answer and the phone was never located; any worker runs its steps', {
          deviceId: device.deviceId,
          error: (err as Error).message,
        });
        return shared;
      }

      if (typeof reported !== 'string' || !HOST_ID_PATTERN.test(reported)) {
        ctx.log.warn('neither the device registry nor the agent names the phone host; any worker runs its steps', {
          deviceId: device.deviceId,
          agentUrl: device.agentUrl,
          ...(reported !== undefined ? { invalidHost: String(reported).slice(0, 80) } : {}),
        });
        return shared;
      }
      // A host no worker ever ran on (an agent on a machine of its own): nobody would take its steps.
      // Redis not answering: the agent's word is taken as it is.
      const known = await (deps.redis?.hexists(farmHostsKey(deps.keyPrefix), reported) ?? Promise.resolve(1)).catch(
        () => 1,
      );
      if (!known) {
        ctx.log.warn(
          'the agent names a host where no worker has run; any worker runs its steps (run a worker there with this DT_HOST_ID, or name the host in the device registry)',
          { deviceId: device.deviceId, host: reported },
        );
        return shared;
      }
      await deps.redis?.hset(deviceHostsKey(deps.keyPrefix), device.deviceId, reported).catch(() => undefined);
      return routed(reported, 'agent');
    },
  };
}
