// netfilter.ts without the kernel: protect specs are parsed or refused with
// a message saying what is wrong, and the generated nftables script marks
// both directions of exactly the specs' connections. (Installing it for real
// is test/racks/datapath.test.ts.)

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { formatSpec, parseSpec, ruleset, SpecError } from '../../src/racks/netfilter.js';

describe('racks netfilter: protect specs', () => {
  test('good specs parse and format back', () => {
    assert.deepEqual(parseSpec('tcp:22'), { protocol: 'tcp', port: 22 });
    assert.deepEqual(parseSpec('tcp:5432@10.0.0.0/24'), { protocol: 'tcp', port: 5432, network: { address: '10.0.0.0', prefix: 24 } });
    assert.deepEqual(parseSpec('TCP:22@10.2.2.2'), { protocol: 'tcp', port: 22, network: { address: '10.2.2.2', prefix: 32 } });
    for (const s of ['tcp:22', 'tcp:65535@0.0.0.0/0', 'tcp:1@10.2.2.2', 'tcp:5432@10.0.0.0/24']) assert.equal(formatSpec(parseSpec(s)), s);
  });

  test('bad specs say what is wrong', () => {
    const cases: [string, RegExp][] = [
      ['22', /no protocol/],
      ['udp:53', /only tcp/],
      ['tcp:', /port "" is not a number/],
      ['tcp:ssh', /port "ssh" is not a number/],
      ['tcp:0', /outside 1\.\.65535/],
      ['tcp:65536', /outside 1\.\.65535/],
      ['tcp:22@', /nothing after "@"/],
      ['tcp:22@example.com', /not an IPv4 address \(host names are not resolved\)/],
      ['tcp:22@10.0.0.256', /not an IPv4 address/],
      ['tcp:22@10.0.0.1/33', /prefix length "33"/],
      ['tcp:22@10.0.0.1/24', /host bits set; did you mean 10\.0\.0\.0\/24\?/],
      ['tcp:22@10.0.0.0/8/8', /more than one "\/"/],
      ['tcp:22@fe80::1', /IPv6/],
    ];
    for (const [spec, message] of cases) {
      assert.throws(
        () => parseSpec(spec),
        (err: unknown) => err instanceof SpecError && err.code === 'ERR_RACKS_BAD_SPEC' && message.test(err.message),
        spec,
      );
    }
  });
});

describe('racks netfilter: the ruleset', () => {
  test('marks both directions of each spec, in one replacing transaction, after every exemption, in this order', () => {
    const script = ruleset([parseSpec('tcp:22'), parseSpec('tcp:5432@10.0.0.0/24')], { tun: 'rack7', mark: 0x10, port: 7000 });
    const lines = script.split('\n').map((l) => l.trim());
    // nftables runs a chain's rules in order, and `return` ends the chain: an exemption after the
    // marks would exempt nothing. Sets before the chains that use them, all in one transaction
    // that first replaces the table (creating it first, so the delete succeeds when it is new).
    assert.deepEqual(lines, [
      'add table inet rack',
      'delete table inet rack',
      'table inet rack {',
      'set plain { type ipv4_addr; flags timeout; }',
      'set clients { type ipv4_addr; }',
      'set bypass { type ipv4_addr . inet_service . ipv4_addr . inet_service; flags timeout; }',
      'chain output {',
      'type route hook output priority mangle; policy accept;',
      'oifname "lo" return',
      // What the daemon sends itself (mark + 1) and the carriages on the rack port never come back into the TUN.
      'meta mark 0x00000011 return comment "sent by the daemon itself"',
      'tcp dport 7000 return comment "carriages"',
      'tcp sport 7000 return comment "carriages"',
      'meta nfproto ipv4 ip saddr . tcp sport . ip daddr . tcp dport @bypass return',
      // Client side: to the spec, unless the host is known to be plain; server side: replies to rack clients only.
      'meta nfproto ipv4 tcp dport 22 ip daddr != @plain meta mark set 0x00000010 comment "tcp:22 client side"',
      'meta nfproto ipv4 tcp sport 22 ip daddr @clients meta mark set 0x00000010 comment "tcp:22 server side"',
      'meta nfproto ipv4 ip daddr 10.0.0.0/24 tcp dport 5432 ip daddr != @plain meta mark set 0x00000010 comment "tcp:5432@10.0.0.0/24 client side"',
      'meta nfproto ipv4 ip saddr 10.0.0.0/24 tcp sport 5432 ip daddr @clients meta mark set 0x00000010 comment "tcp:5432@10.0.0.0/24 server side"',
      '}',
      'chain prerouting {',
      'type filter hook prerouting priority mangle; policy accept;',
      'iifname "rack7" meta mark set 0x00000010',
      '}',
      '}',
      '',
    ]);
  });

  test('names that could inject nftables syntax are refused', () => {
    assert.throws(() => ruleset([], { tun: 'rack0"; flush ruleset' }), RangeError);
    assert.throws(() => ruleset([], { tun: 'rack0', table: 'a b' }), RangeError);
  });
});
