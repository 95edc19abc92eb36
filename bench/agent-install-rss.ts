/**
 * Peak memory of the adb agent while it installs one big APK on several phones at once:
 * `npx ts-node --transpile-only bench/agent-install-rss.ts [--mib 1024] [--phones 5]`.
 *
 * The fake phone (sim/fake-phone) is a double of a real phone, the one part this machine cannot
 * have; adb (client and a private server), the origin and the agent (a child process, measured from
 * /proc/<pid>/status) are real. Prints one JSON line with VmHWM and the peak sampled VmRSS.
 */
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { request } from 'undici';
import { mib, RssSampler } from '../dev/rss';
import { serialToId } from '../src/agent/phones';
import { PROJECT_ROOT } from '../src/config';
import { startFakePhones } from '../sim/fake-phone';
import { ApkOrigin } from '../sim/origin';
import { AdbServer } from '../test/support/adb-phones';

function flag(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

async function main(): Promise<void> {
  const sizeMiB = flag('--mib', 1024);
  const count = flag('--phones', 5);
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'dt-agent-rss-'));
  const server = await AdbServer.start();
  const phones = await startFakePhones(count, { stateDir: path.join(tmp, 'phones'), freeBytes: 16 * 1024 ** 3 });
  const origin = new ApkOrigin({ dir: path.join(tmp, 'apks') });
  const child = spawn(
    process.execPath,
    ['-r', 'ts-node/register/transpile-only', 'src/agent.ts', '--adb', '--port', '0', '-P', String(server.port)],
    { cwd: PROJECT_ROOT, stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, DT_DATA_DIR: tmp } },
  );
  try {
    for (const p of phones) await server.connect(p.address);
    const apk = await origin.addApk('huge.apk', sizeMiB * 1024 * 1024);
    await origin.start(0, '127.0.0.1');
    const base = await new Promise<string>((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`agent exited with ${code}`)));
      readline.createInterface({ input: child.stdout! }).on('line', (line) => {
        const entry = JSON.parse(line) as { msg: string; url?: string };
        if (entry.msg === 'adb agent listening') resolve(entry.url!);
      });
    });
    const sampler = new RssSampler(child.pid!, 50).start();
    const idle = sampler.sample();
    const t0 = Date.now();
    const answers = await Promise.all(
      phones.map(async (p) => {
        const res = await request(`${base}/mobile/${serialToId(p.address)}/installApp`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ url: origin.url('huge.apk'), packageName: 'com.huge.app', sha256: apk.sha256 }),
          headersTimeout: 0,
          bodyTimeout: 0,
        });
        return { status: res.statusCode, body: await res.body.json() };
      }),
    );
    sampler.sample();
    sampler.stop();
    const ok = answers.every((a) => a.status === 200);
    const installed = phones.filter((p) => p.state().packages.some((x) => x.sha256 === apk.sha256)).length;
    const result = {
      bench: 'agent-install-rss',
      apkMiB: sizeMiB,
      phones: count,
      ok,
      installedOn: installed,
      originGets: origin.stats('huge.apk').gets,
      seconds: (Date.now() - t0) / 1000,
      idleRss: mib(idle ?? 0),
      peakRss: mib(sampler.peak),
      vmHWM: mib(sampler.hwm),
    };
    process.stdout.write(`${JSON.stringify(result)}\n`);
    if (!ok) process.stdout.write(`${JSON.stringify(answers)}\n`);
  } finally {
    child.kill('SIGTERM');
    await Promise.all(phones.map((p) => p.close()));
    await server.stop();
    await origin.close();
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
