/**
 * The adb device agent (src/agent) against real adb and fake phones.
 *
 * The fake phone (sim/fake-phone) is a double of a real phone, the one part this machine cannot
 * have. Everything else is real: Debian's adb client and a private adb server per suite, the agent's
 * HTTP server, and an HTTP origin serving the APKs.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { request } from 'undici';
import { AdbAgent } from '../src/agent/http';
import { serialToId } from '../src/agent/phones';
import { PROJECT_ROOT } from '../src/config';
import type { FakePhone } from '../sim/fake-phone';
import { ApkOrigin } from '../sim/origin';
import { startPhoneBench, type PhoneBench } from '../dev/phones';
import { mib, RssSampler } from '../dev/rss';
import { waitFor } from '../dev/wait';

/** Polls `check` until it gives a value; fails naming `what` after `timeoutMs`. */
const until = <T>(what: string, check: () => Promise<T | undefined | false>, timeoutMs = 15_000): Promise<T> =>
  waitFor(check, timeoutMs, what) as Promise<T>;

type Json = Record<string, any>;

async function call(
  base: string,
  method: 'GET' | 'POST',
  p: string,
  body?: Json,
): Promise<{ status: number; body: Json }> {
  const res = await request(`${base}${p}`, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: res.statusCode, body: (await res.body.json()) as Json };
}

describe('adb agent: device ids', () => {
  it('maps a serial with other characters to a device id, and keeps a plain one', () => {
    assert.equal(serialToId('127.0.0.1:5601'), '127.0.0.1-5601');
    assert.equal(serialToId('R58M12ABCDE'), 'R58M12ABCDE');
    assert.equal(serialToId('emulator-5554'), 'emulator-5554');
    assert.match(serialToId('-odd serial'), /^_-odd-serial$/);
    const long = serialToId('x'.repeat(100));
    assert.ok(long.length <= 64);
    assert.match(long, /^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$/);
  });
});

describe('adb agent (real adb, fake phones)', function () {
  this.timeout(120_000);
  let tmp: string;
  let bench: PhoneBench;
  let origin: ApkOrigin;
  let agent: AdbAgent;
  let base: string;
  let pixel: FakePhone;
  let galaxy: FakePhone;
  let tiny: FakePhone;
  const extra: FakePhone[] = [];
  const logs: { msg: string; meta?: Json }[] = [];
  const id = (p: FakePhone) => serialToId(p.address);
  const post = (p: FakePhone, op: string, body: Json) => call(base, 'POST', `/mobile/${id(p)}/${op}`, body);
  const status = (p: FakePhone) => call(base, 'GET', `/mobile/${id(p)}`);
  const shell = (p: FakePhone, command: string) => bench.adb.shell(p.address, command, { timeoutMs: 15_000 });

  before(async () => {
    tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'dt-adb-agent-'));
    bench = await startPhoneBench({ phones: 0, stateDir: path.join(tmp, 'phones') });
    pixel = await bench.addPhone({ model: 'Pixel 8', sdk: 34 });
    galaxy = await bench.addPhone({ model: 'Galaxy S22', sdk: 33 });
    tiny = await bench.addPhone({ model: 'Tiny', sdk: 30, freeBytes: 1024 * 1024 });
    origin = new ApkOrigin({ dir: path.join(tmp, 'apks') });
    await origin.addApk('app.apk', 3 * 1024 * 1024 + 77);
    await origin.addApk('shared.apk', 8 * 1024 * 1024);
    await origin.addApk('big.apk', 64 * 1024 * 1024);
    await origin.addApk('big2.apk', 64 * 1024 * 1024);
    await origin.start(0, '127.0.0.1');
    agent = new AdbAgent({
      adb: bench.adb,
      dataDir: path.join(tmp, 'agent'),
      pollMs: 300,
      log: (msg, meta) => logs.push({ msg, meta }),
    });
    base = await agent.start(0);
  });

  after(async () => {
    await agent?.close();
    await Promise.all(extra.map((p) => p.close()));
    await bench?.stop();
    await origin?.close();
    if (tmp) await fsp.rm(tmp, { recursive: true, force: true });
  });

  it('reports each phone with its model, sdk and the serial adb knows it by', async () => {
    const s = await status(pixel);
    assert.equal(s.status, 200);
    assert.equal(s.body.online, true);
    assert.equal(s.body.model, 'Pixel 8');
    assert.equal(s.body.sdk, 34);
    assert.equal(s.body.serial, pixel.address);
    assert.equal(s.body.state, 'device');
    const list = await call(base, 'GET', '/mobile');
    const byId = new Map((list.body.mobiles as Json[]).map((m) => [m.id, m]));
    assert.equal(byId.get(id(galaxy))?.model, 'Galaxy S22');
    assert.equal(byId.get(id(galaxy))?.sdk, 33);
    assert.match(id(pixel), /^127\.0\.0\.1-\d+$/);
  });

  it('answers 404 for a phone it does not have', async () => {
    const s = await call(base, 'GET', '/mobile/no-such-phone');
    assert.equal(s.status, 404);
    assert.match(s.body.error, /not attached/);
    assert.equal((await call(base, 'POST', '/mobile/no-such-phone/reset', {})).status, 404);
  });

  it('installs from a URL: the phone records the APK with the right sha256', async () => {
    const url = origin.url('app.apk');
    const apk = origin.stats('app.apk');
    assert.equal(apk.gets, 0);
    const sha = createHash('sha256')
      .update(await fsp.readFile(path.join(tmp, 'apks', 'app.apk')))
      .digest('hex');
    const r = await post(pixel, 'installApp', { url, packageName: 'com.example.app', sha256: sha });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.installed, true);
    assert.equal(r.body.sha256, sha);
    assert.equal(r.body.bytes, 3 * 1024 * 1024 + 77);
    assert.equal(typeof r.body.ms, 'number');
    const rec = pixel.state().packages.find((p) => p.name === 'com.example.app');
    assert.equal(rec?.sha256, sha);
    assert.equal(rec?.size, 3 * 1024 * 1024 + 77);
  });

  it('refuses a wrong sha256 with 422 naming both hashes and installs nothing', async () => {
    const wrong = 'ab'.repeat(32);
    const r = await post(galaxy, 'installApp', {
      url: origin.url('app.apk'),
      packageName: 'com.wrong.app',
      sha256: wrong,
    });
    assert.equal(r.status, 422);
    assert.match(r.body.error, new RegExp(wrong));
    assert.match(r.body.error, /got [0-9a-f]{64}/);
    assert.equal(
      galaxy.state().packages.find((p) => p.name === 'com.wrong.app'),
      undefined,
    );
  });

  it("maps the phone's INSTALL_FAILED_INSUFFICIENT_STORAGE to 422 naming the code", async () => {
    const r = await post(tiny, 'installApp', { url: origin.url('app.apk'), packageName: 'com.example.app' });
    assert.equal(r.status, 422);
    assert.match(r.body.error, /install of com\.example\.app on .* refused: INSTALL_FAILED_INSUFFICIENT_STORAGE/);
    assert.equal(r.body.code, 'INSTALL_FAILED_INSUFFICIENT_STORAGE');
    assert.deepEqual(tiny.state().packages, []);
  });

  it('downloads a URL once when two phones install it at the same time', async () => {
    const url = origin.url('shared.apk');
    const [a, b] = await Promise.all([
      post(pixel, 'installApp', { url, packageName: 'com.shared.app' }),
      post(galaxy, 'installApp', { url, packageName: 'com.shared.app' }),
    ]);
    assert.equal(a.status, 200, JSON.stringify(a.body));
    assert.equal(b.status, 200, JSON.stringify(b.body));
    assert.equal(origin.stats('shared.apk').gets, 1);
    assert.equal(a.body.sha256, b.body.sha256);
    for (const p of [pixel, galaxy])
      assert.equal(p.state().packages.find((x) => x.name === 'com.shared.app')?.sha256, a.body.sha256);
  });

  it('answers 409 while another call runs on the phone', async () => {
    const slow = post(galaxy, 'installApp', { url: origin.url('big.apk'), packageName: 'com.big.app' });
    await until('the install to start', async () => agentBusy(galaxy));
    const busy = await post(galaxy, 'reset', {});
    assert.equal(busy.status, 409);
    assert.match(busy.body.error, /busy with install/);
    assert.equal((await slow).status, 200);
  });

  it('launches an app: resolves the launcher activity and returns TotalTime', async () => {
    const r = await post(pixel, 'launchApp', { packageName: 'com.example.app' });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(typeof r.body.coldStartMs, 'number');
    assert.ok(r.body.coldStartMs > 0);
    assert.equal(r.body.activity, 'com.example.app/.MainActivity');
    const given = await post(pixel, 'launchApp', { packageName: 'com.example.app', activity: '.MainActivity' });
    assert.equal(given.status, 200, JSON.stringify(given.body));
    const missing = await post(pixel, 'launchApp', { packageName: 'com.not.installed' });
    assert.equal(missing.status, 422);
    assert.match(missing.body.error, /not installed/);
  });

  it('uninstalls, and a second uninstall is a success too', async () => {
    const first = await post(pixel, 'uninstallApp', { packageName: 'com.shared.app' });
    assert.deepEqual([first.status, first.body.uninstalled], [200, true]);
    assert.equal(
      pixel.state().packages.find((x) => x.name === 'com.shared.app'),
      undefined,
    );
    const again = await post(pixel, 'uninstallApp', { packageName: 'com.shared.app' });
    assert.deepEqual([again.status, again.body.uninstalled], [200, false]);
  });

  it('reset restores the settings engines change and ends a monkey whose host adb was killed', async () => {
    const before = pixel.state().settings;
    await shell(pixel, 'ime set com.example.keyboard/.Ime');
    await shell(pixel, 'cmd connectivity airplane-mode enable');
    await shell(pixel, 'svc wifi disable');
    await shell(pixel, 'settings put global always_finish_activities 1');
    await shell(pixel, 'settings put system accelerometer_rotation 0');
    await shell(pixel, 'settings put system user_rotation 1');
    assert.notDeepEqual(pixel.state().settings, before);

    const [bin, ...args] = bench.adb.argv(pixel.address, 'shell', 'monkey', '-p', 'com.example.app', '1000000');
    const host = spawn(bin, args, { stdio: 'ignore' });
    const pid = await until('monkey to run on the phone', async () =>
      pixel.state().processes.find((p) => p.name === 'com.android.commands.monkey'),
    );
    host.kill('SIGKILL');
    await new Promise((r) => host.once('exit', r));
    await new Promise((r) => setTimeout(r, 500));
    assert.ok(
      pixel.state().processes.some((p) => p.pid === pid.pid),
      'monkey ignores the hang-up and keeps running',
    );

    const r = await post(pixel, 'reset', { packageName: 'com.example.app' });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual(r.body.ended, [pid.pid]);
    assert.ok(!pixel.state().processes.some((p) => p.name === 'com.android.commands.monkey'));
    assert.deepEqual(pixel.state().settings, before);
    const again = await post(pixel, 'reset', {});
    assert.deepEqual([again.status, again.body.ended, again.body.restored], [200, [], []]);
  });

  it('reports a phone that went offline, answers 503 to calls on it, and takes it back without a restart', async () => {
    galaxy.goOffline();
    const off = await until('galaxy to be reported offline', async () => {
      const s = await status(galaxy);
      return s.body.online === false && s;
    });
    assert.equal(off.status, 200);
    assert.match(off.body.state, /offline|disconnected/);
    assert.match(off.body.error, /adb/);
    const refused = await post(galaxy, 'reset', {});
    assert.equal(refused.status, 503);
    galaxy.comeBack();
    await bench.reconnect(galaxy);
    const on = await until('galaxy to be back', async () => {
      const s = await status(galaxy);
      return s.body.online === true && s;
    });
    assert.equal(on.body.model, 'Galaxy S22');
    assert.equal((await post(galaxy, 'reset', {})).status, 200);
  });

  it('serves a newly connected phone without a restart', async () => {
    const fresh = await bench.addPhone({ model: 'Moto G', sdk: 31 });
    extra.push(fresh);
    const s = await until('the new phone to be listed', async () => {
      const r = await status(fresh);
      return r.status === 200 && r.body.online === true && r;
    });
    assert.equal(s.body.model, 'Moto G');
    assert.equal(s.body.sdk, 31);
    assert.ok(logs.some((l) => l.msg === 'phone appeared' && l.meta?.serial === fresh.address));
  });

  it('keeps its memory flat while it installs a 64 MiB APK', async () => {
    global.gc?.();
    const sampler = new RssSampler(process.pid, 20).start();
    const start = sampler.sample() ?? 0;
    try {
      const r = await post(pixel, 'installApp', { url: origin.url('big2.apk'), packageName: 'com.big.app' });
      assert.equal(r.status, 200, JSON.stringify(r.body));
    } finally {
      sampler.stop();
    }
    assert.ok(sampler.peak - start < 40 * 1024 * 1024, `RSS grew by ${mib(sampler.peak - start)}`);
  });

  it('logs one line per call with phone, op, ms and outcome', () => {
    const calls = logs.filter((l) => l.msg === 'agent call');
    assert.ok(calls.length > 10);
    for (const c of calls) for (const k of ['phone', 'op', 'ms', 'status', 'outcome']) assert.ok(k in (c.meta ?? {}));
  });

  it('refuses to start without --adb and points at the simulator', async () => {
    const child = spawn(process.execPath, ['-r', 'ts-node/register/transpile-only', 'src/agent.ts'], {
      cwd: PROJECT_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const code = await new Promise((r) => child.once('exit', r));
    assert.equal(code, 1);
    assert.match(err, /--adb/);
    assert.match(err, /npm run agent-sim/);
  });

  async function agentBusy(p: FakePhone): Promise<boolean> {
    return (await status(p)).body.busy === true;
  }
});
