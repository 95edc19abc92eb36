/** A small Prometheus text-format registry for the worker's own counters. */
import { PUBLISH_RETRY_CAP_MS } from './contract/messages';

type Labels = Record<string, string>;

function key(labels: Labels): string {
  return Object.keys(labels)
    .sort()
    .map((k) => `${k}="${String(labels[k]).replace(/["\\\n]/g, '_')}"`)
    .join(',');
}

/** A monotonically increasing counter with optional labels. */
export class Counter {
  private readonly values = new Map<string, number>();
  constructor(
    readonly name: string,
    readonly help: string,
  ) {}
  /** Adds `n` (default 1) to the series with these labels. */
  inc(labels: Labels = {}, n = 1): void {
    const k = key(labels);
    this.values.set(k, (this.values.get(k) ?? 0) + n);
  }
  /** Current value of one series. */
  get(labels: Labels = {}): number {
    return this.values.get(key(labels)) ?? 0;
  }
  /** Prometheus exposition lines. */
  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    if (this.values.size === 0) lines.push(`${this.name} 0`);
    for (const [k, v] of this.values) lines.push(k ? `${this.name}{${k}} ${v}` : `${this.name} ${v}`);
    return lines.join('\n');
  }
}

/**
 * A gauge of the ids whose latest event was a failure and that failed again within `ttlMs`: ids
 * retried on another worker, or given up, drop out by themselves.
 */
export class FailingSet {
  private readonly lastFailure = new Map<string, number>();
  constructor(
    readonly name: string,
    readonly help: string,
    private readonly ttlMs: number,
  ) {}
  /** Records a failure of `id`. */
  add(id: string, now = Date.now()): void {
    this.lastFailure.delete(id);
    this.lastFailure.set(id, now);
  }
  /** Records a success of `id`. */
  remove(id: string): void {
    this.lastFailure.delete(id);
  }
  /** Ids that failed within the window. */
  size(now = Date.now()): number {
    // Oldest first (add re-inserts), so pruning stops at the first fresh entry.
    for (const [id, at] of this.lastFailure) {
      if (now - at <= this.ttlMs) break;
      this.lastFailure.delete(id);
    }
    return this.lastFailure.size;
  }
  /** Prometheus exposition lines. */
  render(): string {
    return [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} gauge`, `${this.name} ${this.size()}`].join('\n');
  }
}

/** The worker's metrics; one instance per worker process, handed to activities. */
export class Metrics {
  readonly originDownloads = new Counter('dt_apk_origin_downloads_total', 'APK downloads started against an origin');
  readonly cacheHits = new Counter(
    'dt_apk_cache_hits_total',
    'APK requests served from the local cache without a download',
  );
  readonly bytesDownloaded = new Counter(
    'dt_apk_bytes_downloaded_total',
    'Bytes streamed from APK origins to the cache',
  );
  readonly peerDownloads = new Counter(
    'dt_apk_peer_downloads_total',
    "APK downloads started against another host's artifact server",
  );
  readonly peerBytes = new Counter('dt_apk_peer_bytes_total', 'Bytes streamed from peer hosts to the cache');
  readonly bytesServed = new Counter('dt_artifact_bytes_served_total', 'Bytes served by the artifact server to agents');
  readonly installs = new Counter('dt_installs_total', 'Install-by-URL calls that succeeded');
  readonly traversals = new Counter('dt_traversals_total', 'Traversal command runs by outcome');
  readonly traversalSeconds = new Counter('dt_traversal_seconds_total', 'Seconds spent running traversal commands');
  readonly failures = new Counter('dt_activity_failures_total', 'Activity failures by error type');
  readonly publishFailures = new Counter(
    'dt_result_publish_failures_total',
    'Failed attempts to write a result to Redis, by Redis error',
  );
  readonly resultsWaiting = new FailingSet(
    'dt_results_waiting_for_redis',
    'Results whose last publish attempt on this worker failed (kept by Temporal, retried until Redis takes them)',
    3 * PUBLISH_RETRY_CAP_MS,
  );
  readonly sweptFiles = new Counter(
    'dt_disk_swept_total',
    'Files and folders removed by the disk sweep, by kind (apk-part, run)',
  );
  readonly sweptBytes = new Counter(
    'dt_disk_swept_bytes_total',
    'Bytes freed by the disk sweep, by kind (apk-part, run)',
  );

  /** Full exposition text, including process memory. */
  render(): string {
    const mem = process.memoryUsage();
    const gauges = [
      '# HELP dt_process_resident_memory_bytes Resident set size of the worker process',
      '# TYPE dt_process_resident_memory_bytes gauge',
      `dt_process_resident_memory_bytes ${mem.rss}`,
      '# HELP dt_process_heap_used_bytes V8 heap in use',
      '# TYPE dt_process_heap_used_bytes gauge',
      `dt_process_heap_used_bytes ${mem.heapUsed}`,
    ];
    const counters = Object.values(this).filter((v): v is Counter => v instanceof Counter);
    return [...counters.map((c) => c.render()), this.resultsWaiting.render(), ...gauges].join('\n') + '\n';
  }
}
