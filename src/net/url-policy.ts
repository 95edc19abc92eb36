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
 * An IPv6 address that carries an IPv4 one for a translator or tunnel (IPv4-mapped, SIIT
 * ::ffff:0:0:0/96, IPv4-compatible, NAT64 64:ff9b::/96, 6to4) is judged as that IPv4 address. The
 * other IPv6 special-purpose ranges (IANA registry: local-use NAT64, whose IPv4 position cannot be
 * known, Teredo and the rest of 2001::/23, documentation, discard, AS112, SRv6, …) and everything
 * outside global unicast 2000::/3 are reserved; benchmarking 2001:2::/48 counts as private.
 * The connector resolves the name itself, checks every address, then connects to a checked
 * address, so a DNS answer that changes between check and use (rebinding) gains nothing.
 */
import { lookup as dnsLookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { buildConnector, interceptors, type Dispatcher } from 'undici';
import { TraversalError } from '../contract/errors';

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

/** An IPv6 range, its class and its name in refusals (empty when the class says it all). */
interface V6Range {
  cls: AddressClass;
  cidr: Cidr;
  name: string;
}
const v6 = (cls: AddressClass, cidr: string, name: string): V6Range => ({ cls, cidr: parseCidr(cidr)!, name });

/**
 * IPv6 ranges that carry an IPv4 address a translator or tunnel delivers to; such an address is
 * classed as that IPv4 address. `at` is the bit offset of the IPv4 address from the right.
 */
const V6_EMBEDDING: { range: V6Range; at: bigint; except?: bigint[] }[] = [
  { range: v6('public', '::ffff:0:0/96', 'IPv4-mapped ::ffff:0:0/96'), at: 0n },
  { range: v6('public', '::ffff:0:0:0/96', 'IPv4-translated (SIIT) ::ffff:0:0:0/96'), at: 0n },
  // :: and ::1 are the unspecified and loopback addresses themselves.
  { range: v6('public', '::/96', 'IPv4-compatible ::/96'), at: 0n, except: [0n, 1n] },
  { range: v6('public', '64:ff9b::/96', 'NAT64 64:ff9b::/96'), at: 0n },
  { range: v6('public', '2002::/16', '6to4 2002::/16'), at: 80n },
];

/**
 * The IANA IPv6 Special-Purpose Address Registry (2024) and the other non-global ranges, first
 * match wins. Global unicast is 2000::/3; any address outside it not named here is reserved.
 */
const V6_RANGES: V6Range[] = [
  v6('metadata', 'fd00:ec2::254/128', 'AWS instance metadata'),
  v6('loopback', '::1/128', ''),
  v6('unspecified', '::/128', ''),
  v6('link-local', 'fe80::/10', ''),
  v6('reserved', 'ff00::/8', 'multicast ff00::/8'),
  // RFC 8215: where the IPv4 address sits depends on the prefix length the local translator uses
  // (RFC 6052), so it cannot be checked; the well-known 64:ff9b::/96 above can.
  v6('reserved', '64:ff9b:1::/48', 'local-use NAT64 64:ff9b:1::/48'),
  v6('reserved', '100::/64', 'discard-only 100::/64'),
  v6('reserved', '100:0:0:1::/64', 'dummy prefix 100:0:0:1::/64'),
  v6('reserved', '2001::/32', 'Teredo 2001::/32'),
  v6('reserved', '2001:1::1/128', 'PCP anycast 2001:1::1'),
  v6('reserved', '2001:1::2/128', 'TURN anycast 2001:1::2'),
  v6('reserved', '2001:1::3/128', 'DNS-SD SRP anycast 2001:1::3'),
  // Benchmarking, allow-listable like its IPv4 twin 198.18.0.0/15.
  v6('private', '2001:2::/48', 'benchmarking 2001:2::/48'),
  v6('reserved', '2001:3::/32', 'AMT 2001:3::/32'),
  v6('reserved', '2001:4:112::/48', 'AS112 2001:4:112::/48'),
  v6('reserved', '2001:10::/28', 'ORCHID 2001:10::/28'),
  v6('reserved', '2001:20::/28', 'ORCHIDv2 2001:20::/28'),
  v6('reserved', '2001:30::/28', 'DRIP 2001:30::/28'),
  v6('reserved', '2001::/23', 'IETF protocol assignments 2001::/23'),
  v6('reserved', '2001:db8::/32', 'documentation 2001:db8::/32'),
  v6('reserved', '2620:4f:8000::/48', 'AS112 2620:4f:8000::/48'),
  v6('reserved', '3fff::/20', 'documentation 3fff::/20'),
  v6('reserved', '5f00::/16', 'SRv6 SIDs 5f00::/16'),
  v6('private', 'fc00::/7', 'unique local fc00::/7'),
  v6('private', 'fec0::/10', 'site-local fec0::/10'),
];
const GLOBAL_UNICAST = parseCidr('2000::/3')!;

/** The IPv4 address hidden in an IPv6 one, which is where a translator or tunnel really sends the packet. */
function embeddedIPv4(value: bigint): { v4: bigint; range: string } | undefined {
  for (const e of V6_EMBEDDING) {
    if (inCidr(e.range.cidr, true, value) && !e.except?.includes(value)) {
      return { v4: (value >> e.at) & 0xffffffffn, range: e.range.name };
    }
  }
  return undefined;
}

function classifyIPv4(value: bigint): AddressClass {
  return V4_CLASSES.find(([, list]) => list.some((c) => inCidr(c, false, value)))?.[0] ?? 'public';
}

function formatIPv4(value: bigint): string {
  return [24n, 16n, 8n, 0n].map((s) => String((value >> s) & 0xffn)).join('.');
}

/** Class of an address and, for IPv6, the special range that decided it. */
function describeAddress(address: string): { cls: AddressClass; detail?: string } | undefined {
  const v4 = parseIPv4(address);
  if (v4 !== undefined) return { cls: classifyIPv4(v4) };
  const value = parseIPv6(address);
  if (value === undefined) return undefined;
  const inner = embeddedIPv4(value);
  if (inner) return { cls: classifyIPv4(inner.v4), detail: `IPv4 ${formatIPv4(inner.v4)} in ${inner.range}` };
  const range = V6_RANGES.find((r) => inCidr(r.cidr, true, value));
  if (range) return { cls: range.cls, detail: range.name || undefined };
  if (!inCidr(GLOBAL_UNICAST, true, value)) return { cls: 'reserved', detail: 'outside global unicast 2000::/3' };
  return { cls: 'public' };
}

/** Class of one IP address (v4 or v6, brackets and zone ids allowed); undefined for a non-address. */
export function classifyAddress(address: string): AddressClass | undefined {
  return describeAddress(address)?.cls;
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
  return inner !== undefined ? { v6: false, value: inner.v4 } : { v6: true, value: v6 };
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
    const described = describeAddress(address);
    if (described === undefined) return `${address} is not an IP address`;
    const { cls, detail } = described;
    if (cls === 'public') return undefined;
    const via = normaliseHost(hostname) === normaliseHost(address) ? address : `${hostname} resolves to ${address}`;
    const what = `${via}, a${/^[aeiou]/.test(cls) ? 'n' : ''} ${cls} address${detail ? ` (${detail})` : ''}`;
    if (NEVER_ALLOWED.has(cls)) return `${what}, which is never allowed`;
    return this.listed(normaliseHost(hostname), ipValue(address))
      ? undefined
      : `${what}; add the host or its network to ${this.setting} if it is trusted`;
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
