/**
 * locateDevice: which host's workers run a traversal's device steps. On a farm each phone hangs off
 * one host, whose agent, adb and APK cache only that host's workers reach, so the steps go to the
 * task queue of that host (`<TASK_QUEUE>/host/<hostId>`). The answer is recorded in the workflow's
 * history, so a run keeps its host for good: it waits for that host rather than moving to one that
 * cannot reach the phone.
 */
import { Context } from '@temporalio/activity';
import { HOST_ID_PATTERN, hostTaskQueue, type DeviceLocation } from '../contract/messages';
import { agentCall, type DeviceAgentDeps, type DeviceRef } from './device-agent';

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
}

/** Builds the locateDevice activity. */
export function createLocateActivities(deps: LocateDeps) {
  return {
    /** The host owning the phone: the registry's entry first, else what the phone's agent reports. */
    async locateDevice(device: DeviceRef): Promise<DeviceLocation> {
      const ctx = Context.current();
      const base = { hostWaitMs: deps.hostWaitMs };
      if (deps.routing === 'any') return { ...base, source: 'routing-any' };
      const registered = deps.hostFor?.(device.deviceId);
      if (registered)
        return { ...base, host: registered, taskQueue: hostTaskQueue(deps.taskQueue, registered), source: 'registry' };
      // A status call is quick; the install-sized default timeout is not for it.
      const quick = { ...deps.agent, callTimeoutMs: Math.min(deps.agent.callTimeoutMs ?? 10_000, 10_000) };
      const status = await agentCall<{ host?: unknown }>(
        quick,
        device.agentUrl,
        device.deviceId,
        '',
        undefined,
        ctx.cancellationSignal,
      );
      const host = status.host;
      if (typeof host === 'string' && HOST_ID_PATTERN.test(host))
        return { ...base, host, taskQueue: hostTaskQueue(deps.taskQueue, host), source: 'agent' };
      ctx.log.warn('neither the device registry nor the agent names the phone host; any worker runs its steps', {
        deviceId: device.deviceId,
        agentUrl: device.agentUrl,
        ...(host !== undefined ? { invalidHost: String(host).slice(0, 80) } : {}),
      });
      return { ...base, source: 'none' };
    },
  };
}
