/**
 * Streams a report folder as tar.gz to the report sink: a local folder (`file:///dir`) or an
 * HTTP(S) endpoint (streamed PUT). The archive is never built in memory.
 */
import { Context } from '@temporalio/activity';
import { createReadStream, createWriteStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import { PassThrough, Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { createGzip } from 'node:zlib';
import * as tar from 'tar-stream';
import { request, type Dispatcher } from 'undici';
import { InvalidTaskError, ReportUploadError, TraversalError } from '../errors';
import { checkIdentifier } from '../task';
import { refusedFor, UrlRefusedError } from '../url-policy';

/** The report is larger than the configured cap; retrying produces the same report. */
export class ReportTooLargeError extends TraversalError {
  readonly code = 'ReportTooLarge';
  readonly nonRetryable = true;
  constructor(limitBytes: number) {
    super(`report archive exceeds the cap of ${limitBytes} bytes; raise DT_REPORT_MAX_BYTES if intended`);
    this.details = { limitBytes };
  }
}

/**
 * Defence in depth: ids become folder and file names here, so they are checked again even though
 * the starter validated them (a workflow can be started by other means than the starter).
 */
function checkIds(input: { taskId: unknown; deviceId: unknown }): void {
  const problems = [checkIdentifier('taskId', input.taskId), checkIdentifier('deviceId', input.deviceId)].filter((p): p is string => !!p);
  if (problems.length) throw new InvalidTaskError(problems);
}

/** Resolves `dir` and throws unless it lies inside `root` (no `..` or symlink-free tricks in the string). */
function insideRoot(root: string, dir: string): string {
  const r = path.resolve(root);
  const d = path.resolve(r, dir);
  if (d !== r && !d.startsWith(r + path.sep)) throw new InvalidTaskError([`reportDir: must lie inside the runs folder, got ${JSON.stringify(dir).slice(0, 120)}`]);
  return d;
}

/** Options of the report sink. */
export interface ReportSinkDeps {
  /** Root of per-run folders; a report without an explicit folder is found here. */
  runsDir: string;
  /** `file:///dir` or an http(s) base URL. */
  sink: string;
  /** Bearer token for HTTP sinks. */
  token?: string;
  dispatcher: Dispatcher;
  /** Largest archive accepted, bytes (default 1 GiB). */
  maxBytes?: number;
}

/** Input of uploadReport. */
export interface UploadReportInput {
  taskId: string;
  deviceId: string;
  /** Report folder; default <runsDir>/<taskId>/<deviceId>/report. */
  reportDir?: string;
  /** True when the run did not finish (cancelled or failed): the archive name says so. */
  partial?: boolean;
}

/** Where the report went. */
export interface UploadReportResult {
  url: string;
  bytes: number;
  files: number;
}

async function listFiles(root: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(dir: string): Promise<void> {
    let entries: import('node:fs').Dirent[];
    try {
      entries = await fsp.readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
      const full = path.join(dir, e.name);
      if (e.isDirectory()) await walk(full);
      else if (e.isFile()) out.push(full);
    }
  }
  await walk(root);
  return out;
}

/** A readable tar.gz stream of a folder, written file by file. */
export function tarGzFolder(root: string, files: string[]): Readable {
  const pack = tar.pack();
  (async () => {
    for (const file of files) {
      const st = await fsp.stat(file);
      const entry = pack.entry({ name: path.relative(root, file).split(path.sep).join('/'), size: st.size, mode: 0o644, mtime: st.mtime });
      await pipeline(createReadStream(file), entry);
    }
    pack.finalize();
  })().catch((err) => pack.destroy(err as Error));
  const gz = createGzip();
  // pipe() forwards no errors: a failed file read must fail the stream its consumer reads, and a
  // consumer that stops (cap reached, sink refused) destroys the pack too, which must not leave an
  // 'error' event without a listener (that would end the worker process).
  pack.on('error', (err: Error) => {
    if (!gz.destroyed) gz.destroy(err);
  });
  return pack.pipe(gz);
}

/** Builds the uploadReport activity. */
export function createReportSinkActivities(deps: ReportSinkDeps) {
  const maxBytes = deps.maxBytes ?? 1024 ** 3;
  if (/^https?:\/\/[^/]*@/.test(deps.sink)) throw new Error('the report sink URL carries credentials; give the token separately (DT_REPORT_SINK_TOKEN)');
  return {
    /** Packs the report folder and streams it to the sink; returns the report's URL. */
    async uploadReport(input: UploadReportInput): Promise<UploadReportResult> {
      const ctx = Context.current();
      checkIds(input);
      const reportDir = insideRoot(deps.runsDir, input.reportDir ?? path.join(input.taskId, input.deviceId, 'report'));
      const files = await listFiles(reportDir);
      const name = `${input.deviceId}${input.partial ? '.partial' : ''}.tar.gz`;
      let bytes = 0;
      const meter = new Transform({
        transform(chunk: Buffer, _e, cb) {
          bytes += chunk.length;
          if (bytes > maxBytes) return cb(new ReportTooLargeError(maxBytes));
          ctx.heartbeat({ bytes });
          cb(null, chunk);
        },
      });
      const source = tarGzFolder(reportDir, files);
      if (deps.sink.startsWith('file://')) {
        const dir = path.join(fileURLToPath(deps.sink), input.taskId);
        await fsp.mkdir(dir, { recursive: true });
        const dest = path.join(dir, name);
        const tmp = `${dest}.${process.pid}.tmp`;
        try {
          await pipeline(source, meter, createWriteStream(tmp), { signal: ctx.cancellationSignal });
        } catch (err) {
          await fsp.rm(tmp, { force: true });
          throw err;
        }
        await fsp.rename(tmp, dest);
        return { url: `file://${dest}`, bytes, files: files.length };
      }
      const url = `${deps.sink.replace(/\/+$/, '')}/${encodeURIComponent(input.taskId)}/${encodeURIComponent(name)}`;
      const body = new PassThrough();
      const pumping = pipeline(source, meter, body);
      pumping.catch(() => undefined); // observed below; this only keeps an early failure from counting as unhandled
      try {
        const res = await request(url, {
          method: 'PUT',
          body,
          headers: {
            'content-type': 'application/gzip',
            ...(deps.token ? { authorization: `Bearer ${deps.token}` } : {}),
          },
          dispatcher: deps.dispatcher,
          signal: ctx.cancellationSignal,
        });
        await res.body.dump();
        await pumping;
        if (res.statusCode >= 300) throw new ReportUploadError(deps.sink, `HTTP ${res.statusCode}`);
      } catch (err) {
        body.destroy();
        // A cap hit while streaming surfaces as the pump's error; prefer it to the aborted request.
        const pumpErr = await pumping.then(() => undefined, (e: unknown) => e);
        if (pumpErr instanceof ReportTooLargeError) throw pumpErr;
        if (err instanceof UrlRefusedError) throw refusedFor(`report sink ${deps.sink}`, err);
        if (err instanceof TraversalError || ctx.cancellationSignal.aborted) throw err;
        const e = err as { code?: string; message?: string };
        throw new ReportUploadError(deps.sink, `${e.code ?? ''} ${e.message ?? String(err)}`.trim());
      }
      return { url, bytes, files: files.length };
    },
  };
}
