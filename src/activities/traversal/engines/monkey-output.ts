/**
 * Reads the output of Android's Monkey and of Fastbot (which prints in Monkey's format, with a
 * `[Fastbot][<time>] ` or `[Fastbot]*** ERROR *** ` prefix) one line at a time, and keeps what the
 * verdict and the progress need.
 *
 * What the formats look like (AOSP Monkey.java and Fastbot's Monkey fork; see the research notes):
 * - progress: `    // Sending event #<n>` every hundred events, `Events injected: <n>` at the end;
 * - a crash, on stderr: `// CRASH: <process> (pid <n>)`, `// Short Msg: …`, `// Long Msg: …`,
 *   build lines, then the stack, every line prefixed `// `;
 * - an ANR, on stderr: `// NOT RESPONDING: <process> (pid <n>)`, then the reason and process stats;
 * - the end: `// Monkey finished`, or `** Monkey aborted due to error.`;
 * - a tool that never ran: `** No activities found to run, monkey aborted.`, a missing class, a
 *   refused option.
 * stdout and stderr are fed apart (adb's shell protocol v2 keeps them apart; v1 merges them into
 * stdout, which the parser takes the same way), so an open block is kept per stream; it ends at the
 * stream's next line that is not `// …`, at a new block, or at the end of the output.
 */
import type { RawFinding } from '../../findings';

/** Which stream a line came from. */
export type OutputStream = 'stdout' | 'stderr';

/** Lines that show the tool never got to inject an event: a setup problem, not the app's. */
const NEVER_RAN = [
  /No activities found to run, monkey aborted/,
  /Could not find or load main class/,
  /ClassNotFoundException: com\.android\.commands\.monkey/,
  /^\*\* Error: /,
  /^Error: Unknown option/,
  /(^|\s)(monkey|app_process): (not found|inaccessible or not found)/,
  /Error: (Could not|Unable to) (open|find|access)/,
];
/** What adb prints when the phone went away under a running shell. */
const DEVICE_GONE =
  /^(adb: )?error: (device offline|closed|device '[^']*' not found|device not found|no devices\/emulators found|protocol fault.*|connection reset.*)$/;

/** Comments of the run itself, never part of a crash or ANR block. */
const RUN_COMMENT = /^(\[calendar_time|Sending event #|Monkey finished|App appears|Monkey: seed=)/;
/** Lines of the process stats that follow an ANR header. */
const ANR_STATS = /^\s*(ANR in |PID: |Reason: |Parent: |Frozen: |Load: |CPU usage |[\d.]+% )/;

/** Lines of the `anr traces:` dump that may follow; only the first thread's (main's) frames are kept. */
const ANR_TRACES = /^(anr traces:|----- (pid|end) |Cmd line: |"[^"]*".* tid=|\s+at\s|\s+- |\s*\| )/;

/** Prefixes Fastbot puts before its lines. */
const FASTBOT_PREFIX = /^\[Fastbot\](\[[^\]]*\]|\*\*\* (ERROR|WARNING) \*\*\*)\s*/;

/** One crash or ANR block being read. */
interface Block {
  kind: 'crash' | 'anr';
  process: string;
  pid?: number;
  shortMsg?: string;
  longMsg?: string;
  reason?: string;
  frames: string[];
  /** An ANR's traces moved past the first thread: no more frames. */
  framesDone?: boolean;
}

/** Incremental parser of one Monkey or Fastbot run's output. */
export class MonkeyOutput {
  /** Highest event number seen (`// Sending event #N`, `Events injected: N`). */
  events = 0;
  crashes = 0;
  anrs = 0;
  /** `// Monkey finished` was printed. */
  finished = false;
  /** `** Monkey aborted due to error.` (or a system crash at an event) was printed. */
  aborted = false;
  /** The first line that shows the tool never ran. */
  neverRan?: string;
  /** The first line where adb said the phone went away. */
  deviceGone?: string;
  private readonly open: Partial<Record<OutputStream, Block>> = {};

  /** Takes one line of one stream; returns the findings whose blocks this line closed. */
  feed(stream: OutputStream, rawLine: string): RawFinding[] {
    const line = rawLine.replace(FASTBOT_PREFIX, '').replace(/\r$/, '');
    const out: RawFinding[] = [];
    const comment = /^\s*\/\/ ?(.*)$/.exec(line);
    const text = comment ? comment[1]!.trimEnd() : undefined;
    const start = text !== undefined ? /^(CRASH|NOT RESPONDING): (\S+) \(pid (\d+)\)/.exec(text) : null;
    const openAnr = this.open[stream]?.kind === 'anr' ? this.open[stream] : undefined;
    if (openAnr && text === undefined && (ANR_STATS.test(line) || ANR_TRACES.test(line))) {
      // Monkey prints the ANR's process stats and the traces after its header without the `// ` prefix.
      this.addToBlock(openAnr, line);
      return out;
    }
    const plain = text === undefined || RUN_COMMENT.test(text);
    if (start || plain) {
      // A new block, a line that is no comment, or one of the run's own comments ends the block open on this stream.
      const done = this.close(stream);
      if (done) out.push(done);
    }
    if (start) {
      this.open[stream] = {
        kind: start[1] === 'CRASH' ? 'crash' : 'anr',
        process: start[2]!,
        pid: Number(start[3]),
        frames: [],
      };
      return out;
    }
    if (text !== undefined && !plain) {
      const block = this.open[stream];
      if (block) this.addToBlock(block, text);
      else this.other(text);
      return out;
    }
    this.other(text ?? line.trim());
    return out;
  }

  /** Ends the output: closes the blocks still open. */
  end(): RawFinding[] {
    return (['stdout', 'stderr'] as const).map((s) => this.close(s)).filter((f): f is RawFinding => f !== undefined);
  }

  private addToBlock(block: Block, text: string): void {
    const field = /^\s*(Short Msg|Long Msg|Reason|Build Label|Build Changelist|Build Time|Version|stat): ?(.*)$/.exec(
      text,
    );
    if (field) {
      if (field[1] === 'Short Msg') block.shortMsg = field[2];
      else if (field[1] === 'Long Msg') block.longMsg = field[2];
      else if (field[1] === 'Reason') block.reason = field[2];
      return;
    }
    if (/^"[^"]*".* tid=/.test(text) && block.frames.length) block.framesDone = true;
    const frame = /^\s*at\s+(.+?)\s*$/.exec(text);
    if (frame && !block.framesDone) block.frames.push(`at ${frame[1]}`);
    else if (block.kind === 'anr' && !block.reason && text.trim() && !ANR_STATS.test(text) && !ANR_TRACES.test(text))
      block.reason = text.trim();
  }

  private other(line: string): void {
    const sending = /Sending event #(\d+)/.exec(line) ?? /^Events injected: (\d+)/.exec(line);
    if (sending) this.events = Math.max(this.events, Number(sending[1]));
    else if (/^Monkey finished/.test(line)) this.finished = true;
    else if (/^\*\* Monkey aborted due to error/.test(line) || /^\*\* System appears to have crashed/.test(line))
      this.aborted = true;
    else if (!this.deviceGone && DEVICE_GONE.test(line)) this.deviceGone = line;
    else if (!this.neverRan && this.events === 0 && NEVER_RAN.some((p) => p.test(line))) this.neverRan = line;
  }

  private close(stream: OutputStream): RawFinding | undefined {
    const block = this.open[stream];
    if (!block) return undefined;
    delete this.open[stream];
    if (block.kind === 'crash') this.crashes++;
    else this.anrs++;
    return toRawFinding(block);
  }
}

/** A block as a finding record, for toFinding (src/activities/findings.ts) to check and sign. */
function toRawFinding(b: Block): RawFinding {
  const where = `${b.process}${b.pid !== undefined ? ` (pid ${b.pid})` : ''}`;
  if (b.kind === 'anr') {
    return {
      kind: 'anr',
      exception: 'ANR',
      message: `${b.reason ?? 'not responding'} (in ${where})`,
      frames: b.frames,
    };
  }
  // The exception class is the Long Msg's first line up to ':'; the Short Msg is the fallback.
  const long = (b.longMsg ?? '').split('\n')[0]!.trim();
  const colon = long.indexOf(':');
  const exception = (colon >= 0 ? long.slice(0, colon) : long || b.shortMsg || 'crash').trim();
  // What the exception says comes first (it is what a reader scans for); the process and pid follow.
  const said = colon >= 0 ? long.slice(colon + 1).trim() : '';
  return {
    kind: 'crash',
    exception,
    message: `${said || b.shortMsg || exception} (in ${where})`,
    frames: b.frames,
  };
}
