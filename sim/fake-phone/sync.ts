/**
 * Test double of a real phone: the `sync:` service behind `adb push` and `adb pull` (AOSP SYNC.TXT).
 * Requests are a 4-byte id, a u32 length and that many bytes; the files live in the phone's state folder.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { AdbStream } from './transport';
import { ByteReader } from './byte-reader';
import type { PhoneState } from './state';

/** adbd never sends more than this per DATA record, and adb refuses bigger ones. */
const SYNC_DATA_MAX = 64 * 1024;
const ENOENT = 2;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;

/** Serves one sync session until QUIT or the host closes the stream. */
export async function serveSync(stream: AdbStream, phone: PhoneState): Promise<void> {
  const r = new ByteReader(stream);
  for (;;) {
    const head = await r.exact(8);
    if (!head) return;
    const id = head.toString('latin1', 0, 4);
    const len = head.readUInt32LE(4);
    if (id === 'QUIT') break;
    const arg = len ? await r.exact(len) : Buffer.alloc(0);
    if (!arg) return;
    const target = arg.toString('utf8');
    if (id === 'STAT') await stream.write(statV1(phone, target));
    else if (id === 'STA2' || id === 'LST2') await stream.write(statV2(id, phone, target));
    else if (id === 'LIST') await stream.write(list(phone, target));
    else if (id === 'SEND') {
      if (!(await receiveFile(r, stream, phone, target))) return;
    } else if (id === 'RECV') await sendFile(stream, phone, target);
    else {
      await stream.write(fail(`unknown sync command ${JSON.stringify(id)}`));
      break;
    }
  }
  await stream.close();
}

function lstat(phone: PhoneState, p: string): fs.Stats | undefined {
  try {
    return fs.statSync(phone.hostPath(p));
  } catch {
    return undefined;
  }
}

function modeOf(st: fs.Stats): number {
  return st.isDirectory() ? S_IFDIR | 0o771 : S_IFREG | 0o660;
}

function statV1(phone: PhoneState, p: string): Buffer {
  const st = lstat(phone, p);
  const b = Buffer.alloc(16);
  b.write('STAT', 0, 'latin1');
  if (st) {
    b.writeUInt32LE(modeOf(st), 4);
    b.writeUInt32LE(Math.min(st.size, 0xffffffff), 8);
    b.writeUInt32LE(Math.floor(st.mtimeMs / 1000), 12);
  }
  return b;
}

function statV2(id: string, phone: PhoneState, p: string): Buffer {
  const st = lstat(phone, p);
  const b = Buffer.alloc(72);
  b.write(id, 0, 'latin1');
  if (!st) {
    b.writeUInt32LE(ENOENT, 4);
    return b;
  }
  b.writeBigUInt64LE(BigInt(st.ino), 16);
  b.writeUInt32LE(modeOf(st), 24);
  b.writeUInt32LE(1, 28);
  b.writeUInt32LE(2000, 32); // shell uid
  b.writeUInt32LE(1015, 36); // sdcard_rw gid
  b.writeBigUInt64LE(BigInt(st.size), 40);
  const secs = BigInt(Math.floor(st.mtimeMs / 1000));
  b.writeBigInt64LE(secs, 48);
  b.writeBigInt64LE(secs, 56);
  b.writeBigInt64LE(secs, 64);
  return b;
}

function list(phone: PhoneState, p: string): Buffer {
  const dir = phone.hostPath(p);
  const names = fs.existsSync(dir) && fs.statSync(dir).isDirectory() ? fs.readdirSync(dir) : [];
  const parts: Buffer[] = [];
  for (const name of ['.', '..', ...names]) {
    const st = fs.statSync(path.join(dir, name === '..' ? '.' : name));
    const n = Buffer.from(name);
    const h = Buffer.alloc(20);
    h.write('DENT', 0, 'latin1');
    h.writeUInt32LE(modeOf(st), 4);
    h.writeUInt32LE(Math.min(st.size, 0xffffffff), 8);
    h.writeUInt32LE(Math.floor(st.mtimeMs / 1000), 12);
    h.writeUInt32LE(n.length, 16);
    parts.push(h, n);
  }
  const done = Buffer.alloc(20);
  done.write('DONE', 0, 'latin1');
  parts.push(done);
  return Buffer.concat(parts);
}

function fail(msg: string): Buffer {
  const m = Buffer.from(msg);
  const h = Buffer.alloc(8);
  h.write('FAIL', 0, 'latin1');
  h.writeUInt32LE(m.length, 4);
  return Buffer.concat([h, m]);
}

function okay(): Buffer {
  const b = Buffer.alloc(8);
  b.write('OKAY', 0, 'latin1');
  return b;
}

/** SEND: "path,mode" then DATA records and a DONE carrying the mtime. False if the stream ended. */
async function receiveFile(r: ByteReader, stream: AdbStream, phone: PhoneState, spec: string): Promise<boolean> {
  const comma = spec.lastIndexOf(',');
  const phonePath = comma > 0 ? spec.slice(0, comma) : spec;
  const file = phone.hostPath(phonePath);
  let error: string | undefined;
  let fh: fs.promises.FileHandle | undefined;
  if (!phone.writable(phonePath)) error = `couldn't create file: Permission denied`;
  else {
    try {
      // adb 29 relies on the daemon creating missing parents (the fixed_push_mkdir feature).
      await fs.promises.mkdir(path.dirname(file), { recursive: true });
      fh = await fs.promises.open(`${file}.partial`, 'w');
    } catch (err) {
      error = `couldn't create file: ${(err as Error).message}`;
    }
  }
  try {
    for (;;) {
      const head = await r.exact(8);
      if (!head) return false;
      const id = head.toString('latin1', 0, 4);
      const n = head.readUInt32LE(4);
      if (id === 'DONE') break;
      if (id !== 'DATA' || n > SYNC_DATA_MAX) {
        await stream.write(fail(`invalid data message ${JSON.stringify(id)}`));
        return false;
      }
      let left = n;
      while (left > 0) {
        const part = await r.some(left);
        if (!part) return false;
        left -= part.length;
        if (fh) await fh.write(part);
      }
    }
  } finally {
    await fh?.close();
  }
  if (error) await stream.write(fail(error));
  else {
    await fs.promises.rename(`${file}.partial`, file);
    await stream.write(okay());
  }
  return true;
}

/** RECV: the file in DATA records, then DONE; FAIL when it cannot be read. */
async function sendFile(stream: AdbStream, phone: PhoneState, phonePath: string): Promise<void> {
  let fh: fs.promises.FileHandle;
  try {
    fh = await fs.promises.open(phone.hostPath(phonePath), 'r');
    if ((await fh.stat()).isDirectory()) {
      await fh.close();
      throw new Error('Is a directory');
    }
  } catch (err) {
    const msg = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'No such file or directory' : (err as Error).message;
    await stream.write(fail(msg));
    return;
  }
  try {
    const buf = Buffer.alloc(SYNC_DATA_MAX + 8);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 8, SYNC_DATA_MAX);
      if (!bytesRead) break;
      buf.write('DATA', 0, 'latin1');
      buf.writeUInt32LE(bytesRead, 4);
      if (!(await stream.write(Buffer.from(buf.subarray(0, 8 + bytesRead))))) return;
    }
  } finally {
    await fh.close();
  }
  await stream.write(Buffer.from('DONE\0\0\0\0', 'latin1'));
}
