/**
 * The dead-letter list (`traversal:tasks:dead`): where the starter puts an item it cannot run, with
 * the reason, so bad input is kept for a person to read and never blocks the queue.
 */
import { isUtf8 } from 'node:buffer';

/**
 * One entry of the dead-letter list (`traversal:tasks:dead`, newest first), stored as JSON.
 * The item is kept byte for byte: as text in `payload` when it is valid UTF-8 (as every JSON task
 * is), otherwise base64 in `payloadBase64` (and no `payload`), so the entry itself stays JSON.
 */
export interface DeadLetter {
  /** Why: the rules the item broke, or why the starter refused to send it (another deployment). */
  reason: string;
  /** Every rule the item broke, `<field>: <rule>`. */
  problems: string[];
  /** The item as text, when it is valid UTF-8. */
  payload?: string;
  /** The item's bytes in base64, when they are not valid UTF-8. */
  payloadBase64?: string;
  starterId: string;
  /** When it was dead-lettered, ISO 8601. */
  at: string;
}

/** The exact bytes of the item a dead letter holds. */
export function deadLetterPayload(entry: DeadLetter): Buffer {
  return entry.payloadBase64 !== undefined
    ? Buffer.from(entry.payloadBase64, 'base64')
    : Buffer.from(entry.payload ?? '', 'utf8');
}

/**
 * Moves an item from the processing list to the dead-letter list only if it is still there, so a
 * command resent after a lost reply cannot dead-letter it twice. KEYS: processing, dead; ARGV: item, entry.
 */
export const DEAD_LETTER_SCRIPT = `if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then redis.call('LPUSH', KEYS[2], ARGV[2]) return 1 end return 0`;

/** The entry for an item, keeping its bytes exactly (text when valid UTF-8, base64 otherwise). */
export function deadLetterEntry(raw: Buffer, reason: string, problems: string[], starterId: string): DeadLetter {
  return {
    reason,
    problems,
    ...(isUtf8(raw) ? { payload: raw.toString('utf8') } : { payloadBase64: raw.toString('base64') }),
    starterId,
    at: new Date().toISOString(),
  };
}
