/**
 * Redis key names, in one place. Every key takes the deployment's prefix (DT_REDIS_KEY_PREFIX), so
 * deployments that share one Redis never read each other's tasks or results.
 */

/** How long a task's record, summary and signatures outlive its last result by default (DT_TASK_RETENTION). */
export const DEFAULT_TASK_RETENTION_MS = 30 * 86_400_000;
/** How long a finding group outlives its last sighting by default (DT_FINDING_RETENTION). */
export const DEFAULT_FINDING_RETENTION_MS = 180 * 86_400_000;

/** Redis keys used by the starter. */
export function starterKeys(starterId: string, prefix = '') {
  return {
    tasks: `${prefix}traversal:tasks`,
    dead: `${prefix}traversal:tasks:dead`,
    processing: `${prefix}traversal:tasks:processing:${starterId}`,
  };
}

/** The farm's phone hosts whose workers have run: host id → {artifactUrl, lastSeen} (src/worker/host-records.ts). */
export function farmHostsKey(prefix = ''): string {
  return `${prefix}traversal:hosts`;
}

/** The host each phone was last found on: device id → host id (src/activities/locate.ts). */
export function deviceHostsKey(prefix = ''): string {
  return `${prefix}traversal:device-hosts`;
}

/** The farm's hosts holding an APK: host id → base URL of its artifact server (src/worker/peer-directory.ts). */
export function apkPeersKey(sha256: string, prefix = ''): string {
  return `${prefix}traversal:apk-peers:${sha256}`;
}

/** The one host of the farm downloading an APK from its origin now (src/worker/peer-directory.ts). */
export function apkFetchClaimKey(sha256: string, prefix = ''): string {
  return `${prefix}traversal:apk-fetch:${sha256}`;
}

/** Redis key of one traversal's result. */
export function resultKey(taskId: string, deviceId: string, prefix = ''): string {
  return `${prefix}traversal:result:${taskId}:${deviceId}`;
}

/** Stream that gets one event per finished traversal. */
export function resultsStream(prefix = ''): string {
  return `${prefix}traversal:results`;
}

/** The apps that have finding groups, scored by the last time any of their findings was seen (ms). */
export function findingAppsKey(prefix = ''): string {
  return `${prefix}traversal:findings:apps`;
}

/** One app's finding groups: signature → last seen (ms). */
export function appFindingsKey(packageName: string, prefix = ''): string {
  return `${prefix}traversal:findings:app:${packageName}`;
}

/**
 * One finding group (an app's bug): a hash of its counts, times and example, and three sorted sets
 * of the devices, tasks and APK hashes it was seen on (member → last seen, ms).
 */
export function findingGroupKeys(packageName: string, signature: string, prefix = '') {
  const base = `${prefix}traversal:finding:${packageName}:${signature}`;
  return { group: base, devices: `${base}:devices`, tasks: `${base}:tasks`, apks: `${base}:apks` };
}

/**
 * One task as the starter accepted it: a hash of its package, acceptance time and one
 * `device:<deviceId>` field per device (`pending` until that device's result is published).
 */
export function taskKey(taskId: string, prefix = ''): string {
  return `${prefix}traversal:task:${taskId}`;
}

/** The signatures a task's devices found: signature → `new` (first seen for the app in this task) or `seen`. */
export function taskSignaturesKey(taskId: string, prefix = ''): string {
  return `${prefix}traversal:task:${taskId}:signatures`;
}

/** A task's summary (TaskSummary JSON), rewritten by each published result of the task. */
export function taskSummaryKey(taskId: string, prefix = ''): string {
  return `${prefix}traversal:summary:${taskId}`;
}
