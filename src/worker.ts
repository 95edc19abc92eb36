/** Worker entry point (`npm run worker`): reads config once, builds clients, runs until SIGTERM/SIGINT. */
import { DefaultLogger, Runtime } from '@temporalio/worker';
import Redis from 'ioredis';
import { loadConfig } from './config';
import { hostTaskQueue } from './contract/messages';
import { JsonLogger } from './logger';
import { freePort } from './net/ports';
import { scrapeSdkMetrics, sdkTelemetryOptions } from './worker/sdk-metrics';
import { connectClient, connectWorker, secretValues, temporalSettings } from './temporal-connection';
import { createTraversalWorker } from './worker/setup';

async function main(): Promise<void> {
  const config = loadConfig();
  const temporal = temporalSettings();
  const secrets = secretValues(config, temporal);
  const logger = new JsonLogger({ service: 'worker', pid: process.pid }, config.logLevel, process.stdout, secrets);
  const sdkMetricsPort = config.sdkMetricsPort || (await freePort());
  Runtime.install({
    logger: logger as unknown as DefaultLogger,
    // Loopback only: the exporter has no authentication (src/worker/sdk-metrics.ts).
    telemetryOptions: sdkTelemetryOptions(sdkMetricsPort),
  });

  const redis = new Redis(config.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 20 });
  await redis.connect();
  const connection = await connectWorker(temporal);
  // The client connection is left to the process exit: closing it under a call that is still
  // retrying makes grpc-js throw from a timer.
  const { client } = await connectClient(temporal);
  try {
    const tw = await createTraversalWorker({
      config,
      connection,
      namespace: temporal.namespace,
      client,
      redis,
      redisKeyPrefix: config.redisKeyPrefix,
      // The SDK's exporter runs in its native core; fetch its text so one token-checked scrape gets both.
      sdkMetrics: () => scrapeSdkMetrics(sdkMetricsPort),
      ...(config.workflowBundle ? { workflowBundle: { codePath: config.workflowBundle } } : {}),
      log: (msg, meta) => logger.info(msg, meta),
    });
    logger.info('worker started', {
      temporal: temporal.address,
      namespace: temporal.namespace,
      taskQueue: config.taskQueue,
      host: config.hostId,
      routing: config.routing,
      ...(tw.hostWorker ? { hostTaskQueue: hostTaskQueue(config.taskQueue, config.hostId) } : {}),
      peerFetch: config.peerFetch,
      ...(config.workerDeployment ? { workerDeployment: config.workerDeployment, buildId: config.buildId } : {}),
      artifactServer: tw.artifactUrl,
      metrics: `${tw.artifactUrl}/metrics`,
      cacheDir: config.apkCacheDir,
    });
    const stop = (sig: string) => {
      logger.info('shutting down', { signal: sig });
      tw.shutdown();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    await tw.run();
  } finally {
    await connection.close().catch(() => undefined);
    redis.disconnect();
  }
}

main().then(
  // Exit at once: a gRPC retry timer still pending on a closed connection would otherwise throw.
  () => process.exit(0),
  (err) => {
    process.stderr.write(`worker failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
