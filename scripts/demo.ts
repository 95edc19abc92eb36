/**
 * `npm run demo`: the whole local stack on embedded defaults — Temporal dev server (SQLite file,
 * Web UI on :8233), Redis, 5 simulated devices, an origin serving generated APKs, the worker and
 * the starter as separate processes — then a run of tasks with live progress and a summary.
 * Ctrl-C stops everything the demo started, the starter and worker before the servers they need
 * (they run in their own process groups for that); a second Ctrl-C stops them all at once.
 *
 * Durable across restarts: the origin, the device agent simulator and the worker's artifact server
 * listen on fixed ports, because their URLs are recorded in each traversal request. Temporal keeps
 * the runs in `.data/temporal.db` and Redis its append-only file, so a demo stopped mid-run and
 * started again finds the runs in flight, says so, and watches them to the end with its new ones.
 * The simulator keeps its devices' installed apps in `.data/demo/agent-state.json`, as phones do.
 *
 * Options (`npm run demo -- --duration 20`):
 *   --apk-mib N        size of demo-app.apk, MiB (default 100; runs in flight keep the size they started with)
 *   --duration S       traversal seconds (default 8)
 *   --timeout-sec S    give up waiting for results after S seconds (default 600)
 *   --keep-cache       do not empty the demo's APK cache first (kept anyway while runs are in flight)
 *   --origin-port P    port of the APK origin (default 7390)
 *   --agent-port P     port of the device agent simulator (default 7301)
 *   --artifact-port P  port of the worker's artifact and metrics server (default DT_ARTIFACT_PORT, 7380)
 *   --engine E         jar (default: the traversal simulator jar on simulated devices), monkey or fastbot
 *                      (Android's Monkey or Fastbot on phones through adb and the adb agent)
 *   --phones fake|real with --engine monkey|fastbot: five fake phones on a real adb server (default),
 *                      or the phones `adb devices` lists (then also --apk-file F --package P)
 *   --phone-port P     first port of the fake phones (default 5601; five ports from there)
 *   --hosts N          a farm of N phone hosts on this machine (1-5, jar engine): each its own agent
 *                      simulator (--agent-port + i), worker (--artifact-port + i, own data folder and
 *                      APK cache, DT_HOST_ID demo-host-<i>), the devices spread over them; the summary
 *                      shows where each host's APK came from (the origin once, then peers)
 * A restarted demo must use the ports of the one it resumes. Temporal and Redis come from
 * TEMPORAL_ADDRESS and REDIS_URL (reused when reachable), the task queue from TASK_QUEUE.
 */
import { Client, Connection } from '@temporalio/client';
import Redis from 'ioredis';
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { loadConfig, PROJECT_ROOT } from '../src/config';
import { resultKey } from '../src/contract/redis-keys';
import { progressQuery, traversalWorkflowId, type TraversalResult } from '../src/contract/messages';
import { describeInFlight, findInFlight, pendingTasks, runningTraversals, type InFlightRun } from '../dev/in-flight';
import { canConnect, portIsFree, waitForPort } from '../dev/ports';
import { spawnLogged, type LoggedProcess } from '../dev/process';
import { ensureRedis, type LocalRedis } from '../dev/redis-local';
import { mib, RssSampler } from '../dev/rss';
import { Scope } from '../dev/scope';
import { ensureSearchAttributes, findTemporalCli, startDevServer, type DevServer } from '../dev/temporal-dev';
import { deviceStates, progressRow, queuedReason, type BoardRow } from '../src/starter/progress-board';
import { AgentSimulator } from '../sim/agent-sim';
import { ApkOrigin } from '../sim/origin';
import { startPhoneBench } from '../dev/phones';
import { adbFor } from '../src/adb';
import { AdbAgent } from '../src/agent/http';
import { groupTaskFindings, readTaskFindings, type TaskFindings } from '../src/findings/read';
import { taskFindingsTable, textTable } from '../src/findings/table';
import { starterKeys } from '../src/contract/redis-keys';
import { temporalSettings } from '../src/temporal-connection';

let interrupted = false;
/** Processes the demo started, for a second Ctrl-C that does not wait. */
const children: ChildProcess[] = [];
const SIM_DEVICES = ['sim-1', 'sim-2', 'sim-3', 'sim-4', 'sim-5'];
/** The devices of this demo: the simulator's, or the phones the adb agent lists (set once, at start). */
const DEVICES: string[] = [];
/** Fake phones the demo starts for --engine monkey|fastbot. */
const FAKE_PHONES = 5;
/** What Monkey meets on the demo's fake phones: two crashes and an ANR of the demo app. */
const DEMO_SCENARIO = {
  events: [
    {
      atEvent: 40,
      kind: 'crash' as const,
      exception: 'java.lang.IllegalStateException',
      message: 'cart is empty',
      frames: [
        'at com.example.demo.cart.CartPresenter.checkout(CartPresenter.kt:88)',
        'at com.example.demo.cart.CartFragment.onPayClicked(CartFragment.kt:41)',
        'at android.view.View.performClick(View.java:7448)',
      ],
    },
    {
      atEvent: 90,
      kind: 'crash' as const,
      exception: 'java.lang.NullPointerException',
      message: "Attempt to invoke virtual method 'int java.lang.String.length()' on a null object reference",
      frames: [
        'at com.example.demo.search.QueryParser.parse(QueryParser.java:17)',
        'at com.example.demo.search.SearchActivity.onQuery(SearchActivity.java:63)',
        'at android.widget.TextView.onEditorAction(TextView.java:6910)',
      ],
    },
    { atEvent: 130, kind: 'anr' as const, message: 'Input dispatching timed out' },
  ],
};
const MiB = 1024 * 1024;
const STARTER_ID = 'demo-starter';
const USAGE = `usage: npm run demo -- [--apk-mib 100] [--duration 8] [--timeout-sec 600] [--keep-cache]
                        [--origin-port 7390] [--agent-port 7301] [--artifact-port 7380]
                        [--engine jar|monkey|fastbot] [--phones fake|real] [--phone-port 5601] [--hosts 1]
                        [--apk-file app.apk --package com.your.app]   (for --phones real)`;

/** One traversal the demo watches: pushed by this demo, or resumed from an earlier one. */
interface Job {
  taskId: string;
  deviceId: string;
  packageName: string;
  resumed: boolean;
}

/** What the demo remembers between runs (`<data>/demo/demo.json`). */
interface DemoMemory {
  apkMiB?: number;
  ports?: Record<string, number>;
  /** Set once tasks are pushed, cleared after the summary: an earlier demo that ends with it set was stopped mid-run. */
  unfinished?: boolean;
  /** --hosts of the demo that pushed the tasks: its runs wait for those hosts. */
  hosts?: number;
}

interface DemoArgs {
  engine: 'jar' | 'monkey' | 'fastbot';
  phones: 'fake' | 'real';
  apkFile?: string;
  packageName?: string;
  phonePort: number;
  apkMiB: number;
  durationSec: number;
  timeoutSec: number;
  keepCache: boolean;
  /** Phone hosts of the farm the demo makes on this machine (1: one worker and one agent, as before). */
  hosts: number;
  ports: { origin: number; agent: number; artifact: number };
}

/** One phone host of a demo farm: its name, agent, devices and ports. */
interface DemoHost {
  id: string;
  agentUrl: string;
  devices: string[];
  artifactPort: number;
}

async function main(): Promise<void> {
  const config = loadConfig();
  const temporal = temporalSettings();
  const args = parseArgs(process.argv.slice(2), config.artifactPort);
  if (!args) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const demoDir = path.join(config.dataDir, 'demo');
  mkdirSync(demoDir, { recursive: true });
  const keys = starterKeys(STARTER_ID, config.redisKeyPrefix);
  // One stop, however many callers: the finally below waits for the one a Ctrl-C began.
  const scope = new Scope('demo');
  const stopAll = () => scope.close();
  process.on('SIGINT', () => {
    if (interrupted) {
      process.stdout.write('second Ctrl-C: stopping all at once\n');
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
      process.exit(130);
    }
    interrupted = true;
    process.stdout.write('\nstopping everything the demo started (Ctrl-C again to not wait)…\n');
    void stopAll().then(() => process.exit(130));
  });

  try {
    // 0. The fixed ports, before anything starts: a taken one is someone else's program.
    await checkPorts([
      { port: args.ports.origin, what: 'the APK origin', flag: '--origin-port' },
      ...Array.from({ length: args.hosts }, (_, i) => [
        {
          port: args.ports.agent + i,
          what: `the device agent simulator${args.hosts > 1 ? ` of demo-host-${i + 1}` : ''}`,
          flag: '--agent-port',
        },
        {
          port: args.ports.artifact + i,
          what: `the artifact server of ${args.hosts > 1 ? `demo-host-${i + 1}'s worker` : 'the worker'}`,
          flag: '--artifact-port',
        },
      ]).flat(),
      ...(onFakePhones(args)
        ? Array.from({ length: FAKE_PHONES }, (_, i) => ({
            port: args.phonePort + i,
            what: `fake phone ${i + 1}`,
            flag: '--phone-port',
          }))
        : []),
    ]);

    // 1. Temporal: reuse a reachable server, else start the dev server with a SQLite file.
    const [host, portText] = temporal.address.split(':') as [string, string];
    let server: DevServer | undefined;
    let uiUrl = 'http://127.0.0.1:8233';
    if (await canConnect(host, Number(portText))) {
      step(`Temporal: using the server at ${temporal.address}`);
      await ensureSearchAttributes(findTemporalCli(), temporal.address, temporal.namespace).catch((err) =>
        step(`(could not check search attributes: ${(err as Error).message.split('\n')[0]})`),
      );
    } else {
      step(
        `Temporal: starting the dev server (SQLite ${path.relative(PROJECT_ROOT, path.join(config.dataDir, 'temporal.db'))}, Web UI :8233)…`,
      );
      server = await startDevServer({
        ip: host,
        port: Number(portText),
        uiPort: 8233,
        dbFile: path.join(config.dataDir, 'temporal.db'),
        namespace: temporal.namespace,
        logFile: path.join(demoDir, 'temporal.log'),
        detached: true,
      });
      uiUrl = server.uiUrl!;
      children.push(server.process);
      scope.add('Temporal dev server', () => server!.stop());
    }
    // Not closed by the demo: closing it under a query that is still retrying makes grpc-js throw
    // from a timer; the process exit ends it.
    const connection = await Connection.connect(temporal.connectionOptions as Parameters<typeof Connection.connect>[0]);
    const client = new Client({ connection, namespace: temporal.namespace });

    // 2. Redis.
    const redisLocal: LocalRedis = await ensureRedis(config.redisUrl, path.join(config.dataDir, 'redis'), {
      detached: true,
    });
    if (redisLocal.process) children.push(redisLocal.process);
    scope.add('redis-server', () => redisLocal.stop());
    step(`Redis: ${redisLocal.process ? 'started' : 'using'} ${config.redisUrl}`);
    const redis = new Redis(config.redisUrl);
    redis.on('error', () => undefined); // a Redis that went away ends the watch with its own error
    scope.add('Redis connection', () => redis.disconnect());

    // 3. Was an earlier demo stopped mid-run? Its runs decide what must not change: the APK they
    //    verify by hash, the cache they install from. (Visibility and Redis only: no worker runs yet.)
    const memoryFile = path.join(demoDir, 'demo.json');
    const memory = readMemory(memoryFile);
    const resuming =
      memory.unfinished === true ||
      (await runningTraversals(client, config.taskQueue, 1)).length > 0 ||
      (await pendingTasks(redis, [keys.tasks, keys.processing], 'demo-')).length > 0;
    let apkMiB = args.apkMiB;
    if (resuming) {
      if (memory.apkMiB !== undefined && memory.apkMiB !== apkMiB) {
        step(
          `Runs in flight verify a ${memory.apkMiB} MiB demo-app.apk: keeping that size (--apk-mib ${apkMiB} applies once none is in flight)`,
        );
        apkMiB = memory.apkMiB;
      }
      if ((memory.hosts ?? 1) !== args.hosts) {
        step(
          `Runs in flight belong to the phone hosts of a demo with --hosts ${memory.hosts ?? 1}: keeping that farm (--hosts ${args.hosts} applies once none is in flight)`,
        );
        args.hosts = memory.hosts ?? 1;
      }
      for (const [name, port] of Object.entries(memory.ports ?? {})) {
        const now = args.ports[name as keyof DemoArgs['ports']];
        if (now !== port)
          step(`Warning: runs in flight were started with --${name}-port ${port}; with ${now} they cannot reach it`);
      }
    } else if (!args.keepCache) {
      // Start from an empty APK cache so the summary shows the dedupe (one origin download per APK).
      rmSync(path.join(demoDir, 'apk-cache'), { recursive: true, force: true });
      for (let i = 1; i <= SIM_DEVICES.length; i++)
        rmSync(path.join(demoDir, 'hosts', `demo-host-${i}`, 'apk-cache'), { recursive: true, force: true });
    }
    const remember = (m: DemoMemory) => writeFileSync(memoryFile, JSON.stringify(m, null, 2));
    remember({ apkMiB, ports: args.ports, unfinished: resuming, hosts: args.hosts });

    // 4. Origin with two generated APKs, and 5 simulated devices, on their fixed ports.
    const origin = new ApkOrigin({ dir: path.join(demoDir, 'apks') });
    step(`Origin: generating APKs (${apkMiB} MiB and 20 MiB; reused on later runs)…`);
    const big = args.apkFile
      ? await origin.addFile('demo-app.apk', args.apkFile)
      : await origin.addApk('demo-app.apk', apkMiB * MiB);
    const lite = await origin.addApk('demo-lite.apk', 20 * MiB);
    const originUrl = await listen(() => origin.start(args.ports.origin), args.ports.origin, '--origin-port');
    scope.add('APK origin', () => origin.close());
    const farm = args.hosts > 1 ? await demoFarm(scope, args, demoDir) : undefined;
    const { agentUrl, devices } = farm
      ? { agentUrl: farm.hosts[0]!.agentUrl, devices: farm.hosts.flatMap((h) => h.devices) }
      : args.engine === 'jar'
        ? await simulatedDevices(scope, args, demoDir)
        : await adbPhones(scope, args, demoDir, config);
    DEVICES.push(...devices);
    if (farm)
      step(
        `Origin: ${originUrl}; a farm of ${farm.hosts.length} hosts: ` +
          farm.hosts.map((h) => `${h.id} (${h.devices.join(', ')}; agent ${h.agentUrl})`).join(', '),
      );
    else step(`Origin: ${originUrl}; devices ${DEVICES.join(', ')} on the agent at ${agentUrl}`);

    // 5. Worker and starter as real processes (compiled JS, as in production).
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      TEMPORAL_ADDRESS: temporal.address,
      TEMPORAL_NAMESPACE: temporal.namespace,
      REDIS_URL: config.redisUrl,
      TASK_QUEUE: config.taskQueue,
      DT_DATA_DIR: demoDir,
      DT_ARTIFACT_PORT: String(args.ports.artifact),
      // A farm names each device's agent and host in a registry; one host has the one agent.
      ...(farm ? { DT_DEVICE_REGISTRY: farm.registryFile } : { DT_DEFAULT_AGENT_URL: agentUrl }),
      // The demo's origin and devices listen on loopback, which the URL policy refuses unless allow-listed.
      DT_ALLOWED_HOSTS: '127.0.0.1,localhost',
      // The demo's tasks ask the simulator for findings; nothing else may reach its argv.
      DT_TRAVERSAL_EXTRA_ARGS: process.env.DT_TRAVERSAL_EXTRA_ARGS ?? '--crashes <int:0-10>, --anrs <int:0-10>',
      DT_ENGINE: args.engine,
      // Fake phones take an event every 50 ms, so a short demo still reaches the scenario's crashes.
      ...(onFakePhones(args) ? { DT_ENGINE_THROTTLE: process.env.DT_ENGINE_THROTTLE ?? '50' } : {}),
      DT_STARTER_ID: STARTER_ID,
      DT_WORKFLOW_BUNDLE: process.env.DT_WORKFLOW_BUNDLE ?? path.join(PROJECT_ROOT, 'lib', 'workflow-bundle.js'),
      DT_HEARTBEAT_TIMEOUT: process.env.DT_HEARTBEAT_TIMEOUT ?? '15s',
      // Each Ctrl-C during a traversal ends one attempt of it (the worker fails it on shutdown), so
      // the demo allows more than the default 3: a run stopped twice must still finish.
      DT_MAX_ATTEMPTS: process.env.DT_MAX_ATTEMPTS ?? '10',
    };
    // The memory flags of README "Sizing a container" (one malloc arena, small young generation, heap cap).
    const workerEnv = {
      ...env,
      MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? '1',
      NODE_OPTIONS: process.env.NODE_OPTIONS ?? '--max-semi-space-size=1 --max-old-space-size=256',
    };
    // One worker per host; each has its own data folder (APK cache) on a farm, as separate machines would.
    const workerHosts = farm?.hosts ?? [undefined];
    const workers = workerHosts.map((h) =>
      launch(
        scope,
        'worker',
        h
          ? {
              ...workerEnv,
              DT_HOST_ID: h.id,
              DT_DATA_DIR: path.join(demoDir, 'hosts', h.id),
              DT_ARTIFACT_PORT: String(h.artifactPort),
              // One report sink for the farm, as a real one shares an HTTP sink or a network folder.
              DT_REPORT_SINK: process.env.DT_REPORT_SINK ?? `file://${path.join(demoDir, 'reports')}`,
            }
          : workerEnv,
        demoDir,
        h?.id,
      ),
    );
    const worker = workers[0]!;
    const sampler = new RssSampler(worker.pid).start();
    scope.add('RSS sampler', () => sampler.stop());
    for (const [i, w] of workers.entries())
      await waitForPort('127.0.0.1', args.ports.artifact + i, 120_000, 'worker', () => w.exitNote());
    const idleRss = sampler.sample() ?? 0;
    for (const [i, w] of workers.entries())
      step(
        `Worker${farm ? ` of ${farm.hosts[i]!.id}` : ''}: pid ${w.pid}, artifact server and /metrics on http://127.0.0.1:${args.ports.artifact + i}` +
          (i === 0 ? `, idle RSS ${mib(idleRss)}` : ''),
      );

    // 6. With a worker answering queries: what the earlier runs are doing (before the starter takes
    //    the tasks an earlier demo left in Redis, so they are counted once).
    const inFlight = await findInFlight(client, redis, {
      taskQueue: config.taskQueue,
      devices: DEVICES,
      taskLists: [keys.tasks, keys.processing],
      taskIdPrefix: 'demo-',
    });
    step(inFlight.length ? describeInFlight(inFlight) : 'No runs in flight from an earlier demo');

    const starter = launch(scope, 'starter', env, demoDir);
    step(`Starter: pid ${starter.pid}, consuming ${keys.tasks}`);

    // 7. Tasks: 5 devices on the big APK, then the lite APK on two of them.
    const stamp = new Date().toISOString().replace(/[-:T]/g, '').slice(0, 14);
    const taskA = `demo-${stamp}-a`;
    const taskB = `demo-${stamp}-b`;
    // The simulator jar is told which findings to make; Monkey and Fastbot find what the phones do.
    const traversal =
      args.engine === 'jar'
        ? { durationSec: args.durationSec, extraArgs: ['--crashes', '2', '--anrs', '1'] }
        : { durationSec: args.durationSec };
    const packageA = args.packageName ?? 'com.example.demo';
    const liteDevices = args.phones === 'real' ? [] : DEVICES.slice(0, 2);
    await redis.lpush(
      keys.tasks,
      JSON.stringify({
        taskId: taskA,
        devices: DEVICES,
        apkUrl: origin.url('demo-app.apk'),
        apkSha256: big.sha256,
        packageName: packageA,
        traversal,
      }),
      ...(liteDevices.length
        ? [
            JSON.stringify({
              taskId: taskB,
              devices: liteDevices,
              apkUrl: origin.url('demo-lite.apk'),
              apkSha256: lite.sha256,
              packageName: 'com.example.lite',
              traversal: { durationSec: Math.max(2, Math.round(args.durationSec / 2)) },
            }),
          ]
        : []),
    );
    remember({ apkMiB, ports: args.ports, unfinished: true, hosts: args.hosts });
    step(
      `Pushed ${liteDevices.length ? '2 tasks' : '1 task'} (${DEVICES.length + liteDevices.length} traversals): ${taskA} on ${DEVICES.length} devices` +
        (liteDevices.length ? `, ${taskB} on ${liteDevices.join(' and ')}` : ''),
    );
    const jobs: Job[] = [
      ...inFlight.map((r: InFlightRun) => ({
        taskId: r.taskId,
        deviceId: r.deviceId,
        packageName: r.packageName ?? '?',
        resumed: true,
      })),
      ...DEVICES.map((d) => ({ taskId: taskA, deviceId: d, packageName: packageA, resumed: false })),
      ...liteDevices.map((d) => ({
        taskId: taskB,
        deviceId: d,
        packageName: 'com.example.lite',
        resumed: false,
      })),
    ];

    // 8. Live progress until every result, old and new, is in Redis.
    const results = await watch(jobs, {
      client,
      redis,
      taskQueue: config.taskQueue,
      keyPrefix: config.redisKeyPrefix,
      deployment: config.deployment,
      timeoutMs: args.timeoutSec * 1000,
    });

    // 9. Summary.
    sampler.sample();
    const tasks = await readTasks(redis, [...new Set(jobs.map((j) => j.taskId))], config.redisKeyPrefix);
    printSummary(jobs, results, origin, { big, lite }, sampler, idleRss, uiUrl, temporal.namespace, tasks, farm?.hosts);
    remember({ apkMiB, ports: args.ports, unfinished: false, hosts: args.hosts });
  } finally {
    await stopAll();
  }
}

/** True when the demo runs an adb engine on fake phones it starts itself. */
function onFakePhones(args: DemoArgs): boolean {
  return args.engine !== 'jar' && args.phones === 'fake';
}

/** The device agent simulator with five devices, keeping their installed apps across demos. */
async function simulatedDevices(
  scope: Scope,
  args: DemoArgs,
  demoDir: string,
): Promise<{ agentUrl: string; devices: string[] }> {
  const agent = new AgentSimulator({
    devices: SIM_DEVICES,
    installDelayMs: 300,
    stateFile: path.join(demoDir, 'agent-state.json'),
  });
  const agentUrl = await listen(() => agent.start(args.ports.agent), args.ports.agent, '--agent-port');
  scope.add('agent simulator', () => agent.close());
  return { agentUrl, devices: SIM_DEVICES };
}

/**
 * A farm on this machine: `--hosts` agent simulators, each the owner (`hostId`) of a share of the
 * devices, on consecutive ports from --agent-port, and the registry that names each device's agent and
 * host for the starter and the workers.
 */
async function demoFarm(
  scope: Scope,
  args: DemoArgs,
  demoDir: string,
): Promise<{ hosts: DemoHost[]; registryFile: string }> {
  const hosts: DemoHost[] = [];
  for (let i = 0; i < args.hosts; i++) {
    const id = `demo-host-${i + 1}`;
    const devices = SIM_DEVICES.filter((_, d) => Math.floor((d * args.hosts) / SIM_DEVICES.length) === i);
    const agent = new AgentSimulator({
      devices,
      installDelayMs: 300,
      hostId: id,
      stateFile: path.join(demoDir, `agent-state-${id}.json`),
    });
    const port = args.ports.agent + i;
    const agentUrl = await listen(() => agent.start(port), port, '--agent-port');
    scope.add(`agent simulator of ${id}`, () => agent.close());
    hosts.push({ id, agentUrl, devices, artifactPort: args.ports.artifact + i });
  }
  const registry = Object.fromEntries(
    hosts.flatMap((h) => h.devices.map((d) => [d, { agent: h.agentUrl, host: h.id }] as const)),
  );
  const registryFile = path.join(demoDir, 'farm-registry.json');
  writeFileSync(registryFile, `${JSON.stringify(registry, null, 2)}\n`);
  return { hosts, registryFile };
}

/**
 * Phones through the real adb: five fake phones (a double of real phones) connected to the adb
 * server, or the real phones already attached; then the adb agent for them.
 */
async function adbPhones(
  scope: Scope,
  args: DemoArgs,
  demoDir: string,
  config: ReturnType<typeof loadConfig>,
): Promise<{ agentUrl: string; devices: string[] }> {
  const adb = adbFor(config);
  if (args.phones === 'fake') {
    // adb's own server (not a private one), so `adb devices` in another terminal shows the phones.
    const bench = await startPhoneBench({
      phones: FAKE_PHONES,
      stateDir: path.join(demoDir, 'fake-phones'),
      adbPort: adb.options.serverPort ?? (Number(process.env.ANDROID_ADB_SERVER_PORT) || 5037),
      adbBin: config.adbBin,
      ports: Array.from({ length: FAKE_PHONES }, (_, i) => args.phonePort + i),
    });
    scope.add('fake phones', () => bench.stop());
    for (const phone of bench.phones) phone.setScenario(args.packageName ?? 'com.example.demo', DEMO_SCENARIO);
    step(`Phones: ${FAKE_PHONES} fake phones on adb (${bench.serials.join(', ')}); each meets 2 crashes and an ANR`);
  } else {
    await adb.startServer();
  }
  const agent = new AdbAgent({ adb, dataDir: path.join(demoDir, 'agent') });
  const agentUrl = await listen(() => agent.start(args.ports.agent), args.ports.agent, '--agent-port');
  scope.add('adb agent', () => agent.close());
  const res = await fetch(`${agentUrl}/mobile`);
  const { mobiles } = (await res.json()) as { mobiles: { id: string; online: boolean; state: string }[] };
  const online = mobiles.filter((m) => m.online).map((m) => m.id);
  for (const m of mobiles.filter((x) => !x.online)) step(`Phone ${m.id} is ${m.state}: left out`);
  if (!online.length)
    throw new Error(
      args.phones === 'real'
        ? 'no phone is online: `adb devices` must list one as "device" (enable USB debugging and accept the prompt)'
        : 'the fake phones did not come online on adb',
    );
  return { agentUrl, devices: online };
}

function step(msg: string): void {
  process.stdout.write(`• ${msg}\n`);
}

/** Parses the flags; undefined for --help; throws with the usage on anything unknown or malformed. */
function parseArgs(argv: string[], artifactPort: number): DemoArgs | undefined {
  const values: Record<string, string> = {};
  const given = new Set<string>();
  const booleans = new Set(['keep-cache']);
  const numeric = new Set([
    'apk-mib',
    'duration',
    'timeout-sec',
    'origin-port',
    'agent-port',
    'artifact-port',
    'phone-port',
    'hosts',
  ]);
  const texts = new Set(['engine', 'phones', 'apk-file', 'package']);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') return undefined;
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}\n${USAGE}`);
    const eq = a.indexOf('=');
    const name = a.slice(2, eq > 0 ? eq : undefined);
    if (!booleans.has(name) && !numeric.has(name) && !texts.has(name))
      throw new Error(`unknown option --${name}\n${USAGE}`);
    given.add(name);
    if (booleans.has(name)) continue;
    const value = eq > 0 ? a.slice(eq + 1) : argv[++i];
    if (texts.has(name)) {
      if (!value) throw new Error(`--${name} needs a value\n${USAGE}`);
      values[name] = value;
      continue;
    }
    if (value === undefined || !/^\d+(\.\d+)?$/.test(value))
      throw new Error(`--${name} needs a number, got ${value ?? 'nothing'}\n${USAGE}`);
    values[name] = value;
  }
  const num = (name: string, fallback: number) => Number(values[name] ?? fallback);
  const port = (name: string, fallback: number) => {
    const p = num(name, fallback);
    if (!Number.isInteger(p) || p < 1 || p > 65535)
      throw new Error(`--${name} must be a port between 1 and 65535 (fixed, so a restarted demo can resume), got ${p}`);
    return p;
  };
  const durationSec = num('duration', 8);
  // Tasks take whole seconds (src/starter/task.ts); a fraction would be dead-lettered by the starter.
  if (!Number.isInteger(durationSec) || durationSec < 1)
    throw new Error(`--duration must be a whole number of seconds, at least 1, got ${durationSec}\n${USAGE}`);
  const engine = values.engine ?? 'jar';
  if (engine !== 'jar' && engine !== 'monkey' && engine !== 'fastbot')
    throw new Error(`--engine must be jar, monkey or fastbot, got ${engine}\n${USAGE}`);
  const phones = values.phones ?? 'fake';
  if (phones !== 'fake' && phones !== 'real') throw new Error(`--phones must be fake or real, got ${phones}\n${USAGE}`);
  if (given.has('phones') && engine === 'jar')
    throw new Error(`--phones needs --engine monkey or fastbot (the jar engine runs on simulated devices)\n${USAGE}`);
  // A real phone refuses the generated demo APKs: it needs a real app and its package name.
  if (phones === 'real' && (!values['apk-file'] || !values.package))
    throw new Error(`--phones real needs --apk-file <app.apk> and --package <its package name>\n${USAGE}`);
  if (values['apk-file'] && !values.package) throw new Error(`--apk-file needs --package\n${USAGE}`);
  const hosts = num('hosts', 1);
  if (!Number.isInteger(hosts) || hosts < 1 || hosts > SIM_DEVICES.length)
    throw new Error(`--hosts must be a whole number from 1 to ${SIM_DEVICES.length}, got ${hosts}\n${USAGE}`);
  if (hosts > 1 && engine !== 'jar')
    throw new Error(
      `--hosts needs the jar engine (simulated devices); a farm of real phones is docs/DEPLOYMENT.md\n${USAGE}`,
    );
  return {
    hosts,
    engine,
    phones,
    apkFile: values['apk-file'] ? path.resolve(values['apk-file']) : undefined,
    packageName: values.package,
    phonePort: port('phone-port', 5601),
    apkMiB: num('apk-mib', 100),
    durationSec,
    timeoutSec: num('timeout-sec', 600),
    keepCache: given.has('keep-cache'),
    // DT_ARTIFACT_PORT 0 means "any free port" for a worker, which a resumable demo cannot use.
    ports: {
      origin: port('origin-port', 7390),
      agent: port('agent-port', 7301),
      artifact: port('artifact-port', artifactPort || 7380),
    },
  };
}

/** Fails naming the flag to change when a fixed port is taken or two of them collide. */
async function checkPorts(ports: { port: number; what: string; flag: string }[]): Promise<void> {
  for (const [i, p] of ports.entries()) {
    const twin = ports.slice(0, i).find((q) => q.port === p.port);
    if (twin) throw new Error(`${twin.flag} and ${p.flag} are both ${p.port}; give each its own port`);
    if (!(await portIsFree(p.port))) {
      throw new Error(
        `port ${p.port} for ${p.what} is already in use by another program (perhaps another demo); stop it, or choose another port with ${p.flag}`,
      );
    }
  }
}

/** Starts a server on its fixed port, naming the flag when the port was taken in the meantime. */
async function listen(start: () => Promise<string>, port: number, flag: string): Promise<string> {
  try {
    return await start();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE')
      throw new Error(
        `port ${port} is already in use by another program; stop it, or choose another port with ${flag}`,
      );
    throw err;
  }
}

function readMemory(file: string): DemoMemory {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as DemoMemory;
  } catch {
    return {};
  }
}

/** Starts the compiled worker or starter (lib/src/<name>.js) with its log in `<dir>/<name>.log`; the scope stops it. */
function launch(
  scope: Scope,
  name: 'worker' | 'starter',
  env: NodeJS.ProcessEnv,
  dir: string,
  host?: string,
): LoggedProcess {
  const logFile = path.join(dir, host ? `${name}-${host}.log` : `${name}.log`);
  // Own process group: a Ctrl-C reaches only the demo, which stops the starter and worker before the
  // servers they report to (a worker that can still reach Temporal fails its attempts at once, so
  // a restarted demo resumes them without waiting for the heartbeat timeout).
  const proc = spawnLogged(
    host ? `${name} of ${host}` : name,
    process.execPath,
    [path.join(PROJECT_ROOT, 'lib', 'src', `${name}.js`)],
    {
      logFile,
      fullEnv: env,
      detached: true,
      scope,
      graceMs: 15_000,
    },
  );
  children.push(proc.child);
  void proc.exited.then(({ code, signal }) => {
    if (code !== 0 && signal === null && !interrupted)
      process.stderr.write(`${name} exited with ${code}; see ${logFile}\n`);
  });
  return proc;
}

/**
 * Draws every job until its result is in Redis. Per tick: one GET per unfinished job, one `state`
 * query per demo device (why a job is queued), one `progress` query per job that is not queued.
 */
async function watch(
  jobs: Job[],
  ctx: { client: Client; redis: Redis; taskQueue: string; keyPrefix: string; deployment: string; timeoutMs: number },
): Promise<Map<string, TraversalResult>> {
  const { client, redis } = ctx;
  const results = new Map<string, TraversalResult>();
  const tty = process.stdout.isTTY === true;
  const lastLine = new Map<string, string>();
  const deadline = Date.now() + ctx.timeoutMs;
  const deviceIds = new Set(DEVICES.map((d) => `device/${d}`));
  let drawn = 0;
  let lastPlain = 0;
  // After a Ctrl-C the services go away one by one; what the loop would see then is not news.
  while (results.size < jobs.length && !interrupted) {
    if (Date.now() > deadline)
      throw new Error(`demo timed out after ${ctx.timeoutMs / 1000} s with ${results.size}/${jobs.length} results`);
    const waiting = new Map<string, string>();
    for (const s of await deviceStates(client, ctx.taskQueue, { accept: (id) => deviceIds.has(id) }).catch(() => [])) {
      s.queue.forEach((q, i) => waiting.set(`${q.taskId}/${s.deviceId}`, queuedReason(s, i)));
    }
    const lines: string[] = [];
    for (const job of jobs) {
      const key = `${job.taskId}/${job.deviceId}`;
      if (!results.has(key)) {
        const raw = await redis.get(resultKey(job.taskId, job.deviceId, ctx.keyPrefix));
        if (raw) results.set(key, JSON.parse(raw) as TraversalResult);
      }
      const done = results.get(key);
      const row: Pick<BoardRow, 'deviceId' | 'taskId' | 'phase' | 'percent' | 'screens' | 'waiting'> = {
        ...job,
        phase: 'queued',
        percent: 0,
        screens: 0,
      };
      if (done)
        Object.assign(row, {
          phase: done.status,
          percent: done.status === 'completed' ? 100 : 0,
          screens: done.screens,
        });
      else if (waiting.has(key)) row.waiting = waiting.get(key);
      else {
        try {
          const p = await client.connection.withDeadline(Date.now() + 3000, () =>
            client.workflow
              .getHandle(traversalWorkflowId(job.taskId, job.deviceId, ctx.deployment))
              .query(progressQuery),
          );
          Object.assign(row, { phase: p.phase, percent: p.percent, screens: p.screens });
        } catch {
          // Neither queued nor started: the starter has not handed it to its device yet.
          row.waiting = 'queued: waiting for the starter';
        }
      }
      lines.push(`${progressRow(row)}${job.resumed ? '  (resumed)' : ''}`);
      const said = row.waiting ?? row.phase;
      if (!tty && !interrupted && lastLine.get(key) !== said) {
        lastLine.set(key, said);
        const what = row.waiting ?? `${row.phase} ${Math.round(row.percent)}%`;
        process.stdout.write(`[progress] ${job.taskId} ${job.deviceId}: ${what}${job.resumed ? ' (resumed)' : ''}\n`);
      }
    }
    if (interrupted) break;
    if (tty) {
      if (drawn) process.stdout.write(`\x1b[${drawn}A`);
      process.stdout.write(lines.map((l) => `\x1b[2K${l}`).join('\n') + '\n');
      drawn = lines.length;
    } else if (Date.now() - lastPlain > 5000) {
      lastPlain = Date.now();
      process.stdout.write(`[progress] ${results.size}/${jobs.length} traversals finished\n`);
    }
    if (results.size < jobs.length) await new Promise((r) => setTimeout(r, 500));
  }
  if (interrupted) throw new Error('interrupted');
  return results;
}

function printSummary(
  jobs: Job[],
  results: Map<string, TraversalResult>,
  origin: ApkOrigin,
  apks: Record<'big' | 'lite', { size: number; sha256: string }>,
  sampler: RssSampler,
  idleRss: number,
  uiUrl: string,
  namespace: string,
  tasks: TaskFindings[],
  hosts?: DemoHost[],
): void {
  const rows = jobs.map((j) => {
    const r = results.get(`${j.taskId}/${j.deviceId}`)!;
    return [
      j.deviceId,
      `${j.taskId}${j.resumed ? ' (resumed)' : ''}`,
      r.packageName,
      `${r.status}${(r.traversalAttempt ?? 1) > 1 ? ` (attempt ${r.traversalAttempt})` : ''}`,
      r.installMs !== undefined ? String(r.installMs) : '-',
      r.coldStartMs !== undefined ? String(r.coldStartMs) : '-',
      r.timings.runTraversal !== undefined ? (r.timings.runTraversal / 1000).toFixed(1) : '-',
      `${r.crashes}/${r.anrs}`,
      r.reportUrl
        ? path.relative(PROJECT_ROOT, r.reportUrl.replace('file://', ''))
        : r.error
          ? `${r.error.type}: ${r.error.message}`
          : '-',
    ];
  });
  const head = [
    'device',
    'task',
    'package',
    'status',
    'install ms',
    'cold start ms',
    'traversal s',
    'crashes/ANRs',
    'report',
  ];
  // On a farm, the host whose worker ran each device's steps goes beside the device.
  if (hosts)
    table(
      [head[0]!, 'host', ...head.slice(1)],
      rows.map((r, i) => [r[0]!, results.get(`${jobs[i]!.taskId}/${jobs[i]!.deviceId}`)?.host ?? '-', ...r.slice(1)]),
    );
  else table(head, rows);
  const all = [...results.values()];
  printFindings(all, tasks);
  const resumed = jobs.filter((j) => j.resumed).length;
  const failed = all.filter((r) => r.status !== 'completed').length;
  process.stdout.write(
    `\n${all.length} traversals: ${all.length - failed} completed, ${failed} failed or cancelled${resumed ? `; ${resumed} resumed from an earlier demo` : ''}\n\n`,
  );
  table(
    ['APK', 'size', 'origin downloads (GETs)', 'origin bytes / size'],
    (['demo-app.apk', 'demo-lite.apk'] as const).map((name) => {
      const s = origin.stats(name);
      const size = name === 'demo-app.apk' ? apks.big.size : apks.lite.size;
      return [name, mib(size), String(s.gets), (s.bytesServed / size).toFixed(2)];
    }),
  );
  if (hosts) {
    // Where each host's copy came from: one host from the origin, the others from a host that had it.
    process.stdout.write(
      '\nThe farm (each host downloads an APK once: from the origin, or from a host that has it):\n',
    );
    table(
      ['host', 'devices', 'demo-app.apk came from', 'demo-lite.apk came from'],
      hosts.map((h) => {
        const from = (sha256: string) => {
          const on = all.filter((r) => h.devices.includes(r.deviceId) && r.apk?.sha256 === sha256);
          const fetched = on.find((r) => !r.apk!.fromCache);
          if (!fetched) return on.length ? 'its cache' : '-';
          return fetched.apk!.fromPeer ? `peer ${fetched.apk!.fromPeer}` : 'the origin';
        };
        return [h.id, h.devices.join(', '), from(apks.big.sha256), from(apks.lite.sha256)];
      }),
    );
  }
  process.stdout.write(
    `\nPeak worker RSS: ${mib(sampler.peak)} sampled at 10 Hz (${sampler.samples} samples), VmHWM ${mib(sampler.hwm)}, idle ${mib(idleRss)}\n`,
  );
  process.stdout.write(`Web UI: ${uiUrl}/namespaces/${namespace}/workflows\n`);
}

/**
 * The findings of every result, one row per signature (what it is, how often, on how many devices,
 * new for the app or seen in an earlier task), then each task's summary from Redis.
 */
function printFindings(results: TraversalResult[], tasks: TaskFindings[]): void {
  const groups = groupTaskFindings(results);
  if (groups.length) {
    process.stdout.write(`\nFindings, grouped by signature (${groups.length}):\n`);
    process.stdout.write(`${taskFindingsTable(groups)}\n`);
  }
  if (!tasks.length) return;
  process.stdout.write('\nTasks (traversal:summary:<taskId> in Redis):\n');
  table(
    ['task', 'devices', 'completed', 'failed', 'cancelled', 'distinct findings', 'new for the app', 'JUnit'],
    tasks.map((t) => {
      const s = t.summary;
      return [
        t.taskId,
        String(s?.devices ?? t.results.length),
        String(s?.completed ?? '-'),
        String(s?.failed ?? '-'),
        String(s?.cancelled ?? '-'),
        String(s?.uniqueFindings ?? groupTaskFindings(t.results).length),
        String(s?.newFindings ?? '-'),
        s?.junitUrl ? path.relative(PROJECT_ROOT, s.junitUrl.replace('file://', '')) : '-',
      ];
    }),
  );
}

/** Each task's findings and summary; waits a little for the JUnit file the last device's publish writes. */
async function readTasks(redis: Redis, taskIds: string[], prefix: string): Promise<TaskFindings[]> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const tasks = await Promise.all(taskIds.map((id) => readTaskFindings(redis, id, prefix)));
    const ready = tasks.every((t) => !t.summary || (t.summary.finished && t.summary.junitUrl));
    if (ready || Date.now() > deadline) return tasks;
    await new Promise((r) => setTimeout(r, 300));
  }
}

function table(head: string[], rows: string[][]): void {
  process.stdout.write(`${textTable(head, rows)}\n`);
}

main()
  .then(() => process.exit(0))
  .catch((err) => {
    if (interrupted) return; // the SIGINT handler owns the exit
    process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
