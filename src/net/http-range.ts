/**
 * The `Range` request header as RFC 9110 §14.2 has servers read it, for the artifact server and the
 * APK origin simulator alike. Only GET has range handling; the caller passes the header of a GET
 * alone. A server may always ignore `Range` and answer 200 with the whole representation, and must
 * ignore a range unit it does not know; so an unknown unit, a multi-range (served whole rather
 * than as multipart/byteranges) and a syntactically invalid header all mean "ignore". Only one
 * satisfiable byte range is served as 206; one that starts past the end is a 416.
 */

/** First and last byte to send, both inclusive. */
export interface ByteRange {
  start: number;
  end: number;
}

/**
 * The one range to serve from a representation of `size` bytes, 'unsatisfiable' (answer 416 with
 * `Content-Range: bytes *\/<size>`), or undefined: ignore the header and send all of it (200).
 */
export function parseRange(header: string | undefined, size: number): ByteRange | 'unsatisfiable' | undefined {
  if (header === undefined) return undefined;
  const eq = header.indexOf('=');
  // Range units are case-insensitive tokens (RFC 9110 §14.1).
  if (eq < 0 || header.slice(0, eq).toLowerCase() !== 'bytes') return undefined;
  // A list: elements separated by commas with optional whitespace; empty elements are ignored (§5.6.1).
  const specs = header
    .slice(eq + 1)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (specs.length !== 1) return undefined;
  const spec = specs[0]!;
  const suffix = /^-(\d+)$/.exec(spec);
  if (suffix) {
    const length = Number(suffix[1]);
    return length === 0 || size === 0 ? 'unsatisfiable' : { start: Math.max(0, size - length), end: size - 1 };
  }
  const span = /^(\d+)-(\d*)$/.exec(spec);
  if (!span) return undefined;
  const start = Number(span[1]);
  const last = span[2] === '' ? Infinity : Number(span[2]);
  if (last < start) return undefined; // an invalid range makes the whole header invalid
  if (start >= size) return 'unsatisfiable';
  return { start, end: Math.min(last, size - 1) };
}
