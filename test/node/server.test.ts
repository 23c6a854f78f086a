// ReliableServer's own bookkeeping and the net.Server options it takes.

import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { connect, type ReliableServer, type ReliableSocket } from '../../src/index.js';
import { sleep, until } from '../support/helpers.js';
import { closeServer, collect, listen } from '../support/net.js';

/** The server's table of the sessions it drives (private: what this test is about). */
function driverCount(server: ReliableServer): number {
  return (server as unknown as { drivers: Map<unknown, unknown> }).drivers.size;
}

test('a server forgets each session once it is released, also after the application let go of its socket', async () => {
  const { server, port } = await listen({}, (s) => s.pipe(s));
  after(() => server.close());
  const clients: Promise<void>[] = [];
  for (let i = 0; i < 5; i++) {
    const c = connect(port, '127.0.0.1');
    const received = collect(c);
    c.end(`message ${i}`);
    clients.push(received.then((b) => assert.equal(b.toString(), `message ${i}`)));
  }
  await Promise.all(clients);
  // The closing handshake ends with CLOSE_ACK, after the sockets closed.
  await until(
    () => server.sessionCount === 0,
    10_000,
    () => `${server.sessionCount} sessions still held`,
  );
  await until(
    () => driverCount(server) === 0,
    2000,
    () => `${driverCount(server)} drivers kept after their sessions were released`,
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
