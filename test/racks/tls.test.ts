// Racks carriages over TLS (rack up --tls-*), with the daemon built from
// in-memory parts (memory-parts.ts), without root: two daemons joined by
// real rocks carriages over loopback, each link a TLS 1.3 connection with
// certificates both ways. A connection is carried, through a reset of the
// carriage, with none of its bytes in the clear between the daemons; a
// daemon that holds another pair gets no carriage, and its connections go
// out as they are.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, beforeEach, describe, test } from 'node:test';
import { keygen } from '../../src/cli/keygen.js';
import { rackTls } from '../../src/cli/tls-args.js';
import type { RackTls } from '../../src/racks/daemon.js';
import { TcpFlags, type Endpoint } from '../../src/racks/packet.js';
import { VNET_HEADER } from '../../src/racks/tun.js';
import { until } from '../support/helpers.js';
import { LoopbackNet, tunPacket, type MemoryHost } from './memory-parts.js';

const CLIENT: Endpoint = { address: '10.1.1.2', port: 40_000 };
const SERVER: Endpoint = { address: '10.2.2.2', port: 22 };
const { SYN, ACK, PSH } = TcpFlags;

const dir = mkdtempSync(join(tmpdir(), 'rack-tls-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** What `rack up --tls-cert DIR/cert.pem --tls-key DIR/key.pem --tls-pin PIN` gives the daemon, for a fresh `rock keygen DIR`. */
async function sharedPair(name: string): Promise<RackTls> {
  const d = join(dir, name);
  const { pin, certPath, keyPath } = await keygen(d, { names: ['rack'], days: 1, force: false });
  return rackTls({ 'tls-cert': certPath, 'tls-key': keyPath, 'tls-pin': pin })!;
}

let net: LoopbackNet;
beforeEach(async () => {
  net = new LoopbackNet();
  await net.init();
});
afterEach(() => net.close());

async function across(from: MemoryHost, to: MemoryHost, packets: Buffer[], count: number): Promise<void> {
  for (const p of packets) from.tun.fromKernel(p);
  await until(
    () => to.tun.written.length >= count,
    5000,
    () => `${count} packets into ${to.address}'s kernel, got ${to.tun.written.length}`,
  );
}

describe('rack daemon over TLS (in-memory parts)', () => {
  test('daemons with the same pair carry a connection over TLS, through a reset of the carriage; nothing in the clear between them', async () => {
    const tls = await sharedPair('shared');
    const a = await net.host(CLIENT.address, { tls });
    const b = await net.host(SERVER.address, { tls });
    const wire: Buffer[] = [];
    net.proxies.get(SERVER.address)!.onChunk = (_direction, chunk) => wire.push(chunk);

    const syn = tunPacket(CLIENT, SERVER, { seq: 1000, flags: SYN });
    await across(a, b, [syn], 1);
    assert.deepEqual(b.tun.written, [syn], 'the SYN arrived byte for byte');
    assert.deepEqual(a.raw.sent, [], 'nothing went out raw');
    assert.deepEqual(a.daemon.status().hosts, [{ address: SERVER.address, verdict: 'rack', state: 'open' }]);

    const synAck = tunPacket(SERVER, CLIENT, { seq: 7000, ack: 1001, flags: SYN | ACK, window: 65_000 });
    await across(b, a, [synAck], 1);
    const secret = Buffer.from('a password that must never cross in the clear');
    const data = tunPacket(CLIENT, SERVER, { seq: 1001, ack: 7001, flags: ACK | PSH, payload: secret });
    await across(a, b, [data], 2);
    assert.deepEqual(b.tun.written[1], data);

    // The carriage's link is reset: the carriage resumes over a new TLS link, and the next packet passes.
    const resets = a.daemon.counters;
    net.proxies.get(SERVER.address)!.reset();
    const more = tunPacket(CLIENT, SERVER, { seq: 1001 + secret.length, ack: 7001, flags: ACK | PSH, payload: secret });
    await across(a, b, [more], 3);
    assert.deepEqual(b.tun.written[2], more);
    assert.ok(net.proxies.get(SERVER.address)!.connections >= 2, 'a second link after the reset');
    assert.equal(resets.forged, 0);

    const seen = Buffer.concat(wire);
    assert.ok(seen.length > 0);
    assert.equal(seen.indexOf(secret), -1, 'the payload in the clear between the daemons');
    assert.notEqual(seen.indexOf(Buffer.from([0x16, 0x03])), -1, 'TLS records on the wire');
  });

  test('a daemon with another pair gets no carriage: the SYN goes out as it is, and the other daemon carries nothing', async () => {
    const a = await net.host(CLIENT.address, { tls: await sharedPair('one') });
    const b = await net.host(SERVER.address, { tls: await sharedPair('two') });
    const syn = tunPacket(CLIENT, SERVER, { seq: 1, flags: SYN });
    a.tun.fromKernel(syn);
    await until(() => a.raw.sent.length === 1, 5000, 'the SYN to go out raw');
    assert.deepEqual(a.raw.sent[0], syn.subarray(VNET_HEADER), 'the held SYN, untouched');
    assert.deepEqual(a.daemon.status().hosts, [{ address: SERVER.address, verdict: 'plain' }]);
    assert.equal(a.daemon.counters.packetsCarried, 0);
    assert.equal(b.tun.written.length, 0);
    assert.equal(b.daemon.counters.packetsInjected, 0);
    const why = a.log.entries.find((e) => /no rack daemon/.test(e.msg));
    assert.ok(why, JSON.stringify(a.log.entries));
    console.log(`# another pair: ${JSON.stringify(why)}`);
  });

  test('a daemon without TLS cannot talk to one with it, either way', async () => {
    const a = await net.host(CLIENT.address, {});
    const b = await net.host(SERVER.address, { tls: await sharedPair('only-b') });
    a.tun.fromKernel(tunPacket(CLIENT, SERVER, { seq: 1, flags: SYN }));
    await until(() => a.raw.sent.length === 1, 5000, 'the SYN to go out raw');
    assert.equal(b.tun.written.length, 0);
    const back = tunPacket(SERVER, CLIENT, { seq: 9, flags: SYN });
    b.tun.fromKernel(back);
    // b dials a's rack port with TLS; a plain rocks server is no rack daemon over TLS.
    await until(() => b.raw.sent.length === 1, 5000, 'b to send its SYN raw');
    assert.equal(a.tun.written.length, 0);
  });

  test("rack up --tls-*: the pair needs a trust, a pin must be the pair's own, not both", async () => {
    const d = join(dir, 'flags');
    const { pin, certPath, keyPath } = await keygen(d, { names: ['rack'], days: 1, force: false });
    const other = await keygen(join(dir, 'flags-other'), { names: ['rack'], days: 1, force: false });
    const pairFlags = { 'tls-cert': certPath, 'tls-key': keyPath };
    assert.throws(() => rackTls(pairFlags), /--tls-cert needs --tls-ca or --tls-pin/);
    assert.throws(() => rackTls({ ...pairFlags, 'tls-pin': other.pin }), /--tls-pin is not the pin of --tls-cert/);
    assert.throws(() => rackTls({ ...pairFlags, 'tls-pin': pin, 'tls-ca': certPath }), /give --tls-ca or --tls-pin, not both/);
    assert.throws(() => rackTls({ 'tls-cert': certPath, 'tls-key': other.keyPath }), /is not the key of --tls-cert/);
    const viaCa = rackTls({ ...pairFlags, 'tls-ca': other.certPath })!;
    assert.equal(viaCa.server.requestCert, true);
    assert.equal(viaCa.server.ca, viaCa.client.ca, 'client certificates checked against --tls-ca by default');
  });
});
