/**
 * A bench of fake phones (sim/fake-phone) attached to a real adb server, for the tests, the
 * benchmarks and the demo. The fake phone is a double of a real phone, the one part this machine
 * cannot have; everything else (the adb client, the adb server, the transport) is the real adb.
 *
 * By default the bench gets a private adb server on a free port, so a test never touches the adb
 * server of the person running it; `adbPort` names one to share (the demo uses adb's default, 5037,
 * so `adb devices` in another terminal shows the fake phones).
 */
import { mkdirSync } from 'node:fs';
import { Adb } from '../src/adb';
import { freePort } from '../src/net/ports';
import { FakePhone, type FakePhoneOptions } from '../sim/fake-phone';
import { waitFor } from './wait';

/** What to start. */
export interface PhoneBenchOptions {
  /** How many fake phones. */
  phones: number;
  /** Parent folder of the phones' state folders. */
  stateDir: string;
  /** Port of the adb server to use; unset: a private server on a free port, killed by `stop()`. */
  adbPort?: number;
  /** Ports of the phones (one per phone); unset: free ports. */
  ports?: number[];
  /** The adb binary (default DT_ADB or `adb`). */
  adbBin?: string;
  /** Options of every phone (model, sdk, freeBytes, timeScale). */
  phone?: Partial<Omit<FakePhoneOptions, 'stateDir' | 'port' | 'serial'>>;
}

/** Running fake phones and the adb server that drives them. */
export interface PhoneBench {
  adb: Adb;
  adbPort: number;
  phones: FakePhone[];
  /** adb serials of the phones (`127.0.0.1:<port>`), in order. */
  serials: string[];
  /** `DT_ADB_SERVER` for a worker or agent that must use this bench's adb server. */
  adbServer: string;
  /** Starts one more fake phone with its own options and connects it. */
  addPhone(options?: PhoneBenchOptions['phone']): Promise<FakePhone>;
  /** Reconnects a phone that came back after goOffline, and waits until adb lists it as `device`. */
  reconnect(phone: FakePhone): Promise<void>;
  /** Waits until adb lists the phone in this state. */
  waitState(serial: string, state: string, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

/** Starts fake phones, an adb server (private unless adbPort is given) and connects them. */
export async function startPhoneBench(o: PhoneBenchOptions): Promise<PhoneBench> {
  const ownServer = o.adbPort === undefined;
  const adbPort = o.adbPort ?? (await freePort());
  const adb = new Adb({ bin: o.adbBin ?? process.env.DT_ADB ?? 'adb', serverPort: adbPort });
  mkdirSync(o.stateDir, { recursive: true });
  await adb.startServer();
  const phones: FakePhone[] = [];
  const stop = async () => {
    for (const p of phones) await adb.run(undefined, ['disconnect', p.address], { timeoutMs: 10_000 }).catch(() => {});
    await Promise.all(phones.map((p) => p.close()));
    if (ownServer) await adb.run(undefined, ['kill-server'], { timeoutMs: 10_000 }).catch(() => {});
  };
  const waitState = async (serial: string, state: string, timeoutMs = 20_000) => {
    await waitFor(
      async () => (await adb.devices()).some((d) => d.serial === serial && d.state === state),
      timeoutMs,
      `adb listing ${serial} as ${state}`,
      200,
    );
  };
  const connect = async (p: FakePhone) => {
    const r = await adb.run(undefined, ['connect', p.address], { timeoutMs: 15_000 });
    if (!/connected to/.test(r.stdout)) throw new Error(`adb connect ${p.address} failed: ${r.stdout}${r.stderr}`);
    await waitState(p.address, 'device');
  };
  try {
    for (let i = 0; i < o.phones; i++) {
      const phone = await FakePhone.start({ ...o.phone, stateDir: o.stateDir, port: o.ports?.[i] ?? 0 });
      phones.push(phone);
      await connect(phone);
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    adb,
    adbPort,
    phones,
    get serials() {
      return phones.map((p) => p.address);
    },
    adbServer: `127.0.0.1:${adbPort}`,
    async addPhone(options) {
      const phone = await FakePhone.start({ ...o.phone, ...options, stateDir: o.stateDir, port: 0 });
      phones.push(phone);
      await connect(phone);
      return phone;
    },
    async reconnect(phone) {
      // adb reconnects a dropped TCP device by itself within about 10 s; disconnect + connect is at once.
      await adb.run(undefined, ['disconnect', phone.address], { timeoutMs: 10_000 });
      await connect(phone);
    },
    waitState,
    stop,
  };
}
