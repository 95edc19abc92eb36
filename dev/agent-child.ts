/**
 * The device agent simulator as its own process (started by `startAgentSim` in dev/services.ts).
 * Unlike `npm run agent-sim` it takes the cold-start range, so the orchestration is not measured
 * against the simulator's default 0.3–1.2 s launch time.
 *
 * Usage: agent-child.ts '{"devices":["d1"],"port":7301,"coldStartMs":[10,50]}'
 */
import { AgentSimulator } from '../sim/agent-sim';

/** Options passed as one JSON argument. */
interface AgentChildOptions {
  devices: string[];
  port: number;
  coldStartMs: [number, number];
  latencyMs: number;
  installDelayMs: number;
  hostId?: string;
  host?: string;
}

async function main(): Promise<void> {
  const o = JSON.parse(process.argv[2] ?? '{}') as AgentChildOptions;
  if (!Array.isArray(o.devices) || o.devices.length === 0) throw new Error('agent-child needs {"devices": [...]}');
  const sim = new AgentSimulator({
    devices: o.devices,
    coldStartMs: o.coldStartMs,
    latencyMs: o.latencyMs,
    installDelayMs: o.installDelayMs,
    hostId: o.hostId,
    log: (msg, meta) => process.stdout.write(`${JSON.stringify({ msg, ...meta })}\n`),
  });
  const url = await sim.start(o.port, o.host ?? '127.0.0.1');
  process.stdout.write(`${JSON.stringify({ msg: 'agent-sim listening', url, devices: o.devices.length })}\n`);
  const stop = () => {
    sim.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main().catch((err) => {
  process.stderr.write(`agent simulator failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
