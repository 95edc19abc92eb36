/**
 * IP address arithmetic for the URL policy: parsing v4 and v6 text (brackets, zone ids and an
 * embedded IPv4 tail allowed), networks in CIDR form, and the class of an address.
 *
 * An IPv6 address that carries an IPv4 one for a translator or tunnel (IPv4-mapped, SIIT
 * ::ffff:0:0:0/96, IPv4-compatible, NAT64 64:ff9b::/96, 6to4) is classed as that IPv4 address. The
 * other IPv6 special-purpose ranges (IANA registry: local-use NAT64, whose IPv4 position cannot be
 * known, Teredo and the rest of 2001::/23, documentation, discard, AS112, SRv6, …) and everything
 * outside global unicast 2000::/3 are reserved; benchmarking 2001:2::/48 counts as private.
 */
import { isIP } from 'node:net';

/** Classes of address, from the most to the least dangerous. */
export type AddressClass = 'metadata' | 'link-local' | 'unspecified' | 'reserved' | 'loopback' | 'private' | 'public';

/** A network: its family, its first address as a number and its prefix length. */
export interface Cidr {
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

/** Parses an IPv6 address; an embedded IPv4 tail, brackets and a zone id are allowed. */
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
export function parseCidr(text: string): Cidr | undefined {
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

/** True when `value` (of the given family) lies in the network. */
export function inCidr(c: Cidr, v6: boolean, value: bigint): boolean {
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
export function describeAddress(address: string): { cls: AddressClass; detail?: string } | undefined {
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

/** An address as a number, an IPv4 address carried in IPv6 taken as that IPv4 address; undefined for a non-address. */
export function ipValue(address: string): { v6: boolean; value: bigint } | undefined {
  const v4 = parseIPv4(address);
  if (v4 !== undefined) return { v6: false, value: v4 };
  const v6 = parseIPv6(address);
  if (v6 === undefined) return undefined;
  const inner = embeddedIPv4(v6);
  return inner !== undefined ? { v6: false, value: inner.v4 } : { v6: true, value: v6 };
}
