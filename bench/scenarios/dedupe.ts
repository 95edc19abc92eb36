/**
 * dedupe — one origin download per APK per host, across worker processes. Two worker processes
 * share one DT_DATA_DIR (one APK cache) and one task queue; 20 traversals of one APK start
 * together, then 20 traversals spread over 4 APKs. The origin counts GETs and bytes served.
 *
 * Options: --quick, --size-mib 200 (part 1), --size4-mib 50 (part 2), --download-sec 4 (origin
 * throttle so the download lasts about this long and every traversal overlaps it; 0 = unthrottled).
 */
import path from 'node:path';
import { request } from 'undici';
import type { TraversalResult } from '../../src/contract/messages';
import type { ApkInfo } from '../../sim/origin';
import { mdTable, MiB, parseOptions, round, say, sizeLabel, type ScenarioRun } from '../lib/report';
import { inScenarioDir, startBenchStack } from '../lib/stack';
import { requireBuild, startAgentSim, startWorkerProc, type WorkerProc } from '../../dev/services';
import { enqueue, waitResults } from '../lib/traffic';

const DEVICES = 20;

/** One part of the scenario. */
interface Part {
  name: string;
  traversals: number;
  apks: { name: string; size: number; gets: number; rangeGets: number; bytesServed: number; bytesRatio: number }[];
  /** Installs each worker ran in this part (from its artifact server: install URLs stay out of results). */
  perWorker: number[];
  /** Worker metrics after the part (cumulative): origin downloads and cache hits per worker. */
  originDownloads: number[];
  cacheHits: number[];
  failed: number;
  wallS: number;
}

/** Runs the dedupe scenario. */
export const run: ScenarioRun = async ({ args }) => {
  requireBuild(say);
  const o = parseOptions(args);
  const quick = o.has('quick');
  const size1 = o.num('size-mib', quick ? 50 : 200) * MiB;
  const size4 = o.num('size4-mib', quick ? 20 : 50) * MiB;
  const downloadSec = o.num('download-sec', 4);
  const parts: Part[] = [];
  await inScenarioDir('dedupe', async (scope, workDir) => {
    const { temporal, redisUrl, redis, origin } = await startBenchStack(scope, workDir);
    const one = await origin.addApk(`bench-dedupe-${size1 / MiB}m.apk`, size1);
    const four: ApkInfo[] = [];
    for (let i = 1; i <= 4; i++) four.push(await origin.addApk(`bench-dedupe-${i}-${size4 / MiB}m.apk`, size4));

    const devices = Array.from({ length: DEVICES }, (_, i) => `dd-${i + 1}`);
    const agent = await startAgentSim(scope, { devices, logFile: path.join(workDir, 'agent.log') });
    // Two worker processes on one host: same data folder (so one APK cache), same task queue.
    const dataDir = path.join(workDir, 'data');
    const workers: WorkerProc[] = [];
    for (let i = 1; i <= 2; i++) {
      workers.push(
        await startWorkerProc(scope, {
          temporalAddress: temporal.address,
          redisUrl,
          taskQueue: 'bench-dedupe',
          dataDir,
          logFile: path.join(workDir, `worker-${i}.log`),
        }),
      );
    }
    const isDead = () => workers.map((w) => w.proc.exitNote()).find(Boolean) ?? agent.proc.exitNote();

    const runPart = async (name: string, taskId: string, apkFor: (i: number) => ApkInfo & { file: string }) => {
      const apks = [...new Map(devices.map((_, i) => apkFor(i)).map((a) => [a.file, a])).values()];
      // Pace the origin so one download lasts about downloadSec: all 20 starts then overlap it.
      origin.throttleBytesPerSec = downloadSec > 0 ? Math.max(...apks.map((a) => a.size)) / downloadSec : undefined;
      say(`dedupe: ${name}: ${devices.length} traversals of ${apks.length} APK(s) across 2 workers…`);
      const installsBefore = (await Promise.all(workers.map((w) => scrape(w.artifactUrl)))).map(
        (m) => m.get('dt_installs_total') ?? 0,
      );
      const t0 = Date.now();
      await Promise.all(
        devices.map((deviceId, i) => {
          const apk = apkFor(i);
          return enqueue(temporal.client, 'bench-dedupe', {
            taskId,
            deviceId,
            agentUrl: agent.url,
            apkUrl: origin.url(apk.file),
            apkSha256: apk.sha256,
            packageName: `com.example.${apk.file.replace(/[^A-Za-z0-9]/g, '')}`,
            traversal: { durationSec: 0, extraArgs: ['--tick-ms', '100'] },
            policy: { heartbeatTimeoutMs: 30_000, maxAttempts: 3, initialRetryMs: 500 },
          });
        }),
      );
      const results = await waitResults(
        redis,
        devices.map((deviceId) => ({ taskId, deviceId })),
        600_000,
        isDead,
      );
      const wallS = (Date.now() - t0) / 1000;
      const metrics = await Promise.all(workers.map((w) => scrape(w.artifactUrl)));
      const part: Part = {
        name,
        traversals: results.length,
        apks: apks.map((a) => {
          const st = origin.stats(a.file);
          return {
            name: a.file,
            size: a.size,
            gets: st.gets,
            rangeGets: st.rangeGets,
            bytesServed: st.bytesServed,
            bytesRatio: round(st.bytesServed / a.size, 2),
          };
        }),
        perWorker: metrics.map((m, i) => (m.get('dt_installs_total') ?? 0) - installsBefore[i]!),
        originDownloads: metrics.map((m) => m.get('dt_apk_origin_downloads_total') ?? 0),
        cacheHits: metrics.map((m) => m.get('dt_apk_cache_hits_total') ?? 0),
        failed: results.filter((r: TraversalResult) => r.status !== 'completed').length,
        wallS,
      };
      parts.push(part);
      say(
        `dedupe: ${name}: origin GETs ${part.apks.map((a) => a.gets).join('+')}, bytes ${part.apks.map((a) => a.bytesRatio).join('+')} × size, per worker ${part.perWorker.join('/')}`,
      );
    };

    await runPart('one APK', 'dedupe-one', () => ({ ...one, file: `bench-dedupe-${size1 / MiB}m.apk` }));
    await runPart('four APKs', 'dedupe-four', (i) => ({
      ...four[i % 4]!,
      file: `bench-dedupe-${(i % 4) + 1}-${size4 / MiB}m.apk`,
    }));
  });
  return summarize(parts, { size1, size4, downloadSec });
};

/** Reads the worker's /metrics into name → summed value. */
async function scrape(base: string): Promise<Map<string, number>> {
  const res = await request(`${base}/metrics`);
  const text = await res.body.text();
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^(dt_[a-z_]+)(?:\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
    if (m) out.set(m[1]!, (out.get(m[1]!) ?? 0) + Number(m[2]));
  }
  return out;
}

function summarize(
  parts: Part[],
  opts: { size1: number; size4: number; downloadSec: number },
): { markdown: string; json: unknown } {
  const rows = parts.flatMap((p) =>
    p.apks.map((a, i) => [
      i === 0 ? p.name : '',
      i === 0 ? p.traversals : '',
      a.name,
      sizeLabel(a.size),
      a.gets,
      a.rangeGets,
      `${a.bytesRatio.toFixed(2)} ×`,
      i === 0 ? p.perWorker.join(' / ') : '',
      i === 0 ? round(p.wallS) : '',
      i === 0 ? (p.failed ? `${p.failed} failed` : 'all completed') : '',
    ]),
  );
  const [one, four] = parts;
  const verdict = (ok: boolean) => (ok ? 'met' : 'NOT met');
  const targets = [
    one
      ? [
          'one APK, 20 traversals, 2 workers: origin GETs = 1, bytes = 1.00 × size',
          `${one.apks[0]!.gets} GET, ${one.apks[0]!.bytesRatio.toFixed(2)} ×`,
          verdict(one.apks[0]!.gets === 1 && one.apks[0]!.bytesRatio === 1),
        ]
      : ['one APK', 'not run', '–'],
    four
      ? [
          'four APKs, 20 traversals: 4 GETs',
          `${four.apks.reduce((n, a) => n + a.gets, 0)} GETs`,
          verdict(four.apks.every((a) => a.gets === 1 && a.bytesRatio === 1)),
        ]
      : ['four APKs', 'not run', '–'],
  ];
  const markdown = [
    'Two worker processes on one host share one DT_DATA_DIR (one APK cache) and one task queue; 20 devices on the agent simulator.',
    `All 20 traversals of a part are started together; the origin is paced so one download lasts about ${opts.downloadSec} s, so every`,
    'resolveApk overlaps it (in-process single flight inside a worker, the lock file across the two).',
    '',
    mdTable(
      [
        'part',
        'traversals',
        'APK',
        'size',
        'origin GETs',
        'range GETs',
        'origin bytes / size',
        'resolveApk per worker',
        'wall s',
        'status',
      ],
      rows,
    ),
    '',
    mdTable(['target', 'measured', ''], targets),
    '',
    `Worker metrics after both parts — origin downloads: ${four?.originDownloads.join(' / ') ?? '-'}; cache hits (incl. joined downloads): ${four?.cacheHits.join(' / ') ?? '-'}.`,
  ].join('\n');
  return { markdown, json: { options: opts, parts } };
}
