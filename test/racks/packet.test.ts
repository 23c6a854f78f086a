// packet.ts against packets the kernel really produced (read from a TUN:
// a SYN with MSS, SACK-permitted, timestamps and window scale, the ACK
// after the SYN-ACK that packet.ts forged and the kernel accepted, and a data
// segment), round trips of built packets, the incremental checksum update,
// and malformed input: every truncation, every bad field, random mutations.
// Nothing but PacketError may ever come out, and what parses is read from
// within the bytes given, at the right offsets (checkInBounds).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  buildAck,
  buildTcpPacket,
  classify,
  fixChecksums,
  ipv4HeaderChecksum,
  PacketError,
  parseIPv4,
  parseTcpPacket,
  rewriteTcp,
  tcpChecksum,
  TcpFlags,
  verifyChecksums,
  type PacketErrorCode,
  type TcpPacketSpec,
} from '../../src/racks/packet.js';

// Read from a TUN (10.99.0.1 → 10.99.0.2:5000) on Linux 6.18: the kernel computed these checksums.
const KERNEL = {
  syn: '4500003cc628400040065fcb0a6300010a630002adfa138899e1a0dc00000000a002faf036a00000020405b40402080a2ea8d6ba000000000103030a',
  ack: '45000034c629400040065fd20a6300010a630002adfa138899e1a0dd000003e98010003f5c2600000101080a2ea8d6bb00000001',
  data: '45000051c62a400040065fb40a6300010a630002adfa138899e1a0dd000003e98018003f915500000101080a2ea8d6bc0000000168656c6c6f207261636b732c2066726f6d20746865206b65726e656c21',
};
const kernel = Object.values(KERNEL).map((h) => Buffer.from(h, 'hex'));

function throwsCode(fn: () => unknown, code: PacketErrorCode): void {
  assert.throws(fn, (err: unknown) => err instanceof PacketError && err.code === code);
}

/** Applies `edit` to a copy of `hex`. */
function edited(hex: string, edit: (b: Buffer) => void): Buffer {
  const b = Buffer.from(hex, 'hex');
  edit(b);
  return b;
}

const rebuild = (raw: Buffer): Buffer => {
  const p = parseTcpPacket(raw);
  return buildTcpPacket({ ...p, options: p.options.raw, payload: p.payload });
};

/**
 * Parses `bytes` from inside a larger buffer whose bytes around them are all
 * SENTINEL, as a TUN read is a view of a bigger slab. When it parses, every
 * field must be what the bytes given say at its offset (read here from a
 * standalone copy, where a read past the end throws), the views must be
 * exactly the options and the payload, within the given bytes, and nothing
 * may contain the sentinel unless the given bytes do. Returns whether it parsed.
 */
const SENTINEL = 0xa5;
function checkInBounds(bytes: Buffer): boolean {
  const slab = Buffer.alloc(bytes.length + 64, SENTINEL);
  bytes.copy(slab, 32);
  const view = slab.subarray(32, 32 + bytes.length);
  const c = classify(view);
  if ('error' in c) {
    assert.ok(c.error instanceof PacketError);
    return false;
  }
  const p = c.tcp;
  const own = Buffer.from(bytes); // a buffer of its own: reading past its end throws
  const ihl = (own[0] & 0x0f) * 4;
  const total = own.readUInt16BE(2);
  const thl = (own[ihl + 12] >> 4) * 4;
  assert.ok(total <= own.length && ihl + thl <= total, `a packet of ${total} bytes (IP ${ihl}, TCP ${thl}) parsed from ${own.length} bytes`);
  assert.deepEqual(
    [
      p.ipHeaderLength,
      p.totalLength,
      p.tcpHeaderLength,
      p.srcPort,
      p.dstPort,
      p.seq,
      p.ack,
      p.flags,
      p.window,
      p.tcpChecksum,
      p.urgent,
      p.ttl,
      p.id,
      p.tos,
    ],
    [
      ihl,
      total,
      thl,
      own.readUInt16BE(ihl),
      own.readUInt16BE(ihl + 2),
      own.readUInt32BE(ihl + 4),
      own.readUInt32BE(ihl + 8),
      own[ihl + 13],
      own.readUInt16BE(ihl + 14),
      own.readUInt16BE(ihl + 16),
      own.readUInt16BE(ihl + 18),
      own[8],
      own.readUInt16BE(4),
      own[1],
    ],
  );
  assert.deepEqual([p.src, p.dst], [own.subarray(12, 16).join('.'), own.subarray(16, 20).join('.')]);
  for (const [name, part, start, end] of [
    ['payload', p.payload, ihl + thl, total],
    ['options', p.options.raw, ihl + 20, ihl + thl],
  ] as const) {
    assert.equal(part.buffer, slab.buffer, `${name} is a view`);
    assert.equal(part.byteOffset, view.byteOffset + start, `${name} starts at byte ${start}`);
    assert.equal(part.length, end - start, `${name} is ${end - start} bytes`);
    assert.deepEqual(part, own.subarray(start, end), name);
    if (!own.includes(SENTINEL)) assert.ok(!part.includes(SENTINEL), `${name} holds bytes from past the packet`);
  }
  return true;
}

describe('racks packet: kernel-made packets', () => {
  test("checksums verify and recompute to the kernel's values", () => {
    for (const raw of kernel) {
      assert.deepEqual(verifyChecksums(raw), { ip: true, tcp: true });
      assert.equal(ipv4HeaderChecksum(raw), raw.readUInt16BE(10));
      assert.equal(tcpChecksum(raw), raw.readUInt16BE(36));
    }
  });

  test('the SYN parses with its options', () => {
    const p = parseTcpPacket(kernel[0]);
    assert.equal(p.src, '10.99.0.1');
    assert.equal(p.dst, '10.99.0.2');
    assert.equal(p.dstPort, 5000);
    assert.equal(p.flags, TcpFlags.SYN);
    assert.equal(p.window, 64240);
    assert.equal(p.tcpHeaderLength, 40);
    assert.equal(p.dontFragment, true);
    assert.equal(p.options.mss, 1460);
    assert.equal(p.options.sackPermitted, true);
    assert.equal(p.options.windowScale, 10);
    assert.deepEqual(p.options.timestamp, { value: 0x2ea8d6ba, echo: 0 });
    assert.equal(p.payload.length, 0);
  });

  test('the data segment carries its payload as a view', () => {
    const p = parseTcpPacket(kernel[2]);
    assert.equal(p.payload.toString(), 'hello racks, from the kernel!');
    assert.equal(p.flags, TcpFlags.PSH | TcpFlags.ACK);
    assert.equal(p.ack, 1001);
    assert.equal(p.payload.buffer, kernel[2].buffer);
  });

  test('parse then build gives the same bytes', () => {
    for (const raw of kernel) assert.equal(rebuild(raw).toString('hex'), raw.toString('hex'));
  });
});

describe('racks packet: building', () => {
  test('a bare ACK as if from the peer, zero window', () => {
    const ack = buildAck({ address: '10.99.0.2', port: 5000 }, { address: '10.99.0.1', port: 44538 }, 1001, 0x99e1a0dd, 0);
    assert.deepEqual(verifyChecksums(ack), { ip: true, tcp: true });
    const p = parseTcpPacket(ack);
    assert.deepEqual([p.src, p.srcPort, p.dst, p.dstPort], ['10.99.0.2', 5000, '10.99.0.1', 44538]);
    assert.deepEqual([p.seq, p.ack, p.window, p.flags], [1001, 0x99e1a0dd, 0, TcpFlags.ACK]);
    assert.equal(ack.length, 40);
    assert.equal(p.payload.length, 0);
  });

  const specArb: fc.Arbitrary<TcpPacketSpec> = fc.record({
    src: fc.ipV4(),
    dst: fc.ipV4(),
    srcPort: fc.integer({ min: 0, max: 0xffff }),
    dstPort: fc.integer({ min: 0, max: 0xffff }),
    seq: fc.nat({ max: 0xffffffff }),
    ack: fc.nat({ max: 0xffffffff }),
    flags: fc.integer({ min: 0, max: 0xff }),
    window: fc.integer({ min: 0, max: 0xffff }),
    options: fc.record({
      mss: fc.option(fc.integer({ min: 0, max: 0xffff }), { nil: undefined }),
      windowScale: fc.option(fc.integer({ min: 0, max: 14 }), { nil: undefined }),
      sackPermitted: fc.boolean(),
      timestamp: fc.option(fc.record({ value: fc.nat({ max: 0xffffffff }), echo: fc.nat({ max: 0xffffffff }) }), { nil: undefined }),
    }),
    payload: fc.uint8Array({ maxLength: 1500 }).map((a) => Buffer.from(a)),
    ttl: fc.integer({ min: 0, max: 255 }),
    id: fc.integer({ min: 0, max: 0xffff }),
  });

  test('build → parse round trip, checksums right (property)', () => {
    fc.assert(
      fc.property(specArb, (spec) => {
        const buf = buildTcpPacket(spec);
        assert.deepEqual(verifyChecksums(buf), { ip: true, tcp: true });
        const p = parseTcpPacket(buf);
        for (const key of ['src', 'dst', 'srcPort', 'dstPort', 'seq', 'ack', 'flags', 'window', 'ttl', 'id'] as const)
          assert.equal(p[key], spec[key], key);
        const o = spec.options as { mss?: number; windowScale?: number; sackPermitted: boolean; timestamp?: { value: number; echo: number } };
        assert.equal(p.options.mss, o.mss);
        assert.equal(p.options.windowScale, o.windowScale);
        assert.equal(p.options.sackPermitted, o.sackPermitted);
        assert.deepEqual(p.options.timestamp, o.timestamp && { value: o.timestamp.value, echo: o.timestamp.echo }); // fast-check's records have no prototype
        assert.deepEqual(p.payload, spec.payload);
        assert.equal(rebuild(buf).toString('hex'), buf.toString('hex'));
      }),
      { numRuns: 300 },
    );
  });

  test('rewriteTcp keeps checksums right incrementally (property)', () => {
    const changes = fc.record(
      {
        seq: fc.nat({ max: 0xffffffff }),
        ack: fc.nat({ max: 0xffffffff }),
        window: fc.integer({ min: 0, max: 0xffff }),
        flags: fc.integer({ min: 0, max: 0xff }),
        ttl: fc.integer({ min: 0, max: 0xff }),
      },
      { requiredKeys: [] },
    );
    fc.assert(
      fc.property(specArb, changes, (spec, change) => {
        const buf = rewriteTcp(buildTcpPacket(spec), change);
        assert.deepEqual(verifyChecksums(buf), { ip: true, tcp: true });
        const p = parseTcpPacket(buf);
        for (const [key, value] of Object.entries(change)) assert.equal(p[key as keyof typeof change], value, key);
        assert.deepEqual(verifyChecksums(fixChecksums(Buffer.from(buf))), { ip: true, tcp: true });
      }),
      { numRuns: 300 },
    );
  });

  test('a wrong checksum is seen', () => {
    for (const raw of kernel) {
      assert.deepEqual(verifyChecksums(edited(raw.toString('hex'), (b) => (b[10] ^= 1))), { ip: false, tcp: true });
      assert.deepEqual(verifyChecksums(edited(raw.toString('hex'), (b) => (b[b.length - 1] ^= 0x40))), { ip: true, tcp: false });
    }
  });

  test('bad values are refused with clear errors', () => {
    const base: TcpPacketSpec = { src: '10.0.0.1', dst: '10.0.0.2', srcPort: 1, dstPort: 2, seq: 0, ack: 0, flags: 0, window: 0 };
    throwsCode(() => buildTcpPacket({ ...base, src: '10.0.0' }), 'ERR_RACKS_BAD_FIELD');
    throwsCode(() => buildTcpPacket({ ...base, dst: '10.0.0.256' }), 'ERR_RACKS_BAD_FIELD');
    throwsCode(() => buildTcpPacket({ ...base, srcPort: 65536 }), 'ERR_RACKS_BAD_FIELD');
    throwsCode(() => buildTcpPacket({ ...base, seq: -1 }), 'ERR_RACKS_BAD_FIELD');
    throwsCode(() => buildTcpPacket({ ...base, window: 1.5 }), 'ERR_RACKS_BAD_FIELD');
    throwsCode(() => buildTcpPacket({ ...base, options: Buffer.alloc(3) }), 'ERR_RACKS_BAD_FIELD');
    throwsCode(() => buildTcpPacket({ ...base, options: Buffer.alloc(44) }), 'ERR_RACKS_BAD_FIELD');
    throwsCode(() => buildTcpPacket({ ...base, payload: Buffer.alloc(65536) }), 'ERR_RACKS_BAD_FIELD');
    throwsCode(() => parseIPv4('::1'), 'ERR_RACKS_BAD_FIELD');
    throwsCode(() => rewriteTcp(Buffer.from(kernel[0]), { window: 70000 }), 'ERR_RACKS_BAD_FIELD');
  });
});

describe('racks packet: malformed input', () => {
  test('truncation at every length is ERR_RACKS_TRUNCATED', () => {
    for (const raw of kernel) {
      for (let n = 0; n < raw.length; n++) {
        const cut = raw.subarray(0, n);
        throwsCode(() => parseTcpPacket(cut), 'ERR_RACKS_TRUNCATED');
        throwsCode(() => verifyChecksums(cut), 'ERR_RACKS_TRUNCATED');
        throwsCode(() => rewriteTcp(Buffer.from(cut), { window: 0 }), 'ERR_RACKS_TRUNCATED');
      }
    }
  });

  test('a shorter total length than the buffer ignores the rest (TUN reads are exact, but padding is harmless)', () => {
    const padded = Buffer.concat([kernel[2], Buffer.alloc(7, 0xee)]);
    assert.equal(parseTcpPacket(padded).payload.toString(), 'hello racks, from the kernel!');
    assert.deepEqual(verifyChecksums(padded), { ip: true, tcp: true });
  });

  test('each bad field has its code', () => {
    const { syn, data } = KERNEL;
    const cases: [string, Buffer, PacketErrorCode][] = [
      ['IPv6', edited(syn, (b) => (b[0] = 0x60)), 'ERR_RACKS_NOT_IPV4'],
      ['version 0', edited(syn, (b) => (b[0] = 0x05)), 'ERR_RACKS_NOT_IPV4'],
      ['IHL 4', edited(syn, (b) => (b[0] = 0x44)), 'ERR_RACKS_BAD_IHL'],
      ['IHL 0', edited(syn, (b) => (b[0] = 0x40)), 'ERR_RACKS_BAD_IHL'],
      ['IHL 15, TCP gone', edited(syn, (b) => (b[0] = 0x4f)), 'ERR_RACKS_TRUNCATED'],
      ['total length 19', edited(syn, (b) => b.writeUInt16BE(19, 2)), 'ERR_RACKS_BAD_LENGTH'],
      ['total length past the buffer', edited(syn, (b) => b.writeUInt16BE(61, 2)), 'ERR_RACKS_TRUNCATED'],
      ['total length leaves 19 bytes of TCP', edited(syn, (b) => b.writeUInt16BE(39, 2)), 'ERR_RACKS_TRUNCATED'],
      ['UDP', edited(syn, (b) => (b[9] = 17)), 'ERR_RACKS_NOT_TCP'],
      ['more fragments', edited(syn, (b) => (b[6] |= 0x20)), 'ERR_RACKS_FRAGMENT'],
      ['fragment offset', edited(syn, (b) => b.writeUInt16BE(0x0001, 6)), 'ERR_RACKS_FRAGMENT'],
      ['data offset 4', edited(syn, (b) => (b[32] = 0x40)), 'ERR_RACKS_BAD_DATA_OFFSET'],
      ['data offset 15 past the segment', edited(syn, (b) => (b[32] = 0xf0)), 'ERR_RACKS_BAD_DATA_OFFSET'],
      ['MSS of length 3', edited(syn, (b) => (b[41] = 3)), 'ERR_RACKS_BAD_OPTION'],
      ['option length 0', edited(syn, (b) => (b[41] = 0)), 'ERR_RACKS_BAD_OPTION'],
      ['option past the header', edited(syn, (b) => (b[41] = 30)), 'ERR_RACKS_BAD_OPTION'],
      ['window scale of length 4', edited(syn, (b) => (b[57] = 4)), 'ERR_RACKS_BAD_OPTION'],
      ['option kind with no length byte', edited(data, (b) => b.fill(1, 40, 51).writeUInt8(9, 51)), 'ERR_RACKS_BAD_OPTION'],
      ['empty', Buffer.alloc(0), 'ERR_RACKS_TRUNCATED'],
    ];
    for (const [name, buf, code] of cases) {
      assert.throws(
        () => parseTcpPacket(buf),
        (err: unknown) => err instanceof PacketError && err.code === code,
        name,
      );
      const c = classify(buf);
      assert.ok('error' in c && c.error.code === code, name);
    }
  });

  test('random mutations: only PacketError, never a read out of bounds (property)', () => {
    const mutation = fc.record({
      which: fc.integer({ min: 0, max: kernel.length - 1 }),
      edits: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }),
      cut: fc.nat(),
    });
    let parsed = 0;
    fc.assert(
      fc.property(mutation, ({ which, edits, cut }) => {
        const buf = Buffer.from(kernel[which]);
        for (const [at, value] of edits) buf[at % buf.length] = value;
        const b = buf.subarray(0, buf.length - (cut % 4 === 0 ? cut % buf.length : 0));
        const onlyPacketErrors = <T>(fn: () => T): T | undefined => {
          try {
            return fn();
          } catch (err) {
            if (!(err instanceof PacketError)) throw err;
            return undefined;
          }
        };
        onlyPacketErrors(() => parseTcpPacket(b));
        const before = onlyPacketErrors(() => verifyChecksums(b));
        const rewritten = onlyPacketErrors(() => rewriteTcp(Buffer.from(b), { window: 1, seq: 2 }));
        // A rewrite keeps a right TCP checksum right, whatever else is odd about the packet.
        if (before?.tcp && rewritten) assert.equal(verifyChecksums(rewritten).tcp, true);
        if (checkInBounds(b)) parsed++;
      }),
      { numRuns: 2000 },
    );
    assert.ok(parsed > 200, `only ${parsed} of 2000 mutated packets parsed: the property checked too little`);
  });

  test('random bytes: only PacketError; what parses lies within the bytes given, exactly (property)', () => {
    const input = fc.record({
      bytes: fc.uint8Array({ minLength: 1, maxLength: 80, size: 'max' }),
      short: fc.nat({ max: 8 }),
      whole: fc.boolean(),
      bareTcp: fc.boolean(),
    });
    let parsed = 0;
    fc.assert(
      fc.property(input, ({ bytes, short, whole, bareTcp }) => {
        const b = Buffer.from(bytes);
        b[0] = 0x45 + (b[0] & 0x0a); // mostly IPv4 with small IHLs, to get past the first check
        if (b.length > 9) b[9] = 6;
        if (b.length > 7) b.writeUInt16BE(b.readUInt16BE(6) & 0x4000, 6); // not a fragment
        // A total length that fits, or lies by claiming up to 8 bytes past the end.
        if (b.length > 3) b.writeUInt16BE(whole ? b.length : Math.max(0, b.length - 8 + short * 2), 2);
        // Half the time a TCP header without options, so that more of them parse.
        const ihl = (b[0] & 0x0f) * 4;
        if (bareTcp && b.length > ihl + 12) b[ihl + 12] = 0x50 | (b[ihl + 12] & 0x0f);
        if (checkInBounds(b)) parsed++;
      }),
      { numRuns: 2000 },
    );
    assert.ok(parsed > 100, `only ${parsed} of 2000 random packets parsed: the property checked too little`);
  });
});
