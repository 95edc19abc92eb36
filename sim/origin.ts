import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parseRange } from '../src/net/http-range';
import { listenHttp } from '../src/net/ports';

/** Options for {@link ApkOrigin}. */
export interface ApkOriginOptions {
  /** Folder where generated APK files (and their .sha256 sidecars) live; created if missing. */
  dir: string;
  /** Per-response bandwidth cap in bytes/s; unset means unthrottled. */
  throttleBytesPerSec?: number;
  /** Optional sink for diagnostics; the origin never writes to the console itself. */
  log?: (msg: string, meta?: object) => void;
}

/** Result of {@link ApkOrigin.addApk}. */
export interface ApkInfo {
  path: string;
  /** Only present when the server was already started. */
  url?: string;
  sha256: string;
  size: number;
}

/** Per-file counters reported by {@link ApkOrigin.stats}. */
export interface ApkStats {
  gets: number;
  heads: number;
  /** GETs answered with 206 Partial Content. */
  rangeGets: number;
  /** Bytes handed to response sockets, including transfers the client cut short. */
  bytesServed: number;
  /** Responses currently being written. */
  inFlight: number;
}

interface ApkEntry {
  path: string;
  size: number;
  sha256: string;
  stats: ApkStats;
  missing: boolean;
  forcedStatus?: number;
  fakeLength?: number;
  chunked?: boolean;
}

const NAME_RE = /^[A-Za-z0-9._-]+$/;
const BLOCK = 1024 * 1024;

/** A real HTTP server that serves deterministic pseudo-random "APK" files with Range support and fault knobs. */
export class ApkOrigin {
  /** Per-response bandwidth cap in bytes/s, read when each response starts; undefined disables throttling. */
  throttleBytesPerSec: number | undefined;
  /** Bytes written to sockets across all files since construction. */
  totalBytesServed = 0;

  private readonly dir: string;
  private readonly log: (msg: string, meta?: object) => void;
  private readonly apks = new Map<string, ApkEntry>();
  private readonly pending = new Map<string, Promise<ApkInfo>>();
  private server: http.Server | undefined;
  private baseUrl: string | undefined;
  private closing: Promise<void> | undefined;

  /** Creates the origin; nothing is generated or bound until addApk/start. */
  constructor(opts: ApkOriginOptions) {
    this.dir = opts.dir;
    this.throttleBytesPerSec = opts.throttleBytesPerSec;
    this.log = opts.log ?? (() => {});
  }

  /** Generates (or reuses) a deterministic file of `sizeBytes` bytes and serves it at /apps/<name>. */
  addApk(name: string, sizeBytes: number, seed: string = name): Promise<ApkInfo> {
    if (!NAME_RE.test(name)) {
      return Promise.reject(
        new Error(`invalid APK name ${JSON.stringify(name)}: use only letters, digits, '.', '_' and '-'`),
      );
    }
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) {
      return Promise.reject(new Error(`invalid size ${sizeBytes} for ${name}: need a non-negative integer`));
    }
    // Concurrent callers for the same name share one generation instead of racing on the same file.
    const running = this.pending.get(name);
    if (running) return running;
    const p = this.prepare(name, sizeBytes, seed).finally(() => this.pending.delete(name));
    this.pending.set(name, p);
    return p;
  }

  /** Serves a copy of an existing file (a real APK, say) at /apps/<name>. */
  async addFile(name: string, source: string): Promise<ApkInfo> {
    if (!NAME_RE.test(name))
      throw new Error(`invalid APK name ${JSON.stringify(name)}: use only letters, digits, '.', '_' and '-'`);
    await fs.promises.mkdir(this.dir, { recursive: true });
    const file = path.join(this.dir, name);
    if (path.resolve(source) !== path.resolve(file)) await fs.promises.copyFile(source, file);
    const hash = createHash('sha256');
    for await (const chunk of fs.createReadStream(file)) hash.update(chunk as Buffer);
    const sha256 = hash.digest('hex');
    const size = (await fs.promises.stat(file)).size;
    await fs.promises.writeFile(`${file}.sha256`, `${sha256}  ${name}\n`);
    return this.register(name, file, size, sha256);
  }

  /** Binds the HTTP server and resolves to its base URL, e.g. http://127.0.0.1:40123. */
  async start(port = 0, host = '127.0.0.1'): Promise<string> {
    if (this.server) throw new Error('ApkOrigin already started');
    const server = http.createServer((req, res) => this.handle(req, res));
    this.server = server;
    this.baseUrl = await listenHttp(server, port, host);
    this.log('origin listening', { url: this.baseUrl, dir: this.dir });
    return this.baseUrl;
  }

  /** Full download URL of a named APK; requires start() to have resolved. */
  url(name: string): string {
    if (!this.baseUrl) throw new Error('ApkOrigin not started: call start() before url()');
    return `${this.baseUrl}/apps/${encodeURIComponent(name)}`;
  }

  /** Counters for one file (all zero for names never requested). */
  stats(name: string): ApkStats {
    const e = this.apks.get(name);
    return e ? { ...e.stats } : { gets: 0, heads: 0, rangeGets: 0, bytesServed: 0, inFlight: 0 };
  }

  /** Makes a known file answer 404 (or serve again with `missing = false`). */
  setMissing(name: string, missing = true): void {
    this.entry(name).missing = missing;
  }

  /** Forces every request for `name` to answer `status` with an error body; pass undefined to clear. */
  respondWith(name: string, status: number | undefined): void {
    this.entry(name).forcedStatus = status;
  }

  /** Advertises `n` as Content-Length on full (200) responses; pass undefined to tell the truth again. */
  lieAboutLength(name: string, n: number | undefined): void {
    this.entry(name).fakeLength = n;
  }

  /** Sends full (200) responses without a Content-Length (chunked), as streaming origins do; pass false to send it again. */
  omitLength(name: string, omit = true): void {
    this.entry(name).chunked = omit;
  }

  /** Stops listening and drops open connections, including transfers in progress; safe to call twice. */
  close(): Promise<void> {
    if (!this.closing) {
      const server = this.server;
      this.closing = server
        ? new Promise<void>((resolve) => {
            server.close(() => resolve());
            // Keep-alive and throttled sockets would otherwise hold close() open indefinitely.
            server.closeAllConnections();
          })
        : Promise.resolve();
    }
    return this.closing;
  }

  private entry(name: string): ApkEntry {
    const e = this.apks.get(name);
    if (!e) throw new Error(`unknown APK ${name}: call addApk() first`);
    return e;
  }

  private async prepare(name: string, size: number, seed: string): Promise<ApkInfo> {
    await fs.promises.mkdir(this.dir, { recursive: true });
    const file = path.join(this.dir, name);
    const sidecar = `${file}.sha256`;
    let sha256 = await reuseable(file, sidecar, size);
    if (!sha256) {
      const t0 = Date.now();
      // A stale sidecar must never vouch for a half-written file, so it goes first and comes back last.
      await fs.promises.rm(sidecar, { force: true });
      sha256 = await generate(file, size, seed);
      await fs.promises.writeFile(sidecar, `${sha256}  ${name}\n`);
      this.log('origin generated apk', { name, size, ms: Date.now() - t0 });
    }
    return this.register(name, file, size, sha256);
  }

  /** Serves a file at /apps/<name>, keeping the counters of an earlier file of that name. */
  private register(name: string, file: string, size: number, sha256: string): ApkInfo {
    const prev = this.apks.get(name);
    this.apks.set(name, {
      path: file,
      size,
      sha256,
      stats: prev?.stats ?? { gets: 0, heads: 0, rangeGets: 0, bytesServed: 0, inFlight: 0 },
      missing: false,
    });
    return { path: file, url: this.baseUrl ? this.url(name) : undefined, sha256, size };
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const pathname = (req.url ?? '/').split('?')[0] ?? '/';
    const m = /^\/apps\/([^/]+)$/.exec(pathname);
    let name: string | undefined;
    try {
      name = m?.[1] !== undefined ? decodeURIComponent(m[1]) : undefined;
    } catch {
      name = undefined;
    }
    const e = name !== undefined ? this.apks.get(name) : undefined;
    if (!e || name === undefined)
      return sendError(res, 404, `no such file ${pathname}; known: /apps/<name> for names passed to addApk`);
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      return sendError(res, 405, `method ${req.method} not allowed; use GET or HEAD`);
    }
    const head = req.method === 'HEAD';
    if (head) e.stats.heads++;
    else e.stats.gets++;
    if (e.missing) return sendError(res, 404, `${name} is marked missing on this origin`);
    if (e.forcedStatus !== undefined)
      return sendError(res, e.forcedStatus, `forced status ${e.forcedStatus} for ${name}`);

    const etag = `"${e.sha256.slice(0, 32)}"`;
    res.setHeader('Accept-Ranges', 'bytes');
    res.setHeader('ETag', etag);
    res.setHeader('Content-Type', 'application/vnd.android.package-archive');

    const rangeHeader = req.headers.range;
    // RFC 9110: ranges apply to GET only; unknown units, multi-ranges and bad syntax get the whole file.
    const range = head ? undefined : parseRange(rangeHeader, e.size);
    if (range === 'unsatisfiable') {
      res.setHeader('Content-Range', `bytes */${e.size}`);
      return sendError(res, 416, `range ${rangeHeader} not satisfiable for ${name} (${e.size} bytes)`);
    }
    let start = 0;
    let end = e.size - 1;
    let advertised = e.size;
    let dropAfter = false;
    if (range) {
      start = range.start;
      end = range.end;
      advertised = end - start + 1;
      res.statusCode = 206;
      res.setHeader('Content-Range', `bytes ${start}-${end}/${e.size}`);
      if (!head) e.stats.rangeGets++;
    } else {
      res.statusCode = 200;
      if (e.fakeLength !== undefined) {
        advertised = e.fakeLength;
        // Sending fewer bytes than promised would leave a keep-alive client waiting forever; hang up instead.
        dropAfter = e.fakeLength > e.size;
        end = Math.min(e.size, e.fakeLength) - 1;
      }
    }
    if (!(e.chunked && res.statusCode === 200)) res.setHeader('Content-Length', String(advertised));
    if (head || end < start) {
      res.end();
      if (dropAfter && !head) res.once('finish', () => req.socket.destroy());
      return;
    }

    e.stats.inFlight++;
    res.once('close', () => {
      e.stats.inFlight--;
    });
    const meter = new Meter(this.throttleBytesPerSec, (n) => {
      e.stats.bytesServed += n;
      this.totalBytesServed += n;
    });
    pipeline(fs.createReadStream(e.path, { start, end, highWaterMark: 256 * 1024 }), meter, res)
      .then(() => {
        if (dropAfter) req.socket.destroy();
      })
      .catch((err: NodeJS.ErrnoException) => {
        // Clients hanging up mid-transfer is routine here (tests kill downloads on purpose).
        this.log('origin transfer ended early', { name, code: err.code, message: err.message });
        if (!res.headersSent) sendError(res, 500, `read failed for ${name}: ${err.message}`);
        else res.destroy();
      });
  }
}

/** Counts bytes on their way to the socket and optionally paces them to a byte rate. */
class Meter extends Transform {
  private sent = 0;
  private readonly t0 = Date.now();

  constructor(
    private readonly rate: number | undefined,
    private readonly onBytes: (n: number) => void,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (!this.rate || this.rate <= 0) {
      this.onBytes(chunk.length);
      this.sent += chunk.length;
      cb(null, chunk);
      return;
    }
    this.paced(chunk, this.rate).then(() => cb(), cb);
  }

  private async paced(chunk: Buffer, rate: number): Promise<void> {
    // Small slices keep the pacing smooth so a test can stop a transfer at roughly the byte it wants.
    const slice = Math.max(1024, Math.floor(rate / 20));
    for (let off = 0; off < chunk.length; off += slice) {
      if (this.destroyed) return;
      const wait = this.t0 + (this.sent / rate) * 1000 - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      if (this.destroyed) return;
      const part = chunk.subarray(off, off + slice);
      this.sent += part.length;
      this.onBytes(part.length);
      this.push(part);
    }
  }
}

function sendError(res: http.ServerResponse, status: number, error: string): void {
  const body = JSON.stringify({ error });
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.removeHeader('Accept-Ranges');
  res.end(body);
}

async function reuseable(file: string, sidecar: string, size: number): Promise<string | undefined> {
  try {
    const [st, text] = await Promise.all([fs.promises.stat(file), fs.promises.readFile(sidecar, 'utf8')]);
    const hex = /^[0-9a-f]{64}/.exec(text)?.[0];
    return st.size === size ? hex : undefined;
  } catch {
    return undefined;
  }
}

/** Writes `size` xorshift128 bytes seeded from sha256(seed), hashing as it goes; returns the hex digest. */
async function generate(file: string, size: number, seed: string): Promise<string> {
  const s = createHash('sha256').update(seed).digest();
  let x = s.readUInt32LE(0) | 0;
  let y = s.readUInt32LE(4) | 0;
  let z = s.readUInt32LE(8) | 0;
  let w = s.readUInt32LE(12) | 1; // an all-zero state would emit zeros forever
  const buf = Buffer.allocUnsafe(BLOCK);
  // Host byte order; Node's supported platforms are all little-endian, so a seed maps to the same bytes everywhere.
  const words = new Uint32Array(buf.buffer, buf.byteOffset, BLOCK / 4);
  const hash = createHash('sha256');
  const tmp = `${file}.tmp-${process.pid}-${Date.now()}`;
  const fh = await fs.promises.open(tmp, 'w');
  try {
    for (let done = 0; done < size;) {
      for (let i = 0; i < words.length; i++) {
        const t = x ^ (x << 11);
        x = y;
        y = z;
        z = w;
        w = w ^ (w >>> 19) ^ (t ^ (t >>> 8));
        words[i] = w;
      }
      const n = Math.min(BLOCK, size - done);
      const part = buf.subarray(0, n);
      hash.update(part);
      // Awaiting each write is the backpressure: the single block buffer is only refilled once it is on disk.
      for (let off = 0; off < n;) off += (await fh.write(part, off, n - off)).bytesWritten;
      done += n;
    }
  } catch (err) {
    await fh.close().catch(() => {});
    await fs.promises.rm(tmp, { force: true });
    throw err;
  }
  await fh.close();
  await fs.promises.rename(tmp, file);
  return hash.digest('hex');
}
