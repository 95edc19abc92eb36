/**
 * download — the APK cache's streaming download (ApkCache.resolve: undici, sha256 while writing,
 * write to a part file, atomic rename) against `curl -o /dev/null` of the same URL from the same
 * origin in the same run, interleaved. Also measures where the cache's time goes (undici alone,
 * + sha256, + disk) and a larger stream highWaterMark, each in its own process.
 *
 * Options: --quick, --size-mib 1024, --repeats 3, --hwm 1048576 (bytes, for the pipeline variant).
 */
import { execFile, spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { PROJECT_ROOT } from '../../src/config';
import { mdTable, median, MiB, parseOptions, round, say, sizeLabel, type ScenarioRun } from '../lib/report';
import { inScenarioDir, startOrigin } from '../lib/stack';

const run$ = promisify(execFile);

interface Mode {
  key: string;
  label: string;
  /** Part of the ratio target (the cache against curl to /dev/null). */
  kind: 'reference' | 'subject' | 'breakdown';
  measure: (url: string, dir: string) => Promise<number>;
}

/** Runs the download scenario. */
export const run: ScenarioRun = async ({ args }) => {
  const o = parseOptions(args);
  const quick = o.has('quick');
  const size = o.num('size-mib', quick ? 256 : 1024) * MiB;
  const repeats = o.num('repeats', quick ? 2 : 3);
  const hwm = o.num('hwm', MiB);
  const curl = ensureCurl();
  const times = new Map<string, number[]>();
  let modes: Mode[] = [];
  await inScenarioDir('download', async (scope, workDir) => {
    const origin = await startOrigin(scope);
    const name = `bench-${size / MiB}m.apk`;
    say(`download: preparing ${name}`);
    await origin.addApk(name, size);
    const url = origin.url(name);

    const curlTo = (target: string) => async (): Promise<number> => {
      const { stdout } = await run$(curl, ['-sS', '--fail', '-o', target, '-w', '%{size_download} %{time_total}', url]);
      const [bytes, secs] = stdout.trim().split(' ').map(Number) as [number, number];
      if (bytes !== size) throw new Error(`curl received ${bytes} of ${size} bytes`);
      return secs * 1000;
    };
    const curlTeeSha = async (): Promise<number> => {
      const t0 = performance.now();
      const out = path.join(workDir, 'curl.out');
      // pipefail: a failed download must not look like a fast one.
      await run$('bash', [
        '-o',
        'pipefail',
        '-c',
        `"${curl}" -sS --fail "$0" | tee "$1" | sha256sum >/dev/null`,
        url,
        out,
      ]);
      return performance.now() - t0;
    };
    const child =
      (mode: string, extra: string[] = []) =>
      async (_u: string, dir: string): Promise<number> => {
        const { stdout } = await run$(
          process.execPath,
          [
            '-r',
            'ts-node/register/transpile-only',
            path.join(__dirname, '..', 'lib', 'download-child.ts'),
            mode,
            url,
            dir,
            ...extra,
          ],
          {
            cwd: PROJECT_ROOT,
            maxBuffer: 1024 * 1024,
          },
        );
        const out = JSON.parse(stdout.trim().split('\n').pop()!) as { bytes: number; ms: number };
        if (out.bytes !== size) throw new Error(`${mode} received ${out.bytes} of ${size} bytes`);
        return out.ms;
      };
    modes = [
      { key: 'curl-null', label: '`curl -o /dev/null`', kind: 'reference', measure: curlTo('/dev/null') },
      { key: 'cache', label: 'ApkCache.resolve (what resolveApk runs)', kind: 'subject', measure: child('cache') },
      {
        key: 'curl-file',
        label: '`curl -o <file>` (same disk as the cache)',
        kind: 'breakdown',
        measure: curlTo(path.join(workDir, 'curl.out')),
      },
      {
        key: 'curl-tee-sha',
        label: "`curl | tee <file> | sha256sum` (the cache's work, native)",
        kind: 'breakdown',
        measure: curlTeeSha,
      },
      { key: 'undici', label: 'undici request, body dropped', kind: 'breakdown', measure: child('undici') },
      { key: 'undici-hash', label: 'undici + sha256', kind: 'breakdown', measure: child('undici-hash') },
      { key: 'undici-disk', label: 'undici + write to file', kind: 'breakdown', measure: child('undici-disk') },
      {
        key: 'pipeline',
        label: 'cache pipeline replica (meter with sha256 → file), default highWaterMark',
        kind: 'breakdown',
        measure: child('pipeline'),
      },
      {
        key: 'coalesce',
        label: 'undici + sha256 + 1 MiB writev batches (one write in flight)',
        kind: 'breakdown',
        measure: child('coalesce'),
      },
      {
        key: 'pipeline-hwm',
        label: `cache pipeline (sha256 + file) with highWaterMark ${sizeLabel(hwm)}`,
        kind: 'breakdown',
        measure: child('pipeline', [String(hwm)]),
      },
    ];
    for (let r = 1; r <= repeats; r++) {
      for (const m of modes) {
        const dir = path.join(workDir, `${m.key}-${r}`);
        const ms = await m.measure(url, dir);
        rmSync(dir, { recursive: true, force: true });
        rmSync(path.join(workDir, 'curl.out'), { force: true });
        times.set(m.key, [...(times.get(m.key) ?? []), ms]);
        say(`download: run ${r}/${repeats} ${m.key}: ${round(size / MiB / (ms / 1000), 0)} MiB/s`);
      }
    }
  });
  const rate = (key: string) => size / MiB / (median(times.get(key)!) / 1000);
  const reference = rate('curl-null');
  const rows = modes.map((m) => [
    m.label,
    times
      .get(m.key)!
      .map((ms) => round(size / MiB / (ms / 1000), 0))
      .join(', '),
    round(rate(m.key), 0),
    round(rate(m.key) / reference, 2),
  ]);
  const ratio = rate('cache') / reference;
  const markdown = [
    `One ${sizeLabel(size)} file from the project's origin (a Node HTTP server in the benchmark process) over loopback; each client in`,
    `its own process; ${repeats} interleaved rounds; medians. Throughput in MiB/s of wall time from request to file complete.`,
    '',
    mdTable(['client', 'runs MiB/s', 'median MiB/s', 'ratio to curl → /dev/null'], rows),
    '',
    mdTable(
      ['target', 'measured', ''],
      [['ApkCache ≥ 0.8 × curl -o /dev/null', `${round(ratio, 2)} ×`, ratio >= 0.8 ? 'met' : 'NOT met']],
    ),
  ].join('\n');
  return {
    markdown,
    json: {
      sizeBytes: size,
      repeats,
      hwm,
      msByMode: Object.fromEntries(times),
      mibPerSec: Object.fromEntries(modes.map((m) => [m.key, round(rate(m.key), 1)])),
      ratio,
    },
  };
};

/** `curl` from PATH, installed from Debian's package when missing and allowed (root or sudo). */
function ensureCurl(): string {
  if (spawnSync('curl', ['--version']).status === 0) return 'curl';
  say('download: installing curl (apt-get)');
  const sudo = process.getuid?.() === 0 ? [] : ['sudo'];
  const r = spawnSync(
    sudo.length ? 'sudo' : 'apt-get',
    [...(sudo.length ? ['apt-get'] : []), 'install', '-y', '-qq', 'curl'],
    { stdio: 'inherit' },
  );
  if (r.status !== 0 || spawnSync('curl', ['--version']).status !== 0)
    throw new Error('curl is missing and could not be installed: apt-get install curl');
  return 'curl';
}
