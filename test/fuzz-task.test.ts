/**
 * Property-based tests of task validation: thousands of random and mutated payloads through
 * parseTask, then a smaller sample end to end through a real TaskBridge, Redis and Temporal. Every
 * payload must land either as a started workflow or in the dead-letter list: never both, never
 * neither, and the starter never crashes. "Started" is read back from Temporal (the request in the
 * device workflow's history), "dead" from the dead-letter list (the reason and the payload). The
 * inputs docs/SECURITY.md names (a BOM, a trailing NUL, 100,000 brackets, 40,000-deep nesting, …)
 * are also sent as fixed cases, each followed by a valid task that must still be started.
 */
import assert from 'node:assert/strict';
import { isUtf8 } from 'node:buffer';
import { randomUUID } from 'node:crypto';
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import fc from 'fast-check';
import type Redis from 'ioredis';
import { InvalidTaskError } from '../src/contract/errors';
import { deviceWorkflowId, type TraversalRequest } from '../src/contract/messages';
import { TaskBridge } from '../src/starter/task-bridge';
import { deadLetterPayload, type DeadLetter } from '../src/starter/dead-letters';
import { DEVICE_ID_PATTERN, PACKAGE_PATTERN, TASK_ID_PATTERN } from '../src/contract/ids';
import type { AgentDirectory } from '../src/device-registry';
import { firstInvalidUtf8, parseTask } from '../src/starter/task';
import { UrlPolicy } from '../src/net/url-policy';
import { anyPayload, garbage, mutatedTask, rawMutation, validTask } from './fuzz-payloads';
import { enqueueSignals } from './support/history';
import { terminateAll } from './support/device-tasks';
import { connectClients, type Clients } from '../dev/clients';
import { waitFor } from '../dev/wait';

/** Every problem starts with the field it is about. */
const NAMES_A_FIELD =
  /^(task|taskId|deviceId|devices(\[\d+\])?(\.deviceId|\.agentUrl)?|agentUrl|apkUrl|packageName|apkSha256|mainActivity|traversal(\.durationSec|\.extraArgs(\[\d+\])?)?): \S/;

const agents: AgentDirectory = { agentFor: () => 'http://127.0.0.1:9' };
const policy = new UrlPolicy('127.0.0.1');
const SEED = Number(process.env.FUZZ_SEED ?? 20240611);

/** Where one payload lands according to parseTask; asserts the shape of either outcome. */
function outcome(
  raw: string | Uint8Array,
): { kind: 'started'; requests: TraversalRequest[] } | { kind: 'dead'; problems: string[] } {
  let requests: TraversalRequest[];
  try {
    requests = parseTask(raw, agents, { policy });
  } catch (err) {
    assert.ok(err instanceof InvalidTaskError, `parseTask threw something else: ${String(err)}`);
    assert.ok(err.problems.length >= 1 && err.problems.length <= 21);
    for (const p of err.problems) {
      assert.match(p, NAMES_A_FIELD, `problem does not name a field: ${p.slice(0, 200)}`);
      assert.ok(p.length < 1000, `problem message of ${p.length} characters`);
    }
    return { kind: 'dead', problems: err.problems };
  }
  assert.ok(requests.length >= 1, 'a valid task yields at least one request');
  for (const r of requests) {
    assert.match(r.taskId, TASK_ID_PATTERN);
    assert.match(r.deviceId, DEVICE_ID_PATTERN);
    assert.match(r.packageName, PACKAGE_PATTERN);
    assert.match(r.apkUrl, /^https?:\/\//);
    assert.match(r.agentUrl, /^https?:\/\//);
    assert.ok(Number.isInteger(r.traversal.durationSec) && r.traversal.durationSec >= 1);
  }
  return { kind: 'started', requests };
}

/** The taskIds of every request signalled to a device workflow, in history order; [] when it never started. */
async function enqueuedTaskIds(client: Client, deviceId: string): Promise<string[]> {
  try {
    return (await enqueueSignals(client, deviceWorkflowId(deviceId))).map((s) => s.taskId);
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return [];
    throw err;
  }
}

/**
 * A task bridge named `name` over `clients`, on a task queue of the same name that no worker polls:
 * the device workflows it creates are left waiting with the requests they received.
 */
function idleBridge(clients: Clients, name: string, prefix: string): TaskBridge {
  return new TaskBridge({
    redis: clients.redis,
    blocking: clients.blocking,
    client: clients.client,
    taskQueue: name,
    starterId: name,
    agents,
    urlPolicy: policy,
    keyPrefix: `${prefix}:`,
    blockTimeoutSec: 1,
  });
}

/** Stops the bridge, terminates the device workflows it created, deletes its keys and closes the clients. */
async function tearDown(
  clients: Clients,
  bridge: TaskBridge | undefined,
  devices: Iterable<string>,
  prefix: string,
  reason: string,
): Promise<void> {
  await bridge?.stop();
  const workflowIds = [...devices].map((d) => deviceWorkflowId(d));
  await terminateAll(clients.client, workflowIds, reason);
  const keys = await clients.redis.keys(`${prefix}:*`);
  if (keys.length) await clients.redis.del(...keys);
  await clients.close();
}

/** The dead letters of a list, newest first. */
async function deadLetters(redis: Redis, key: string): Promise<DeadLetter[]> {
  return (await redis.lrange(key, 0, -1)).map((e) => JSON.parse(e) as DeadLetter);
}

describe('task validation under fuzzing', function () {
  const counts = { parse: 0, started: 0, dead: 0, e2e: 0 };

  after(() => {
    console.log(
      `      fuzzed payloads: ${counts.parse} through parseTask (${counts.started} valid, ${counts.dead} dead-lettered), ` +
        `${counts.e2e} end to end through Redis and Temporal (seed ${SEED})`,
    );
  });

  function property(arb: fc.Arbitrary<string>, numRuns: number): void {
    fc.assert(
      fc.property(arb, (raw) => {
        counts.parse++;
        const o = outcome(raw);
        counts[o.kind]++;
      }),
      { numRuns, seed: SEED },
    );
  }

  it('accepts every valid task as one started request carrying its fields', () => {
    fc.assert(
      fc.property(validTask('fz'), (task) => {
        counts.parse++;
        const o = outcome(JSON.stringify(task));
        counts[o.kind]++;
        assert.equal(o.kind, 'started', `a valid task was refused: ${o.kind === 'dead' ? o.problems.join(' | ') : ''}`);
        assert.equal(o.requests.length, 1);
        const [r] = o.requests;
        assert.deepEqual(
          [r!.taskId, r!.deviceId, r!.apkUrl, r!.packageName, r!.apkSha256, r!.mainActivity, r!.traversal.durationSec],
          [
            task.taskId,
            task.deviceId,
            task.apkUrl,
            task.packageName,
            task.apkSha256,
            task.mainActivity,
            (task.traversal as { durationSec: number }).durationSec,
          ],
        );
      }),
      { numRuns: 1000, seed: SEED },
    );
  });

  it('sends mutated tasks (wrong types, huge strings, unicode, NUL, deep nesting) to started or dead, naming the field', () => {
    property(
      mutatedTask('fz').map((t) => JSON.stringify(t)),
      4000,
    );
  });

  it('dead-letters raw garbage (truncated JSON, JSON-breaking bytes, 100,000 open brackets, 40,000-deep nesting, oversized, BOM, NUL) with the problem of its kind', () => {
    fc.assert(
      fc.property(garbage('fz'), (g) => {
        counts.parse++;
        const o = outcome(g.raw);
        counts[o.kind]++;
        assert.equal(o.kind, 'dead', `garbage was accepted: ${g.raw.slice(0, 200)}`);
        assert.match(o.problems[0]!, g.problem, g.raw.slice(0, 200));
        if (o.problems[0]!.startsWith('task: not JSON') || o.problems[0]!.startsWith('task: must be'))
          assert.equal(o.problems.length, 1, 'a payload refused as a whole has one problem');
      }),
      { numRuns: 3000, seed: SEED },
    );
  });

  it('sends valid tasks with any characters inserted or replaced to started or dead, naming the field', () => {
    property(rawMutation('fz'), 2000);
  });

  it('refuses an item with any invalid UTF-8 byte sequence, naming the offset of the first bad byte', () => {
    const spliced = fc
      .tuple(validTask('fz'), fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 4 }))
      .map(([t, n, ins]) => {
        const s = Buffer.from(JSON.stringify(t));
        const at = n % s.length;
        return Buffer.concat([s.subarray(0, at), ins, s.subarray(at)]);
      });
    fc.assert(
      fc.property(
        fc.oneof(
          spliced,
          fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)),
        ),
        (bytes) => {
          counts.parse++;
          const bad = firstInvalidUtf8(bytes);
          assert.equal(bad === -1, isUtf8(bytes), 'the offset finder agrees with Node on validity');
          const problemsOf = (raw: string | Uint8Array) => {
            try {
              parseTask(raw, agents, { policy });
              return undefined;
            } catch (err) {
              assert.ok(err instanceof InvalidTaskError, `parseTask threw something else: ${String(err)}`);
              return err.problems;
            }
          };
          const problems = problemsOf(bytes);
          counts[problems ? 'dead' : 'started']++;
          if (bad === -1) {
            assert.deepEqual(problems, problemsOf(bytes.toString('utf8')), 'valid UTF-8 parses as its text does');
            return;
          }
          assert.ok(isUtf8(bytes.subarray(0, bad)) && !isUtf8(bytes.subarray(0, bad + 4)), `first bad byte at ${bad}`);
          assert.deepEqual(problems, [
            `task: is not valid UTF-8 (first bad byte at offset ${bad}); JSON text must be UTF-8 (RFC 8259)`,
          ]);
        },
      ),
      { numRuns: 2000, seed: SEED },
    );
  });

  it('lands every payload through a real starter, Redis and Temporal as started or dead, never both, never neither', async function () {
    this.timeout(180_000);
    const run = randomUUID().slice(0, 6);
    const prefix = `fz${run}`;
    const N = Number(process.env.FUZZ_E2E_RUNS ?? 200);
    const payloads = fc.sample(anyPayload(`${prefix}-`), { numRuns: N, seed: SEED });
    counts.e2e = payloads.length;

    const clients = await connectClients();
    const { client, redis } = clients;
    const devices = new Set<string>();
    const bridge = idleBridge(clients, `fuzz-${run}`, prefix);
    try {
      // Pushed oldest first, as producers would. Redis holds bytes: what the starter sees is the
      // UTF-8 of each payload, so that is what the expectations are computed from.
      const pushed = new Map<string, { bytes: Buffer; copies: number }>();
      for (const p of payloads) {
        const bytes = Buffer.from(p, 'utf8');
        const key = bytes.toString('base64');
        pushed.set(key, { bytes, copies: (pushed.get(key)?.copies ?? 0) + 1 });
        await redis.lpush(bridge.keys.tasks, bytes);
      }
      bridge.start();
      await waitFor(
        async () =>
          bridge.stats.items >= payloads.length &&
          (await redis.llen(bridge.keys.tasks)) === 0 &&
          (await redis.llen(bridge.keys.processing)) === 0,
        150_000,
        `all ${payloads.length} payloads handled (handled so far: ${bridge.stats.items})`,
      );

      // What should have happened, payload by payload: requests per device, dead letters per payload.
      const expectedRequests = new Map<string, string[]>();
      const expectedDead = new Map<string, { copies: number; reason: string }>();
      for (const [key, { bytes, copies }] of pushed) {
        const o = outcome(bytes);
        if (o.kind === 'dead') {
          expectedDead.set(key, { copies, reason: `invalid task: ${o.problems.join('; ')}` });
          continue;
        }
        for (let i = 0; i < copies; i++)
          for (const r of o.requests) {
            devices.add(r.deviceId);
            expectedRequests.set(r.deviceId, [...(expectedRequests.get(r.deviceId) ?? []), r.taskId]);
          }
      }

      // Dead: each refused payload is in the dead-letter list once per copy, byte for byte, with its reason.
      const entries = await deadLetters(redis, bridge.keys.dead);
      const seen = new Map<string, number>();
      for (const e of entries) {
        const key = deadLetterPayload(e).toString('base64');
        const want = expectedDead.get(key);
        assert.ok(want, `dead-lettered although valid: ${deadLetterPayload(e).toString('utf8').slice(0, 200)}`);
        assert.equal(e.reason, want.reason);
        assert.ok(e.problems.length >= 1);
        seen.set(key, (seen.get(key) ?? 0) + 1);
      }
      for (const [key, want] of expectedDead) {
        const raw = pushed.get(key)!.bytes.toString('utf8').slice(0, 200);
        assert.equal(seen.get(key) ?? 0, want.copies, `dead letters of ${raw}`);
      }

      // Started: Temporal holds every request of every valid payload, in its device workflow's
      // history, and nothing else (a multiset: one signal per device per copy).
      let signals = 0;
      for (const [deviceId, taskIds] of expectedRequests) {
        const received = await enqueuedTaskIds(client, deviceId);
        assert.deepEqual([...received].sort(), [...taskIds].sort(), `requests signalled to ${deviceId}`);
        signals += received.length;
        const desc = await client.workflow.getHandle(deviceWorkflowId(deviceId)).describe();
        assert.equal(desc.status.name, 'RUNNING');
      }
      assert.equal(bridge.stats.started, signals, 'the starter counted what Temporal received');
      assert.equal(bridge.stats.dead, entries.length);
      console.log(
        `      end to end: ${payloads.length} payloads, ${signals} requests in the histories of ${devices.size} device workflows, ${entries.length} dead letters`,
      );
    } finally {
      await tearDown(clients, bridge, devices, prefix, 'fuzz test done');
    }
  });
});

describe('the hostile payloads docs/SECURITY.md names, through a real starter, Redis and Temporal', function () {
  this.timeout(90_000);
  const run = randomUUID().slice(0, 6);
  const prefix = `fx${run}`;
  let clients: Clients | undefined;
  let redis: Redis;
  let client: Client;
  let bridge: TaskBridge;
  let ended = false;
  const devices: string[] = [];
  let n = 0;

  /** A valid task for a device of its own. */
  function validFor(): Record<string, unknown> {
    const deviceId = `${prefix}-d${++n}`;
    devices.push(deviceId);
    return {
      taskId: `task-${n}`,
      deviceId,
      apkUrl: 'http://127.0.0.1:9/app.apk',
      packageName: 'com.example.fixed',
      traversal: { durationSec: 60 },
    };
  }

  before(async () => {
    clients = await connectClients();
    ({ client, redis } = clients);
    bridge = idleBridge(clients, `fixed-${run}`, prefix).start();
    void bridge.done().then(() => (ended = true));
  });
  after(async () => {
    if (clients) await tearDown(clients, bridge, devices, prefix, 'fixed cases done');
  });

  /**
   * Pushes `raw`, then a valid task behind it. Returns the dead letter of `raw` once the valid task
   * has reached its device workflow: the starter handled the payload and kept running.
   */
  async function deadLetterOf(raw: Buffer, name: string): Promise<DeadLetter> {
    const canary = validFor();
    await redis.lpush(bridge.keys.tasks, raw);
    await redis.lpush(bridge.keys.tasks, JSON.stringify(canary));
    const entry = await waitFor(
      async () => (await deadLetters(redis, bridge.keys.dead)).find((e) => deadLetterPayload(e).equals(raw)),
      60_000,
      `the dead letter of ${name}`,
    );
    await waitFor(
      async () => (await enqueuedTaskIds(client, canary.deviceId as string)).includes(canary.taskId as string),
      60_000,
      `the valid task after ${name} in its device workflow`,
    );
    assert.equal(ended, false, 'the starter is still consuming');
    return entry;
  }

  const NOT_JSON = /^invalid task: task: not JSON: [^;]+$/;
  const cases: [string, (task: string) => string, RegExp | string][] = [
    ['a BOM before the JSON', (t) => `\ufeff${t}`, NOT_JSON],
    ['a trailing NUL', (t) => `${t}\0`, NOT_JSON],
    ['100,000 open brackets', () => '['.repeat(100_000), 'invalid task: task: must be at most 65536 bytes, got 100000'],
    [
      'a valid task nested 40,000 arrays deep',
      (t) => '['.repeat(40_000) + t + ']'.repeat(40_000),
      /^invalid task: task: must be at most 65536 bytes, got 8\d{4}$/,
    ],
    ['60,000 open brackets (under the size cap)', () => '['.repeat(60_000), NOT_JSON],
    [
      'a valid task nested 30,000 arrays deep (under the size cap)',
      (t) => '['.repeat(30_000) + t + ']'.repeat(30_000),
      'invalid task: task: must be a JSON object, got an array',
    ],
    ['truncated JSON', () => '{"taskId": "t-1", ', NOT_JSON],
    ['a JSON array', (t) => `[${t}]`, 'invalid task: task: must be a JSON object, got an array'],
    ['a JSON string', (t) => JSON.stringify(t), /^invalid task: task: must be a JSON object, got "\{\\"taskId\\"/],
    [
      'a payload over 64 KiB',
      (t) => t.replace('}', `,"pad":"${'x'.repeat(70_000)}"}`),
      /^invalid task: task: must be at most 65536 bytes, got 70\d{3}$/,
    ],
    ['a control character inserted into the taskId', (t) => t.replace('"task-', '"task-\u0001'), NOT_JSON],
    ['a byte replaced by a control character', (t) => t.replace('{', '\u0002'), NOT_JSON],
  ];
  for (const [name, make, reason] of cases) {
    it(`dead-letters ${name} with its reason, starts nothing for it and keeps consuming`, async () => {
      const inner = validFor();
      const raw = Buffer.from(make(JSON.stringify(inner)), 'utf8');
      const entry = await deadLetterOf(raw, name);
      if (typeof reason === 'string') assert.equal(entry.reason, reason);
      else assert.match(entry.reason, reason);
      assert.equal(entry.problems.length, 1, entry.problems.join(' | '));
      assert.equal(entry.reason, `invalid task: ${entry.problems[0]}`);
      assert.deepEqual(await enqueuedTaskIds(client, inner.deviceId as string), [], 'nothing was started for it');
      assert.ok(entry.reason.length < 1000, `a reason of ${entry.reason.length} characters`);
    });
  }

  it('starts a valid task: its request is in the device workflow history', async () => {
    const task = validFor();
    await redis.lpush(bridge.keys.tasks, JSON.stringify(task));
    const received = await waitFor(
      async () => {
        const ids = await enqueuedTaskIds(client, task.deviceId as string);
        return ids.length > 0 ? ids : undefined;
      },
      60_000,
      'the request in the device workflow',
    );
    assert.deepEqual(received, [task.taskId]);
    assert.equal(
      (await deadLetters(redis, bridge.keys.dead)).some((e) =>
        deadLetterPayload(e)
          .toString()
          .includes(task.deviceId as string),
      ),
      false,
      'and it is not dead-lettered',
    );
  });
});
