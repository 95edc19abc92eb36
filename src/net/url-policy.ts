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
 * Which class an address falls in (IPv6 special ranges, IPv4 carried in IPv6) is decided in ip.ts.
 * The policy is enforced by the connector and the per-hop check in dispatcher.ts: the connector
 * resolves the name itself, checks every address, then connects to a checked address, so a DNS
 * answer that changes between check and use (rebinding) gains nothing.
 */
import { lookup as dnsLookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { TraversalError } from '../contract/errors';
import { describeAddress, inCidr, ipValue, parseCidr, type AddressClass, type Cidr } from './ip';

/** How a host name is resolved; injectable so tests can make a name resolve anywhere. */
export type LookupFn = (hostname: string) => Promise<{ address: string; family: number }[]>;

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

  /** True when `resolve` decides without DNS: a scheme other than http(s), a metadata name or an IP literal. */
  decidesWithoutLookup(protocol: string, hostname: string): boolean {
    const host = normaliseHost(hostname);
    return (protocol !== 'http:' && protocol !== 'https:') || METADATA_NAMES.has(host) || isIP(host) !== 0;
  }
}

/** Lower case, no brackets around IPv6, no trailing dot. */
function normaliseHost(host: string): string {
  return host
    .toLowerCase()
    .replace(/^\[|\]$/g, '')
    .replace(/\.$/, '');
}

/** Redirects a request follows before it fails; each hop is checked like the first request. */
export const MAX_REDIRECTS = 5;
