// The rack daemon (src/racks/daemon.ts) built from in-memory parts
// (memory-parts.ts), without root: two daemons, a client host 10.1.1.2 and a
// server host 10.2.2.2, joined by real rocks carriages over loopback. The
// test plays both kernels: it writes the applications' packets into each
// daemon's TUN and reads what each daemon writes back, sends out raw, or
// puts in the kernel's sets. Every packet is a real one (src/racks/packet.ts).

import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import type { RackOptions } from '../../src/racks/daemon.js';
import { TcpFlags, verifyChecksums, type Endpoint } from '../../src/racks/packet.js';
import { VNET_HEADER, VNET_NEEDS_CSUM } from '../../src/racks/tun.js';
import { sleep, until } from '../support/helpers.js';
import { LoopbackNet, tcpOf, tunPacket, type MemoryHost } from './memory-parts.js';

const CLIENT: Endpoint = { address: '10.1.1.2', port: 40_000 };
const SERVER: Endpoint = { address: '10.2.2.2', port: 22 };
const CLIENT_ISN = 1_000_000;
const SERVER_ISN = 7_000_000;
const SERVER_WINDOW = 65_160;
const { SYN, ACK, PSH, FIN, RST } = TcpFlags;

let net: LoopbackNet;
beforeEach(async () => {
  net = new LoopbackNet();
  await net.init();
});
afterEach(() => net.close());

async function pair(clientOptions: Partial<RackOptions> = {}, serverOptions: Partial<RackOptions> = {}): Promise<{ a: MemoryHost; b: MemoryHost }> {
  return { a: await net.host(CLIENT.address, clientOptions), b: await net.host(SERVER.address, serverOptions) };
}

/** Feeds packets into `from`'s TUN, then waits until `to` has written `count` packets into its kernel. */
async function across(from: MemoryHost, to: MemoryHost, packets: Buffer[], count: number): Promise<void> {
  for (const p of packets) from.tun.fromKernel(p);
  await until(
    () => to.tun.written.length >= count,
    5000,
    () => `${count} packets into ${to.address}'s kernel, got ${to.tun.written.length}; ${JSON.stringify(from.daemon.status())}`,
  );
}

/**
 * The handshake and `bytes` of data from the client, carried: the server's
 * kernel gets SYN, ACK and the data; the client's gets the SYN-ACK. The
 * server application has not yet acknowledged the data.
 */
async function established(a: MemoryHost, b: MemoryHost, bytes = 100): Promise<{ clientNext: number; packets: Buffer[] }> {
  const syn = tunPacket(CLIENT, SERVER, { seq: CLIENT_ISN, flags: SYN });
  await across(a, b, [syn], 1);
  const synAck = tunPacket(SERVER, CLIENT, { seq: SERVER_ISN, ack: CLIENT_ISN + 1, flags: SYN | ACK, window: SERVER_WINDOW });
  await across(b, a, [synAck], 1);
  const ack = tunPacket(CLIENT, SERVER, { seq: CLIENT_ISN + 1, ack: SERVER_ISN + 1, flags: ACK });
  const data = tunPacket(CLIENT, SERVER, { seq: CLIENT_ISN + 1, ack: SERVER_ISN + 1, flags: ACK | PSH, payload: Buffer.alloc(bytes, 0x61) });
  await across(a, b, [ack, data], 3);
  return { clientNext: CLIENT_ISN + 1 + bytes, packets: [syn, synAck, ack, data] };
}

const stateOf = (h: MemoryHost): string | undefined => h.daemon.status().connections[0]?.state;

/** What the daemon wrote into its kernel since index `from`, as TCP packets (forged ones have a plain virtio_net_hdr). */
const writtenSince = (h: MemoryHost, from: number) => h.tun.written.slice(from).map(tcpOf);

describe('rack daemon from in-memory parts: routing', () => {
  test('a connection to a rack host is carried both ways, every packet unchanged; the server host learns its client', async () => {
    const { a, b } = await pair();
    const { packets } = await established(a, b);
    const [syn, synAck, ack, data] = packets;
    assert.deepEqual(b.tun.written, [syn, ack, data], 'the server kernel got the client packets byte for byte');
    assert.deepEqual(a.tun.written, [synAck], 'the client kernel got the SYN-ACK byte for byte');
    const reply = tunPacket(SERVER, CLIENT, { seq: SERVER_ISN + 1, ack: CLIENT_ISN + 101, flags: ACK | PSH, payload: Buffer.from('welcome') });
    await across(b, a, [reply], 2);
    assert.deepEqual(a.tun.written[1], reply);
    assert.deepEqual(a.raw.sent, [], 'nothing went out raw');
    assert.deepEqual([...b.kernel.clients], [CLIENT.address]);
    assert.deepEqual([...a.kernel.plain.keys()], []);
    assert.deepEqual(net.dialed, [SERVER.address], 'one question per host');
    assert.deepEqual(a.daemon.status().hosts, [{ address: SERVER.address, verdict: 'rack', state: 'open' }]);
    assert.deepEqual(
      a.daemon.status().connections.map((c) => [c.local, c.remote, c.state]),
      [[`${CLIENT.address}:${CLIENT.port}`, `${SERVER.address}:${SERVER.port}`, 'open']],
    );
    assert.equal(a.daemon.counters.packetsCarried, 3);
    assert.equal(a.daemon.counters.packetsInjected, 2);
    assert.equal(b.daemon.counters.packetsCarried, 2);
    assert.equal(b.daemon.counters.packetsInjected, 3);
    assert.ok(a.kernel.installed && b.kernel.installed);
  });

  test('the server daemon refuses what a carriage may not bring: a port it does not protect', async () => {
    const { a, b } = await pair();
    await established(a, b);
    // The client's rules would never send this to the TUN; a compromised or buggy peer might.
    a.tun.fromKernel(tunPacket(CLIENT, { address: SERVER.address, port: 23 }, { seq: 5, flags: SYN }));
    await until(() => b.daemon.counters.refusedRemote === 1, 5000, 'the refusal');
    assert.equal(b.tun.written.length, 3, 'nothing injected');
  });

  test('malformed packets from the TUN are counted and dropped', async () => {
    const { a } = await pair();
    a.tun.fromKernel(Buffer.concat([Buffer.alloc(VNET_HEADER), Buffer.from('not an IPv4 packet')]));
    assert.equal(a.daemon.counters.malformedLocal, 1);
    assert.deepEqual([a.tun.written, a.raw.sent, net.dialed], [[], [], []]);
  });
});

describe('rack daemon from in-memory parts: probing (EDP for racks)', () => {
  test('a host whose rack port refuses is plain: the held SYN goes out untouched, later ones at once, until plainTtl passes', async () => {
    const { a } = await pair({ plainTtl: 60_000 });
    const plainHost = { address: '10.3.3.3', port: 22 };
    const syn = tunPacket(CLIENT, plainHost, { seq: 1, flags: SYN });
    a.tun.fromKernel(syn);
    assert.deepEqual(a.raw.sent, [], 'held while the probe runs');
    await until(() => a.raw.sent.length === 1, 5000, 'the SYN to go out');
    assert.deepEqual(a.raw.sent[0], syn.subarray(VNET_HEADER), 'the held SYN, untouched');
    assert.deepEqual([...a.kernel.plain], [[plainHost.address, 60_000]]);
    assert.deepEqual(a.daemon.status().hosts, [{ address: plainHost.address, verdict: 'plain' }]);
    const second = tunPacket({ ...CLIENT, port: 40_001 }, plainHost, { seq: 2, flags: SYN });
    a.tun.fromKernel(second);
    assert.deepEqual(a.raw.sent[1], second.subarray(VNET_HEADER), 'sent at once');
    a.clock.advance(59_999);
    a.tun.fromKernel(tunPacket({ ...CLIENT, port: 40_002 }, plainHost, { seq: 3, flags: SYN }));
    assert.equal(a.raw.sent.length, 3, 'still plain just before plainTtl');
    a.clock.advance(1);
    a.tun.fromKernel(tunPacket({ ...CLIENT, port: 40_003 }, plainHost, { seq: 4, flags: SYN }));
    assert.equal(a.raw.sent.length, 3, 'held: asked again');
    await until(() => a.raw.sent.length === 4, 5000, 'the second answer');
    assert.deepEqual(net.dialed, [plainHost.address, plainHost.address]);
    assert.equal(a.daemon.counters.packetsCarried, 0);
  });

  test('a silent host holds every SYN for probeTimeout, then all go out in order', async () => {
    const probeTimeout = 400;
    const { a } = await pair({ probeTimeout });
    const plainHost = { address: '10.4.4.4', port: 22 };
    await net.silent(plainHost.address);
    const syns = [40_000, 40_001].map((port, i) => tunPacket({ ...CLIENT, port }, plainHost, { seq: 100 + i, flags: SYN }));
    const t0 = performance.now();
    a.tun.fromKernel(syns[0]);
    await sleep(probeTimeout / 2);
    a.tun.fromKernel(syns[1]);
    assert.deepEqual(a.raw.sent, []);
    assert.deepEqual(a.daemon.status().hosts, [{ address: plainHost.address, verdict: 'probing' }]);
    await until(() => a.raw.sent.length === 2, 5000, 'the held SYNs');
    assert.ok(performance.now() - t0 >= probeTimeout - 5, `held ${performance.now() - t0} ms, probeTimeout ${probeTimeout}`);
    // Copies: the TUN's read buffer was scribbled over right after each read.
    assert.deepEqual(
      a.raw.sent,
      syns.map((s) => s.subarray(VNET_HEADER)),
    );
    assert.deepEqual(net.dialed, [plainHost.address], 'one question for both');
  });

  test('a rack host: the SYN is held while asked, then carried; nothing goes out raw', async () => {
    const { a, b } = await pair();
    const syn = tunPacket(CLIENT, SERVER, { seq: CLIENT_ISN, flags: SYN });
    a.tun.fromKernel(syn);
    assert.deepEqual(a.daemon.status().hosts, [{ address: SERVER.address, verdict: 'probing' }]);
    assert.equal(a.daemon.counters.packetsCarried, 0, 'held, not yet carried');
    await until(() => b.tun.written.length === 1, 5000, 'the SYN at the server');
    assert.deepEqual(b.tun.written[0], syn);
    assert.equal(a.daemon.counters.packetsCarried, 1);
    assert.deepEqual([a.raw.sent, [...a.kernel.plain.keys()]], [[], []]);
  });

  test('a packet of a connection older than the daemon, to an unknown host, goes out and is bypassed from now on', async () => {
    const { a } = await pair();
    const old = tunPacket(CLIENT, { address: '10.5.5.5', port: 22 }, { seq: 9, ack: 9, flags: ACK, payload: Buffer.from('x') });
    a.tun.fromKernel(old);
    assert.deepEqual(a.raw.sent, [old.subarray(VNET_HEADER)]);
    assert.deepEqual([...a.kernel.bypass], [`${CLIENT.address}:${CLIENT.port}>10.5.5.5:22`]);
    assert.deepEqual(net.dialed, []);
  });

  test('going out raw: a checksum left to the hardware is computed; a 64 KiB segment cannot go and is counted', async () => {
    const { a } = await pair();
    const plainHost = { address: '10.3.3.3', port: 22 };
    a.tun.fromKernel(tunPacket(CLIENT, plainHost, { seq: 1, flags: SYN }));
    await until(() => a.raw.sent.length === 1, 5000, 'the host to be found plain');
    const needsCsum = tunPacket({ ...CLIENT, port: 40_001 }, plainHost, { seq: 2, flags: SYN });
    needsCsum[0] = VNET_NEEDS_CSUM;
    needsCsum.writeUInt16BE(0, VNET_HEADER + 20 + 16); // the TCP checksum, left to do
    a.tun.fromKernel(needsCsum);
    assert.deepEqual(verifyChecksums(a.raw.sent[1]), { ip: true, tcp: true });
    const gso = tunPacket({ ...CLIENT, port: 40_002 }, plainHost, { seq: 3, ack: 1, flags: ACK, payload: Buffer.alloc(3000) });
    gso[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
    a.tun.fromKernel(gso);
    assert.equal(a.raw.sent.length, 2);
    assert.equal(a.daemon.counters.unsendable, 1);
  });
});

describe('rack daemon from in-memory parts: holding', () => {
  test('suspend: zero-window hold ACKs for everything in custody; resume: the reopening ACK, and the held data arrives once', async () => {
    const { a, b } = await pair();
    const { clientNext } = await established(a, b);
    net.proxies.get(SERVER.address)!.blackhole();
    const before = a.tun.written.length;
    await until(() => stateOf(a) === 'suspended', 5000, 'the client daemon to suspend');
    // The 100 bytes the server application has not acknowledged: held at once.
    const [hold] = writtenSince(a, before);
    assert.deepEqual(
      [hold.src, hold.srcPort, hold.dst, hold.dstPort, hold.seq, hold.ack, hold.window, hold.flags],
      [SERVER.address, SERVER.port, CLIENT.address, CLIENT.port, SERVER_ISN + 1, clientNext, 0, ACK],
    );
    assert.deepEqual(verifyChecksums(a.tun.written[before].subarray(VNET_HEADER)), { ip: true, tcp: true });
    // What the application sends while held is taken into custody and acknowledged at once, window still shut.
    const more = tunPacket(CLIENT, SERVER, { seq: clientNext, ack: SERVER_ISN + 1, flags: ACK | PSH, payload: Buffer.from('during the outage') });
    a.tun.fromKernel(more);
    const heldAck = writtenSince(a, before).at(-1)!;
    assert.deepEqual([heldAck.ack, heldAck.window], [clientNext + 17, 0]);
    assert.equal(a.daemon.status().connections[0].heldBytes, 17);
    a.clock.advance(2500);
    assert.equal(a.daemon.status().connections[0].outageMs, 2500, 'the outage, on the daemon clock');
    assert.equal(b.tun.written.length, 3, 'nothing crosses the black hole');

    net.proxies.get(SERVER.address)!.heal();
    const resumedAt = a.tun.written.length;
    await until(() => stateOf(a) === 'open', 10_000, 'the carriage to resume');
    const reopen = writtenSince(a, resumedAt)[0];
    assert.deepEqual([reopen.ack, reopen.window, reopen.flags], [clientNext + 17, SERVER_WINDOW, ACK], 'the window the server last advertised');
    await until(() => b.tun.written.length === 4, 5000, 'the segment held in custody');
    assert.deepEqual(b.tun.written[3], more);
    await sleep(100);
    assert.equal(b.tun.written.length, 4, 'exactly once');
    assert.equal(a.daemon.status().connections[0].heldBytes, 0);
    assert.equal(a.daemon.counters.holdAcks, 3, 'two hold ACKs and the reopening one');
  });

  test('a carriage lost for good (past the suspend limit) resets its connections with an RST from the peer', async () => {
    const { a, b } = await pair({ suspendLimit: 600 });
    const { clientNext } = await established(a, b);
    net.proxies.get(SERVER.address)!.blackhole();
    const before = a.tun.written.length;
    await until(() => a.daemon.status().connections.length === 0, 10_000, 'the carriage to be given up');
    const rst = writtenSince(a, before).at(-1)!;
    assert.deepEqual(
      [rst.src, rst.srcPort, rst.dst, rst.dstPort, rst.seq, rst.ack, rst.flags],
      [SERVER.address, SERVER.port, CLIENT.address, CLIENT.port, SERVER_ISN + 1, clientNext, RST | ACK],
    );
    assert.deepEqual(a.daemon.status().hosts, [], 'the next SYN asks again');
    assert.equal(a.log.count('carriage lost: its connections were reset'), 1);
  });

  test('an ended connection is forgotten after 120 s of quiet on the daemon clock', async () => {
    const { a, b } = await pair();
    const { clientNext } = await established(a, b, 10);
    await across(a, b, [tunPacket(CLIENT, SERVER, { seq: clientNext, ack: SERVER_ISN + 1, flags: FIN | ACK })], 4);
    assert.equal(stateOf(a), 'ending');
    a.clock.advance(119_000);
    assert.equal(a.daemon.status().connections.length, 1, 'kept while it may still see packets');
    a.clock.advance(11_000);
    assert.equal(a.daemon.status().connections.length, 0, 'swept after 120 s of quiet');
  });
});

describe('rack daemon from in-memory parts: limits', () => {
  test('past --max-connections a new connection goes out unprotected and bypassed; logged once', async () => {
    const { a, b } = await pair({ maxFlows: 1 });
    await established(a, b);
    for (const port of [40_001, 40_002]) {
      const syn = tunPacket({ ...CLIENT, port }, SERVER, { seq: port, flags: SYN });
      a.tun.fromKernel(syn);
      assert.deepEqual(a.raw.sent.at(-1), syn.subarray(VNET_HEADER));
    }
    assert.equal(a.daemon.counters.unprotected, 2);
    assert.deepEqual([...a.kernel.bypass], [`${CLIENT.address}:40001>${SERVER.address}:22`, `${CLIENT.address}:40002>${SERVER.address}:22`]);
    assert.equal(a.log.count('protected-connection limit reached'), 1);
    await sleep(100);
    assert.equal(b.tun.written.length, 3, 'the server daemon saw none of them');
  });

  test('past --max-held a segment is dropped uncounted: the hold ACK does not cover it, and it never arrives', async () => {
    const { a, b } = await pair({ maxHeldBytes: 4096 });
    const { clientNext } = await established(a, b, 10);
    await sleep(200); // the carriage's acknowledgements come back: custody is what follows
    net.proxies.get(SERVER.address)!.blackhole();
    await until(() => stateOf(a) === 'suspended', 5000, 'the client daemon to suspend');
    const fits = tunPacket(CLIENT, SERVER, { seq: clientNext, ack: SERVER_ISN + 1, flags: ACK, payload: Buffer.alloc(1000, 1) });
    const past = tunPacket(CLIENT, SERVER, { seq: clientNext + 1000, ack: SERVER_ISN + 1, flags: ACK, payload: Buffer.alloc(4000, 2) });
    a.tun.fromKernel(fits);
    a.tun.fromKernel(past);
    assert.equal(a.daemon.counters.limitDrops, 1);
    assert.equal(a.log.count('held-bytes limit reached'), 1);
    const last = tcpOf(a.tun.written.at(-1)!);
    assert.deepEqual([last.ack, last.window], [clientNext + 1000, 0], 'the hold ACK covers what is in custody only');
    net.proxies.get(SERVER.address)!.heal();
    await until(() => b.tun.written.length === 4, 10_000, 'the segment in custody');
    assert.deepEqual(b.tun.written[3], fits);
    await sleep(100);
    assert.equal(b.tun.written.length, 4, 'the dropped one never crosses');
  });
});

describe('rack daemon from in-memory parts: address change', () => {
  test('an address that leaves while a protected connection uses it is kept on the TUN, once; others are not', async () => {
    const { a, b } = await pair();
    await established(a, b);
    // A second local address whose only connection has ended.
    const other = { address: '10.1.1.3', port: 40_000 };
    a.addresses.present.add(other.address);
    await across(a, b, [tunPacket(other, SERVER, { seq: 1, flags: SYN }), tunPacket(other, SERVER, { seq: 2, flags: FIN })], 5);
    a.addresses.remove(other.address);
    assert.deepEqual(a.kernel.kept, [], 'an ended connection needs no address');
    a.addresses.remove(CLIENT.address);
    assert.deepEqual(a.kernel.kept, [CLIENT.address]);
    a.addresses.remove('10.9.9.9');
    assert.deepEqual(a.kernel.kept, [CLIENT.address], 'kept once');
    assert.equal(a.log.count('local address gone'), 1);
  });
});

describe('rack daemon from in-memory parts: start and stop', () => {
  test('stop closes every part and takes the rules out', async () => {
    const { a } = await pair();
    await a.daemon.stop();
    assert.deepEqual([a.kernel.installed, a.tun.closed, a.raw.closed, a.addresses.closed], [false, true, true, true]);
  });
});
