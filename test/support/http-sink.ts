/**
 * A real HTTP report sink for tests: PUT stores the body under the request path in a folder, GET
 * serves it back (404 when absent), both behind an optional bearer token, like a WebDAV or object
 * store endpoint would.
 */
import { createReadStream, createWriteStream, mkdirSync, promises as fsp } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';

/** A running sink. */
export interface HttpSink {
  /** Base URL to hand to DT_REPORT_SINK (ends in /reports). */
  url: string;
  /** Requests received, in order. */
  requests: { method: string; path: string; status: number }[];
  /** The file a stored path lives in. */
  fileOf(urlPath: string): string;
  close(): Promise<void>;
}

/** Starts a sink on 127.0.0.1 that keeps what it receives in `dir`. */
export async function startHttpSink(dir: string, token?: string): Promise<HttpSink> {
  mkdirSync(dir, { recursive: true });
  const requests: HttpSink['requests'] = [];
  const fileOf = (urlPath: string) => {
    const rel = decodeURIComponent(new URL(urlPath, 'http://x').pathname).replace(/^\/+/, '');
    const file = path.resolve(dir, rel);
    if (!file.startsWith(path.resolve(dir) + path.sep)) throw new Error(`path outside the sink: ${urlPath}`);
    return file;
  };
  const server = http.createServer((req, res) => {
    const done = (status: number) => {
      requests.push({ method: req.method ?? '', path: req.url ?? '', status });
      if (!res.headersSent) res.writeHead(status);
      res.end();
    };
    if (token && req.headers.authorization !== `Bearer ${token}`) return req.resume().on('end', () => done(401));
    let file: string;
    try {
      file = fileOf(req.url ?? '/');
    } catch {
      return req.resume().on('end', () => done(400));
    }
    if (req.method === 'PUT') {
      const tmp = `${file}.${Math.random().toString(36).slice(2)}.part`;
      fsp
        .mkdir(path.dirname(file), { recursive: true })
        .then(() => pipeline(req, createWriteStream(tmp)))
        .then(() => fsp.rename(tmp, file))
        .then(
          () => done(201),
          () => done(500),
        );
      return;
    }
    if (req.method === 'GET') {
      fsp.stat(file).then(
        (st) => {
          if (!st.isFile()) return done(404);
          requests.push({ method: 'GET', path: req.url ?? '', status: 200 });
          res.writeHead(200, { 'content-length': st.size });
          createReadStream(file).pipe(res);
        },
        () => done(404),
      );
      return;
    }
    req.resume().on('end', () => done(405));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/reports`,
    requests,
    fileOf,
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}
