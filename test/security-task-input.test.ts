/**
 * Task input a producer controls beyond the identifiers: the bytes of the item (invalid UTF-8),
 * the extra arguments handed to the traversal tool (DT_TRAVERSAL_EXTRA_ARGS) and the duration
 * formatted into its argv. The allow-list is checked on its own, then end to end through a real
 * starter bridge, Redis and Temporal (restarts and reconnects included), and through a worker
 * running the simulator jar for a workflow started around the starter.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import type Redis from 'ioredis';
import { loadConfig } from '../src/config';
import { ExtraArgsPolicy, extraArgsPolicyFor } from '../src/contract/extra-args';
import { deviceWorkflowId, type TraversalRequest } from '../src/contract/messages';
import { createStarter } from '../src/starter/create';
import { requestTraversal, type TaskBridge } from '../src/starter/task-bridge';
import { deadLetterPayload, type DeadLetter } from '../src/starter/dead-letters';
import { connectClients, type Clients } from '../dev/clients';
import { startStack, type Stack } from '../dev/stack';
import { waitFor } from '../dev/wait';

/** The policy a starter or worker builds from this environment. */
const policyOf = (env: NodeJS.ProcessEnv) => extraArgsPolicyFor(loadConfig(env));

describe('DT_TRAVERSAL_EXTRA_ARGS', () => {
  it('allows no extra argument by default and names the rule a task broke', () => {
    const none = policyOf({});
    assert.equal(none.check([]), undefined);
    assert.equal(
      none.check(['--faults-once', '/tmp/x']),
      'traversal.extraArgs[0]: "--faults-once" is not allowed by DT_TRAVERSAL_EXTRA_ARGS (allowed: none)',
    );
    assert.equal(
      none.check(['--crashes', '1000000']),
      'traversal.extraArgs[0]: "--crashes" is not allowed by DT_TRAVERSAL_EXTRA_ARGS (allowed: none)',
    );
  });

  it('takes flags, values in the next argument or attached, bounded numbers, words and choices', () => {
    const list =
      '--verbose, --seed <int>, --seed=<int>, --crashes <int:0-10>, --label <word>, --mode <fast|slow>, --note <any>';
    const p = policyOf({ DT_TRAVERSAL_EXTRA_ARGS: list });
    for (const ok of [
      ['--verbose'],
      ['--seed', '5'],
      ['--seed=5'],
      ['--crashes', '0'],
      ['--crashes', '10'],
      ['--label', 'run-1.a'],
      ['--mode', 'slow'],
      ['--note', 'any text; even $(this)'],
      ['--seed', '5', '--verbose', '--crashes', '2', '--mode', 'fast'],
    ])
      assert.equal(p.check(ok), undefined, JSON.stringify(ok));
    const refused: [string[], string][] = [
      [
        ['--seed', '5', '--faults-once', '/tmp/x'],
        `traversal.extraArgs[2]: "--faults-once" is not allowed by DT_TRAVERSAL_EXTRA_ARGS (allowed: ${list})`,
      ],
      [
        ['--crashes', '1000000'],
        'traversal.extraArgs[1]: "1000000" is not a value DT_TRAVERSAL_EXTRA_ARGS allows for --crashes (allowed: --crashes <int:0-10>)',
      ],
      [['--crashes', '11'], 'traversal.extraArgs[1]: "11" is not a value'],
      [['--seed', 'x'], 'traversal.extraArgs[1]: "x" is not a value'],
      [['--seed', '-1'], 'traversal.extraArgs[1]: "-1" is not a value'],
      [['--seed'], 'traversal.extraArgs[0]: "--seed" needs a value (DT_TRAVERSAL_EXTRA_ARGS allows --seed <int>)'],
      [
        ['--seed=1e3'],
        'traversal.extraArgs[0]: "--seed=1e3" has a value DT_TRAVERSAL_EXTRA_ARGS does not allow (allowed: --seed=<int>)',
      ],
      [['--label', '/etc/cron.d/x'], 'traversal.extraArgs[1]: "/etc/cron.d/x" is not a value'],
      [['--label', '../x'], 'traversal.extraArgs[1]: "../x" is not a value'],
      [['--mode', 'medium'], 'traversal.extraArgs[1]: "medium" is not a value'],
      [['--verbose=1'], 'traversal.extraArgs[0]: "--verbose=1" is not allowed'],
      [['positional'], 'traversal.extraArgs[0]: "positional" is not allowed'],
      [['--note', '--faults-once', '--note', '/tmp/x'], 'traversal.extraArgs[1]: "--faults-once" is not a value'],
    ];
    for (const [args, problem] of refused)
      assert.ok(p.check(args)?.startsWith(problem), `${JSON.stringify(args)}: ${p.check(args)}`);
  });

  it('never lets a task give an option the command template sets, not even with *', () => {
    const any = policyOf({ DT_TRAVERSAL_EXTRA_ARGS: '*' });
    assert.equal(
      any.check(['--tick-ms', '5', '--whatever', '/any/path']),
      undefined,
      '* allows what the runner does not set',
    );
    for (const [args, i, option] of [
      [['--device', 'other'], 0, '--device'],
      [['--device=other'], 0, '--device'],
      [['--DEVICE', 'other'], 0, '--device'],
      [['--dev', 'other'], 0, '--device'],
      [['--agent', 'http://evil.example'], 0, '--agent'],
      [['--package', 'com.other'], 0, '--package'],
      [['--out', '/etc'], 0, '--out'],
      [['--duration', '999999'], 0, '--duration'],
      [['--control', '/tmp/c'], 0, '--control'],
      [['--resume-from', '99'], 0, '--resume-from'],
      [['-jar', 'other.jar'], 0, '-jar'],
      [['--tick-ms', '5', '--agent=http://x'], 2, '--agent'],
    ] as [string[], number, string][]) {
      assert.equal(
        any.check(args),
        `traversal.extraArgs[${i}]: ${JSON.stringify(args[i])} sets ${option}, which the runner sets itself (DT_TRAVERSAL_COMMAND, DT_TRAVERSAL_RESUME_ARGS); a task can never give it`,
      );
    }
    // Also as the value of an allowed option: a tool may read it as an option of its own.
    const note = policyOf({ DT_TRAVERSAL_EXTRA_ARGS: '--note <any>' });
    assert.match(note.check(['--note', '--device'])!, /^traversal\.extraArgs\[1\]: "--device" sets --device/);
  });

  it('takes the options it never allows from DT_TRAVERSAL_COMMAND and DT_TRAVERSAL_RESUME_ARGS', () => {
    const p = policyOf({
      DT_TRAVERSAL_COMMAND: '["tool","--serial","{device}","--report-dir={outDir}","--time","{durationSec}"]',
      DT_TRAVERSAL_RESUME_ARGS: '["--continue","{checkpoint}"]',
      DT_TRAVERSAL_EXTRA_ARGS: '*',
    });
    assert.match(p.check(['--serial', 'x'])!, /sets --serial/);
    assert.match(p.check(['--report-dir=/tmp'])!, /sets --report-dir/);
    assert.match(p.check(['--continue', '5'])!, /sets --continue/);
    assert.equal(p.check(['--device', 'x']), undefined, 'this template has no --device');
  });

  it('refuses a malformed list at start-up, naming the entry and the fix', () => {
    const cases: [string, RegExp][] = [
      [
        '--seed <integer>',
        /entry 1 "--seed <integer>": unknown value type <integer>; use <int>, <int:MIN-MAX>, <word>, <a\|b\|c> or <any>/,
      ],
      ['--ok, --seed <int:9-1>', /entry 2 "--seed <int:9-1>": unknown value type <int:9-1>/],
      ['seed', /entry 1 "seed": seed is not an option name like --seed or -v/],
      ['--seed <int> <int>', /entry 1 "--seed <int> <int>": expected --name, --name <type> or --name=<type>/],
      [
        '--device <word>',
        /entry 1 "--device <word>": --device is set by the runner itself \(DT_TRAVERSAL_COMMAND, DT_TRAVERSAL_RESUME_ARGS\); remove the entry/,
      ],
      ['--dur <int>', /entry 1 "--dur <int>": --duration is set by the runner itself/],
      ['--mode <fast|../x>', /unknown value type <fast\|\.\.\/x>/],
    ];
    for (const [list, message] of cases) {
      assert.throws(
        () => loadConfig({ DT_TRAVERSAL_EXTRA_ARGS: list }),
        (err: Error) =>
          err.name === 'ConfigError' &&
          err.message.startsWith(`DT_TRAVERSAL_EXTRA_ARGS=${JSON.stringify(list)} is invalid: `) &&
          message.test(err.message),
        list,
      );
    }
    assert.ok(
      new ExtraArgsPolicy(' --a , --b <int> ,', []).check(['--a', '--b', '1']) === undefined,
      'spaces and a trailing comma are fine',
    );
  });
});

describe('task input through a real starter, Redis and Temporal', function () {
  this.timeout(120_000);
  let clients: Clients;
  let client: Client;
  let redis: Redis;
  let blocking: Redis;
  const id = randomUUID().slice(0, 8);
  const devices: string[] = [];
  let n = 0;

  before(async () => {
    clients = await connectClients();
    ({ client, redis, blocking } = clients);
  });
  after(async () => {
    for (const d of devices)
      await client.workflow
        .getHandle(deviceWorkflowId(d))
        .terminate('test over')
        .catch(() => undefined);
    const keys = await redis.keys(`ti${id}*`);
    if (keys.length) await redis.del(...keys);
    await clients?.close();
  });

  /** A bridge with its own key prefix (a starter id per test, reused across its restarts); no worker polls its queue. */
  function bridgeFor(test: string, env: NodeJS.ProcessEnv = {}, logs: string[] = []): TaskBridge {
    return createStarter({
      config: loadConfig(
        { DT_ALLOWED_HOSTS: '127.0.0.1', ...env },
        { taskQueue: `tq-nobody-${id}`, starterId: `starter-${test}` },
      ),
      ...clients,
      agents: { agentFor: () => 'http://127.0.0.1:9' },
      keyPrefix: `ti${id}-${test}:`,
      blockTimeoutSec: 0.2,
      log: (_level, msg) => logs.push(msg),
    });
  }

  function device(): string {
    const d = `ti-${id}-${++n}`;
    devices.push(d);
    return d;
  }

  function task(taskId: string, deviceId: string, traversal: Record<string, unknown> = { durationSec: 1 }) {
    return { taskId, deviceId, apkUrl: 'http://127.0.0.1:9/app.apk', packageName: 'com.example.input', traversal };
  }

  async function deadLetters(bridge: TaskBridge): Promise<DeadLetter[]> {
    return (await redis.lrange(bridge.keys.dead, 0, -1)).map((e) => JSON.parse(e) as DeadLetter);
  }

  /** Waits until the bridge has handled `items` items and its processing list is empty. */
  async function settled(bridge: TaskBridge, items: number): Promise<void> {
    await waitFor(
      async () =>
        bridge.stats.items >= items &&
        (await redis.llen(bridge.keys.processing)) === 0 &&
        (await redis.llen(bridge.keys.tasks)) === 0,
      30_000,
      `${items} items handled`,
    );
  }

  async function deviceWorkflowExists(deviceId: string): Promise<boolean> {
    try {
      await client.workflow.getHandle(deviceWorkflowId(deviceId)).describe();
      return true;
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) return false;
      throw err;
    }
  }

  /**
   * Drops the bridge's blocking connection, waits for its replay, restarts the bridge under the same
   * starter id, and returns the restarted bridge once it has handled one more (broken) item: by then
   * both replays of the processing list are done.
   */
  async function reconnectAndRestart(
    first: TaskBridge,
    logs: string[],
    test: string,
    env: NodeJS.ProcessEnv = {},
  ): Promise<TaskBridge> {
    const clientId = await blocking.client('ID');
    await redis.client('KILL', 'ID', String(clientId));
    await waitFor(
      () => logs.includes('Redis reconnected; replaying the processing list'),
      20_000,
      'the replay after a reconnect',
    );
    await redis.lpush(first.keys.tasks, 'sentinel: not JSON');
    await waitFor(() => first.stats.dead >= 2, 20_000, 'the sentinel after the reconnect');
    await first.stop();
    const second = bridgeFor(test, env).start();
    await redis.lpush(second.keys.tasks, 'sentinel: not JSON either');
    await waitFor(() => second.stats.dead >= 1, 20_000, 'the sentinel after the restart');
    await settled(second, 1);
    return second;
  }

  it('an item of invalid UTF-8 bytes is dead-lettered once, byte for byte, and stays gone after a reconnect and a restart', async () => {
    const logs: string[] = [];
    const bridge = bridgeFor('bytes', {}, logs);
    const raw = Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(JSON.stringify(task(`bytes-${id}`, device())))]);
    await redis.lpush(bridge.keys.tasks, raw);
    bridge.start();
    let second: TaskBridge | undefined;
    try {
      await settled(bridge, 1);
      const [entry] = await deadLetters(bridge);
      assert.equal(entry!.payload, undefined, 'no lossy text copy');
      assert.deepEqual(deadLetterPayload(entry!), raw, 'the dead letter holds the pushed bytes');
      assert.equal(Buffer.from(entry!.payloadBase64!, 'base64').compare(raw), 0);
      assert.equal(
        entry!.reason,
        'invalid task: task: is not valid UTF-8 (first bad byte at offset 0); JSON text must be UTF-8 (RFC 8259)',
      );
      assert.equal(await redis.llen(bridge.keys.processing), 0, 'LREM removed the exact bytes');

      second = await reconnectAndRestart(bridge, logs, 'bytes');
      const all = await deadLetters(second);
      assert.equal(all.length, 3, all.map((e) => e.reason).join(' | '));
      assert.equal(
        all.filter((e) => deadLetterPayload(e).equals(raw)).length,
        1,
        'dead-lettered once across the reconnect and the restart',
      );
      assert.equal(
        all.filter((e) => e.payload?.startsWith('sentinel')).length,
        2,
        'valid UTF-8 keeps its text payload',
      );
      assert.equal(await redis.llen(second.keys.processing), 0);
    } finally {
      await bridge.stop();
      await second?.stop();
    }
  });

  it('a task with an invalid UTF-8 byte inside extraArgs is dead-lettered once and never signalled, not even after a restart', async () => {
    const logs: string[] = [];
    // An allow-list that would take the argument, so only the encoding decides.
    const env = { DT_TRAVERSAL_EXTRA_ARGS: '--note <any>' };
    const bridge = bridgeFor('field', env, logs);
    const deviceId = device();
    const [head, tail] = JSON.stringify(
      task(`field-${id}`, deviceId, { durationSec: 1, extraArgs: ['--note', 'X'] }),
    ).split('X') as [string, string];
    const raw = Buffer.concat([Buffer.from(head), Buffer.from([0xff]), Buffer.from(tail)]);
    await redis.lpush(bridge.keys.tasks, raw);
    bridge.start();
    let second: TaskBridge | undefined;
    try {
      await settled(bridge, 1);
      assert.equal(bridge.stats.started, 0);
      const [entry] = await deadLetters(bridge);
      assert.deepEqual(deadLetterPayload(entry!), raw);
      assert.deepEqual(entry!.problems, [
        `task: is not valid UTF-8 (first bad byte at offset ${Buffer.byteLength(head)}); JSON text must be UTF-8 (RFC 8259)`,
      ]);

      second = await reconnectAndRestart(bridge, logs, 'field', env);
      const all = await deadLetters(second);
      assert.equal(all.filter((e) => deadLetterPayload(e).equals(raw)).length, 1, 'dead-lettered once');
      assert.equal(bridge.stats.started + second.stats.started, 0, 'never signalled');
      assert.equal(await deviceWorkflowExists(deviceId), false, 'no device workflow was started for it');
    } finally {
      await bridge.stop();
      await second?.stop();
    }
  });

  it('dead-letters extra arguments beyond the allow-list and durations that are not whole seconds in range, with the rule broken', async () => {
    const cases: [string, Record<string, unknown>, string | RegExp][] = [
      [
        'faults-once',
        { durationSec: 1, extraArgs: ['--faults-once', path.join(os.tmpdir(), `dt-${id}-x`)] },
        'traversal.extraArgs[0]: "--faults-once" is not allowed by DT_TRAVERSAL_EXTRA_ARGS (allowed: none)',
      ],
      [
        'crashes',
        { durationSec: 1, extraArgs: ['--crashes', '1000000'] },
        'traversal.extraArgs[0]: "--crashes" is not allowed by DT_TRAVERSAL_EXTRA_ARGS (allowed: none)',
      ],
      [
        'tiny',
        { durationSec: 1e-7 },
        'traversal.durationSec: must be a whole number of seconds from 1 to 604800 (7 days), got 1e-7',
      ],
      [
        'zero',
        { durationSec: 0 },
        'traversal.durationSec: must be a whole number of seconds from 1 to 604800 (7 days), got 0',
      ],
      [
        'fraction',
        { durationSec: 1.5 },
        'traversal.durationSec: must be a whole number of seconds from 1 to 604800 (7 days), got 1.5',
      ],
      [
        'huge',
        { durationSec: 1e300 },
        'traversal.durationSec: must be a whole number of seconds from 1 to 604800 (7 days), got 1e+300',
      ],
      [
        'week-and-a-second',
        { durationSec: 604801 },
        'traversal.durationSec: must be a whole number of seconds from 1 to 604800 (7 days), got 604801',
      ],
    ];
    const bridge = bridgeFor('rules');
    const accepted = device();
    for (const [name, traversal] of cases)
      await redis.lpush(bridge.keys.tasks, JSON.stringify(task(`${name}-${id}`, device(), traversal)));
    await redis.lpush(bridge.keys.tasks, JSON.stringify(task(`one-second-${id}`, accepted, { durationSec: 1 })));
    bridge.start();
    try {
      await settled(bridge, cases.length + 1);
      assert.equal(bridge.stats.started, 1, 'the one-second task was started');
      assert.ok(await deviceWorkflowExists(accepted));
      const byTask = new Map(
        (await deadLetters(bridge)).map((e) => [(JSON.parse(e.payload!) as { taskId: string }).taskId, e]),
      );
      assert.equal(byTask.size, cases.length);
      for (const [name, , problem] of cases) {
        const e = byTask.get(`${name}-${id}`);
        assert.deepEqual(e?.problems, [problem], name);
        assert.equal(e?.reason, `invalid task: ${problem}`);
      }
    } finally {
      await bridge.stop();
    }
  });

  it('refuses --device even when the allow-list takes any argument', async () => {
    const bridge = bridgeFor('any', { DT_TRAVERSAL_EXTRA_ARGS: '*' });
    const [refused, allowed] = [device(), device()];
    await redis.lpush(
      bridge.keys.tasks,
      JSON.stringify(
        task(`other-device-${id}`, refused, { durationSec: 1, extraArgs: ['--tick-ms', '100', '--device', 'other'] }),
      ),
    );
    await redis.lpush(
      bridge.keys.tasks,
      JSON.stringify(task(`any-arg-${id}`, allowed, { durationSec: 1, extraArgs: ['--tick-ms', '100'] })),
    );
    bridge.start();
    try {
      await settled(bridge, 2);
      const [entry] = await deadLetters(bridge);
      assert.deepEqual(entry?.problems, [
        'traversal.extraArgs[2]: "--device" sets --device, which the runner sets itself (DT_TRAVERSAL_COMMAND, DT_TRAVERSAL_RESUME_ARGS); a task can never give it',
      ]);
      assert.equal(bridge.stats.started, 1);
      assert.equal(await deviceWorkflowExists(refused), false);
      assert.ok(await deviceWorkflowExists(allowed));
    } finally {
      await bridge.stop();
    }
  });
});

describe('extra arguments at the worker', function () {
  let stack: Stack;
  const devices = ['xa-1', 'xa-2', 'xa-3'];

  before(async () => {
    stack = await startStack({
      devices,
      apks: [{ name: 'xargs.apk', size: 256 * 1024 }],
      starter: true,
      config: { traversalExtraArgs: '--tick-ms <int:1-60000>, --crashes <int:0-5>' },
    });
  });
  after(async () => {
    await stack?.stop();
  });

  const request = (taskId: string, deviceId: string, extraArgs: string[]): TraversalRequest => ({
    taskId,
    deviceId,
    agentUrl: stack.agent.url,
    apkUrl: stack.apks['xargs.apk']!.url,
    packageName: 'com.example.xargs',
    traversal: { durationSec: 1, extraArgs },
    policy: { heartbeatTimeoutMs: 10_000, initialRetryMs: 200, measureLaunch: false },
  });

  it('an allowed argument with its value reaches the tool; a value out of its range is dead-lettered', async () => {
    const item = (taskId: string, crashes: string) => ({
      taskId,
      deviceId: 'xa-1',
      agentUrl: stack.agent.url,
      apkUrl: stack.apks['xargs.apk']!.url,
      packageName: 'com.example.xargs',
      traversal: { durationSec: 1, extraArgs: ['--tick-ms', '100', '--crashes', crashes] },
    });
    await stack.push(item('too-many', '6'));
    await stack.push(item('allowed', '2'));
    const r = await stack.waitResult('allowed', 'xa-1');
    assert.equal(r.status, 'completed', JSON.stringify(r.error));
    assert.equal(r.crashes, 2, 'the simulator found the crashes it was told to');
    const argv = readFileSync(path.join(stack.dataDir, 'runs', 'allowed', 'xa-1', 'attempt-1.log'), 'utf8');
    assert.match(argv, /argv=\[.*"--tick-ms","100","--crashes","2"\]/);
    const dead = await waitFor(
      async () => {
        const entries = await stack.redis.lrange(`${stack.prefix}traversal:tasks:dead`, 0, -1);
        return entries.length > 0 ? entries.map((e) => JSON.parse(e) as DeadLetter) : undefined;
      },
      30_000,
      'the dead letter of the out-of-range value',
    );
    assert.deepEqual(
      dead.map((e) => e.problems),
      [
        [
          'traversal.extraArgs[3]: "6" is not a value DT_TRAVERSAL_EXTRA_ARGS allows for --crashes (allowed: --crashes <int:0-5>)',
        ],
      ],
    );
  });

  it('a workflow started around the starter with arguments beyond the allow-list fails at once as InvalidTask and the tool never starts', async () => {
    const marker = path.join(os.tmpdir(), `dt-xargs-${randomUUID().slice(0, 8)}`);
    try {
      await requestTraversal(
        stack.client,
        stack.taskQueue,
        request('faults', 'xa-2', ['--tick-ms', '100', '--crash-at', '10', '--faults-once', marker]),
      );
      await requestTraversal(
        stack.client,
        stack.taskQueue,
        request('device', 'xa-3', ['--tick-ms', '100', '--device', 'xa-1']),
      );
      const faults = await stack.waitResult('faults', 'xa-2');
      assert.equal(faults.status, 'failed');
      assert.deepEqual(
        {
          type: faults.error?.type,
          kind: faults.error?.kind,
          step: faults.error?.step,
          nonRetryable: faults.error?.nonRetryable,
        },
        { type: 'InvalidTask', kind: 'task', step: 'runTraversal', nonRetryable: true },
      );
      assert.match(
        faults.error!.message,
        /traversal\.extraArgs\[2\]: "--crash-at" is not allowed by DT_TRAVERSAL_EXTRA_ARGS \(allowed: --tick-ms <int:1-60000>, --crashes <int:0-5>\)/,
      );
      assert.equal(existsSync(marker), false, 'no file at the path the task chose');
      const device = await stack.waitResult('device', 'xa-3');
      assert.equal(device.error?.type, 'InvalidTask');
      assert.match(
        device.error!.message,
        /traversal\.extraArgs\[2\]: "--device" sets --device, which the runner sets itself/,
      );
      for (const [taskId, deviceId] of [
        ['faults', 'xa-2'],
        ['device', 'xa-3'],
      ])
        assert.equal(
          existsSync(path.join(stack.dataDir, 'runs', taskId!, deviceId!, 'attempt-1.log')),
          false,
          `${taskId}: the tool never ran`,
        );
    } finally {
      rmSync(marker, { force: true });
    }
  });
});
