/**
 * One app on one device: resolveApk → prepareDevice → installApp → measureLaunch → runTraversal →
 * uploadReport, then cleanupDevice always, also after a failure or a cancel; then it hands its result to
 * a publish workflow, which writes it into Redis.
 */
import {
  ActivityCancellationType,
  ApplicationFailure,
  CancellationScope,
  CancelledFailure,
  condition,
  isCancellation,
  log,
  patched,
  proxyActivities,
  ParentClosePolicy,
  setCurrentDetails,
  startChild,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
  ActivityFailure,
  TimeoutFailure,
  type ActivityOptions,
} from '@temporalio/workflow';
import type { Activities } from '../activities';
import type { ResolvedApk } from '../activities/apk';
import type { UploadReportResult } from '../activities/report-sink';
import type { RunTraversalResult, TraversalCheckpoint } from '../activities/traversal/runner';
import { failureKind, PERMANENT_ERROR_TYPES } from '../contract/errors';
import {
  budgetQuery,
  budgetSignal,
  HOST_WAIT_ACTIVITY_PREFIX,
  hostTookStepSignal,
  LIVE_FINDINGS_MAX,
  pauseSignal,
  progressQuery,
  progressSignal,
  publishWorkflowId,
  queuedProgress,
  resumeSignal,
  type DeviceLocation,
  type Phase,
  type FindingBrief,
  type StepName,
  type TraversalBudget,
  type TraversalProgress,
  type TraversalRequest,
  type TraversalResult,
} from '../contract/messages';
import { TRAVERSAL_PHASE } from '../contract/search-attributes';
import { finishedDetails, runningDetails } from '../contract/details';
import { publishWorkflow, type PublishedResult } from './publish';

/** How long a finished traversal waits for its result to be published, to show which findings are new. */
export const PUBLISH_WAIT_MS = 5_000;

function retry(maximumAttempts: number, initialMs: number): ActivityOptions['retry'] {
  return {
    initialInterval: initialMs,
    backoffCoefficient: 2,
    maximumInterval: '30s',
    maximumAttempts,
    nonRetryableErrorTypes: PERMANENT_ERROR_TYPES,
  };
}

/** Describes a failure for the result: the root ApplicationFailure's type and message where there is one. */
function describeFailure(err: unknown): { type: string; message: string; nonRetryable?: boolean } {
  let e: unknown = err;
  while (e instanceof ActivityFailure && e.cause) e = e.cause;
  if (e instanceof ApplicationFailure)
    return { type: e.type ?? 'Error', message: e.message, nonRetryable: e.nonRetryable ?? undefined };
  if (e instanceof TimeoutFailure)
    return { type: `Timeout${e.timeoutType !== undefined ? `:${e.timeoutType}` : ''}`, message: e.message };
  if (isCancellation(err)) return { type: 'Cancelled', message: 'the traversal was cancelled' };
  return { type: (e as Error)?.name ?? 'Error', message: (e as Error)?.message ?? String(e) };
}

/** The result's error: the failure, what kind of trouble it is, and the step it happened in. */
function errorOf(failure: unknown, step: StepName | undefined): NonNullable<TraversalResult['error']> {
  const d = describeFailure(failure);
  return { ...d, kind: failureKind(d.type, d.nonRetryable), step };
}

/** The traversal workflow (id `traversal/<taskId>/<deviceId>`). */
export async function traversalWorkflow(req: TraversalRequest): Promise<TraversalResult> {
  const info = workflowInfo();
  const policy = {
    heartbeatTimeoutMs: 30_000,
    maxAttempts: 3,
    initialRetryMs: 1000,
    measureLaunch: true,
    ...req.policy,
  };
  const hb = policy.heartbeatTimeoutMs;
  const init = policy.initialRetryMs;
  const startedAt = Date.now();

  // The device steps' options; with host routing they go to the task queue of the phone's host.
  const downloadOptions: ActivityOptions = {
    startToCloseTimeout: '2h',
    heartbeatTimeout: hb,
    retry: retry(10, init),
    summary: `download ${req.apkUrl}`,
  };
  // Quick agent calls heartbeat too, so a worker killed during one is noticed after the heartbeat
  // timeout instead of the 2-minute start-to-close timeout (runs recorded before lack the marker).
  const agentQuickOptions: ActivityOptions = {
    startToCloseTimeout: '2m',
    ...(patched('agent-call-heartbeats') ? { heartbeatTimeout: hb } : {}),
    retry: retry(5, init),
  };
  const agentInstallOptions: ActivityOptions = {
    startToCloseTimeout: '30m',
    heartbeatTimeout: hb,
    retry: retry(5, init),
  };
  const runnerOptions: ActivityOptions = {
    // A hung tool is caught by the heartbeat timeout; this only bounds runs whose budget was extended.
    startToCloseTimeout: Math.round(req.traversal.durationSec * 3000) + 24 * 3600_000,
    heartbeatTimeout: hb,
    retry: retry(policy.maxAttempts, init),
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    summary: `traverse ${req.packageName} on ${req.deviceId}`,
  };
  const uploaderOptions: ActivityOptions = {
    startToCloseTimeout: '30m',
    heartbeatTimeout: hb,
    retry: retry(5, init),
  };
  // Host routing (src/activities/locate.ts): the device steps run on the task queue of the phone's
  // host. A step its host's worker does not take within DT_HOST_WAIT ends with a schedule-to-start
  // timeout; the run then says it waits for that host and schedules the step there again, with no
  // bound: it never moves to a host that cannot reach the phone. One timeout per outage, so a host
  // that is down for hours adds a few events, not one per minute.
  const hostRouting = patched('host-routing');
  const locator = proxyActivities<Activities>({ startToCloseTimeout: '1m', retry: retry(5, init) });
  let where: DeviceLocation | undefined;
  /** The phase to show again once the host's worker takes the step, and the step that waits. */
  let phaseBeforeWait: Phase | undefined;
  let waitingStep: StepName | undefined;
  /** How many times a traversal step was scheduled again after its host came back. */
  let traversalReschedules = 0;
  /** The highest traversal attempt that reported progress (a rescheduled traversal's attempts follow it). */
  let lastAttemptSeen = 0;
  /** Ids of device steps scheduled again after a wait: the worker that takes one says so (hostTookStepSignal). */
  let hostWaitSeq = 0;
  /** Attempt numbers a traversal activity may use: its retry limit, or a wide block when unlimited. */
  const attemptBlock = policy.maxAttempts > 0 ? policy.maxAttempts : 100;
  function deviceSteps(options: ActivityOptions, again: boolean): Activities {
    if (!where?.taskQueue) return proxyActivities<Activities>(options);
    return proxyActivities<Activities>({
      ...options,
      taskQueue: where.taskQueue,
      ...(again
        ? { activityId: `${HOST_WAIT_ACTIVITY_PREFIX}${++hostWaitSeq}` }
        : { scheduleToStartTimeout: where.hostWaitMs }),
    });
  }
  /**
   * Runs a device step on the phone's host. When the host's worker does not take it within
   * DT_HOST_WAIT: `wait` (a step of the run) says the run waits for the host and schedules the step
   * there again with no bound; `fail` (cleanup of a run that already ended) gives up, so a cancelled
   * run of a dead host still ends; `shared` runs it on the shared queue instead (the partial report
   * upload, which only needs the parts already in the sink).
   */
  async function onHost<T>(
    stepName: StepName,
    options: ActivityOptions,
    call: (acts: Activities, lastHeartbeat: unknown, again: boolean) => Promise<T>,
    mode: 'wait' | 'fail' | 'shared' = 'wait',
  ): Promise<T> {
    if (!where?.taskQueue) return call(proxyActivities<Activities>(options), undefined, false);
    try {
      return await call(deviceSteps(options, false), undefined, false);
    } catch (err) {
      const timeout =
        err instanceof ActivityFailure &&
        err.cause instanceof TimeoutFailure &&
        err.cause.timeoutType === 'SCHEDULE_TO_START'
          ? err.cause
          : undefined;
      if (!timeout || mode === 'fail') throw err;
      if (mode === 'shared') {
        log.warn('the phone host has not taken the step; running it on the shared queue', {
          host: where.host,
          step: stepName,
        });
        return call(proxyActivities<Activities>(options), timeout.lastHeartbeatDetails, false);
      }
      waitForHost(stepName);
      try {
        return await call(deviceSteps(options, true), timeout.lastHeartbeatDetails, true);
      } finally {
        hostBack();
      }
    }
  }
  function waitForHost(stepName: StepName): void {
    if (progress.waitingForHost) return;
    phaseBeforeWait = progress.phase;
    waitingStep = stepName;
    progress.waitingForHost = where?.host;
    log.warn('the phone host has not taken the step; waiting for it', {
      host: where?.host,
      step: stepName,
      waitedMs: where?.hostWaitMs,
    });
    setPhase('waiting-for-host');
  }
  function hostBack(): void {
    if (!progress.waitingForHost) return;
    log.info('the phone host took the step', { host: progress.waitingForHost, step: waitingStep });
    progress.waitingForHost = undefined;
    setPhase(phaseBeforeWait ?? progress.phase);
  }
  const publisher = proxyActivities<Activities>({ startToCloseTimeout: '1m', retry: retry(10, init) });

  const progress: TraversalProgress = queuedProgress(req.taskId, req.deviceId, 1);
  let paused = false;
  const budget: TraversalBudget = { durationSec: req.traversal.durationSec, finishNow: false, version: 0 };
  // The running tool reads this every few seconds (a query writes no history), pause included.
  setHandler(budgetQuery, () => ({ ...budget, paused }));
  setHandler(budgetSignal, (change) => {
    if (change.finishNow) budget.finishNow = true;
    if (typeof change.durationSec === 'number' && change.durationSec >= 0) budget.durationSec = change.durationSec;
    if (typeof change.extendBySec === 'number')
      budget.durationSec = Math.max(0, budget.durationSec + change.extendBySec);
    budget.version++;
    log.info('traversal budget changed', { taskId: req.taskId, deviceId: req.deviceId, ...budget });
  });
  setHandler(progressQuery, () => ({ ...progress, elapsedMs: Date.now() - startedAt, paused }));
  setHandler(pauseSignal, () => {
    paused = true;
    describe();
  });
  // A device step scheduled again after a wait for its host was taken by that host's worker.
  setHandler(hostTookStepSignal, () => hostBack());
  setHandler(resumeSignal, () => {
    paused = false;
    describe();
  });
  // Signatures found so far, as the running tool reports them (each attempt sends a bounded number).
  const found: FindingBrief[] = [];
  // Signatures past the table's rows, kept only to be counted once (bounded like everything here).
  const foundMore = new Set<string>();
  setHandler(progressSignal, (u) => {
    for (const f of u.found ?? []) {
      if (found.some((k) => k.signature === f.signature)) continue;
      if (found.length < LIVE_FINDINGS_MAX) found.push(f);
      else if (foundMore.size < 10 * LIVE_FINDINGS_MAX) foundMore.add(f.signature);
    }
    if (typeof u.attempt === 'number' && u.attempt > lastAttemptSeen) lastAttemptSeen = u.attempt;
    if (progress.phase !== 'traversing' && progress.phase !== 'paused') return;
    Object.assign(progress, {
      percent: u.percent,
      screens: u.screens,
      crashes: u.crashes,
      anrs: u.anrs,
      attempt: u.attempt,
    });
    describe();
  });

  // Set once the result exists: from then on the details show it.
  let finished: { result: TraversalResult; note?: string } | undefined;
  function describe(): void {
    if (finished) {
      setCurrentDetails(finishedDetails(finished.result, finished.note));
      return;
    }
    const counts = progress.crashes + progress.anrs > 0 ? `, ${progress.crashes} crashes, ${progress.anrs} ANRs` : '';
    const pct =
      progress.phase === 'traversing'
        ? `${paused ? ' (paused)' : ''}, ${progress.percent}%, ${progress.screens} screens${counts}`
        : progress.waitingForHost
          ? `: its worker has not taken the ${waitingStep ?? 'next'} step for ${Math.round((where?.hostWaitMs ?? 0) / 1000)} s (down, or every slot busy); the run stays on that host and goes on once it does`
          : '';
    const phaseText = progress.waitingForHost ? `waiting for host ${progress.waitingForHost}` : progress.phase;
    setCurrentDetails(
      runningDetails(
        { packageName: req.packageName, deviceId: req.deviceId, phase: phaseText, progress: pct },
        found,
        foundMore.size,
      ),
    );
  }
  function setPhase(phase: Phase): void {
    progress.phase = phase;
    upsertSearchAttributes([{ key: TRAVERSAL_PHASE, value: phase }]);
    describe();
  }
  /** Pause takes effect between steps; a paused run keeps holding its device. */
  async function pausePoint(): Promise<void> {
    if (!paused) return;
    const before = progress.phase;
    setPhase('paused');
    log.info('traversal paused', { taskId: req.taskId, deviceId: req.deviceId });
    await condition(() => !paused);
    setPhase(before);
  }

  const timings: Partial<Record<StepName, number>> = {};
  let currentStep: StepName | undefined;
  async function step<T>(name: StepName, phase: Phase, fn: () => Promise<T>): Promise<T> {
    await pausePoint();
    currentStep = name;
    setPhase(phase);
    const t0 = Date.now();
    try {
      return await fn();
    } finally {
      timings[name] = Date.now() - t0;
    }
  }

  const device = { deviceId: req.deviceId, agentUrl: req.agentUrl };
  let apk: ResolvedApk | undefined;
  let installMs: number | undefined;
  let coldStartMs: number | undefined;
  let run: RunTraversalResult | undefined;
  let reportUrl: string | undefined;
  let report: UploadReportResult | undefined;
  let failure: unknown;
  let failedStep: StepName | undefined;

  try {
    if (hostRouting) {
      currentStep = 'prepareDevice';
      where = await locator.locateDevice(device);
      if (where.host) progress.host = where.host;
    }
    apk = await step('resolveApk', 'downloading', () =>
      onHost('resolveApk', downloadOptions, (a) =>
        a.resolveApk({ url: req.apkUrl, sha256: req.apkSha256, delivery: policy.delivery }),
      ),
    );
    await step('prepareDevice', 'preparing', () =>
      onHost('prepareDevice', agentQuickOptions, (a) => a.prepareDevice(device)),
    );
    const installed = await step('installApp', 'installing', () =>
      onHost('installApp', agentInstallOptions, (a) =>
        a.installApp(
          // The worker that installs derives the install URL, so no worker's URL enters history;
          // runs recorded before passed the one resolveApk built (installApp still accepts it).
          patched('install-url-on-worker')
            ? {
                ...device,
                packageName: req.packageName,
                apk: { originUrl: req.apkUrl, sha256: apk!.sha256, delivery: apk!.delivery },
              }
            : { ...device, url: apk!.installUrl, packageName: req.packageName, sha256: apk!.sha256 },
        ),
      ),
    );
    installMs = installed.ms;
    if (policy.measureLaunch) {
      const launch = await step('measureLaunch', 'launching', () =>
        onHost('measureLaunch', agentQuickOptions, (a) =>
          a.measureLaunch({ ...device, packageName: req.packageName, activity: req.mainActivity }),
        ),
      );
      coldStartMs = launch.coldStartMs;
    }
    run = await step('runTraversal', 'traversing', () =>
      onHost('runTraversal', runnerOptions, (a, lastHeartbeat, again) => {
        // Scheduled again after a wait for the host: a new activity, so it is handed the last
        // checkpoint and takes attempt numbers after any the earlier one could have used.
        if (again) traversalReschedules++;
        const checkpoint = lastHeartbeat as TraversalCheckpoint | undefined;
        return a.runTraversal({
          taskId: req.taskId,
          deviceId: req.deviceId,
          agentUrl: req.agentUrl,
          packageName: req.packageName,
          mainActivity: req.mainActivity,
          durationSec: req.traversal.durationSec,
          extraArgs: req.traversal.extraArgs,
          ...(again
            ? {
                attemptBase: Math.max(traversalReschedules * attemptBlock, checkpoint?.attempt ?? 0, lastAttemptSeen),
                ...(checkpoint ? { resume: checkpoint } : {}),
              }
            : {}),
        });
      }),
    );
    Object.assign(progress, {
      percent: 100,
      screens: run.screens,
      crashes: run.crashes,
      anrs: run.anrs,
      attempt: run.attempt,
    });
    // Built from every attempt's parts, wherever they ran, so a run resumed on another host keeps all it found.
    report = await step('uploadReport', 'uploading', () =>
      onHost('uploadReport', uploaderOptions, (a) =>
        a.uploadReport({ taskId: req.taskId, deviceId: req.deviceId, attempts: run!.attempt }),
      ),
    );
    reportUrl = report.url;
  } catch (err) {
    failure = err;
    failedStep = currentStep;
    log.warn('traversal step failed', { step: currentStep, error: describeFailure(err) });
  }

  // A cancel that reaches a step whose worker died ends that step with a timeout rather than a
  // cancellation (nobody is left to acknowledge it); the run was still cancelled by its user.
  const cancelledMidStep =
    failure !== undefined &&
    !isCancellation(failure) &&
    CancellationScope.current().consideredCancelled &&
    patched('cancel-over-lost-step');
  const cancelled = failure !== undefined && (isCancellation(failure) || cancelledMidStep);
  const status = failure === undefined ? 'completed' : cancelled ? 'cancelled' : 'failed';
  let result: TraversalResult | undefined;
  await CancellationScope.nonCancellable(async () => {
    // A run stopped during the traversal still leaves what it found: upload the partial report.
    if (failure !== undefined && failedStep === 'runTraversal') {
      try {
        report = await onHost(
          'uploadReport',
          uploaderOptions,
          (a) =>
            a.uploadReport({
              taskId: req.taskId,
              deviceId: req.deviceId,
              attempts: hostRouting
                ? Math.max((traversalReschedules + 1) * attemptBlock, lastAttemptSeen)
                : policy.maxAttempts,
              partial: true,
            }),
          'shared',
        );
        reportUrl = report.url;
      } catch (err) {
        log.warn('partial report upload failed', { error: describeFailure(err) });
      }
    }
    setPhase('cleaning');
    const t0 = Date.now();
    try {
      await onHost(
        'cleanupDevice',
        agentQuickOptions,
        (a) => a.cleanupDevice({ ...device, packageName: req.packageName }),
        'fail',
      );
    } catch (err) {
      log.error('device cleanup failed', { deviceId: req.deviceId, error: describeFailure(err) });
    }
    timings.cleanupDevice = Date.now() - t0;
    const finishedAt = Date.now();
    result = {
      taskId: req.taskId,
      deviceId: req.deviceId,
      packageName: req.packageName,
      apkUrl: req.apkUrl,
      status,
      ...(where?.host ? { host: where.host } : {}),
      timings,
      ...(apk?.sha256 && apk.size !== undefined
        ? {
            apk: {
              sha256: apk.sha256,
              size: apk.size,
              fromCache: apk.fromCache,
              ...(apk.fromPeer ? { fromPeer: apk.fromPeer } : {}),
            },
          }
        : {}),
      installMs,
      coldStartMs,
      screens: run?.screens ?? progress.screens,
      // The counts are those of the merged findings (every attempt, every host); a tool that prints
      // no finding lines keeps the counts of its own report.
      crashes: report?.findings?.length ? report.crashes : (run?.crashes ?? progress.crashes),
      anrs: report?.findings?.length ? report.anrs : (run?.anrs ?? progress.anrs),
      findings: report?.findings ?? [],
      ...(report?.findingsOmitted ? { findingsOmitted: report.findingsOmitted } : {}),
      reportUrl,
      traversalAttempt: run?.attempt,
      stoppedEarly: run ? run.status === 'stopped' : undefined,
      budgetSec: budget.durationSec,
      resumedFrom: run?.resumedFrom,
      ...(failure !== undefined
        ? {
            error: cancelledMidStep
              ? {
                  type: 'Cancelled',
                  message: `the traversal was cancelled; ${failedStep ?? 'its step'} ended with ${describeFailure(failure).type} while cancelling`,
                  kind: failureKind('Cancelled', undefined),
                  step: failedStep,
                }
              : errorOf(failure, failedStep),
          }
        : {}),
      startedAt: new Date(startedAt).toISOString(),
      finishedAt: new Date(finishedAt).toISOString(),
      workflowId: info.workflowId,
      runId: info.runId,
    };
    // The details show the result from here on (setCurrentDetails writes no history).
    finished = { result };
    if (patched('publish-apart')) {
      // Redis gets the result from a workflow of its own that retries until Redis takes it, so
      // the device is free at once even while Redis refuses writes.
      try {
        const findingsDetails = patched('findings-details');
        const child = await startChild(publishWorkflow, {
          workflowId: publishWorkflowId(req.taskId, req.deviceId, req.deployment),
          args: [{ result, initialRetryMs: init, maxRetryMs: policy.publishRetryMaxMs }],
          parentClosePolicy: ParentClosePolicy.ABANDON,
          staticSummary: `publish the result of ${req.taskId} on ${req.deviceId}`,
          // Kept by the server: the outcome stays readable in the Web UI with no worker running.
          ...(findingsDetails ? { staticDetails: finishedDetails(result) } : {}),
          typedSearchAttributes: [{ key: TRAVERSAL_PHASE, value: 'publishing' }],
        });
        if (findingsDetails) {
          // Publishing says which findings are new for the app; wait a little for it, never long:
          // while Redis refuses writes the device must not wait for it.
          // 'unknown': a publish workflow of an older worker, which answers nothing.
          let published: PublishedResult | 'unknown' | undefined;
          child.result().then(
            (p) => (published = p ?? 'unknown'),
            () => undefined,
          );
          const inTime = await condition(() => published !== undefined, PUBLISH_WAIT_MS);
          if (inTime && published && published !== 'unknown') {
            const fresh = new Set(published.newSignatures);
            result.findings = result.findings.map((f) => ({ ...f, newForApp: fresh.has(f.signature) }));
            finished = { result };
          } else
            finished = {
              result,
              note:
                published === 'unknown'
                  ? 'Whether these are new for the app is in the published result in Redis (`npm run findings -- --task <id>`).'
                  : `Whether these are new for the app is not known yet: Redis has not taken the result (see the workflow ${publishWorkflowId(req.taskId, req.deviceId, req.deployment)}).`,
            };
        }
      } catch (err) {
        // Only when a publish workflow of this id still runs (a reset traversal): it publishes.
        log.error('the publish workflow could not start', { error: describeFailure(err) });
      }
    } else {
      // Runs recorded before: published here, and gave up after ten attempts.
      setPhase('publishing');
      const p0 = Date.now();
      try {
        await publisher.publishResult(result);
      } catch (err) {
        log.error('publishing the result failed', { error: describeFailure(err) });
      }
      timings.publishResult = Date.now() - p0;
    }
    setPhase(status);
  });

  if (failure !== undefined) {
    if (cancelled) throw cancelledMidStep ? new CancelledFailure('the traversal was cancelled') : failure;
    const d = describeFailure(failure);
    throw ApplicationFailure.create({
      type: d.type,
      message: d.message,
      nonRetryable: true,
      details: [result],
      cause: failure as Error,
    });
  }
  return result!;
}
