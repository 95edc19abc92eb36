/**
 * An APK origin that answers 408 (request timeout) or 429 (too many requests) is busy, not wrong:
 * resolveApk fails retryably and Temporal's retry finds the APK, in both delivery modes. Real parts:
 * the test stack (Temporal dev server, Redis, worker, agent and origin simulators) and, in front of
 * the origin, a small real HTTP server that answers the first request of each path with the status
 * under test and forwards the later ones.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { traversalWorkflow } from '../src/workflows/traversal';
import { traversalWorkflowId, type TraversalRequest } from '../src/contract/messages';
import { startStack, type Stack } from '../dev/stack';
import { activityStarts } from './support/history';

const MiB = 1024 * 1024;

/** One answer of the front server: the request method and the status sent back. */
interface Answer {
  method: string;
  status: number;
}

/** Serves `/<label>/<status>/<name>`: `status` to the first request of a path, the origin's answer to the rest. */
class BusyFront {
  readonly answers = new Map<string, Answer[]>();
  private readonly server: http.Server;

  constructor(private readonly origin: URL) {
    this.server = http.createServer((req, res) => this.serve(req, res));
  }

  /** Listens on a free loopback port and returns the base URL. */
  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Stops listening and drops open connections. */
  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private serve(req: http.IncomingMessage, res: http.ServerResponse): void {
    const [, label = '', status = '', name = ''] = (req.url ?? '').split('/');
    const seen = this.answers.get(label) ?? [];
    this.answers.set(label, seen);
    const method = req.method ?? 'GET';
    if (seen.length === 0) {
      seen.push({ method, status: Number(status) });
      res.writeHead(Number(status), {
        'content-type': 'text/plain',
        ...(status === '429' ? { 'retry-after': '1' } : {}),
      });
      res.end(`busy: HTTP ${status}\n`);
      return;
    }
    const headers = { ...req.headers, host: this.origin.host };
    const upstream = http.request(new URL(`/apps/${name}`, this.origin), { method, headers }, (up) => {
      seen.push({ method, status: up.statusCode ?? 0 });
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
    });
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
  }
}

/** One run per delivery mode and status, each with its own device and APK (a cached APK would not be fetched again). */
const CASES = (['cache', 'direct'] as const).flatMap((delivery) =>
  [408, 429].map((status) => ({ delivery, status, label: `${delivery}-${status}` })),
);

describe('an APK origin that answers 408 or 429', function () {
  let stack: Stack;
  let front: BusyFront;
  let frontUrl: string;

  before(async function () {
    stack = await startStack({
      devices: CASES.map((c) => `busy-${c.label}`),
      apks: CASES.map((c) => ({ name: `${c.label}.apk`, size: 1 * MiB })),
    });
    front = new BusyFront(new URL(stack.origin.url(`${CASES[0]!.label}.apk`)));
    frontUrl = await front.start();
  });
  after(async function () {
    await front?.close();
    await stack?.stop();
  });

  for (const { delivery, status, label } of CASES) {
    it(`in ${delivery} delivery, a ${status} fails resolveApk as retryable ApkDownloadFailed and the retry gets the APK`, async function () {
      const deviceId = `busy-${label}`;
      const req: TraversalRequest = {
        taskId: label,
        deviceId,
        agentUrl: stack.agent.url,
        apkUrl: `${frontUrl}/${label}/${status}/${label}.apk`,
        apkSha256: stack.apks[`${label}.apk`]!.sha256,
        packageName: 'com.example.busy',
        traversal: { durationSec: 0, extraArgs: ['--tick-ms', '50'] },
        policy: { heartbeatTimeoutMs: 10_000, initialRetryMs: 200, measureLaunch: false, delivery },
      };
      const workflowId = traversalWorkflowId(req.taskId, req.deviceId);
      const result = await stack.client.workflow.execute(traversalWorkflow, {
        workflowId,
        taskQueue: stack.taskQueue,
        args: [req],
      });
      assert.equal(result.status, 'completed', JSON.stringify(result.error));

      // History keeps the last attempt of an activity, with the failure of the one before.
      const history = await stack.client.workflow.getHandle(workflowId).fetchHistory();
      const resolve = activityStarts(history.events ?? [], 'resolveApk')[0]?.activityTaskStartedEventAttributes;
      assert.equal(resolve?.attempt, 2, 'resolveApk succeeded on its second attempt');
      assert.equal(resolve?.lastFailure?.applicationFailureInfo?.type, 'ApkDownloadFailed');
      assert.equal(resolve?.lastFailure?.applicationFailureInfo?.nonRetryable ?? false, false);
      assert.match(resolve?.lastFailure?.message ?? '', new RegExp(`HTTP ${status}`));

      const answers = front.answers.get(label) ?? [];
      assert.deepEqual(
        answers.map((a) => a.status),
        [status, ...answers.slice(1).map(() => 200)],
        'the first request was answered busy, the later ones served',
      );
      const install = stack.agent.calls.find((c) => c.deviceId === deviceId && c.op === 'install');
      if (delivery === 'direct') {
        assert.equal(install?.url, req.apkUrl, 'the agent installed from the origin');
        assert.deepEqual(
          answers.map((a) => a.method),
          ['HEAD', 'HEAD', 'GET'],
          'the worker checked twice, the agent fetched once',
        );
      } else {
        assert.ok(
          install?.url?.startsWith(stack.worker.artifactUrl),
          `the agent installed from the worker: ${install?.url}`,
        );
        assert.deepEqual(
          answers.map((a) => a.method),
          ['GET', 'GET'],
          'the worker downloaded twice, the agent never went to the origin',
        );
      }
    });
  }
});
