/**
 * Identifier rules shared by the starter (task parsing) and the worker (the activities' own check):
 * an id that passes them is safe in a file path, a URL, a Redis key, a workflow id and a command's argv.
 */

/** Task ids: letters, digits, dot, dash, underscore; 1–128 characters; no leading dot. */
export const TASK_ID_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
/** Device ids: same alphabet, 1–64 characters. */
export const DEVICE_ID_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$/;
/** Android application ids: at least two dot-separated Java identifiers, at most 255 characters. */
export const PACKAGE_PATTERN = /^(?=.{3,255}$)[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+$/;
/** Activity names as given to `am start` (relative `.Main` or fully qualified). */
export const ACTIVITY_PATTERN = /^[A-Za-z0-9_.$/]{1,255}$/;

export const MAX_URL_LENGTH = 2048;

/** A short, printable preview of a bad value for an error message. */
export function preview(v: unknown): string {
  if (typeof v === 'string') {
    const j = JSON.stringify(v.length > 40 ? v.slice(0, 40) : v);
    return v.length > 40 ? `${j.slice(0, -1)}…" (${v.length} characters)` : j;
  }
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return `a ${typeof v}`;
}

/** One rule of the schema: returns the rule broken, or undefined. */
export type Check = (v: unknown) => string | undefined;

export const str =
  (pattern: RegExp, rule: string): Check =>
  (v) => {
    if (typeof v !== 'string') return `must be a string (${rule}), got ${preview(v)}`;
    return pattern.test(v) ? undefined : `must be ${rule}, got ${preview(v)}`;
  };

/** Rules of the identifiers, shared with the activities' defence-in-depth checks. */
export const ID_RULES = {
  taskId: { pattern: TASK_ID_PATTERN, rule: "1-128 letters, digits, '.', '_' or '-', not starting with '.'" },
  deviceId: { pattern: DEVICE_ID_PATTERN, rule: "1-64 letters, digits, '.', '_' or '-', not starting with '.'" },
  packageName: {
    pattern: PACKAGE_PATTERN,
    rule: 'an Android application id like com.example.app (at most 255 characters)',
  },
} as const;

/** Checks one identifier; returns `<field>: <rule>` or undefined. */
export function checkIdentifier(
  field: keyof typeof ID_RULES,
  value: unknown,
  label: string = field,
): string | undefined {
  const { pattern, rule } = ID_RULES[field];
  const p = str(pattern, rule)(value);
  return p ? `${label}: ${p}` : undefined;
}

/** Checks a URL is absolute http(s), short and without credentials; returns the problem or undefined. */
export function checkHttpUrl(field: string, value: unknown): string | undefined {
  if (typeof value !== 'string') return `${field}: must be a string URL, got ${preview(value)}`;
  if (value.length > MAX_URL_LENGTH)
    return `${field}: must be at most ${MAX_URL_LENGTH} characters, got ${value.length}`;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return `${field}: must be an absolute URL, got ${preview(value)}`;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    return `${field}: must use http or https, not ${url.protocol}`;
  if (url.username || url.password) return `${field}: must not carry credentials`;
  return undefined;
}
