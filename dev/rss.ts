/** Samples a process's resident memory from /proc at a fixed rate (for the demo and benchmarks). */
import { readFileSync } from 'node:fs';

/** Reads VmRSS and VmHWM of a pid in bytes; undefined once the process is gone. */
export function readMemory(pid: number): { rss: number; hwm: number } | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
    return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
  } catch {
    return undefined;
  }
}

/** Samples one pid every `intervalMs` (default 100 ms, i.e. 10 Hz) until stopped. */
export class RssSampler {
  peak = 0;
  hwm = 0;
  samples = 0;
  first?: number;
  private timer?: NodeJS.Timeout;

  constructor(
    readonly pid: number,
    private readonly intervalMs = 100,
  ) {}

  /** Starts sampling. */
  start(): this {
    this.sample();
    this.timer = setInterval(() => this.sample(), this.intervalMs);
    this.timer.unref();
    return this;
  }

  /** Takes one sample now; returns the current RSS in bytes. */
  sample(): number | undefined {
    const m = readMemory(this.pid);
    if (!m) return undefined;
    this.samples++;
    this.first ??= m.rss;
    this.peak = Math.max(this.peak, m.rss);
    this.hwm = Math.max(this.hwm, m.hwm);
    return m.rss;
  }

  /** Stops sampling; safe to call twice. */
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}

/** Formats bytes as MiB with one decimal. */
export function mib(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}
