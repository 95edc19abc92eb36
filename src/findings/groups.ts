/**
 * Finding groups: one per app and signature, kept in Redis across runs, devices and tasks, the way a
 * crash reporter folds stack traces into issues. This module holds the shapes and the pure parts;
 * the publish script (activities/publish-script.ts) writes groups, and `read.ts` reads them back.
 */
import type { Finding, FindingKind } from '../contract/messages';
import { signatureGroups } from '../contract/signature-groups';

/** How many members a group's sorted sets keep (the most recent ones); the count counts every occurrence published. */
export const GROUP_CAPS = { devices: 500, tasks: 200, apks: 100 };

/** One signature's share of a result, as the publish script takes it. */
export interface GroupUpdate {
  signature: string;
  kind: FindingKind;
  exception: string;
  message: string;
  /** Occurrences in this result. */
  count: number;
  /** First and last time found in this result, ms since the epoch. */
  firstMs: number;
  lastMs: number;
  /** The occurrence with frames, as JSON: the group's example when the group is new. */
  example: string;
}

/**
 * Folds a result's findings into one update per signature, in the order first found. Repeats in a
 * result carry no frames, so the example is the occurrence that has them. Times after `nowMs` (a
 * tool's clock ahead of ours) count as `nowMs`.
 */
export function groupUpdates(findings: readonly Finding[], nowMs = Date.now()): GroupUpdate[] {
  const msOf = (f: Finding) => {
    const at = Date.parse(f.foundAt);
    return Number.isNaN(at) ? nowMs : Math.min(at, nowMs);
  };
  return signatureGroups(findings).map(({ signature, example, occurrences }) => {
    const times = occurrences.map(msOf);
    return {
      signature,
      kind: example.kind,
      exception: example.exception,
      message: example.message,
      count: occurrences.length,
      firstMs: Math.min(...times),
      lastMs: Math.max(...times),
      example: exampleJson(example),
    };
  });
}

/** A finding as a group keeps it: without the per-result flag. */
function exampleJson(f: Finding): string {
  return JSON.stringify(withoutFlag(f));
}

/** A finding without its `newForApp` flag, which belongs to one published result. */
export function withoutFlag(f: Finding): Finding {
  const plain = { ...f };
  delete plain.newForApp;
  return plain;
}

/** A group as read back from Redis. */
export interface FindingGroup {
  packageName: string;
  signature: string;
  kind: FindingKind;
  exception: string;
  message: string;
  /** Occurrences over every published result. */
  count: number;
  firstSeen: string;
  lastSeen: string;
  /** The task and device that met it first and last. */
  firstTask: string;
  firstDevice: string;
  lastTask: string;
  lastDevice: string;
  /** The most recent devices, tasks and APK hashes (sha256) it was seen on, newest first (capped by GROUP_CAPS). */
  devices: string[];
  tasks: string[];
  apks: string[];
  /** One occurrence with its frames. */
  example?: Finding;
}
