/**
 * The task record: what the starter accepted (the package and every device the task went to), so
 * the publish of each device's result can tell when the task's last device finished. Written
 * before any request is sent, and only ever added to: a replayed item leaves finished devices be.
 */
import type Redis from 'ioredis';
import type { TraversalRequest } from '../contract/messages';
import { taskKey } from '../contract/redis-keys';

/** Records the task of `requests` (all of one task) with each device pending, unless already recorded. */
export async function recordTask(
  redis: Redis,
  requests: readonly TraversalRequest[],
  acceptedAt: string,
  retentionMs: number,
  prefix = '',
): Promise<void> {
  const first = requests[0];
  if (!first) return;
  const key = taskKey(first.taskId, prefix);
  const tx = redis.multi().hsetnx(key, 'package', first.packageName).hsetnx(key, 'acceptedAt', acceptedAt);
  for (const r of requests) tx.hsetnx(key, `device:${r.deviceId}`, 'pending');
  tx.pexpire(key, Math.max(1000, retentionMs));
  const replies = await tx.exec();
  const failed = replies?.find(([err]) => err);
  if (failed) throw failed[0];
}

/** Takes devices whose requests were refused out of the task, so the task can still finish. */
export async function dropTaskDevices(redis: Redis, taskId: string, deviceIds: string[], prefix = ''): Promise<void> {
  if (deviceIds.length === 0) return;
  const key = taskKey(taskId, prefix);
  // Only devices still pending: a device that finished keeps its status.
  const states = await redis.hmget(key, ...deviceIds.map((d) => `device:${d}`));
  const pending = deviceIds.filter((_, i) => states[i] === 'pending').map((d) => `device:${d}`);
  if (pending.length) await redis.hdel(key, ...pending);
}
