/**
 * Test double of a real Android phone, the one part of a device farm this machine cannot have: a fake
 * adb daemon on a TCP port that the real adb server adopts with `adb connect 127.0.0.1:<port>`. Shell,
 * exec, push, pull and streamed installs then go through the real adb client and server.
 *
 * The phone announces `shell_v2,cmd,stat_v2,fixed_push_mkdir` and no AUTH, so adb lists it as `device`,
 * runs commands over the shell protocol (with exit codes) and streams installs to `cmd package install`.
 */
import net from 'node:net';
import path from 'node:path';
import { AdbConnection, type AdbStream } from './transport';
import { serveShell } from './shell';
import { serveSync } from './sync';
import { PhoneState, type EngineScenario, type PhoneStateSnapshot } from './state';
import type { PhoneContext } from './io';

export type { EngineScenario, PhoneStateSnapshot, ScenarioEvent, PackageRecord, ProcessInfo } from './state';

/** How to start one fake phone. */
export interface FakePhoneOptions {
  /** ro.serialno and the name of its state folder; adb itself calls the phone 127.0.0.1:<port>. Default `fake-<port>`. */
  serial?: string;
  /** TCP port; 0 (the default) picks a free one. */
  port?: number;
  /** Address to listen on; default 127.0.0.1. */
  host?: string;
  /** Parent folder of the phone's state folder `<stateDir>/<serial>/`. */
  stateDir: string;
  /** ro.product.model; default 'Pixel 7'. */
  model?: string;
  /** ro.build.version.sdk; default 34. */
  sdk?: number;
  /** Storage for installs, bytes; default 8 GiB. */
  freeBytes?: number;
  /** Length of a fake minute relative to a real one, for Fastbot's --running-minutes; default 1. */
  timeScale?: number;
  /** Receives one line per service the host opens (e.g. "open shell,v2,raw:getprop"); default none. */
  trace?: (line: string) => void;
}

const RELEASES: Record<number, string> = {
  24: '7.0',
  25: '7.1.2',
  26: '8.0.0',
  27: '8.1.0',
  28: '9',
  29: '10',
  30: '11',
  31: '12',
  32: '12',
  33: '13',
  34: '14',
  35: '15',
};
const FEATURES = ['shell_v2', 'cmd', 'stat_v2', 'fixed_push_mkdir'];

/** One fake phone listening on its own port. */
export class FakePhone {
  /** TCP port the phone listens on. */
  readonly port: number;
  /** What `adb connect` takes and what adb lists the phone as. */
  readonly address: string;
  private readonly connections = new Set<AdbConnection>();
  private offline = false;
  private closed = false;

  private constructor(
    private readonly server: net.Server,
    private readonly ctx: PhoneContext,
    private readonly trace: ((line: string) => void) | undefined,
    port: number,
    host: string,
  ) {
    this.port = port;
    this.address = `${host}:${port}`;
  }

  /** Starts listening; resolves once the port is bound. */
  static async start(o: FakePhoneOptions): Promise<FakePhone> {
    const host = o.host ?? '127.0.0.1';
    let accept: (s: net.Socket) => void = (s) => s.destroy();
    const server = net.createServer((s) => accept(s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(o.port ?? 0, host, () => resolve());
    });
    const port = (server.address() as net.AddressInfo).port;
    const serial = o.serial ?? `fake-${port}`;
    const model = o.model ?? 'Pixel 7';
    const sdk = o.sdk ?? 34;
    const state = new PhoneState(path.join(o.stateDir, serial), o.freeBytes ?? 8 * 1024 ** 3);
    const props: Record<string, string> = {
      'ro.product.model': model,
      'ro.product.manufacturer': 'Google',
      'ro.product.brand': 'google',
      'ro.product.name': 'panther',
      'ro.product.device': 'panther',
      'ro.build.version.sdk': String(sdk),
      'ro.build.version.release': RELEASES[sdk] ?? String(sdk - 20),
      'ro.build.fingerprint': `google/panther/panther:${RELEASES[sdk] ?? sdk}/UQ1A.240205.004/11269751:user/release-keys`,
      'ro.product.cpu.abi': 'x86_64',
      'ro.product.cpu.abilist': 'x86_64,arm64-v8a',
      'ro.serialno': serial,
      'sys.boot_completed': '1',
    };
    const phone = new FakePhone(server, { state, props, timeScale: o.timeScale ?? 1 }, o.trace, port, host);
    accept = (s) => phone.accept(s);
    return phone;
  }

  /** Drops every TCP connection and refuses new ones, like a phone losing its network. */
  goOffline(): void {
    this.offline = true;
    for (const c of this.connections) c.drop();
    this.connections.clear();
  }

  /** Accepts connections again; the adb server still needs an `adb connect` (see the README of the test). */
  comeBack(): void {
    this.offline = false;
  }

  /** Sets what the engines meet when they exercise `pkg`; persisted in the state folder. */
  setScenario(pkg: string, s: EngineScenario): void {
    this.ctx.state.setScenario(pkg, s);
  }

  /** Packages, settings, processes and free storage right now. */
  state(): PhoneStateSnapshot {
    return this.ctx.state.snapshot();
  }

  /** Folder holding this phone's state. */
  get stateDir(): string {
    return this.ctx.state.dir;
  }

  /** Stops listening, drops connections and kills every process; safe to call twice. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.goOffline();
    for (const p of this.ctx.state.processes()) p.signal('KILL');
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(socket: net.Socket): void {
    if (this.offline || this.closed) {
      socket.destroy();
      return;
    }
    const conn = new AdbConnection(
      socket,
      () => this.banner(),
      (service, stream) => this.open(service, stream),
    );
    this.connections.add(conn);
    socket.on('close', () => this.connections.delete(conn));
  }

  private banner(): string {
    const p = this.ctx.props;
    return `device::ro.product.name=${p['ro.product.name']};ro.product.model=${p['ro.product.model']};ro.product.device=${p['ro.product.device']};features=${FEATURES.join(',')}`;
  }

  private open(service: string, stream: AdbStream): void {
    this.trace?.(`${this.address} open ${service}`);
    const done = (p: Promise<void>): void => {
      p.catch(() => stream.close());
    };
    const v2 = /^shell,v2(?:,[^:]*)?:/.exec(service);
    if (v2) return done(serveShell(stream, service.slice(v2[0].length), true, this.ctx));
    if (service.startsWith('shell:')) return done(serveShell(stream, service.slice('shell:'.length), false, this.ctx));
    if (service.startsWith('exec:')) return done(serveShell(stream, service.slice('exec:'.length), false, this.ctx));
    if (service === 'sync:') return done(serveSync(stream, this.ctx.state));
    done(stream.close());
  }
}

/** Starts n phones on consecutive ports from `portBase` (free ports when 0 or unset), each with its own state folder. */
export async function startFakePhones(n: number, o: FakePhoneOptions & { portBase?: number }): Promise<FakePhone[]> {
  const phones: FakePhone[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const port = o.portBase ? o.portBase + i : (o.port ?? 0);
      phones.push(await FakePhone.start({ ...o, port, serial: o.serial ? `${o.serial}-${i + 1}` : undefined }));
    }
  } catch (err) {
    await Promise.all(phones.map((p) => p.close()));
    throw err;
  }
  return phones;
}
