/**
 * Temporal connection settings from the standard environment configuration (@temporalio/envconfig):
 * TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*, TEMPORAL_PROFILE and the
 * config file. The only default added here is explicit and documented: 127.0.0.1:7233, namespace default.
 */
import { Connection, Client } from '@temporalio/client';
import { loadClientConnectConfig } from '@temporalio/envconfig';
import { NativeConnection, type NativeConnectionOptions } from '@temporalio/worker';
import type { Config } from './config';

/** Default address when neither the environment nor a profile names one. */
export const DEFAULT_TEMPORAL_ADDRESS = '127.0.0.1:7233';

/** Resolved connection settings. */
export interface TemporalSettings {
  connectionOptions: NativeConnectionOptions;
  namespace: string;
  address: string;
}

/** Reads the standard Temporal environment configuration from `env`. */
export function temporalSettings(env: NodeJS.ProcessEnv = process.env): TemporalSettings {
  const vars: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined) vars[k] = v;
  const cfg = loadClientConnectConfig({ overrideEnvVars: vars });
  const address = cfg.connectionOptions.address ?? DEFAULT_TEMPORAL_ADDRESS;
  return { connectionOptions: { ...cfg.connectionOptions, address }, namespace: cfg.namespace ?? 'default', address };
}

/** The API key in use, from the environment or a profile of the config file ('' when none), for log masking. */
export function temporalApiKey(s: TemporalSettings): string {
  const key = (s.connectionOptions as { apiKey?: unknown }).apiKey;
  return typeof key === 'string' ? key : '';
}

/** Connects a client (for starters, scripts and tests). */
export async function connectClient(s: TemporalSettings): Promise<{ client: Client; connection: Connection }> {
  const connection = await Connection.connect(s.connectionOptions as Parameters<typeof Connection.connect>[0]);
  return { client: new Client({ connection, namespace: s.namespace }), connection };
}

/** Connects a worker's native connection. */
export function connectWorker(s: TemporalSettings): Promise<NativeConnection> {
  return NativeConnection.connect(s.connectionOptions);
}

/**
 * Every secret value a process holds (the Temporal API key from the environment or a profile, the
 * Redis password, the artifact and sink tokens), for the logger to mask.
 */
export function secretValues(
  config: Config,
  temporal: TemporalSettings,
  env: NodeJS.ProcessEnv = process.env,
): string[] {
  return [
    env.TEMPORAL_API_KEY ?? '',
    temporalApiKey(temporal),
    new URL(config.redisUrl).password,
    config.artifactToken,
    config.reportSinkToken,
  ].filter(Boolean);
}
