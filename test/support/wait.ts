/** Small polling helpers shared by the end-to-end tests. */
import { readdirSync, readFileSync } from 'node:fs';

/** Polls `fn` until it returns something truthy; throws naming `what` after the timeout. */
export async function waitFor<T>(fn: () => Promise<T | undefined | false | null>, timeoutMs = 60_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const v = await fn();
    if (v) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} not met within ${timeoutMs} ms`);
}

/** Pids of live processes started by a worker for a device (the runner marks them with DT_TRAVERSAL_DEVICE). */
export function traversalPids(deviceId: string): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const env = readFileSync(`/proc/${entry}/environ`, 'utf8');
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (env.split('\0').includes(`DT_TRAVERSAL_DEVICE=${deviceId}`) && !/\) Z /.test(stat)) out.push(Number(entry));
    } catch {
      // gone, or not ours to read
    }
  }
  return out;
}
