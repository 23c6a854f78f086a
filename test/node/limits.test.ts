// Server bounds: caps on sessions, suspended sessions and buffered bytes,
// each with a clear error when reached, over real sockets.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, test } from 'node:test';
import { connect, RocksError, type ReliableSocket } from '../../src/index.js';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { until } from '../support/helpers.js';
import { closeServer, endAll, listen } from '../support/net.js';
import { stranger, type Stranger } from '../support/strangers.js';

/** Resolves with the first `n` bytes `socket` receives. */
function collectBytes(socket: ReliableSocket, n: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let got = 0;
  return new Promise((resolve) => {
    const onData = (d: Buffer) => {
      chunks.push(d);
      got += d.length;
      if (got >= n) {
        socket.off('data', onData);
        resolve(Buffer.concat(chunks));
      }
    };
    socket.on('data', onData);
  });
}

/** The link losses `socket` reports from now on ('suspend', 'reconnect-attempt'). */
function linkLosses(socket: ReliableSocket): string[] {
  const events: string[] = [];
  socket.on('suspend', () => events.push('suspend'));
  socket.on('reconnect-attempt', () => events.push('reconnect-attempt'));
  return events;
}

/** Writes `n` bytes to an echoing server and waits (20 s at most) for all of them to come back. */
async function echoThrough(socket: ReliableSocket, n: number, who: string): Promise<void> {
  let got = 0;
  const count = (d: Buffer) => (got += d.length);
  socket.on('data', count);
  const started = performance.now();
  socket.write(Buffer.alloc(n, 7));
  try {
    await until(
      () => got >= n,
      20_000,
      () => `${who} to get its ${n} bytes back (${got} came)`,
    );
  } finally {
    socket.off('data', count);
  }
  assert.equal(got, n);
  console.log(`  ${who} echoed ${n} bytes in ${Math.round(performance.now() - started)} ms`);
}

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

  test('maxBufferedBytes: a session that reads nothing holds at most its share; new sessions still connect and move data', async () => {
    const sockets: ReliableSocket[] = [];
    const budget = 256 * 1024;
    const { server, port } = await listen({ maxBufferedBytes: budget, receiveWindow: 1024 * 1024 }, (s) => {
      sockets.push(s);
      s.on('error', () => {}); // the clients below are destroyed, not ended
    });
    const writer = connect(port, '127.0.0.1');
    await once(writer, 'connect');
    // The server application reads nothing from the first session: what arrives stays buffered.
    const chunk = Buffer.alloc(64 * 1024, 1);
    for (let i = 0; i < 24; i++) writer.write(chunk);
    await until(() => sockets.length === 1 && sockets[0].readableLength >= budget / 2, 5000, 'half the budget to fill');
    await new Promise((r) => setTimeout(r, 300));
    const pinned = sockets[0].readableLength;
    console.log(`maxBufferedBytes ${budget}: one session that reads nothing holds ${pinned} bytes`);
    // The first window (1 MiB) was offered while the budget was empty; from half the budget on, no more.
    assert.ok(pinned < 24 * chunk.length, 'the window stopped growing');
    const later = connect(port, '127.0.0.1');
    await once(later, 'connect');
    await until(() => sockets.length === 2, 5000, 'the second session');
    sockets[1].pipe(sockets[1]);
    const echo = collectBytes(later, 100_000);
    later.write(Buffer.alloc(100_000, 2));
    assert.equal((await echo).length, 100_000, 'the second session moved its data both ways');
    // Reading frees the budget: everything arrives.
    let got = 0;
    sockets[0].on('data', (d: Buffer) => (got += d.length));
    await until(() => got === 24 * chunk.length, 5000, 'all the data to be read');
    later.destroy();
    writer.destroy();
    await until(() => server.sessionCount === 0, 5000, 'sessions released');
    await closeServer(server);
  });

  test('zero-window strangers pinning the budget: a legitimate session still moves data and new clients connect', { timeout: 60_000 }, async () => {
    const budget = 1024 * 1024;
    const echoes: ReliableSocket[] = [];
    const { server, port } = await listen({ maxBufferedBytes: budget, receiveWindow: 256 * 1024, failureTimeout: 1000 }, (s) => {
      echoes.push(s);
      s.on('error', () => {});
      s.pipe(s); // echo: what a stranger sends, the server owes back, and a zero window keeps it here
    });
    const legit = connect({ port, host: '127.0.0.1', failureTimeout: 1000 });
    await once(legit, 'connect');
    const strangers: Stranger[] = [];
    let fresh: ReliableSocket | undefined;
    try {
      for (let i = 0; i < 12; i++) strangers.push(await stranger(port, { confirm: true, window: 0, send: 256 * 1024, stay: true }));
      await until(() => server.sessionCount === 13, 5000, 'the strangers’ sessions');
      await new Promise((r) => setTimeout(r, 500));
      const pinned = server.bufferedBytes;
      console.log(`zero-window strangers: 12 of them pin ${pinned} bytes of a ${budget}-byte budget`);
      assert.ok(pinned >= budget, `the strangers pinned the whole budget (${pinned})`);
      // Each session is held to its guaranteed 16 KiB share, yet must move 64 times that
      // through it, on its first link: reading what arrived must reopen its window.
      const moved = 1024 * 1024;
      const legitLost = linkLosses(legit);
      await echoThrough(legit, moved, 'the established session');
      // A new client connects: with the budget exhausted it is offered its guaranteed 16 KiB window.
      // (Its failureTimeout matches the server's: a client heartbeat of 1 s would not keep a silent link alive there.)
      fresh = connect({ port, host: '127.0.0.1', failureTimeout: 1000 });
      const freshLost = linkLosses(fresh);
      await once(fresh, 'connect');
      await echoThrough(fresh, moved, 'a new client');
      assert.ok(server.bufferedBytes >= budget, 'the strangers still pinned the budget');
      assert.deepEqual(legitLost, [], 'the established session kept its link');
      assert.deepEqual(freshLost, [], 'the new client kept its first link');
    } finally {
      for (const s of strangers) s.socket.destroy();
      legit.destroy();
      fresh?.destroy();
      for (const s of echoes) s.destroy();
      await until(() => server.sessionCount === 0, 5000, 'sessions released');
      await closeServer(server);
    }
  });

  test('eviction by strangers: twenty confirmed strangers that moved one byte do not evict a suspended session that moved data', async () => {
    const serverErrors: string[] = [];
    const { server, port } = await listen({ ...fast, maxSuspendedSessions: 20, suspendLimit: 3000 }, (s) => {
      s.on('error', (e: RocksError) => serverErrors.push(e.code));
      s.pipe(s);
    });
    const proxy = new FaultProxy(port);
    const legit = connect({ port: await proxy.listen(), host: '127.0.0.1', ...fast });
    await once(legit, 'connect');
    const echoed = collectBytes(legit, 10_000);
    legit.write(Buffer.alloc(10_000, 1));
    await echoed;
    proxy.blackhole();
    await until(() => server.suspendedCount === 1, 5000, 'the legitimate session to be suspended');
    // Strangers that do run X25519: HELLO, CONFIRM, ACK, one byte, gone. Each is held, suspended.
    for (let i = 0; i < 25; i++) await (await stranger(port, { confirm: true })).closed;
    await until(() => serverErrors.filter((c) => c === 'ERR_ROCKS_EVICTED').length === 6, 5000, 'evictions');
    assert.equal(server.suspendedCount, 20);
    const reconnected = once(legit, 'reconnect');
    proxy.heal();
    await reconnected;
    const after = collectBytes(legit, 5);
    legit.write('after');
    assert.equal((await after).toString(), 'after', 'the legitimate session survived and resumed');
    legit.destroy();
    await proxy.close();
    await until(() => server.sessionCount === 0, 10_000, 'sessions released');
    await closeServer(server);
  });
});
