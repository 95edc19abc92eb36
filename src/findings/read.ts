/**
 * Reading findings back from Redis: a task's results and summary, and an app's finding groups. Used
 * by `npm run findings`, by the task report written when a task's last device finishes, and by tests.
 */
import type Redis from 'ioredis';
import type { Finding, FindingKind, TaskSummary, TraversalResult } from '../contract/messages';
import { appFindingsKey, findingGroupKeys, resultKey, taskKey, taskSummaryKey } from '../contract/redis-keys';
import type { FindingGroup } from './groups';
import { signatureGroups } from '../contract/signature-groups';

/** A task's published results, its devices still pending, and its summary if the starter recorded it. */
export interface TaskFindings {
  taskId: string;
  packageName: string;
  results: TraversalResult[];
  pending: string[];
  summary?: TaskSummary;
}

/** The devices a task went to: from the starter's record, else every published result key of the task. */
async function taskDevices(redis: Redis, taskId: string, prefix: string): Promise<string[]> {
  const record = await redis.hgetall(taskKey(taskId, prefix));
  const recorded = Object.keys(record)
    .filter((f) => f.startsWith('device:'))
    .map((f) => f.slice('device:'.length));
  if (recorded.length > 0) return recorded.sort();
  // Ids never hold glob characters (contract/ids.ts), so the pattern matches only this task's keys.
  const head = resultKey(taskId, '', prefix);
  const found = new Set<string>();
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${head}*`, 'COUNT', 1000);
    for (const k of keys) found.add(k.slice(head.length));
    cursor = next;
  } while (cursor !== '0');
  return [...found].sort();
}

/** Everything Redis holds about one task's findings. */
export async function readTaskFindings(redis: Redis, taskId: string, prefix = ''): Promise<TaskFindings> {
  const devices = await taskDevices(redis, taskId, prefix);
  const texts = devices.length ? await redis.mget(devices.map((d) => resultKey(taskId, d, prefix))) : [];
  const results: TraversalResult[] = [];
  const pending: string[] = [];
  texts.forEach((text, i) => {
    if (text) results.push(JSON.parse(text) as TraversalResult);
    else pending.push(devices[i]!);
  });
  const summaryText = await redis.get(taskSummaryKey(taskId, prefix));
  const summary = summaryText ? (JSON.parse(summaryText) as TaskSummary) : undefined;
  const packageName =
    results[0]?.packageName ?? summary?.packageName ?? (await redis.hget(taskKey(taskId, prefix), 'package')) ?? '';
  return { taskId, packageName, results, pending, summary };
}

/** One signature of a task: the occurrences on all its devices. */
export interface TaskFindingGroup {
  signature: string;
  kind: FindingKind;
  exception: string;
  message: string;
  /** The occurrence with frames. */
  example: Finding;
  /** Occurrences over the task's devices. */
  count: number;
  devices: string[];
  /** First seen for the app in this task; undefined when the results do not say. */
  newForApp?: boolean;
}

/** Groups a task's findings by signature: most devices first, then most occurrences. */
export function groupTaskFindings(results: readonly TraversalResult[]): TaskFindingGroup[] {
  const deviceOf = new Map<Finding, string>();
  for (const r of results) for (const f of r.findings ?? []) deviceOf.set(f, r.deviceId);
  return signatureGroups(deviceOf.keys())
    .map(({ signature, example, occurrences }) => ({
      signature,
      kind: example.kind,
      exception: example.exception,
      message: example.message,
      example,
      count: occurrences.length,
      devices: [...new Set(occurrences.map((f) => deviceOf.get(f)!))],
      newForApp: occurrences.some((f) => f.newForApp === true)
        ? true
        : occurrences.some((f) => f.newForApp === false)
          ? false
          : undefined,
    }))
    .sort((a, b) => b.devices.length - a.devices.length || b.count - a.count);
}

/** Reads one group, or undefined when the app never met the signature. */
export async function readGroup(
  redis: Redis,
  packageName: string,
  signature: string,
  prefix = '',
): Promise<FindingGroup | undefined> {
  const k = findingGroupKeys(packageName, signature, prefix);
  const [h, devices, tasks, apks] = await Promise.all([
    redis.hgetall(k.group),
    redis.zrevrange(k.devices, 0, -1),
    redis.zrevrange(k.tasks, 0, -1),
    redis.zrevrange(k.apks, 0, -1),
  ]);
  if (!h.signature) return undefined;
  let example: Finding | undefined;
  try {
    example = h.example ? (JSON.parse(h.example) as Finding) : undefined;
  } catch {
    example = undefined;
  }
  const iso = (ms: string | undefined) => new Date(Number(ms ?? 0)).toISOString();
  return {
    packageName: h.app ?? packageName,
    signature: h.signature,
    kind: h.kind as FindingKind,
    exception: h.exception ?? '',
    message: h.message ?? '',
    count: Number(h.count ?? 0),
    firstSeen: iso(h.firstSeen),
    lastSeen: iso(h.lastSeen),
    firstTask: h.firstTask ?? '',
    firstDevice: h.firstDevice ?? '',
    lastTask: h.lastTask ?? '',
    lastDevice: h.lastDevice ?? '',
    devices,
    tasks,
    apks,
    example,
  };
}

/**
 * An app's groups last seen at or after `sinceMs`: those first seen in that window (new) first,
 * then by count, highest first.
 */
export async function readAppGroups(
  redis: Redis,
  packageName: string,
  opts: { sinceMs?: number; limit?: number; prefix?: string } = {},
): Promise<FindingGroup[]> {
  const prefix = opts.prefix ?? '';
  const since = opts.sinceMs ?? 0;
  const signatures = await redis.zrevrangebyscore(appFindingsKey(packageName, prefix), '+inf', since);
  // Sent together: one connection carries them back to back.
  const read = await Promise.all(signatures.map((sig) => readGroup(redis, packageName, sig, prefix)));
  const groups = read.filter((g): g is FindingGroup => g !== undefined);
  const isNew = (g: FindingGroup) => Date.parse(g.firstSeen) >= since;
  groups.sort((a, b) => Number(isNew(b)) - Number(isNew(a)) || b.count - a.count);
  return opts.limit ? groups.slice(0, opts.limit) : groups;
}
