import { ApplicationFailure } from '@temporalio/common';

/** Base class of the errors a user can act on; `code` is stable and becomes the ApplicationFailure type. */
export abstract class TraversalError extends Error {
  /** Stable machine-readable name, used as the Temporal failure type. */
  abstract readonly code: string;
  /** True when retrying cannot help (bad input, missing APK, wrong hash). */
  abstract readonly nonRetryable: boolean;
  /** Extra facts that travel with the failure (kept small and free of secrets). */
  details: Record<string, unknown> = {};
}

/** The APK URL answered 404/410: the task points at something that does not exist. */
export class ApkNotFoundError extends TraversalError {
  readonly code = 'ApkNotFound';
  readonly nonRetryable = true;
  constructor(url: string, status: number) {
    super(`APK not found: ${url} answered HTTP ${status}; check the task's apkUrl`);
    this.details = { url, status };
  }
}

/** The origin refused the download with another 4xx: retrying the same request will not help. */
export class ApkFetchRejectedError extends TraversalError {
  readonly code = 'ApkFetchRejected';
  readonly nonRetryable = true;
  constructor(url: string, status: number) {
    super(`APK download refused: ${url} answered HTTP ${status}; check access to the origin`);
    this.details = { url, status };
  }
}

/** The downloaded bytes do not hash to the sha256 the task promised. */
export class ApkHashMismatchError extends TraversalError {
  readonly code = 'ApkHashMismatch';
  readonly nonRetryable = true;
  constructor(url: string, expected: string, actual: string) {
    super(`sha256 mismatch for ${url}: expected ${expected}, got ${actual}; fix apkSha256 or the file at the origin`);
    this.details = { url, expected, actual };
  }
}

/** The APK is larger than the configured cap (announced or while streaming). */
export class ApkTooLargeError extends TraversalError {
  readonly code = 'ApkTooLarge';
  readonly nonRetryable = true;
  constructor(url: string, limitBytes: number, seenBytes: number) {
    super(
      `APK too large: ${url} exceeds the cap of ${limitBytes} bytes (saw ${seenBytes}); raise DT_APK_MAX_BYTES if intended`,
    );
    this.details = { url, limitBytes, seenBytes };
  }
}

/** The origin or the network failed in a way that may pass (5xx, reset, timeout). */
export class ApkDownloadError extends TraversalError {
  readonly code = 'ApkDownloadFailed';
  readonly nonRetryable = false;
  constructor(url: string, reason: string) {
    super(`APK download from ${url} failed: ${reason}; will retry`);
    this.details = { url, reason };
  }
}

/**
 * The disk holding the APK cache has too little free space for a download, even after evicting
 * what the cache may evict; retried with backoff, since space may come back (leases end, sweeps run).
 */
export class InsufficientStorageError extends TraversalError {
  readonly code = 'InsufficientStorage';
  readonly nonRetryable = false;
  constructor(
    url: string,
    facts: {
      /** Folder whose disk is full. */
      path: string;
      /** Bytes the download still had to write, when the origin announced them. */
      neededBytes?: number;
      /** Bytes free on that disk for this process when it gave up. */
      freeBytes: number;
      /** Free space every download leaves on that disk, bytes. */
      reserveBytes: number;
      /** Bytes of this download on disk when the disk filled up while streaming. */
      writtenBytes?: number;
    },
  ) {
    const state =
      facts.writtenBytes === undefined
        ? `needs ${facts.neededBytes} bytes`
        : `the disk filled up after ${facts.writtenBytes} bytes` +
          (facts.neededBytes !== undefined ? ` with ${facts.neededBytes} still to come` : '');
    super(
      `not enough disk space for the APK ${url}: ${state}, ${facts.freeBytes} free on ${facts.path} ` +
        `(${facts.reserveBytes} kept in reserve) after evicting unused APKs and stale part files; its partial file ` +
        'was removed and the download will retry. Free space there or point DT_APK_CACHE_DIR at a larger disk',
    );
    this.details = { url, ...facts };
  }
}

/** The agent does not know the device (404). */
export class UnknownDeviceError extends TraversalError {
  readonly code = 'UnknownDevice';
  readonly nonRetryable = true;
  constructor(deviceId: string, agentUrl: string) {
    super(`unknown device ${deviceId}: the agent at ${agentUrl} does not serve it; check deviceId or agentUrl`);
    this.details = { deviceId, agentUrl };
  }
}

/** The device is offline (503 or status online=false); infrastructure, so retried. */
export class DeviceOfflineError extends TraversalError {
  readonly code = 'DeviceOffline';
  readonly nonRetryable = false;
  constructor(deviceId: string, reason: string) {
    super(`device ${deviceId} is offline: ${reason}; will retry`);
    this.details = { deviceId, reason };
  }
}

/** The device is doing something else (409); retried with backoff. */
export class DeviceBusyError extends TraversalError {
  readonly code = 'DeviceBusy';
  readonly nonRetryable = false;
  constructor(deviceId: string, op: string) {
    super(`device ${deviceId} is busy and refused ${op}; will retry`);
    this.details = { deviceId, op };
  }
}

/** The agent refused the APK (422: bad APK, hash mismatch on its side, not installed). */
export class InstallRejectedError extends TraversalError {
  readonly code = 'InstallRejected';
  readonly nonRetryable = true;
  constructor(deviceId: string, op: string, reason: string) {
    super(`agent refused ${op} on device ${deviceId}: ${reason}`);
    this.details = { deviceId, op, reason };
  }
}

/** The agent could not be reached or answered 5xx; infrastructure, so retried. */
export class AgentUnavailableError extends TraversalError {
  readonly code = 'AgentUnavailable';
  readonly nonRetryable = false;
  constructor(agentUrl: string, op: string, reason: string) {
    super(`device agent ${agentUrl} failed ${op}: ${reason}; will retry`);
    this.details = { agentUrl, op, reason };
  }
}

/** A task failed validation; it goes to the dead-letter list and never to Temporal. */
export class InvalidTaskError extends TraversalError {
  readonly code = 'InvalidTask';
  readonly nonRetryable = true;
  constructor(readonly problems: string[]) {
    super(`invalid task: ${problems.join('; ')}`);
    this.details = { problems };
  }
}

/** The traversal command exited non-zero; the exit code and the tail of stderr travel with it. */
export class TraversalExitError extends TraversalError {
  readonly code = 'TraversalExit';
  readonly nonRetryable = false;
  constructor(
    readonly exitCode: number | null,
    readonly signal: string | null,
    readonly stderrTail: string,
  ) {
    const how = exitCode !== null ? `exit code ${exitCode}` : `signal ${signal}`;
    super(`traversal command failed with ${how}; stderr tail:\n${stderrTail}`);
    this.details = { exitCode, signal, stderrTail };
  }
}

/** The traversal command printed no progress for longer than the heartbeat timeout and was ended. */
export class TraversalHungError extends TraversalError {
  readonly code = 'TraversalHung';
  readonly nonRetryable = false;
  constructor(silentMs: number, pid: number) {
    super(
      `traversal command (pid ${pid}) printed no progress for ${Math.round(silentMs / 1000)} s; its process group was ended`,
    );
    this.details = { silentMs, pid };
  }
}

/** The traversal command could not be started at all (missing java, missing jar). */
export class TraversalStartError extends TraversalError {
  readonly code = 'TraversalStartFailed';
  readonly nonRetryable = true;
  constructor(command: string, reason: string) {
    super(`cannot start traversal command ${command}: ${reason}; check DT_TRAVERSAL_COMMAND and DT_TRAVERSAL_JAR`);
    this.details = { command, reason };
  }
}

/**
 * The traversal engine cannot run as this worker or phone is set up: DT_FASTBOT_DIR missing or
 * incomplete, or output showing the tool never started (no launchable activity, a missing class).
 * Retrying the same setup gives the same answer, so it is permanent.
 */
export class EngineSetupError extends TraversalError {
  readonly code = 'EngineSetup';
  readonly nonRetryable = true;
  constructor(engine: string, reason: string, fix: string) {
    super(`the ${engine} engine cannot run: ${reason}; ${fix}`);
    this.details = { engine, reason };
  }
}

/** The report could not be delivered to the sink. */
export class ReportUploadError extends TraversalError {
  readonly code = 'ReportUploadFailed';
  readonly nonRetryable = false;
  constructor(sink: string, reason: string) {
    super(`report upload to ${sink} failed: ${reason}; will retry`);
    this.details = { sink, reason };
  }
}

/** Failure types that retrying cannot fix; workflows list them in their retry policies. */
export const PERMANENT_ERROR_TYPES = [
  'ApkNotFound',
  'ApkFetchRejected',
  'ApkHashMismatch',
  'ApkTooLarge',
  'UnknownDevice',
  'InstallRejected',
  'InvalidTask',
  'TraversalStartFailed',
  'EngineSetup',
];

/**
 * Failure types that say the infrastructure is in trouble rather than the task or the tool (the
 * result's `error.kind`); only the device faults among them count towards a device's quarantine.
 * Timeouts (`Timeout:…`) belong here too.
 */
export const INFRASTRUCTURE_ERROR_TYPES = [
  'DeviceOffline',
  'DeviceBusy',
  'AgentUnavailable',
  'ApkDownloadFailed',
  'InsufficientStorage',
  'ReportUploadFailed',
];
/** Failure types of the traversal command itself. */
export const TOOL_ERROR_TYPES = ['TraversalExit', 'TraversalHung', 'TraversalStartFailed', 'EngineSetup'];

/**
 * Classifies a failure (an ApplicationFailure type, `Timeout:…` or `Cancelled`, and whether it was
 * marked non-retryable); see FailureKind. Non-retryable failures other than the tool's are the task's.
 */
export function failureKind(type: string, nonRetryable?: boolean): 'infrastructure' | 'task' | 'tool' | 'cancelled' {
  if (type === 'Cancelled') return 'cancelled';
  if (TOOL_ERROR_TYPES.includes(type)) return 'tool';
  if (INFRASTRUCTURE_ERROR_TYPES.includes(type) || type.startsWith('Timeout')) return 'infrastructure';
  if (PERMANENT_ERROR_TYPES.includes(type) || nonRetryable) return 'task';
  // Anything else (an unexpected exception in an activity) is the service's own trouble, not the task's.
  return 'infrastructure';
}

/** Failure types that point at the device or its agent. */
export const DEVICE_FAULT_TYPES = ['DeviceOffline', 'DeviceBusy', 'AgentUnavailable'];
/** Steps that talk to the device; a timeout in one of them counts against the device. */
const DEVICE_STEPS = ['prepareDevice', 'installApp', 'measureLaunch', 'runTraversal', 'cleanupDevice'];

/**
 * True when a failed traversal counts towards its device's quarantine: the device or its agent
 * failed (offline, busy, unreachable) or a device step timed out. A slow origin, a bad task or a
 * failing tool says nothing about the phone and never quarantines it.
 */
export function isDeviceFault(type: string, step?: string): boolean {
  return (
    DEVICE_FAULT_TYPES.includes(type) ||
    (type.startsWith('Timeout') && step !== undefined && DEVICE_STEPS.includes(step))
  );
}

/** Turns a project error into the ApplicationFailure Temporal records; other errors pass through unchanged. */
export function toFailure(err: unknown): unknown {
  if (err instanceof TraversalError) {
    return ApplicationFailure.create({
      type: err.code,
      message: err.message,
      nonRetryable: err.nonRetryable,
      details: [err.details],
    });
  }
  return err;
}
