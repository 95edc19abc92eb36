/**
 * The Temporal SDK's own Prometheus exporter. It runs in the SDK's native core and answers anyone
 * who can connect, without the artifact token, so it listens on loopback only: the host is fixed
 * here and no setting can change it (DT_SDK_METRICS_PORT picks the port alone). Other hosts read
 * its series through the artifact server's `/metrics`, which checks the token and merges them in.
 */
import type { TelemetryOptions } from '@temporalio/worker';
import { request } from 'undici';

/** Where the SDK exporter listens; loopback by design, see above. */
export const SDK_METRICS_HOST = '127.0.0.1';

/** Telemetry options for `Runtime.install` with the exporter on SDK_METRICS_HOST:`port`. */
export function sdkTelemetryOptions(port: number): TelemetryOptions {
  if (!Number.isInteger(port) || port < 1 || port > 65_535)
    throw new RangeError(`SDK metrics port ${port} is not a TCP port (1-65535)`);
  return { metrics: { prometheus: { bindAddress: `${SDK_METRICS_HOST}:${port}` } } };
}

/** The exporter's current exposition text under a heading, or '' when it does not answer. */
export async function scrapeSdkMetrics(port: number): Promise<string> {
  const res = await request(`http://${SDK_METRICS_HOST}:${port}/metrics`).catch(() => undefined);
  return res ? `# Temporal SDK metrics\n${await res.body.text()}` : '';
}
