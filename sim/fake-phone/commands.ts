/**
 * Test double of a real phone: the builtins of its mini shell, named as on the phone (toybox and the
 * framework's `cmd` tools), with their output formats and exit statuses.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import type { Command, Io } from './io';
import type { Namespace } from './state';
import { kill, pidof, ps } from './processes';
import { am, pm } from './package-manager';
import { monkey } from './engines';
import { appProcessCommand } from './fastbot';

const noSuchFile = (cmd: string, p: string): string => `${cmd}: ${p}: No such file or directory\n`;

const getprop: Command = async (argv, io) => {
  const key = argv[1];
  if (key !== undefined) {
    await io.out(`${io.phone.props[key] ?? argv[2] ?? ''}\n`);
    return 0;
  }
  const lines = Object.keys(io.phone.props)
    .sort()
    .map((k) => `[${k}]: [${io.phone.props[k]}]\n`);
  await io.out(lines.join(''));
  return 0;
};

const cat: Command = async (argv, io) => {
  if (argv.length === 1) {
    for (let c = await io.stdin(); c; c = await io.stdin()) await io.out(c);
    return 0;
  }
  let status = 0;
  for (const p of argv.slice(1)) {
    const f = io.phone.state.hostPath(p);
    if (!fs.existsSync(f)) {
      await io.err(noSuchFile('cat', p));
      status = 1;
    } else if (fs.statSync(f).isDirectory()) {
      await io.err(`cat: ${p}: Is a directory\n`);
      status = 1;
    } else for await (const chunk of fs.createReadStream(f)) await io.out(chunk as Buffer);
  }
  return status;
};

const rm: Command = async (argv, io) => {
  const flags = argv.filter((a) => a.startsWith('-')).join('');
  const force = flags.includes('f');
  const recursive = /r|R/.test(flags);
  let status = 0;
  for (const p of argv.slice(1).filter((a) => !a.startsWith('-'))) {
    const f = io.phone.state.hostPath(p);
    if (!fs.existsSync(f)) {
      if (!force) {
        await io.err(noSuchFile('rm', p));
        status = 1;
      }
    } else if (!io.phone.state.writable(p)) {
      await io.err(`rm: ${p}: Permission denied\n`);
      status = 1;
    } else if (fs.statSync(f).isDirectory() && !recursive) {
      await io.err(`rm: ${p}: Is a directory\n`);
      status = 1;
    } else fs.rmSync(f, { recursive: true, force: true });
  }
  return status;
};

const mkdir: Command = async (argv, io) => {
  const parents = argv.includes('-p');
  let status = 0;
  for (const p of argv.slice(1).filter((a) => !a.startsWith('-'))) {
    const f = io.phone.state.hostPath(p);
    if (!io.phone.state.writable(p)) {
      if (parents && fs.existsSync(f)) continue;
      await io.err(`mkdir: '${p}': Permission denied\n`);
      status = 1;
    } else if (fs.existsSync(f) && !parents) {
      await io.err(`mkdir: '${p}': File exists\n`);
      status = 1;
    } else fs.mkdirSync(f, { recursive: true });
  }
  return status;
};

const ls: Command = async (argv, io) => {
  const long = argv.some((a) => /^-\w*l/.test(a));
  const targets = argv.slice(1).filter((a) => !a.startsWith('-'));
  let status = 0;
  for (const p of targets.length ? targets : ['/']) {
    const f = io.phone.state.hostPath(p);
    if (!fs.existsSync(f)) {
      await io.err(`ls: ${p}: No such file or directory\n`);
      status = 1;
      continue;
    }
    const st = fs.statSync(f);
    const names = st.isDirectory() ? fs.readdirSync(f).sort() : [p];
    const line = (n: string): string => {
      if (!long) return n;
      const s = fs.statSync(st.isDirectory() ? path.join(f, n) : f);
      const mode = s.isDirectory() ? 'drwxrwx--x' : '-rw-rw----';
      const date = new Date(s.mtimeMs).toISOString().slice(0, 16).replace('T', ' ');
      return `${mode} 2 shell sdcard_rw ${String(s.size).padStart(8)} ${date} ${n}`;
    };
    await io.out(names.map((n) => `${line(n)}\n`).join(''));
  }
  return status;
};

const sha256sum: Command = async (argv, io) => {
  let status = 0;
  for (const p of argv.slice(1).filter((a) => !a.startsWith('-'))) {
    const f = io.phone.state.hostPath(p);
    if (!fs.existsSync(f) || fs.statSync(f).isDirectory()) {
      await io.err(noSuchFile('sha256sum', p));
      status = 1;
      continue;
    }
    const h = createHash('sha256');
    for await (const chunk of fs.createReadStream(f)) h.update(chunk as Buffer);
    await io.out(`${h.digest('hex')}  ${p}\n`);
  }
  return status;
};

const df: Command = async (argv, io) => {
  const free = Math.floor(io.phone.state.freeBytes() / 1024);
  const used = 4 * 1024 * 1024;
  const size = free + used;
  const pct = Math.ceil((used * 100) / size);
  const mounts = argv.slice(1).filter((a) => !a.startsWith('-'));
  const row = (m: string): string =>
    `/dev/block/dm-46 ${String(size).padStart(10)} ${String(used).padStart(8)} ${String(free).padStart(9)} ${String(pct).padStart(3)}% ${m}`;
  const rows = (mounts.length ? mounts : ['/data']).map((m) =>
    row(m.startsWith('/sdcard') ? '/storage/emulated' : '/data'),
  );
  await io.out(`Filesystem        1K-blocks     Used Available Use% Mounted on\n${rows.join('\n')}\n`);
  return 0;
};

const NAMESPACES = new Set(['system', 'secure', 'global']);

const settings: Command = async (argv, io) => {
  const [, verb, ns = '', key = '', ...value] = argv[1] === '--user' ? [argv[0] ?? '', ...argv.slice(3)] : argv;
  if (!NAMESPACES.has(ns)) {
    await io.err(`Invalid namespace '${ns}'\n`);
    return 1;
  }
  const table = ns as Namespace;
  if (verb === 'get') {
    await io.out(`${io.phone.state.getSetting(table, key) ?? 'null'}\n`);
    return 0;
  }
  if (verb === 'put' && value.length) {
    io.phone.state.putSetting(table, key, value[0] as string);
    return 0;
  }
  await io.err('Usage: settings [--user <USER_ID>] get|put|list NAMESPACE KEY [VALUE]\n');
  return 1;
};

const ime: Command = async (argv, io) => {
  const [, verb, id = ''] = argv;
  if (verb === 'set' && id.includes('/')) {
    io.phone.state.putSetting('secure', 'default_input_method', id);
    await io.out(`Input method ${id} selected for user #0\n`);
    return 0;
  }
  if (verb === 'enable' && id.includes('/')) {
    await io.out(`Input method ${id}: now enabled for user #0\n`);
    return 0;
  }
  await io.err(`Unknown input method ${id} cannot be selected for user #0\n`);
  return 1;
};

const svc: Command = async (argv, io) => {
  if (argv[1] === 'wifi' && (argv[2] === 'enable' || argv[2] === 'disable')) {
    io.phone.state.putSetting('global', 'wifi_on', argv[2] === 'enable' ? '1' : '0');
    return 0;
  }
  await io.err(`Unknown command ${argv.slice(1).join(' ')}\n`);
  return 1;
};

const cmd: Command = async (argv, io) => {
  const service = argv[1];
  if (service === 'package') return pm(['pm', ...argv.slice(2)], io);
  if (service === 'activity') return am(['am', ...argv.slice(2)], io);
  if (service === 'connectivity' && argv[2] === 'airplane-mode') {
    const mode = argv[3];
    if (mode === 'enable' || mode === 'disable') {
      io.phone.state.putSetting('global', 'airplane_mode_on', mode === 'enable' ? '1' : '0');
      return 0;
    }
    await io.out(`${io.phone.state.getSetting('global', 'airplane_mode_on') === '1' ? 'enabled' : 'disabled'}\n`);
    return 0;
  }
  await io.err(`cmd: Can't find service: ${service ?? ''}\n`);
  return 20;
};

const echo: Command = async (argv, io) => {
  const noNewline = argv[1] === '-n';
  await io.out(argv.slice(noNewline ? 2 : 1).join(' ') + (noNewline ? '' : '\n'));
  return 0;
};

const id: Command = async (_argv, io: Io) => {
  await io.out(
    'uid=2000(shell) gid=2000(shell) groups=2000(shell),1004(input),1007(log),1011(adb),1015(sdcard_rw),1028(sdcard_r),3003(inet),3009(readproc) context=u:r:shell:s0\n',
  );
  return 0;
};

const sleepCmd: Command = async (argv) => {
  await new Promise((resolve) => setTimeout(resolve, Number(argv[1] ?? 0) * 1000));
  return 0;
};

/** Every command the fake phone knows, by name. */
export const COMMANDS: Record<string, Command> = {
  getprop,
  echo,
  cat,
  rm,
  mkdir,
  ls,
  sha256sum,
  df,
  true: () => 0,
  false: () => 1,
  id,
  sleep: sleepCmd,
  pm,
  cmd,
  am,
  settings,
  ime,
  svc,
  pidof,
  ps,
  kill,
  monkey,
  app_process: appProcessCommand,
};
