/** The adb client as the configuration names it (DT_ADB, DT_ADB_SERVER). */
import type { Config } from '../config';
import { Adb } from './client';

export { Adb, AdbUnavailableError, parseDevices, shellQuote, tail } from './client';
export type { AdbCallOptions, AdbDevice, AdbOptions, AdbResult } from './client';

/** An adb client for the binary and server the configuration names. */
export function adbFor(config: Pick<Config, 'adbBin' | 'adbServer'>): Adb {
  const [host, port] = config.adbServer ? config.adbServer.split(':') : [];
  return new Adb({ bin: config.adbBin, serverHost: host, serverPort: port ? Number(port) : undefined });
}
