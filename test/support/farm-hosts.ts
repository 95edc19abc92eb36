/**
 * Where the phone hosts of a farm test live: in network namespaces of their own (root only), each
 * with its own address on a bridge this module makes, or side by side on loopback. In namespaces a
 * host reaches the rest of the farm only through the bridge: Temporal and Redis through TCP
 * forwarders on the bridge's address, the origin listening there, the other hosts at theirs.
 * Nothing leaves the namespaces and the bridge this module made; close() removes them.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { TcpProxy } from './procs';

/** One phone host: its name, address and the command its processes run under. */
export interface FarmHost {
  name: string;
  /** Address its agent and artifact server listen on. */
  ip: string;
  /** Prefix of its processes' command line (`ip netns exec <ns>`), empty on loopback. */
  wrap: string[];
}

/** The hosts and how they reach the shared services. */
export interface FarmPlacement {
  kind: 'netns' | 'loopback';
  /** Why loopback was used, when it was. */
  why?: string;
  hosts: FarmHost[];
  /** Address the shared services (origin, test servers) listen on for the hosts. */
  serviceIp: string;
  /** Temporal and Redis as the hosts reach them. */
  temporalAddress: string;
  redisUrl: string;
  /** DT_ALLOWED_HOSTS of the hosts' workers: every address of the farm. */
  allowedHosts: string;
  close(): Promise<void>;
}

function run(cmd: string, args: string[]): void {
  execFileSync(cmd, args, { stdio: 'pipe' });
}

/** Why namespaces cannot be made here, or undefined when they can. */
export function netnsUnavailable(): string | undefined {
  if (process.env.DT_TEST_FARM === 'loopback') return 'DT_TEST_FARM=loopback';
  if (process.getuid?.() !== 0) return `network namespaces need root (uid ${process.getuid?.()})`;
  try {
    run('ip', ['netns', 'list']);
  } catch (err) {
    return `ip netns does not work here: ${(err as Error).message.split('\n')[0]}`;
  }
  return undefined;
}

/**
 * Makes `names.length` hosts: in namespaces when this machine allows it, else on loopback.
 * `temporal` and `redis` are the test run's servers on 127.0.0.1 (host:port and redis:// URL).
 */
export async function placeFarm(names: string[], temporal: string, redisUrl: string): Promise<FarmPlacement> {
  const why = netnsUnavailable();
  if (why)
    return {
      kind: 'loopback',
      why,
      hosts: names.map((name) => ({ name, ip: '127.0.0.1', wrap: [] })),
      serviceIp: '127.0.0.1',
      temporalAddress: temporal,
      redisUrl,
      allowedHosts: '127.0.0.1',
      close: async () => undefined,
    };

  const id = randomBytes(3).toString('hex');
  // A /24 of 10.0.0.0/8 unlikely to be in use; interface names stay within 15 characters.
  const net = `10.${200 + (randomBytes(1)[0]! % 50)}.${randomBytes(1)[0]!}`;
  const bridge = `dtbr${id}`;
  const serviceIp = `${net}.1`;
  const made: string[] = [];
  const proxies: TcpProxy[] = [];
  const close = async () => {
    await Promise.all(proxies.map((p) => p.close()));
    for (const ns of made) execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    try {
      run('ip', ['link', 'del', bridge]);
    } catch {
      // not made
    }
  };
  try {
    run('ip', ['link', 'add', bridge, 'type', 'bridge']);
    run('ip', ['addr', 'add', `${serviceIp}/24`, 'dev', bridge]);
    run('ip', ['link', 'set', bridge, 'up']);
    const hosts: FarmHost[] = [];
    for (const [i, name] of names.entries()) {
      const ns = `dt-${id}-${i}`;
      const veth = `dtv${id}${i}`;
      const ip = `${net}.${10 + i}`;
      run('ip', ['netns', 'add', ns]);
      made.push(ns);
      run('ip', ['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      run('ip', ['link', 'set', veth, 'master', bridge]);
      run('ip', ['link', 'set', veth, 'up']);
      const inNs = (...args: string[]) => run('ip', ['netns', 'exec', ns, ...args]);
      inNs('ip', 'addr', 'add', `${ip}/24`, 'dev', 'eth0');
      inNs('ip', 'link', 'set', 'eth0', 'up');
      inNs('ip', 'link', 'set', 'lo', 'up');
      hosts.push({ name, ip, wrap: ['ip', 'netns', 'exec', ns] });
    }
    // Temporal and Redis listen on loopback; the hosts reach them through forwarders on the bridge.
    const [tHost, tPort] = temporal.split(':');
    const temporalProxy = new TcpProxy(tHost!, Number(tPort));
    proxies.push(temporalProxy);
    const r = new URL(redisUrl);
    const redisProxy = new TcpProxy(r.hostname, Number(r.port || 6379));
    proxies.push(redisProxy);
    const temporalAddress = await temporalProxy.start(serviceIp);
    const redisAddress = await redisProxy.start(serviceIp);
    return {
      kind: 'netns',
      hosts,
      serviceIp,
      temporalAddress,
      redisUrl: `redis://${redisAddress}`,
      allowedHosts: `${net}.0/24`,
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}
