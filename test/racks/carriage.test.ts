// The carriage between rack daemons (src/racks/carriage.ts) over real rocks
// sockets on loopback: packets arrive whole and in order; through a real
// tampering relay (tamper-relay.ts) an altered packet is dropped and the
// genuine ones after it pass, and an altered length breaks the framing,
// which is found again; replayed frames are dropped; a peer with another
// secret is refused.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { describe, test } from 'node:test';
import { connect, createServer, type ReliableSocket } from '../../src/index.js';
import { Carriage, MAX_CONSECUTIVE_REJECTS, type CarriageOptions } from '../../src/racks/carriage.js';
import { sleep, until } from '../support/helpers.js';
import { TamperRelay } from './tamper-relay.js';

interface Pair {
  client: Carriage;
  server: Carriage;
  relay?: TamperRelay;
  close: () => Promise<void>;
}

/** Two carriages over a real rocks connection, through a tampering relay when `tamper`. */
async function pair(clientOptions: CarriageOptions = {}, serverOptions: CarriageOptions = {}, tamper = false): Promise<Pair> {
  let server: Carriage | undefined;
  const listener = createServer({}, (s: ReliableSocket) => (server = new Carriage(s, 'server', serverOptions)));
  listener.listen(0, '127.0.0.1');
  await once(listener, 'listening');
  let port = (listener.address() as AddressInfo).port;
  let relay: TamperRelay | undefined;
  if (tamper) {
    relay = new TamperRelay({ host: '127.0.0.1', port });
    port = await relay.listen();
  }
  const socket = connect({ port, host: '127.0.0.1', enhanced: true });
  const client = new Carriage(socket, 'client', clientOptions);
  await until(() => server !== undefined, 5000, 'the server carriage');
  return {
    client,
    server: server!,
    relay,
    close: async () => {
      client.close('test over');
      server?.close('test over');
      await relay?.close();
      await new Promise<void>((r) => listener.close(() => r()));
    },
  };
}

async function ready(p: Pair): Promise<void> {
  await until(() => p.server.ready && p.client.ready, 5000, 'the key exchange and its confirmation');
}

const collect = (c: Carriage): Buffer[] => {
  const got: Buffer[] = [];
  c.on('packet', (p: Buffer) => got.push(Buffer.from(p)));
  return got;
};

/** A packet that says which it is: `id` in its first 4 bytes, then `size` - 4 random bytes. */
function numbered(id: number, size = 1200): Buffer {
  const p = randomBytes(size);
  p.writeUInt32BE(id, 0);
  return p;
}
const ids = (packets: Buffer[]): number[] => packets.map((p) => p.readUInt32BE(0));

describe('carriage', () => {
  test('packets of every size arrive whole, in order, both ways', async () => {
    const p = await pair();
    await ready(p);
    const { client, server, close } = p;
    const atServer = collect(server);
    const atClient = collect(client);
    const sizes = [1, 20, 40, 1500, 9000, 65_535];
    const up = sizes.map((n) => randomBytes(n));
    const down = sizes.map((n) => randomBytes(n));
    for (const packet of up) client.send(packet);
    for (const packet of down) server.send(packet);
    await until(() => atServer.length === sizes.length && atClient.length === sizes.length, 5000, 'all packets');
    assert.deepEqual(atServer, up);
    assert.deepEqual(atClient, down);
    assert.equal(server.stats.rejected + client.stats.rejected, 0);
    await close();
  });

  test('through an on-path relay: an altered packet is dropped and the genuine ones after it pass; an altered length is resynchronized', async () => {
    const p = await pair({ stallTimeout: 300 }, { stallTimeout: 300 }, true);
    await ready(p);
    const { client, server, relay, close } = p;
    const got = collect(server);
    const sent: Buffer[] = [];
    const send = (n: number): void => {
      for (let i = 0; i < n; i++) {
        const packet = numbered(sent.length);
        sent.push(packet);
        client.send(packet);
      }
    };
    send(20);
    await until(() => got.length === 20, 5000, 'the first 20 packets');

    // One byte in the middle of packet 20 is flipped in transit.
    relay!.arm('payload');
    send(20);
    await until(
      () => got.length === 39 && server.stats.rejected === 1,
      5000,
      () => `39 packets and one rejection: ${got.length}, ${JSON.stringify(server.stats)}`,
    );
    assert.deepEqual(
      relay!.tampered.map((t) => [t.kind, t.number]),
      [['payload', 20n]],
    );
    assert.deepEqual(
      ids(got),
      [...Array(40).keys()].filter((i) => i !== 20),
      'every genuine packet, the altered one never',
    );
    for (const packet of got) assert.deepEqual(packet, sent[packet.readUInt32BE(0)], 'delivered unchanged');
    assert.equal(server.stats.resyncs, 0, 'one altered packet does not break the framing');

    // The length of the next frame is altered (by 16 KiB): the framing breaks, and the carriage must find it again.
    relay!.arm('length');
    const resyncs: { ms: number; discardedBytes: number }[] = [];
    server.on('resynced', (i: { ms: number; discardedBytes: number }) => resyncs.push(i));
    const start = performance.now();
    while (resyncs.length === 0) {
      send(1);
      await sleep(20);
      assert.ok(
        performance.now() - start < 10_000,
        `no resynchronization: ${JSON.stringify(server.stats)}, relay ${JSON.stringify(relay!.tampered, (_, v) => (typeof v === 'bigint' ? Number(v) : v))}`,
      );
    }
    const afterResync = sent.length;
    send(20);
    await until(
      () => got.length > 0 && got[got.length - 1].readUInt32BE(0) === sent.length - 1,
      5000,
      () => `the packets after the resynchronization: got ${ids(got).slice(-5)}, ${JSON.stringify(server.stats)}`,
    );
    const t = relay!.tampered[1];
    assert.equal(t.kind, 'length');
    const delivered = ids(got);
    assert.ok(!delivered.includes(t.frame - 2), `the frame whose length was altered (packet ${t.frame - 2}) is never delivered`);
    assert.deepEqual(
      delivered,
      [...delivered].sort((a, b) => a - b),
      'in order, none twice',
    );
    for (const packet of got) assert.deepEqual(packet, sent[packet.readUInt32BE(0)], 'delivered unchanged');
    for (let i = afterResync; i < sent.length; i++) assert.ok(delivered.includes(i), `packet ${i}, sent after the resynchronization, arrived`);
    assert.equal(server.stats.resyncs, 1);
    assert.equal(client.stats.resyncs + client.stats.rejected, 0, 'the other direction was not touched');
    console.log(
      `# through the tampering relay: ${sent.length} packets sent, ${got.length} delivered, ${server.stats.rejected} rejected, ` +
        `${server.stats.resyncs} resync after an altered length ${t.length?.join(' → ')}: ${resyncs[0].ms} ms, ${resyncs[0].discardedBytes} bytes discarded`,
    );
    await close();
  });

  test('replayed and forged frames written into the stream are dropped and counted; the genuine ones after them pass', async () => {
    const p = await pair();
    await ready(p);
    const { client, server, close } = p;
    const got = collect(server);
    // Capture a genuine frame as it is written, to replay it (as a peer, or an attacker who rewrote rocks' framing, could).
    const written: Buffer[] = [];
    const write = client.socket.write.bind(client.socket);
    client.socket.write = ((chunk: Buffer, ...rest: never[]) => {
      written.push(Buffer.from(chunk));
      return write(chunk, ...rest);
    }) as typeof client.socket.write;
    client.send(Buffer.from('first'));
    client.socket.write = write;
    const genuine = Buffer.concat(written);
    await until(() => got.length === 1, 5000, 'the first packet');
    const forged = Buffer.from(genuine);
    forged.writeBigUInt64BE(1n, 5);
    forged.fill(0xaa, forged.length - 16);
    client.socket.write(forged);
    client.socket.write(genuine); // a replay: number 0 again
    client.send(Buffer.from('second'));
    client.socket.write(genuine); // a replay after a later packet
    client.send(Buffer.from('third'));
    await until(() => got.length === 3 && server.stats.rejected === 3, 5000, 'the later packets and three rejections');
    assert.deepEqual(got.map(String), ['first', 'second', 'third']);
    assert.equal(server.stats.resyncs, 0);
    await close();
  });

  test(`${MAX_CONSECUTIVE_REJECTS} frames in a row that fail, and a malformed frame, resynchronize that carriage only`, async () => {
    const a = await pair();
    const b = await pair();
    await ready(a);
    await ready(b);
    const got = collect(a.server);
    // Frames an application could have crafted inside its own packets, read after a misparse: well formed, never authentic.
    const fake = Buffer.alloc(5 + 8 + 100 + 16);
    fake.writeUInt32BE(fake.length - 4, 0);
    fake[4] = 1;
    fake.writeBigUInt64BE(1000n, 5);
    for (let i = 0; i < MAX_CONSECUTIVE_REJECTS; i++) a.client.socket.write(fake);
    await until(() => a.server.stats.resyncs === 1, 5000, 'a resynchronization');
    a.client.send(Buffer.from('after the fakes'));
    await until(
      () => got.length === 1,
      5000,
      () => `the packet after the resynchronization: ${JSON.stringify(a.server.stats)}`,
    );
    const bad = Buffer.alloc(5);
    bad.writeUInt32BE(0x7fffffff, 0);
    a.client.socket.write(bad);
    await until(() => a.server.stats.resyncs === 2, 5000, 'a second resynchronization');
    a.client.send(Buffer.from('after the malformed frame'));
    await until(
      () => got.length === 2,
      5000,
      () => `the packet after the malformed frame: ${JSON.stringify(a.server.stats)}`,
    );
    assert.deepEqual(got.map(String), ['after the fakes', 'after the malformed frame']);
    const other = collect(b.server);
    b.client.send(Buffer.from('still here'));
    await until(() => other.length === 1, 5000, 'the other carriage to carry on');
    assert.equal(b.server.stats.resyncs + b.server.stats.rejected, 0);
    await a.close();
    await b.close();
  });

  test('a frame cut short (an altered length announcing bytes that never come) resynchronizes after the stall timeout', async () => {
    const p = await pair({}, { stallTimeout: 200 });
    await ready(p);
    const got = collect(p.server);
    const partial = Buffer.alloc(5 + 8);
    partial.writeUInt32BE(1 + 8 + 1000 + 16, 0);
    partial[4] = 1;
    const resynced = once(p.server, 'resynced');
    p.client.socket.write(partial);
    await resynced; // packets sent before the peer's SYNC arrives are discarded with the broken stream
    assert.equal(p.server.stats.resyncs, 1);
    p.client.send(Buffer.from('after the stall'));
    await until(
      () => got.length === 1,
      5000,
      () => `the packet after the stall: ${JSON.stringify(p.server.stats)}`,
    );
    assert.equal(String(got[0]), 'after the stall');
    await p.close();
  });

  test('a peer with another secret fails the key confirmation: the carriage closes, carrying nothing', async () => {
    const p = await pair({ secret: Buffer.alloc(32, 1) }, { secret: Buffer.alloc(32, 2) });
    const got = collect(p.server);
    for (let i = 0; i < 5; i++) p.client.send(randomBytes(100));
    await until(() => p.server.closeReason !== undefined && p.client.closeReason !== undefined, 5000, 'both carriages to close');
    // Each side checks the other's confirmation; the first to fail closes the connection under the other.
    const reasons = [p.client.closeReason, p.server.closeReason];
    assert.ok(
      reasons.some((r) => /key confirmation failed/.test(r!)),
      reasons.join(', '),
    );
    assert.equal(got.length, 0);
    assert.ok(!p.client.ready && !p.server.ready);
    await p.close();
  });
});
