/**
 * Test double of a real phone's adb daemon (adbd): the framing half. One {@link AdbConnection} per TCP
 * connection from the adb server; it answers CNXN without AUTH and multiplexes streams.
 *
 * Wire format (AOSP protocol.txt): a 24-byte little-endian header (command, arg0, arg1, payload length,
 * payload byte sum, command ^ 0xffffffff) and the payload. Flow control is one WRTE in flight per stream:
 * we wait for the host's OKAY before the next WRTE, and we acknowledge a host WRTE only when the service
 * asks for the next chunk, so a slow consumer (a 1 GiB install hashed to disk) holds the host back
 * instead of piling chunks up in memory.
 */
import type { Socket } from 'node:net';

/** Command words of the adb transport, as little-endian u32 of their ASCII names. */
export const Cmd = {
  CNXN: 0x4e584e43,
  AUTH: 0x48545541,
  OPEN: 0x4e45504f,
  OKAY: 0x59414b4f,
  CLSE: 0x45534c43,
  WRTE: 0x45545257,
} as const;

/** Protocol version that makes checksums optional; adb 29 speaks it. */
const VERSION = 0x01000001;
/** Largest payload we accept; the host's CNXN may lower what we send. */
const OUR_MAX_PAYLOAD = 256 * 1024;
const HEADER = 24;

/** Opens a service for a stream the host asked for; it owns the stream until it closes it. */
export type ServiceHandler = (service: string, stream: AdbStream) => void;

/** One end of an adb stream on the device side. */
export class AdbStream {
  private readonly queue: Buffer[] = [];
  private reader: ((b: Buffer | null) => void) | undefined;
  private ackOwed = false;
  private writeChain: Promise<void> = Promise.resolve();
  private okayWaiter: (() => void) | undefined;
  private closed = false;
  private readonly closeListeners: Array<() => void> = [];

  constructor(
    private readonly conn: AdbConnection,
    readonly localId: number,
    readonly remoteId: number,
  ) {}

  /** True once either side closed the stream or the connection dropped. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** Next chunk the host wrote, or null once the stream is closed; asking for it acknowledges the last one. */
  read(): Promise<Buffer | null> {
    this.ackIfOwed();
    const next = this.queue.shift();
    if (next) {
      this.ackOwed = true;
      return Promise.resolve(next);
    }
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve) => {
      this.reader = resolve;
    });
  }

  /** Sends bytes in payload-sized WRTEs, each after the host acknowledged the previous; false if closed. */
  write(data: Buffer | string): Promise<boolean> {
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    const run = this.writeChain.then(async () => {
      for (let off = 0; off < buf.length; off += this.conn.maxPayload) {
        if (this.closed) return false;
        const acked = new Promise<void>((resolve) => (this.okayWaiter = resolve));
        this.conn.send(Cmd.WRTE, this.localId, this.remoteId, buf.subarray(off, off + this.conn.maxPayload));
        await acked;
      }
      return !this.closed;
    });
    this.writeChain = run.then(() => undefined);
    return run;
  }

  /** Closes our end after pending writes went out; safe to call twice. */
  async close(): Promise<void> {
    await this.writeChain;
    if (this.closed) return;
    this.conn.send(Cmd.CLSE, this.localId, this.remoteId);
    this.markClosed();
  }

  /** Runs `fn` once when the stream closes for any reason (host CLSE, our close, TCP drop). */
  onClose(fn: () => void): void {
    if (this.closed) fn();
    else this.closeListeners.push(fn);
  }

  /** @internal host WRTE payload */
  deliver(data: Buffer): void {
    if (this.reader) {
      const r = this.reader;
      this.reader = undefined;
      this.ackOwed = true;
      r(data);
    } else this.queue.push(data);
  }

  /** @internal host OKAY for our last WRTE */
  acknowledged(): void {
    const w = this.okayWaiter;
    this.okayWaiter = undefined;
    w?.();
  }

  /** @internal */
  markClosed(): void {
    if (this.closed) return;
    this.closed = true;
    this.conn.forget(this.localId);
    this.reader?.(null);
    this.reader = undefined;
    this.acknowledged();
    for (const fn of this.closeListeners.splice(0)) fn();
  }

  private ackIfOwed(): void {
    if (!this.ackOwed) return;
    this.ackOwed = false;
    if (!this.closed) this.conn.send(Cmd.OKAY, this.localId, this.remoteId);
  }
}

/** The device side of one TCP connection from an adb server. */
export class AdbConnection {
  /** Payload size we may send, the smaller of ours and the host's. */
  maxPayload = 4096;
  private pending: Buffer = Buffer.alloc(0);
  private nextId = 1;
  private readonly streams = new Map<number, AdbStream>();

  constructor(
    private readonly socket: Socket,
    private readonly banner: () => string,
    private readonly open: ServiceHandler,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('close', () => this.dropAll());
    socket.on('error', () => socket.destroy());
  }

  /** Cuts the TCP connection, as pulling the cable would. */
  drop(): void {
    this.socket.destroy();
    this.dropAll();
  }

  /** @internal */
  send(cmd: number, arg0: number, arg1: number, payload: Buffer = Buffer.alloc(0)): void {
    if (this.socket.destroyed) return;
    const h = Buffer.alloc(HEADER);
    h.writeUInt32LE(cmd, 0);
    h.writeUInt32LE(arg0 >>> 0, 4);
    h.writeUInt32LE(arg1 >>> 0, 8);
    h.writeUInt32LE(payload.length, 12);
    h.writeUInt32LE(byteSum(payload), 16);
    h.writeUInt32LE((cmd ^ 0xffffffff) >>> 0, 20);
    this.socket.write(payload.length ? Buffer.concat([h, payload]) : h);
  }

  /** @internal */
  forget(localId: number): void {
    this.streams.delete(localId);
  }

  private onData(chunk: Buffer): void {
    this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    while (this.pending.length >= HEADER) {
      const len = this.pending.readUInt32LE(12);
      if (this.pending.length < HEADER + len) break;
      const cmd = this.pending.readUInt32LE(0);
      const arg0 = this.pending.readUInt32LE(4);
      const arg1 = this.pending.readUInt32LE(8);
      // Copy: the payload outlives this buffer when a service queues it.
      const payload = Buffer.from(this.pending.subarray(HEADER, HEADER + len));
      this.pending = this.pending.subarray(HEADER + len);
      this.handle(cmd, arg0, arg1, payload);
    }
  }

  private handle(cmd: number, arg0: number, arg1: number, payload: Buffer): void {
    switch (cmd) {
      case Cmd.CNXN:
        this.maxPayload = Math.min(arg1 || 4096, OUR_MAX_PAYLOAD);
        // No trailing NUL: adb 29 would drop the last feature of a NUL-terminated banner.
        this.send(Cmd.CNXN, VERSION, OUR_MAX_PAYLOAD, Buffer.from(this.banner()));
        return;
      case Cmd.OPEN: {
        const localId = this.nextId++;
        const stream = new AdbStream(this, localId, arg0);
        this.streams.set(localId, stream);
        this.send(Cmd.OKAY, localId, arg0);
        this.open(payload.toString('utf8').replace(/\0+$/, ''), stream);
        return;
      }
      case Cmd.OKAY:
        this.streams.get(arg1)?.acknowledged();
        return;
      case Cmd.WRTE: {
        const s = this.streams.get(arg1);
        if (s) s.deliver(payload);
        else this.send(Cmd.CLSE, 0, arg0);
        return;
      }
      case Cmd.CLSE:
        this.streams.get(arg1)?.markClosed();
        return;
      default:
        return;
    }
  }

  private dropAll(): void {
    for (const s of [...this.streams.values()]) s.markClosed();
  }
}

function byteSum(b: Buffer): number {
  let sum = 0;
  for (let i = 0; i < b.length; i++) sum += b[i] as number;
  return sum >>> 0;
}
