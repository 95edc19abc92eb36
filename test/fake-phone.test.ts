/**
 * The fake phone (sim/fake-phone), a test double of a real Android phone, driven by the REAL adb: Debian's
 * adb client and a private adb server per suite (`adb -P <port>`), so every byte crosses the same protocol
 * a farm uses with real phones. Needs /usr/bin/adb (or DT_ADB).
 *
 * Observed with adb 29.0.6: a dropped phone shows as `offline` and the server reconnects by itself within
 * about 10 s once the phone accepts again; the test runs `adb connect` so it need not wait for that.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FakePhone, startFakePhones } from '../sim/fake-phone';
import { freePort } from '../src/net/ports';

const ADB = process.env.DT_ADB || 'adb';
const CLASSPATH = 'CLASSPATH=/sdcard/monkeyq.jar:/sdcard/framework.jar:/sdcard/fastbot-thirdpart.jar';
const FASTBOT = (minutes: number): string =>
  `${CLASSPATH} exec app_process /system/bin com.android.commands.monkey.Monkey -p com.example.app --agent reuseq --running-minutes ${minutes} --throttle 10 -v -v`;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

describe('fake phone driven by the real adb', function () {
  this.timeout(60_000);
  let dir: string;
  let serverPort: number;
  let phones: FakePhone[];
  let small: FakePhone;
  let phone: FakePhone;

  /** Runs adb against the private server; never rejects, the exit status is in the result. */
  const adb = (args: string[], stdinFile?: string): Promise<Run> =>
    new Promise((resolve) => {
      const child = execFile(
        ADB,
        ['-P', String(serverPort), ...args],
        { maxBuffer: 64 * 1024 * 1024 },
        (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr }),
      );
      if (stdinFile) fs.createReadStream(stdinFile).pipe(child.stdin!);
      else child.stdin?.end();
    });
  const sh = (p: FakePhone, cmd: string): Promise<Run> => adb(['-s', p.address, 'shell', cmd]);
  const spawnShell = (p: FakePhone, cmd: string): ChildProcess =>
    spawn(ADB, ['-P', String(serverPort), '-s', p.address, 'shell', cmd], { stdio: 'ignore' });

  async function until<T>(what: string, probe: () => Promise<T | undefined>, ms = 15_000): Promise<T> {
    const end = Date.now() + ms;
    for (;;) {
      const v = await probe();
      if (v !== undefined) return v;
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const deviceState = async (p: FakePhone): Promise<string> => {
    const line = (await adb(['devices'])).stdout.split('\n').find((l) => l.startsWith(`${p.address}\t`));
    return line?.split('\t')[1]?.trim() ?? 'absent';
  };
  const monkeyPid = async (p: FakePhone): Promise<string | undefined> => {
    const r = await sh(p, 'pidof com.android.commands.monkey');
    return r.code === 0 ? r.stdout.trim() : undefined;
  };

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fake-phone-'));
    serverPort = await freePort();
    phones = await startFakePhones(2, { stateDir: dir, timeScale: 0.02 });
    small = await FakePhone.start({
      stateDir: dir,
      serial: 'small',
      freeBytes: 1024 * 1024,
      model: 'Pixel 4a',
      sdk: 30,
    });
    phone = phones[0] as FakePhone;
    assert.equal((await adb(['start-server'])).code, 0);
    for (const p of [...phones, small]) assert.match((await adb(['connect', p.address])).stdout, /connected to/);
    for (const p of [...phones, small])
      await until(`${p.address} online`, async () => ((await deviceState(p)) === 'device' ? true : undefined));
  });

  after(async () => {
    await adb(['kill-server']);
    await Promise.all([...(phones ?? []), small].map((p) => p?.close()));
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('two phones in one process are listed as devices with their model', async () => {
    const { stdout } = await adb(['devices', '-l']);
    for (const p of phones)
      assert.match(stdout, new RegExp(`${p.address.replace(/\./g, '\\.')}\\s+device .*model:Pixel_7`));
    assert.match(stdout, /model:Pixel_4a/);
    assert.notEqual(phones[0]?.port, phones[1]?.port);
  });

  it('shell commands carry stdout and exit codes over shell v2', async () => {
    assert.deepEqual(await sh(phone, 'getprop ro.build.version.sdk'), { code: 0, stdout: '34\n', stderr: '' });
    assert.equal((await sh(small, 'getprop ro.build.version.release')).stdout, '11\n');
    assert.equal((await sh(phone, 'false')).code, 1);
    assert.equal((await sh(phone, 'exit 3')).code, 3);
    const missing = await sh(phone, 'echo a && nosuchcmd; echo "b c" > /sdcard/t.txt 2>/dev/null; cat /sdcard/t.txt');
    assert.equal(missing.stdout, 'a\nb c\n');
    assert.match(missing.stderr, /nosuchcmd: inaccessible or not found/);
    assert.equal((await sh(phone, 'nosuchcmd')).code, 127);
    assert.equal(
      (await sh(phone, 'settings get secure default_input_method')).stdout,
      'com.android.inputmethod.latin/.LatinIME\n',
    );
  });

  it('adb push and adb pull round-trip a 20 MiB file', async () => {
    const local = path.join(dir, 'big.bin');
    fs.writeFileSync(local, randomBytes(20 * 1024 * 1024));
    const sha = createHash('sha256').update(fs.readFileSync(local)).digest('hex');
    assert.equal((await adb(['-s', phone.address, 'push', local, '/sdcard/data/big.bin'])).code, 0);
    assert.equal((await sh(phone, 'sha256sum /sdcard/data/big.bin')).stdout, `${sha}  /sdcard/data/big.bin\n`);
    const back = path.join(dir, 'back.bin');
    assert.equal((await adb(['-s', phone.address, 'pull', '/sdcard/data/big.bin', back])).code, 0);
    assert.equal(createHash('sha256').update(fs.readFileSync(back)).digest('hex'), sha);
    assert.notEqual((await adb(['-s', phone.address, 'pull', '/sdcard/nope', back])).code, 0);
  });

  it('streamed installs record the sha256 and fail on a wrong size or too little storage', async () => {
    const apk = path.join(dir, 'app.apk');
    fs.writeFileSync(apk, Buffer.concat([Buffer.from('package="com.example.app"'), randomBytes(300_000)]));
    const size = fs.statSync(apk).size;
    const sha = createHash('sha256').update(fs.readFileSync(apk)).digest('hex');
    // exec-in only feeds stdin (adb 29 prints nothing back), so the phone's state tells the outcome.
    await adb(['-s', phone.address, 'exec-in', 'cmd', 'package', 'install', '-S', String(size + 10)], apk);
    assert.equal(phone.state().packages.length, 0);
    await adb(['-s', phone.address, 'exec-in', 'cmd', 'package', 'install', '-S', String(size)], apk);
    assert.deepEqual(phone.state().packages, [{ name: 'com.example.app', sha256: sha, size, versionCode: 1 }]);
    const tooSmall = await adb(['-s', phone.address, 'shell', `cmd package install -S ${size - 10}`], apk);
    assert.match(tooSmall.stdout, /^Failure \[INSTALL_FAILED_INVALID_APK: /);
    const full = await adb(['-s', small.address, 'shell', `cmd package install -S ${size * 4}`], apk);
    assert.match(full.stdout, /Failure \[INSTALL_FAILED_(INSUFFICIENT_STORAGE|INVALID_APK)/);
    const big = path.join(dir, 'big.apk');
    fs.writeFileSync(big, randomBytes(2 * 1024 * 1024));
    const noRoom = await adb(['-s', small.address, 'install', big]);
    assert.match(noRoom.stdout + noRoom.stderr, /INSTALL_FAILED_INSUFFICIENT_STORAGE/);
    const viaInstall = await adb(['-s', phones[1]!.address, 'install', apk]);
    assert.match(viaInstall.stdout, /Success/);
    assert.match((await sh(phones[1]!, 'pm list packages example')).stdout, /^package:com\.example\.app$/m);
  });

  it('am start -W starts the app process and reports TotalTime', async () => {
    const r = await sh(
      phone,
      'am start -W -a android.intent.action.MAIN -c android.intent.category.LAUNCHER -n com.example.app/.MainActivity',
    );
    assert.equal(r.code, 0);
    assert.match(
      r.stdout,
      /^Starting: Intent \{ act=android.intent.action.MAIN cat=\[android.intent.category.LAUNCHER\] cmp=com.example.app\/.MainActivity \}\nStatus: ok\nLaunchState: COLD\n/,
    );
    assert.match(r.stdout, /TotalTime: \d+\nWaitTime: \d+\nComplete\n$/);
    assert.match((await sh(phone, 'pidof com.example.app')).stdout, /^\d+\n$/);
    const unknown = await sh(phone, 'am start -W -n com.nope/.Main');
    assert.notEqual(unknown.code, 0);
    assert.match(unknown.stderr, /Error: Activity class \{com.nope\/com.nope.Main\} does not exist./);
    assert.equal((await sh(phone, 'am force-stop com.example.app; pidof com.example.app')).code, 1);
  });

  it('monkey with ignored faults prints the crash and ANR blocks and finishes', async () => {
    phone.setScenario('com.example.app', {
      events: [
        {
          atEvent: 120,
          kind: 'crash',
          exception: 'java.lang.IllegalStateException',
          message: 'boom',
          frames: ['at com.example.app.Foo.bar(Foo.java:42)'],
        },
        { atEvent: 250, kind: 'anr' },
        { atEvent: 400, kind: 'crash' },
      ],
    });
    const r = await sh(phone, 'monkey -p com.example.app --ignore-crashes --ignore-timeouts -v -v --throttle 1 500');
    assert.equal(r.code, 0);
    assert.equal(r.stderr.match(/^\/\/ CRASH: com\.example\.app \(pid \d+\)$/gm)?.length, 2);
    assert.match(
      r.stderr,
      /\/\/ Long Msg: java.lang.IllegalStateException: boom\n[^]*\/\/ \tat com.example.app.Foo.bar\(Foo.java:42\)\n/,
    );
    assert.match(r.stderr, /^\/\/ NOT RESPONDING: com\.example\.app \(pid \d+\)\nANR in com\.example\.app/m);
    assert.match(r.stdout, /^ {4}\/\/ Sending event #500$/m);
    assert.match(r.stdout, /Events injected: 500\n[^]*\/\/ Monkey finished\n$/);
    const aborted = await sh(phone, 'monkey -p com.example.app -s 7 -v 500');
    assert.equal(aborted.code, 120);
    assert.match(aborted.stdout, /\*\* Monkey aborted due to error\.\nEvents injected: 120\n/);
    assert.match(aborted.stderr, /\*\* System appears to have crashed at event 120 of 500 using seed 7/);
  });

  it('monkey ignores the hang-up when the adb client is killed, until adb shell kill', async () => {
    phone.setScenario('com.example.app', {});
    const client = spawnShell(phone, 'monkey -p com.example.app --throttle 20 100000');
    const pid = await until('monkey on the phone', () => monkeyPid(phone));
    client.kill('SIGKILL');
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(await monkeyPid(phone), pid);
    assert.match(
      (await sh(phone, 'ps -A -o PID,NAME,ARGS')).stdout,
      new RegExp(`^\\s*${pid} com\\.android\\.commands\\.monkey`, 'm'),
    );
    assert.equal((await sh(phone, `kill ${pid}`)).code, 0);
    assert.equal(await monkeyPid(phone), undefined);
    const again = await sh(phone, `kill ${pid}`);
    assert.deepEqual([again.code, again.stderr], [1, `kill: pid ${pid}: No such process\n`]);
  });

  it('Fastbot fails without its jars, runs with them, and dies with the adb session', async () => {
    const missing = await sh(phone, FASTBOT(1));
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /Could not find or load main class com.android.commands.monkey.Monkey/);
    for (const jar of ['monkeyq.jar', 'framework.jar', 'fastbot-thirdpart.jar']) {
      fs.writeFileSync(path.join(dir, jar), 'jar');
      assert.equal((await adb(['-s', phone.address, 'push', path.join(dir, jar), '/sdcard/'])).code, 0);
    }
    phone.setScenario('com.example.app', {
      events: [
        { atEvent: 20, kind: 'crash' },
        { atEvent: 40, kind: 'anr' },
      ],
    });
    const run = await sh(phone, FASTBOT(1));
    assert.ok(
      run.stdout
        .split('\n')
        .filter(Boolean)
        .every((l) => /^\[Fastbot\]\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] /.test(l)),
    );
    assert.match(run.stdout, /\/\/ App appears 1 crash, 1 anr, monkey using seed: \d+\n.*\/\/ Monkey finished\n$/);
    assert.match(
      run.stderr,
      /\[Fastbot\]\*\*\* ERROR \*\*\* \/\/ CRASH: com\.example\.app \(pid \d+\) \(elapsed nanos: \d+\)/,
    );
    assert.match(
      (await sh(phone, 'cat /sdcard/crash-dump.log')).stdout,
      /^\d{14}\ncrash:\n\/\/ CRASH: [^]*crash end\n\d{14}\nanr:\n/,
    );
    assert.equal(
      (await sh(phone, 'settings get secure default_input_method')).stdout,
      'com.android.adbkeyboard/.AdbIME\n',
    );
    const client = spawnShell(phone, FASTBOT(30));
    await until('fastbot on the phone', () => monkeyPid(phone));
    client.kill('SIGKILL');
    await until('fastbot to die', async () => ((await monkeyPid(phone)) === undefined ? true : undefined), 5000);
  });

  it('goOffline makes the adb server lose the phone; comeBack and adb connect restore it', async () => {
    const other = phones[1] as FakePhone;
    other.goOffline();
    await until('phone offline', async () => ((await deviceState(other)) !== 'device' ? true : undefined));
    assert.notEqual((await sh(other, 'true')).code, 0);
    other.comeBack();
    await adb(['disconnect', other.address]);
    assert.match((await adb(['connect', other.address])).stdout, /connected to/);
    await until('phone back', async () => ((await deviceState(other)) === 'device' ? true : undefined));
    assert.equal((await sh(other, 'getprop ro.product.model')).stdout, 'Pixel 7\n');
  });
});
