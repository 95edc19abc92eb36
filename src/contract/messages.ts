/**
 * Messages and payloads shared by workflows, activities, the starter, scripts and tests.
 * Only types and message definitions live here, so workflow code can import it safely.
 */
import { defineQuery, defineSignal } from '@temporalio/workflow';
import type { DeviceRecentResult } from './details';

/** How the agent gets the APK: from this worker's cache server, or straight from the origin. */
export type Delivery = 'cache' | 'direct';

/** Knobs of one run that the starter fills from its configuration; every field has a workflow default. */
export interface RunPolicy {
  /** Heartbeat timeout of long activities, ms (default 30000). */
  heartbeatTimeoutMs?: number;
  /** Attempts per activity before the traversal fails (default 3; downloads and agent calls get more). */
  maxAttempts?: number;
  /** First retry delay, ms (default 1000). */
  initialRetryMs?: number;
  /** APK delivery mode (default 'cache'). */
  delivery?: Delivery;
  /** Whether to measure the app's cold start (default true). */
  measureLaunch?: boolean;
  /** Consecutive infrastructure failures after which the device workflow quarantines its device (default 3; 0 never). */
  quarantineAfter?: number;
  /** Longest wait between two attempts to publish a result while Redis refuses it, ms (default PUBLISH_RETRY_CAP_MS). */
  publishRetryMaxMs?: number;
}

/** Default longest wait between two attempts to publish a result (DT_PUBLISH_RETRY_MAX), ms. */
export const PUBLISH_RETRY_CAP_MS = 60_000;

/** One traversal of one app on one device: what the starter signals to a device workflow. */
export interface TraversalRequest {
  taskId: string;
  deviceId: string;
  agentUrl: string;
  apkUrl: string;
  packageName: string;
  apkSha256?: string;
  mainActivity?: string;
  traversal: TraversalSettings;
  policy?: RunPolicy;
  /** ISO time the starter accepted the task. */
  enqueuedAt?: string;
  /** The deployment whose starter sent it (`DT_DEPLOYMENT`; absent: none). */
  deployment?: string;
  /** The task queue of that starter; a device workflow on another queue refuses the request. */
  taskQueue?: string;
}

/** Settings handed to the traversal command. */
export interface TraversalSettings {
  /** Time budget of the traversal, seconds. */
  durationSec: number;
  /** Extra arguments appended to the command (an argument array; never passed through a shell). */
  extraArgs?: string[];
}

/** The eight steps of a traversal, in order. */
export const STEPS = [
  'resolveApk',
  'prepareDevice',
  'installApp',
  'measureLaunch',
  'runTraversal',
  'uploadReport',
  'cleanupDevice',
  'publishResult',
] as const;
/** One step name. */
export type StepName = (typeof STEPS)[number];

/** Phase shown in the progress query and the TraversalPhase search attribute. */
export type Phase =
  | 'queued'
  | 'downloading'
  | 'preparing'
  | 'installing'
  | 'launching'
  | 'traversing'
  | 'uploading'
  | 'cleaning'
  | 'publishing'
  /** A publish workflow whose first attempts failed: it retries until Redis takes the result. */
  | 'waiting-for-redis'
  /** A publish workflow that wrote its result. */
  | 'published'
  | 'paused'
  /** A device step that its host's worker has not taken for DT_HOST_WAIT: the run waits for that host. */
  | 'waiting-for-host'
  | 'completed'
  | 'failed'
  | 'cancelled';

/** Answer of the `progress` query. */
export interface TraversalProgress {
  taskId: string;
  deviceId: string;
  phase: Phase;
  percent: number;
  screens: number;
  crashes: number;
  anrs: number;
  elapsedMs: number;
  attempt: number;
  paused: boolean;
  /** The phone's host, when the run's device steps go to that host's task queue. */
  host?: string;
  /** Set while a device step waits for the worker of the phone's host. */
  waitingForHost?: string;
}

/** The progress of a traversal that has not started yet: queued, nothing counted. */
export function queuedProgress(taskId: string, deviceId: string, attempt: number, paused = false): TraversalProgress {
  return {
    taskId,
    deviceId,
    phase: 'queued',
    percent: 0,
    screens: 0,
    crashes: 0,
    anrs: 0,
    elapsedMs: 0,
    attempt,
    paused,
  };
}

/** Progress pushed from the running traversal command to its workflow. */
export interface ProgressUpdate {
  percent: number;
  screens: number;
  crashes: number;
  anrs: number;
  checkpoint?: string;
  attempt: number;
  /** Signatures found since the last update, each sent once per attempt (at most LIVE_FINDINGS_MAX). */
  found?: FindingBrief[];
}

/**
 * Most distinct signatures one attempt sends to its workflow as they are found. Each may cost one
 * signal (about four history events), so the cap bounds what findings add to history.
 */
export const LIVE_FINDINGS_MAX = 20;

/** What a finding is: an app crash or an ANR (Application Not Responding). */
export type FindingKind = 'crash' | 'anr';

/**
 * One crash or ANR the traversal tool reported, as it was found. `signature` is a short stable hash
 * of the kind, the exception class and the top in-app frames (src/activities/findings.ts), equal for
 * the same bug on any device, attempt or run.
 */
export interface Finding {
  kind: FindingKind;
  signature: string;
  /** Exception class (for an ANR, what the tool calls it, e.g. "ANR"). */
  exception: string;
  message: string;
  /** Stack frames as the tool printed them, top first (empty on repeats of a signature in a result). */
  frames: string[];
  /** The tool's step (checkpoint unit) at which it was found. */
  step?: number;
  /** Attempt of the traversal step that found it. */
  attempt: number;
  /** ISO time it was found. */
  foundAt: string;
  /** Screenshot path inside the report archive. */
  screenshot?: string;
  /**
   * Set when the result was published: true when the app's group of this signature was first seen
   * in this task (a new bug), false when an earlier task had met it. Absent before publishing.
   */
  newForApp?: boolean;
}

/** What a running traversal shows of a finding before its report exists (the Web UI's live table). */
export interface FindingBrief {
  kind: FindingKind;
  signature: string;
  exception: string;
  /** The message, cut short. */
  message: string;
  attempt: number;
  step?: number;
}

/**
 * The state of one task across its devices (`traversal:summary:<taskId>`), rewritten by every
 * published result of the task; `finished` once no device of it is pending.
 */
export interface TaskSummary {
  taskId: string;
  packageName: string;
  /** Devices the starter sent the task to. */
  devices: number;
  completed: number;
  failed: number;
  cancelled: number;
  /** Devices whose result is not published yet. */
  pending: number;
  /** Each device's status, `pending` until its result is published. */
  deviceStatus: Record<string, TraversalStatus | 'pending'>;
  /** Distinct signatures found by the task's devices. */
  uniqueFindings: number;
  /** Of those, the signatures first seen for the app in this task. */
  newFindings: number;
  /** Occurrences over all devices. */
  crashes: number;
  anrs: number;
  finished: boolean;
  updatedAt: string;
  finishedAt?: string;
  /** Where the task's JUnit XML was uploaded, once the last device finished. */
  junitUrl?: string;
}

/** A change of a traversal's time budget, sent with the `budget` signal. */
export interface BudgetChange {
  /** New total budget, seconds. */
  durationSec?: number;
  /** Seconds added to the current budget. */
  extendBySec?: number;
  /** Stop the tool now, keep and upload what it found. */
  finishNow?: boolean;
}

/**
 * The budget in force and whether the run is paused; `version` grows with every budget change so
 * the runner can tell what is new. The running traversal reads it with the `budget` query.
 */
export interface TraversalBudget {
  durationSec: number;
  finishNow: boolean;
  version: number;
  /** True while a `pause` signal holds the run (the tool is held too, not only the next step). */
  paused?: boolean;
}

/**
 * What a failure says about whom: `infrastructure` (device offline, agent down or busy, network,
 * timeouts: retry elsewhere or later), `task` (bad input: missing APK, wrong hash, unknown device),
 * `tool` (the traversal command itself failed), `cancelled` (someone asked it to stop).
 */
export type FailureKind = 'infrastructure' | 'task' | 'tool' | 'cancelled';

/** Final status of a traversal. `completed` means the tool ran to the end, findings or not. */
export type TraversalStatus = 'completed' | 'failed' | 'cancelled';

/** The result of a traversal, returned by the workflow and published to Redis. */
export interface TraversalResult {
  taskId: string;
  deviceId: string;
  packageName: string;
  apkUrl: string;
  status: TraversalStatus;
  /** Milliseconds per step that ran. */
  timings: Partial<Record<StepName, number>>;
  /** The APK installed; no install URL, which belongs to one worker's artifact server. */
  /** The phone host whose worker ran the device steps (host routing). */
  host?: string;
  /** `fromPeer`: the host of the farm it was fetched from, instead of the origin. */
  apk?: { sha256: string; size: number; fromCache: boolean; fromPeer?: string };
  installMs?: number;
  coldStartMs?: number;
  screens: number;
  /** Crashes and ANRs found: the counts of their kind in `findings` (plus `findingsOmitted`). */
  crashes: number;
  anrs: number;
  /**
   * Every crash and ANR found, across all attempts and hosts, in the order found. Repeats of one
   * signature carry no message or frames; the report's findings.json has everything.
   */
  findings: Finding[];
  /** Findings left out of `findings` to keep the result small (all are in findings.json). */
  findingsOmitted?: number;
  reportUrl?: string;
  /** Attempt of the traversal step that finished, and the checkpoint it resumed from (if any). */
  traversalAttempt?: number;
  resumedFrom?: string;
  /** True when the tool was told to finish before its budget ran out. */
  stoppedEarly?: boolean;
  /** Time budget in force at the end, seconds. */
  budgetSec?: number;
  /**
   * Failure type (e.g. ApkNotFound) and message when status is failed or cancelled. `kind` keeps
   * infrastructure trouble apart from a bad task and from a failing traversal tool; what the app
   * under test did wrong is never an error, it is counted in `crashes` and `anrs`.
   */
  error?: { type: string; message: string; kind: FailureKind; step?: StepName; nonRetryable?: boolean };
  startedAt: string;
  finishedAt: string;
  workflowId: string;
  runId: string;
}

/** Input of a device workflow; queue and dedupe memory are carried across continue-as-new. */
export interface DeviceWorkflowInput {
  deviceId: string;
  /** The deployment the workflow belongs to ('' or absent: none); it refuses requests of any other. */
  deployment?: string;
  /**
   * The task queue the starter started the workflow on; it refuses requests naming another. Held in
   * the input, not read from the worker, so a replay on any queue (the replay test's) decides alike.
   * Absent in workflows started before it existed: the worker's queue is used then.
   */
  taskQueue?: string;
  queue?: TraversalRequest[];
  seenTaskIds?: string[];
  paused?: boolean;
  completed?: number;
  /** History length after which the workflow continues as new between children (default 5000). */
  historyLimit?: number;
  /** Consecutive infrastructure failures so far, carried across continue-as-new. */
  infraFailures?: InfraFailure[];
  /** Quarantine in force, carried across continue-as-new. */
  quarantine?: DeviceQuarantine;
  /** The device's last results (at most DEVICE_RECENT_RESULTS), carried across continue-as-new. */
  recent?: DeviceRecentResult[];
}

/** One infrastructure failure of a traversal on a device. */
export interface InfraFailure {
  taskId: string;
  type: string;
  message: string;
  at: string;
}

/** Why a device stopped taking work; cleared by the `resume` signal. */
export interface DeviceQuarantine {
  reason: string;
  since: string;
  failures: InfraFailure[];
}

/** Answer of the device workflow's `state` query. */
export interface DeviceState {
  deviceId: string;
  paused: boolean;
  queue: { taskId: string; packageName: string }[];
  current?: { taskId: string; workflowId: string; packageName: string };
  completed: number;
  seen: number;
  /** Set while the device is quarantined after repeated infrastructure failures. */
  quarantine?: DeviceQuarantine;
  /** Infrastructure failures in a row since the last success. */
  infraFailuresInRow?: number;
  /** Requests of another deployment refused by this run of the workflow. */
  refused?: number;
  /** Repeated requests (a task id already seen) this run of the workflow ignored. */
  duplicates?: number;
  /** The last results, oldest first. */
  recent?: DeviceRecentResult[];
}

/** Adds a traversal request to a device's queue (duplicates by taskId are ignored). */
export const enqueueSignal = defineSignal<[TraversalRequest]>('enqueue');
/** Pauses a device (stops dequeuing) or a traversal (stops between steps). */
export const pauseSignal = defineSignal('pause');
/** Resumes what `pause` stopped; on a device it also lifts a quarantine. */
export const resumeSignal = defineSignal('resume');
/** Progress of the running traversal command, sent by the runTraversal activity. */
export const progressSignal = defineSignal<[ProgressUpdate]>('progress-update');
/** Changes the time budget of a running traversal: a new total, an extension, or finish now. */
export const budgetSignal = defineSignal<[BudgetChange]>('budget');
/** The current time budget of a traversal (read by the running traversal activity). */
export const budgetQuery = defineQuery<TraversalBudget>('budget');
/** A device step the run waited for was taken by its host's worker (one signal per wait). */
export const hostTookStepSignal = defineSignal<[HostTookStep]>('host-took-step');
/** Progress of a traversal. */
export const progressQuery = defineQuery<TraversalProgress>('progress');
/** Queue and current run of a device. */
export const deviceStateQuery = defineQuery<DeviceState>('state');

/**
 * Deployment names: they start workflow ids, so two deployments sharing a Temporal namespace never
 * share a workflow. No `/`, so an id reads back unambiguously.
 */
export const DEPLOYMENT_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** `<deployment>/` or nothing: ids of a deployment without a name are those of earlier versions. */
function scope(deployment = ''): string {
  return deployment ? `${deployment}/` : '';
}

/**
 * Activity ids of device steps scheduled again after their run waited for the phone's host: the
 * worker that takes such a step signals hostTookStepSignal, so the run stops saying it waits.
 */
export const HOST_WAIT_ACTIVITY_PREFIX = 'host-wait-';

/** What the worker that took a waiting device step says. */
export interface HostTookStep {
  host: string;
  activityType: string;
}

/** Host names (DT_HOST_ID): they end a task queue name, so no `/`. */
export const HOST_ID_PATTERN = DEPLOYMENT_PATTERN;

/** The task queue of one phone host's workers: `<shared queue>/host/<hostId>`. */
export function hostTaskQueue(sharedQueue: string, hostId: string): string {
  return `${sharedQueue}/host/${hostId}`;
}

/**
 * Where a traversal's device steps run, as locateDevice found it (recorded in history, so a run
 * keeps its host for good): a host's task queue, or none when any worker may run them.
 */
export interface DeviceLocation {
  /** The host owning the phone; absent when the registry and the agent name none. */
  host?: string;
  /** The host's task queue; absent with DT_ROUTING=any or no known host. */
  taskQueue?: string;
  /** How long a device step waits for the host's worker before the run shows it waits, ms. */
  hostWaitMs: number;
  /** Where the host came from, for the log and the details. */
  source: 'registry' | 'agent' | 'last-known' | 'none' | 'routing-any';
}

/** Workflow id of a device's entity workflow: `[<deployment>/]device/<deviceId>`. */
export function deviceWorkflowId(deviceId: string, deployment?: string): string {
  return `${scope(deployment)}device/${deviceId}`;
}

/** Workflow id of one traversal: `[<deployment>/]traversal/<taskId>/<deviceId>`. */
export function traversalWorkflowId(taskId: string, deviceId: string, deployment?: string): string {
  return `${scope(deployment)}traversal/${taskId}/${deviceId}`;
}

/** Workflow id of the workflow that publishes one traversal's result. */
export function publishWorkflowId(taskId: string, deviceId: string, deployment?: string): string {
  return `${scope(deployment)}publish/${taskId}/${deviceId}`;
}

/** Workflow id of the workflow that writes a finished task's report: `[<deployment>/]task-report/<taskId>`. */
export function taskReportWorkflowId(taskId: string, deployment?: string): string {
  return `${scope(deployment)}task-report/${taskId}`;
}

/** What a workflow id of this project names, or undefined for any other id. */
export function parseWorkflowId(
  id: string,
): { deployment: string; kind: 'device' | 'traversal' | 'publish'; taskId?: string; deviceId: string } | undefined {
  const m = /^(?:([^/]+)\/)?(?:device\/([^/]+)|(traversal|publish)\/([^/]+)\/([^/]+))$/.exec(id);
  if (!m) return undefined;
  const deployment = m[1] ?? '';
  if (m[2] !== undefined) return { deployment, kind: 'device', deviceId: m[2] };
  return { deployment, kind: m[3] as 'traversal' | 'publish', taskId: m[4], deviceId: m[5]! };
}
