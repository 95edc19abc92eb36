/**
 * Test double of a real phone: `pm` and `cmd package`. Installs are hashed as they stream to the phone and
 * the bytes are dropped, so a 1 GiB install costs no memory and no disk.
 *
 * The fake cannot read an APK's manifest (test APKs are random bytes), so the package name comes from
 * `--pkg <name>` (a real `pm install` option), else from a `package="<name>"` marker in the first 64 KiB
 * of the bytes, else it is `com.fake.app_<first 8 hex of the sha256>`.
 */
import fs from 'node:fs';
import { createHash } from 'node:crypto';
import type { Command, Io } from './io';
import { appProcess, stopApp } from './processes';

/** Packages every phone has; listed, never removable. */
const SYSTEM_PACKAGES = ['android', 'com.android.settings', 'com.android.systemui', 'com.android.shell'];
const MARKER_WINDOW = 64 * 1024;
/** How long we wait for bytes beyond -S before calling the size right. */
const EXTRA_BYTES_GRACE_MS = 150;
/** A stalled install stream fails after this long without bytes. */
const STALL_MS = 5000;

/** `pm …`, also reached as `cmd package …`. */
export const pm: Command = async (argv, io) => {
  const [, sub, ...rest] = argv;
  const st = io.phone.state;
  switch (sub) {
    case 'list': {
      if (rest[0] !== 'packages') break;
      const filter = rest.slice(1).find((a) => !a.startsWith('-')) ?? '';
      const names = [...SYSTEM_PACKAGES, ...st.packages().map((p) => p.name)].filter((n) => n.includes(filter));
      await io.out(names.map((n) => `package:${n}\n`).join(''));
      return 0;
    }
    case 'path': {
      const rec = rest[0] ? st.pkg(rest[0]) : undefined;
      if (!rec) return 1;
      await io.out(`package:${apkPath(rec.name, rec.sha256)}\n`);
      return 0;
    }
    case 'uninstall': {
      const name = rest.filter((a) => !a.startsWith('-')).pop() ?? '';
      if (!st.uninstall(name)) {
        await io.out('Failure [DELETE_FAILED_INTERNAL_ERROR]\n');
        return 1;
      }
      stopApp(io.phone, name);
      await io.out('Success\n');
      return 0;
    }
    case 'clear': {
      const name = rest.filter((a) => !a.startsWith('-')).pop() ?? '';
      if (!st.pkg(name)) {
        await io.out('Failed\n');
        return 1;
      }
      stopApp(io.phone, name);
      await io.out('Success\n');
      return 0;
    }
    case 'install':
      return install(rest, io);
    case 'resolve-activity': {
      const name = rest.filter((a, i) => !a.startsWith('-') && !(rest[i - 1] ?? '').startsWith('-')).pop() ?? '';
      if (!st.pkg(name)) {
        await io.out('No activity found\n');
        return 1;
      }
      await io.out(
        `priority=0 preferredOrder=0 match=0x108000 specificIndex=-1 isDefault=false\n${name}/.MainActivity\n`,
      );
      return 0;
    }
    default:
      break;
  }
  await io.err(`Unknown command: ${sub ?? ''}\n`);
  return 1;
};

/** Where `pm path` says a package lives (stable per install). */
function apkPath(name: string, sha256: string): string {
  const b64 = (s: string): string => Buffer.from(s, 'hex').toString('base64url');
  return `/data/app/~~${b64(sha256.slice(0, 32))}==/${name}-${b64(sha256.slice(32))}==/base.apk`;
}

async function install(args: string[], io: Io): Promise<number> {
  let size: number | undefined;
  let pkgName: string | undefined;
  const files: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a === '-S') size = Number(args[++i]);
    else if (a === '--pkg') pkgName = args[++i];
    else if (['-i', '--user', '--install-location', '--originating-uri', '--referrer', '--abi'].includes(a)) i++;
    else if (!a.startsWith('-')) files.push(a);
  }
  if (size !== undefined) {
    if (!Number.isSafeInteger(size) || size < 0) {
      await io.err(`Error: invalid -S size ${args[args.indexOf('-S') + 1] ?? ''}\n`);
      return 1;
    }
    return installStream(size, pkgName, io);
  }
  const file = files[0];
  if (!file) {
    await io.err('Error: must either specify a package size or an APK file\n');
    return 1;
  }
  const host = io.phone.state.hostPath(file);
  if (!fs.existsSync(host) || !fs.statSync(host).isFile()) {
    await io.err(`Error: Unable to open file: ${file}\nConsider using a file under /data/local/tmp/\n`);
    await io.out(`Failure [INSTALL_FAILED_INVALID_APK: Can't open file: ${file}]\n`);
    return 1;
  }
  const h = new ApkDigest();
  for await (const chunk of fs.createReadStream(host)) h.update(chunk as Buffer);
  return finish(h, pkgName, io);
}

async function installStream(size: number, pkgName: string | undefined, io: Io): Promise<number> {
  const tooBig = size > io.phone.state.freeBytes();
  const h = new ApkDigest();
  let extra = 0;
  while (h.size < size) {
    const chunk = await withTimeout(io.stdin(), STALL_MS);
    if (chunk === 'timeout' || chunk === null) {
      await io.out(
        `Failure [INSTALL_FAILED_INVALID_APK: stream ended after ${h.size} of ${size} bytes (-S too large?)]\n`,
      );
      return 1;
    }
    const take = Math.min(chunk.length, size - h.size);
    if (!tooBig) h.update(chunk.subarray(0, take));
    else h.size += take;
    extra += chunk.length - take;
  }
  if (!extra) {
    const more = await withTimeout(io.stdin(), EXTRA_BYTES_GRACE_MS);
    if (more && more !== 'timeout') extra += more.length;
  }
  if (tooBig) {
    await io.out('Failure [INSTALL_FAILED_INSUFFICIENT_STORAGE]\n');
    return 1;
  }
  if (extra) {
    await io.out(
      `Failure [INSTALL_FAILED_INVALID_APK: ${extra}+ bytes beyond the announced size ${size} (-S too small?)]\n`,
    );
    return 1;
  }
  return finish(h, pkgName, io);
}

async function finish(h: ApkDigest, pkgName: string | undefined, io: Io): Promise<number> {
  const sha256 = h.digest();
  const name = pkgName ?? h.marker() ?? `com.fake.app_${sha256.slice(0, 8)}`;
  const st = io.phone.state;
  const old = st.pkg(name);
  if (h.size - (old?.size ?? 0) > st.freeBytes()) {
    await io.out('Failure [INSTALL_FAILED_INSUFFICIENT_STORAGE]\n');
    return 1;
  }
  stopApp(io.phone, name);
  st.install({ name, sha256, size: h.size, versionCode: st.scenario(name).versionCode ?? 1 });
  await io.out('Success\n');
  return 0;
}

/** sha256 and size of the bytes seen, plus the head kept for the package-name marker. */
class ApkDigest {
  size = 0;
  private readonly hash = createHash('sha256');
  private head: Buffer[] = [];
  private headLen = 0;

  update(b: Buffer): void {
    this.hash.update(b);
    this.size += b.length;
    if (this.headLen < MARKER_WINDOW) {
      const part = Buffer.from(b.subarray(0, MARKER_WINDOW - this.headLen));
      this.head.push(part);
      this.headLen += part.length;
    }
  }

  digest(): string {
    return this.hash.digest('hex');
  }

  marker(): string | undefined {
    const m = /package="?([A-Za-z][\w]*(?:\.[A-Za-z][\w]*)+)/.exec(Buffer.concat(this.head).toString('latin1'));
    this.head = [];
    return m?.[1];
  }
}

async function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), ms)));
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

/** `am start|force-stop|kill`. */
export const am: Command = async (argv, io) => {
  const [, sub, ...rest] = argv;
  const st = io.phone.state;
  if (sub === 'force-stop' || sub === 'kill') {
    stopApp(io.phone, rest.filter((a) => !a.startsWith('-')).pop() ?? '');
    return 0;
  }
  if (sub !== 'start' && sub !== 'start-activity') {
    await io.err(`Error: unknown command '${sub ?? ''}'\n`);
    return 1;
  }
  let wait = false;
  let component: string | undefined;
  const intent: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i] as string;
    if (a === '-W') wait = true;
    else if (a === '-n') component = rest[++i];
    else if (a === '-a') intent.push(`act=${rest[++i] ?? ''}`);
    else if (a === '-c') intent.push(`cat=[${rest[++i] ?? ''}]`);
    else if (a === '--user' || a === '-S' || a === '--activity-clear-task') i += a === '--user' ? 1 : 0;
  }
  if (!component) {
    await io.err('Error: Intent does not match any activities\n');
    return 1;
  }
  intent.push(`cmp=${component}`);
  await io.out(`Starting: Intent { ${intent.join(' ')} }\n`);
  const [pkg = '', act = ''] = component.split('/');
  if (!st.pkg(pkg)) {
    const cls = act.startsWith('.') ? pkg + act : act;
    await io.err(`Error type 3\nError: Activity class {${pkg}/${cls}} does not exist.\n`);
    return 1;
  }
  const { cold } = appProcess(io.phone, pkg);
  if (!wait) return 0;
  const total = cold ? 350 + Math.floor(Math.random() * 200) : 80 + Math.floor(Math.random() * 40);
  await io.out(
    `Status: ok\nLaunchState: ${cold ? 'COLD' : 'HOT'}\nActivity: ${component}\nTotalTime: ${total}\nWaitTime: ${total + 4}\nComplete\n`,
  );
  return 0;
};
