// PROXY protocol version 2 (HAProxy's spec, "The PROXY protocol", §2.2): the
// binary header a relay or a balancer writes before a connection's own bytes
// so that the server it connects to learns the client's real address. A node
// that relays a resuming link to the session's owner writes one; the owner
// reads it (only from members of the deployment) and shows the client's
// address in remoteAddress and the logs. Pure: no I/O.
//
//   offset  size  field
//   0       12    signature 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A ("\r\n\r\n\0\r\nQUIT\n")
//   12      1     version (high nibble, 2) | command (low nibble: 0 LOCAL, 1 PROXY)
//   13      1     family (high nibble: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) | transport (low: 0 UNSPEC, 1 STREAM, 2 DGRAM)
//   14      2     length u16 BE: the bytes that follow (addresses, then TLVs)
//   16            INET:  source 4, destination 4, source port 2, destination port 2   (12 bytes)
//                 INET6: source 16, destination 16, source port 2, destination port 2 (36 bytes)
//                 UNIX:  source 108, destination 108                                  (216 bytes)
//   then          TLVs: type u8 | length u16 BE | value
//
// The signature starts with CR, which neither a rocks client (its EDP
// announcement starts with 0xE5) nor any text protocol's first byte is, so
// one byte tells a link without a header apart.

import { isIPv4, isIPv6, SocketAddress } from 'node:net';

export const PROXY_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** Signature, version/command, family/transport, length. */
export const PROXY_HEADER_FIXED_SIZE = 16;
/**
 * The most address and TLV bytes parseProxyHeader accepts by default: room
 * for IPv6 addresses and a few TLVs, yet a forged length cannot make a
 * reader buffer 64 KiB before it decides.
 */
export const DEFAULT_MAX_PROXY_BODY = 512;

const VERSION_2 = 0x2;
const COMMAND_LOCAL = 0x0;
const COMMAND_PROXY = 0x1;
const FAMILY_UNSPEC = 0x0;
const FAMILY_INET = 0x1;
const FAMILY_INET6 = 0x2;
const FAMILY_UNIX = 0x3;
const TRANSPORT_STREAM = 0x1;
const TRANSPORT_DGRAM = 0x2;
/** The bytes of the address block, by family. */
const ADDRESS_SIZE: Record<number, number> = { [FAMILY_UNSPEC]: 0, [FAMILY_INET]: 12, [FAMILY_INET6]: 36, [FAMILY_UNIX]: 216 };
const TLV_HEADER_SIZE = 3;
const MAX_U16 = 0xffff;

export interface ProxyAddress {
  /** As Node shows a remoteAddress: dotted quad, or compressed lowercase IPv6 (an IPv4-mapped one as ::ffff:a.b.c.d). */
  address: string;
  port: number;
}

/** A type-length-value extension after the addresses (PP2_TYPE_*; 0xE0-0xEF are for applications). */
export interface ProxyTlv {
  type: number;
  value: Buffer;
}

export type ProxyHeaderParse =
  /** The bytes do not start with the signature: the link has no PROXY header. */
  | { kind: 'none' }
  /** Too few bytes yet: a prefix of the signature, or a header not yet whole. */
  | { kind: 'incomplete' }
  /** The signature is there but the rest is not a header this reader accepts. */
  | { kind: 'malformed'; reason: string }
  | {
      kind: 'header';
      /** Bytes the header takes at the start of the input; the connection's own bytes follow. */
      length: number;
      /**
       * 'proxy': relayed for the client in `source`. 'local': the sender speaks for
       * itself (a health check); use the connection's real endpoints.
       */
      command: 'proxy' | 'local';
      /**
       * Set for a PROXY header over TCP on IPv4 or IPv6. Absent for LOCAL and for the
       * families rocks does not carry (UNSPEC, UNIX, UDP): the spec lets a receiver
       * use the connection's real endpoints then.
       */
      source?: ProxyAddress;
      destination?: ProxyAddress;
      tlvs: ProxyTlv[];
    };

export interface ProxyHeaderInput {
  source: ProxyAddress;
  destination: ProxyAddress;
  tlvs?: readonly ProxyTlv[];
}

/**
 * A PROXY header (command PROXY, TCP) for a connection from `source` to
 * `destination`. Both IPv4 (an IPv4-mapped IPv6 address counts as IPv4)
 * gives the IPv4 form; otherwise IPv6, with an IPv4 side mapped, as HAProxy
 * does. Throws RangeError on an address that is not an IP, a bad port or
 * oversized TLVs.
 */
export function encodeProxyHeader({ source, destination, tlvs = [] }: ProxyHeaderInput): Buffer {
  let src = ipBytes(source.address, 'source');
  let dst = ipBytes(destination.address, 'destination');
  const v4 = src.length === 4 && dst.length === 4;
  if (!v4) {
    src = toIPv6Bytes(src);
    dst = toIPv6Bytes(dst);
  }
  const addresses = Buffer.alloc(v4 ? ADDRESS_SIZE[FAMILY_INET] : ADDRESS_SIZE[FAMILY_INET6]);
  src.copy(addresses, 0);
  dst.copy(addresses, src.length);
  addresses.writeUInt16BE(checkPort(source.port, 'source'), 2 * src.length);
  addresses.writeUInt16BE(checkPort(destination.port, 'destination'), 2 * src.length + 2);
  return assemble(COMMAND_PROXY, ((v4 ? FAMILY_INET : FAMILY_INET6) << 4) | TRANSPORT_STREAM, addresses, tlvs);
}

/** A LOCAL header (family UNSPEC, no addresses): the sender speaks for itself, as a health check does. */
export function encodeLocalProxyHeader(tlvs: readonly ProxyTlv[] = []): Buffer {
  return assemble(COMMAND_LOCAL, FAMILY_UNSPEC << 4, Buffer.alloc(0), tlvs);
}

function assemble(command: number, familyTransport: number, addresses: Buffer, tlvs: readonly ProxyTlv[]): Buffer {
  const parts = [addresses];
  for (const { type, value } of tlvs) {
    if (!Number.isInteger(type) || type < 0 || type > 0xff) throw new RangeError(`PROXY header: TLV type ${type} is not a byte`);
    if (value.length > MAX_U16) throw new RangeError(`PROXY header: TLV ${type} has ${value.length} bytes (at most ${MAX_U16})`);
    const head = Buffer.alloc(TLV_HEADER_SIZE);
    head[0] = type;
    head.writeUInt16BE(value.length, 1);
    parts.push(head, value);
  }
  const body = Buffer.concat(parts);
  if (body.length > MAX_U16) throw new RangeError(`PROXY header: ${body.length} bytes of addresses and TLVs (at most ${MAX_U16})`);
  const fixed = Buffer.alloc(PROXY_HEADER_FIXED_SIZE);
  PROXY_SIGNATURE.copy(fixed, 0);
  fixed[12] = (VERSION_2 << 4) | command;
  fixed[13] = familyTransport;
  fixed.writeUInt16BE(body.length, 14);
  return Buffer.concat([fixed, body]);
}

export interface ParseProxyHeaderOptions {
  /** Refuse a header whose address and TLV bytes exceed this (default DEFAULT_MAX_PROXY_BODY). */
  maxBody?: number;
}

/**
 * Reads a PROXY v2 header at the start of `bytes`, which may be the first
 * bytes of a link so far: it answers 'none' or 'malformed' as soon as the
 * bytes seen rule a header out, and 'incomplete' only while more could
 * still make one.
 */
export function parseProxyHeader(bytes: Buffer, { maxBody = DEFAULT_MAX_PROXY_BODY }: ParseProxyHeaderOptions = {}): ProxyHeaderParse {
  const head = Math.min(bytes.length, PROXY_SIGNATURE.length);
  if (!bytes.subarray(0, head).equals(PROXY_SIGNATURE.subarray(0, head))) return { kind: 'none' };
  if (bytes.length <= 12) return { kind: 'incomplete' };
  const version = bytes[12] >> 4;
  const command = bytes[12] & 0x0f;
  if (version !== VERSION_2) return { kind: 'malformed', reason: `PROXY protocol version ${version} (only 2 is read)` };
  if (command !== COMMAND_LOCAL && command !== COMMAND_PROXY) return { kind: 'malformed', reason: `unknown PROXY command ${command}` };
  if (bytes.length <= 13) return { kind: 'incomplete' };
  const family = bytes[13] >> 4;
  const transport = bytes[13] & 0x0f;
  if (family > FAMILY_UNIX) return { kind: 'malformed', reason: `unknown PROXY address family ${family}` };
  if (transport > TRANSPORT_DGRAM) return { kind: 'malformed', reason: `unknown PROXY transport ${transport}` };
  if (bytes.length < PROXY_HEADER_FIXED_SIZE) return { kind: 'incomplete' };
  const bodyLength = bytes.readUInt16BE(14);
  if (bodyLength > maxBody) return { kind: 'malformed', reason: `PROXY header of ${bodyLength} bytes after the fixed part (at most ${maxBody})` };
  const addressSize = ADDRESS_SIZE[family];
  if (bodyLength < addressSize) {
    return { kind: 'malformed', reason: `PROXY header too short for its addresses (${bodyLength} bytes, family ${family} needs ${addressSize})` };
  }
  const length = PROXY_HEADER_FIXED_SIZE + bodyLength;
  if (bytes.length < length) return { kind: 'incomplete' };
  const body = bytes.subarray(PROXY_HEADER_FIXED_SIZE, length);
  const tlvs = parseTlvs(body.subarray(addressSize));
  if (typeof tlvs === 'string') return { kind: 'malformed', reason: tlvs };
  const header = { kind: 'header' as const, length, command: command === COMMAND_PROXY ? ('proxy' as const) : ('local' as const), tlvs };
  if (command !== COMMAND_PROXY || transport !== TRANSPORT_STREAM || (family !== FAMILY_INET && family !== FAMILY_INET6)) return header;
  const ipSize = family === FAMILY_INET ? 4 : 16;
  return {
    ...header,
    source: { address: ipText(body.subarray(0, ipSize)), port: body.readUInt16BE(2 * ipSize) },
    destination: { address: ipText(body.subarray(ipSize, 2 * ipSize)), port: body.readUInt16BE(2 * ipSize + 2) },
  };
}

/** The TLVs in `bytes`, or why they do not fit. Copies the values: they outlive the link's buffer. */
function parseTlvs(bytes: Buffer): ProxyTlv[] | string {
  const tlvs: ProxyTlv[] = [];
  let at = 0;
  while (at < bytes.length) {
    if (bytes.length - at < TLV_HEADER_SIZE) return `PROXY header ends inside a TLV header (${bytes.length - at} bytes left)`;
    const type = bytes[at];
    const size = bytes.readUInt16BE(at + 1);
    at += TLV_HEADER_SIZE;
    if (size > bytes.length - at) return `PROXY TLV ${type} of ${size} bytes overruns the header (${bytes.length - at} left)`;
    tlvs.push({ type, value: Buffer.from(bytes.subarray(at, at + size)) });
    at += size;
  }
  return tlvs;
}

function checkPort(port: number, what: string): number {
  if (!Number.isInteger(port) || port < 0 || port > MAX_U16) throw new RangeError(`PROXY header: ${what} port ${port} is not 0-65535`);
  return port;
}

/** The 4 or 16 bytes of an IP address in text (an IPv4-mapped IPv6 address gives its 4 IPv4 bytes). */
export function ipBytes(text: string, what = 'address'): Buffer {
  if (isIPv4(text)) return Buffer.from(text.split('.').map(Number)); // isIPv4 admits only a.b.c.d, each 0-255 without leading zeros
  // A zone (fe80::1%eth0) does not travel: the receiver's zones are its own.
  const address = text.replace(/%.*$/, '');
  if (!isIPv6(address)) throw new RangeError(`PROXY header: ${what} '${text}' is not an IP address`);
  // WHATWG URL serializes an IPv6 host canonically: lowercase hex groups, at most one '::', no dotted tail.
  const canonical = new URL(`http://[${address}]/`).hostname.slice(1, -1);
  const [left, right] = canonical.split('::');
  const leftGroups = left === '' ? [] : left.split(':');
  const rightGroups = right === undefined || right === '' ? [] : right.split(':');
  const groups = [...leftGroups, ...Array(8 - leftGroups.length - rightGroups.length).fill('0'), ...rightGroups];
  const bytes = Buffer.alloc(16);
  for (const [i, g] of groups.entries()) bytes.writeUInt16BE(Number.parseInt(g, 16), 2 * i);
  return isIPv4Mapped(bytes) ? Buffer.from(bytes.subarray(12)) : bytes;
}

/** An IP address's text from its 4 or 16 bytes, as Node writes a remoteAddress. */
export function ipText(bytes: Buffer): string {
  if (bytes.length === 4) return [...bytes].join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
  return new SocketAddress({ address: groups.join(':'), family: 'ipv6' }).address; // inet_ntop's form
}

function isIPv4Mapped(bytes: Buffer): boolean {
  return bytes.length === 16 && bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff;
}

function toIPv6Bytes(bytes: Buffer): Buffer {
  if (bytes.length === 16) return bytes;
  return Buffer.concat([Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]), bytes]);
}
