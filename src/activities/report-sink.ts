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
import { ReportUploadError } from '../errors';

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
  return pack.pipe(createGzip());
}

/** Builds the uploadReport activity. */
export function createReportSinkActivities(deps: ReportSinkDeps) {
  const maxBytes = deps.maxBytes ?? 1024 ** 3;
  return {
    /** Packs the report folder and streams it to the sink; returns the report's URL. */
    async uploadReport(input: UploadReportInput): Promise<UploadReportResult> {
      const ctx = Context.current();
      const reportDir = input.reportDir ?? path.join(deps.runsDir, input.taskId, input.deviceId, 'report');
      const files = await listFiles(reportDir);
      const name = `${input.deviceId}${input.partial ? '.partial' : ''}.tar.gz`;
      let bytes = 0;
      const meter = new Transform({
        transform(chunk: Buffer, _e, cb) {
          bytes += chunk.length;
          if (bytes > maxBytes) return cb(new ReportUploadError(deps.sink, `report larger than ${maxBytes} bytes`));
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
        await pipeline(source, meter, createWriteStream(tmp), { signal: ctx.cancellationSignal });
        await fsp.rename(tmp, dest);
        return { url: `file://${dest}`, bytes, files: files.length };
      }
      const url = `${deps.sink.replace(/\/+$/, '')}/${encodeURIComponent(input.taskId)}/${encodeURIComponent(name)}`;
      const body = new PassThrough();
      const pumping = pipeline(source, meter, body);
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
        await pumping.catch(() => undefined);
        if (err instanceof ReportUploadError || ctx.cancellationSignal.aborted) throw err;
        const e = err as { code?: string; message?: string };
        throw new ReportUploadError(deps.sink, `${e.code ?? ''} ${e.message ?? String(err)}`.trim());
      }
      return { url, bytes, files: files.length };
    },
  };
}
