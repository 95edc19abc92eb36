/**
 * The adb-backed device agent: the protocol's HTTP server in front of the phones of one adb server.
 *
 * Answers (bodies are JSON; errors are `{error, deviceId, …}`):
 *   GET  /mobile            200 {mobiles: [{id, serial, state, online, model, sdk, host}]}
 *   GET  /mobile/<id>       200 {online, model, sdk, serial, state, host[, error]}; 404 unknown id
 *   POST …/installApp       200 {installed, versionCode, ms, bytes, sha256}; 422 hash mismatch, failed
 *                           download or pm's INSTALL_… code; 504 install timed out; 507 agent disk full
 *   POST …/launchApp        200 {coldStartMs, activity}; 422 not installed / no launcher / start error
 *   POST …/uninstallApp     200 {uninstalled}
 *   POST …/reset            200 {reset, ended, restored}
 * and for every POST: 400 bad body, 404 unknown id, 409 another call runs on the phone, 503 the phone
 * is not usable (offline, unauthorized, unplugged), 502 adb failed otherwise.
 *
 * Data dir layout: `phones/<id>.json` (settings baseline, baseline.ts), `apk-cache/` (src/apk-cache).
 */
import http from 'node:http';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Adb } from '../adb';
import { getprop } from '../adb/device';
import { ApkCache } from '../apk-cache';
import { createDispatcher } from '../net/dispatcher';
import { listenHttp } from '../net/ports';
import { PhoneRecords, readSettings } from './baseline';
import { installApp, uninstallApp, type InstallTimeout } from './install';
import { launchApp } from './launch';
import { PhoneTracker, stateHint, type AgentLog, type Phone } from './phones';
import { failureAnswer, HttpError, parseRoute, readJson, send, type Json } from './protocol';
import { endEngines, reset } from './reset';

/** Longest a status call waits for the preparation of a phone that just appeared, ms. */
const STATUS_WAIT_MS = 10_000;

/** Options of {@link AdbAgent}. */
export interface AdbAgentOptions {
  adb: Adb;
  /** Folder of the phone records and the APK cache (created if missing). */
  dataDir: string;
  /** Interval of `adb devices -l`, ms (default 2000). */
  pollMs?: number;
  /** Largest APK accepted, bytes (default 4 GiB). */
  apkMaxBytes?: number;
  /** Size cap of the agent's APK cache, bytes (default 20 GiB). */
  apkCacheMaxBytes?: number;
  /** Free space downloads leave on the cache's disk, bytes (default 64 MiB). */
  apkDiskReserveBytes?: number;
  /** Origin downloads at once; 0 means no cap (default 4). */
  maxDownloads?: number;
  /** Install time limit (default 60 s + 200 ms per MiB). */
  installTimeout?: Partial<InstallTimeout>;
  /** The phone host reported as the owner of every phone (`host`), so workers route its steps here. */
  hostId?: string;
  log?: AgentLog;
}

/** The adb device agent: phones tracked from adb, the protocol over HTTP. */
export class AdbAgent {
  private readonly phones: PhoneTracker;
  private readonly records: PhoneRecords;
  private readonly cache: ApkCache;
  private readonly dispatcher = createDispatcher();
  private readonly log: AgentLog;
  private readonly installTimeout: InstallTimeout;
  private server?: http.Server;
  private base?: string;
  private closing?: Promise<void>;
  private readonly running = new Set<AbortController>();

  constructor(private readonly opts: AdbAgentOptions) {
    this.log = opts.log ?? (() => {});
    this.records = new PhoneRecords(opts.dataDir);
    this.cache = new ApkCache({
      dir: path.join(opts.dataDir, 'apk-cache'),
      maxBytes: opts.apkMaxBytes ?? 4 * 1024 ** 3,
      maxCacheBytes: opts.apkCacheMaxBytes ?? 20 * 1024 ** 3,
      diskReserveBytes: opts.apkDiskReserveBytes,
      maxConcurrentDownloads: opts.maxDownloads ?? 4,
      dispatcher: this.dispatcher,
      log: this.log,
    });
    this.installTimeout = { baseMs: 60_000, msPerMiB: 200, ...opts.installTimeout };
    this.phones = new PhoneTracker({
      adb: opts.adb,
      pollMs: opts.pollMs,
      prepare: (phone) => this.prepare(phone),
      log: this.log,
    });
  }

  /** Reads the known phones, polls adb once, binds the HTTP server; resolves to its base URL. */
  async start(port = 7301, host = '127.0.0.1'): Promise<string> {
    if (this.server) throw new Error('AdbAgent already started');
    for (const rec of await this.records.all()) this.phones.remember(rec);
    // Parts an agent that died left behind: a recent one may still be resumed, an old one never is.
    const swept = await this.cache.removeOrphanParts(60 * 60_000);
    if (swept.files) this.log('removed stale partial downloads', swept);
    await this.phones.start();
    const server = http.createServer((req, res) => {
      this.handle(req, res).catch((err: Error) => {
        this.log('agent handler crashed', { error: err.message });
        send(res, 500, { error: `adb agent bug: ${err.message}` });
      });
    });
    // An install of a big APK on a slow phone outlasts Node's 5-minute request cap.
    server.requestTimeout = 0;
    this.server = server;
    this.base = await listenHttp(server, port, host);
    this.log('adb agent listening', { url: this.base, phones: this.phones.list().map((p) => p.id) });
    return this.base;
  }

  /** Base URL once started. */
  get url(): string {
    if (!this.base) throw new Error('AdbAgent not started');
    return this.base;
  }

  /** Stops polling and listening, cancels calls in progress; safe to call twice. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const c of this.running) c.abort(new Error('agent closing'));
      await this.phones.close();
      const server = this.server;
      if (server)
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections();
        });
      await this.dispatcher.destroy().catch(() => undefined);
    })();
    return this.closing;
  }

  /**
   * Readies a phone that became usable: its model and sdk, its settings baseline on first sighting,
   * and the end of any engine a previous run left on it.
   */
  private async prepare(phone: Phone): Promise<void> {
    const [model, sdk] = await Promise.all([
      getprop(this.opts.adb, phone.serial, 'ro.product.model', { signal: this.phones.signal }),
      getprop(this.opts.adb, phone.serial, 'ro.build.version.sdk', { signal: this.phones.signal }),
    ]);
    if (model) phone.model = model;
    if (/^\d+$/.test(sdk)) phone.sdk = Number(sdk);
    const known = await this.records.read(phone.id);
    if (!known) {
      const baseline = await readSettings(this.phones, phone);
      await this.records.write({
        id: phone.id,
        serial: phone.serial,
        firstSeen: new Date().toISOString(),
        ...(phone.model ? { model: phone.model } : {}),
        ...(phone.sdk !== undefined ? { sdk: phone.sdk } : {}),
        baseline,
      });
      this.log('phone baseline recorded', { phone: phone.id, baseline });
    }
    const ended = await endEngines({ adb: this.opts.adb, phones: this.phones }, phone);
    this.log('phone ready', { phone: phone.id, serial: phone.serial, model: phone.model, sdk: phone.sdk, ended });
  }

  private status(phone: Phone): Json {
    const online = phone.state === 'device';
    return {
      deviceId: phone.id,
      online,
      model: phone.model ?? null,
      sdk: phone.sdk ?? null,
      serial: phone.serial,
      state: phone.state,
      host: this.opts.hostId,
      busy: phone.busy !== undefined,
      ...(online ? {} : { error: stateHint(phone) }),
    };
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const route = parseRoute(req);
    if ('error' in route) return send(res, route.status, { error: route.error });
    if (route.op === 'list') {
      const mobiles = this.phones.list().map((p) => {
        const { deviceId, ...rest } = this.status(p);
        return { id: deviceId, ...rest };
      });
      return send(res, 200, { mobiles });
    }
    const { deviceId, op } = route;
    const t0 = performance.now();
    // A client that hangs up cancels its call (the download, the adb process).
    const controller = new AbortController();
    res.once('close', () => {
      if (!res.writableFinished) controller.abort(new Error('client went away'));
    });
    this.running.add(controller);
    let status = 200;
    let body: Json;
    let release: (() => void) | undefined;
    let phone: Phone | undefined;
    try {
      if (op === 'status') {
        phone = this.phones.get(deviceId);
        if (!phone) throw this.phones.unknown(deviceId);
        // A phone that just appeared reports its model and sdk once prepared (seconds at most).
        if (phone.ready) await Promise.race([phone.ready.catch(() => undefined), sleep(STATUS_WAIT_MS)]);
        body = this.status(phone);
      } else {
        const input = await readJson(req);
        ({ phone, release } = await this.phones.acquire(deviceId, op));
        const deps = {
          adb: this.opts.adb,
          phones: this.phones,
          cache: this.cache,
          installTimeout: this.installTimeout,
        };
        switch (op) {
          case 'install':
            body = await installApp(deps, phone, input, controller.signal);
            break;
          case 'launch':
            body = await launchApp(deps, phone, input);
            break;
          case 'uninstall':
            body = await uninstallApp(deps, phone, input);
            break;
          case 'reset':
            body = await reset({ ...deps, records: this.records, log: this.log }, phone, input);
            break;
          default:
            throw new HttpError(415, `installApp on ${deviceId} takes a JSON body {url, packageName, sha256?}`);
        }
      }
    } catch (err) {
      ({ status, body } = failureAnswer(err, 'adb agent', op, deviceId));
    } finally {
      release?.();
      this.running.delete(controller);
    }
    const ms = Math.round(performance.now() - t0);
    this.log('agent call', {
      phone: deviceId,
      op,
      ms,
      status,
      outcome: status < 300 ? 'ok' : String(body.error).slice(0, 300),
    });
    send(res, status, body);
  }
}
