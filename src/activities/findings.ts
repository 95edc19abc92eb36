/**
 * Findings: the crashes and ANRs a traversal tool reports, and their signatures.
 *
 * A signature groups occurrences of one bug across devices, attempts and runs. It hashes the kind,
 * the exception class and the first in-app frames as `class.method`, the way crash reporters group
 * Java stacks: line numbers, addresses, lambda and synthetic frames are left out, and framework
 * frames (android.*, java.*, …) only count when a stack has no in-app frame at all. Changing what
 * goes into the hash splits every existing group, so the algorithm carries a version tag.
 */
import { createHash } from 'node:crypto';
import type { Finding, FindingKind } from '../contract/messages';
import { isFrameworkFrame } from '../contract/signature-groups';

/** Version of the signature algorithm, part of the hashed text. */
export const SIGNATURE_VERSION = 'v1';
/** In-app frames that go into a signature. */
export const SIGNATURE_FRAMES = 5;
/** Hex characters of a signature. */
const SIGNATURE_LENGTH = 12;

/** Caps that keep one finding small: it travels through heartbeats, history and Redis. */
const LIMITS = { exception: 200, message: 500, frame: 300, frames: 30, screenshot: 300 };

function clip(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/**
 * The `class.method` of one Java stack frame, or undefined for frames that never count:
 * `at com.x.Foo.bar(Foo.java:12)` → `com.x.Foo.bar`; lambda bodies and synthetic lambda classes → undefined.
 */
export function frameKey(frame: string): string | undefined {
  let f = frame.trim().replace(/^at\s+/, '');
  const paren = f.indexOf('(');
  if (paren >= 0) f = f.slice(0, paren);
  f = f.replace(/\s+/g, '');
  if (!f) return undefined;
  const dot = f.lastIndexOf('.');
  const cls = dot > 0 ? f.slice(0, dot) : f;
  const method = dot > 0 ? f.slice(dot + 1) : '';
  if (/\$\$Lambda|\$\$ExternalSyntheticLambda|\$lambda\$|^lambda\$/.test(cls) || method.startsWith('lambda$'))
    return undefined;
  // Generated reflection accessors carry a counter that differs from process to process.
  // Anonymous classes ($1) stay: they name distinct code.
  return `${cls.replace(/(GeneratedMethodAccessor|GeneratedConstructorAccessor)\d+$/, '$1')}.${method}`.replace(
    /0x[0-9a-f]+/gi,
    '',
  );
}

/** The exception's class name without a message (`java.lang.X: boom` → `java.lang.X`). */
export function exceptionClass(exception: string): string {
  return exception.split(':')[0]!.trim();
}

/** The frames that a signature hashes: the first in-app ones, else the first of any kind. */
export function signatureFrames(frames: readonly string[]): string[] {
  const keys = frames.map(frameKey).filter((k): k is string => k !== undefined);
  const inApp = keys.filter((k) => !isFrameworkFrame(k));
  return (inApp.length ? inApp : keys).slice(0, SIGNATURE_FRAMES);
}

/** A short stable hash of a finding's kind, exception class and top in-app frames. */
export function signatureOf(kind: FindingKind, exception: string, frames: readonly string[]): string {
  const text = [SIGNATURE_VERSION, kind, exceptionClass(exception), ...signatureFrames(frames)].join('|');
  return createHash('sha256').update(text).digest('hex').slice(0, SIGNATURE_LENGTH);
}

/** What a tool reports about a finding before the runner adds attempt, time and signature. */
export interface RawFinding {
  kind?: unknown;
  exception?: unknown;
  message?: unknown;
  frames?: unknown;
  step?: unknown;
  screenshot?: unknown;
  foundAt?: unknown;
}

/**
 * Turns a tool's finding record into a Finding, or explains why it cannot. Strings are capped, the
 * screenshot must be a relative path inside the report folder, and the signature is computed here.
 */
export function toFinding(raw: RawFinding, attempt: number, now = new Date()): Finding | string {
  if (raw.kind !== 'crash' && raw.kind !== 'anr')
    return `kind must be "crash" or "anr", got ${JSON.stringify(raw.kind)}`;
  if (typeof raw.exception !== 'string' || !raw.exception.trim()) return 'exception must be a non-empty string';
  const frames = Array.isArray(raw.frames) ? raw.frames.filter((f): f is string => typeof f === 'string') : [];
  const exception = clip(raw.exception.trim(), LIMITS.exception);
  const finding: Finding = {
    kind: raw.kind,
    signature: signatureOf(raw.kind, exception, frames),
    exception,
    message: clip(typeof raw.message === 'string' ? raw.message : '', LIMITS.message),
    frames: frames.slice(0, LIMITS.frames).map((f) => clip(f, LIMITS.frame)),
    attempt,
    foundAt:
      typeof raw.foundAt === 'string' && !Number.isNaN(Date.parse(raw.foundAt)) ? raw.foundAt : now.toISOString(),
  };
  if (typeof raw.step === 'number' && Number.isSafeInteger(raw.step) && raw.step >= 0) finding.step = raw.step;
  if (typeof raw.screenshot === 'string' && isSafeRelativePath(raw.screenshot))
    finding.screenshot = clip(raw.screenshot, LIMITS.screenshot);
  return finding;
}

/** A relative path that stays inside its folder (no `..`, no absolute path, no backslashes or NUL). */
export function isSafeRelativePath(p: string): boolean {
  return (
    p.length > 0 &&
    p.length <= 500 &&
    !p.startsWith('/') &&
    !/[\\\0]/.test(p) &&
    !p.split('/').some((s) => s === '..' || s === '')
  );
}

/** Parses a tool's output line against the finding pattern (a regex with a `json` group). */
export function parseFindingLine(line: string, pattern: RegExp): RawFinding | undefined {
  const json = pattern.exec(line)?.groups?.json;
  if (json === undefined) return undefined;
  try {
    const v = JSON.parse(json) as unknown;
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as RawFinding) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Merges findings of several attempts into one list: a finding reported again by a resumed attempt
 * (same kind, signature and step) is kept once, from the earliest attempt. Ordered by step, then time.
 */
export function mergeFindings(lists: Iterable<readonly Finding[]>): Finding[] {
  const byKey = new Map<string, Finding>();
  for (const list of lists)
    for (const f of list) {
      const key = `${f.kind}|${f.signature}|${f.step ?? f.foundAt}`;
      const seen = byKey.get(key);
      if (!seen || f.attempt < seen.attempt) byKey.set(key, f);
    }
  return [...byKey.values()].sort((a, b) => (a.step ?? 0) - (b.step ?? 0) || a.foundAt.localeCompare(b.foundAt));
}

/** Most findings a result carries; findings.json in the report always has them all. */
export const MAX_RESULT_FINDINGS = 500;

/**
 * The findings a result carries: every occurrence, with message and frames only on the first one
 * of each signature (repeats of a bug add nothing but their step and time), and at most `max`
 * entries; `omitted` counts what did not fit.
 */
export function findingsForResult(
  all: readonly Finding[],
  max = MAX_RESULT_FINDINGS,
): { findings: Finding[]; omitted: number; crashes: number; anrs: number } {
  const seen = new Set<string>();
  const out: Finding[] = [];
  for (const f of all.slice(0, max)) {
    if (seen.has(f.signature)) out.push({ ...f, message: '', frames: [] });
    else {
      seen.add(f.signature);
      out.push(f);
    }
  }
  const crashes = all.filter((f) => f.kind === 'crash').length;
  return { findings: out, omitted: Math.max(0, all.length - max), crashes, anrs: all.length - crashes };
}
