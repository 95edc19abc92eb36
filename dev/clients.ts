/**
 * Clients of a running Temporal and Redis, as a starter holds them: a Temporal client, a Redis
 * connection for commands and one of its own for the blocking reads. The defaults are the servers
 * of the test run (TEST_TEMPORAL_ADDRESS and TEST_REDIS_URL, set by test/support/global.ts).
 */
import { Client, Connection } from '@temporalio/client';
import Redis from 'ioredis';

/** Connected clients; `close()` ends them all and is safe to call twice. */
export interface Clients {
  connection: Connection;
  client: Client;
  redis: Redis;
  /** For BLMOVE and other blocking reads. */
  blocking: Redis;
  close(): Promise<void>;
}

/** Where the clients connect. */
export interface ClientsOptions {
  /** Temporal address (default TEST_TEMPORAL_ADDRESS). */
  address?: string;
  /** Redis URL (default TEST_REDIS_URL). */
  redisUrl?: string;
}

/** Connects a Temporal client (namespace default) and two Redis connections. */
export async function connectClients(opts: ClientsOptions = {}): Promise<Clients> {
  const redisUrl = opts.redisUrl ?? process.env.TEST_REDIS_URL!;
  const connection = await Connection.connect({ address: opts.address ?? process.env.TEST_TEMPORAL_ADDRESS! });
  const redis = new Redis(redisUrl);
  const blocking = new Redis(redisUrl);
  let closing: Promise<void> | undefined;
  return {
    connection,
    client: new Client({ connection }),
    redis,
    blocking,
    close() {
      closing ??= (async () => {
        redis.disconnect();
        blocking.disconnect();
        await connection.close();
      })();
      return closing;
    },
  };
}
