/**
 * HTTP server inside the worker: serves completed APK cache entries by sha256 (with Range) so
 * agents can install from a URL, plus `/metrics` and `/healthz`. Read-only, no listing.
 *
 * With a token configured every request must carry it, as `Authorization: Bearer <token>` or
 * `?token=<token>`. Agents only ever receive a URL, and an agent is a party apart, so install URLs
 * never carry the secret itself: they carry `?token=<expiry>.<HMAC(secret, sha256 and expiry)>`,
 * which opens that one APK until it expires. installApp derives them on the worker that runs it
 * (src/activities/install-source.ts); they never enter workflow history.
 * The expiry must be written exactly as the signer writes it (decimal, no leading zero or sign).
 * The token is checked before anything else is done: a request without it never reaches the
 * cache or the disk, is answered 401 (nothing presented) or 403 (something wrong presented), and
 * its connection is closed.
 *
 * Leases: only an install renews the APK's cache lease, that is a GET through a valid signed
 * install URL whose response starts at byte 0 (the whole file, or a range from 0). A HEAD, a
 * range starting later, a read with the bearer token, and every read when no token is configured
 * (then every reader is anonymous) serve the bytes without renewing, so whoever merely knows a
 * sha256 cannot keep the cache over its cap. The worker renews leases itself when it resolves an
 * APK and right before it hands an install URL to an agent (install-source.ts); a file being served
 * is also kept from eviction by this process for the length of the transfer (retain).
 *
 * Connections: capped in total and per remote address (src/worker/connection-limiter.ts); a connection
 * must send its request headers within ARTIFACT_TIMEOUTS.headersMs, a keep-alive connection with
 * no request is closed after keepAliveMs, and a response whose socket takes no byte for idleMs is
 * cut. A slow but moving transfer is never cut, however long it runs.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ApkCache } from '../apk-cache';
import { ConnectionLimiter } from './connection-limiter';
import { parseRange, type ByteRange } from '../net/http-range';
import type { Metrics } from '../metrics';

/** Timeouts of the artifact server, ms. */
export interface ArtifactTimeouts {
  /** From accepting a connection (or from the first byte of a later request) to the end of its headers. */
  headersMs: number;
  /** A keep-alive connection that sends no next request for this long is closed (Node 20 waits 1 s more). */
  keepAliveMs: number;
  /**
   * A response during which the socket accepts no byte for this long (a reader that stopped
   * reading) is cut. The kernel only wakes a writer once half its send buffer (up to a few MiB)
   * has drained, so this must cover draining that at the slowest link an agent may have.
   */
  idleMs: number;
}

/** Default timeouts: 10 s for headers, 5 s keep-alive, 2 min without progress. */
export const ARTIFACT_TIMEOUTS: Readonly<ArtifactTimeouts> = { headersMs: 10_000, keepAliveMs: 5_000, idleMs: 120_000 };

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
  /** Open connections at most (DT_ARTIFACT_MAX_CONNECTIONS, default 256); 0: no cap. */
  maxConnections?: number;
  /** Open connections from one remote address, an IPv6 /64 counting as one (DT_ARTIFACT_MAX_PER_ADDRESS, default 64); 0: no cap. */
  maxPerAddress?: number;
  /** Overrides of ARTIFACT_TIMEOUTS (tests shorten them). */
  timeouts?: Partial<ArtifactTimeouts>;
  log?: (msg: string, meta?: Record<string, unknown>) => void;
}

const APK_PATH = /^\/apk\/([a-f0-9]{64})(?:\.apk)?$/;
/** `<expiry>.<signature>`; the expiry in the one form the signer writes, so no other spelling of it passes. */
const SIGNED_TOKEN = /^(0|[1-9]\d{0,11})\.([A-Za-z0-9_-]{43})$/;

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
export function artifactInstallUrl(
  baseUrl: string,
  sha256: string,
  secret = '',
  ttlMs = 24 * 3_600_000,
  now = Date.now(),
): string {
  const url = `${baseUrl.replace(/\/+$/, '')}/apk/${sha256}.apk`;
  if (!secret) return url;
  const expires = Math.floor((now + ttlMs) / 1000);
  return `${url}?token=${expires}.${signature(secret, sha256, expires)}`;
}

/**
 * How a request may read: `open` (no token configured), `secret` (the token itself, as bearer or
 * `?token=`), `signed` (a valid install URL for this APK); or why not: nothing `missing`, or
 * something `invalid` presented (wrong token, bad or expired signature, non-canonical expiry).
 */
export type Access = { via: 'open' | 'secret' | 'signed' } | { refused: 'missing' | 'invalid' };

/** Decides a request's access to `sha256` (or to a path that is no APK when undefined). */
export function authorise(
  secret: string,
  headers: http.IncomingHttpHeaders,
  query: URLSearchParams,
  sha256?: string,
  now = Date.now(),
): Access {
  if (!secret) return { via: 'open' };
  const auth = headers.authorization;
  if (typeof auth === 'string' && /^Bearer\s+/i.test(auth) && sameSecret(auth.replace(/^Bearer\s+/i, ''), secret))
    return { via: 'secret' };
  const token = query.get('token');
  if (token === null) return { refused: auth === undefined ? 'missing' : 'invalid' };
  if (sameSecret(token, secret)) return { via: 'secret' };
  const m = SIGNED_TOKEN.exec(token);
  if (!m || !sha256) return { refused: 'invalid' };
  const expires = Number(m[1]);
  return expires * 1000 >= now && sameSecret(m[2]!, signature(secret, sha256, expires))
    ? { via: 'signed' }
    : { refused: 'invalid' };
}

/** Only an install renews a lease: a GET through a signed install URL whose bytes start at 0. */
function renewsLease(access: Access, method: string | undefined, range: ByteRange | undefined): boolean {
  return 'via' in access && access.via === 'signed' && method === 'GET' && (range?.start ?? 0) === 0;
}

/** The worker's artifact and metrics server. */
export class ArtifactServer {
  private server?: http.Server;
  private closed = false;
  private readonly connections: ConnectionLimiter;
  private readonly timeouts: ArtifactTimeouts;

  constructor(private readonly opts: ArtifactServerOptions) {
    this.timeouts = { ...ARTIFACT_TIMEOUTS, ...opts.timeouts };
    this.connections = new ConnectionLimiter(
      {
        maxConnections: opts.maxConnections ?? 256,
        maxPerAddress: opts.maxPerAddress ?? 64,
        firstRequestTimeoutMs: this.timeouts.headersMs,
      },
      opts.log,
    );
  }

  /** Starts listening; resolves to the base URL. */
  async start(): Promise<string> {
    const t = this.timeouts;
    const server = http.createServer(
      {
        headersTimeout: t.headersMs,
        // GET and HEAD carry no body, so the whole request is its headers.
        requestTimeout: t.headersMs,
        keepAliveTimeout: t.keepAliveMs,
        // How often Node looks for requests past those timeouts (its default is 30 s).
        connectionsCheckingInterval: Math.min(1000, t.headersMs),
      },
      (req, res) => {
        this.handle(req, res).catch((err) => {
          // The path only: the query may hold a token.
          this.opts.log?.('artifact server request failed', {
            path: (req.url ?? '').split('?')[0],
            error: String(err),
          });
          if (!res.headersSent) res.writeHead(500).end();
          else res.destroy();
        });
      },
    );
    server.timeout = t.idleMs;
    server.on('connection', (socket) => this.connections.admit(socket));
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

  /** Connections open right now. */
  get openConnections(): number {
    return this.connections.size;
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
      res.writeHead(405, { allow: 'GET, HEAD', connection: 'close' }).end();
      return;
    }
    const sha = APK_PATH.exec(url.pathname)?.[1];
    const access = authorise(this.opts.token ?? '', req.headers, url.searchParams, sha);
    if ('refused' in access) {
      // Closed after the answer: a stranger's connection costs a file descriptor until it goes.
      const headers = { 'content-type': 'text/plain', connection: 'close' };
      if (access.refused === 'missing') {
        res
          .writeHead(401, { ...headers, 'www-authenticate': 'Bearer realm="device-traversal artifacts"' })
          .end('unauthorised\n');
      } else {
        res.writeHead(403, headers).end('forbidden\n');
      }
      return;
    }
    const socket = req.socket;
    this.connections.busy(socket);
    res.once('close', () => this.connections.idle(socket));
    if (url.pathname === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      return;
    }
    if (url.pathname === '/metrics') {
      const extra = this.opts.extraMetrics ? await this.opts.extraMetrics() : '';
      res
        .writeHead(200, { 'content-type': 'text/plain; version=0.0.4' })
        .end(this.opts.metrics.render() + this.connections.render() + extra);
      return;
    }
    const size = sha ? await this.opts.cache.stat(sha) : undefined;
    if (!sha || size === undefined) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    // RFC 9110: range handling is defined for GET only; unknown units, several ranges and bad syntax are ignored.
    const range = req.method === 'GET' ? parseRange(req.headers.range, size) : undefined;
    if (range === 'unsatisfiable') {
      res.writeHead(416, { 'content-range': `bytes */${size}`, 'accept-ranges': 'bytes' }).end();
      return;
    }
    // Retained while streaming (this process never evicts it); leased only by an install (see the header).
    const release = this.opts.cache.retain(sha);
    try {
      if (renewsLease(access, req.method, range)) await this.opts.cache.touch(sha);
      await this.sendFile(req, res, this.opts.cache.blobPath(sha), size, sha, range);
    } finally {
      release();
    }
  }

  private async sendFile(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    file: string,
    size: number,
    sha: string,
    range: ByteRange | undefined,
  ): Promise<void> {
    const start = range?.start ?? 0;
    const end = range?.end ?? size - 1;
    const headers: http.OutgoingHttpHeaders = {
      'content-type': 'application/vnd.android.package-archive',
      'content-length': end - start + 1,
      'accept-ranges': 'bytes',
      etag: `"${sha}"`,
      'cache-control': 'public, max-age=31536000, immutable',
    };
    if (range) headers['content-range'] = `bytes ${start}-${end}/${size}`;
    res.writeHead(range ? 206 : 200, headers);
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
