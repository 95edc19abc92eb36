/**
 * The one place that reads the environment. Every option is declared once with its variable,
 * default, unit and a sentence; `loadConfig` validates eagerly and names the variable to fix.
 * The README's configuration table mirrors OPTIONS.
 */
import os from 'node:os';
import path from 'node:path';
import { extraArgsPolicyFor } from '../contract/extra-args';
import { DEPLOYMENT_PATTERN, HOST_ID_PATTERN, type Delivery } from '../contract/messages';
import { parseAllowList } from '../net/url-policy';
import { OPTIONS, type OptionSpec } from './options';

export { OPTIONS, type OptionSpec } from './options';

/** Root of the project checkout (this file lives in src/config/ or lib/src/config/). */
export const PROJECT_ROOT = path.resolve(
  __dirname,
  __dirname.includes(`${path.sep}lib${path.sep}`) ? '../../..' : '../..',
);

/** The folders a worker keeps under DT_DATA_DIR (the APK cache has its own, DT_APK_CACHE_DIR). */
export function dataFolders(dataDir: string): { runs: string; pids: string; workers: string } {
  return {
    // One folder per run: report, logs, control file, findings.
    runs: path.join(dataDir, 'runs'),
    // One record per running traversal process, written before it is spawned.
    pids: path.join(dataDir, 'pids'),
    // One journal per worker process: the attempts it runs.
    workers: path.join(dataDir, 'workers'),
  };
}

/** The validated configuration, passed down from entry points. */
export interface Config {
  redisUrl: string;
  taskQueue: string;
  dataDir: string;
  apkCacheDir: string;
  apkMaxBytes: number;
  apkCacheMaxBytes: number;
  apkCacheLeaseMs: number;
  maxOriginDownloads: number;
  apkDiskReserveBytes: number;
  apkPartMaxAgeMs: number;
  runsMaxAgeMs: number;
  runsMaxBytes: number;
  sweepIntervalMs: number;
  allowedHosts: string;
  delivery: Delivery;
  hostId: string;
  routing: 'host' | 'any';
  hostWaitMs: number;
  peerFetch: 'on' | 'off';
  workerDeployment: string;
  buildId: string;
  artifactHost: string;
  artifactPort: number;
  artifactToken: string;
  artifactUrlTtlMs: number;
  artifactPublicUrl: string;
  artifactMaxConnections: number;
  artifactMaxPerAddress: number;
  reportSink: string;
  reportSinkToken: string;
  reportMaxBytes: number;
  traversalJar: string;
  engine: 'jar' | 'monkey' | 'fastbot';
  adbBin: string;
  adbServer: string;
  fastbotDir: string;
  engineThrottleMs: number;
  traversalCommand: string[];
  traversalResumeArgs: string[];
  traversalExtraArgs: string;
  progressPattern: RegExp;
  findingPattern: RegExp;
  reportShipMs: number;
  workflowBundle: string;
  killGraceMs: number;
  sdkMetricsPort: number;
  maxConcurrentTraversals: number;
  maxConcurrentActivities: number;
  maxCachedWorkflows: number;
  defaultAgentUrl: string;
  deviceRegistry: string;
  starterId: string;
  starterConcurrency: number;
  heartbeatTimeoutMs: number;
  heartbeatThrottleMs: number;
  maxAttempts: number;
  measureLaunch: boolean;
  agentTimeoutMs: number;
  deviceCheckMs: number;
  deviceReturnMs: number;
  quarantineAfter: number;
  publishRetryMaxMs: number;
  stickyTimeoutMs: number;
  deployment: string;
  redisKeyPrefix: string;
  taskRetentionMs: number;
  findingRetentionMs: number;
  controlPollMs: number;
  progress: 'auto' | 'bars' | 'lines' | 'off';
  logLevel: 'debug' | 'info' | 'warn' | 'error';
}

/** Raised when an option is malformed; the message names the variable and the fix. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1e3,
  kb: 1e3,
  kib: 1024,
  m: 1e6,
  mb: 1e6,
  mib: 1024 ** 2,
  g: 1e9,
  gb: 1e9,
  gib: 1024 ** 3,
};
const DURATIONS: Record<string, number> = { '': 1, ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses "512MiB", "2GB" or a plain byte count. */
export function parseBytes(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m && UNITS[m[2]!.toLowerCase()];
  return m && unit ? Math.round(Number(m[1]) * unit) : undefined;
}

/** Parses "30s", "1500ms", "2m", "1h", "7d" or plain milliseconds. */
export function parseDuration(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/.exec(text);
  const unit = m && DURATIONS[m[2] ?? ''];
  return m && unit ? Math.round(Number(m[1]) * unit) : undefined;
}

function convert(key: string, spec: OptionSpec, raw: string): unknown {
  const bad = (rule: string) =>
    new ConfigError(`${spec.env}=${JSON.stringify(raw)} is invalid: ${rule} (default ${spec.default || 'empty'})`);
  switch (spec.kind) {
    case 'string':
      return raw;
    case 'int': {
      if (!/^\d+$/.test(raw.trim())) throw bad('expected a whole number');
      return Number(raw);
    }
    case 'float': {
      const n = Number(raw);
      if (!Number.isFinite(n)) throw bad('expected a number');
      return n;
    }
    case 'bytes': {
      const n = parseBytes(raw);
      if (n === undefined || n <= 0) throw bad('expected a size like 512MiB or 1073741824');
      return n;
    }
    case 'duration': {
      const n = parseDuration(raw);
      if (n === undefined || n <= 0) throw bad('expected milliseconds or a duration like 30s');
      return n;
    }
    case 'enum':
      if (!spec.values!.includes(raw)) throw bad(`expected one of ${spec.values!.join(', ')}`);
      return key === 'measureLaunch' ? raw === 'true' : raw;
    case 'url':
      try {
        new URL(raw);
      } catch {
        throw bad('expected a URL');
      }
      return raw;
    case 'json-array': {
      let v: unknown;
      try {
        v = JSON.parse(raw);
      } catch {
        throw bad('expected a JSON array of strings');
      }
      if (!Array.isArray(v) || v.length === 0 || !v.every((x) => typeof x === 'string'))
        throw bad('expected a non-empty JSON array of strings');
      return v;
    }
  }
}

/** Reads and validates the configuration from an environment (process.env by default). */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, overrides: Partial<Config> = {}): Config {
  const out: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(OPTIONS) as [string, OptionSpec][]) {
    const raw = env[spec.env];
    out[key] = convert(key, spec, raw === undefined || raw === '' ? spec.default : raw);
  }
  const cfg = out as unknown as Config & { progressPattern: string | RegExp; findingPattern: string | RegExp };
  try {
    cfg.progressPattern = new RegExp(cfg.progressPattern as string);
  } catch (err) {
    throw new ConfigError(`DT_PROGRESS_PATTERN is not a valid regular expression: ${(err as Error).message}`);
  }
  try {
    cfg.findingPattern = new RegExp(cfg.findingPattern as string);
  } catch (err) {
    throw new ConfigError(`DT_FINDING_PATTERN is not a valid regular expression: ${(err as Error).message}`);
  }
  if (!/\(\?<json>/.test(cfg.findingPattern.source))
    throw new ConfigError('DT_FINDING_PATTERN is invalid: it needs a named group (?<json>…)');
  cfg.dataDir = path.resolve(PROJECT_ROOT, cfg.dataDir);
  cfg.apkCacheDir = cfg.apkCacheDir ? path.resolve(PROJECT_ROOT, cfg.apkCacheDir) : path.join(cfg.dataDir, 'apk-cache');
  cfg.traversalJar = path.resolve(PROJECT_ROOT, cfg.traversalJar);
  if (cfg.fastbotDir) cfg.fastbotDir = path.resolve(PROJECT_ROOT, cfg.fastbotDir);
  if (cfg.adbServer && !/^[^\s:]+:\d{1,5}$/.test(cfg.adbServer))
    throw new ConfigError(`DT_ADB_SERVER=${cfg.adbServer} is invalid: expected host:port, e.g. 10.0.0.5:5037`);
  if (cfg.workflowBundle) cfg.workflowBundle = path.resolve(PROJECT_ROOT, cfg.workflowBundle);
  cfg.reportSink = cfg.reportSink || `file://${path.join(cfg.dataDir, 'reports')}`;
  if (!/^(file|https?):\/\//.test(cfg.reportSink)) {
    throw new ConfigError(`DT_REPORT_SINK=${cfg.reportSink} is invalid: expected file:///dir or an http(s) URL`);
  }
  if (/^https?:/.test(cfg.reportSink) && /^https?:\/\/[^/]*@/.test(cfg.reportSink)) {
    throw new ConfigError(
      'DT_REPORT_SINK is invalid: it carries credentials; put the token in DT_REPORT_SINK_TOKEN instead',
    );
  }
  try {
    parseAllowList(cfg.allowedHosts);
  } catch (err) {
    throw new ConfigError(`DT_ALLOWED_HOSTS=${JSON.stringify(cfg.allowedHosts)} is invalid: ${(err as Error).message}`);
  }
  try {
    extraArgsPolicyFor(cfg);
  } catch (err) {
    throw new ConfigError(
      `DT_TRAVERSAL_EXTRA_ARGS=${JSON.stringify(cfg.traversalExtraArgs)} is invalid: ${(err as Error).message}`,
    );
  }
  cfg.hostId = cfg.hostId || defaultHostId();
  if (!HOST_ID_PATTERN.test(cfg.hostId)) {
    throw new ConfigError(
      `DT_HOST_ID=${cfg.hostId} is invalid: use 1-64 letters, digits, dot, dash or underscore, starting with a letter or digit (the host name does not fit; set DT_HOST_ID)`,
    );
  }
  if (!cfg.workerDeployment !== !cfg.buildId)
    throw new ConfigError(
      'DT_WORKER_DEPLOYMENT and DT_BUILD_ID go together: set both to use Worker Deployment versioning, or neither',
    );
  for (const [name, value] of [
    ['DT_WORKER_DEPLOYMENT', cfg.workerDeployment],
    ['DT_BUILD_ID', cfg.buildId],
  ] as const)
    if (value && !/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(value))
      throw new ConfigError(`${name}=${value} is invalid: use 1-128 letters, digits, dot, dash or underscore`);
  cfg.starterId = cfg.starterId || os.hostname();
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(cfg.starterId)) {
    throw new ConfigError(
      `DT_STARTER_ID=${cfg.starterId} is invalid: use 1-64 letters, digits, dot, dash or underscore`,
    );
  }
  cfg.deployment = resolveDeployment(cfg.deployment, cfg.redisKeyPrefix);
  return { ...(cfg as Config), ...overrides };
}

/**
 * The phone host's name when DT_HOST_ID is unset: the machine's host name, with anything a task queue
 * name or a host id may not hold turned into '-' (so an unusual host name never stops a worker).
 */
export function defaultHostId(hostname = os.hostname()): string {
  const id = hostname
    .replace(/[^A-Za-z0-9._-]/g, '-')
    .replace(/^[^A-Za-z0-9]+/, '')
    .slice(0, 64);
  return id || 'host';
}

/** The deployment name a Redis key prefix gives: the prefix without its trailing separators (`lab-a:` → `lab-a`). */
export function deploymentFromPrefix(prefix: string): string {
  return prefix.replace(/[:/._-]+$/, '');
}

/** DT_DEPLOYMENT as given ('none' → ''), or derived from the key prefix; a bad name fails at start. */
export function resolveDeployment(raw: string, prefix: string): string {
  if (raw === 'none') return '';
  const name = raw || deploymentFromPrefix(prefix);
  if (name && !DEPLOYMENT_PATTERN.test(name)) {
    throw new ConfigError(
      raw
        ? `DT_DEPLOYMENT=${JSON.stringify(raw)} is invalid: use 1-64 letters, digits, dot, dash or underscore, starting with a letter or digit`
        : `DT_REDIS_KEY_PREFIX=${JSON.stringify(prefix)} does not make a deployment name (DT_DEPLOYMENT defaults to it); set DT_DEPLOYMENT, or DT_DEPLOYMENT=none for unscoped workflow ids`,
    );
  }
  return name;
}
