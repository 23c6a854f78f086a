// ReliableServer's own bookkeeping and the net.Server options it takes.

import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { connect, type ReliableServer, type ReliableSocket } from '../../src/index.js';
import { sleep, until } from '../support/helpers.js';
import { closeServer, collect, listen } from '../support/net.js';

/** What the server keeps per link and per session not yet opened (private: what this test is about). */
function heldByServer(server: ReliableServer): number {
  const held = server as unknown as { links: Map<unknown, unknown>; unopened: Map<unknown, unknown> };
  return held.links.size + held.unopened.size;
}

/** The session under a server-side socket, and the driver the server set on it (Session.driver). */
function driverSlot(socket: ReliableSocket): unknown {
  return (socket as unknown as { driver?: { session: { driver: unknown } } }).driver?.session.driver;
}

test('a server forgets each session once it is released, also after the application let go of its socket', async () => {
  const serverSide: ReliableSocket[] = [];
  const { server, port } = await listen({}, (s) => {
    serverSide.push(s);
    s.pipe(s);
  });
  after(() => server.close());
  const clients: Promise<void>[] = [];
  for (let i = 0; i < 5; i++) {
    const c = connect(port, '127.0.0.1');
    const received = collect(c);
    c.end(`message ${i}`);
    clients.push(received.then((b) => assert.equal(b.toString(), `message ${i}`)));
  }
  await Promise.all(clients);
  assert.equal(serverSide.length, 5);
  // The closing handshake ends with CLOSE_ACK, after the sockets closed.
  await until(
    () => server.sessionCount === 0,
    10_000,
    () => `${server.sessionCount} sessions still held`,
  );
  await until(
    () => heldByServer(server) === 0 && serverSide.every((s) => driverSlot(s) === undefined),
    2000,
    () =>
      `${heldByServer(server)} links or unopened sessions kept, ${serverSide.filter((s) => driverSlot(s) !== undefined).length} drivers still set`,
  );
});

test('pauseOnConnect: the server hands sockets over paused, and nothing is read until resume()', async () => {
  let serverSide: ReliableSocket | undefined;
  const { server, port } = await listen({ pauseOnConnect: true }, (s) => {
    serverSide = s;
  });
  const c = connect(port, '127.0.0.1');
  try {
    c.write('hello');
    await until(() => serverSide !== undefined, 5000, 'connection');
    const s = serverSide!;
    assert.equal(s.isPaused(), true);
    let early = 0;
    s.on('data', (chunk: Buffer) => (early += chunk.length));
    // Adding a 'data' listener does not start a paused stream; give the bytes time to arrive.
    await sleep(200);
    assert.equal(early, 0, 'a paused socket delivered data');
    s.resume();
    await until(
      () => early === 5,
      5000,
      () => `${early} of 5 bytes after resume()`,
    );
  } finally {
    c.destroy();
    serverSide?.destroy();
    await closeServer(server);
  }
});

test('pauseOnConnect also holds a connection from an ordinary client', async () => {
  const { createConnection } = await import('node:net');
  let serverSide: ReliableSocket | undefined;
  const { server, port } = await listen({ pauseOnConnect: true }, (s) => {
    serverSide = s;
  });
  const c = createConnection(port, '127.0.0.1');
  try {
    c.write('plain bytes');
    await until(() => serverSide !== undefined, 5000, 'connection');
    const s = serverSide!;
    assert.equal(s.reliable, false);
    assert.equal(s.isPaused(), true);
    let got = '';
    s.on('data', (chunk: Buffer) => (got += chunk.toString()));
    await sleep(200);
    assert.equal(got, '');
    s.resume();
    await until(
      () => got === 'plain bytes',
      5000,
      () => `got ${JSON.stringify(got)}`,
    );
  } finally {
    c.destroy();
    serverSide?.destroy();
    await closeServer(server);
  }
});
