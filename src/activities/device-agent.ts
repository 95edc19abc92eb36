/**
 * Client of the device agent protocol (HTTP, JSON; devices at /mobile/<deviceId>/…) and the
 * activities built on it. Every call is idempotent so a retry after a crash cannot break a phone.
 * Failures are classified by HTTP status and undici's stable `err.code`, never by instanceof.
 */
import { Context } from '@temporalio/activity';
import { request, type Dispatcher } from 'undici';
import {
  AgentUnavailableError,
  DeviceBusyError,
  DeviceOfflineError,
  InstallRejectedError,
  UnknownDeviceError,
} from '../contract/errors';
import type { Metrics } from '../metrics';
import { requestError, statusVerdict } from '../net/http-errors';
import type { DownloadState } from '../apk-cache';
import type { InstallApkRef, InstallUrlOf } from './install-source';

/** What a device reports about itself. */
export interface DeviceStatus {
  online: boolean;
  model?: string;
  sdk?: number;
}

/** Result of an install by URL. */
export interface InstallResult {
  installed: boolean;
  versionCode?: number;
  /** Time the agent reported for download and install, ms. */
  ms: number;
}

/** Dependencies of the device agent activities. */
export interface DeviceAgentDeps {
  dispatcher: Dispatcher;
  metrics?: Metrics;
  /** Timeout of one agent call, ms (installs of big APKs take long; default 15 min). */
  callTimeoutMs?: number;
}

/** Dependencies of the device agent activities: the agent client's, and where installs come from. */
export interface DeviceAgentActivityDeps extends DeviceAgentDeps {
  /** The URL the agent installs from, decided on this worker (install-source.ts). */
  installUrlOf: InstallUrlOf;
}

/** Input of installApp. */
export type InstallAppInput = DeviceRef & InstallApkRef & { packageName: string };

/** Sends one JSON request to an agent and maps failures to typed errors. */
export async function agentCall<T>(
  deps: DeviceAgentDeps,
  agentUrl: string,
  deviceId: string,
  op: string,
  body?: unknown,
  signal?: AbortSignal,
): Promise<T> {
  const url = `${agentUrl}/mobile/${encodeURIComponent(deviceId)}${op ? `/${op}` : ''}`;
  let res: Dispatcher.ResponseData;
  try {
    res = await request(url, {
      method: body === undefined ? 'GET' : 'POST',
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      dispatcher: deps.dispatcher,
      signal,
      headersTimeout: deps.callTimeoutMs ?? 15 * 60_000,
      bodyTimeout: deps.callTimeoutMs ?? 15 * 60_000,
    });
  } catch (err) {
    const target = {
      name: `device agent ${agentUrl}`,
      unreachable: (why: string) => new AgentUnavailableError(agentUrl, op || 'status', why),
    };
    throw requestError(target, err, signal);
  }
  const text = await res.body.text().catch(() => '');
  let parsed: Record<string, unknown> = {};
  try {
    parsed = text ? (JSON.parse(text) as Record<string, unknown>) : {};
  } catch {
    parsed = { error: text.slice(0, 300) };
  }
  const reason = typeof parsed.error === 'string' ? parsed.error : `HTTP ${res.statusCode}`;
  switch (true) {
    case statusVerdict(res.statusCode) === 'success':
      return parsed as T;
    case res.statusCode === 404:
      throw new UnknownDeviceError(deviceId, agentUrl);
    case res.statusCode === 409:
      throw new DeviceBusyError(deviceId, op || 'status');
    case res.statusCode === 422:
    case res.statusCode === 400:
      throw new InstallRejectedError(deviceId, op || 'status', reason);
    case res.statusCode === 503:
      throw new DeviceOfflineError(deviceId, reason);
    default:
      throw new AgentUnavailableError(agentUrl, op || 'status', reason);
  }
}

/**
 * `GET /mobile/<id>`: what the agent says of one device (online, model, serial, host…). A status call
 * is quick, so it gets at most 10 s, not the install-sized timeout of the other calls.
 */
export function agentStatus<T = DeviceStatus>(
  deps: Pick<DeviceAgentDeps, 'dispatcher' | 'metrics' | 'callTimeoutMs'>,
  agentUrl: string,
  deviceId: string,
  signal?: AbortSignal,
): Promise<T> {
  const quick = { ...deps, callTimeoutMs: Math.min(deps.callTimeoutMs ?? 10_000, 10_000) };
  return agentCall<T>(quick, agentUrl, deviceId, '', undefined, signal);
}

/**
 * Throws DeviceOfflineError when the agent reports the device offline (503 or online=false).
 * Other agent trouble is returned, not thrown: a running traversal does not stop because one
 * status call failed.
 */
export async function checkDeviceOnline(
  deps: DeviceAgentDeps,
  agentUrl: string,
  deviceId: string,
  signal?: AbortSignal,
): Promise<Error | undefined> {
  try {
    const status = await agentStatus(deps, agentUrl, deviceId, signal);
    if (status.online === false) throw new DeviceOfflineError(deviceId, 'the agent reports it offline');
    return undefined;
  } catch (err) {
    if (err instanceof DeviceOfflineError) throw err;
    return err as Error;
  }
}

/** Heartbeats every second while a long call is pending, so a dead worker is noticed and cancels arrive. */
function keepAlive(details?: () => unknown): () => void {
  const ctx = Context.current();
  const beat = () => ctx.heartbeat(details?.());
  beat();
  const t = setInterval(beat, 1000);
  return () => clearInterval(t);
}

/** Input shared by the device activities. */
export interface DeviceRef {
  deviceId: string;
  agentUrl: string;
}

/** Builds the activities that talk to device agents. */
export function createDeviceAgentActivities(deps: DeviceAgentActivityDeps) {
  return {
    /** Checks the device is online and resets its environment. */
    async prepareDevice(input: DeviceRef): Promise<DeviceStatus> {
      const signal = Context.current().cancellationSignal;
      const stop = keepAlive();
      try {
        const status = await agentCall<DeviceStatus>(deps, input.agentUrl, input.deviceId, '', undefined, signal);
        if (!status.online) throw new DeviceOfflineError(input.deviceId, 'the agent reports it offline');
        await agentCall(deps, input.agentUrl, input.deviceId, 'reset', {}, signal);
        return { online: true, model: status.model, sdk: status.sdk };
      } finally {
        stop();
      }
    },

    /**
     * Tells the agent to download the APK from a URL and install it; APK bytes never pass through
     * here. The URL is this worker's to decide (its artifact server, the APK fetched into this
     * host's cache first when missing), so a retry on another worker works.
     */
    async installApp(input: InstallAppInput): Promise<InstallResult> {
      const signal = Context.current().cancellationSignal;
      let fetch: DownloadState | undefined;
      const stop = keepAlive(() => fetch && { bytes: fetch.bytes, total: fetch.total, phase: fetch.phase });
      try {
        const started = Date.now();
        const url = await deps.installUrlOf(input, { signal, onState: (s) => (fetch = s) });
        const sha256 = input.apk?.sha256 ?? input.sha256;
        const res = await agentCall<InstallResult>(
          deps,
          input.agentUrl,
          input.deviceId,
          'installApp',
          { url, packageName: input.packageName, ...(sha256 ? { sha256 } : {}) },
          signal,
        );
        deps.metrics?.installs.inc();
        return { installed: res.installed !== false, versionCode: res.versionCode, ms: res.ms ?? Date.now() - started };
      } finally {
        stop();
      }
    },

    /** Launches the app once and returns its cold start time. */
    async measureLaunch(
      input: DeviceRef & { packageName: string; activity?: string },
    ): Promise<{ coldStartMs: number }> {
      const stop = keepAlive();
      try {
        const res = await agentCall<{ coldStartMs: number }>(
          deps,
          input.agentUrl,
          input.deviceId,
          'launchApp',
          { packageName: input.packageName, ...(input.activity ? { activity: input.activity } : {}) },
          Context.current().cancellationSignal,
        );
        return { coldStartMs: Number(res.coldStartMs) };
      } finally {
        stop();
      }
    },

    /** Uninstalls the app and resets the device; succeeds when there is nothing to remove. */
    async cleanupDevice(input: DeviceRef & { packageName: string }): Promise<{ uninstalled: boolean }> {
      const signal = Context.current().cancellationSignal;
      const stop = keepAlive();
      try {
        const res = await agentCall<{ uninstalled?: boolean }>(
          deps,
          input.agentUrl,
          input.deviceId,
          'uninstallApp',
          { packageName: input.packageName },
          signal,
        );
        await agentCall(deps, input.agentUrl, input.deviceId, 'reset', {}, signal);
        return { uninstalled: res.uninstalled === true };
      } finally {
        stop();
      }
    },
  };
}
