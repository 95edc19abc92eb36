/**
 * Memory of a process and of every process below it, sampled from /proc. The root's RSS comes from
 * /proc/<pid>/status (VmRSS, and the kernel's high-water mark VmHWM); descendants are found by
 * their parent pid in /proc/<pid>/stat on every sample, so short-lived children are seen too.
 *
 * A descendant with the root's own command name is not counted: it is a child caught between fork
 * and exec (20 traversals spawned at once make that window visible at 20 Hz), whose RSS is the
 * parent's memory, not a process of its own. The traversal commands never run the root's program.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { readMemory } from '../../dev/rss';
import { round } from './report';

/** Bytes per page for the rss field of /proc/<pid>/stat (4 KiB on the Linux machines this runs on). */
const PAGE = 4096;

/** What a {@link TreeSampler} saw. */
export interface TreeMemory {
  samples: number;
  /** Achieved sampling rate, samples per second. */
  hz: number;
  /** Highest sampled RSS of the root process, bytes. */
  peak: number;
  /** The root's VmHWM at the end (the kernel's own peak, between samples included), bytes. */
  hwm: number;
  /** Highest summed RSS of all descendants in one sample, bytes (not part of the root's RSS). */
  childrenPeakSum: number;
  /** Highest RSS of a single descendant, bytes. */
  childMaxRss: number;
  /** Most descendants alive in one sample. */
  childrenMaxCount: number;
  /** Distinct command names of the descendants seen. */
  childCommands: string[];
}

interface ProcEntry {
  pid: number;
  ppid: number;
  comm: string;
  rss: number;
}

/** Every live process: pid, parent, command name and RSS in bytes (zombies are skipped). */
function processTable(): ProcEntry[] {
  const out: ProcEntry[] = [];
  for (const name of readdirSync('/proc')) {
    if (name.charCodeAt(0) < 48 || name.charCodeAt(0) > 57) continue;
    let text: string;
    try {
      text = readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue; // gone meanwhile
    }
    // The command name may contain spaces and parentheses; the fields after the last ')' do not.
    const close = text.lastIndexOf(')');
    const f = text.slice(close + 2).split(' ');
    if (f[0] === 'Z') continue;
    out.push({
      pid: Number(name),
      ppid: Number(f[1]),
      comm: text.slice(text.indexOf('(') + 1, close),
      rss: Number(f[21]) * PAGE,
    });
  }
  return out;
}

/** Samples the RSS of a process and of all its descendants at a fixed rate until stopped. */
export class TreeSampler {
  private samples = 0;
  private peak = 0;
  private hwm = 0;
  private childrenPeakSum = 0;
  private childMaxRss = 0;
  private childrenMaxCount = 0;
  private readonly commands = new Set<string>();
  private timer?: NodeJS.Timeout;
  private t0 = 0;
  private result?: TreeMemory;

  /** Samples `pid` every `intervalMs` (default 50 ms, 20 Hz nominal). */
  constructor(
    readonly pid: number,
    private readonly intervalMs = 50,
  ) {}

  /** Takes the first sample and starts the timer. */
  start(): this {
    this.t0 = performance.now();
    this.sample();
    this.timer = setInterval(() => this.sample(), this.intervalMs);
    this.timer.unref();
    return this;
  }

  /** Stops sampling and returns what was seen; later calls return the same figures. */
  stop(): TreeMemory {
    if (this.result) return this.result;
    clearInterval(this.timer);
    this.sample();
    const seconds = (performance.now() - this.t0) / 1000;
    this.result = {
      samples: this.samples,
      hz: seconds > 0 ? round(this.samples / seconds) : 0,
      peak: this.peak,
      hwm: Math.max(this.hwm, this.peak),
      childrenPeakSum: this.childrenPeakSum,
      childMaxRss: this.childMaxRss,
      childrenMaxCount: this.childrenMaxCount,
      childCommands: [...this.commands].sort(),
    };
    return this.result;
  }

  private sample(): void {
    const root = readMemory(this.pid);
    if (!root) return; // the process is gone: nothing more to see
    this.samples++;
    this.peak = Math.max(this.peak, root.rss);
    this.hwm = Math.max(this.hwm, root.hwm);
    const table = processTable();
    const rootComm = table.find((p) => p.pid === this.pid)?.comm;
    const byParent = new Map<number, ProcEntry[]>();
    for (const p of table) {
      const list = byParent.get(p.ppid);
      if (list) list.push(p);
      else byParent.set(p.ppid, [p]);
    }
    let sum = 0;
    let count = 0;
    const queue = [this.pid];
    for (let pid = queue.pop(); pid !== undefined; pid = queue.pop()) {
      for (const child of byParent.get(pid) ?? []) {
        if (child.comm === rootComm) continue;
        sum += child.rss;
        count++;
        this.childMaxRss = Math.max(this.childMaxRss, child.rss);
        this.commands.add(child.comm);
        queue.push(child.pid);
      }
    }
    this.childrenPeakSum = Math.max(this.childrenPeakSum, sum);
    this.childrenMaxCount = Math.max(this.childrenMaxCount, count);
  }
}
