// Server bounds: caps on sessions, suspended sessions and buffered bytes,
// each with a clear error when reached, over real sockets.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, test } from 'node:test';
import { connect, RocksError, type ReliableSocket } from '../../src/index.js';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { until } from '../support/helpers.js';
import { closeServer, endAll, listen } from '../support/net.js';

const fast = { failureTimeout: 300, heartbeatInterval: 60, reconnectDelay: 10, reconnectDelayMax: 100 };

function errorOf(socket: ReliableSocket): Promise<Error> {
  return new Promise((resolve) => socket.on('error', resolve));
}

describe('server limits', () => {
  test('maxSessions: one session too many is refused with ERR_ROCKS_SERVER_BUSY; the others carry on', async () => {
    const { server, port } = await listen({ maxSessions: 2 }, (s) => s.pipe(s));
    const a = connect(port, '127.0.0.1');
    const b = connect(port, '127.0.0.1');
    await Promise.all([once(a, 'connect'), once(b, 'connect')]);
    const c = connect(port, '127.0.0.1');
    const err = await errorOf(c);
    assert.ok(err instanceof RocksError);
    assert.equal(err.code, 'ERR_ROCKS_SERVER_BUSY');
    assert.match(err.message, /2 sessions/);
    a.write('still ');
    const [echo] = await once(a, 'data');
    assert.equal(echo.toString(), 'still ');
    a.resume();
    b.resume();
    const closing = Promise.all([new Promise((r) => a.on('close', r)), new Promise((r) => b.on('close', r))]);
    a.end();
    b.end();
    await closing;
    await until(() => server.sessionCount === 0, 5000, 'sessions released');
    await closeServer(server);
  });

  test('maxSuspendedSessions: past the cap the longest-suspended session is evicted, and its client told so', async () => {
    const serverErrors: string[] = [];
    let accepted = 0;
    const { server, port } = await listen({ ...fast, maxSuspendedSessions: 1 }, (s) => {
      accepted++;
      s.pipe(s);
      s.on('error', (e: RocksError) => serverErrors.push(e.code));
    });
    const proxy = new FaultProxy(port);
    const proxyPort = await proxy.listen();
    const clients = [connect({ port: proxyPort, host: '127.0.0.1', ...fast }), connect({ port: proxyPort, host: '127.0.0.1', ...fast })];
    const outcomes = clients.map(
      (c) =>
        new Promise<string>((resolve) => {
          c.on('error', (e: RocksError) => resolve(e.code));
          c.on('reconnect', () => resolve('resumed'));
        }),
    );
    for (const c of clients) c.resume();
    await Promise.all(clients.map((c) => once(c, 'connect')));
    await until(() => accepted === 2 && server.sessionCount === 2, 5000, 'two sessions');
    proxy.blackhole();
    await until(() => serverErrors.length === 1, 5000, 'an eviction');
    assert.deepEqual(serverErrors, ['ERR_ROCKS_EVICTED']);
    assert.equal(server.sessionCount, 1);
    assert.equal(server.suspendedCount, 1);
    proxy.heal();
    assert.deepEqual((await Promise.all(outcomes)).sort(), ['ERR_ROCKS_EVICTED', 'resumed']);
    const survivor = clients.find((c) => !c.destroyed)!;
    await endAll(survivor, server, proxy);
  });

  test('maxBufferedBytes: unread data fills the budget; new sessions are refused until it frees', async () => {
    const sockets: ReliableSocket[] = [];
    const budget = 256 * 1024;
    const { server, port } = await listen({ maxBufferedBytes: budget, receiveWindow: 1024 * 1024 }, (s) => {
      sockets.push(s);
      s.on('error', () => {}); // the clients below are destroyed, not ended
    });
    const writer = connect(port, '127.0.0.1');
    await once(writer, 'connect');
    // The server application reads nothing: what arrives stays buffered, up to the budget and a window's worth.
    const chunk = Buffer.alloc(64 * 1024, 1);
    for (let i = 0; i < 8; i++) writer.write(chunk);
    await until(() => sockets.length === 1 && sockets[0].readableLength >= budget, 5000, 'the budget to fill');
    const refused = connect(port, '127.0.0.1');
    const err = await errorOf(refused);
    assert.ok(err instanceof RocksError);
    assert.equal(err.code, 'ERR_ROCKS_SERVER_BUSY');
    assert.match(err.message, /buffer budget/);
    // Reading frees the budget: everything arrives and new sessions are welcome again.
    let got = 0;
    sockets[0].on('data', (d: Buffer) => (got += d.length));
    await until(() => got === 8 * chunk.length, 5000, 'all the data to be read');
    const later = connect(port, '127.0.0.1');
    await once(later, 'connect');
    later.destroy();
    writer.destroy();
    await until(() => server.sessionCount === 0, 5000, 'sessions released');
    await closeServer(server);
  });
});
