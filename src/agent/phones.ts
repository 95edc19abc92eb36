/**
 * The phones this agent serves: what `adb devices -l` lists, polled every couple of seconds so that
 * phones come and go without a restart, with one call at a time per phone.
 *
 * Ids: a phone's id is its serial with every character outside the device-id alphabet replaced by
 * `-` (`127.0.0.1:5601` → `127.0.0.1-5601`); the serial itself travels in the status, for `adb -s`.
 *
 * A phone is never hidden: `offline`, `unauthorized` and the like are reported with online:false and
 * a hint, and a phone gone from the list (unplugged, or a TCP phone adb dropped) stays known as
 * `disconnected`, so the worker sees an offline phone (retryable 503), not an unknown one (404, which
 * it takes as permanent). Phones known from the data dir (seen by an earlier run of the agent) start
 * as `disconnected` too, so a phone unplugged across an agent restart is still not "unknown".
 *
 * Whenever a phone becomes usable (first sighting, back from offline or from the unplugged state) it
 * is prepared (`prepare`: properties, settings baseline, engine sweep) before any call runs on it.
 */
import { createHash } from 'node:crypto';
import type { Adb, AdbCallOptions, AdbDevice, AdbResult } from '../adb';
import { tail } from '../adb';
import { DEVICE_ID_PATTERN } from '../contract/ids';
import { HttpError, type AgentOp } from './protocol';

/** adb's state of a listed phone, or `disconnected` when adb no longer lists it. */
export type PhoneState = string;

/** What the agent knows about one phone. */
export interface Phone {
  id: string;
  serial: string;
  /** `device` when usable; else adb's word (`offline`, `unauthorized`, …) or `disconnected`. */
  state: PhoneState;
  model?: string;
  sdk?: number;
  /** The call running on the phone; others answer 409 meanwhile. */
  busy?: { op: AgentOp; since: number };
  /** Preparation after the phone became usable; undefined until it does, or after it failed. */
  ready?: Promise<void>;
}

/** Log function of the agent. */
export type AgentLog = (msg: string, meta?: Record<string, unknown>) => void;

/** Options of {@link PhoneTracker}. */
export interface PhoneTrackerOptions {
  adb: Adb;
  /** Interval of `adb devices -l`, ms (default 2000). */
  pollMs?: number;
  /** Runs each time a phone becomes usable, before any call on it. */
  prepare: (phone: Phone) => Promise<void>;
  log?: AgentLog;
}

/** Maps an adb serial to a device id (see the file header). */
export function serialToId(serial: string): string {
  let id = serial.replace(/[^A-Za-z0-9._-]/g, '-');
  if (!/^[A-Za-z0-9_]/.test(id)) id = `_${id}`;
  if (id.length > 64) id = `${id.slice(0, 55)}-${shortHash(serial)}`;
  return id;
}

function shortHash(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 8);
}

/** What an operator does about a phone in a state other than `device`. */
export function stateHint(phone: Pick<Phone, 'id' | 'serial' | 'state'>): string {
  const who = `phone ${phone.id} (serial ${phone.serial})`;
  switch (phone.state) {
    case 'unauthorized':
      return `${who} is unauthorized: unlock it and accept the "Allow USB debugging" prompt for this computer`;
    case 'offline':
      return `${who} is offline to adb: check its cable, hub or network; adb reconnects by itself, or run adb reconnect`;
    case 'disconnected':
      return `${who} is not listed by adb devices: plug it in (or adb connect it) again`;
    case 'no permissions':
      return `${who} cannot be opened by this user: fix its udev rule (plugdev group), then replug it`;
    case 'no-adb-server':
      return `${who} is unreachable: the adb server does not answer; check DT_ADB_SERVER or start it`;
    default:
      return `${who} is in state ${phone.state}; it takes calls once adb lists it as device`;
  }
}

/** The phones adb lists, tracked by polling, with a per-phone lock. */
export class PhoneTracker {
  private readonly phones = new Map<string, Phone>();
  private timer?: NodeJS.Timeout;
  private polling?: Promise<void>;
  private lastPollError?: string;
  private closed = false;
  // Ends the adb calls of polls, preparations and shells when the agent closes: an adb client left
  // running against a server that is gone would start a new server on its own.
  private readonly stopper = new AbortController();
  private readonly preparing = new Set<Promise<void>>();

  constructor(private readonly opts: PhoneTrackerOptions) {}

  /** Adds a phone known from the data dir, reported `disconnected` until adb lists it. */
  remember(k: { id: string; serial: string; model?: string; sdk?: number }): void {
    if (!DEVICE_ID_PATTERN.test(k.id) || this.phones.has(k.id)) return;
    const { id, serial, model, sdk } = k;
    this.phones.set(id, { id, serial, state: 'disconnected', model, sdk });
  }

  /** Polls once (so the first calls see the phones), then every pollMs. */
  async start(): Promise<void> {
    await this.refresh();
    const tick = () => {
      this.timer = setTimeout(() => {
        // poll() catches its own failures, so refresh() never rejects.
        void this.refresh().finally(() => {
          if (!this.closed) tick();
        });
      }, this.opts.pollMs ?? 2000);
      this.timer.unref();
    };
    tick();
  }

  /** Aborted when the tracker closes; adb calls on its phones pass it. */
  get signal(): AbortSignal {
    return this.stopper.signal;
  }

  /** Stops polling, ends adb calls in progress and waits for preparations; safe to call twice. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.stopper.abort(new Error('agent closing'));
    await Promise.allSettled([this.polling, ...this.preparing]);
  }

  /** Every known phone, by id. */
  list(): Phone[] {
    return [...this.phones.values()].sort((a, b) => a.id.localeCompare(b.id));
  }

  /** One phone by id, if known. */
  get(id: string): Phone | undefined {
    return this.phones.get(id);
  }

  /** Reads `adb devices -l` now (joining a poll in progress) and updates the states. */
  refresh(): Promise<void> {
    this.polling ??= this.poll().finally(() => (this.polling = undefined));
    return this.polling;
  }

  private async poll(): Promise<void> {
    let listed: AdbDevice[];
    try {
      listed = await this.opts.adb.devices({ signal: this.signal });
    } catch (err) {
      if (this.closed) return;
      const message = (err as Error).message;
      if (message !== this.lastPollError) this.opts.log?.('adb devices failed', { error: message });
      this.lastPollError = message;
      for (const phone of this.phones.values()) this.setState(phone, 'no-adb-server');
      return;
    }
    if (this.lastPollError) this.opts.log?.('adb devices answers again', {});
    this.lastPollError = undefined;
    const seen = new Set<string>();
    for (const d of listed) {
      const id = this.idFor(d.serial);
      seen.add(id);
      let phone = this.phones.get(id);
      if (!phone) {
        const model = d.props.model?.replace(/_/g, ' ');
        phone = { id, serial: d.serial, state: 'disconnected', ...(model ? { model } : {}) };
        this.phones.set(id, phone);
        this.opts.log?.('phone appeared', { phone: id, serial: d.serial, state: d.state });
      }
      phone.serial = d.serial;
      this.setState(phone, d.state);
    }
    for (const phone of this.phones.values()) if (!seen.has(phone.id)) this.setState(phone, 'disconnected');
  }

  /** The id of a serial; a second serial mapping to a taken id gets a hash suffix. */
  private idFor(serial: string): string {
    const id = serialToId(serial);
    const owner = this.phones.get(id);
    if (!owner || owner.serial === serial) return id;
    return `${id.slice(0, 55)}-${shortHash(serial)}`;
  }

  private setState(phone: Phone, state: PhoneState): void {
    if (phone.state === state) return;
    this.opts.log?.('phone state', { phone: phone.id, serial: phone.serial, from: phone.state, to: state });
    phone.state = state;
    // Whatever ran before the phone left may have left engines or changed settings: prepare again.
    if (state === 'device') void this.startPreparing(phone);
    else phone.ready = undefined;
  }

  private startPreparing(phone: Phone): Promise<void> {
    const ready = this.opts.prepare(phone).catch((err: Error) => {
      if (!this.closed) this.opts.log?.('phone preparation failed', { phone: phone.id, error: err.message });
      // Forgotten, so the next call (or the next time the phone comes back) prepares it again.
      if (phone.ready === ready) phone.ready = undefined;
      throw err;
    });
    const settled = ready.catch(() => undefined);
    this.preparing.add(settled);
    void settled.then(() => this.preparing.delete(settled));
    phone.ready = ready;
    return ready;
  }

  /**
   * Takes the phone for one call: 404 when unknown, 409 when another call runs on it, 503 when it is
   * not usable; waits for its preparation. Returns the release function.
   */
  async acquire(id: string, op: AgentOp): Promise<{ phone: Phone; release: () => void }> {
    const phone = this.phones.get(id);
    if (!phone) throw this.unknown(id);
    if (phone.busy) {
      const ms = Date.now() - phone.busy.since;
      throw new HttpError(409, `device ${id} is busy with ${phone.busy.op} (running ${ms} ms); retry once it finishes`);
    }
    // Taken before any await, so two calls arriving together cannot both pass the check.
    const busy = { op, since: Date.now() };
    phone.busy = busy;
    const release = () => {
      if (phone.busy === busy) phone.busy = undefined;
    };
    try {
      this.requireOnline(phone);
      try {
        await (phone.ready ?? this.startPreparing(phone));
      } catch (err) {
        this.requireOnline(phone);
        throw new HttpError(503, `device ${id} could not be prepared: ${(err as Error).message}; retry shortly`);
      }
      this.requireOnline(phone);
      return { phone, release };
    } catch (err) {
      release();
      throw err;
    }
  }

  /** The 404 of an id no phone has. */
  unknown(id: string): HttpError {
    const ids = this.list().map((p) => p.id);
    return new HttpError(
      404,
      `device ${id} is not attached to this agent; attached: ${ids.slice(0, 20).join(', ') || 'none'} (GET /mobile lists them)`,
    );
  }

  /** Throws the 503 of a phone that is not usable. */
  requireOnline(phone: Phone): void {
    if (phone.state !== 'device')
      throw new HttpError(503, stateHint(phone), { online: false, state: phone.state, serial: phone.serial });
  }

  /**
   * The error for an adb call on a phone that failed on the way (not the phone's command): 503 when
   * the phone is no longer usable (adb is asked again), else 502 naming what adb said.
   */
  async callFailure(phone: Phone, what: string, r: AdbResult): Promise<HttpError> {
    await this.refresh();
    if (phone.state !== 'device')
      return new HttpError(503, `${what} stopped: ${stateHint(phone)}`, { online: false, state: phone.state });
    return new HttpError(502, `${what} failed in adb: ${tail(r)}; retry`);
  }

  /**
   * Runs one shell line on a phone; a transport failure (adb's own `error: …`, a timeout) becomes
   * the HttpError of callFailure. The command's own exit code is left to the caller.
   */
  async shell(phone: Phone, command: string, what: string, o: AdbCallOptions = {}): Promise<AdbResult> {
    const signal = o.signal ? AbortSignal.any([o.signal, this.signal]) : this.signal;
    const r = await this.opts.adb.shell(phone.serial, command, { timeoutMs: 30_000, ...o, signal });
    if (r.timedOut || r.code === null || isAdbTransportError(r)) throw await this.callFailure(phone, what, r);
    return r;
  }
}

/** True when adb itself failed to reach the phone (as opposed to the phone's command failing). */
export function isAdbTransportError(r: AdbResult): boolean {
  if (r.code === 0) return false;
  // adb's own messages, lower-case "error:"; a phone command's complaints read "Error:" or differ.
  return /^(adb: )?error: (device .*(not found|offline)|device offline|no devices|closed|protocol fault|device unauthorized|cannot connect|failed to (connect|get feature))/m.test(
    r.stderr,
  );
}
