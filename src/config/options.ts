/**
 * Every option of the service, declared once: its environment variable, kind, default and one
 * sentence of documentation. `loadConfig` (index.ts) reads them; scripts/config-table.ts prints the
 * README's table from them.
 */

/** How an option's text is read. */
export type Kind = 'string' | 'int' | 'bytes' | 'duration' | 'float' | 'enum' | 'url' | 'json-array';

/** One option: its variable, how it is read, its default and its one-sentence doc. */
export interface OptionSpec {
  env: string;
  kind: Kind;
  default: string;
  doc: string;
  values?: string[];
}

/** Every option of the service, in README order. */
export const OPTIONS = {
  redisUrl: {
    env: 'REDIS_URL',
    kind: 'url',
    default: 'redis://127.0.0.1:6379',
    doc: 'Redis holding tasks, dead letters and results.',
  },
  taskQueue: {
    env: 'TASK_QUEUE',
    kind: 'string',
    default: 'device-traversal',
    doc: 'Temporal task queue of workers and starters.',
  },
  hostId: {
    env: 'DT_HOST_ID',
    kind: 'string',
    default: '',
    doc: "This phone host's name in the farm (empty: the machine's host name, any character a task queue name may not hold turned into '-'). A worker polls the task queue `<TASK_QUEUE>/host/<DT_HOST_ID>` beside the shared one; an agent reports it as the owner of its phones.",
  },
  routing: {
    env: 'DT_ROUTING',
    kind: 'enum',
    values: ['host', 'any'],
    default: 'host',
    doc: "Where a traversal's device steps run: 'host' on the worker of the phone's host (named by the registry or the agent), 'any' on whichever worker polls the shared queue (agents every worker can reach). Read by the worker that starts the run.",
  },
  hostWaitMs: {
    env: 'DT_HOST_WAIT',
    kind: 'duration',
    default: '60s',
    doc: "How long a device step waits for its host's worker before the run says `waiting for host <id>` (it keeps waiting; it never moves to another host), ms or duration.",
  },
  peerFetch: {
    env: 'DT_PEER_FETCH',
    kind: 'enum',
    values: ['on', 'off'],
    default: 'on',
    doc: "With 'on' a worker that lacks an APK of known sha256 first fetches it from the farm's hosts that hold it (listed in Redis, through their artifact servers with URLs signed by the shared DT_ARTIFACT_TOKEN; their addresses must pass DT_ALLOWED_HOSTS), then from the origin, so the origin sends each APK once per farm.",
  },
  workerDeployment: {
    env: 'DT_WORKER_DEPLOYMENT',
    kind: 'string',
    default: '',
    doc: "Temporal Worker Deployment name; with DT_BUILD_ID the worker uses Worker Deployment versioning (auto-upgrade: runs move to the deployment's current version, which `temporal worker deployment set-current-version` chooses). Empty: unversioned workers (docs/DEPLOYMENT.md, Upgrading).",
  },
  buildId: {
    env: 'DT_BUILD_ID',
    kind: 'string',
    default: '',
    doc: "This worker build's id within DT_WORKER_DEPLOYMENT (e.g. the release or git commit).",
  },
  dataDir: {
    env: 'DT_DATA_DIR',
    kind: 'string',
    default: '.data',
    doc: 'Folder for the APK cache, run logs and the default report sink (relative to the project).',
  },
  apkCacheDir: {
    env: 'DT_APK_CACHE_DIR',
    kind: 'string',
    default: '',
    doc: 'APK cache folder; empty means <DT_DATA_DIR>/apk-cache.',
  },
  apkMaxBytes: {
    env: 'DT_APK_MAX_BYTES',
    kind: 'bytes',
    default: '4GiB',
    doc: 'Largest APK accepted, bytes (suffixes KiB, MiB, GiB allowed).',
  },
  apkCacheMaxBytes: {
    env: 'DT_APK_CACHE_MAX_BYTES',
    kind: 'bytes',
    default: '20GiB',
    doc: 'Size cap of the APK cache, bytes; least recently used APKs not in use are evicted after a download pushes it over.',
  },
  apkCacheLeaseMs: {
    env: 'DT_APK_CACHE_LEASE',
    kind: 'duration',
    default: '1h',
    doc: 'How long an APK resolved for a traversal, handed to an agent, or fetched from byte 0 through a signed install URL is kept from eviction (other reads never renew it), ms or a duration like 1h.',
  },
  maxOriginDownloads: {
    env: 'DT_MAX_ORIGIN_DOWNLOADS',
    kind: 'int',
    default: '4',
    doc: 'Origin downloads one worker runs at once; more wait for a slot; 0 means no cap.',
  },
  apkDiskReserveBytes: {
    env: 'DT_APK_DISK_RESERVE',
    kind: 'bytes',
    default: '64MiB',
    doc: "Free space an APK download leaves on the cache's disk for logs, reports and other writers, bytes; at most 5% of that disk's size counts, so small disks still work. A download that does not fit even after evicting unused APKs fails as InsufficientStorage (retried) and removes its partial file.",
  },
  apkPartMaxAgeMs: {
    env: 'DT_APK_PART_MAX_AGE',
    kind: 'duration',
    default: '1h',
    doc: 'A partial APK download (<cache>/tmp/*.part) that no download holds and that was not written for this long is removed by the sweep; younger ones stay so a retry can resume them with a Range request, ms or a duration like 1h.',
  },
  runsMaxAgeMs: {
    env: 'DT_RUNS_MAX_AGE',
    kind: 'duration',
    default: '7d',
    doc: 'A run folder (<DT_DATA_DIR>/runs/<taskId>/<deviceId>: local report, logs, findings) in which nothing changed for this long is removed by the sweep, unless an attempt of its traversal is running on a worker sharing the data folder, ms or a duration like 7d.',
  },
  runsMaxBytes: {
    env: 'DT_RUNS_MAX_BYTES',
    kind: 'bytes',
    default: '2GiB',
    doc: 'Size cap of <DT_DATA_DIR>/runs, bytes; over it the sweep removes the least recently changed run folders that are not running and were not changed in the last hour.',
  },
  sweepIntervalMs: {
    env: 'DT_SWEEP_INTERVAL',
    kind: 'duration',
    default: '10m',
    doc: 'How often a worker removes orphaned partial APK downloads and old run folders (also once at start), ms or a duration like 10m.',
  },
  allowedHosts: {
    env: 'DT_ALLOWED_HOSTS',
    kind: 'string',
    default: '',
    doc: "Comma-separated host names, *.suffixes, IPs or CIDRs that may be private or loopback addresses (APK origins, agents, report sinks) and that tasks may name as agentUrl; '*' trusts all. Link-local and metadata addresses are always refused.",
  },
  delivery: {
    env: 'DT_DELIVERY',
    kind: 'enum',
    values: ['cache', 'direct'],
    default: 'cache',
    doc: "How agents get the APK: 'cache' (from the worker's artifact server) or 'direct' (from the origin URL). Read by both: the starter puts it in each request's run policy and that value wins; the worker's own value applies only to requests without one (workflows started around the starter).",
  },
  artifactHost: {
    env: 'DT_ARTIFACT_HOST',
    kind: 'string',
    default: '127.0.0.1',
    doc: 'Bind address of the artifact and metrics server.',
  },
  artifactPort: {
    env: 'DT_ARTIFACT_PORT',
    kind: 'int',
    default: '7380',
    doc: 'Port of the artifact and metrics server; 0 picks a free one.',
  },
  artifactToken: {
    env: 'DT_ARTIFACT_TOKEN',
    kind: 'string',
    default: '',
    doc: 'Secret of the artifact server: when set, every request needs it (Authorization: Bearer or ?token=) and install URLs carry an expiring per-APK signature instead (never logged).',
  },
  artifactUrlTtlMs: {
    env: 'DT_ARTIFACT_URL_TTL',
    kind: 'duration',
    default: '24h',
    doc: 'Validity of a signed install URL when DT_ARTIFACT_TOKEN is set, ms or a duration like 24h.',
  },
  artifactPublicUrl: {
    env: 'DT_ARTIFACT_PUBLIC_URL',
    kind: 'string',
    default: '',
    doc: 'Base URL agents use to reach the artifact server; empty means http://<host>:<port>.',
  },
  artifactMaxConnections: {
    env: 'DT_ARTIFACT_MAX_CONNECTIONS',
    kind: 'int',
    default: '256',
    doc: 'Open connections the artifact server holds at most; at the cap the oldest connection without a request in progress is closed for a new one (or the new one when all are serving); 0 means no cap.',
  },
  artifactMaxPerAddress: {
    env: 'DT_ARTIFACT_MAX_PER_ADDRESS',
    kind: 'int',
    default: '64',
    doc: 'Open connections from one remote address (an IPv6 /64 counts as one) the artifact server holds at most, handled like DT_ARTIFACT_MAX_CONNECTIONS; 0 means no cap. Fixed timeouts: request headers must arrive within 10 s of connecting, an idle keep-alive connection closes about 6 s after its last response, and a response whose socket takes no byte for 2 min is cut (a slow transfer that moves is never cut).',
  },
  reportSink: {
    env: 'DT_REPORT_SINK',
    kind: 'string',
    default: '',
    doc: 'Where reports go: file:///dir or an http(s) base URL (streamed PUT); empty means file://<DT_DATA_DIR>/reports.',
  },
  reportSinkToken: {
    env: 'DT_REPORT_SINK_TOKEN',
    kind: 'string',
    default: '',
    doc: 'Bearer token for an HTTP report sink (never logged).',
  },
  reportMaxBytes: {
    env: 'DT_REPORT_MAX_BYTES',
    kind: 'bytes',
    default: '1GiB',
    doc: 'Largest report archive uploaded, bytes; a larger one fails the upload as ReportTooLarge.',
  },
  traversalJar: {
    env: 'DT_TRAVERSAL_JAR',
    kind: 'string',
    default: '.tools/traversal-sim.jar',
    doc: 'Traversal jar used by the default command (relative to the project).',
  },
  engine: {
    env: 'DT_ENGINE',
    kind: 'enum',
    values: ['jar', 'monkey', 'fastbot'],
    default: 'jar',
    doc: "Traversal engine: 'jar' runs DT_TRAVERSAL_COMMAND; 'monkey' runs Android's Monkey and 'fastbot' runs Fastbot on the phone through adb (the phone's serial comes from its agent).",
  },
  adbBin: {
    env: 'DT_ADB',
    kind: 'string',
    default: 'adb',
    doc: 'The adb binary used by the monkey and fastbot engines and by the adb agent (a name on PATH or a path).',
  },
  adbServer: {
    env: 'DT_ADB_SERVER',
    kind: 'string',
    default: '',
    doc: "adb server as host:port (passed as -H/-P) for phones attached to another host; empty uses adb's own default (ADB_SERVER_SOCKET or 127.0.0.1:5037).",
  },
  fastbotDir: {
    env: 'DT_FASTBOT_DIR',
    kind: 'string',
    default: '',
    doc: "Folder holding Fastbot's monkeyq.jar, framework.jar, fastbot-thirdpart.jar and libs/<abi>/libfastbot_native.so, pushed to each phone once and checked by hash; required when DT_ENGINE=fastbot.",
  },
  engineThrottleMs: {
    env: 'DT_ENGINE_THROTTLE',
    kind: 'int',
    default: '300',
    doc: 'Pause between two events of the monkey and fastbot engines, ms (their --throttle).',
  },
  traversalCommand: {
    env: 'DT_TRAVERSAL_COMMAND',
    kind: 'json-array',
    default:
      '["java","-jar","{jar}","--device","{device}","--agent","{agent}","--package","{package}","--out","{outDir}","--duration","{durationSec}","--control","{controlFile}"]',
    doc: 'Command template as a JSON array; placeholders {jar} {device} {agent} {package} {activity} {outDir} {durationSec} {controlFile}.',
  },
  traversalResumeArgs: {
    env: 'DT_TRAVERSAL_RESUME_ARGS',
    kind: 'json-array',
    default: '["--resume-from","{checkpoint}"]',
    doc: 'Arguments added when a retried attempt resumes from a checkpoint.',
  },
  traversalExtraArgs: {
    env: 'DT_TRAVERSAL_EXTRA_ARGS',
    kind: 'string',
    default: '',
    doc: "Allow-list of a task's traversal.extraArgs, comma-separated entries: --flag, --name <type> (value in the next argument), --name=<type> (value attached), or * (any argument); types <int>, <int:MIN-MAX>, <word> (never a path), <a|b|c>, <any> (not starting with '-'). Options of DT_TRAVERSAL_COMMAND and DT_TRAVERSAL_RESUME_ARGS (and prefixes of them) are never allowed. Empty allows no extra argument. Read by the starter (a task asking for more is dead-lettered with the rule it broke) and by the worker (such a run fails as InvalidTask).",
  },
  progressPattern: {
    env: 'DT_PROGRESS_PATTERN',
    kind: 'string',
    default:
      '^PROGRESS .*?percent=(?<percent>\\d+) screens=(?<screens>\\d+) crashes=(?<crashes>\\d+) anrs=(?<anrs>\\d+) checkpoint=(?<checkpoint>\\S+)',
    doc: 'Regex with named groups percent, screens, crashes, anrs, checkpoint matching progress lines.',
  },
  findingPattern: {
    env: 'DT_FINDING_PATTERN',
    kind: 'string',
    default: '^FINDING (?<json>\\{.*\\})\\s*$',
    doc: 'Regex with a named group json matching a line on which the tool reports one crash or ANR as a JSON object {kind, exception, message, frames, step, screenshot}.',
  },
  reportShipMs: {
    env: 'DT_REPORT_SHIP_INTERVAL',
    kind: 'duration',
    default: '30s',
    doc: 'How often a running traversal ships its new and changed report files to the report sink (findings are shipped as soon as they are printed), ms or duration.',
  },
  workflowBundle: {
    env: 'DT_WORKFLOW_BUNDLE',
    kind: 'string',
    default: '',
    doc: 'Prebuilt workflow bundle (built by scripts/setup.sh into lib/workflow-bundle.js); empty bundles src/workflows at start.',
  },
  killGraceMs: {
    env: 'DT_KILL_GRACE',
    kind: 'duration',
    default: '5s',
    doc: 'Time between TERM and KILL when a traversal is stopped, ms or a duration like 5s.',
  },
  sdkMetricsPort: {
    env: 'DT_SDK_METRICS_PORT',
    kind: 'int',
    default: '0',
    doc: "Port of the Temporal SDK's own Prometheus exporter, which has no authentication and so always listens on 127.0.0.1 (no setting moves it); other hosts read its series only through the artifact server's token-checked /metrics; 0 picks a free port.",
  },
  maxConcurrentTraversals: {
    env: 'DT_MAX_CONCURRENT_TRAVERSALS',
    kind: 'int',
    default: '20',
    doc: 'Traversal activities one worker runs at once.',
  },
  maxConcurrentActivities: {
    env: 'DT_MAX_CONCURRENT_ACTIVITIES',
    kind: 'int',
    default: '60',
    doc: 'All activities one worker runs at once (downloads, agent calls, traversals).',
  },
  maxCachedWorkflows: {
    env: 'DT_MAX_CACHED_WORKFLOWS',
    kind: 'int',
    default: '200',
    doc: 'Workflow executions kept in the worker cache.',
  },
  defaultAgentUrl: {
    env: 'DT_DEFAULT_AGENT_URL',
    kind: 'string',
    default: '',
    doc: 'Agent for devices that the task and the registry do not place.',
  },
  deviceRegistry: {
    env: 'DT_DEVICE_REGISTRY',
    kind: 'string',
    default: '',
    doc: 'JSON file mapping device ids to agent URLs, or to an agent and the phone host it hangs off: {"sim-1": "http://host:7301", "pixel-7": {"agent": "http://10.0.0.6:7301", "host": "rack-b"}}.',
  },
  starterId: {
    env: 'DT_STARTER_ID',
    kind: 'string',
    default: '',
    doc: 'Stable name of this starter (its processing list survives restarts); empty means the host name.',
  },
  starterConcurrency: {
    env: 'DT_STARTER_CONCURRENCY',
    kind: 'int',
    default: '8',
    doc: 'Tasks one starter hands to Temporal at once; requests for one device keep their order.',
  },
  heartbeatTimeoutMs: {
    env: 'DT_HEARTBEAT_TIMEOUT',
    kind: 'duration',
    default: '30s',
    doc: "Read by the starter, which puts it in each request's run policy; the worker's own value is ignored. Heartbeat timeout of long activities (a dead worker is noticed after it, and a traversal tool silent for longer is ended), ms or duration.",
  },
  heartbeatThrottleMs: {
    env: 'DT_HEARTBEAT_THROTTLE',
    kind: 'duration',
    default: '1s',
    doc: 'Longest gap between heartbeats sent to the server; a cancel reaches a running activity within about this time, ms or duration.',
  },
  maxAttempts: {
    env: 'DT_MAX_ATTEMPTS',
    kind: 'int',
    default: '3',
    doc: "Read by the starter, which puts it in each request's run policy; the worker's own value is ignored. Attempts of the traversal step before a run fails (downloads and agent calls have fixed attempt counts).",
  },
  measureLaunch: {
    env: 'DT_MEASURE_LAUNCH',
    kind: 'enum',
    values: ['true', 'false'],
    default: 'true',
    doc: "Read by the starter, which puts it in each request's run policy; the worker's own value is ignored. Whether to measure the cold start time of the app before traversing.",
  },
  agentTimeoutMs: {
    env: 'DT_AGENT_TIMEOUT',
    kind: 'duration',
    default: '15m',
    doc: 'Longest wait for one device agent answer (installs of big APKs included) before the call fails as AgentUnavailable and is retried, ms or duration.',
  },
  deviceReturnMs: {
    env: 'DT_DEVICE_RETURN_WAIT',
    kind: 'duration',
    default: '60s',
    doc: 'How long a traversal attempt that finds its device offline (a phone unplugged and plugged back) waits for it, heartbeating, before it fails as DeviceOffline, ms or duration.',
  },
  deviceCheckMs: {
    env: 'DT_DEVICE_CHECK_INTERVAL',
    kind: 'duration',
    default: '5s',
    doc: 'How often a running traversal asks the agent whether its device is still online; an offline device fails the attempt as DeviceOffline, ms or duration.',
  },
  quarantineAfter: {
    env: 'DT_QUARANTINE_AFTER',
    kind: 'int',
    default: '3',
    doc: "Read by the starter, which puts it in each request's run policy; the worker's own value is ignored. Consecutive infrastructure failures (offline, agent down, busy, timeouts) after which a device stops taking work until a resume signal; 0 never quarantines.",
  },
  publishRetryMaxMs: {
    env: 'DT_PUBLISH_RETRY_MAX',
    kind: 'duration',
    default: '1m',
    doc: "Read by the starter, which puts it in each request's run policy. A finished traversal's result is written to Redis by a publish workflow that retries until Redis takes it (the device moves on at once); this is the longest wait between two attempts, so a result reaches Redis at most this long after Redis is back, ms or duration.",
  },
  stickyTimeoutMs: {
    env: 'DT_STICKY_TIMEOUT',
    kind: 'duration',
    default: '10s',
    doc: "How long a workflow task waits for the worker that cached its workflow before any worker may take it (Temporal's sticky queue timeout); after a worker dies, its workflows stall up to this long, ms or duration.",
  },
  deployment: {
    env: 'DT_DEPLOYMENT',
    kind: 'string',
    default: '',
    doc: "Name of this deployment (starter and workers): it starts every workflow id (`<name>/device/<id>`), so deployments sharing a Temporal namespace never share a device workflow, and the starter refuses to signal a device workflow of another deployment. Empty means the Redis key prefix without its trailing separators; 'none' (or an empty prefix) keeps the unscoped ids `device/<id>` of earlier versions.",
  },
  redisKeyPrefix: {
    env: 'DT_REDIS_KEY_PREFIX',
    kind: 'string',
    default: '',
    doc: 'Prefix put before every Redis key the starter and worker use (tasks, dead letters, results), for sharing one Redis between deployments.',
  },
  taskRetentionMs: {
    env: 'DT_TASK_RETENTION',
    kind: 'duration',
    default: '30d',
    doc: "How long Redis keeps a task's record, summary and list of signatures after its last published result, ms or duration.",
  },
  findingRetentionMs: {
    env: 'DT_FINDING_RETENTION',
    kind: 'duration',
    default: '180d',
    doc: "How long Redis keeps a finding group (an app's bug: its count, devices, tasks and example) after it was last seen; a bug seen again after that counts as new. Results are kept without limit. Ms or duration.",
  },
  controlPollMs: {
    env: 'DT_CONTROL_POLL_INTERVAL',
    kind: 'duration',
    default: '2s',
    doc: 'How often a running traversal asks its workflow (by query, which writes no history) for budget changes and pause; a budget or pause signal reaches the tool within about this time, ms or duration.',
  },
  progress: {
    env: 'DT_PROGRESS',
    kind: 'enum',
    values: ['auto', 'bars', 'lines', 'off'],
    default: 'auto',
    doc: "Starter's live progress: bars on a terminal, plain lines otherwise ('auto'), or forced/off.",
  },
  logLevel: {
    env: 'DT_LOG_LEVEL',
    kind: 'enum',
    values: ['debug', 'info', 'warn', 'error'],
    default: 'info',
    doc: 'Least severe log level printed.',
  },
} satisfies Record<string, OptionSpec>;
