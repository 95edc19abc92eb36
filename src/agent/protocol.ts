/**
 * The device agent protocol on the server side: routes, JSON bodies and error answers, shared by the
 * adb agent and the simulator (sim/ imports this file; src/ never imports sim/).
 *
 * Routes: `GET /mobile` (every phone), `GET /mobile/<id>` (status), `POST /mobile/<id>/installApp`,
 * `/launchApp`, `/uninstallApp`, `/reset`. Every answer is JSON; an error is `{error, deviceId?, …}`
 * with the status that tells the worker what to do (device-agent.ts): 404 unknown device, 409 busy,
 * 400/422 refused for good, 503 offline (retry later), anything else retryable.
 */
import type http from 'node:http';

/** One operation of the protocol (`list` is `GET /mobile`). */
export type AgentOp = 'list' | 'status' | 'install' | 'install-multipart' | 'launch' | 'uninstall' | 'reset';

/** A JSON object as the protocol sends and receives it. */
export type Json = Record<string, unknown>;

/** An answer other than 2xx: its status, message and extra body fields. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly extra: Json = {},
  ) {
    super(message);
  }
}

/** The status and body of a failed call: an HttpError as it says, anything else a 500 naming `who`. */
export function failureAnswer(err: unknown, who: string, op: string, deviceId: string): { status: number; body: Json } {
  if (err instanceof HttpError) return { status: err.status, body: { error: err.message, deviceId, ...err.extra } };
  return {
    status: 500,
    body: { error: `${who} failed on ${op} for device ${deviceId}: ${(err as Error).message}`, deviceId },
  };
}

/** A request matched to a device and operation, or the error answer for one that matches nothing. */
export type Route = { deviceId: string; op: AgentOp } | { status: number; error: string };

/** Largest JSON body read, bytes: APK bytes never travel as JSON. */
const JSON_LIMIT = 1024 * 1024;

/** Matches a request to its device and operation (`list` has the empty device id). */
export function parseRoute(req: http.IncomingMessage): Route {
  const pathname = (req.url ?? '/').split('?')[0] ?? '/';
  const parts = pathname.split('/').filter((p) => p !== '');
  const [root, rawId, action] = parts;
  const method = req.method ?? 'GET';
  if (root === 'mobile' && rawId === undefined) {
    return method === 'GET'
      ? { deviceId: '', op: 'list' }
      : { status: 405, error: `${pathname} expects GET, got ${method}` };
  }
  if (root !== 'mobile' || rawId === undefined || parts.length > 3) {
    return {
      status: 404,
      error: `unknown endpoint ${pathname}; use /mobile/<deviceId>[/installApp|launchApp|uninstallApp|reset]`,
    };
  }
  let deviceId: string;
  try {
    deviceId = decodeURIComponent(rawId);
  } catch {
    return { status: 400, error: `device id in ${pathname} is not valid URL encoding` };
  }
  const want = (m: string, op: AgentOp): Route =>
    method === m ? { deviceId, op } : { status: 405, error: `${pathname} expects ${m}, got ${method}` };
  switch (action) {
    case undefined:
      return want('GET', 'status');
    case 'installApp': {
      const multipart = /^multipart\/form-data/i.test(req.headers['content-type'] ?? '');
      return want('POST', multipart ? 'install-multipart' : 'install');
    }
    case 'launchApp':
      return want('POST', 'launch');
    case 'uninstallApp':
      return want('POST', 'uninstall');
    case 'reset':
      return want('POST', 'reset');
    default:
      return {
        status: 404,
        error: `unknown action ${action} for device ${deviceId}; use installApp, launchApp, uninstallApp or reset`,
      };
  }
}

/** Reads a JSON object body (empty body: `{}`); a malformed or oversized one is a 400. */
export async function readJson(req: http.IncomingMessage): Promise<Json> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > JSON_LIMIT)
      throw new HttpError(400, `JSON body larger than ${JSON_LIMIT} bytes; send APKs by URL or multipart`);
    chunks.push(chunk as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8').trim();
  if (text === '') return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, `body is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
    throw new HttpError(400, 'body must be a JSON object');
  return parsed as Json;
}

/** Answers with a JSON body, unless the answer already started or the client left. */
export function send(res: http.ServerResponse, status: number, body: Json): void {
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}
