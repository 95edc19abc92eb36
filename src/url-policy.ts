/**
 * Where the worker may connect: APK origins, device agents and report sinks all come from task
 * input or configuration, so a hostile task could aim the worker at a cloud metadata service or at
 * an internal system on the worker's own network (server-side request forgery).
 *
 * The rules, applied to every address a host name resolves to, on every connection (redirect hops
 * included, since each new origin opens a new connection):
 * - only http and https;
 * - link-local, cloud metadata, unspecified, multicast and reserved addresses: always refused;
 * - private (RFC 1918, CGNAT, unique-local IPv6) and loopback addresses: refused unless the host
 *   name, the address or its network is on the allow-list (`DT_ALLOWED_HOSTS`);
 * - public addresses: allowed.
 * The connector resolves the name itself, checks every address, then connects to a checked
 * address, so a DNS answer that changes between check and use (rebinding) gains nothing.
 */
import { lookup as dnsLookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { buildConnector, interceptors, type Dispatcher } from 'undici';
import { TraversalError } from './errors';

/** How a host name is resolved; injectable so tests can make a name resolve anywhere. */
export type LookupFn = (hostname: string) => Promise<{ address: string; family: number }[]>;

/** Classes of address, from the most to the least dangerous. */
export type AddressClass = 'metadata' | 'link-local' | 'unspecified' | 'reserved' | 'loopback' | 'private' | 'public';

/** Classes that no allow-list can open. */
const NEVER_ALLOWED: ReadonlySet<AddressClass> = new Set(['metadata', 'link-local', 'unspecified', 'reserved']);

/** Host names of metadata services; refused before any DNS lookup. */
const METADATA_NAMES = new Set([
  'metadata',
  'metadata.google.internal',
  'metadata.goog',
  'metadata.azure.internal',
  'instance-data',
  'instance-data.ec2.internal',
]);

/** A connection or URL refused by the policy. Permanent: retrying reaches the same address. */
export class UrlRefusedError extends TraversalError {
  readonly code = 'UrlRefused';
  readonly nonRetryable = true;
  constructor(
    readonly target: string,
    readonly reason: string,
  ) {
    super(`refused ${target}: ${reason}`);
    this.details = { target, reason };
  }
}

/** The same refusal, attributed to what the caller was doing (an APK URL, an agent, a sink); redirects keep their hop. */
export function refusedFor(what: string, err: UrlRefusedError): UrlRefusedError {
  return new UrlRefusedError(what, err.target.startsWith('redirect') ? `${err.target}: ${err.reason}` : err.reason);
}

interface Cidr {
  v6: boolean;
  base: bigint;
  bits: number;
}

function parseIPv4(text: string): bigint | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  let n = 0n;
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p) || Number(p) > 255) return undefined;
    n = (n << 8n) | BigInt(Number(p));
  }
  return n;
}

function parseIPv6(text: string): bigint | undefined {
  let s = text.replace(/^\[|\]$/g, '');
  const zone = s.indexOf('%');
  if (zone >= 0) s = s.slice(0, zone);
  if (isIP(s) !== 6) return undefined;
  // An embedded IPv4 tail (::ffff:1.2.3.4) becomes two hex groups.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (v4) {
    const n = parseIPv4(v4[1]!);
    if (n === undefined) return undefined;
    s = s.slice(0, -v4[1]!.length) + `${(n >> 16n).toString(16)}:${(n & 0xffffn).toString(16)}`;
  }
  const [head, tail] = s.includes('::') ? (s.split('::') as [string, string]) : [s, undefined];
  const h = head ? head.split(':') : [];
  const t = tail !== undefined && tail !== '' ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  if (groups.length !== 8) return undefined;
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g || '0', 16)), 0n);
}

/** Parses "10.0.0.0/8", "fd00::/8" or a single address into a range. */
function parseCidr(text: string): Cidr | undefined {
  const [addr, prefix, extra] = text.split('/');
  if (addr === undefined || extra !== undefined) return undefined;
  const v4 = parseIPv4(addr);
  const v6 = v4 === undefined ? parseIPv6(addr) : undefined;
  if (v4 === undefined && v6 === undefined) return undefined;
  const max = v4 !== undefined ? 32 : 128;
  if (prefix !== undefined && !/^\d{1,3}$/.test(prefix)) return undefined;
  const bits = prefix === undefined ? max : Number(prefix);
  if (bits > max) return undefined;
  const value = (v4 ?? v6)!;
  const shift = BigInt(max - bits);
  return { v6: v4 === undefined, base: (value >> shift) << shift, bits };
}

function inCidr(c: Cidr, v6: boolean, value: bigint): boolean {
  if (c.v6 !== v6) return false;
  const shift = BigInt((v6 ? 128 : 32) - c.bits);
  return value >> shift === c.base >> shift;
}

const cidrs = (list: string[]) => list.map((t) => parseCidr(t)!);
const V4_CLASSES: [AddressClass, Cidr[]][] = [
  // AWS/GCP/Azure/OpenStack metadata, AWS ECS task metadata, Alibaba metadata, Azure wire server.
  ['metadata', cidrs(['169.254.169.254/32', '169.254.170.2/32', '100.100.100.200/32', '168.63.129.16/32'])],
  ['link-local', cidrs(['169.254.0.0/16'])],
  // 0.0.0.0/8 reaches the local host on Linux.
  ['unspecified', cidrs(['0.0.0.0/8'])],
  ['reserved', cidrs(['224.0.0.0/4', '240.0.0.0/4'])],
  ['loopback', cidrs(['127.0.0.0/8'])],
  [
    'private',
    cidrs(['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10', '198.18.0.0/15', '192.0.0.0/24']),
  ],
];
const V6_CLASSES: [AddressClass, Cidr[]][] = [
  ['metadata', cidrs(['fd00:ec2::254/128'])],
  ['link-local', cidrs(['fe80::/10'])],
  ['unspecified', cidrs(['::/128'])],
  ['reserved', cidrs(['ff00::/8'])],
  ['loopback', cidrs(['::1/128'])],
  ['private', cidrs(['fc00::/7', 'fec0::/10'])],
];

/**
 * The IPv4 address hidden in an IPv6 one (mapped ::ffff:a.b.c.d, compatible ::a.b.c.d, NAT64
 * 64:ff9b::/96, 6to4 2002::/16), which is where the packet really goes.
 */
function embeddedIPv4(v6: bigint): bigint | undefined {
  if (v6 >> 32n === 0xffffn || (v6 >> 32n === 0n && v6 > 1n)) return v6 & 0xffffffffn;
  if (v6 >> 32n === 0x64ff9b0000000000000000n) return v6 & 0xffffffffn;
  if (v6 >> 112n === 0x2002n) return (v6 >> 80n) & 0xffffffffn;
  return undefined;
}

/** Class of one IP address (v4 or v6, brackets and zone ids allowed); undefined for a non-address. */
export function classifyAddress(address: string): AddressClass | undefined {
  const v4 = parseIPv4(address);
  if (v4 !== undefined) return V4_CLASSES.find(([, list]) => list.some((c) => inCidr(c, false, v4)))?.[0] ?? 'public';
  const v6 = parseIPv6(address);
  if (v6 === undefined) return undefined;
  const inner = embeddedIPv4(v6);
  if (inner !== undefined) {
    return V4_CLASSES.find(([, list]) => list.some((c) => inCidr(c, false, inner)))?.[0] ?? 'public';
  }
  return V6_CLASSES.find(([, list]) => list.some((c) => inCidr(c, true, v6)))?.[0] ?? 'public';
}

/** One entry of the allow-list. */
type AllowEntry =
  { kind: 'any' } | { kind: 'name'; name: string } | { kind: 'suffix'; suffix: string } | { kind: 'net'; cidr: Cidr };

const HOST_NAME = /^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*$/;

/**
 * Parses the allow-list: comma or space separated host names (`agent.lab.local`), wildcard
 * suffixes (`*.lab.local`), addresses (`127.0.0.1`, `::1`), networks (`10.0.0.0/8`) or `*` (every
 * private and loopback address). Throws naming the first bad entry.
 */
export function parseAllowList(text: string): AllowEntry[] {
  const out: AllowEntry[] = [];
  for (const raw of text.split(/[\s,]+/).filter(Boolean)) {
    const entry = raw.toLowerCase().replace(/\.$/, '');
    if (entry === '*') out.push({ kind: 'any' });
    else if (entry.startsWith('*.') && HOST_NAME.test(entry.slice(2)))
      out.push({ kind: 'suffix', suffix: entry.slice(1) });
    else if (parseCidr(entry)) out.push({ kind: 'net', cidr: parseCidr(entry)! });
    else if (HOST_NAME.test(entry) && !/^[\d.]+$/.test(entry)) out.push({ kind: 'name', name: entry });
    else
      throw new Error(
        `allow-list entry ${JSON.stringify(raw)} is not a host name, *.suffix, IP address or network (CIDR)`,
      );
  }
  return out;
}

function ipValue(address: string): { v6: boolean; value: bigint } | undefined {
  const v4 = parseIPv4(address);
  if (v4 !== undefined) return { v6: false, value: v4 };
  const v6 = parseIPv6(address);
  if (v6 === undefined) return undefined;
  const inner = embeddedIPv4(v6);
  return inner !== undefined ? { v6: false, value: inner } : { v6: true, value: v6 };
}

/** Options of a policy. */
export interface UrlPolicyOptions {
  /** Resolver (default: the system resolver, every address). */
  lookup?: LookupFn;
  /** Name of the setting the allow-list came from, for messages (default DT_ALLOWED_HOSTS). */
  setting?: string;
}

const systemLookup: LookupFn = (hostname) => dnsLookup(hostname, { all: true, verbatim: true });

/** The URL policy of one process: an allow-list plus the fixed rules above. */
export class UrlPolicy {
  private readonly entries: AllowEntry[];
  private readonly lookup: LookupFn;
  private readonly setting: string;

  /** `allowList` as in DT_ALLOWED_HOSTS (a string) or already split. */
  constructor(allowList: string | string[] = '', opts: UrlPolicyOptions = {}) {
    this.entries = parseAllowList(Array.isArray(allowList) ? allowList.join(',') : allowList);
    this.lookup = opts.lookup ?? systemLookup;
    this.setting = opts.setting ?? 'DT_ALLOWED_HOSTS';
  }

  /**
   * True when a host name or IP literal is on the allow-list by itself (no DNS). Used for agent
   * URLs named by tasks; `*` trusts every host there.
   */
  hostAllowListed(hostname: string): boolean {
    const host = normaliseHost(hostname);
    return this.listed(host, ipValue(host));
  }

  /** True when an entry names `host` (a normalised name or IP literal) or a network holding `ip`. */
  private listed(host: string, ip: { v6: boolean; value: bigint } | undefined): boolean {
    return this.entries.some((e) => {
      switch (e.kind) {
        case 'any':
          return true;
        case 'name':
          return e.name === host;
        case 'suffix':
          return host.endsWith(e.suffix) && host.length > e.suffix.length;
        case 'net':
          return ip !== undefined && inCidr(e.cidr, ip.v6, ip.value);
      }
    });
  }

  /** The problem with connecting to `address` reached through `hostname`, or undefined when allowed. */
  checkAddress(hostname: string, address: string): string | undefined {
    const cls = classifyAddress(address);
    if (cls === undefined) return `${address} is not an IP address`;
    if (cls === 'public') return undefined;
    const via = normaliseHost(hostname) === normaliseHost(address) ? address : `${hostname} resolves to ${address}`;
    if (NEVER_ALLOWED.has(cls)) return `${via}, a ${cls} address, which is never allowed`;
    return this.listed(normaliseHost(hostname), ipValue(address))
      ? undefined
      : `${via}, a ${cls} address; add the host or its network to ${this.setting} if it is trusted`;
  }

  /**
   * Checks what can be checked without DNS: scheme, credentials, metadata host names and IP
   * literals. Returns the problem or undefined. Names are checked again after resolution.
   */
  precheck(url: string | URL): string | undefined {
    let u: URL;
    try {
      u = typeof url === 'string' ? new URL(url) : url;
    } catch {
      return 'not a valid URL';
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:')
      return `scheme ${u.protocol} is not allowed (only http and https)`;
    if (u.username || u.password) return 'credentials in the URL are not allowed';
    const host = normaliseHost(u.hostname);
    if (METADATA_NAMES.has(host)) return `${host} is a cloud metadata service, which is never allowed`;
    if (ipValue(host)) return this.checkAddress(host, host);
    return undefined;
  }

  /**
   * Resolves a host for a connection and returns every address, all checked; throws
   * UrlRefusedError when the scheme, the name or any of its addresses is not allowed.
   */
  async resolve(protocol: string, hostname: string): Promise<{ address: string; family: number }[]> {
    const host = normaliseHost(hostname);
    if (protocol !== 'http:' && protocol !== 'https:') {
      throw new UrlRefusedError(`${protocol}//${host}`, 'only http and https are allowed');
    }
    if (METADATA_NAMES.has(host)) throw new UrlRefusedError(host, 'a cloud metadata service, which is never allowed');
    const addresses = isIP(host) ? [{ address: host, family: isIP(host) }] : await this.lookup(host);
    if (addresses.length === 0) throw new UrlRefusedError(host, 'the name resolves to no address');
    // Every address must pass: a name that mixes a public and an internal address is refused.
    for (const a of addresses) {
      const problem = this.checkAddress(host, a.address);
      if (problem) throw new UrlRefusedError(`connection to ${host}`, problem);
    }
    return addresses;
  }

  /**
   * An undici connector that resolves through this policy. IP literals are checked here (Node
   * does not look them up); names are resolved by the socket's `lookup`, which hands Node only
   * checked addresses, so the socket connects to what was checked (no rebinding between check and
   * use) and Node's happy-eyeballs still picks among them. The original host name keeps driving
   * the Host header, TLS SNI and certificate checks.
   */
  connector(base: buildConnector.BuildOptions = {}): buildConnector.connector {
    const lookup = (hostname: string, options: { all?: boolean }, cb: (...args: unknown[]) => void): void => {
      this.resolve('http:', hostname).then(
        (addresses) => (options?.all ? cb(null, addresses) : cb(null, addresses[0]!.address, addresses[0]!.family)),
        (err: Error) => cb(err),
      );
    };
    const inner = buildConnector({ ...base, lookup } as buildConnector.BuildOptions);
    return (opts, callback) => {
      const host = normaliseHost(opts.hostname);
      // Scheme, metadata names and IP literals fail right here; names fail inside lookup.
      const early = (opts.protocol !== 'http:' && opts.protocol !== 'https:') || METADATA_NAMES.has(host) || isIP(host);
      if (!early) return inner(opts, callback);
      this.resolve(opts.protocol, host).then(
        () => inner(opts, callback),
        (err: Error) => callback(err, null),
      );
    };
  }

  /**
   * An interceptor refusing, before any connection, each request or redirect hop whose URL fails
   * `precheck`. It sits below the redirect interceptor, so it sees every hop, and it also looks at
   * each 3xx Location itself: undici's redirect handler throws its own error on a redirect to
   * file: or ftp: before the next hop would reach this check.
   */
  interceptor(): Dispatcher.DispatcherComposeInterceptor {
    return (dispatch) => (opts, handler) => {
      const origin = typeof opts.origin === 'string' ? opts.origin : opts.origin?.toString();
      let here: URL | undefined;
      let problem: string | undefined;
      try {
        here = new URL(opts.path ?? '/', origin);
        problem = this.precheck(here);
      } catch {
        problem = 'not a valid URL';
      }
      if (problem || !here) {
        handler.onResponseError?.(
          null as never,
          new UrlRefusedError(origin ?? '(no origin)', problem ?? 'not a valid URL'),
        );
        return true;
      }
      const from = here;
      return dispatch(opts, {
        onRequestStart: (controller, context) => handler.onRequestStart?.(controller, context),
        onRequestUpgrade: (controller, statusCode, headers, socket) =>
          handler.onRequestUpgrade?.(controller, statusCode, headers, socket),
        onResponseStart: (controller, statusCode, headers, statusMessage) => {
          const location = headers.location;
          if (statusCode >= 300 && statusCode < 400 && typeof location === 'string') {
            let target: string = location;
            let refusal: string | undefined;
            try {
              const next = new URL(location, from);
              target = `${next.protocol}//${next.host}`;
              refusal = this.precheck(next);
            } catch {
              refusal = 'not a valid URL';
            }
            if (refusal) {
              controller.abort(new UrlRefusedError(`redirect from ${from.origin} to ${target.slice(0, 200)}`, refusal));
              return;
            }
          }
          handler.onResponseStart?.(controller, statusCode, headers, statusMessage);
        },
        onResponseData: (controller, chunk) => handler.onResponseData?.(controller, chunk),
        onResponseEnd: (controller, trailers) => handler.onResponseEnd?.(controller, trailers),
        onResponseError: (controller, err) => handler.onResponseError?.(controller, err),
      });
    };
  }
}

/** Lower case, no brackets around IPv6, no trailing dot. */
function normaliseHost(host: string): string {
  return host
    .toLowerCase()
    .replace(/^\[|\]$/g, '')
    .replace(/\.$/, '');
}

/** Default number of redirects followed before a request fails. */
export const MAX_REDIRECTS = 5;

/**
 * Redirect interceptor plus the policy check on every hop. Compose after the Agent:
 * `agent.compose(...policedRedirects(policy))`.
 */
export function policedRedirects(
  policy: UrlPolicy,
  maxRedirections = MAX_REDIRECTS,
): Dispatcher.DispatcherComposeInterceptor[] {
  return [policy.interceptor(), interceptors.redirect({ maxRedirections })];
}
