/**
 * Real phones end to end, through a real Temporal dev server and real Redis: tasks pushed into Redis,
 * the starter, the worker running DT_ENGINE=monkey (and fastbot), the adb device agent, Debian's real
 * adb client and a private adb server per suite.
 *
 * The phones are fake phones (sim/fake-phone): a double of a real phone, the one part this machine
 * cannot have. They speak adb's wire protocol, run Monkey and Fastbot in their real output formats,
 * meet the crashes and ANRs of a scenario, and keep Monkey running when the host adb goes away, as
 * real phones do. Everything the agent and the engines do goes through the real adb.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startPhoneBench, type PhoneBench } from '../dev/phones';
import { RssSampler, mib } from '../dev/rss';
import { startSourceProcess } from '../dev/services';
import { waitFor, waitForResult } from '../dev/wait';
import { startStack, type Stack } from '../dev/stack';
import { stopProcess } from '../dev/process';
import type { FakePhone } from '../sim/fake-phone';
import { pidsOf } from '../src/adb/device';
import { AdbAgent } from '../src/agent/http';
import { serialToId } from '../src/agent/phones';
import {
  budgetSignal,
  pauseSignal,
  resumeSignal,
  traversalWorkflowId,
  type TraversalResult,
} from '../src/contract/messages';
import { freePort } from '../src/net/ports';
import { activityStarts } from './support/history';
import { spawnStarter, spawnWorker, type Proc } from './support/procs';

const PKG = 'com.example.shop';
const MONKEY = 'com.android.commands.monkey';
const MiB = 1024 * 1024;
/** Two crashes and an ANR of the app, early enough for a short run at a 20 ms throttle. */
const SCENARIO = {
  events: [
    {
      atEvent: 20,
      kind: 'crash' as const,
      exception: 'java.lang.IllegalStateException',
      message: 'basket is empty',
      frames: [
        'at com.example.shop.Basket.checkout(Basket.kt:12)',
        'at com.example.shop.BasketView.onPay(BasketView.kt:30)',
      ],
    },
    {
      atEvent: 60,
      kind: 'crash' as const,
      exception: 'java.lang.NullPointerException',
      message: 'no price',
      frames: ['at com.example.shop.Price.format(Price.java:7)', 'at com.example.shop.ItemRow.bind(ItemRow.java:21)'],
    },
    { atEvent: 100, kind: 'anr' as const, message: 'Input dispatching timed out' },
  ],
};

/** Polls `check` until it gives a value; fails naming `what` after `timeoutMs`. */
const until = <T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> =>
  waitFor(check, timeoutMs, what);

/** Pids of Monkey on a phone. */
const monkeysOn = (bench: PhoneBench, p: FakePhone) => pidsOf(bench.adb, p.address, MONKEY);

/** Waits until Monkey runs on the phone; its pids. */
const monkeyRunning = (bench: PhoneBench, p: FakePhone): Promise<number[]> =>
  until(
    'Monkey running on the phone',
    async () => {
      const pids = await monkeysOn(bench, p);
      return pids.length ? pids : undefined;
    },
    90_000,
  );

describe('real phones through Temporal and Redis: the adb agent and the Monkey engine (fake phones, real adb)', function () {
  this.timeout(180_000);
  let tmp: string;
  let bench: PhoneBench;
  let agent: AdbAgent;
  let stack: Stack;
  let apk: { url: string; sha256: string; size: number };
  let n = 0;

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'dt-phones-'));
    bench = await startPhoneBench({ phones: 4, stateDir: path.join(tmp, 'phones') });
    for (const p of bench.phones) p.setScenario(PKG, SCENARIO);
    agent = new AdbAgent({ adb: bench.adb, dataDir: path.join(tmp, 'agent'), pollMs: 500 });
    await agent.start(0);
    stack = await startStack({
      devices: ['sim-unused'],
      starter: true,
      apks: [{ name: 'shop.apk', size: 8 * MiB }],
      config: {
        engine: 'monkey',
        adbServer: bench.adbServer,
        engineThrottleMs: 20,
        heartbeatTimeoutMs: 10_000,
        deviceCheckMs: 1000,
      },
    });
    apk = stack.apks['shop.apk']!;
  });

  after(async () => {
    await stack?.stop();
    await agent?.close();
    await bench?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  const idOf = (p: FakePhone) => serialToId(p.address);
  const push = async (phone: FakePhone, fields: Record<string, unknown> = {}) => {
    const taskId = `phones-${++n}`;
    await stack.push({
      taskId,
      deviceId: idOf(phone),
      agentUrl: agent.url,
      apkUrl: apk.url,
      apkSha256: apk.sha256,
      packageName: PKG,
      traversal: { durationSec: 5 },
      ...fields,
    });
    return taskId;
  };
  const handle = (taskId: string, phone: FakePhone) =>
    stack.client.workflow.getHandle(traversalWorkflowId(taskId, idOf(phone)));

  it('a Monkey run with two crashes and an ANR yields three findings with signatures', async () => {
    const phone = bench.phones[0]!;
    const taskId = await push(phone);
    // cleanupDevice uninstalls the app at the end, so the install is checked while the run is on.
    const installed = await until('the app on the phone', async () =>
      phone.state().packages.find((p) => p.name === PKG),
    );
    assert.equal(installed.sha256, apk.sha256);
    const r = await stack.waitResult(taskId, idOf(phone), 120_000);
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    assert.equal(r.findings.length, 3, JSON.stringify(r.findings));
    assert.deepEqual(r.findings.map((f) => f.kind).sort(), ['anr', 'crash', 'crash']);
    assert.deepEqual(
      r.findings.filter((f) => f.kind === 'crash').map((f) => f.exception),
      ['java.lang.IllegalStateException', 'java.lang.NullPointerException'],
    );
    for (const f of r.findings) assert.match(f.signature, /^[0-9a-f]{12}$/);
    assert.equal(new Set(r.findings.map((f) => f.signature)).size, 3);
    assert.deepEqual(r.findings.find((f) => f.exception === 'java.lang.IllegalStateException')!.frames, [
      'at com.example.shop.Basket.checkout(Basket.kt:12)',
      'at com.example.shop.BasketView.onPay(BasketView.kt:30)',
    ]);
    assert.equal(r.crashes, 2);
    assert.equal(r.anrs, 1);
    // Monkey is gone once the run ended, and so is the app.
    assert.equal(
      phone.state().packages.find((p) => p.name === PKG),
      undefined,
    );
    assert.deepEqual(await monkeysOn(bench, phone), []);
  });

  it('cancel leaves no engine process on the phone', async () => {
    const phone = bench.phones[1]!;
    const taskId = await push(phone, { traversal: { durationSec: 60 } });
    await monkeyRunning(bench, phone);
    const cancelledAt = Date.now();
    await handle(taskId, phone).cancel();
    await until('Monkey gone from the phone', async () => ((await monkeysOn(bench, phone)).length ? undefined : true));
    const goneMs = Date.now() - cancelledAt;
    const r = await stack.waitResult(taskId, idOf(phone), 60_000);
    assert.equal(r.status, 'cancelled');
    assert.deepEqual(await monkeysOn(bench, phone), []);
    console.log(`      cancel → Monkey gone on the phone: ${goneMs} ms`);
  });

  it('finish-now stops Monkey on the phone and keeps what it found', async () => {
    const phone = bench.phones[2]!;
    const taskId = await push(phone, { traversal: { durationSec: 60 } });
    // Past the first crash (event 20 at 20 ms an event), then finish now.
    await monkeyRunning(bench, phone);
    await new Promise((r) => setTimeout(r, 1500));
    await handle(taskId, phone).signal(budgetSignal, { finishNow: true });
    const r = await stack.waitResult(taskId, idOf(phone), 60_000);
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    assert.equal(r.stoppedEarly, true);
    assert.ok(r.findings.length >= 1, 'the crash found before finish-now is kept');
    assert.ok((r.timings.runTraversal ?? 0) < 30_000, `stopped early, ran ${r.timings.runTraversal} ms`);
    assert.deepEqual(await monkeysOn(bench, phone), []);
  });

  it('pause holds Monkey on the phone (no events, budget not counting) and resume continues it', async () => {
    const phone = bench.phones[0]!;
    const taskId = await push(phone, { traversal: { durationSec: 4 } });
    await monkeyRunning(bench, phone);
    await handle(taskId, phone).signal(pauseSignal);
    const log = path.join(stack.dataDir, 'runs', taskId, idOf(phone), 'attempt-1.log');
    const events = () => (readFileSync(log, 'utf8').match(/Sending event #/g) ?? []).length;
    // Within a control poll (500 ms) Monkey gets STOP; from then on its event count stands still.
    await new Promise((r) => setTimeout(r, 1500));
    const held = events();
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal(events(), held, 'no event while paused');
    assert.equal((await monkeysOn(bench, phone)).length, 1, 'paused, not ended');
    await handle(taskId, phone).signal(resumeSignal);
    const r = await stack.waitResult(taskId, idOf(phone), 60_000);
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    assert.ok(events() > held, 'events went on after resume');
    assert.ok(
      r.timings.runTraversal! >= 6000,
      `the 4 s budget did not count the pause: ran ${r.timings.runTraversal} ms`,
    );
    assert.deepEqual(await monkeysOn(bench, phone), []);
  });

  it('an unplugged phone mid-run fails the attempt as DeviceOffline, and the retry resumes for the rest of the budget', async () => {
    const phone = bench.phones[3]!;
    const taskId = await push(phone, { traversal: { durationSec: 10 } });
    await monkeyRunning(bench, phone);
    await new Promise((r) => setTimeout(r, 2000));
    phone.goOffline();
    await bench.waitState(phone.address, 'offline');
    await new Promise((r) => setTimeout(r, 3000));
    phone.comeBack();
    await bench.reconnect(phone);
    const r = await stack.waitResult(taskId, idOf(phone), 120_000);
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    // The default retry policy (3 attempts, 1 s apart) is enough: the next attempt waits for the phone.
    assert.equal(r.traversalAttempt, 2, 'resumed in the second attempt');
    const events = (await handle(taskId, phone).fetchHistory()).events ?? [];
    const started = activityStarts(events, 'runTraversal').at(-1)!.activityTaskStartedEventAttributes!;
    assert.equal(
      started.lastFailure?.applicationFailureInfo?.type,
      'DeviceOffline',
      started.lastFailure?.message ?? '',
    );
    // The retry ran only what was left: far less than a second full 10 s budget.
    assert.ok(r.timings.runTraversal! < 25_000, `runTraversal took ${r.timings.runTraversal} ms`);
    assert.deepEqual(await monkeysOn(bench, phone), []);
  });

  it('INSTALL_FAILED_INSUFFICIENT_STORAGE becomes a non-retryable InstallRejected that names the code', async () => {
    const small = await bench.addPhone({ freeBytes: 2 * MiB });
    small.setScenario(PKG, SCENARIO);
    await until('the agent to see the new phone', async () => {
      const res = await fetch(`${agent.url}/mobile/${idOf(small)}`);
      return res.status === 200 && ((await res.json()) as { online: boolean }).online ? true : undefined;
    });
    const taskId = await push(small);
    const r = await stack.waitResult(taskId, idOf(small), 60_000);
    assert.equal(r.status, 'failed');
    assert.equal(r.error?.type, 'InstallRejected');
    assert.match(r.error!.message, /INSTALL_FAILED_INSUFFICIENT_STORAGE/);
    const events = (await handle(taskId, small).fetchHistory()).events ?? [];
    assert.equal(Number(activityStarts(events, 'installApp').at(-1)!.activityTaskStartedEventAttributes!.attempt), 1);
    assert.equal(
      small.state().packages.find((p) => p.name === PKG),
      undefined,
    );
  });
});

describe('real phones through Temporal and Redis: a killed worker and the agent as processes (fake phones, real adb)', function () {
  this.timeout(300_000);
  let tmp: string;
  let bench: PhoneBench;
  let agentProc: Proc;
  let agentUrl: string;
  let stack: Stack;
  const procs: Proc[] = [];

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'dt-phones-proc-'));
    // One phone per test: a phone's device workflow belongs to the task queue that first used it.
    bench = await startPhoneBench({ phones: 4, stateDir: path.join(tmp, 'phones') });
    const port = await freePort();
    agentProc = await startSourceProcess(
      'agent',
      { DT_ADB: process.env.DT_ADB ?? 'adb' },
      {
        logFile: path.join(tmp, 'agent.log'),
        args: ['--adb', '--port', String(port), '-P', String(bench.adbPort), '--data-dir', path.join(tmp, 'agent')],
      },
    );
    agentUrl = `http://127.0.0.1:${port}`;
    // The stack gives the origin, Temporal and Redis clients; its in-process worker polls another queue.
    stack = await startStack({
      devices: ['sim-unused'],
      apks: [
        { name: 'big.apk', size: 1024 * MiB },
        { name: 'shop.apk', size: 8 * MiB },
      ],
    });
  });

  after(async () => {
    for (const p of procs) await stopProcess(p.child, 2000);
    if (agentProc) await stopProcess(agentProc.child, 5000);
    await stack?.stop();
    await bench?.stop();
    if (!process.env.KEEP_TMP) rmSync(tmp, { recursive: true, force: true });
  });

  const env = (queue: string) => ({
    taskQueue: queue,
    redisKeyPrefix: `${queue}:`,
    logDir: path.join(tmp, 'logs'),
  });
  const workerEnv = {
    DT_ENGINE: 'monkey',
    DT_ENGINE_THROTTLE: '20',
    DT_ALLOWED_HOSTS: '127.0.0.1',
    DT_HEARTBEAT_TIMEOUT: '4s',
    DT_DEVICE_CHECK_INTERVAL: '1s',
  };

  /**
   * A task queue of its own with a worker process (DT_ENGINE=monkey on the bench's adb server) and a
   * starter process; `env` goes to both. A test takes its own lane and its own phone, since a phone's
   * device workflow belongs to the task queue that first used it.
   */
  const lane = async (name: string, extra: Record<string, string> = {}) => {
    const queue = `phones-${name}-${Date.now()}`;
    let n = 0;
    const startWorker = async () => {
      const worker = await spawnWorker({
        ...env(queue),
        dataDir: path.join(tmp, `w-${name}-${++n}`),
        env: { ...workerEnv, DT_ADB_SERVER: bench.adbServer, ...extra },
      });
      procs.push(worker);
      return worker;
    };
    const worker = await startWorker();
    const starter = await spawnStarter({
      ...env(queue),
      starterId: `s-${queue}`,
      env: { DT_ALLOWED_HOSTS: '127.0.0.1', ...extra },
    });
    procs.push(starter);
    return {
      worker,
      startWorker,
      /** Pushes a task for one phone, with the named APK of the stack's origin. */
      push: (taskId: string, phone: FakePhone, apkName: string, fields: Record<string, unknown> = {}) => {
        const apk = stack.apks[apkName]!;
        return stack.redis.lpush(
          `${queue}:traversal:tasks`,
          JSON.stringify({
            taskId,
            deviceId: serialToId(phone.address),
            agentUrl,
            apkUrl: apk.url,
            apkSha256: apk.sha256,
            packageName: PKG,
            traversal: { durationSec: 1 },
            ...fields,
          }),
        );
      },
      result: (taskId: string, phone: FakePhone, timeoutMs = 120_000) =>
        waitForResult(stack.redis, `${queue}:`, taskId, serialToId(phone.address), timeoutMs),
      /** Stops this lane's processes now (the suite's after() would, later). */
      stop: () => Promise.all([starter, worker].map((p) => stopProcess(p.child, 5000))),
    };
  };

  it('a 1 GiB APK installs with the agent RSS flat: its peak is that of an 8 MiB install', async () => {
    const phone = bench.phones[0]!;
    const big = await lane('big', { DT_DELIVERY: 'direct' });
    // One install after the other on one phone, each with its own sampler of the agent process.
    const installWatched = async (taskId: string, name: string) => {
      const apk = stack.apks[name]!;
      const sampler = new RssSampler(agentProc.pid, 50).start();
      await big.push(taskId, phone, name);
      const installed = await until(
        `${name} on the phone`,
        async () => phone.state().packages.find((p) => p.name === PKG && p.sha256 === apk.sha256),
        240_000,
      );
      assert.equal(installed.size, apk.size);
      const r = await big.result(taskId, phone, 240_000);
      sampler.stop();
      assert.equal(r.status, 'completed', JSON.stringify(r.error));
      return sampler.peak;
    };
    const small = await installWatched('small-1', 'shop.apk');
    const peak = await installWatched('big-1', 'big.apk');
    console.log(`      agent peak RSS: ${mib(small)} installing 8 MiB, ${mib(peak)} installing 1 GiB`);
    // Flat means independent of the APK's size: a whole APK held in memory would add 1 GiB here; the
    // margin is for the stream buffers and GC timing of an 18 s transfer against a 1 s one.
    assert.ok(peak - small < 48 * MiB, `the agent's peak RSS grew by ${mib(peak - small)} from 8 MiB to 1 GiB`);
    await big.stop();
  });

  it('a wrong sha256 installs nothing', async () => {
    const phone = bench.phones[1]!;
    const sha = await lane('sha', { DT_DELIVERY: 'direct' });
    await sha.push('sha-1', phone, 'shop.apk', { apkSha256: 'f'.repeat(64), packageName: 'com.example.wrong' });
    const r = await sha.result('sha-1', phone);
    assert.equal(r.status, 'failed');
    assert.match(`${r.error?.type} ${r.error?.message}`, /sha256|hash/i);
    assert.equal(
      phone.state().packages.find((p) => p.name === 'com.example.wrong'),
      undefined,
    );
  });

  /**
   * Starts a long Monkey run on a phone under a worker process, kills that worker and the engine's
   * host-side adb at once (a container that dies), checks Monkey runs on, then does `then` and starts a
   * new worker. Resolves with the run's result.
   */
  const afterWorkerDied = async (
    phoneIndex: number,
    then: (handle: ReturnType<Stack['client']['workflow']['getHandle']>) => Promise<unknown>,
  ): Promise<{ result: TraversalResult; phone: FakePhone }> => {
    const phone = bench.phones[phoneIndex]!;
    const kill = await lane(`kill-${phoneIndex}`);
    const taskId = `kill-${phoneIndex}`;
    await kill.push(taskId, phone, 'shop.apk', { traversal: { durationSec: 120 } });
    const pids = await monkeyRunning(bench, phone);
    for (const pid of hostAdbShells(phone.address)) process.kill(pid, 'SIGKILL');
    process.kill(kill.worker.pid, 'SIGKILL');
    await kill.worker.exited;
    await new Promise((r) => setTimeout(r, 1000));
    assert.deepEqual(await monkeysOn(bench, phone), pids, 'Monkey ignores the hang-up and runs on');
    await then(stack.client.workflow.getHandle(traversalWorkflowId(taskId, serialToId(phone.address))));
    await kill.startWorker();
    return { result: await kill.result(taskId, phone), phone };
  };

  it('cancel leaves no engine process on the phone even when the worker (and its host adb) was killed first', async () => {
    // The lost attempt times out on the new worker, and cleanupDevice's reset ends Monkey.
    const { result, phone } = await afterWorkerDied(2, (h) => h.cancel());
    assert.equal(result.status, 'cancelled', JSON.stringify(result.error));
    assert.deepEqual(await monkeysOn(bench, phone), []);
  });

  it('finish-now leaves no engine process on the phone even when the worker (and its host adb) was killed first', async () => {
    // The retry on the new worker sweeps the leftover Monkey, reads finish-now and stops at once.
    const { result, phone } = await afterWorkerDied(3, (h) => h.signal(budgetSignal, { finishNow: true }));
    assert.equal(result.status, 'completed', JSON.stringify(result.error));
    assert.equal(result.stoppedEarly, true);
    assert.ok((result.timings.runTraversal ?? 0) < 60_000, `stopped early: ${result.timings.runTraversal} ms`);
    assert.deepEqual(await monkeysOn(bench, phone), []);
  });

  it('Fastbot with its folder missing fails with a clear setup error', async () => {
    const queue = `phones-fastbot-${Date.now()}`;
    const missing = path.join(tmp, 'no-such-fastbot');
    // The worker exits before its ready line, which fails the spawn.
    await assert.rejects(
      spawnWorker({
        ...env(queue),
        dataDir: path.join(tmp, 'w-fb'),
        env: { ...workerEnv, DT_ADB_SERVER: bench.adbServer, DT_ENGINE: 'fastbot', DT_FASTBOT_DIR: missing },
      }),
    );
    const logs = readdirSync(path.join(tmp, 'logs')).filter((f) => f.startsWith('worker-'));
    const text = logs.map((f) => readFileSync(path.join(tmp, 'logs', f), 'utf8')).join('\n');
    assert.match(text, /DT_FASTBOT_DIR/);
    assert.ok(text.includes(missing), 'the error names the folder');
  });
});

/** Host-side `adb … -s <serial> shell …` processes (the engine's host end), found in /proc. */
function hostAdbShells(serial: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const argv = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (path.basename(argv[0] ?? '') === 'adb' && argv.includes(serial) && argv.includes('shell'))
        out.push(Number(d));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}
