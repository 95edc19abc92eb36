/**
 * Property-based tests of task validation: thousands of random and mutated payloads through
 * parseTask, then a smaller sample end to end through a real TaskBridge, Redis and Temporal. Every
 * payload must land either as a started workflow or in the dead-letter list: never both, never
 * neither, and the starter never crashes.
 */
import assert from 'node:assert/strict';
import { isUtf8 } from 'node:buffer';
import { randomUUID } from 'node:crypto';
import { Client, Connection } from '@temporalio/client';
import fc from 'fast-check';
import Redis from 'ioredis';
import { InvalidTaskError } from '../src/errors';
import { deviceWorkflowId, type TraversalRequest } from '../src/messages';
import { deadLetterPayload, TaskBridge, type DeadLetter } from '../src/starter-core';
import {
  DEVICE_ID_PATTERN,
  firstInvalidUtf8,
  PACKAGE_PATTERN,
  parseTask,
  TASK_ID_PATTERN,
  type AgentDirectory,
} from '../src/task';
import { UrlPolicy } from '../src/url-policy';
import { anyPayload, mutatedTask, rawPayload, validTask } from './fuzz-payloads';

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

  it('accepts every valid task as started requests', () => {
    property(
      validTask('fz').map((t) => JSON.stringify(t)),
      1000,
    );
  });

  it('sends mutated tasks (wrong types, huge strings, unicode, NUL, deep nesting) to started or dead, naming the field', () => {
    property(
      mutatedTask('fz').map((t) => JSON.stringify(t)),
      4000,
    );
  });

  it('dead-letters raw garbage (truncated JSON, inserted bytes, 100,000 open brackets, oversized) without throwing anything else', () => {
    property(rawPayload('fz'), 3000);
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
      fc.property(fc.oneof(spliced, fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b))), (bytes) => {
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
      }),
      { numRuns: 2000, seed: SEED },
    );
  });

  it('lands every payload through a real starter, Redis and Temporal as started or dead, never both, never neither', async function () {
    this.timeout(120_000);
    const run = randomUUID().slice(0, 6);
    const prefix = `fz${run}`;
    const N = Number(process.env.FUZZ_E2E_RUNS ?? 200);
    const payloads = fc.sample(anyPayload(`${prefix}-`), { numRuns: N, seed: SEED });
    counts.e2e = payloads.length;

    const redis = new Redis(process.env.TEST_REDIS_URL!);
    const blocking = new Redis(process.env.TEST_REDIS_URL!);
    const connection = await Connection.connect({ address: process.env.TEST_TEMPORAL_ADDRESS! });
    const client = new Client({ connection });
    const started = new Map<string, number>();
    const dead = new Map<string, number>();
    const devices = new Set<string>();
    const bridge = new TaskBridge({
      redis,
      blocking,
      client,
      // No worker polls this queue: the device workflows are created and left waiting.
      taskQueue: `fuzz-${run}`,
      starterId: `fuzz-${run}`,
      agents,
      urlPolicy: policy,
      keyPrefix: `${prefix}:`,
      blockTimeoutSec: 1,
      onStarted: (req, bytes) => {
        const raw = bytes.toString('utf8');
        started.set(raw, (started.get(raw) ?? 0) + 1);
        devices.add(req.deviceId);
      },
      onDead: (_reason, bytes) => {
        const raw = bytes.toString('utf8');
        dead.set(raw, (dead.get(raw) ?? 0) + 1);
      },
    });
    try {
      // Pushed oldest first, as producers would.
      for (const p of payloads) await redis.lpush(bridge.keys.tasks, p);
      bridge.start();
      const deadline = Date.now() + 90_000;
      while (bridge.stats.items < payloads.length || (await redis.llen(bridge.keys.processing)) > 0) {
        assert.ok(Date.now() < deadline, `only ${bridge.stats.items}/${payloads.length} handled`);
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(await redis.llen(bridge.keys.tasks), 0);

      const pushed = new Map<string, number>();
      for (const p of payloads) pushed.set(p, (pushed.get(p) ?? 0) + 1);
      for (const [raw, n] of pushed) {
        const s = started.get(raw) ?? 0;
        const d = dead.get(raw) ?? 0;
        assert.ok(s > 0 || d > 0, `neither started nor dead-lettered: ${raw.slice(0, 200)}`);
        assert.ok(!(s > 0 && d > 0), `both started and dead-lettered: ${raw.slice(0, 200)}`);
        const expected = outcome(raw);
        if (expected.kind === 'dead') assert.equal(d, n, 'dead-lettered once per copy');
        else assert.equal(s, expected.requests.length * n, 'one start per device per copy');
      }

      // The dead-letter list holds the reason and the original payload of each.
      const entries = (await redis.lrange(bridge.keys.dead, 0, -1)).map((e) => JSON.parse(e) as DeadLetter);
      assert.equal(
        entries.length,
        [...dead.values()].reduce((a, b) => a + b, 0),
      );
      for (const e of entries) {
        assert.ok(dead.has(deadLetterPayload(e).toString('utf8')), 'the dead letter keeps the payload byte for byte');
        assert.match(e.reason, /^invalid task: /);
        assert.ok(e.problems.length >= 1);
      }
      // Each started request really is a running device workflow.
      for (const d of devices) {
        const desc = await client.workflow.getHandle(deviceWorkflowId(d)).describe();
        assert.equal(desc.status.name, 'RUNNING');
      }
      console.log(
        `      end to end: ${payloads.length} payloads, ${[...started.values()].reduce((a, b) => a + b, 0)} requests started on ${devices.size} devices, ${entries.length} dead letters`,
      );
    } finally {
      await bridge.stop();
      for (const d of devices)
        await client.workflow
          .getHandle(deviceWorkflowId(d))
          .terminate('fuzz test done')
          .catch(() => undefined);
      const keys = await redis.keys(`${prefix}:*`);
      if (keys.length) await redis.del(...keys);
      await connection.close();
      redis.disconnect();
      blocking.disconnect();
    }
  });
});
