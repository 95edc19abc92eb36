/** Local processes' ports: is one free, does it answer, wait until it does. */
import net from 'node:net';

/**
 * True when a listener could bind host:port now (nothing else holds it). Unlike {@link canConnect},
 * this also catches a port held by a program that does not accept connections yet.
 */
export function portIsFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', (err: NodeJS.ErrnoException) => (err.code === 'EADDRINUSE' ? resolve(false) : reject(err)));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
}

/** True when something accepts TCP connections at host:port. */
export function canConnect(host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(timeoutMs, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

/** Waits until host:port accepts connections; throws with `what` in the message after the timeout. */
export async function waitForPort(
  host: string,
  port: number,
  timeoutMs: number,
  what: string,
  isDead?: () => string | undefined,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const dead = isDead?.();
    if (dead) throw new Error(`${what} exited before accepting connections on ${host}:${port}: ${dead}`);
    if (await canConnect(host, port)) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${what} did not accept connections on ${host}:${port} within ${timeoutMs} ms`);
}
