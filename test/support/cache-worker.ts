/**
 * Child process for the cross-process APK cache test.
 * Usage: node -r ts-node/register/transpile-only test/support/cache-worker.ts <cacheDir> <url>
 * Prints "ready" once loaded, waits for a line on stdin (the start signal), resolves the URL
 * with its own ApkCache, then prints one JSON line: {ok:true, result} or {ok:false, error}.
 */
import { ApkCache } from '../../src/apk-cache';
import { createDispatcher } from '../../src/net/dispatcher';

async function main(): Promise<void> {
  const [dir, url] = process.argv.slice(2);
  if (!dir || !url) throw new Error('usage: cache-worker.ts <cacheDir> <url>');
  const dispatcher = createDispatcher();
  const cache = new ApkCache({ dir, maxBytes: 64 * 1024 * 1024, dispatcher, lockPollMs: 50 });
  process.stdout.write('ready\n');
  await new Promise<void>((resolve) => process.stdin.once('data', () => resolve()));
  try {
    const result = await cache.resolve(url);
    process.stdout.write(`${JSON.stringify({ ok: true, pid: process.pid, result })}\n`);
  } finally {
    await dispatcher.close();
    process.stdin.destroy();
  }
}

main().catch((err: unknown) => {
  process.stdout.write(`${JSON.stringify({ ok: false, pid: process.pid, error: String(err) })}\n`);
  process.exit(1);
});
