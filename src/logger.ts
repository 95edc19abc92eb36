/** JSON-lines logger used by entry points and installed as the Temporal runtime logger. */
import type { LogLevel, LogMetadata, Logger } from '@temporalio/common';
import { parseWorkflowId } from './contract/messages';

const ORDER: Record<string, number> = { TRACE: 0, DEBUG: 1, INFO: 2, WARN: 3, ERROR: 4 };

/** A logger writing one JSON object per line; secrets listed in `redact` are masked in every line. */
export class JsonLogger implements Logger {
  private readonly min: number;
  private readonly masks: string[];
  constructor(
    private readonly base: Record<string, unknown> = {},
    level: string = 'info',
    private readonly out: NodeJS.WritableStream = process.stdout,
    private readonly redact: string[] = [],
  ) {
    this.min = ORDER[level.toUpperCase()] ?? 2;
    this.masks = secretForms(redact);
  }

  /** Writes one line at `level`. */
  log(level: LogLevel, message: string, meta?: LogMetadata): void {
    if ((ORDER[level] ?? 2) < this.min) return;
    const entry: Record<string, unknown> = {
      time: new Date().toISOString(),
      level: level.toLowerCase(),
      msg: message,
      ...this.base,
    };
    for (const [k, v] of Object.entries(meta ?? {})) {
      // The SDK passes its own fields (workflowId, activityType…) in meta; keep them flat.
      entry[k] = v instanceof Error ? { name: v.name, message: v.message } : v;
    }
    // Workflow ids carry the task and device ([<deployment>/]traversal/<taskId>/<deviceId>, …/device/<deviceId>):
    // surface them as fields so every line can be filtered by task or device.
    if (typeof entry.workflowId === 'string') {
      const id = parseWorkflowId(entry.workflowId);
      if (id?.taskId) entry.taskId ??= id.taskId;
      if (id) entry.deviceId ??= id.deviceId;
    }
    let line = safeStringify(entry);
    for (const form of this.masks) line = line.split(form).join('***');
    this.out.write(line + '\n');
  }
  trace(message: string, meta?: LogMetadata): void {
    this.log('TRACE', message, meta);
  }
  debug(message: string, meta?: LogMetadata): void {
    this.log('DEBUG', message, meta);
  }
  info(message: string, meta?: LogMetadata): void {
    this.log('INFO', message, meta);
  }
  warn(message: string, meta?: LogMetadata): void {
    this.log('WARN', message, meta);
  }
  error(message: string, meta?: LogMetadata): void {
    this.log('ERROR', message, meta);
  }
  /** A logger with extra fixed fields on every line. */
  child(fields: Record<string, unknown>): JsonLogger {
    return new JsonLogger(
      { ...this.base, ...fields },
      Object.keys(ORDER).find((k) => ORDER[k] === this.min),
      this.out,
      this.redact,
    );
  }
}

/**
 * Every form a secret may take in a JSON line: as given, URL-decoded (a password taken from
 * REDIS_URL is percent-encoded), URL-encoded (inside a logged URL) and JSON-escaped (quotes,
 * backslashes, control characters). Longest first, so a longer form is masked whole.
 */
export function secretForms(secrets: string[]): string[] {
  const forms = new Set<string>();
  for (const s of secrets.filter(Boolean)) {
    const variants = [s, encodeURIComponent(s)];
    try {
      variants.push(decodeURIComponent(s));
    } catch {
      // not percent-encoded
    }
    for (const v of variants) {
      forms.add(v);
      forms.add(JSON.stringify(v).slice(1, -1));
    }
  }
  return [...forms].filter(Boolean).sort((a, b) => b.length - a.length);
}

function safeStringify(value: unknown): string {
  try {
    return JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
  } catch {
    return JSON.stringify({ msg: String((value as { msg?: unknown }).msg), note: 'unserialisable metadata dropped' });
  }
}
