/**
 * Test double of a real phone: exact-length reads over an adb stream, for the length-prefixed protocols
 * (sync, shell v2) whose records do not line up with WRTE payloads.
 */
import type { AdbStream } from './transport';

/** Reads exact byte counts from a stream; each WRTE is acknowledged only when its bytes are needed. */
export class ByteReader {
  private buf: Buffer = Buffer.alloc(0);

  constructor(private readonly stream: AdbStream) {}

  /** Exactly n bytes, or null if the stream closed first. */
  async exact(n: number): Promise<Buffer | null> {
    while (this.buf.length < n) {
      const chunk = await this.stream.read();
      if (!chunk) return null;
      this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Whatever is buffered, else the next chunk (at most `max` bytes); null at the end. */
  async some(max: number): Promise<Buffer | null> {
    if (!this.buf.length) {
      const chunk = await this.stream.read();
      if (!chunk) return null;
      this.buf = chunk;
    }
    const out = this.buf.subarray(0, max);
    this.buf = this.buf.subarray(out.length);
    return out;
  }

  /** Bytes already received and not yet consumed. */
  get buffered(): number {
    return this.buf.length;
  }
}
