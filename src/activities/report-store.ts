/**
 * The report sink as a small key-value store of files: put and get by key, for a local folder
 * (`file:///dir`) or an HTTP(S) base URL (streamed PUT and GET with a bearer token). Keys are
 * lists of path segments, each checked, so a key can never leave the sink's folder or prefix.
 *
 * Layout of one run (`<taskId>/<deviceId>`), written while and after the traversal runs:
 *   <taskId>/<deviceId>/parts/attempt-<n>/manifest.json        what attempt n shipped (rewritten)
 *   <taskId>/<deviceId>/parts/attempt-<n>/findings/<seq>.json  each finding, shipped when found
 *   <taskId>/<deviceId>/parts/attempt-<n>/files/<path>         report files, shipped while running
 *   <taskId>/<deviceId>[.partial].tar.gz                       the final archive, merged from all parts
 */
import { createReadStream, createWriteStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { request, type Dispatcher } from 'undici';
import { ReportUploadError } from '../contract/errors';
import { requestError, statusVerdict } from '../net/http-errors';

/** Where a store writes. */
export interface ReportStoreOptions {
  /** `file:///dir` or an http(s) base URL. */
  sink: string;
  /** Bearer token for HTTP sinks. */
  token?: string;
  dispatcher: Dispatcher;
}

/** Key segments: no empty ones, no `.` or `..`, no slashes or NUL inside one. */
function checkKey(key: readonly string[]): void {
  for (const s of key)
    if (!s || s === '.' || s === '..' || /[/\\\0]/.test(s))
      throw new Error(`bad report key segment ${JSON.stringify(s)}`);
}

/** Statuses of a GET that mean "nothing stored here" (405/501: a sink that only takes PUTs). */
const ABSENT = new Set([404, 405, 410, 501]);

/** Puts and gets report files by key in the configured sink. */
export class ReportStore {
  private readonly dir?: string;
  private readonly base?: string;

  constructor(private readonly opts: ReportStoreOptions) {
    if (opts.sink.startsWith('file://')) this.dir = fileURLToPath(opts.sink);
    else this.base = opts.sink.replace(/\/+$/, '');
  }

  /** The URL a key is stored at (file:// or http(s)://). */
  url(key: readonly string[]): string {
    checkKey(key);
    return this.dir ? `file://${path.join(this.dir, ...key)}` : `${this.base}/${key.map(encodeURIComponent).join('/')}`;
  }

  /** The file a key is stored in, for a file sink (undefined for HTTP sinks). */
  localPath(key: readonly string[]): string | undefined {
    checkKey(key);
    return this.dir ? path.join(this.dir, ...key) : undefined;
  }

  /** Stores a stream (or bytes) under a key, replacing what was there; a file sink renames into place. */
  async put(key: readonly string[], body: Readable | Buffer | string, signal?: AbortSignal): Promise<void> {
    checkKey(key);
    const source = typeof body === 'string' || Buffer.isBuffer(body) ? Readable.from([Buffer.from(body)]) : body;
    if (this.dir) {
      const dest = path.join(this.dir, ...key);
      await fsp.mkdir(path.dirname(dest), { recursive: true });
      const tmp = `${dest}.${process.pid}.${Math.random().toString(36).slice(2, 8)}.tmp`;
      try {
        await pipeline(source, createWriteStream(tmp), ...(signal ? [{ signal }] : []));
        await fsp.rename(tmp, dest);
      } catch (err) {
        await fsp.rm(tmp, { force: true });
        throw err;
      }
      return;
    }
    try {
      const res = await request(this.url(key), {
        method: 'PUT',
        body: source,
        headers: { 'content-type': contentType(key), ...this.auth() },
        dispatcher: this.opts.dispatcher,
        signal,
      });
      await res.body.dump();
      if (statusVerdict(res.statusCode) !== 'success')
        throw new ReportUploadError(this.opts.sink, `HTTP ${res.statusCode} for PUT ${key.join('/')}`);
    } catch (err) {
      source.destroy();
      throw this.wrap(err, signal);
    }
  }

  /** Opens a stored file, or resolves to undefined when nothing is stored under the key. */
  async get(key: readonly string[], signal?: AbortSignal): Promise<Readable | undefined> {
    checkKey(key);
    if (this.dir) {
      const file = path.join(this.dir, ...key);
      try {
        await fsp.access(file);
      } catch {
        return undefined;
      }
      return createReadStream(file);
    }
    try {
      const res = await request(this.url(key), {
        method: 'GET',
        headers: this.auth(),
        dispatcher: this.opts.dispatcher,
        signal,
      });
      if (res.statusCode === 200) return res.body;
      await res.body.dump();
      if (ABSENT.has(res.statusCode) || statusVerdict(res.statusCode) === 'success') return undefined;
      throw new ReportUploadError(this.opts.sink, `HTTP ${res.statusCode} for GET ${key.join('/')}`);
    } catch (err) {
      throw this.wrap(err, signal);
    }
  }

  /** Reads a small JSON document, or undefined when it is absent or not JSON. */
  async getJson<T>(key: readonly string[], signal?: AbortSignal): Promise<T | undefined> {
    const body = await this.get(key, signal);
    if (!body) return undefined;
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of body as AsyncIterable<Buffer>) {
      size += c.length;
      if (size > 16 * 1024 * 1024)
        throw new ReportUploadError(this.opts.sink, `${key.join('/')} is larger than 16 MiB`);
      chunks.push(c);
    }
    try {
      return JSON.parse(Buffer.concat(chunks).toString('utf8')) as T;
    } catch {
      return undefined;
    }
  }

  private auth(): Record<string, string> {
    return this.opts.token ? { authorization: `Bearer ${this.opts.token}` } : {};
  }

  private wrap(err: unknown, signal?: AbortSignal): unknown {
    const sink = this.opts.sink;
    return requestError(
      { name: `report sink ${sink}`, unreachable: (why) => new ReportUploadError(sink, why) },
      err,
      signal,
    );
  }
}

function contentType(key: readonly string[]): string {
  const last = key[key.length - 1] ?? '';
  if (last.endsWith('.json')) return 'application/json';
  if (last.endsWith('.gz')) return 'application/gzip';
  if (last.endsWith('.png')) return 'image/png';
  return 'application/octet-stream';
}

/** Key of one part of one attempt of a run. */
export function partKey(taskId: string, deviceId: string, attempt: number, ...rest: string[]): string[] {
  return [taskId, deviceId, 'parts', `attempt-${attempt}`, ...rest];
}

/** What one attempt has shipped, rewritten as it ships more. */
export interface AttemptManifest {
  attempt: number;
  /** Host name and worker pid that ran the attempt. */
  host: string;
  workerPid: number;
  startedAt: string;
  updatedAt: string;
  /** True once the attempt ended and shipped everything it had. */
  final: boolean;
  /** Report files shipped, relative to the report folder. */
  files: { path: string; size: number }[];
  /** Findings shipped (findings/1.json … findings/<n>.json). */
  findings: number;
}
