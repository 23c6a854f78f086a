// TLS connections before they are rocks links: from its accept, a TLS
// connection counts against the pending-link caps (per address and in all)
// while its ClientHello is read and its handshake runs, and it must be done
// within handshakeTimeout. Real sockets, real ClientHellos from node:tls,
// certificates from the real openssl.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer as netCreateServer, connect as netConnect, type AddressInfo, type Socket } from 'node:net';
import { after, describe, test } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import { connect, type ReliableServer, type ReliableSocket, type RocksError } from '../../src/index.js';
import { offeredAlpn } from '../../src/node/tls-link.js';
import { makeCerts } from '../support/certs.js';
import { until } from '../support/helpers.js';
import { closeServer, listen } from '../support/net.js';

const certs = makeCerts();
after(() => certs.cleanup());

/** The ClientHello a TLS client offering `alpn` sends first, caught by a TCP server that answers nothing. */
async function clientHello(alpn: string[]): Promise<Buffer> {
  const trap = netCreateServer();
  trap.listen(0, '127.0.0.1');
  await once(trap, 'listening');
  let bytes = Buffer.alloc(0);
  const caught = new Promise<Buffer>((resolve) =>
    trap.once('connection', (s: Socket) =>
      s.on('data', (d: Buffer) => {
        bytes = Buffer.concat([bytes, d]);
        if (offeredAlpn(bytes) !== 'incomplete') resolve(bytes);
      }),
    ),
  );
  const c = tlsConnect({ port: (trap.address() as AddressInfo).port, host: '127.0.0.1', servername: 'localhost', ALPNProtocols: alpn });
  c.on('error', () => {});
  const hello = await caught;
  c.destroy();
  trap.close();
  return hello;
}

interface Stalled {
  socket: Socket;
  closed: boolean;
}

/** A TCP connection from `localAddress` that sends `bytes` and then nothing. */
async function stall(port: number, localAddress: string, bytes: Buffer): Promise<Stalled> {
  const socket = netConnect({ port, host: '127.0.0.1', localAddress });
  socket.on('error', () => {});
  socket.resume(); // what the server answers is read, so that its closing shows
  const s: Stalled = { socket, closed: false };
  socket.on('close', () => (s.closed = true));
  await once(socket, 'connect');
  socket.write(bytes);
  return s;
}

/** Sends `text` to an echoing server and waits for it to come back. */
async function echo(socket: ReliableSocket, text: string): Promise<void> {
  let got = '';
  const onData = (d: Buffer) => (got += d.toString());
  socket.on('data', onData);
  socket.write(text);
  await until(
    () => got === text,
    10_000,
    () => `the echo of ${JSON.stringify(text)} (got ${JSON.stringify(got)})`,
  );
  socket.off('data', onData);
}

describe('TLS connections before they are rocks links', { skip: certs.skip }, () => {
  const tlsServer = { key: certs.server.key, cert: certs.server.cert };
  const rocksTls = (port: number, localAddress: string) => ({
    port,
    host: '127.0.0.1',
    localAddress,
    tls: { ca: certs.server.cert, servername: 'localhost' },
  });

  async function echoServer(options: object, tlsHandshakeTimeout?: number): Promise<{ server: ReliableServer; port: number; refused: string[] }> {
    const refused: string[] = [];
    const { server, port } = await listen({ tls: { ...tlsServer, handshakeTimeout: tlsHandshakeTimeout }, ...options }, (s) => {
      s.on('error', () => {});
      s.pipe(s);
    });
    server.on('clientError', (e: RocksError) => refused.push(e.code));
    return { server, port, refused };
  }

  test('half a ClientHello, then nothing, from one address: the per-address cap holds, others connect, the stalled are closed after handshakeTimeout', {
    timeout: 60_000,
  }, async () => {
    const cap = 20;
    const handshakeTimeout = 3000;
    const { server, port, refused } = await echoServer({ maxPendingLinksPerAddress: cap, handshakeTimeout });
    const established = connect(rocksTls(port, '127.0.0.1'));
    await once(established, 'connect');
    await echo(established, 'before the flood');

    const hello = await clientHello(['rocks/1']);
    const half = hello.subarray(0, hello.length >> 1);
    const floodStarted = performance.now();
    const flood: Stalled[] = [];
    for (let i = 0; i < 2 * cap; i++) flood.push(await stall(port, '127.0.0.1', half));
    await until(() => flood.filter((s) => s.closed).length >= cap, 5000, 'the connections past the cap to be closed');
    assert.equal(refused.length, cap, 'one refusal for each connection past the cap');
    assert.ok(
      refused.every((c) => c === 'ERR_ROCKS_SERVER_BUSY'),
      refused.join(),
    );
    // The first `cap` are held: counted from their accept, with half a ClientHello each.
    assert.deepEqual(
      flood.map((s) => s.closed),
      [...Array(cap).fill(false), ...Array(cap).fill(true)],
    );
    console.log(`${2 * cap} stalled TLS connections from 127.0.0.1: ${cap} held, ${refused.length} refused at once`);

    // Another address is not crowded out; the session already open carries on.
    const other = connect(rocksTls(port, '127.0.0.2'));
    await once(other, 'connect');
    assert.equal(other.remoteAddress, '127.0.0.1');
    assert.equal(other.alpnProtocol, 'rocks/1');
    await echo(other, 'from another address');
    await echo(established, 'during the flood');
    // The flooded address is refused meanwhile, even a genuine ClientHello.
    const late = await stall(port, '127.0.0.1', hello);
    await until(() => late.closed, 5000, 'a new connection from the flooded address to be refused');
    assert.equal(refused.length, cap + 1);

    // Stalled connections are closed once handshakeTimeout has passed since their accept.
    await until(() => flood.every((s) => s.closed), handshakeTimeout + 10_000, 'the stalled connections to be closed');
    console.log(
      `  the held ones were closed ${Math.round(performance.now() - floodStarted)} ms after the flood began (handshakeTimeout ${handshakeTimeout})`,
    );
    // Their places are free again.
    const again = connect(rocksTls(port, '127.0.0.1'));
    await once(again, 'connect');
    await echo(again, 'after the flood');
    assert.equal(refused.length, cap + 1);

    for (const s of [established, other, again]) s.destroy();
    await until(() => server.sessionCount === 0, 5000, 'sessions released');
    await closeServer(server);
  });

  test('a whole ClientHello then a stalled handshake, rocks or plain TLS: counted until closed at its timeout', { timeout: 30_000 }, async () => {
    const handshakeTimeout = 1500;
    const plainHandshakeTimeout = 4000;
    const { server, port, refused } = await echoServer({ maxPendingLinksPerAddress: 2, handshakeTimeout }, plainHandshakeTimeout);
    // A rocks ClientHello whose client never finishes the handshake: closed after handshakeTimeout.
    const rocksStalled = await stall(port, '127.0.0.1', await clientHello(['rocks/1']));
    // A plain TLS ClientHello (no rocks/1): the application's tls handshakeTimeout applies, but it counts meanwhile.
    const plainStalled = await stall(port, '127.0.0.1', await clientHello(['http/1.1']));
    const third = await stall(port, '127.0.0.1', await clientHello(['rocks/1']));
    await until(() => third.closed, 5000, 'a third connection from the address to be refused');
    assert.deepEqual(refused, ['ERR_ROCKS_SERVER_BUSY']);
    await until(() => rocksStalled.closed, handshakeTimeout + 10_000, 'the stalled rocks handshake to be closed');
    assert.equal(plainStalled.closed, false, 'the plain TLS handshake has the application’s tls handshakeTimeout');
    // The rocks one's place is free: a rocks TLS client connects, and the plain one still counts.
    const c = connect(rocksTls(port, '127.0.0.1'));
    await once(c, 'connect');
    await echo(c, 'one place free');
    const hello = await clientHello(['rocks/1']);
    const fourth = await stall(port, '127.0.0.1', hello); // the plain one's and this: two
    const fifth = await stall(port, '127.0.0.1', hello);
    await until(() => fifth.closed, 5000, 'the fifth to be refused');
    assert.deepEqual(refused, ['ERR_ROCKS_SERVER_BUSY', 'ERR_ROCKS_SERVER_BUSY']);
    assert.equal(fourth.closed, false);
    fourth.socket.destroy();
    // The plain one is closed at the application's tls handshakeTimeout.
    await until(() => plainStalled.closed, plainHandshakeTimeout + 10_000, 'the stalled plain TLS handshake to be closed');
    c.destroy();
    await until(() => server.sessionCount === 0, 5000, 'sessions released');
    await closeServer(server);
  });
});
