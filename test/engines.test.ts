/**
 * The monkey and fastbot engines end to end: the runTraversal activity (driven by Temporal's
 * MockActivityEnvironment, as in test/traversal-runner.test.ts, since these cases are about what
 * happens on the phone) runs the REAL adb client against a private adb server (`adb -P <port>`),
 * which drives fake phones over TCP.
 *
 * The fake phone (sim/fake-phone) is a test double of a real phone, the one part this machine cannot
 * have: it speaks adb's protocol, runs Monkey and Fastbot in their output formats, meets the crashes
 * and ANRs of a scenario, and, like the real thing, keeps Monkey running when the host adb goes away.
 * Needs /usr/bin/adb (or DT_ADB).
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { DefaultLogger, type LogEntry } from '@temporalio/worker';
import { MockActivityEnvironment } from '@temporalio/testing';
import { startPhoneBench, type PhoneBench } from '../dev/phones';
import type { FakePhone } from '../sim/fake-phone';
import { Adb } from '../src/adb';
import { pidsOf, readEngineRecord } from '../src/adb/device';
import { engineFor, type Engine } from '../src/activities/traversal/engines';
import {
  createTraversalRunnerActivities,
  type RunTraversalResult,
  type TraversalCheckpoint,
  type TraversalRunnerDeps,
} from '../src/activities/traversal/runner';
import { runDir } from '../src/activities/traversal/run';
import { localFindingsFile } from '../src/activities/report-parts';
import type { Finding } from '../src/contract/messages';

const ADB = process.env.DT_ADB || 'adb';
const PKG = 'com.example.app';
const MONKEY = 'com.android.commands.monkey';
const THROTTLE_MS = 10;

describe('the monkey and fastbot engines on fake phones through the real adb', function () {
  this.timeout(120_000);
  let tmp: string;
  let serverPort: number;
  let adb: Adb;
  let phones: FakePhone[];
  let bench: PhoneBench;

  const adbRun = (args: string[]): Promise<{ code: number; stdout: string; stderr: string }> =>
    new Promise((resolve) =>
      execFile(ADB, ['-P', String(serverPort), ...args], (err, stdout, stderr) =>
        resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      ),
    );
  const engineOn = (phone: FakePhone, kind: 'monkey' | 'fastbot', fastbotDir = ''): Engine =>
    engineFor({ engine: kind, fastbotDir, engineThrottleMs: THROTTLE_MS }, adb, {
      // The production path asks the device's agent for the serial; here the test knows it.
      serialOf: async () => phone.address,
      jar: { command: [], resumeArgs: [], jar: '', progressPattern: /^$/ },
    });
  const deps = (engine: Engine): TraversalRunnerDeps => ({
    runsDir: path.join(tmp, 'runs'),
    pidsDir: path.join(tmp, 'pids'),
    command: [],
    resumeArgs: [],
    jar: '',
    progressPattern: /^$/,
    killGraceMs: 500,
    controlPollMs: 200,
    engine,
  });
  const input = (taskId: string, durationSec: number) => ({
    taskId,
    deviceId: 'phone-1',
    agentUrl: 'http://127.0.0.1:9',
    packageName: PKG,
    durationSec,
  });
  const logs: LogEntry[] = [];
  const env = (info: ConstructorParameters<typeof MockActivityEnvironment>[0] = undefined) =>
    new MockActivityEnvironment(info, { logger: new DefaultLogger('INFO', (e) => logs.push(e)) });
  const findingsOf = (taskId: string, attempt = 1): Finding[] => {
    const file = localFindingsFile(runDir(path.join(tmp, 'runs'), taskId, 'phone-1'), attempt);
    if (!existsSync(file)) return [];
    return readFileSync(file, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Finding);
  };
  const monkeysOn = (phone: FakePhone) => pidsOf(adb, phone.address, MONKEY);

  before(async function () {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'dt-engines-'));
    bench = await startPhoneBench({ phones: 3, stateDir: path.join(tmp, 'phones'), adbBin: ADB });
    ({ adb, adbPort: serverPort, phones } = bench);
    const apk = path.join(tmp, 'app.apk');
    writeFileSync(apk, Buffer.concat([Buffer.from(`package="${PKG}"`), Buffer.alloc(50_000, 7)]));
    for (const p of phones) assert.match((await adbRun(['-s', p.address, 'install', apk])).stdout, /Success/);
  });

  after(async () => {
    await bench?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('a Monkey run with two crashes and an ANR yields three findings with signatures, and ends at its budget with Monkey gone', async function () {
    const phone = phones[0]!;
    phone.setScenario(PKG, {
      events: [
        { atEvent: 40, kind: 'crash', exception: 'java.lang.IllegalStateException', message: 'bad state' },
        {
          atEvent: 90,
          kind: 'anr',
          message: 'waited 5s',
          frames: [`at ${PKG}.Slow.onClick(Slow.java:7)`],
        },
        {
          atEvent: 150,
          kind: 'crash',
          exception: 'java.lang.NullPointerException',
          frames: [`at ${PKG}.Detail.render(Detail.java:12)`, `at ${PKG}.Detail.onCreate(Detail.java:5)`],
        },
      ],
    });
    const budgetSec = 4;
    const t0 = Date.now();
    const result = (await env().run(
      createTraversalRunnerActivities(deps(engineOn(phone, 'monkey'))).runTraversal,
      input('monkey-findings', budgetSec),
    )) as RunTraversalResult;
    const ms = Date.now() - t0;
    console.log(`      a ${budgetSec} s budget ended the run after ${ms} ms`);
    assert.equal(result.status, 'completed');
    assert.equal(result.crashes, 2);
    assert.equal(result.anrs, 1);
    const found = findingsOf('monkey-findings');
    assert.deepEqual(
      found.map((f) => [f.kind, f.exception]),
      [
        ['crash', 'java.lang.IllegalStateException'],
        ['anr', 'ANR'],
        ['crash', 'java.lang.NullPointerException'],
      ],
    );
    for (const f of found) assert.match(f.signature, /^[0-9a-f]{12}$/);
    assert.equal(new Set(found.map((f) => f.signature)).size, 3);
    assert.deepEqual(found[1]!.frames, [`at ${PKG}.Slow.onClick(Slow.java:7)`]);
    assert.ok(ms >= budgetSec * 1000 && ms < budgetSec * 1000 + 5000, `ended after ${ms} ms`);
    assert.deepEqual(await monkeysOn(phone), [], 'no Monkey left on the phone');
    assert.equal(await readEngineRecord(adb, phone.address), undefined, 'the engine record is cleared');
  });

  it('cancel kills Monkey on the phone by its recorded pid and leaves none behind', async function () {
    const phone = phones[0]!;
    phone.setScenario(PKG, { events: [] });
    const e = env();
    let enginePid: number | undefined;
    e.on('heartbeat', (d: TraversalCheckpoint | undefined) => (enginePid ??= d?.enginePid));
    const running = e.run(
      createTraversalRunnerActivities(deps(engineOn(phone, 'monkey'))).runTraversal,
      input('monkey-cancel', 60),
    );
    running.catch(() => undefined);
    for (let i = 0; !enginePid; i++) {
      if (i > 200) throw new Error('no engine pid in the heartbeat');
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal((await readEngineRecord(adb, phone.address))?.pid, enginePid, 'the pid is recorded on the phone');
    const t0 = Date.now();
    e.cancel();
    for (;;) {
      if (!(await monkeysOn(phone)).length) break;
      if (Date.now() - t0 > 20_000) throw new Error('Monkey still on the phone 20 s after cancel');
    }
    const goneMs = Date.now() - t0;
    console.log(`      Monkey was gone from the phone ${goneMs} ms after the cancel`);
    await assert.rejects(running);
    assert.deepEqual(await monkeysOn(phone), []);
    assert.equal(await readEngineRecord(adb, phone.address), undefined);
  });

  it('a killed worker leaves Monkey on the phone; the next attempt sweeps it and runs only the rest of the budget', async function () {
    const phone = phones[1]!;
    phone.setScenario(PKG, { events: [] });
    const budgetSec = 10;
    // The first attempt runs in its own process, so that it can be killed like a worker.
    const script = path.join(tmp, 'attempt-1.js');
    writeFileSync(
      script,
      `
const { MockActivityEnvironment } = require(${JSON.stringify(require.resolve('@temporalio/testing'))});
const { DefaultLogger } = require(${JSON.stringify(require.resolve('@temporalio/worker'))});
const { Adb } = require(${JSON.stringify(path.resolve('src/adb'))});
const { engineFor } = require(${JSON.stringify(path.resolve('src/activities/traversal/engines'))});
const { createTraversalRunnerActivities } = require(${JSON.stringify(path.resolve('src/activities/traversal/runner'))});
const o = JSON.parse(process.argv[2]);
const adb = new Adb({ bin: o.adb, serverPort: o.serverPort });
const engine = engineFor({ engine: 'monkey', fastbotDir: '', engineThrottleMs: o.throttle }, adb, {
  serialOf: async () => o.serial,
  jar: { command: [], resumeArgs: [], jar: '', progressPattern: /^$/ },
});
const env = new MockActivityEnvironment(undefined, { logger: new DefaultLogger('ERROR') });
env.on('heartbeat', (d) => console.log('HB ' + JSON.stringify(d)));
const acts = createTraversalRunnerActivities({ ...o.deps, progressPattern: /^$/, engine });
env.run(acts.runTraversal, o.input).then(() => console.log('DONE'), (e) => console.log('FAILED ' + e.message));
`,
    );
    const { engine: _e, progressPattern: _p, ...plainDeps } = deps(engineOn(phone, 'monkey'));
    void _e;
    void _p;
    const child = spawn(
      process.execPath,
      [
        '-r',
        'ts-node/register/transpile-only',
        script,
        JSON.stringify({
          adb: ADB,
          serverPort,
          serial: phone.address,
          throttle: THROTTLE_MS,
          deps: plainDeps,
          input: input('monkey-killed', budgetSec),
        }),
      ],
      { cwd: path.resolve('.'), stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let last: TraversalCheckpoint | undefined;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('attempt 1 never used 3 s of its budget')), 60_000);
      readline.createInterface({ input: child.stdout! }).on('line', (line) => {
        if (!line.startsWith('HB ')) return;
        last = JSON.parse(line.slice(3)) as TraversalCheckpoint;
        if (last.enginePid && Number(last.checkpoint) >= 3) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    // Kill the "worker" and its host-side adb, as a lost host would.
    child.kill('SIGKILL');
    process.kill(-last!.pid!, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 500));
    const leftover = last!.enginePid!;
    assert.deepEqual(await monkeysOn(phone), [leftover], 'Monkey ignores the hang-up and keeps running');
    assert.equal((await readEngineRecord(adb, phone.address))?.pid, leftover, 'its record stays on the phone');

    const usedSec = Number(last!.checkpoint);
    const t0 = Date.now();
    const result = (await env({ attempt: 2, heartbeatDetails: last } as never).run(
      createTraversalRunnerActivities(deps(engineOn(phone, 'monkey'))).runTraversal,
      input('monkey-killed', budgetSec),
    )) as RunTraversalResult;
    const ms = Date.now() - t0;
    console.log(`      attempt 2 resumed at ${usedSec} s of ${budgetSec} s and ran ${ms} ms`);
    assert.equal(result.status, 'completed');
    assert.equal(result.attempt, 2);
    const swept = logs.find((l) => l.message === 'ended engine processes left on the phone by an earlier run');
    assert.deepEqual(swept?.meta?.pids, [leftover], 'the leftover Monkey was swept');
    const restMs = (budgetSec - usedSec) * 1000;
    assert.ok(ms >= restMs - 1000 && ms < restMs + 5000, `ran ${ms} ms for the remaining ${restMs} ms`);
    assert.deepEqual(await monkeysOn(phone), []);
  });

  it('Fastbot without DT_FASTBOT_DIR fails with the non-retryable setup error, at worker start and in the activity', async function () {
    const engine = engineOn(phones[2]!, 'fastbot', '');
    await assert.rejects(engine.checkSetup(), { code: 'EngineSetup', nonRetryable: true });
    const missing = engineOn(phones[2]!, 'fastbot', path.join(tmp, 'no-such-folder'));
    await assert.rejects(
      env().run(createTraversalRunnerActivities(deps(missing)).runTraversal, input('fastbot-missing', 3)),
      (err: Error & { code?: string; nonRetryable?: boolean }) => {
        assert.equal(err.code, 'EngineSetup');
        assert.equal(err.nonRetryable, true);
        assert.match(err.message, /lacks monkeyq\.jar, framework\.jar, fastbot-thirdpart\.jar/);
        return true;
      },
    );
  });

  it('Fastbot pushes its files once (the second run pushes nothing) and finds its crashes', async function () {
    const phone = phones[2]!;
    const dir = path.join(tmp, 'fastbot');
    mkdirSync(path.join(dir, 'libs', 'x86_64'), { recursive: true });
    for (const jar of ['monkeyq.jar', 'framework.jar', 'fastbot-thirdpart.jar'])
      writeFileSync(path.join(dir, jar), `dummy ${jar}\n`);
    writeFileSync(path.join(dir, 'libs', 'x86_64', 'libfastbot_native.so'), 'dummy lib\n');
    phone.setScenario(PKG, {
      events: [
        { atEvent: 30, kind: 'crash', exception: 'java.lang.ArithmeticException', message: 'divide by zero' },
        { atEvent: 80, kind: 'crash', exception: 'java.lang.IndexOutOfBoundsException', message: 'index 3' },
      ],
    });
    const pushes: unknown[] = [];
    for (const taskId of ['fastbot-1', 'fastbot-2']) {
      logs.length = 0;
      const result = (await env().run(
        createTraversalRunnerActivities(deps(engineOn(phone, 'fastbot', dir))).runTraversal,
        input(taskId, 3),
      )) as RunTraversalResult;
      assert.equal(result.status, 'completed');
      pushes.push(logs.find((l) => /Fastbot files/.test(l.message))?.meta?.pushed);
      assert.deepEqual(
        findingsOf(taskId).map((f) => f.exception),
        ['java.lang.ArithmeticException', 'java.lang.IndexOutOfBoundsException'],
      );
      const dump = path.join(result.reportDir, 'fastbot', 'crash-dump.log');
      assert.match(readFileSync(dump, 'utf8'), /ArithmeticException/, 'the crash dump is in the report');
      assert.deepEqual(await monkeysOn(phone), []);
    }
    assert.deepEqual(pushes, [
      [
        '/sdcard/monkeyq.jar',
        '/sdcard/framework.jar',
        '/sdcard/fastbot-thirdpart.jar',
        '/data/local/tmp/x86_64/libfastbot_native.so',
      ],
      [],
    ]);
  });
});
