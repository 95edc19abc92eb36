/**
 * Test double of a real phone: what a command of the mini shell sees (its streams, the phone, hang-up),
 * shared by the builtins, the package manager and the engines.
 */
import type { PhoneState } from './state';

/** The phone a command runs on. */
export interface PhoneContext {
  state: PhoneState;
  /** getprop table */
  props: Record<string, string>;
  /** Length of a fake minute relative to a real one (1 = real time), for Fastbot's --running-minutes. */
  timeScale: number;
}

/** Streams and signals of one running command. */
export interface Io {
  phone: PhoneContext;
  /** Writes to stdout; resolves once the host took it (at once when output is discarded). */
  out(text: string | Buffer): Promise<void>;
  /** Writes to stderr. */
  err(text: string | Buffer): Promise<void>;
  /** Next stdin chunk, or null at end of input. */
  stdin(): Promise<Buffer | null>;
  /** Runs `fn` when the host side goes away (SIGHUP); returns the unsubscribe function. */
  onHangup(fn: () => void): () => void;
  /** `NAME=value` prefixes of the command line. */
  env: Record<string, string>;
}

/** A builtin: returns the exit status. */
export type Command = (argv: string[], io: Io) => Promise<number> | number;

/** Resolves after ms milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Local time as "yyyy-MM-dd HH:mm:ss.SSS", the stamp Monkey and Fastbot print. */
export function stamp(d = new Date()): string {
  const p = (n: number, w = 2): string => String(n).padStart(w, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}
