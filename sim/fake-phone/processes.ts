/**
 * Test double of a real phone: its process table as `ps`, `pidof` and `kill` show it, and the app
 * processes that `am start` creates.
 */
import type { Command, Io, PhoneContext } from './io';
import type { LiveProcess, Signal } from './state';

/** Processes every phone has; listed by ps but never killable by the shell user. */
const SYSTEM: Array<{ pid: number; name: string; args: string; user: string }> = [
  { pid: 1, name: 'init', args: '/system/bin/init second_stage', user: 'root' },
  { pid: 412, name: 'logd', args: '/system/bin/logd', user: 'logd' },
  { pid: 655, name: 'zygote64', args: 'zygote64', user: 'root' },
  { pid: 890, name: 'adbd', args: '/apex/com.android.adbd/bin/adbd --root_seclabel=u:r:su:s0', user: 'shell' },
  { pid: 1204, name: 'system_server', args: 'system_server', user: 'system' },
  { pid: 1533, name: 'com.android.systemui', args: 'com.android.systemui', user: 'u0_a170' },
];

/** The running process of an app, started if needed (as the first activity launch would). */
export function appProcess(phone: PhoneContext, pkg: string): { proc: LiveProcess; cold: boolean } {
  const running = phone.state.processes().find((p) => p.name === pkg);
  if (running) return { proc: running, cold: false };
  const proc = phone.state.spawn(pkg, pkg, (sig) => {
    // Apps keep running on SIGHUP: they are not children of the shell. STOP and CONT do not end them.
    if (sig === 'TERM' || sig === 'KILL') phone.state.exit(proc.pid);
  });
  return { proc, cold: true };
}

/** Ends every process of a package (force-stop, uninstall, a crash). */
export function stopApp(phone: PhoneContext, pkg: string): void {
  for (const p of phone.state.processes()) if (p.name === pkg) phone.state.exit(p.pid);
}

function all(phone: PhoneContext): Array<{ pid: number; name: string; args: string; user: string }> {
  return [
    ...SYSTEM,
    ...phone.state.processes().map((p) => ({ pid: p.pid, name: p.name, args: p.args, user: 'u0_a200' })),
  ];
}

/** `pidof <name>…` */
export const pidof: Command = async (argv, io) => {
  const names = new Set(argv.slice(1));
  const pids = all(io.phone)
    .filter((p) => names.has(p.name))
    .map((p) => p.pid)
    .reverse();
  if (!pids.length) return 1;
  await io.out(`${pids.join(' ')}\n`);
  return 0;
};

/** `ps [-A] [-o PID,NAME,ARGS,…]` in toybox's column layout. */
export const ps: Command = async (argv, io) => {
  const o = argv.indexOf('-o');
  const procs = all(io.phone);
  if (o > 0) {
    const fields = (argv[o + 1] ?? 'PID,NAME').split(',').map((f) => f.toUpperCase());
    const cell = (p: (typeof procs)[number], f: string): string =>
      f === 'PID'
        ? String(p.pid)
        : f === 'NAME'
          ? p.name
          : f === 'ARGS' || f === 'CMDLINE'
            ? p.args
            : f === 'USER'
              ? p.user
              : '?';
    const widths: Record<string, number> = { PID: 5, USER: 10, NAME: 27 };
    const line = (cells: string[]): string =>
      cells
        .map((c, i) => {
          const f = fields[i] as string;
          if (i === cells.length - 1) return c;
          return f === 'PID' ? c.padStart(widths.PID as number) : c.padEnd(widths[f] ?? 10);
        })
        .join(' ');
    await io.out([line(fields), ...procs.map((p) => line(fields.map((f) => cell(p, f))))].join('\n') + '\n');
    return 0;
  }
  const head = 'USER            PID   PPID        VSZ    RSS WCHAN            ADDR S NAME';
  const rows = procs.map(
    (p) =>
      `${p.user.padEnd(12)} ${String(p.pid).padStart(6)} ${String(p.pid === 1 ? 0 : 655).padStart(6)} ${'14562012'.padStart(10)} ${'98304'.padStart(6)} do_epoll_wait       0 S ${p.name}`,
  );
  await io.out([head, ...rows].join('\n') + '\n');
  return 0;
};

const SIGNALS: Record<string, Signal | '0'> = {
  '0': '0',
  '18': 'CONT',
  CONT: 'CONT',
  '19': 'STOP',
  STOP: 'STOP',
  '1': 'HUP',
  HUP: 'HUP',
  '9': 'KILL',
  KILL: 'KILL',
  '15': 'TERM',
  TERM: 'TERM',
};

/** `kill [-9|-15|-s SIG] <pid>…`; exits 1 if any pid was not signalled. */
export const kill: Command = async (argv, io) => {
  let sig: Signal | '0' = 'TERM';
  const pids: string[] = [];
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '-s' || a === '-n') sig = SIGNALS[(argv[++i] ?? '').replace(/^SIG/, '')] ?? sig;
    else if (a.startsWith('-')) sig = SIGNALS[a.slice(1).replace(/^SIG/, '')] ?? sig;
    else pids.push(a);
  }
  let status = 0;
  for (const a of pids) {
    const pid = Number(a);
    const proc = io.phone.state.process(pid);
    // Signal 0 only asks whether the process exists.
    if (proc) {
      if (sig !== '0') proc.signal(sig);
    } else {
      status = 1;
      const system = SYSTEM.some((p) => p.pid === pid);
      await io.err(`kill: pid ${a}: ${system ? 'Operation not permitted' : 'No such process'}\n`);
    }
  }
  return status;
};

/** Exit status of a process ended by a signal, as sh reports it. */
export function signalStatus(sig: 'HUP' | 'TERM' | 'KILL'): number {
  return 128 + (sig === 'HUP' ? 1 : sig === 'KILL' ? 9 : 15);
}

/** For engines: true while the process is in the table. */
export function alive(io: Io, pid: number): boolean {
  return io.phone.state.process(pid) !== undefined;
}
