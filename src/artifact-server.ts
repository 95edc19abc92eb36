/**
 * HTTP server inside the worker: serves completed APK cache entries by sha256 (with Range) so
 * agents can install from a URL, plus `/metrics` and `/healthz`. Read-only, no listing.
 *
 * With a token configured every request must carry it, as `Authorization: Bearer <token>` or
 * `?token=<token>`. Agents only ever receive a URL, and that URL is recorded in workflow history
 * (it is part of resolveApk's result), so install URLs never carry the secret itself: they carry
 * `?token=<expiry>.<HMAC(secret, sha256 and expiry)>`, which opens that one APK until it expires.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ApkCache } from './activities/apk-cache';
import type { Metrics } from './metrics';

/** Options of the artifact server. */
export interface ArtifactServerOptions {
  cache: ApkCache;
  metrics: Metrics;
  /** Bind address (default 127.0.0.1). */
  host?: string;
  /** Port; 0 picks a free one. */
  port?: number;
  /** Extra exposition text appended to /metrics (e.g. the SDK's metrics). */
  extraMetrics?: () => Promise<string> | string;
  /** Secret every request must present (bearer token, raw or signed ?token=); empty: no check. */
  token?: string;
  log?: (msg: string, meta?: Record<string, unknown>) => void;
}

const APK_PATH = /^\/apk\/([a-f0-9]{64})(?:\.apk)?$/;

function signature(secret: string, sha256: string, expires: number): string {
  return createHmac('sha256', secret).update(`apk:${sha256}:${expires}`).digest('base64url');
}

/** Compares secrets in constant time whatever their lengths. */
function sameSecret(a: string, b: string): boolean {
  const ha = createHmac('sha256', 'compare').update(a).digest();
  const hb = createHmac('sha256', 'compare').update(b).digest();
  return timingSafeEqual(ha, hb) && a.length === b.length;
}

/**
 * The URL an agent installs a cached APK from. With a secret it carries a signature valid for
 * `ttlMs`, never the secret itself.
 */
export function artifactInstallUrl(baseUrl: string, sha256: string, secret = '', ttlMs = 24 * 3_600_000, now = Date.now()): string {
  const url = `${baseUrl.replace(/\/+$/, '')}/apk/${sha256}.apk`;
  if (!secret) return url;
  const expires = Math.floor((now + ttlMs) / 1000);
  return `${url}?token=${expires}.${signature(secret, sha256, expires)}`;
}

/** True when a request for `sha256` (or for any path when undefined) presents the secret or a valid signature. */
export function authorised(secret: string, headers: http.IncomingHttpHeaders, query: URLSearchParams, sha256?: string, now = Date.now()): boolean {
  if (!secret) return true;
  const auth = headers.authorization;
  if (typeof auth === 'string' && /^Bearer\s+/i.test(auth) && sameSecret(auth.replace(/^Bearer\s+/i, ''), secret)) return true;
  const token = query.get('token');
  if (token === null) return false;
  if (sameSecret(token, secret)) return true;
  const m = /^(\d{1,12})\.([A-Za-z0-9_-]{43})$/.exec(token);
  if (!m || !sha256) return false;
  const expires = Number(m[1]);
  return expires * 1000 >= now && sameSecret(m[2]!, signature(secret, sha256, expires));
}

/** The worker's artifact and metrics server. */
export class ArtifactServer {
  private server?: http.Server;
  private closed = false;

  constructor(private readonly opts: ArtifactServerOptions) {}

  /** Starts listening; resolves to the base URL. */
  async start(): Promise<string> {
    const server = http.createServer((req, res) => {
      this.handle(req, res).catch((err) => {
        // The path only: the query may hold a token.
        this.opts.log?.('artifact server request failed', { path: (req.url ?? '').split('?')[0], error: String(err) });
        if (!res.headersSent) res.writeHead(500).end();
        else res.destroy();
      });
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.port ?? 0, this.opts.host ?? '127.0.0.1', () => resolve());
    });
    const addr = server.address() as AddressInfo;
    const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
    return `http://${host}:${addr.port}`;
  }

  /** Port actually bound. */
  get port(): number {
    return (this.server?.address() as AddressInfo | null)?.port ?? 0;
  }

  /** Stops the server; safe to call twice. */
  async close(): Promise<void> {
    if (this.closed || !this.server) return;
    this.closed = true;
    const server = this.server;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    const sha = APK_PATH.exec(url.pathname)?.[1];
    if (!authorised(this.opts.token ?? '', req.headers, url.searchParams, sha)) {
      res.writeHead(401, { 'www-authenticate': 'Bearer realm="device-traversal artifacts"', 'content-type': 'text/plain' }).end('unauthorised\n');
      return;
    }
    if (url.pathname === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      return;
    }
    if (url.pathname === '/metrics') {
      const extra = this.opts.extraMetrics ? await this.opts.extraMetrics() : '';
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(this.opts.metrics.render() + extra);
      return;
    }
    const size = sha ? await this.opts.cache.stat(sha) : undefined;
    if (!sha || size === undefined) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    // Retained while streaming (this process never evicts it) and leased (nor does any other).
    const release = this.opts.cache.retain(sha);
    await this.opts.cache.touch(sha);
    try {
      await this.sendFile(req, res, this.opts.cache.blobPath(sha), size, sha);
    } finally {
      release();
    }
  }

  private async sendFile(req: http.IncomingMessage, res: http.ServerResponse, file: string, size: number, sha: string): Promise<void> {
    let start = 0;
    let end = size - 1;
    let status = 200;
    const range = req.headers.range;
    if (range) {
      const r = /^bytes=(\d*)-(\d*)$/.exec(range.trim());
      if (!r || (r[1] === '' && r[2] === '')) {
        res.writeHead(416, { 'content-range': `bytes */${size}` }).end();
        return;
      }
      if (r[1] === '') {
        start = Math.max(0, size - Number(r[2]));
      } else {
        start = Number(r[1]);
        if (r[2] !== '') end = Math.min(end, Number(r[2]));
      }
      if (start > end || start >= size) {
        res.writeHead(416, { 'content-range': `bytes */${size}` }).end();
        return;
      }
      status = 206;
    }
    const headers: http.OutgoingHttpHeaders = {
      'content-type': 'application/vnd.android.package-archive',
      'content-length': end - start + 1,
      'accept-ranges': 'bytes',
      etag: `"${sha}"`,
      'cache-control': 'public, max-age=31536000, immutable',
    };
    if (status === 206) headers['content-range'] = `bytes ${start}-${end}/${size}`;
    res.writeHead(status, headers);
    if (req.method === 'HEAD' || size === 0) {
      res.end();
      return;
    }
    const metrics = this.opts.metrics;
    const meter = new Transform({
      transform(chunk: Buffer, _e, cb) {
        metrics.bytesServed.inc({}, chunk.length);
        cb(null, chunk);
      },
    });
    // Check the file still exists (eviction) before streaming; a vanished blob ends the response early.
    await fsp.access(file);
    await pipeline(createReadStream(file, { start, end }), meter, res).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ERR_STREAM_PREMATURE_CLOSE') throw err;
    });
  }
}
