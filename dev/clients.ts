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

/**
 * The test run's Temporal address and Redis URL, as test/support/global.ts announces them; throws
 * when they are missing rather than letting a client fall back to localhost:7233.
 */
export function testServers(): { address: string; redisUrl: string } {
  const address = process.env.TEST_TEMPORAL_ADDRESS;
  const redisUrl = process.env.TEST_REDIS_URL;
  if (!address || !redisUrl)
    throw new Error(
      'TEST_TEMPORAL_ADDRESS and TEST_REDIS_URL are unset: run through mocha (test/support/global.ts starts ' +
        'the servers), or pass the address and URL explicitly',
    );
  return { address, redisUrl };
}

/** Connects a Temporal client (namespace default) and two Redis connections. */
export async function connectClients(opts: ClientsOptions = {}): Promise<Clients> {
  const redisUrl = opts.redisUrl ?? testServers().redisUrl;
  const connection = await Connection.connect({ address: opts.address ?? testServers().address });
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
