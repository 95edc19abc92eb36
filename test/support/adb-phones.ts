/**
 * A private adb server and fake phones connected to it, for the adb agent's suites and bench.
 *
 * The fake phone (sim/fake-phone) is a double of a real phone, the one part this machine cannot
 * have. The adb client and server are Debian's real ones; each suite gets its own server port
 * (`adb -P <port>`), so suites never see each other's phones or a developer's.
 */
import { Adb } from '../../src/adb';
import { freePort } from '../../src/net/ports';
import { FakePhone, type FakePhoneOptions } from '../../sim/fake-phone';

/** A private adb server for one suite. */
export class AdbServer {
  private constructor(readonly adb: Adb) {}

  /** Starts `adb -P <free port> start-server`. */
  static async start(bin = process.env.DT_ADB || 'adb'): Promise<AdbServer> {
    const adb = new Adb({ bin, serverPort: await freePort() });
    await adb.startServer();
    return new AdbServer(adb);
  }

  /** The server's port. */
  get port(): number {
    return this.adb.options.serverPort!;
  }

  /** `adb connect` to a phone, then waits until the server lists it as `device`. */
  async connect(address: string, timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      await this.adb.run(undefined, ['connect', address], { timeoutMs: 10_000 });
      const listed = (await this.adb.devices()).find((d) => d.serial === address);
      if (listed?.state === 'device') return;
      if (Date.now() > deadline) throw new Error(`${address} is not listed as device: ${listed?.state ?? 'absent'}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** Starts a fake phone and connects it. */
  async phone(o: FakePhoneOptions): Promise<FakePhone> {
    const phone = await FakePhone.start(o);
    await this.connect(phone.address);
    return phone;
  }

  /** `adb kill-server`; safe to call twice. */
  async stop(): Promise<void> {
    await this.adb.run(undefined, ['kill-server'], { timeoutMs: 10_000 }).catch(() => undefined);
  }
}

/** Polls `check` until it returns a value other than undefined/false. */
export async function until<T>(
  what: string,
  check: () => Promise<T | undefined | false>,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
