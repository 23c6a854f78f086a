// IPv4 + TCP packets as racks sees them on its TUN device: parse, build,
// checksum, rewrite. Pure and without I/O, so that the daemon, the tests and
// a fuzzer all use the same code. racks reads whole IP packets from the TUN,
// needs their connection (addresses, ports) and sequence state, and later
// forges packets "as if from the peer" (zero-window ACKs during a
// suspension), which the kernel accepts only with correct checksums.
//
// Every malformed input (truncated, bad IHL or data offset, a fragment, not
// TCP, a broken option) is reported as a PacketError with a stable code;
// nothing reads outside the buffer. Parsing returns views on the buffer, not
// copies. IPv6 is out of scope for now: an IPv6 packet is ERR_RACKS_NOT_IPV4.

export type PacketErrorCode =
  | 'ERR_RACKS_TRUNCATED'
  | 'ERR_RACKS_NOT_IPV4'
  | 'ERR_RACKS_BAD_IHL'
  | 'ERR_RACKS_BAD_LENGTH'
  | 'ERR_RACKS_FRAGMENT'
  | 'ERR_RACKS_NOT_TCP'
  | 'ERR_RACKS_BAD_DATA_OFFSET'
  | 'ERR_RACKS_BAD_OPTION'
  | 'ERR_RACKS_BAD_FIELD';

export class PacketError extends Error {
  readonly code: PacketErrorCode;

  constructor(code: PacketErrorCode, message: string) {
    super(message);
    this.name = 'PacketError';
    this.code = code;
  }
}

export const IPPROTO_TCP = 6;
const IPV4_MIN_HEADER = 20;
const TCP_MIN_HEADER = 20;

/** TCP flag bits, as in the header's 13th byte (plus NS is not kept). */
export const TcpFlags = {
  FIN: 0x01,
  SYN: 0x02,
  RST: 0x04,
  PSH: 0x08,
  ACK: 0x10,
  URG: 0x20,
  ECE: 0x40,
  CWR: 0x80,
} as const;

/** The TCP options racks cares about; `raw` holds the whole option bytes. */
export interface TcpOptions {
  mss?: number;
  /** The shift count (RFC 7323), as sent: may be above 14, which the receiver clamps. */
  windowScale?: number;
  sackPermitted: boolean;
  /** SACK blocks, [left, right) pairs of sequence numbers. */
  sack?: [number, number][];
  timestamp?: { value: number; echo: number };
  raw: Buffer;
}

export interface TcpPacket {
  // IPv4 header
  src: string;
  dst: string;
  ipHeaderLength: number;
  totalLength: number;
  tos: number;
  id: number;
  dontFragment: boolean;
  ttl: number;
  ipChecksum: number;
  // TCP header
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  /** Header length in bytes (data offset × 4). */
  tcpHeaderLength: number;
  flags: number;
  /** The raw 16-bit window field (unscaled). */
  window: number;
  tcpChecksum: number;
  urgent: number;
  options: TcpOptions;
  /** A view on the packet's payload. */
  payload: Buffer;
}

// ---- addresses ---------------------------------------------------------------------------------

/** 'a.b.c.d' from four bytes at `offset`. */
export function formatIPv4(buf: Buffer, offset = 0): string {
  return `${buf[offset]}.${buf[offset + 1]}.${buf[offset + 2]}.${buf[offset + 3]}`;
}

/** The four bytes of a dotted-quad IPv4 address; throws ERR_RACKS_BAD_FIELD otherwise. */
export function parseIPv4(address: string): Buffer {
  const parts = address.split('.');
  if (parts.length !== 4 || !parts.every((p) => /^(0|[1-9]\d{0,2})$/.test(p) && Number(p) <= 255)) {
    throw new PacketError('ERR_RACKS_BAD_FIELD', `not an IPv4 address: ${JSON.stringify(address)}`);
  }
  return Buffer.from(parts.map(Number));
}

// ---- checksums ---------------------------------------------------------------------------------

/** The 32-bit running sum of 16-bit big-endian words of buf[start, end) (an odd last byte is padded). */
function sumWords(buf: Buffer, start: number, end: number, sum = 0): number {
  let i = start;
  for (; i + 1 < end; i += 2) sum += (buf[i] << 8) | buf[i + 1];
  if (i < end) sum += buf[i] << 8;
  return sum;
}

/** Folds a running sum to 16 bits and complements it. */
function foldChecksum(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return ~sum & 0xffff;
}

/** The IPv4 header checksum of buf's header (its checksum field counts as zero). */
export function ipv4HeaderChecksum(buf: Buffer): number {
  const ihl = (buf[0] & 0x0f) * 4;
  if (ihl < IPV4_MIN_HEADER || buf.length < ihl) throw new PacketError('ERR_RACKS_BAD_IHL', `IHL ${ihl} bytes in a ${buf.length}-byte buffer`);
  const sum = sumWords(buf, 0, ihl) - ((buf[10] << 8) | buf[11]);
  return foldChecksum(sum);
}

/** The TCP checksum (with the IPv4 pseudo-header) of a well-formed IPv4/TCP packet; its checksum field counts as zero. */
export function tcpChecksum(buf: Buffer): number {
  const { ihl, total } = tcpBounds(buf);
  const tcpLength = total - ihl;
  let sum = sumWords(buf, 12, 20); // source and destination addresses
  sum += IPPROTO_TCP + tcpLength;
  sum = sumWords(buf, ihl, total, sum);
  sum -= (buf[ihl + 16] << 8) | buf[ihl + 17];
  return foldChecksum(sum);
}

/**
 * Whether the packet's IPv4 header and TCP checksums are both right: the
 * one's-complement sum over each, checksum included, must be all ones (so
 * both encodings of zero, 0x0000 and 0xffff, are accepted, as receivers do).
 */
export function verifyChecksums(buf: Buffer): { ip: boolean; tcp: boolean } {
  const { ihl, total } = tcpBounds(buf);
  let tcp = sumWords(buf, 12, 20) + IPPROTO_TCP + (total - ihl);
  tcp = sumWords(buf, ihl, total, tcp);
  return { ip: foldChecksum(sumWords(buf, 0, ihl)) === 0, tcp: foldChecksum(tcp) === 0 };
}

/** Recomputes and stores both checksums, in place. Returns buf. */
export function fixChecksums(buf: Buffer): Buffer {
  const { ihl } = tcpBounds(buf);
  buf.writeUInt16BE(ipv4HeaderChecksum(buf), 10);
  buf.writeUInt16BE(tcpChecksum(buf), ihl + 16);
  return buf;
}

/** RFC 1624 eqn. 3: the checksum after one 16-bit word of the summed data changed from `old` to `now`. */
export function adjustChecksum(checksum: number, old: number, now: number): number {
  const sum = (~checksum & 0xffff) + (~old & 0xffff) + (now & 0xffff);
  return foldChecksum(sum);
}

// ---- parsing -----------------------------------------------------------------------------------

/** Checks the IPv4 header of buf and returns its header length and total length. */
function ipBounds(buf: Buffer): { ihl: number; total: number } {
  if (buf.length < 1) throw new PacketError('ERR_RACKS_TRUNCATED', 'empty packet');
  const version = buf[0] >> 4;
  if (version !== 4) throw new PacketError('ERR_RACKS_NOT_IPV4', `IP version ${version}, racks handles IPv4 only`);
  if (buf.length < IPV4_MIN_HEADER) throw new PacketError('ERR_RACKS_TRUNCATED', `${buf.length} bytes, shorter than an IPv4 header`);
  const ihl = (buf[0] & 0x0f) * 4;
  if (ihl < IPV4_MIN_HEADER) throw new PacketError('ERR_RACKS_BAD_IHL', `IHL of ${ihl} bytes is below 20`);
  const total = buf.readUInt16BE(2);
  if (total < ihl) throw new PacketError('ERR_RACKS_BAD_LENGTH', `total length ${total} is shorter than the ${ihl}-byte IP header`);
  if (buf.length < total) throw new PacketError('ERR_RACKS_TRUNCATED', `${buf.length} bytes of a ${total}-byte packet`);
  return { ihl, total };
}

/** Checks that buf is IPv4 carrying at least a TCP header (not its options) and returns the IP bounds. */
function tcpBounds(buf: Buffer): { ihl: number; total: number } {
  const bounds = ipBounds(buf);
  if (buf[9] !== IPPROTO_TCP) throw new PacketError('ERR_RACKS_NOT_TCP', `IP protocol ${buf[9]}, not TCP`);
  const tcpLength = bounds.total - bounds.ihl;
  if (tcpLength < TCP_MIN_HEADER) throw new PacketError('ERR_RACKS_TRUNCATED', `${tcpLength} bytes of TCP, shorter than a TCP header`);
  return bounds;
}

function parseOptions(raw: Buffer): TcpOptions {
  const options: TcpOptions = { sackPermitted: false, raw };
  let i = 0;
  while (i < raw.length) {
    const kind = raw[i];
    if (kind === 0) break; // end of option list: the rest is padding
    if (kind === 1) {
      i++;
      continue;
    }
    if (i + 1 >= raw.length) throw new PacketError('ERR_RACKS_BAD_OPTION', `option ${kind} at byte ${i} has no length`);
    const len = raw[i + 1];
    if (len < 2 || i + len > raw.length)
      throw new PacketError('ERR_RACKS_BAD_OPTION', `option ${kind} at byte ${i} has length ${len}, ${raw.length - i} bytes left`);
    const expect = (want: boolean, what: string): void => {
      if (!want) throw new PacketError('ERR_RACKS_BAD_OPTION', `${what} option with length ${len}`);
    };
    switch (kind) {
      case 2:
        expect(len === 4, 'MSS');
        options.mss = raw.readUInt16BE(i + 2);
        break;
      case 3:
        expect(len === 3, 'window scale');
        options.windowScale = raw[i + 2];
        break;
      case 4:
        expect(len === 2, 'SACK-permitted');
        options.sackPermitted = true;
        break;
      case 5: {
        expect((len - 2) % 8 === 0 && len > 2, 'SACK');
        const blocks: [number, number][] = [];
        for (let j = i + 2; j < i + len; j += 8) blocks.push([raw.readUInt32BE(j), raw.readUInt32BE(j + 4)]);
        options.sack = blocks;
        break;
      }
      case 8:
        expect(len === 10, 'timestamp');
        options.timestamp = { value: raw.readUInt32BE(i + 2), echo: raw.readUInt32BE(i + 6) };
        break;
      default: // unknown options are kept in raw and skipped
    }
    i += len;
  }
  return options;
}

/**
 * Parses an IPv4/TCP packet. Throws PacketError for anything else or
 * anything malformed. Bytes past the IP total length are ignored.
 */
export function parseTcpPacket(buf: Buffer): TcpPacket {
  const { ihl, total } = ipBounds(buf);
  const fragment = buf.readUInt16BE(6);
  if ((fragment & 0x3fff) !== 0)
    throw new PacketError('ERR_RACKS_FRAGMENT', `fragment (offset ${(fragment & 0x1fff) * 8}, more=${(fragment & 0x2000) !== 0})`);
  tcpBounds(buf);
  const dataOffset = (buf[ihl + 12] >> 4) * 4;
  if (dataOffset < TCP_MIN_HEADER) throw new PacketError('ERR_RACKS_BAD_DATA_OFFSET', `TCP data offset of ${dataOffset} bytes is below 20`);
  if (ihl + dataOffset > total)
    throw new PacketError('ERR_RACKS_BAD_DATA_OFFSET', `TCP header of ${dataOffset} bytes overruns the ${total - ihl} bytes of TCP`);
  return {
    src: formatIPv4(buf, 12),
    dst: formatIPv4(buf, 16),
    ipHeaderLength: ihl,
    totalLength: total,
    tos: buf[1],
    id: buf.readUInt16BE(4),
    dontFragment: (fragment & 0x4000) !== 0,
    ttl: buf[8],
    ipChecksum: buf.readUInt16BE(10),
    srcPort: buf.readUInt16BE(ihl),
    dstPort: buf.readUInt16BE(ihl + 2),
    seq: buf.readUInt32BE(ihl + 4),
    ack: buf.readUInt32BE(ihl + 8),
    tcpHeaderLength: dataOffset,
    flags: buf[ihl + 13],
    window: buf.readUInt16BE(ihl + 14),
    tcpChecksum: buf.readUInt16BE(ihl + 16),
    urgent: buf.readUInt16BE(ihl + 18),
    options: parseOptions(buf.subarray(ihl + TCP_MIN_HEADER, ihl + dataOffset)),
    payload: buf.subarray(ihl + dataOffset, total),
  };
}

/** What a packet from the TUN is, without throwing: the parsed TCP packet, or why it is not one. */
export function classify(buf: Buffer): { tcp: TcpPacket } | { error: PacketError } {
  try {
    return { tcp: parseTcpPacket(buf) };
  } catch (err) {
    if (err instanceof PacketError) return { error: err };
    throw err;
  }
}

// ---- building ----------------------------------------------------------------------------------

export interface TcpOptionsSpec {
  mss?: number;
  windowScale?: number;
  sackPermitted?: boolean;
  timestamp?: { value: number; echo: number };
}

/** Encodes options in the order Linux sends them on a SYN, padded with NOPs/EOL to a multiple of 4. */
export function encodeTcpOptions(spec: TcpOptionsSpec): Buffer {
  const bytes: number[] = [];
  if (spec.mss !== undefined) {
    checkRange('mss', spec.mss, 0xffff);
    bytes.push(2, 4, spec.mss >> 8, spec.mss & 0xff);
  }
  if (spec.sackPermitted) bytes.push(4, 2);
  if (spec.timestamp) {
    checkRange('timestamp value', spec.timestamp.value, 0xffffffff);
    checkRange('timestamp echo', spec.timestamp.echo, 0xffffffff);
    const ts = Buffer.alloc(8);
    ts.writeUInt32BE(spec.timestamp.value, 0);
    ts.writeUInt32BE(spec.timestamp.echo, 4);
    bytes.push(8, 10, ...ts);
  }
  if (spec.windowScale !== undefined) {
    checkRange('windowScale', spec.windowScale, 0xff);
    bytes.push(1, 3, 3, spec.windowScale);
  }
  while (bytes.length % 4 !== 0) bytes.push(0);
  return Buffer.from(bytes);
}

function checkRange(name: string, value: number, max: number): void {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new PacketError('ERR_RACKS_BAD_FIELD', `${name} must be an integer in 0..${max}, got ${value}`);
  }
}

export interface TcpPacketSpec {
  src: string;
  dst: string;
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  flags: number;
  window: number;
  /** Encoded options (a multiple of 4 bytes, at most 40) or a spec to encode. */
  options?: Buffer | TcpOptionsSpec;
  payload?: Buffer;
  ttl?: number;
  id?: number;
  tos?: number;
  dontFragment?: boolean;
  urgent?: number;
}

/** A complete IPv4/TCP packet with correct checksums. */
export function buildTcpPacket(spec: TcpPacketSpec): Buffer {
  const options = spec.options === undefined ? Buffer.alloc(0) : Buffer.isBuffer(spec.options) ? spec.options : encodeTcpOptions(spec.options);
  if (options.length % 4 !== 0 || options.length > 40) {
    throw new PacketError('ERR_RACKS_BAD_FIELD', `TCP options must be a multiple of 4 bytes and at most 40, got ${options.length}`);
  }
  const payload = spec.payload ?? Buffer.alloc(0);
  const tcpHeader = TCP_MIN_HEADER + options.length;
  const total = IPV4_MIN_HEADER + tcpHeader + payload.length;
  if (total > 0xffff) throw new PacketError('ERR_RACKS_BAD_FIELD', `packet of ${total} bytes exceeds 65535`);
  checkRange('srcPort', spec.srcPort, 0xffff);
  checkRange('dstPort', spec.dstPort, 0xffff);
  checkRange('seq', spec.seq, 0xffffffff);
  checkRange('ack', spec.ack, 0xffffffff);
  checkRange('flags', spec.flags, 0xff);
  checkRange('window', spec.window, 0xffff);
  checkRange('ttl', spec.ttl ?? 64, 0xff);
  checkRange('id', spec.id ?? 0, 0xffff);
  checkRange('tos', spec.tos ?? 0, 0xff);
  checkRange('urgent', spec.urgent ?? 0, 0xffff);
  const src = parseIPv4(spec.src);
  const dst = parseIPv4(spec.dst);

  const buf = Buffer.alloc(total);
  buf[0] = 0x45;
  buf[1] = spec.tos ?? 0;
  buf.writeUInt16BE(total, 2);
  buf.writeUInt16BE(spec.id ?? 0, 4);
  buf.writeUInt16BE(spec.dontFragment === false ? 0 : 0x4000, 6);
  buf[8] = spec.ttl ?? 64;
  buf[9] = IPPROTO_TCP;
  src.copy(buf, 12);
  dst.copy(buf, 16);
  const t = IPV4_MIN_HEADER;
  buf.writeUInt16BE(spec.srcPort, t);
  buf.writeUInt16BE(spec.dstPort, t + 2);
  buf.writeUInt32BE(spec.seq, t + 4);
  buf.writeUInt32BE(spec.ack, t + 8);
  buf[t + 12] = (tcpHeader / 4) << 4;
  buf[t + 13] = spec.flags;
  buf.writeUInt16BE(spec.window, t + 14);
  buf.writeUInt16BE(spec.urgent ?? 0, t + 18);
  options.copy(buf, t + TCP_MIN_HEADER);
  payload.copy(buf, t + tcpHeader);
  return fixChecksums(buf);
}

/** One end of a TCP connection. */
export interface Endpoint {
  address: string;
  port: number;
}

/**
 * A bare ACK "as if from the peer": source `from`, destination `to`, the
 * given sequence and acknowledgement numbers and raw (unscaled) window; no
 * options, no payload. With window 0 this is the zero-window ACK that holds
 * the local application's TCP while its path is down.
 */
export function buildAck(from: Endpoint, to: Endpoint, seq: number, ack: number, window: number, ttl = 64): Buffer {
  return buildTcpPacket({
    src: from.address,
    dst: to.address,
    srcPort: from.port,
    dstPort: to.port,
    seq,
    ack,
    flags: TcpFlags.ACK,
    window,
    ttl,
  });
}

// ---- rewriting ---------------------------------------------------------------------------------

export interface TcpRewrite {
  seq?: number;
  ack?: number;
  window?: number;
  flags?: number;
  ttl?: number;
}

/**
 * Changes header fields of a well-formed IPv4/TCP packet in place and keeps
 * both checksums right by updating them incrementally (RFC 1624), so a
 * rewrite costs the same whatever the payload's size. Returns buf.
 */
export function rewriteTcp(buf: Buffer, changes: TcpRewrite): Buffer {
  const { ihl } = tcpBounds(buf);
  const tcsum = ihl + 16;
  const setTcpWord = (offset: number, value: number): void => {
    const old = buf.readUInt16BE(offset);
    buf.writeUInt16BE(value, offset);
    buf.writeUInt16BE(adjustChecksum(buf.readUInt16BE(tcsum), old, value), tcsum);
  };
  if (changes.seq !== undefined) {
    checkRange('seq', changes.seq, 0xffffffff);
    setTcpWord(ihl + 4, changes.seq >>> 16);
    setTcpWord(ihl + 6, changes.seq & 0xffff);
  }
  if (changes.ack !== undefined) {
    checkRange('ack', changes.ack, 0xffffffff);
    setTcpWord(ihl + 8, changes.ack >>> 16);
    setTcpWord(ihl + 10, changes.ack & 0xffff);
  }
  if (changes.flags !== undefined) {
    checkRange('flags', changes.flags, 0xff);
    setTcpWord(ihl + 12, (buf[ihl + 12] << 8) | changes.flags);
  }
  if (changes.window !== undefined) {
    checkRange('window', changes.window, 0xffff);
    setTcpWord(ihl + 14, changes.window);
  }
  if (changes.ttl !== undefined) {
    checkRange('ttl', changes.ttl, 0xff);
    const old = buf.readUInt16BE(8);
    const now = (changes.ttl << 8) | buf[9];
    buf.writeUInt16BE(now, 8);
    buf.writeUInt16BE(adjustChecksum(buf.readUInt16BE(10), old, now), 10);
  }
  return buf;
}
