/**
 * phones — memory of the adb device agent while it installs one APK on several phones at once, for
 * a small and a big APK side by side in one run. The agent runs as its own process (measured from
 * /proc/<pid>/status), the adb client and server are Debian's real ones, the origin is the project's.
 * The phones are fake phones (sim/fake-phone), a double of a real phone, the one part this machine
 * cannot have; they hash the streamed bytes and drop them.
 *
 * Options: --quick (64 and 256 MiB), --phones 5, --sizes-mib 64,1024.
 */
import path from 'node:path';
import { request } from 'undici';
import { startPhoneBench } from '../../dev/phones';
import { stopProcess } from '../../dev/process';
import { RssSampler } from '../../dev/rss';
import { startSourceProcess } from '../../dev/services';
import { serialToId } from '../../src/agent/phones';
import { freePort } from '../../src/net/ports';
import { mdTable, MiB, parseOptions, round, say, toMiB, type ScenarioRun } from '../lib/report';
import { inScenarioDir, startOrigin } from '../lib/stack';

/** One size: a fresh agent process installs one APK on every phone at once. */
interface Row {
  apkMiB: number;
  phones: number;
  installed: number;
  originGets: number;
  seconds: number;
  idleRssMiB: number;
  peakRssMiB: number;
  hwmMiB: number;
}

/** Runs the phones scenario. */
export const run: ScenarioRun = async ({ args }) => {
  const o = parseOptions(args);
  const quick = o.has('quick');
  const phones = o.num('phones', 5);
  const sizes = o.list('sizes-mib', quick ? [64, 256] : [64, 1024]);
  const rows: Row[] = [];
  await inScenarioDir('phones', async (scope, workDir) => {
    const origin = await startOrigin(scope);
    const bench = await startPhoneBench({
      phones,
      stateDir: path.join(workDir, 'phones'),
      phone: { freeBytes: 64 * 1024 * MiB },
    });
    scope.add('fake phones', () => bench.stop());
    for (const sizeMiB of sizes) {
      const name = `bench-phones-${sizeMiB}m.apk`;
      const apk = await origin.addApk(name, sizeMiB * MiB);
      const before = origin.stats(name).gets;
      // A fresh agent per size: its idle RSS is the baseline, its cache starts empty.
      const port = await freePort();
      const agent = await startSourceProcess(
        'agent',
        { DT_ADB: process.env.DT_ADB ?? 'adb', DT_DATA_DIR: path.join(workDir, `agent-${sizeMiB}`) },
        {
          logFile: path.join(workDir, `agent-${sizeMiB}.log`),
          args: ['--adb', '--port', String(port), '-P', String(bench.adbPort)],
        },
      );
      const sampler = new RssSampler(agent.pid, 50).start();
      const idle = sampler.sample() ?? 0;
      say(`phones: ${sizeMiB} MiB on ${phones} fake phones at once…`);
      const t0 = Date.now();
      const answers = await Promise.all(
        bench.phones.map(async (p) => {
          const res = await request(`http://127.0.0.1:${port}/mobile/${serialToId(p.address)}/installApp`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ url: origin.url(name), packageName: 'com.bench.phones', sha256: apk.sha256 }),
            headersTimeout: 0,
            bodyTimeout: 0,
          });
          return { status: res.statusCode, text: await res.body.text() };
        }),
      );
      const seconds = (Date.now() - t0) / 1000;
      sampler.sample();
      sampler.stop();
      await stopProcess(agent.child, 10_000);
      const failed = answers.filter((a) => a.status !== 200);
      if (failed.length) throw new Error(`phones: ${failed.length} install(s) failed: ${failed[0]!.text}`);
      rows.push({
        apkMiB: sizeMiB,
        phones,
        installed: bench.phones.filter((p) => p.state().packages.some((x) => x.sha256 === apk.sha256)).length,
        originGets: origin.stats(name).gets - before,
        seconds: round(seconds),
        idleRssMiB: round(toMiB(idle)),
        peakRssMiB: round(toMiB(sampler.peak)),
        hwmMiB: round(toMiB(sampler.hwm)),
      });
    }
  });
  const small = rows[0]!;
  const big = rows[rows.length - 1]!;
  const markdown = [
    `The adb agent installing one APK on ${phones} fake phones at once, through the real adb; a fresh agent process per size.`,
    '',
    mdTable(
      ['APK', 'phones', 'installed', 'origin GETs', 'seconds', 'agent idle RSS', 'agent peak RSS', 'VmHWM'],
      rows.map((r) => [
        `${r.apkMiB} MiB`,
        r.phones,
        r.installed,
        r.originGets,
        r.seconds,
        `${r.idleRssMiB} MiB`,
        `${r.peakRssMiB} MiB`,
        `${r.hwmMiB} MiB`,
      ]),
    ),
    '',
    `Peak over idle: ${round(small.peakRssMiB - small.idleRssMiB)} MiB at ${small.apkMiB} MiB, ` +
      `${round(big.peakRssMiB - big.idleRssMiB)} MiB at ${big.apkMiB} MiB ` +
      `(APK ${round(big.apkMiB / small.apkMiB)}× larger, peak ${round(big.peakRssMiB / small.peakRssMiB, 2)}×).`,
  ].join('\n');
  return { markdown, json: { phones, rows } };
};
