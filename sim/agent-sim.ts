import http from 'node:http';
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'undici';
import { listenHttp } from '../src/net/ports';
import { defaultHostId } from '../src/config';
import {
  failureAnswer,
  HttpError,
  parseRoute,
  readJson,
  send,
  type AgentOp as ProtocolOp,
  type Json,
} from '../src/agent/protocol';

/** Operations recorded in {@link AgentSimulator.calls}. */
export type AgentOp = Exclude<ProtocolOp, 'list'>;

/** One handled request; the intervals let tests prove a device never ran two operations at once. */
export interface AgentCall {
  deviceId: string;
  op: AgentOp;
  /** Epoch milliseconds with sub-millisecond precision (performance.timeOrigin + performance.now()). */
  startedAt: number;
  endedAt: number;
  /** HTTP status the call was answered with. */
  status: number;
  packageName?: string;
  url?: string;
  bytes?: number;
}

/** What a device reports about its hardware. */
export interface DeviceModel {
  model: string;
  sdk: number;
}

/** Options for {@link AgentSimulator}. */
export interface AgentSimOptions {
  /** Device ids served under /mobile/<id>. */
  devices: string[];
  /** Extra delay added to every call, in ms (default 0). */
  latencyMs?: number;
  /** Probability (0..1) that a call answers 503 (default 0). */
  failureRate?: number;
  /** Device ids that start offline. */
  offline?: string[];
  /** Time an install takes after the APK bytes arrived, in ms (default 0). */
  installDelayMs?: number;
  /** Range the reported cold start time is drawn from, in ms (default [300, 1200]). */
  coldStartMs?: [number, number];
  /** Model per device id; devices not listed get one from a built-in rotation. */
  models?: Record<string, DeviceModel>;
  /** Random source for failure injection and cold starts (default Math.random); inject for reproducible runs. */
  random?: () => number;
  /** Optional diagnostics sink; receives ('agent call', AgentCall) for every recorded call. */
  log?: (msg: string, meta?: object) => void;
  /**
   * JSON file keeping the installed apps across restarts, as a phone keeps them when its agent
   * restarts: read at construction, rewritten after every install, uninstall and wipe. Unset: memory only.
   */
  stateFile?: string;
  /** The phone host this agent says owns its devices (`host` in its answers); default DT_HOST_ID or the host name. */
  hostId?: string;
}

/** Aggregate counters of {@link AgentSimulator.stats}. */
export interface AgentSimStats {
  installs: number;
  /** APK file-part bytes received through multipart uploads. */
  uploadedBytes: number;
  /** APK bytes the agent pulled from URLs itself. */
  downloadedBytes: number;
  requests: number;
}

/** Receives one multipart part's body bytes as they stream past. */
export interface PartSink {
  write(chunk: Buffer): void;
  end(): void;
}

/** Header block of one multipart part. */
export interface PartInfo {
  name: string;
  filename?: string;
  /** Lower-cased header names. */
  headers: Record<string, string>;
}

interface InstalledApp {
  versionCode: number;
  sha256: string;
  bytes: number;
}

interface Device {
  id: string;
  model: DeviceModel;
  offline: boolean;
  busy?: { op: AgentOp; since: number };
  installed: Map<string, InstalledApp>;
  failQueue: Map<AgentOp, number[]>;
}

const DEFAULT_MODELS: DeviceModel[] = [
  { model: 'Pixel 7', sdk: 34 },
  { model: 'Galaxy S22', sdk: 33 },
  { model: 'Pixel 6a', sdk: 33 },
  { model: 'Moto G Power', sdk: 31 },
  { model: 'Pixel 4', sdk: 30 },
];
const PACKAGE_RE = /^[A-Za-z0-9._-]{1,255}$/;
const SHA_RE = /^[0-9a-fA-F]{64}$/;
const FIELD_LIMIT = 64 * 1024;

const now = (): number => performance.timeOrigin + performance.now();

/** A real HTTP device agent for a set of fake devices: installs APKs from URLs or multipart uploads, launches, resets. */
export class AgentSimulator {
  /** Every recorded call, in completion order. */
  readonly calls: AgentCall[] = [];
  /** Aggregate counters, updated live (download/upload bytes grow while transfers run). */
  readonly stats: AgentSimStats = { installs: 0, uploadedBytes: 0, downloadedBytes: 0, requests: 0 };

  private readonly devices = new Map<string, Device>();
  /** The phone host named as the owner of every device. */
  readonly hostId: string;
  private readonly running = new Set<AgentCall>();
  private readonly installDelayMs: number;
  private readonly coldStart: [number, number];
  private readonly random: () => number;
  private readonly log: (msg: string, meta?: object) => void;
  private readonly stateFile: string | undefined;
  // A private pool so close() can tear down downloads still running against an origin.
  private readonly dispatcher = new Agent();
  private latencyMs: number;
  private failureRate: number;
  private server: http.Server | undefined;
  private base: string | undefined;
  private closing: Promise<void> | undefined;

  /** Builds the device table; nothing listens until start(). */
  constructor(opts: AgentSimOptions) {
    if (opts.devices.length === 0) throw new Error('AgentSimulator needs at least one device id');
    this.latencyMs = opts.latencyMs ?? 0;
    this.failureRate = checkRate(opts.failureRate ?? 0);
    this.installDelayMs = opts.installDelayMs ?? 0;
    this.coldStart = opts.coldStartMs ?? [300, 1200];
    if (this.coldStart[0] > this.coldStart[1])
      throw new Error(`coldStartMs min ${this.coldStart[0]} exceeds max ${this.coldStart[1]}`);
    this.random = opts.random ?? Math.random;
    this.log = opts.log ?? (() => {});
    this.hostId = opts.hostId || process.env.DT_HOST_ID || defaultHostId();
    const offline = new Set(opts.offline ?? []);
    opts.devices.forEach((id, i) => {
      if (this.devices.has(id)) throw new Error(`duplicate device id ${id}`);
      const model = opts.models?.[id] ?? DEFAULT_MODELS[i % DEFAULT_MODELS.length] ?? { model: 'Generic', sdk: 33 };
      this.devices.set(id, { id, model, offline: offline.has(id), installed: new Map(), failQueue: new Map() });
    });
    for (const id of offline) this.device(id);
    this.stateFile = opts.stateFile;
    if (this.stateFile) this.loadState(this.stateFile);
  }

  /** Binds the HTTP server and resolves to its base URL, e.g. http://127.0.0.1:7301. */
  async start(port = 0, host = '127.0.0.1'): Promise<string> {
    if (this.server) throw new Error('AgentSimulator already started');
    const server = http.createServer((req, res) => {
      this.handle(req, res).catch((err: Error) => {
        this.log('agent handler crashed', { message: err.message });
        if (!res.headersSent) send(res, 500, { error: `agent simulator bug: ${err.message}` });
      });
    });
    // Benchmarks push hundreds of MB through slow links; Node's 5-minute request cap would cut them off.
    server.requestTimeout = 0;
    this.server = server;
    this.base = await listenHttp(server, port, host);
    return this.base;
  }

  /** Base URL once started. */
  get url(): string {
    if (!this.base) throw new Error('AgentSimulator not started');
    return this.base;
  }

  /** Device ids in configuration order. */
  deviceIds(): string[] {
    return [...this.devices.keys()];
  }

  /** Package names currently installed on a device. */
  installed(deviceId: string): string[] {
    return [...this.device(deviceId).installed.keys()];
  }

  /** Calls being handled right now, optionally of one device and operation: a test waits on one to kill its caller inside it. */
  inFlight(deviceId?: string, op?: AgentOp): AgentCall[] {
    return [...this.running].filter(
      (c) => (deviceId === undefined || c.deviceId === deviceId) && (op === undefined || c.op === op),
    );
  }

  /** Takes a device off the network (every call answers 503) or brings it back. */
  setOffline(deviceId: string, offline: boolean): void {
    this.device(deviceId).offline = offline;
  }

  /** Changes the probability that any call answers 503. */
  setFailureRate(rate: number): void {
    this.failureRate = checkRate(rate);
  }

  /** Changes the extra delay added to every call. */
  setLatency(ms: number): void {
    this.latencyMs = ms;
  }

  /**
   * Holds a device busy as another client of the phone would (every call but status answers 409
   * until released with `false`), or releases it.
   */
  setBusy(deviceId: string, op: AgentOp | false): void {
    this.device(deviceId).busy = op === false ? undefined : { op, since: now() };
  }

  /** Makes the next `count` calls of `op` on `deviceId` answer `status` with an error body. */
  failNext(deviceId: string, op: AgentOp, status: number, count = 1): void {
    const q = this.device(deviceId).failQueue;
    const list = q.get(op) ?? [];
    for (let i = 0; i < count; i++) list.push(status);
    q.set(op, list);
  }

  /** Stops listening, drops connections and aborts downloads in progress; safe to call twice. */
  close(): Promise<void> {
    if (!this.closing) {
      const server = this.server;
      const stopped = server
        ? new Promise<void>((resolve) => {
            server.close(() => resolve());
            server.closeAllConnections();
          })
        : Promise.resolve();
      this.closing = Promise.all([stopped, this.dispatcher.destroy().catch(() => {})]).then(() => {});
    }
    return this.closing;
  }

  private loadState(file: string): void {
    let saved: { installed?: Record<string, Record<string, InstalledApp>> };
    try {
      saved = JSON.parse(readFileSync(file, 'utf8')) as typeof saved;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw new Error(
        `agent simulator state file ${file} is unreadable (${(err as Error).message}); delete it to start with empty devices`,
      );
    }
    for (const [id, apps] of Object.entries(saved.installed ?? {})) {
      const dev = this.devices.get(id);
      if (dev) for (const [pkg, app] of Object.entries(apps)) dev.installed.set(pkg, app);
    }
  }

  private saveState(): void {
    if (!this.stateFile) return;
    const installed: Record<string, Record<string, InstalledApp>> = {};
    for (const dev of this.devices.values()) installed[dev.id] = Object.fromEntries(dev.installed);
    // Written aside and renamed, so a simulator killed mid-write leaves the previous state intact.
    writeFileSync(`${this.stateFile}.tmp`, JSON.stringify({ installed }));
    renameSync(`${this.stateFile}.tmp`, this.stateFile);
  }

  private device(id: string): Device {
    const d = this.devices.get(id);
    if (!d) throw new Error(`unknown device ${id}; configured: ${this.deviceIds().join(', ')}`);
    return d;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    this.stats.requests++;
    const route = parseRoute(req);
    if ('error' in route) return send(res, route.status, { error: route.error });
    if (route.op === 'list') {
      const mobiles = [...this.devices.values()].map((d) => ({
        id: d.id,
        state: d.offline ? 'offline' : 'device',
        model: d.model.model,
        sdk: d.model.sdk,
        host: this.hostId,
      }));
      return send(res, 200, { mobiles });
    }
    const { deviceId, op } = route;
    const call: AgentCall = { deviceId, op, startedAt: now(), endedAt: 0, status: 0 };
    this.running.add(call);
    const dev = this.devices.get(deviceId);
    let locked = false;
    let status = 200;
    let body: Json;
    try {
      if (!dev)
        throw new HttpError(
          404,
          `device ${deviceId} is not attached to this agent; use one of: ${this.deviceIds().slice(0, 20).join(', ')}`,
        );
      if (op !== 'status') {
        if (dev.busy) {
          const ms = Math.round(now() - dev.busy.since);
          throw new HttpError(
            409,
            `device ${deviceId} is busy with ${dev.busy.op} (running ${ms} ms); retry once it finishes`,
          );
        }
        // Taken before any await so the recorded [startedAt, endedAt] of successful calls never overlap.
        dev.busy = { op, since: call.startedAt };
        locked = true;
      }
      if (this.latencyMs > 0) await sleep(this.latencyMs);
      if (dev.offline)
        throw new HttpError(503, `device ${deviceId} is offline; wait for it to reconnect or pick another device`, {
          online: false,
        });
      const injected = dev.failQueue.get(op)?.shift();
      if (injected !== undefined)
        throw new HttpError(injected, `injected failure (HTTP ${injected}) for ${op} on device ${deviceId}; retry`);
      if (this.failureRate > 0 && this.random() < this.failureRate) {
        throw new HttpError(503, `device ${deviceId} agent is temporarily unavailable (injected); retry shortly`);
      }
      body = await this.run(op, dev, req, call);
    } catch (err) {
      ({ status, body } = failureAnswer(err, 'agent simulator', op, deviceId));
    }
    call.endedAt = now();
    call.status = status;
    // Released before answering, so a client that got its response can go straight to the next call.
    if (locked && dev) dev.busy = undefined;
    this.running.delete(call);
    this.calls.push(call);
    this.log('agent call', call);
    send(res, status, body);
  }

  private async run(op: AgentOp, dev: Device, req: http.IncomingMessage, call: AgentCall): Promise<Json> {
    switch (op) {
      case 'status':
        return {
          deviceId: dev.id,
          online: true,
          model: dev.model.model,
          sdk: dev.model.sdk,
          host: this.hostId,
          installed: [...dev.installed.keys()],
          busy: dev.busy !== undefined,
        };
      case 'install':
        return this.installFromUrl(dev, await readJson(req), call);
      case 'install-multipart':
        return this.installFromUpload(dev, req, call);
      case 'launch': {
        const { packageName } = await readJson(req);
        const pkg = requirePackage(packageName, call);
        if (!dev.installed.has(pkg))
          throw new HttpError(422, `package ${pkg} is not installed on device ${dev.id}; call installApp first`);
        const [min, max] = this.coldStart;
        const coldStartMs = Math.round(min + this.random() * (max - min));
        // Report a realistic number but only pay a sliver of it, so suites stay fast.
        await sleep(Math.min(coldStartMs, 50));
        return { coldStartMs };
      }
      case 'uninstall': {
        const pkg = requirePackage((await readJson(req)).packageName, call);
        // An app this device does not have (e.g. after a restart without a state file) is not an error.
        const uninstalled = dev.installed.delete(pkg);
        if (uninstalled) this.saveState();
        return { uninstalled };
      }
      case 'reset': {
        const { wipe } = await readJson(req);
        if (wipe === true) {
          dev.installed.clear();
          this.saveState();
        }
        return { reset: true };
      }
    }
  }

  private async installFromUrl(dev: Device, body: Json, call: AgentCall): Promise<Json> {
    const t0 = now();
    const pkg = requirePackage(body.packageName, call);
    const expected = optionalSha(body.sha256);
    const url = body.url;
    if (typeof url !== 'string' || !/^https?:\/\//i.test(url))
      throw new HttpError(400, `installApp on device ${dev.id} needs "url" (http or https)`);
    call.url = url;
    let res: Awaited<ReturnType<typeof request>>;
    try {
      res = await request(url, { dispatcher: this.dispatcher });
    } catch (err) {
      throw new HttpError(
        422,
        `download of ${url} failed for device ${dev.id}: ${(err as Error).message}; check the URL is reachable from the agent`,
      );
    }
    if (res.statusCode !== 200) {
      await res.body.dump().catch(() => {});
      throw new HttpError(
        422,
        `download of ${url} failed for device ${dev.id}: origin answered HTTP ${res.statusCode}; check the APK URL`,
        { urlStatus: res.statusCode },
      );
    }
    const hash = createHash('sha256');
    let bytes = 0;
    try {
      // One chunk at a time: a multi-GB APK must not end up in memory.
      for await (const chunk of res.body) {
        const buf = chunk as Buffer;
        hash.update(buf);
        bytes += buf.length;
        call.bytes = bytes;
        this.stats.downloadedBytes += buf.length;
      }
    } catch (err) {
      throw new HttpError(
        422,
        `download of ${url} broke off after ${bytes} bytes for device ${dev.id}: ${(err as Error).message}; retry the install`,
      );
    }
    return this.finishInstall(dev, pkg, expected, hash.digest('hex'), bytes, t0);
  }

  private async installFromUpload(dev: Device, req: http.IncomingMessage, call: AgentCall): Promise<Json> {
    const t0 = now();
    const ct = req.headers['content-type'] ?? '';
    const m = /boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(ct);
    const boundary = m?.[1] ?? m?.[2];
    if (!boundary)
      throw new HttpError(400, `multipart installApp on device ${dev.id} is missing the boundary parameter`);
    const fields = new Map<string, string>();
    const file = { seen: false, bytes: 0, hash: createHash('sha256') };
    try {
      await parseMultipart(req, boundary, (part) => {
        if (part.name === 'apk') {
          if (file.seen)
            throw new HttpError(400, `multipart installApp on device ${dev.id} has more than one "apk" part`);
          file.seen = true;
          return {
            write: (c) => {
              file.hash.update(c);
              file.bytes += c.length;
              call.bytes = file.bytes;
              this.stats.uploadedBytes += c.length;
            },
            end: () => {},
          };
        }
        if (part.filename !== undefined) return { write: () => {}, end: () => {} };
        const chunks: Buffer[] = [];
        let size = 0;
        return {
          write: (c) => {
            size += c.length;
            if (size > FIELD_LIMIT)
              throw new HttpError(400, `multipart field ${part.name} is larger than ${FIELD_LIMIT} bytes`);
            chunks.push(c);
          },
          end: () => fields.set(part.name, Buffer.concat(chunks).toString('utf8').trim()),
        };
      });
    } catch (err) {
      if (err instanceof HttpError) throw err;
      throw new HttpError(400, `bad multipart body for device ${dev.id}: ${(err as Error).message}`);
    }
    const pkg = requirePackage(fields.get('packageName'), call);
    const expected = optionalSha(fields.get('sha256') || undefined);
    if (!file.seen) throw new HttpError(400, `multipart installApp on device ${dev.id} has no "apk" file part`);
    return this.finishInstall(dev, pkg, expected, file.hash.digest('hex'), file.bytes, t0);
  }

  private async finishInstall(
    dev: Device,
    pkg: string,
    expected: string | undefined,
    sha256: string,
    bytes: number,
    t0: number,
  ): Promise<Json> {
    if (bytes === 0) throw new HttpError(422, `bad APK for ${pkg} on device ${dev.id}: file is empty`);
    if (expected && expected !== sha256)
      throw new HttpError(422, `sha256 mismatch: expected ${expected}, got ${sha256}`);
    if (this.installDelayMs > 0) await sleep(this.installDelayMs);
    const versionCode = parseInt(sha256.slice(0, 6), 16);
    dev.installed.set(pkg, { versionCode, sha256, bytes });
    this.saveState();
    this.stats.installs++;
    return { installed: true, packageName: pkg, versionCode, ms: Math.round(now() - t0), bytes, sha256 };
  }
}

/** Streams a multipart/form-data body into per-part sinks without buffering it; rejects on a missing closing boundary. */
export async function parseMultipart(
  source: AsyncIterable<Buffer | Uint8Array | string>,
  boundary: string,
  onPart: (part: PartInfo) => PartSink,
): Promise<void> {
  const delim = Buffer.from(`\r\n--${boundary}`);
  // Memory stays at one incoming chunk plus delim.length-1 carried bytes, whatever the body size.
  // Pretending the body starts with CRLF lets the first boundary match the same delimiter as the others.
  let buf: Buffer = Buffer.from('\r\n');
  let state: 'preamble' | 'boundary' | 'headers' | 'body' | 'done' = 'preamble';
  let sink: PartSink | undefined;

  // Consumes as much of `buf` as possible; true once the closing delimiter has been seen.
  const drain = (): boolean => {
    for (;;) {
      if (state === 'preamble' || state === 'body') {
        const idx = buf.indexOf(delim);
        if (idx === -1) {
          // A delimiter cut in half by chunking can only start in the last delim.length-1 bytes.
          const emit = Math.max(0, buf.length - (delim.length - 1));
          if (sink && emit > 0) sink.write(buf.subarray(0, emit));
          buf = buf.subarray(emit);
          return false;
        }
        if (sink) {
          if (idx > 0) sink.write(buf.subarray(0, idx));
          sink.end();
          sink = undefined;
        }
        buf = buf.subarray(idx + delim.length);
        state = 'boundary';
      } else if (state === 'boundary') {
        if (buf.length < 2) return false;
        if (buf[0] === 0x2d && buf[1] === 0x2d) {
          state = 'done';
          return true;
        }
        const eol = buf.indexOf('\r\n');
        if (eol === -1) {
          if (buf.length > 1024) throw new Error('boundary line is not terminated');
          return false;
        }
        // RFC 2046 lets senders pad the boundary line with spaces or tabs.
        if (buf.subarray(0, eol).some((b) => b !== 0x20 && b !== 0x09))
          throw new Error('boundary string appears inside a part');
        buf = buf.subarray(eol + 2);
        state = 'headers';
      } else if (state === 'headers') {
        if (buf.length < 2) return false;
        const end = buf[0] === 0x0d && buf[1] === 0x0a ? 0 : buf.indexOf('\r\n\r\n');
        if (end === -1) {
          if (buf.length > 16 * 1024) throw new Error('part headers exceed 16 KiB');
          return false;
        }
        const headers = parseHeaders(buf.subarray(0, end).toString('latin1'));
        buf = buf.subarray(end === 0 ? 2 : end + 4);
        const cd = headers['content-disposition'] ?? '';
        const name = /(?:^|;)\s*name="([^"]*)"/i.exec(cd)?.[1] ?? /(?:^|;)\s*name=([^;\s]+)/i.exec(cd)?.[1] ?? '';
        const filename = /(?:^|;)\s*filename="([^"]*)"/i.exec(cd)?.[1] ?? /(?:^|;)\s*filename=([^;\s]+)/i.exec(cd)?.[1];
        sink = onPart({ name, filename, headers });
        state = 'body';
      } else {
        return true;
      }
    }
  };

  let finished = false;
  for await (const raw of source) {
    // Keep reading after the closing delimiter so the sender is never left blocked on a full socket.
    if (finished) continue;
    const chunk =
      typeof raw === 'string'
        ? Buffer.from(raw)
        : Buffer.isBuffer(raw)
          ? raw
          : Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
    buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
    finished = drain();
  }
  if (!finished) throw new Error('body ended before the closing boundary');
}

function parseHeaders(block: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of block.split('\r\n')) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  return out;
}

function requirePackage(value: unknown, call: AgentCall): string {
  if (typeof value !== 'string' || !PACKAGE_RE.test(value)) {
    throw new HttpError(
      400,
      `"packageName" must be a package name like com.example.app (got ${JSON.stringify(value) ?? 'nothing'}) on device ${call.deviceId}`,
    );
  }
  call.packageName = value;
  return value;
}

function optionalSha(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string' || !SHA_RE.test(value))
    throw new HttpError(400, '"sha256" must be 64 hex characters when given');
  return value.toLowerCase();
}

function checkRate(rate: number): number {
  if (!(rate >= 0 && rate <= 1)) throw new Error(`failure rate ${rate} is outside 0..1`);
  return rate;
}
