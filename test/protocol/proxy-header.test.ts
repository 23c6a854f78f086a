// PROXY protocol v2 headers (src/protocol/proxy-header.ts): the spec's
// layout byte for byte, round trips for IPv4, IPv6 and IPv4-mapped
// addresses, every way a header can be refused, byte-by-byte feeding, and
// the real haproxy writing headers for us to read and reading ours.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { encodeAnnouncement, ROCKS } from '../../src/edp/announcement.js';
import {
  DEFAULT_MAX_PROXY_BODY,
  encodeLocalProxyHeader,
  encodeProxyHeader,
  ipBytes,
  ipText,
  PROXY_SIGNATURE,
  parseProxyHeader,
  type ProxyHeaderInput,
  type ProxyHeaderParse,
} from '../../src/protocol/proxy-header.js';
import { until } from '../support/helpers.js';
import { freePort, programs, start, waitForPort } from '../support/programs.js';

/** Bytes from hex text; '#' starts a comment to the end of the line. */
const hex = (text: string): Buffer => Buffer.from(text.replace(/#.*$/gm, '').replace(/\s+/g, ''), 'hex');

/** The header part of a parse, for comparing against what was encoded. */
function header(result: ProxyHeaderParse) {
  assert.equal(result.kind, 'header', `expected a header, got ${JSON.stringify(result)}`);
  return result as Extract<ProxyHeaderParse, { kind: 'header' }>;
}

function malformed(bytes: Buffer, pattern: RegExp): void {
  const result = parseProxyHeader(bytes);
  assert.equal(result.kind, 'malformed', `expected malformed, got ${JSON.stringify(result)}`);
  assert.match((result as { reason: string }).reason, pattern);
}

/** A header's fixed 16 bytes with the given version/command, family/transport and length, then `body`. */
function raw(verCmd: number, famTransport: number, body: Buffer, length = body.length): Buffer {
  const fixed = Buffer.alloc(16);
  PROXY_SIGNATURE.copy(fixed);
  fixed[12] = verCmd;
  fixed[13] = famTransport;
  fixed.writeUInt16BE(length, 14);
  return Buffer.concat([fixed, body]);
}

describe('PROXY v2: the spec layout', () => {
  test('TCP over IPv4, 192.168.0.1:56324 -> 192.168.0.11:443, written byte for byte as the spec lays it out', () => {
    const expected = hex(`
      0d0a0d0a 000d0a51 5549540a # signature
      21                          # version 2, command PROXY
      11                          # INET, STREAM
      000c                        # 12 bytes follow
      c0a80001 c0a8000b           # source, destination
      dc04 01bb                   # ports 56324, 443`);
    const bytes = encodeProxyHeader({ source: { address: '192.168.0.1', port: 56324 }, destination: { address: '192.168.0.11', port: 443 } });
    assert.deepEqual(bytes, expected);
    assert.deepEqual(parseProxyHeader(expected), {
      kind: 'header',
      length: 28,
      command: 'proxy',
      source: { address: '192.168.0.1', port: 56324 },
      destination: { address: '192.168.0.11', port: 443 },
      tlvs: [],
    });
  });

  test('TCP over IPv6 (0x21), 52 bytes; LOCAL with UNSPEC (0x20 0x00), 16 bytes', () => {
    const bytes = encodeProxyHeader({ source: { address: '2001:db8::1', port: 1 }, destination: { address: '::1', port: 2 } });
    assert.deepEqual(
      bytes,
      hex(`0d0a0d0a000d0a515549540a 21 21 0024
           20010db8000000000000000000000001 00000000000000000000000000000001 0001 0002`),
    );
    assert.deepEqual(encodeLocalProxyHeader(), hex('0d0a0d0a000d0a515549540a 20 00 0000'));
    assert.deepEqual(parseProxyHeader(encodeLocalProxyHeader()), { kind: 'header', length: 16, command: 'local', tlvs: [] });
  });
});

describe('PROXY v2: round trips', () => {
  const cases: [string, ProxyHeaderInput, number, ProxyHeaderInput['source'], ProxyHeaderInput['destination']][] = [
    ['IPv4', { source: { address: '10.1.2.3', port: 40000 }, destination: { address: '10.9.8.7', port: 7000 } }, 28, undefined!, undefined!],
    ['IPv6', { source: { address: '2001:db8::1:0:0:1', port: 65535 }, destination: { address: 'fe80::abcd', port: 0 } }, 52, undefined!, undefined!],
    [
      'IPv4-mapped IPv6 on both sides: written as IPv4',
      { source: { address: '::ffff:192.0.2.5', port: 5 }, destination: { address: '::FFFF:198.51.100.6', port: 6 } },
      28,
      { address: '192.0.2.5', port: 5 },
      { address: '198.51.100.6', port: 6 },
    ],
    [
      'IPv4 to IPv6: IPv6, the IPv4 side mapped',
      { source: { address: '192.0.2.5', port: 5 }, destination: { address: '2001:db8::6', port: 6 } },
      52,
      { address: '::ffff:192.0.2.5', port: 5 },
      { address: '2001:db8::6', port: 6 },
    ],
    [
      'uppercase, expanded and zoned IPv6 text comes back as Node writes it',
      { source: { address: '2001:DB8:0000:0000:0000:0000:0000:00AA', port: 1 }, destination: { address: 'fe80::1%eth0', port: 2 } },
      52,
      { address: '2001:db8::aa', port: 1 },
      { address: 'fe80::1', port: 2 },
    ],
  ];
  for (const [name, input, length, source, destination] of cases) {
    test(name, () => {
      const bytes = encodeProxyHeader(input);
      assert.equal(bytes.length, length);
      const parsed = header(parseProxyHeader(Buffer.concat([bytes, Buffer.from('payload')])));
      assert.equal(parsed.length, length, 'the length covers the header, not what follows');
      assert.equal(parsed.command, 'proxy');
      assert.deepEqual(parsed.source, source ?? input.source);
      assert.deepEqual(parsed.destination, destination ?? input.destination);
    });
  }

  test('TLVs travel after the addresses, in order, empty ones too', () => {
    const tlvs = [
      { type: 0x02, value: Buffer.from('example.com') },
      { type: 0xe0, value: Buffer.alloc(0) },
      { type: 0xe1, value: Buffer.from([1, 2, 3]) },
    ];
    const bytes = encodeProxyHeader({ source: { address: '1.2.3.4', port: 1 }, destination: { address: '5.6.7.8', port: 2 }, tlvs });
    assert.equal(bytes.readUInt16BE(14), 12 + 3 * 3 + 11 + 0 + 3);
    assert.deepEqual(header(parseProxyHeader(bytes)).tlvs, tlvs);
    assert.deepEqual(header(parseProxyHeader(encodeLocalProxyHeader(tlvs))).tlvs, tlvs);
  });

  test('any IPv4 or IPv6 address and port survives encode then parse (fast-check)', () => {
    const v4 = fc.uint8Array({ minLength: 4, maxLength: 4 });
    const v6 = fc.uint8Array({ minLength: 16, maxLength: 16 });
    const end = fc.record({ ip: fc.oneof(v4, v6), port: fc.integer({ min: 0, max: 65535 }) });
    fc.assert(
      fc.property(end, end, (s, d) => {
        const src = { address: ipText(Buffer.from(s.ip)), port: s.port };
        const dst = { address: ipText(Buffer.from(d.ip)), port: d.port };
        const parsed = header(parseProxyHeader(encodeProxyHeader({ source: src, destination: dst })));
        // The bytes come back (mapped IPv4 as its 4 bytes, and as IPv6 again when the other side needs it).
        const sameIp = (a: string, b: string) => assert.deepEqual(ipBytes(a), ipBytes(b));
        sameIp(parsed.source!.address, src.address);
        sameIp(parsed.destination!.address, dst.address);
        assert.equal(parsed.source!.port, s.port);
        assert.equal(parsed.destination!.port, d.port);
      }),
      { numRuns: 2000 },
    );
  });

  test('ipText writes IPv6 as Node does (inet_ntop), ipBytes reads it back', () => {
    const cases: [string, string][] = [
      ['00000000000000000000000000000001', '::1'],
      ['00000000000000000000000000000000', '::'],
      ['00000000000000000000ffffc0000205', '::ffff:192.0.2.5'],
      ['20010db8000000010000000000000001', '2001:db8:0:1::1'],
      ['20010db8000000000001000000000001', '2001:db8::1:0:0:1'],
      ['fe800000000000000000000000000000', 'fe80::'],
    ];
    for (const [bytes, text] of cases) {
      assert.equal(ipText(hex(bytes)), text);
      const back = ipBytes(text);
      assert.deepEqual(back, text.startsWith('::ffff:') ? hex(bytes).subarray(12) : hex(bytes));
    }
  });

  test('encode refuses what is not an IP address, a bad port or oversized TLVs', () => {
    const ok = { address: '1.2.3.4', port: 1 };
    for (const address of ['localhost', '1.2.3', '1.2.3.256', '01.2.3.4', '', '::g', '2001:db8::1::1']) {
      assert.throws(() => encodeProxyHeader({ source: { address, port: 1 }, destination: ok }), /is not an IP address/, address);
    }
    for (const port of [-1, 65536, 1.5, Number.NaN]) {
      assert.throws(() => encodeProxyHeader({ source: ok, destination: { address: '1.2.3.4', port } }), /port .* is not 0-65535/, String(port));
    }
    assert.throws(() => encodeProxyHeader({ source: ok, destination: ok, tlvs: [{ type: 256, value: Buffer.alloc(0) }] }), /not a byte/);
    assert.throws(() => encodeProxyHeader({ source: ok, destination: ok, tlvs: [{ type: 1, value: Buffer.alloc(65536) }] }), /at most 65535/);
    const big = { type: 1, value: Buffer.alloc(40000) };
    assert.throws(() => encodeProxyHeader({ source: ok, destination: ok, tlvs: [big, big] }), /bytes of addresses and TLVs/);
  });
});

describe('PROXY v2: links without a header', () => {
  test('a rocks client, an HTTP client or TLS is told apart by its first byte', () => {
    for (const first of [encodeAnnouncement([ROCKS]), Buffer.from('GET / HTTP/1.1\r\n'), Buffer.from([0x16, 0x03, 0x01])]) {
      assert.deepEqual(parseProxyHeader(first.subarray(0, 1)), { kind: 'none' });
      assert.deepEqual(parseProxyHeader(first), { kind: 'none' });
    }
  });

  test('nothing yet, or a prefix of the signature, is incomplete; the first differing byte makes it none', () => {
    assert.deepEqual(parseProxyHeader(Buffer.alloc(0)), { kind: 'incomplete' });
    for (let n = 1; n <= PROXY_SIGNATURE.length; n++) {
      assert.deepEqual(parseProxyHeader(PROXY_SIGNATURE.subarray(0, n)), { kind: 'incomplete' }, `${n} bytes of the signature`);
      const differs = Buffer.from(PROXY_SIGNATURE.subarray(0, n));
      differs[n - 1] ^= 0x20;
      assert.deepEqual(parseProxyHeader(differs), { kind: 'none' }, `signature byte ${n - 1} differs`);
    }
    // A text protocol's blank line starts like the signature, then differs.
    assert.deepEqual(parseProxyHeader(Buffer.from('\r\n\r\nHELLO')), { kind: 'none' });
  });
});

describe('PROXY v2: malformed headers, each refused as soon as the bytes show it', () => {
  const v4Body = Buffer.alloc(12);
  test('version other than 2 (v1 header bytes, 0x1_, 0x3_), decided at byte 13', () => {
    malformed(Buffer.concat([PROXY_SIGNATURE, Buffer.from([0x11])]), /version 1/);
    malformed(Buffer.concat([PROXY_SIGNATURE, Buffer.from([0x31])]), /version 3/);
    malformed(Buffer.concat([PROXY_SIGNATURE, Buffer.from([0x01])]), /version 0/);
    // A v1 (text) header does not even start with the v2 signature.
    assert.deepEqual(parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n')), { kind: 'none' });
  });

  test('unknown command (2..15), decided at byte 13', () => {
    for (let command = 2; command <= 15; command++)
      malformed(Buffer.concat([PROXY_SIGNATURE, Buffer.from([0x20 | command])]), /unknown PROXY command/);
  });

  test('unknown family (4..15) or transport (3..15), decided at byte 14', () => {
    malformed(Buffer.concat([PROXY_SIGNATURE, Buffer.from([0x21, 0x41])]), /address family 4/);
    malformed(Buffer.concat([PROXY_SIGNATURE, Buffer.from([0x21, 0xf1])]), /address family 15/);
    malformed(Buffer.concat([PROXY_SIGNATURE, Buffer.from([0x21, 0x13])]), /transport 3/);
  });

  test(`a length over the cap (${DEFAULT_MAX_PROXY_BODY} by default) is refused at byte 16, before any body arrives`, () => {
    malformed(raw(0x21, 0x11, Buffer.alloc(0), DEFAULT_MAX_PROXY_BODY + 1), /513 bytes .*\(at most 512\)/);
    malformed(raw(0x21, 0x11, Buffer.alloc(0), 0xffff), /at most 512/);
    assert.equal(parseProxyHeader(raw(0x21, 0x11, Buffer.alloc(0), DEFAULT_MAX_PROXY_BODY)).kind, 'incomplete');
    const big = raw(0x21, 0x11, Buffer.concat([v4Body, Buffer.from([0xe0, 0x03, 0x00]), Buffer.alloc(768)]));
    assert.equal(parseProxyHeader(big).kind, 'malformed');
    assert.equal(parseProxyHeader(big, { maxBody: 1024 }).kind, 'header');
  });

  test('a length too short for the addresses of its family, refused at byte 16', () => {
    malformed(raw(0x21, 0x11, Buffer.alloc(0), 11), /too short .*\(11 bytes, family 1 needs 12\)/);
    malformed(raw(0x21, 0x21, Buffer.alloc(0), 35), /family 2 needs 36/);
    malformed(raw(0x21, 0x31, Buffer.alloc(0), 215), /family 3 needs 216/);
    malformed(raw(0x20, 0x11, Buffer.alloc(0), 4), /too short/);
  });

  test('TLVs that do not fit the length', () => {
    malformed(raw(0x21, 0x11, Buffer.concat([v4Body, Buffer.from([0xe0, 0x00])])), /ends inside a TLV header/);
    malformed(
      raw(0x21, 0x11, Buffer.concat([v4Body, Buffer.from([0xe0, 0x00, 0x05, 1, 2, 3, 4])])),
      /TLV 224 of 5 bytes overruns the header \(4 left\)/,
    );
  });

  test('families rocks does not carry parse as a header without addresses (UNSPEC, UNIX, UDP)', () => {
    assert.deepEqual(parseProxyHeader(raw(0x21, 0x00, Buffer.alloc(0))), { kind: 'header', length: 16, command: 'proxy', tlvs: [] });
    assert.deepEqual(parseProxyHeader(raw(0x21, 0x31, Buffer.alloc(216))), { kind: 'header', length: 232, command: 'proxy', tlvs: [] });
    assert.deepEqual(parseProxyHeader(raw(0x21, 0x12, v4Body)), { kind: 'header', length: 28, command: 'proxy', tlvs: [] });
    // LOCAL ignores its addresses, whatever the family.
    assert.deepEqual(parseProxyHeader(raw(0x20, 0x11, v4Body)), { kind: 'header', length: 28, command: 'local', tlvs: [] });
  });

  test('random bytes after the signature never throw, and a verdict never changes as more bytes arrive (fast-check)', () => {
    const afterSignature = fc.uint8Array({ maxLength: 80 }).map((b) => Buffer.concat([PROXY_SIGNATURE, Buffer.from(b)]));
    fc.assert(
      fc.property(afterSignature, (bytes) => {
        let verdict: ProxyHeaderParse | undefined;
        for (let n = 0; n <= bytes.length; n++) {
          const result = parseProxyHeader(bytes.subarray(0, n), { maxBody: 64 });
          if (verdict !== undefined) assert.deepEqual(result, verdict, `${n} bytes`);
          else if (result.kind !== 'incomplete') verdict = result;
        }
      }),
      { numRuns: 3000 },
    );
  });
});

describe('PROXY v2: fed byte by byte', () => {
  const inputs: [string, Buffer][] = [
    ['IPv4', encodeProxyHeader({ source: { address: '10.0.0.1', port: 1234 }, destination: { address: '10.0.0.2', port: 443 } })],
    [
      'IPv6 with a TLV',
      encodeProxyHeader({
        source: { address: '2001:db8::1', port: 1 },
        destination: { address: '2001:db8::2', port: 2 },
        tlvs: [{ type: 0xe0, value: Buffer.from('relay') }],
      }),
    ],
    ['LOCAL', encodeLocalProxyHeader()],
  ];
  for (const [name, bytes] of inputs) {
    test(`${name}: incomplete until the last byte, then the same header; the link's own bytes after it are left alone`, () => {
      const whole = parseProxyHeader(bytes);
      assert.equal(whole.kind, 'header');
      for (let n = 0; n < bytes.length; n++) assert.deepEqual(parseProxyHeader(bytes.subarray(0, n)), { kind: 'incomplete' }, `${n} bytes`);
      const withPayload = Buffer.concat([bytes, encodeAnnouncement([ROCKS])]);
      for (let n = bytes.length; n <= withPayload.length; n++) assert.deepEqual(parseProxyHeader(withPayload.subarray(0, n)), whole, `${n} bytes`);
    });
  }
});

// The real haproxy on both ends: as a relay that writes headers (send-proxy-v2)
// for connections it accepts, and as a receiver of ours (accept-proxy) that
// passes the client's address it read on to the next hop in its own header.
describe('PROXY v2 against the real haproxy', () => {
  const found = programs('haproxy');

  /** A TCP server that parses the PROXY header at the start of each connection and reports it. */
  async function headerReader(): Promise<{ server: Server; port: number; next: () => Promise<ProxyHeaderParse> }> {
    const results: ProxyHeaderParse[] = [];
    const server = createServer((socket: Socket) => {
      let bytes = Buffer.alloc(0);
      socket.on('data', (d: Buffer) => {
        bytes = Buffer.concat([bytes, d]);
        const result = parseProxyHeader(bytes);
        if (result.kind === 'incomplete') return;
        results.push(result);
        socket.end();
      });
      socket.on('error', () => {});
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as { port: number }).port;
    return {
      server,
      port,
      next: async () => {
        await until(() => results.length > 0, 5000, 'a connection from haproxy');
        return results.shift()!;
      },
    };
  }

  test('haproxy send-proxy-v2 headers parse to the real client; ours pass through accept-proxy unchanged', {
    skip: found.skip,
    timeout: 20_000,
  }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rocks-haproxy-'));
    const reader = await headerReader();
    const [plainPort, acceptingPort] = [await freePort(), await freePort()];
    const config = join(dir, 'haproxy.cfg');
    writeFileSync(
      config,
      [
        'defaults',
        '  mode tcp',
        '  timeout connect 2s',
        '  timeout client 10s',
        '  timeout server 10s',
        'frontend plain',
        `  bind 127.0.0.1:${plainPort}`,
        '  default_backend reader',
        'frontend accepting',
        `  bind 127.0.0.1:${acceptingPort} accept-proxy`,
        '  default_backend reader',
        'backend reader',
        `  server reader 127.0.0.1:${reader.port} send-proxy-v2`,
        '',
      ].join('\n'),
    );
    const haproxy = start(found.paths.haproxy, ['-db', '-f', config]);
    try {
      await waitForPort(plainPort, '127.0.0.1', 10_000, haproxy);
      await waitForPort(acceptingPort, '127.0.0.1', 10_000, haproxy);
      // What `first` and 'hello' sent through haproxy's `port` came out as; `sourcePort` picks our
      // connection out of the probes waitForPort made (haproxy relays those to the reader too).
      const sendThrough = async (port: number, first: Buffer, sourcePort?: number): Promise<{ localPort: number; result: ProxyHeaderParse }> => {
        const client = connect(port, '127.0.0.1');
        await once(client, 'connect');
        const localPort = client.localPort!;
        client.on('error', () => {});
        client.on('data', () => {});
        client.write(Buffer.concat([first, Buffer.from('hello')]));
        let result: ProxyHeaderParse;
        do result = await reader.next();
        while (result.kind === 'header' && result.source?.port !== (sourcePort ?? localPort));
        client.destroy();
        return { localPort, result };
      };

      const plain = await sendThrough(plainPort, Buffer.alloc(0));
      const fromHaproxy = header(plain.result);
      assert.equal(fromHaproxy.command, 'proxy');
      assert.deepEqual(fromHaproxy.source, { address: '127.0.0.1', port: plain.localPort });
      assert.deepEqual(fromHaproxy.destination, { address: '127.0.0.1', port: plainPort });
      console.log(`# haproxy wrote a ${fromHaproxy.length}-byte header, TLVs ${JSON.stringify(fromHaproxy.tlvs.map((t) => t.type))}`);

      for (const input of [
        { source: { address: '203.0.113.7', port: 4242 }, destination: { address: '198.51.100.1', port: 443 } },
        { source: { address: '2001:db8::7', port: 4243 }, destination: { address: '2001:db8::1', port: 8443 } },
        { source: { address: '::ffff:203.0.113.8', port: 4244 }, destination: { address: '2001:db8::1', port: 8443 } },
      ]) {
        const ours = encodeProxyHeader(input);
        const passed = header((await sendThrough(acceptingPort, ours, input.source.port)).result);
        // haproxy read our header (else it would have dropped the connection) and speaks for that client now.
        assert.deepEqual(ipBytes(passed.source!.address), ipBytes(input.source.address), JSON.stringify(passed));
        assert.equal(passed.source!.port, input.source.port);
        assert.deepEqual(ipBytes(passed.destination!.address), ipBytes(input.destination.address));
        assert.equal(passed.destination!.port, input.destination.port);
      }
      assert.equal(haproxy.exited, undefined, `haproxy still runs:\n${haproxy.output}`);
    } finally {
      await haproxy.stop();
      reader.server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
