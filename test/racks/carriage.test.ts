// The carriage between rack daemons (src/racks/carriage.ts) over real rocks
// sockets on loopback: packets arrive whole and in order; forged, replayed
// and malformed input is dropped and counted or closes only that carriage.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { describe, test } from 'node:test';
import { connect, createServer, type ReliableSocket } from '../../src/index.js';
import { Carriage } from '../../src/racks/carriage.js';
import { until } from '../support/helpers.js';

async function pair(clientSecret?: Buffer, serverSecret?: Buffer): Promise<{ client: Carriage; server: Carriage; close: () => Promise<void> }> {
  let server!: Carriage;
  const listener = createServer({}, (s: ReliableSocket) => (server = new Carriage(s, 'server', serverSecret)));
  listener.listen(0, '127.0.0.1');
  await once(listener, 'listening');
  const socket = connect({ port: (listener.address() as AddressInfo).port, host: '127.0.0.1', enhanced: true });
  const client = new Carriage(socket, 'client', clientSecret);
  await until(() => server?.ready === true && client.ready, 5000, 'the key exchange');
  return {
    client,
    server,
    close: async () => {
      client.close('test over');
      server.close('test over');
      await new Promise<void>((r) => listener.close(() => r()));
    },
  };
}

const collect = (c: Carriage): Buffer[] => {
  const got: Buffer[] = [];
  c.on('packet', (p: Buffer) => got.push(p));
  return got;
};

describe('carriage', () => {
  test('packets of every size arrive whole, in order, both ways', async () => {
    const { client, server, close } = await pair();
    const atServer = collect(server);
    const atClient = collect(client);
    const sizes = [1, 20, 40, 1500, 9000, 65_535];
    const up = sizes.map((n) => randomBytes(n));
    const down = sizes.map((n) => randomBytes(n));
    for (const p of up) client.send(p);
    for (const p of down) server.send(p);
    await until(() => atServer.length === sizes.length && atClient.length === sizes.length, 5000, 'all packets');
    assert.deepEqual(atServer, up);
    assert.deepEqual(atClient, down);
    assert.equal(server.stats.rejected + client.stats.rejected, 0);
    await close();
  });

  test('a forged packet and a replayed one are dropped and counted; the genuine ones after them pass', async () => {
    const { client, server, close } = await pair();
    const got = collect(server);
    // Capture a genuine frame as it is written, to replay it.
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
    // A frame with the right shape and next number but a MAC made up.
    const forged = Buffer.from(genuine);
    forged.writeBigUInt64BE(1n, 5);
    forged.fill(0xaa, forged.length - 16);
    client.socket.write(forged);
    client.socket.write(genuine); // a replay: number 0 again
    client.send(Buffer.from('second'));
    await until(() => got.length === 2 && server.stats.rejected === 2, 5000, 'the second packet and two rejections');
    assert.deepEqual(got.map(String), ['first', 'second']);
    await close();
  });

  test('daemons with different secrets carry nothing: every packet is rejected', async () => {
    const { client, server, close } = await pair(Buffer.alloc(32, 1), Buffer.alloc(32, 2));
    const got = collect(server);
    for (let i = 0; i < 5; i++) client.send(randomBytes(100));
    await until(() => server.stats.rejected === 5, 5000, 'five rejections');
    assert.equal(got.length, 0);
    await close();
  });

  test('a malformed frame closes that carriage only', async () => {
    const a = await pair();
    const b = await pair();
    const closed = once(a.server, 'close');
    const bad = Buffer.alloc(5);
    bad.writeUInt32BE(0x7fffffff, 0);
    a.client.socket.write(bad);
    const [reason] = (await closed) as [string];
    assert.match(reason, /malformed frame/);
    const got = collect(b.server);
    b.client.send(Buffer.from('still here'));
    await until(() => got.length === 1, 5000, 'the other carriage to carry on');
    await a.close();
    await b.close();
  });
});
