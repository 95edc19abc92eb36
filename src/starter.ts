/** Starter entry point (`npm run starter`): bridges `traversal:tasks` in Redis into device workflows. */
import Redis from 'ioredis';
import { loadConfig } from './config';
import { loadDeviceRegistry, urlPolicyFor } from './device-registry';
import { JsonLogger } from './logger';
import { ProgressBoard } from './starter/progress-board';
import { createStarter } from './starter/create';
import { connectClient, secretValues, temporalSettings } from './temporal-connection';

async function main(): Promise<void> {
  const config = loadConfig();
  const temporal = temporalSettings();
  const secrets = secretValues(config, temporal);
  const mode = config.progress === 'auto' ? (process.stdout.isTTY ? 'bars' : 'lines') : config.progress;
  // With bars on the terminal, only warnings and errors are logged (to stderr) so they do not tear the board.
  const logger =
    mode === 'bars'
      ? new JsonLogger({ service: 'starter', starterId: config.starterId }, 'warn', process.stderr, secrets)
      : new JsonLogger({ service: 'starter', starterId: config.starterId }, config.logLevel, process.stdout, secrets);
  const agents = loadDeviceRegistry(config.deviceRegistry, config.defaultAgentUrl);
  const urlPolicy = urlPolicyFor(config, {}, agents);

  // Keep retrying Redis forever: a restarted Redis must not end the starter.
  const redisOptions = { maxRetriesPerRequest: null, retryStrategy: (n: number) => Math.min(n * 200, 2000) };
  const redis = new Redis(config.redisUrl, redisOptions);
  const blocking = new Redis(config.redisUrl, redisOptions);
  redis.on('error', (err) => logger.warn('redis connection problem', { error: err.message }));
  blocking.on('error', () => undefined);
  const { client, connection } = await connectClient(temporal);
  try {
    const bridge = createStarter({
      config,
      client,
      redis,
      blocking,
      agents,
      urlPolicy,
      log: (level, msg, meta) => logger[level](msg, meta),
    });
    logger.info('starter consuming', {
      tasks: bridge.keys.tasks,
      processing: bridge.keys.processing,
      temporal: temporal.address,
      taskQueue: config.taskQueue,
    });
    const stop = (sig: string) => {
      logger.info('stopping after the current task', { signal: sig });
      void bridge.stop();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    // Without a terminal the progress goes through the logger, so stdout stays JSON lines.
    const board = new ProgressBoard(client, config.taskQueue, mode, process.stdout, 1000, (p) =>
      logger.info('progress', {
        taskId: p.taskId,
        deviceId: p.deviceId,
        phase: p.phase,
        percent: Math.round(p.percent),
        screens: p.screens,
        ...(p.waiting ? { waiting: p.waiting } : {}),
      }),
    ).start();
    await bridge.start().done();
    board.stop();
    logger.info('starter stopped', { ...bridge.stats });
  } finally {
    await connection.close().catch(() => undefined);
    redis.disconnect();
    blocking.disconnect();
  }
}

main().catch((err) => {
  process.stderr.write(`starter failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
