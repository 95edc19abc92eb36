/**
 * The demo shows durability: the progress board says why a task is queued, and `npm run demo`
 * stopped with Ctrl-C mid-run and started again finds the earlier runs in flight and sees every one
 * of them finish. The demo runs as a real child process (compiled worker and starter from lib/, as
 * `npm run demo` runs them) against the suite's dev server and Redis, in a namespace of its own,
 * because its devices are always sim-1…sim-5.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Client, Connection } from '@temporalio/client';
import Redis from 'ioredis';
import { resultKey } from '../src/contract/redis-keys';
import { deploymentFromPrefix, PROJECT_ROOT } from '../src/config';
import { freePort } from '../src/net/ports';
import { portIsFree } from '../dev/ports';
import { findTemporalCli, waitForNamespace } from '../dev/temporal-dev';
import {
  budgetSignal,
  deviceWorkflowId,
  pauseSignal,
  resumeSignal,
  traversalWorkflowId,
  type DeviceState,
  type TraversalResult,
} from '../src/contract/messages';
import { ProgressBoard, queuedReason } from '../src/starter/progress-board';
import { AgentSimulator } from '../sim/agent-sim';
import { ApkOrigin } from '../sim/origin';
import { request } from 'undici';
import { startStack, task, type Stack } from '../dev/stack';
import { waitFor } from '../dev/wait';

const run = promisify(execFile);

describe('the progress board', function () {
  let stack: Stack;
  const id = randomUUID().slice(0, 6);
  const device = `bq-${id}`;

  before(async () => {
    stack = await startStack({ devices: [device], apks: [{ name: 'board-app.apk', size: 256 * 1024 }], starter: true });
  });
  after(async () => {
    await stack?.client.workflow
      .getHandle(deviceWorkflowId(device))
      .terminate('test over')
      .catch(() => undefined);
    await stack?.stop();
  });

  /** The text a board in lines mode writes in one tick. */
  async function boardLines(): Promise<string> {
    const written: string[] = [];
    const out = { write: (t: string) => written.push(t) } as unknown as NodeJS.WriteStream;
    await new ProgressBoard(stack.client, stack.taskQueue, 'lines', out).tick();
    return written.join('');
  }

  it('shows a second task for a busy device as queued behind the first, and a paused device as the reason', async function () {
    const apk = stack.apks['board-app.apk']!;
    const [first, second] = [`T1-${id}`, `T2-${id}`];
    await stack.push(
      task(stack, {
        taskId: first,
        deviceId: device,
        apkUrl: apk.url,
        apkSha256: apk.sha256,
        traversal: { durationSec: 60, extraArgs: ['--tick-ms', '100'] },
      }),
    );
    await stack.push(task(stack, { taskId: second, deviceId: device, apkUrl: apk.url, apkSha256: apk.sha256 }));

    const behind = await waitFor(
      async () => {
        const text = await boardLines();
        return /progress \S+ traversing/.test(text) && text.includes(`progress ${second}/${device} queued`) && text;
      },
      60_000,
      'the first traversing and the second queued on the board',
    );
    assert.match(behind, new RegExp(`progress ${first}/${device} traversing \\d+% \\d+ screens\\n`));
    assert.ok(
      behind.includes(`progress ${second}/${device} queued behind ${traversalWorkflowId(first, device)}\n`),
      `the second task says what it waits for:\n${behind}`,
    );

    // A paused device keeps its current run; what the queued task waits for is the resume.
    const deviceHandle = stack.client.workflow.getHandle(deviceWorkflowId(device));
    await deviceHandle.signal(pauseSignal);
    const paused = await waitFor(
      async () => {
        const text = await boardLines();
        return text.includes(`progress ${second}/${device} queued: device paused\n`) && text;
      },
      20_000,
      'the paused reason on the board',
    );
    assert.match(paused, new RegExp(`progress ${first}/${device} traversing`), 'the current run is still shown');

    // Bars mode shows the same reason in the queued task's row.
    const bars: string[] = [];
    await new ProgressBoard(stack.client, stack.taskQueue, 'bars', {
      write: (t: string) => bars.push(t),
    } as unknown as NodeJS.WriteStream).tick();
    assert.match(bars.join(''), new RegExp(`${device}\\s+${second}\\s+queued: device paused`));

    await deviceHandle.signal(resumeSignal);
    await stack.client.workflow.getHandle(traversalWorkflowId(first, device)).signal(budgetSignal, { finishNow: true });
    assert.equal((await stack.waitResult(first, device)).status, 'completed');
    assert.equal((await stack.waitResult(second, device)).status, 'completed');
    await waitFor(async () => !(await boardLines()).includes(id), 20_000, 'an empty board once both finished');
  });

  it('names the quarantine and the place in line of later tasks', function () {
    const state: DeviceState = {
      deviceId: 'd',
      paused: false,
      queue: [
        { taskId: 'b', packageName: 'p' },
        { taskId: 'c', packageName: 'p' },
      ],
      current: { taskId: 'a', workflowId: traversalWorkflowId('a', 'd'), packageName: 'p' },
      completed: 0,
      seen: 3,
    };
    assert.equal(queuedReason(state, 0), 'queued behind traversal/a/d');
    assert.equal(queuedReason(state, 1), 'queued behind traversal/a/d (#2 in line)');
    const quarantined = {
      ...state,
      paused: true,
      quarantine: { reason: '3 infrastructure failures in a row, last DeviceOffline: gone', since: '', failures: [] },
    };
    assert.equal(
      queuedReason(quarantined, 0),
      'queued: device quarantined (3 infrastructure failures in a row, last DeviceOffline: gone)',
    );
    assert.equal(queuedReason({ ...state, current: undefined }, 0), 'queued: next on the device');
  });
});

describe('the device agent simulator restarted under running traversals', function () {
  let dir: string;
  let origin: ApkOrigin;
  const sims: AgentSimulator[] = [];
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'dt-agent-state-'));
    origin = new ApkOrigin({ dir });
  });
  after(async () => {
    for (const s of sims) await s.close();
    await origin?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  async function call(
    base: string,
    op: string,
    body: unknown,
  ): Promise<{ status: number; body: Record<string, unknown> }> {
    const res = await request(`${base}/mobile/s1/${op}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
  }
  async function simulator(stateFile?: string): Promise<string> {
    const sim = new AgentSimulator({ devices: ['s1'], ...(stateFile ? { stateFile } : {}) });
    sims.push(sim);
    return sim.start();
  }

  it('keeps installed apps with a state file, and cleans up an app it does not know without error', async function () {
    const apk = await origin.addApk('state.apk', 64 * 1024);
    await origin.start();
    const stateFile = path.join(dir, 'agent-state.json');
    const first = await simulator(stateFile);
    assert.equal(
      (
        await call(first, 'installApp', {
          url: origin.url('state.apk'),
          packageName: 'com.example.kept',
          sha256: apk.sha256,
        })
      ).status,
      200,
    );
    await sims[0]!.close();

    // measureLaunch retried after a restart: the app is still there, as on a real phone.
    const second = await simulator(stateFile);
    assert.deepEqual(sims[1]!.installed('s1'), ['com.example.kept']);
    assert.equal((await call(second, 'launchApp', { packageName: 'com.example.kept' })).status, 200);

    // Without a state file the restarted simulator knows nothing; cleanupDevice's calls still succeed.
    const third = await simulator();
    assert.deepEqual(await call(third, 'uninstallApp', { packageName: 'com.example.kept' }), {
      status: 200,
      body: { uninstalled: false },
    });
    assert.equal((await call(third, 'reset', {})).status, 200);
  });
});

describe('the demo stopped with Ctrl-C and started again', function () {
  const id = randomUUID().slice(0, 8);
  const namespace = `demo-${id}`;
  const prefix = `demo${id}:`;
  const farmPrefix = `farm${id}:`;
  let address: string;
  let dataDir: string;
  let ports: string[];
  let connection: Connection;
  let client: Client;
  let redis: Redis;
  const running: ChildProcess[] = [];

  before(async function () {
    this.timeout(120_000);
    address = process.env.TEST_TEMPORAL_ADDRESS!;
    const cli = process.env.TEST_TEMPORAL_CLI || findTemporalCli();
    await run(cli, ['operator', 'namespace', 'create', '--address', address, '--namespace', namespace]);
    await waitForNamespace(cli, address, namespace, 60_000);
    dataDir = mkdtempSync(path.join(os.tmpdir(), `dt-demo-${id}-`));
    // Fixed for both runs, as the demo's defaults are; free ones so a real demo here is not disturbed.
    ports = [
      '--origin-port',
      String(await freePort()),
      '--agent-port',
      String(await freePort()),
      '--artifact-port',
      String(await freePort()),
    ];
    connection = await Connection.connect({ address });
    client = new Client({ connection, namespace });
    redis = new Redis(process.env.TEST_REDIS_URL!);
  });
  after(async () => {
    for (const c of running) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const p of [prefix, farmPrefix])
      for (let n = 1; n <= 5; n++)
        await client?.workflow
          .getHandle(deviceWorkflowId(`sim-${n}`, deploymentFromPrefix(p)))
          .terminate('test over')
          .catch(() => undefined);
    await connection?.close();
    redis?.disconnect();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  /**
   * Starts the demo as `npm run demo` does (without setup), in its own process group like a terminal
   * job; `own` gives it a data folder, key prefix and ports of its own instead of the suite's.
   */
  function demo(
    args: string[],
    own?: { dataDir: string; prefix: string; ports: string[] },
  ): { child: ChildProcess; output: () => string; exited: Promise<number | null> } {
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env))
      if (!/^(TEMPORAL_|REDIS_URL$|TASK_QUEUE$|DT_)/.test(k)) env[k] = v;
    Object.assign(env, {
      TEMPORAL_ADDRESS: address,
      TEMPORAL_NAMESPACE: namespace,
      REDIS_URL: process.env.TEST_REDIS_URL!,
      TASK_QUEUE: `tq-demo-${id}`,
      DT_DATA_DIR: own?.dataDir ?? dataDir,
      DT_REDIS_KEY_PREFIX: own?.prefix ?? prefix,
      DT_HEARTBEAT_TIMEOUT: '10s',
    });
    const child = spawn(
      process.execPath,
      ['-r', 'ts-node/register/transpile-only', 'scripts/demo.ts', ...args, ...(own?.ports ?? ports)],
      {
        cwd: PROJECT_ROOT,
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      },
    );
    running.push(child);
    let text = '';
    child.stdout!.on('data', (b: Buffer) => (text += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (text += b.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    return { child, output: () => text, exited };
  }

  it('resumes every earlier run, including those queued behind them, and none fails', async function () {
    this.timeout(300_000);
    // 1. First demo, stopped once all five are traversing. 30 s budgets: the worker's 10 s shutdown
    //    grace would let a traversal that is nearly done finish instead of being interrupted.
    const first = demo(['--apk-mib', '2', '--duration', '30']);
    const pushed = await waitFor(
      () => /Pushed 2 tasks \(7 traversals\): (demo-\d+-a) on 5 devices, (demo-\d+-b)/.exec(first.output()),
      120_000,
      `the first demo pushing its tasks:\n${first.output()}`,
    );
    const [taskA, taskB] = [pushed[1]!, pushed[2]!];
    await waitFor(() => (first.output().match(/: traversing/g) ?? []).length >= 5, 120_000, 'five traversals running');
    await new Promise((r) => setTimeout(r, 3000));
    process.kill(-first.child.pid!, 'SIGINT'); // what Ctrl-C does: the terminal signals the foreground group
    assert.equal(await first.exited, 130, first.output());
    for (const d of ['sim-1', 'sim-2'])
      assert.equal(await redis.get(resultKey(taskB, d, prefix)), null, 'the queued tasks had not run yet');

    // 2. Second demo on the same ports and data folder: it names what it found and watches it to the end.
    const second = demo(['--apk-mib', '2', '--duration', '3']);
    const code = await second.exited;
    const out = second.output();
    assert.equal(code, 0, out);
    const found = /found 5 runs in flight from an earlier demo: (.*); 2 queued behind them/.exec(out);
    assert.ok(found, `the second demo says what it found:\n${out}`);
    for (let n = 1; n <= 5; n++)
      assert.match(found[1]!, new RegExp(`traversal/${taskA}/sim-${n} \\((traversing \\d+%|[a-z]+)\\)`));
    assert.match(out, /14 traversals: 14 completed, 0 failed or cancelled; 7 resumed from an earlier demo/);

    const earlier = [...[1, 2, 3, 4, 5].map((n) => [taskA, `sim-${n}`]), [taskB, 'sim-1'], [taskB, 'sim-2']] as const;
    for (const [taskId, deviceId] of earlier) {
      const raw = await redis.get(resultKey(taskId, deviceId, prefix));
      assert.ok(raw, `a result for ${taskId} on ${deviceId}`);
      const r = JSON.parse(raw) as TraversalResult;
      assert.equal(r.status, 'completed', `${taskId} on ${deviceId}: ${JSON.stringify(r.error)}`);
      assert.match(out, new RegExp(`\\| ${deviceId}\\s+\\| ${taskId} \\(resumed\\)\\s+\\| \\S+\\s+\\| completed`));
    }
    // The five interrupted traversals went on from where they were, on a second attempt.
    for (let n = 1; n <= 5; n++) {
      const r = JSON.parse((await redis.get(resultKey(taskA, `sim-${n}`, prefix)))!) as TraversalResult;
      assert.ok((r.traversalAttempt ?? 1) >= 2, `sim-${n} resumed in a new attempt`);
    }
  });
  it('with --hosts 3 shows a farm: each host runs its own devices, and each APK leaves the origin once', async function () {
    this.timeout(300_000);
    const farmDir = mkdtempSync(path.join(os.tmpdir(), `dt-demo-farm-${id}-`));
    try {
      // Three agents and three artifact servers on consecutive ports from the ones given.
      const base = async () => {
        for (;;) {
          const p = await freePort();
          if (p < 65000 && (await portIsFree(p + 1)) && (await portIsFree(p + 2))) return String(p);
        }
      };
      const farmPorts = [
        '--origin-port',
        String(await freePort()),
        '--agent-port',
        await base(),
        '--artifact-port',
        await base(),
      ];
      const run3 = demo(['--hosts', '3', '--apk-mib', '4', '--duration', '2'], {
        dataDir: farmDir,
        prefix: farmPrefix,
        ports: farmPorts,
      });
      const code = await run3.exited;
      const out = run3.output();
      assert.equal(code, 0, out);
      assert.match(
        out,
        /a farm of 3 hosts: demo-host-1 \(sim-1, sim-2; .*demo-host-2 \(sim-3, sim-4; .*demo-host-3 \(sim-5; /,
      );
      assert.match(out, /7 traversals: 7 completed, 0 failed or cancelled/);
      // The origin sent each APK once (one GET, 1.00 × its size) for the whole farm.
      assert.match(out, /\| demo-app\.apk\s+\| [\d.]+ MiB\s+\| 1\s+\| 1\.00\s+\|/);
      assert.match(out, /\| demo-lite\.apk\s+\| [\d.]+ MiB\s+\| 1\s+\| 1\.00\s+\|/);
      const farmRows = [...out.matchAll(/^\| (demo-host-\d)\s+\| [^|]+\| ([^|]+?)\s+\| ([^|]+?)\s+\|/gm)];
      assert.equal(farmRows.length, 3, out);
      const sources = farmRows.map((m) => m[2]!);
      assert.equal(
        sources.filter((x) => x === 'the origin').length,
        1,
        `one host from the origin: ${sources.join(', ')}`,
      );
      assert.equal(
        sources.filter((x) => x.startsWith('peer demo-host-')).length,
        2,
        `two from a peer: ${sources.join(', ')}`,
      );
      // Every device's steps ran on the host that owns it.
      const taskA = /Pushed 2 tasks \(7 traversals\): (demo-\d+-a) on 5 devices/.exec(out)![1]!;
      const owner = ['demo-host-1', 'demo-host-1', 'demo-host-2', 'demo-host-2', 'demo-host-3'];
      for (let n = 1; n <= 5; n++) {
        const r = JSON.parse((await redis.get(resultKey(taskA, `sim-${n}`, farmPrefix)))!) as TraversalResult;
        assert.equal(r.host, owner[n - 1], `sim-${n} ran on ${r.host}`);
      }
    } finally {
      rmSync(farmDir, { recursive: true, force: true });
    }
  });
});
