/**
 * Test double of a real phone: adbd's shell services and the mini `sh` behind them.
 *
 * Services (as adb 29 names them): `shell,v2,TERM=xterm,raw:<cmd>` / `shell,v2,raw:<cmd>` use the shell
 * protocol (packets of id byte, u32 LE length, data: 0 stdin, 1 stdout, 2 stderr, 3 exit, 4 close-stdin,
 * 5 window size); `shell:<cmd>` and `exec:<cmd>` are raw byte streams with stderr merged into stdout and
 * no exit status. When the host side goes away, the foreground command gets SIGHUP, as adbd sends it.
 */
import fs from 'node:fs';
import type { AdbStream } from './transport';
import { ByteReader } from './byte-reader';
import type { Command, Io, PhoneContext } from './io';
import { parseScript, ShellSyntaxError, type SimpleCommand } from './shell-parse';
import { COMMANDS } from './commands';

const ID_STDIN = 0;
const ID_STDOUT = 1;
const ID_STDERR = 2;
const ID_EXIT = 3;
const ID_CLOSE_STDIN = 4;
/** Stdin buffered ahead of a command that does not read it, before the host is held back. */
const STDIN_AHEAD = 1024 * 1024;

/** Serves one `shell…:` or `exec:` stream; `v2` selects the shell protocol. */
export async function serveShell(stream: AdbStream, command: string, v2: boolean, phone: PhoneContext): Promise<void> {
  const hangups = new Set<() => void>();
  let finished = false;
  stream.onClose(() => {
    if (finished) return;
    for (const fn of [...hangups]) fn();
  });
  const stdin = v2 ? v2Stdin(stream) : () => stream.read();
  const send = (id: number, data: string | Buffer): Promise<void> => {
    const body = typeof data === 'string' ? Buffer.from(data) : data;
    if (!body.length || stream.isClosed) return Promise.resolve();
    return stream.write(v2 ? packet(id, body) : body).then(() => undefined);
  };
  const io: Io = {
    phone,
    out: (t) => send(ID_STDOUT, t),
    err: (t) => send(ID_STDERR, t),
    stdin,
    onHangup: (fn) => {
      hangups.add(fn);
      return () => hangups.delete(fn);
    },
    env: {},
  };
  let code: number;
  if (command.trim() === '') {
    await io.err('/system/bin/sh: interactive shells are not supported by this fake phone\n');
    code = 1;
  } else code = await runScript(command, io);
  finished = true;
  if (v2) await stream.write(packet(ID_EXIT, Buffer.from([code & 0xff])));
  await stream.close();
}

/** Runs a command line; returns the status of the last command (or of `exit`). */
export async function runScript(src: string, io: Io): Promise<number> {
  let cmds: SimpleCommand[];
  try {
    cmds = parseScript(src);
  } catch (err) {
    if (!(err instanceof ShellSyntaxError)) throw err;
    await io.err(`/system/bin/sh: ${err.message}\n`);
    return 2;
  }
  let status = 0;
  let skip = false;
  let hungUp = false;
  const off = io.onHangup(() => (hungUp = true));
  try {
    for (const c of cmds) {
      if (hungUp) break;
      if (!skip) {
        if (c.then === '&') {
          void runSimple(c, background(io)).catch(() => undefined);
          status = 0;
        } else {
          const r = await runSimple(c, io);
          if (r.exit !== undefined) return r.exit;
          status = r.status;
        }
      }
      skip = (c.then === '&&' && status !== 0) || (c.then === '||' && status === 0);
    }
  } finally {
    off();
  }
  return status;
}

/** A background job: output discarded, no stdin, and the session's hang-up does not reach it. */
function background(io: Io): Io {
  return { ...io, out: async () => {}, err: async () => {}, stdin: async () => null, onHangup: () => () => {} };
}

async function runSimple(c: SimpleCommand, parent: Io): Promise<{ status: number; exit?: number }> {
  let io: Io = { ...parent, env: { ...parent.env, ...c.env } };
  try {
    io = redirect(io, c);
  } catch (err) {
    await parent.err(`/system/bin/sh: ${(err as Error).message}\n`);
    return { status: 1 };
  }
  let argv = c.argv;
  // `exec` and `nohup` only change how the process meets SIGHUP; the fake runs the command in place.
  while (argv[0] === 'exec' || argv[0] === 'nohup') {
    if (argv[0] === 'nohup') io = { ...io, onHangup: () => () => {} };
    argv = argv.slice(1);
  }
  const name = argv[0];
  if (name === undefined) return { status: 0 };
  if (name === 'exit') return { status: 0, exit: Number(argv[1] ?? 0) & 0xff };
  const cmd: Command | undefined = COMMANDS[name] ?? COMMANDS[name.replace(/^\/system\/bin\//, '')];
  if (!cmd) {
    await io.err(`/system/bin/sh: ${name}: inaccessible or not found\n`);
    return { status: 127 };
  }
  return { status: await cmd(argv, io) };
}

function redirect(io: Io, c: SimpleCommand): Io {
  let out = io.out;
  let err = io.err;
  let stdin = io.stdin;
  for (const r of c.redirects) {
    if (r.target === '&1') {
      err = out;
      continue;
    }
    if (r.fd === 0) {
      const file = io.phone.state.hostPath(r.target);
      if (!fs.existsSync(file)) throw new Error(`can't open ${r.target}: No such file or directory`);
      let done = false;
      stdin = async () => {
        if (done) return null;
        done = true;
        return fs.readFileSync(file);
      };
      continue;
    }
    const sink = fileSink(io, r.target, r.append);
    if (r.fd === 1 || r.fd === 'both') out = sink;
    if (r.fd === 2 || r.fd === 'both') err = sink;
  }
  return { ...io, out, err, stdin };
}

function fileSink(io: Io, target: string, append: boolean): Io['out'] {
  if (target === '/dev/null') return async () => {};
  if (!io.phone.state.writable(target)) throw new Error(`can't create ${target}: Permission denied`);
  const file = io.phone.state.hostPath(target);
  if (!append) fs.writeFileSync(file, '');
  return async (t) => fs.appendFileSync(file, t);
}

function packet(id: number, body: Buffer): Buffer {
  const h = Buffer.alloc(5);
  h[0] = id;
  h.writeUInt32LE(body.length, 1);
  return Buffer.concat([h, body]);
}

/** Demultiplexes shell-protocol packets from the host; only stdin data reaches the command. */
function v2Stdin(stream: AdbStream): () => Promise<Buffer | null> {
  const r = new ByteReader(stream);
  const queue: Array<Buffer | null> = [];
  let queued = 0;
  let waiter: (() => void) | undefined;
  let resume: (() => void) | undefined;
  const push = (b: Buffer | null): void => {
    queue.push(b);
    queued += b?.length ?? 0;
    waiter?.();
  };
  void (async () => {
    for (;;) {
      if (queued > STDIN_AHEAD) await new Promise<void>((res) => (resume = res));
      const head = await r.exact(5);
      if (!head) return push(null);
      const body = await r.exact(head.readUInt32LE(1));
      if (!body) return push(null);
      // Keep reading after close-stdin: the host may still send window sizes and waits for our OKAYs.
      if (head[0] === ID_STDIN) push(Buffer.from(body));
      else if (head[0] === ID_CLOSE_STDIN) push(null);
    }
  })();
  return async () => {
    while (!queue.length) await new Promise<void>((res) => (waiter = res));
    const b = queue.shift() as Buffer | null;
    if (b === null) queue.unshift(null);
    else queued -= b.length;
    const go = resume;
    resume = undefined;
    go?.();
    return b;
  };
}
