/**
 * Connection accounting for a server that strangers can reach. Every open socket costs the worker a
 * file descriptor, and Temporal, Redis, APK writes and tool spawns draw on the same budget, so:
 * - at most `maxConnections` sockets are open, and at most `maxPerAddress` from one remote address
 *   (one /64 for IPv6, which a single host usually holds whole);
 * - a socket must complete its first request's headers within `firstRequestTimeoutMs` of being
 *   accepted (Node's own headersTimeout only starts at the first byte, so a silent socket would
 *   otherwise stay open until the peer leaves).
 * When a cap is reached, the oldest socket that is not serving a request makes room: first one that
 * never sent a request, then the longest idle keep-alive one. A socket serving a request is never
 * dropped for a newcomer; when all of them are, the newcomer is closed at once. So junk sockets
 * never hold more than the cap, and never lock out a client that has a real request to make.
 */
import { isIPv6, type Socket } from 'node:net';

/** The caps; 0 turns a cap off. */
export interface ConnectionLimits {
  maxConnections: number;
  maxPerAddress: number;
  firstRequestTimeoutMs: number;
}

type State = 'new' | 'idle' | 'busy';

interface Tracked {
  socket: Socket;
  key: string;
  state: State;
  /** When the socket entered its state, ms; orders eviction. */
  since: number;
  timer?: NodeJS.Timeout;
}

/** Why sockets were closed early, as counted in /metrics. */
type DropReason = 'max_connections' | 'max_per_address' | 'first_request_timeout';

/** How often a cap being hit is logged at most, ms. */
const LOG_EVERY_MS = 60_000;

/** Tracks the sockets of one server and enforces ConnectionLimits. */
export class ConnectionLimiter {
  private readonly open = new Map<Socket, Tracked>();
  private readonly byKey = new Map<string, Set<Tracked>>();
  private readonly drops: Record<DropReason, number> = {
    max_connections: 0,
    max_per_address: 0,
    first_request_timeout: 0,
  };
  private lastLog = 0;

  constructor(
    private readonly limits: ConnectionLimits,
    private readonly log?: (msg: string, meta?: Record<string, unknown>) => void,
  ) {}

  /** Sockets open right now. */
  get size(): number {
    return this.open.size;
  }

  /** Takes charge of a socket just accepted: admits it (making room when it can) or closes it. */
  admit(socket: Socket): void {
    if (socket.destroyed) return;
    const key = addressKey(socket.remoteAddress);
    const { maxConnections, maxPerAddress, firstRequestTimeoutMs } = this.limits;
    const mine = this.byKey.get(key);
    if (maxPerAddress > 0 && mine && mine.size >= maxPerAddress && !this.makeRoom(mine, 'max_per_address')) {
      this.refuse(socket, 'max_per_address', key);
      return;
    }
    if (
      maxConnections > 0 &&
      this.open.size >= maxConnections &&
      !this.makeRoom(this.open.values(), 'max_connections')
    ) {
      this.refuse(socket, 'max_connections', key);
      return;
    }
    const t: Tracked = { socket, key, state: 'new', since: Date.now() };
    if (firstRequestTimeoutMs > 0) {
      t.timer = setTimeout(() => {
        if (t.state !== 'new') return;
        this.drops.first_request_timeout++;
        socket.destroy();
      }, firstRequestTimeoutMs);
      t.timer.unref();
    }
    this.open.set(socket, t);
    let group = this.byKey.get(key);
    if (!group) this.byKey.set(key, (group = new Set()));
    group.add(t);
    socket.once('close', () => this.forget(t));
  }

  /** The socket is serving an admitted request: it is never dropped to make room. */
  busy(socket: Socket): void {
    this.enter(socket, 'busy');
  }

  /** The socket finished a response and waits for the next request (keep-alive). */
  idle(socket: Socket): void {
    this.enter(socket, 'idle');
  }

  /** Prometheus exposition lines for the server's /metrics. */
  render(): string {
    const drops = Object.entries(this.drops).map(
      ([reason, n]) => `dt_artifact_connections_dropped_total{reason="${reason}"} ${n}`,
    );
    return (
      [
        '# HELP dt_artifact_connections Open connections of the artifact server',
        '# TYPE dt_artifact_connections gauge',
        `dt_artifact_connections ${this.open.size}`,
        '# HELP dt_artifact_connections_dropped_total Connections the artifact server closed early (cap reached, no request in time)',
        '# TYPE dt_artifact_connections_dropped_total counter',
        ...drops,
      ].join('\n') + '\n'
    );
  }

  private enter(socket: Socket, state: State): void {
    const t = this.open.get(socket);
    if (!t) return;
    if (t.timer) clearTimeout(t.timer);
    t.timer = undefined;
    t.state = state;
    t.since = Date.now();
  }

  /** Closes the best candidate for eviction among `pool`; false when every one is busy. */
  private makeRoom(pool: Iterable<Tracked>, reason: DropReason): boolean {
    let victim: Tracked | undefined;
    for (const t of pool) {
      if (t.state === 'busy') continue;
      // A socket that never sent a request goes before an idle keep-alive one; older before newer.
      if (!victim || rank(t) < rank(victim) || (rank(t) === rank(victim) && t.since < victim.since)) victim = t;
    }
    if (!victim) return false;
    this.drops[reason]++;
    this.forget(victim);
    victim.socket.destroy();
    this.capReached(reason, victim.key, 'closed the oldest connection without a request in progress');
    return true;
  }

  private refuse(socket: Socket, reason: DropReason, key: string): void {
    this.drops[reason]++;
    socket.destroy();
    this.capReached(reason, key, 'every connection is serving a request; closed the new one');
  }

  private capReached(reason: DropReason, remote: string, action: string): void {
    const now = Date.now();
    if (now - this.lastLog < LOG_EVERY_MS) return;
    this.lastLog = now;
    this.log?.('artifact server connection cap reached', {
      reason,
      action,
      remote,
      open: this.open.size,
      ...this.limits,
    });
  }

  private forget(t: Tracked): void {
    if (this.open.get(t.socket) !== t) return;
    if (t.timer) clearTimeout(t.timer);
    this.open.delete(t.socket);
    const group = this.byKey.get(t.key);
    group?.delete(t);
    if (group?.size === 0) this.byKey.delete(t.key);
  }
}

function rank(t: Tracked): number {
  return t.state === 'new' ? 0 : 1;
}

/** The remote address a cap applies to: the address itself for IPv4, its /64 for IPv6. */
export function addressKey(address: string | undefined): string {
  if (!address) return '';
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1]!;
  if (!isIPv6(address)) return address;
  const plain = address.split('%')[0]!.toLowerCase();
  const [head = '', tail] = plain.split('::');
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups =
    tail === undefined ? h : [...h, ...Array<string>(Math.max(0, 8 - h.length - t.length)).fill('0'), ...t];
  return `${groups
    .slice(0, 4)
    .map((g) => g.replace(/^0+(?=.)/, ''))
    .join(':')}::/64`;
}
