/**
 * Findings folded by signature, the one way every reader does it: the publish script's group
 * updates, a task's table, the Web UI's details and the JUnit XML. Pure, so workflows use it too.
 */
import type { Finding } from './messages';

/** Packages whose frames are the platform's, not the app's. */
export const FRAMEWORK_PREFIXES = [
  'android.',
  'androidx.',
  'com.android.',
  'com.google.android.',
  'dalvik.',
  'java.',
  'javax.',
  'jdk.',
  'kotlin.',
  'kotlinx.',
  'libcore.',
  'sun.',
  'org.apache.harmony.',
];

/** True for a frame (or `class.method` key) of the platform (android.*, java.*, kotlin.*, …). */
export function isFrameworkFrame(frame: string): boolean {
  return FRAMEWORK_PREFIXES.some((p) => frame.startsWith(p));
}

/** The frame a reader looks at first: the first in-app frame, else the first; without the `at `. */
export function topFrame(frames: readonly string[]): string {
  const plain = frames.map((f) => f.trim().replace(/^at\s+/, ''));
  return plain.find((f) => !isFrameworkFrame(f)) ?? plain[0] ?? '';
}

/** Every occurrence of one signature, and the one that carries its details. */
export interface SignatureGroup {
  signature: string;
  /** The first occurrence with frames, else the first with a message, else the first (repeats carry neither). */
  example: Finding;
  /** In the order given. */
  occurrences: Finding[];
}

/** Findings grouped by signature, groups in the order their signature first appears. */
export function signatureGroups(findings: Iterable<Finding>): SignatureGroup[] {
  const groups = new Map<string, Finding[]>();
  for (const f of findings) {
    const list = groups.get(f.signature);
    if (list) list.push(f);
    else groups.set(f.signature, [f]);
  }
  return [...groups].map(([signature, occurrences]) => ({
    signature,
    example: occurrences.find((f) => f.frames.length > 0) ?? occurrences.find((f) => f.message) ?? occurrences[0]!,
    occurrences,
  }));
}
