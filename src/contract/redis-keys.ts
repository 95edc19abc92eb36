/**
 * Redis key names, in one place. Every key takes the deployment's prefix (DT_REDIS_KEY_PREFIX), so
 * deployments that share one Redis never read each other's tasks or results.
 */

/** Redis keys used by the starter. */
export function starterKeys(starterId: string, prefix = '') {
  return {
    tasks: `${prefix}traversal:tasks`,
    dead: `${prefix}traversal:tasks:dead`,
    processing: `${prefix}traversal:tasks:processing:${starterId}`,
  };
}

/** Redis key of one traversal's result. */
export function resultKey(taskId: string, deviceId: string, prefix = ''): string {
  return `${prefix}traversal:result:${taskId}:${deviceId}`;
}

/** Stream that gets one event per finished traversal. */
export function resultsStream(prefix = ''): string {
  return `${prefix}traversal:results`;
}
