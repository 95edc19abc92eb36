/**
 * Reading workflow histories: the `enqueue` signals a device workflow received in every run
 * (continue-as-new runs are followed back to the first), each with the identity of the client that
 * sent it (`<pid>@<host>` by default, so it names the starter process); the attempts of an activity;
 * the server's time of an event.
 */
import type { Client } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import type { TraversalRequest } from '../../src/contract/messages';
import { waitFor } from '../../dev/wait';

type HistoryEvent = temporal.api.history.v1.IHistoryEvent;

/** One `enqueue` signal a device workflow received. */
export interface EnqueueSignal {
  taskId: string;
  /** The request the signal carried. */
  request: TraversalRequest;
  /** Identity of the client that sent it. */
  identity: string;
  runId: string;
  eventId: number;
}

/** The history of every run of a workflow, oldest run first (follows continue-as-new back). */
export async function runHistories(
  client: Client,
  workflowId: string,
): Promise<{ runId: string; events: HistoryEvent[] }[]> {
  const out: { runId: string; events: HistoryEvent[] }[] = [];
  let runId: string | undefined = (await client.workflow.getHandle(workflowId).describe()).runId;
  while (runId) {
    const history: temporal.api.history.v1.IHistory = await client.workflow.getHandle(workflowId, runId).fetchHistory();
    const events: HistoryEvent[] = history.events ?? [];
    out.unshift({ runId, events });
    runId = events[0]?.workflowExecutionStartedEventAttributes?.continuedExecutionRunId || undefined;
  }
  return out;
}

/** Every `enqueue` signal of a device workflow, in the order received, across its runs. */
export async function enqueueSignals(client: Client, workflowId: string): Promise<EnqueueSignal[]> {
  const out: EnqueueSignal[] = [];
  for (const { runId, events } of await runHistories(client, workflowId)) {
    for (const e of events) {
      const a = e.workflowExecutionSignaledEventAttributes;
      if (a?.signalName !== 'enqueue') continue;
      const req = defaultPayloadConverter.fromPayload<TraversalRequest>(a.input!.payloads![0]!);
      out.push({ taskId: req.taskId, request: req, identity: a.identity ?? '', runId, eventId: Number(e.eventId) });
    }
  }
  return out;
}

/** Waits until the device workflow's history holds at least `n` `enqueue` signals for `taskId`. */
export async function waitForEnqueueSignals(
  client: Client,
  workflowId: string,
  taskId: string,
  n: number,
  timeoutMs = 60_000,
): Promise<EnqueueSignal[]> {
  return waitFor(
    async () => {
      const mine = (await enqueueSignals(client, workflowId)).filter((s) => s.taskId === taskId);
      return mine.length >= n ? mine : undefined;
    },
    timeoutMs,
    `${n} enqueue signal(s) for ${taskId} in the history of ${workflowId}`,
  );
}

/** Workflow ids of the children a run of a workflow started (or tried to start). */
export function childStarts(events: HistoryEvent[]): string[] {
  return events.flatMap((e) => {
    const id = e.startChildWorkflowExecutionInitiatedEventAttributes?.workflowId;
    return id ? [id] : [];
  });
}

/** The started events of an activity type, in order: one per scheduled activity, of its last attempt (history keeps no other). */
export function activityStarts(events: HistoryEvent[], activityType: string): HistoryEvent[] {
  const scheduled = new Set(
    events
      .filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === activityType)
      .map((e) => String(e.eventId)),
  );
  return events.filter((e) => scheduled.has(String(e.activityTaskStartedEventAttributes?.scheduledEventId)));
}

/** An event's time in epoch ms, as the server recorded it. */
export function eventMs(e: HistoryEvent): number {
  return Number(e.eventTime?.seconds ?? 0) * 1000 + Math.floor((e.eventTime?.nanos ?? 0) / 1e6);
}

/** A history as JSON with every payload decoded to text (payloads are base64-encoded JSON bytes). */
export function historyText(history: unknown): string {
  return JSON.stringify(history, (k, v: unknown) =>
    k === 'data' && typeof v === 'string' ? Buffer.from(v, 'base64').toString('utf8') : v,
  );
}
