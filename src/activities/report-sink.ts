/**
 * The final report: merges what every attempt of a traversal produced, on this host or shipped
 * from others (report-parts.ts), into one tar.gz streamed to the sink (a local folder or an HTTP(S)
 * endpoint). The archive holds the last attempt's report folder at its root, files that only
 * earlier attempts wrote under `attempts/attempt-<n>/`, and `findings.json` with every finding.
 * It is never built in memory: parts from an HTTP sink are staged on disk first.
 */
import { Context } from '@temporalio/activity';
import { createReadStream, createWriteStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import { createGzip } from 'node:zlib';
import type { Dispatcher } from 'undici';
import { InvalidTaskError, TraversalError } from '../contract/errors';
import { findingsForResult, mergeFindings } from './findings';
import type { Finding } from '../contract/messages';
import { checkIdentifier } from '../contract/ids';
import { listReportFiles, localFindingsFile } from './report-parts';
import { partKey, ReportStore, type AttemptManifest } from './report-store';

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
  const problems = [checkIdentifier('taskId', input.taskId), checkIdentifier('deviceId', input.deviceId)].filter(
    (p): p is string => !!p,
  );
  if (problems.length) throw new InvalidTaskError(problems);
}

/** Resolves `dir` and throws unless it lies inside `root` (no `..` or symlink-free tricks in the string). */
function insideRoot(root: string, dir: string): string {
  const r = path.resolve(root);
  const d = path.resolve(r, dir);
  if (d !== r && !d.startsWith(r + path.sep))
    throw new InvalidTaskError([
      `reportDir: must lie inside the runs folder, got ${JSON.stringify(dir).slice(0, 120)}`,
    ]);
  return d;
}

/** Options of the report sink. */
export interface ReportSinkDeps {
  /** Root of per-run folders; a run's report is found here. */
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
  /** Highest attempt of the traversal step that may have left parts (default 1). */
  attempts?: number;
  /** Report folder of a run that left no attempt parts; default <runsDir>/<taskId>/<deviceId>/report. */
  reportDir?: string;
  /** True when the run did not finish (cancelled or failed): the archive name says so. */
  partial?: boolean;
}

/** Where the report went, and every finding it holds. */
export interface UploadReportResult {
  url: string;
  bytes: number;
  files: number;
  /** Findings of all attempts, as a result carries them (see findingsForResult). */
  findings: Finding[];
  findingsOmitted?: number;
  crashes: number;
  anrs: number;
  /** Attempts whose parts went into the archive. */
  attempts: number[];
}

/** A tar.gz stream of named files read from disk one after the other. */
function tarGz(entries: { name: string; file?: string; data?: Buffer }[]): Readable {
  const pack = tar.pack();
  (async () => {
    for (const e of entries) {
      if (e.data) {
        pack.entry({ name: e.name, mode: 0o644 }, e.data);
        continue;
      }
      const st = await fsp.stat(e.file!);
      const entry = pack.entry({ name: e.name, size: st.size, mode: 0o644, mtime: st.mtime });
      await pipeline(createReadStream(e.file!), entry);
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

/** The findings of a local JSON-lines file (lines cut by a crash are skipped). */
async function readLocalFindings(file: string): Promise<Finding[]> {
  const text = await fsp.readFile(file, 'utf8').catch(() => '');
  const out: Finding[] = [];
  for (const line of text.split('\n'))
    if (line.trim())
      try {
        out.push(JSON.parse(line) as Finding);
      } catch {
        // a line cut short when its worker died
      }
  return out;
}

/** What one attempt left, on this host or in the sink. */
interface AttemptSource {
  attempt: number;
  /** Ran on this host: its files are in the local report folder. */
  local: boolean;
  /** Report files, relative path → file on disk (local, in a file sink, or staged from HTTP). */
  files: Map<string, string>;
  findings: Finding[];
}

/** Builds the uploadReport activity. */
export function createReportSinkActivities(deps: ReportSinkDeps) {
  const maxBytes = deps.maxBytes ?? 1024 ** 3;
  if (/^https?:\/\/[^/]*@/.test(deps.sink))
    throw new Error('the report sink URL carries credentials; give the token separately (DT_REPORT_SINK_TOKEN)');
  const store = new ReportStore({ sink: deps.sink, token: deps.token, dispatcher: deps.dispatcher });

  /** A file of the sink on disk: itself for a file sink, else downloaded into `staging`. */
  async function fetchPart(key: string[], staging: string, signal: AbortSignal): Promise<string | undefined> {
    const direct = store.localPath(key);
    if (direct) return (await fsp.stat(direct).catch(() => undefined))?.isFile() ? direct : undefined;
    const body = await store.get(key, signal);
    if (!body) return undefined;
    const file = path.join(staging, ...key);
    await fsp.mkdir(path.dirname(file), { recursive: true });
    await pipeline(body, createWriteStream(file), { signal });
    return file;
  }

  /** Reads what attempt `n` shipped to the sink; undefined when it left nothing. */
  async function sinkAttempt(
    taskId: string,
    deviceId: string,
    n: number,
    staging: string,
    signal: AbortSignal,
  ): Promise<AttemptSource | undefined> {
    const manifest = await store.getJson<AttemptManifest>(partKey(taskId, deviceId, n, 'manifest.json'), signal);
    const findings: Finding[] = [];
    // Findings are numbered without gaps; a shipper that died may have got past its last manifest.
    for (let seq = 1, misses = 0; misses < 3 || seq <= (manifest?.findings ?? 0); seq++) {
      const f = await store.getJson<Finding>(partKey(taskId, deviceId, n, 'findings', `${seq}.json`), signal);
      if (f) {
        findings.push(f);
        misses = 0;
      } else misses++;
    }
    if (!manifest && findings.length === 0) return undefined;
    const wanted = new Set([
      ...(manifest?.files ?? []).map((f) => f.path),
      ...findings.flatMap((f) => (f.screenshot ? [f.screenshot] : [])),
    ]);
    const files = new Map<string, string>();
    for (const rel of wanted) {
      const file = await fetchPart(partKey(taskId, deviceId, n, 'files', ...rel.split('/')), staging, signal);
      if (file) files.set(rel, file);
    }
    return { attempt: n, local: false, files, findings };
  }

  return {
    /** Merges every attempt's report and findings into one tar.gz in the sink; returns its URL and the findings. */
    async uploadReport(input: UploadReportInput): Promise<UploadReportResult> {
      const ctx = Context.current();
      const signal = ctx.cancellationSignal;
      checkIds(input);
      const runDir = insideRoot(deps.runsDir, path.join(input.taskId, input.deviceId));
      const localReport = insideRoot(
        deps.runsDir,
        input.reportDir ?? path.join(input.taskId, input.deviceId, 'report'),
      );
      const staging = path.join(runDir, `.merge-${process.pid}-${Date.now()}`);
      try {
        // Every attempt on this host wrote into the one local folder: list it once.
        let local: Map<string, string> | undefined;
        const localFiles = async () =>
          (local ??= new Map((await listReportFiles(localReport)).map((rel) => [rel, path.join(localReport, rel)])));
        const sources: AttemptSource[] = [];
        for (let n = 1; n <= Math.max(1, input.attempts ?? 1); n++) {
          const marker = localFindingsFile(runDir, n);
          if (
            await fsp.stat(marker).then(
              () => true,
              () => false,
            )
          ) {
            sources.push({
              attempt: n,
              local: true,
              files: await localFiles(),
              findings: await readLocalFindings(marker),
            });
          } else {
            const s = await sinkAttempt(input.taskId, input.deviceId, n, staging, signal);
            if (s) sources.push(s);
          }
          ctx.heartbeat({ attempt: n });
        }
        // A run that left no attempt traces (an older run, or a direct call): its local folder.
        if (sources.length === 0) sources.push({ attempt: 0, local: true, files: await localFiles(), findings: [] });

        // The last attempt's folder is the root; what only earlier attempts wrote goes under attempts/.
        const last = sources[sources.length - 1]!;
        const entries: { name: string; file?: string; data?: Buffer }[] = [];
        const placed = new Map<string, string>(); // "<attempt>:<rel>" → archive name
        for (const [rel, file] of last.files) {
          entries.push({ name: rel, file });
          placed.set(`${last.attempt}:${rel}`, rel);
        }
        for (const s of sources.slice(0, -1)) {
          for (const [rel, file] of s.files) {
            // Attempts on this host share one local folder; a file the last attempt also wrote is its newer copy.
            if ((s.local && last.local) || last.files.has(rel)) placed.set(`${s.attempt}:${rel}`, rel);
            else {
              const name = `attempts/attempt-${s.attempt}/${rel}`;
              entries.push({ name, file });
              placed.set(`${s.attempt}:${rel}`, name);
            }
          }
        }
        const all = mergeFindings(sources.map((s) => s.findings)).map((f) => {
          const where = f.screenshot ? placed.get(`${f.attempt}:${f.screenshot}`) : undefined;
          const moved: Finding = { ...f, screenshot: where };
          if (!where) delete moved.screenshot;
          return moved;
        });
        entries.push({ name: 'findings.json', data: Buffer.from(`${JSON.stringify(all, null, 2)}\n`) });

        let bytes = 0;
        const meter = new Transform({
          transform(chunk: Buffer, _e, cb) {
            bytes += chunk.length;
            if (bytes > maxBytes) return cb(new ReportTooLargeError(maxBytes));
            ctx.heartbeat({ bytes });
            cb(null, chunk);
          },
        });
        // pipeline() ends the archive too when the meter stops it; the put below sees the error.
        pipeline(tarGz(entries), meter).catch(() => undefined);
        const key = [input.taskId, `${input.deviceId}${input.partial ? '.partial' : ''}.tar.gz`];
        try {
          await store.put(key, meter, signal);
        } catch (err) {
          // A cap hit while streaming surfaces as an aborted request; report the cap.
          if (bytes > maxBytes) throw new ReportTooLargeError(maxBytes);
          throw err;
        }
        const result = findingsForResult(all);
        return {
          url: store.url(key),
          bytes,
          files: entries.length,
          findings: result.findings,
          ...(result.omitted ? { findingsOmitted: result.omitted } : {}),
          crashes: result.crashes,
          anrs: result.anrs,
          attempts: sources.map((s) => s.attempt).filter((n) => n > 0),
        };
      } finally {
        await fsp.rm(staging, { recursive: true, force: true });
      }
    },
  };
}
