// The node:net surface of ReliableSocket and ReliableServer over real sockets.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { performance } from 'node:perf_hooks';
import { connect as connectH2, createServer as createH2Server } from 'node:http2';
import { createServer as netCreateServer, type AddressInfo, type Socket } from 'node:net';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, test } from 'node:test';
import { connect, createConnection, ReliableServer, ReliableSocket, RocksError } from '../../src/index.js';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { Program, sleep, until } from '../support/helpers.js';
import { closeServer, collect, hasIPv6Loopback, listen } from '../support/net.js';

/** The library as the compiled tests load it, for child processes. */
const INDEX = new URL('../../src/index.js', import.meta.url).href;

/** The link socket a session runs on now (its driver's). */
function linkOf(s: ReliableSocket): Socket | undefined {
  return (s as unknown as { driver: { activeSocket(): Socket | undefined } }).driver.activeSocket();
}

function echo(s: ReliableSocket): void {
  s.pipe(s);
  s.on('error', () => {});
}

describe('ReliableSocket and ReliableServer speak node:net', () => {
  test('echo over IPv4 with the net.Socket properties applications read', async () => {
    let serverSide: ReliableSocket | undefined;
    const { server, port } = await listen({}, (s) => {
      serverSide = s;
      echo(s);
    });
    assert.ok(server instanceof ReliableServer);
    assert.equal(server.listening, true);
    const c = connect(port, '127.0.0.1');
    assert.ok(c instanceof ReliableSocket);
    assert.equal(c.connecting, true);
    assert.equal(c.pending, true);
    assert.equal(c.readyState, 'opening');
    const received = collect(c);
    const closed = once(c, 'close');
    c.write('hello ');
    await once(c, 'connect');
    assert.equal(c.connecting, false);
    assert.equal(c.pending, false);
    assert.equal(c.readyState, 'open');
    assert.equal(c.remoteAddress, '127.0.0.1');
    assert.equal(c.remotePort, port);
    assert.equal(c.remoteFamily, 'IPv4');
    assert.equal(c.localAddress, '127.0.0.1');
    assert.equal(typeof c.localPort, 'number');
    assert.deepEqual(c.address(), { address: '127.0.0.1', family: 'IPv4', port: c.localPort });
    assert.equal(c.setNoDelay(true), c);
    assert.equal(c.setKeepAlive(true, 1000), c);
    await until(() => serverSide !== undefined, 5000, 'connection');
    assert.equal(serverSide!.remoteAddress, '127.0.0.1');
    assert.equal(serverSide!.remotePort, c.localPort);
    assert.equal(serverSide!.localPort, port);
    const count = await new Promise<number>((resolve) => server.getConnections((_e, n) => resolve(n)));
    assert.equal(count, 1);
    c.end('world');
    assert.equal((await received).toString(), 'hello world');
    await closed;
    assert.equal(c.bytesWritten, 11);
    assert.equal(c.bytesRead, 11);
    assert.equal(c.readyState, 'closed');
    await closeServer(server);
    // The server lets go once the client confirms the close (CLOSE_ACK).
    await until(() => server.sessionCount === 0, 5000, 'the server to release the session');
  });

  test('echo over IPv6', { skip: hasIPv6Loopback() ? false : 'no IPv6 loopback (::1) on this machine' }, async () => {
    const { server, port } = await listen({}, echo, '::1');
    const c = createConnection({ port, host: '::1' });
    const received = collect(c);
    await once(c, 'connect');
    assert.equal(c.remoteFamily, 'IPv6');
    assert.equal(c.remoteAddress, '::1');
    c.end(Buffer.from('over six'));
    assert.equal((await received).toString(), 'over six');
    await closeServer(server);
  });

  test('works with stream.pipeline, Readable.from and for await', async () => {
    const { server, port } = await listen({}, (s) => {
      void pipeline(s, s).catch(() => {});
    });
    const c = connect({ port, host: 'localhost' });
    const chunks = Array.from({ length: 200 }, (_, i) => Buffer.alloc(1000 + i, i));
    const expected = Buffer.concat(chunks);
    const reading = (async () => {
      const got: Buffer[] = [];
      for await (const chunk of c) got.push(chunk as Buffer);
      return Buffer.concat(got);
    })();
    await pipeline(Readable.from(chunks), c);
    assert.ok((await reading).equals(expected));
    await closeServer(server);
  });

  test('setTimeout emits timeout after idleness, and the socket stays usable', async () => {
    const { server, port } = await listen({}, echo);
    const c = connect(port, '127.0.0.1');
    await once(c, 'connect');
    const started = Date.now();
    c.setTimeout(150);
    assert.equal(c.timeout, 150);
    await once(c, 'timeout');
    assert.ok(Date.now() - started >= 140, 'timeout not before the idle time');
    c.setTimeout(0);
    assert.equal(c.timeout, undefined);
    const received = collect(c);
    c.end('still here');
    assert.equal((await received).toString(), 'still here');
    await closeServer(server);
  });

  test('half-close: with allowHalfOpen the server keeps writing after the client ends', async () => {
    const { server, port } = await listen({ allowHalfOpen: true }, (s) => {
      s.resume();
      s.on('end', () => {
        s.write('after your end, ');
        setTimeout(() => s.end('goodbye'), 50);
      });
    });
    const c = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    const received = collect(c);
    const closed = once(c, 'close');
    c.end('bye');
    assert.equal((await received).toString(), 'after your end, goodbye');
    await closed;
    await closeServer(server);
  });

  test('a refused connection fails like net.connect, with ECONNREFUSED', async () => {
    const blocker = netCreateServer();
    blocker.listen(0, '127.0.0.1');
    await once(blocker, 'listening');
    const port = (blocker.address() as AddressInfo).port;
    await new Promise<void>((r) => blocker.close(() => r()));
    // Probing first, and (enhanced: true) through a session's first link.
    for (const c of [connect(port, '127.0.0.1'), connect({ port, host: '127.0.0.1', enhanced: true })]) {
      const closed = new Promise((resolve) => c.on('close', resolve));
      const err = await new Promise<Error>((resolve) => c.on('error', resolve));
      assert.equal((err as NodeJS.ErrnoException).code, 'ECONNREFUSED');
      await closed;
    }
  });

  test('destroy() aborts: the peer gets ERR_ROCKS_PEER_ABORTED', async () => {
    let serverSide: ReliableSocket | undefined;
    const { server, port } = await listen({}, (s) => {
      serverSide = s;
    });
    const c = connect(port, '127.0.0.1');
    await once(c, 'connect');
    c.write('x');
    await until(() => serverSide !== undefined, 5000, 'connection');
    const failed = once(serverSide!, 'error');
    c.destroy();
    const [err] = await failed;
    assert.ok(err instanceof RocksError);
    assert.equal(err.code, 'ERR_ROCKS_PEER_ABORTED');
    await until(() => server.sessionCount === 0, 5000, 'server to release the session');
    await closeServer(server);
  });

  test('destroy() after end() with nothing unread: the last bytes still arrive, then a clean end; new data from the peer aborts', async () => {
    const BYTES = 256 << 10; // within what the session takes at once: net.Socket too drops what it still holds
    const received: Buffer[] = [];
    const sides: ReliableSocket[] = [];
    const errors: string[] = [];
    const { server, port } = await listen({ allowHalfOpen: true }, (s) => {
      sides.push(s);
      s.on('error', (err: RocksError) => errors.push(err.code));
      s.on('data', (d: Buffer) => received.push(d));
    });
    // As close() after shutdown() on TCP: written, ended, destroyed in one turn.
    const c = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    await once(c, 'connect');
    c.end(Buffer.alloc(BYTES, 0x61));
    c.destroy();
    await until(() => sides[0]?.readableEnded === true, 10_000, 'the server to read the end');
    assert.equal(Buffer.concat(received).length, BYTES);
    sides[0].end();
    await until(() => server.sessionCount === 0, 5000, 'the session to finish');
    assert.deepEqual(errors, [], 'a clean close');

    // The same, but the server writes after the client closed: that aborts, as a TCP reset would.
    const d = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    await once(d, 'connect');
    d.end('bye');
    d.destroy();
    await until(() => sides[1]?.readableEnded === true, 10_000, 'the server to read the second end');
    sides[1].write('too late');
    await until(() => errors.length === 1, 5000, 'the abort');
    assert.deepEqual(errors, ['ERR_ROCKS_PEER_ABORTED']);
    await closeServer(server);
  });

  test('server: listen errors, close callbacks and events behave as net.Server', async () => {
    const { server, port } = await listen({}, echo);
    const second = new ReliableServer();
    second.listen(port, '127.0.0.1');
    const [err] = await once(second, 'error');
    assert.equal((err as NodeJS.ErrnoException).code, 'EADDRINUSE');
    const notRunning = await new Promise<Error | undefined>((resolve) => second.close((e) => resolve(e)));
    assert.equal((notRunning as NodeJS.ErrnoException | undefined)?.code, 'ERR_SERVER_NOT_RUNNING');
    const closed = once(server, 'close');
    server.close();
    await closed;
    assert.equal(server.listening, false);
  });

  test("close() calls back once the application's sockets are closed, not when the last link ends its closing handshake", async () => {
    let serverSide: ReliableSocket | undefined;
    let ourListeners = -1;
    const { server, port } = await listen({}, (s) => {
      serverSide = s;
      // The server hears of the close through the session's driver: no
      // listener of its own beside the application's (an array of two).
      ourListeners = s.listenerCount('close');
      echo(s);
    });
    const proxy = new FaultProxy(port);
    const c = connect(await proxy.listen(), '127.0.0.1');
    c.resume();
    await once(c, 'connect');
    await until(() => serverSide !== undefined, 5000, 'connection');
    // Slow the path, so the session's last frames are still on their way
    // after both sockets have closed.
    proxy.setDelay(300);
    const serverClosed = once(serverSide!, 'close');
    c.end();
    await serverClosed;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    assert.equal(ourListeners, 0, "the server's own 'close' listeners on a session's socket");
    assert.equal(server.sessionCount, 1, 'the session was still finishing its closing handshake');
    await until(() => server.sessionCount === 0, 10_000, 'the session to finish');
    await proxy.close();
  });

  test("a link the server ends is closed on the client at once, though only Node listens for its 'end'", { timeout: 15_000 }, async () => {
    let serverSide: ReliableSocket | undefined;
    const { server, port } = await listen({}, (s) => {
      serverSide = s;
      echo(s);
    });
    const c = connect({ port, host: '127.0.0.1', failureTimeout: 20_000 });
    const received = collect(c);
    await once(c, 'connect');
    await until(() => serverSide !== undefined, 5000, 'connection');
    const link = linkOf(c)!;
    const driver = (c as unknown as { driver: { session: { activeLink?: number }; link(id: number): unknown } }).driver;
    const firstId = driver.session.activeLink!;
    // Node's own listener ends the socket at the peer's FIN; a second one of ours would cost an array.
    assert.equal(link.listenerCount('end'), 1, "'end' listeners on the client's link socket");
    // A FIN with the session open: the client must not wait out failureTimeout to dial again.
    linkOf(serverSide!)!.end();
    const [suspended] = (await once(c, 'suspend')) as [{ reason: string }];
    await once(c, 'reconnect');
    assert.notEqual(linkOf(c), link, 'the session runs on a new link');
    assert.equal(driver.link(firstId), undefined, "the driver let go of the closed link's handle");
    c.end('after the FIN');
    await once(c, 'close');
    assert.equal((await received).toString(), 'after the FIN');
    assert.equal(suspended.reason, 'closed by peer');
    await closeServer(server);
  });

  test('bad arguments get clear errors', () => {
    assert.throws(
      () => connect(70000),
      (e: unknown) => e instanceof RocksError && e.code === 'ERR_ROCKS_INVALID_OPTION',
    );
    assert.throws(() => connect({ port: 1, failureTimeout: 10 }), /failureTimeout must be a number from 200/);
    assert.throws(() => connect({ host: 'x' }), /needs a port or a path/);
    assert.throws(() => new ReliableSocket().setTimeout(-1), RocksError);
  });

  test('unref() lets the process exit while connected; ref() holds it again', { timeout: 30_000 }, async () => {
    // Real processes: one connects, calls unref() and must then exit by
    // itself; the other calls unref() then ref() and must still be running
    // (connected, idle) when the first has long exited.
    const serverSides: ReliableSocket[] = [];
    const { server, port } = await listen({}, (s) => {
      serverSides.push(s);
      echo(s);
    });
    const child = (calls: string): Program => {
      const script = `
        const { connect } = await import(${JSON.stringify(INDEX)});
        const c = connect(${port}, '127.0.0.1');
        c.on('error', (e) => console.error(e.message));
        c.on('connect', () => {
          ${calls}
          console.log(JSON.stringify({ type: 'connected', reliable: c.reliable }));
        });`;
      return new Program(
        spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] }),
        `a child that calls ${calls}`,
      );
    };
    // A process that nothing holds exits within milliseconds; one held stays for good.
    const WINDOW = 2000;
    const unrefd = child('c.unref();');
    const held = child('c.unref(); c.ref();');
    try {
      for (const p of [unrefd, held]) await p.waitForOutput(/"type":"connected","reliable":true/);
      const connectedAt = Date.now();
      await until(
        () => unrefd.exited !== undefined,
        WINDOW,
        () => `the unref()'d process to exit by itself:\n${unrefd.output}`,
        20,
      );
      assert.equal(unrefd.exited, 0, unrefd.output);
      console.log(`# unref(): the process exited by itself, ${Date.now() - connectedAt} ms after both children had connected`);
      await sleep(Math.max(0, WINDOW - (Date.now() - connectedAt)));
      assert.equal(held.exited, undefined, `ref() after unref() holds the process: it exited (${held.exited}):\n${held.output}`);
      await held.stop();
      assert.equal(held.exited, 'SIGTERM', 'it ran until stopped');
      assert.equal(serverSides.length, 2);
    } finally {
      await unrefd.stop();
      await held.stop();
      // The children left without closing: their sessions stay suspended on the server until aborted.
      for (const s of serverSides) s.destroy();
      await closeServer(server);
    }
  });

  test('node:http2 without TLS (h2c, as gRPC uses it) over rocks: 300 calls through link resets, every answer right', {
    timeout: 60_000,
  }, async () => {
    // A server hands each rocks socket to node:http2, which refuses a
    // socket that claims TLS without ALPN (alpnProtocol false) with
    // "403 Missing ALPN Protocol": without TLS the TLS properties must read
    // as on a net.Socket.
    const h2 = createH2Server();
    h2.on('stream', (stream) => {
      const body: Buffer[] = [];
      stream.on('data', (d: Buffer) => body.push(d));
      stream.on('end', () => {
        stream.respond({ ':status': 200 }, { waitForTrailers: true });
        stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
        stream.end(Buffer.concat(body));
      });
      stream.on('error', () => {});
    });
    const serverSides: ReliableSocket[] = [];
    const { server, port } = await listen({}, (s) => {
      serverSides.push(s);
      s.on('error', () => {});
      h2.emit('connection', s);
    });
    const proxy = new FaultProxy(port);
    const proxyPort = await proxy.listen();
    let client: ReliableSocket | undefined;
    let resumes = 0;
    const session = connectH2('http://localhost', {
      createConnection: () => {
        client = connect({ port: proxyPort, host: '127.0.0.1', failureTimeout: 2000 });
        client.on('reconnect', () => resumes++);
        return client;
      },
    });
    const call = (i: number): Promise<boolean> =>
      new Promise((resolve, reject) => {
        const body = Buffer.alloc(1 + ((i * 7919) % 8000), i & 0xff);
        const req = session.request({ ':method': 'POST', ':path': '/echo' });
        const got: Buffer[] = [];
        let status: unknown;
        req.on('trailers', (t) => (status = t['grpc-status']));
        req.on('data', (d: Buffer) => got.push(d));
        req.on('error', reject);
        req.on('end', () => resolve(status === '0' && Buffer.concat(got).equals(body)));
        req.end(body);
      });
    let right = 0;
    for (let i = 0; i < 300; i++) {
      if (i > 0 && i % 50 === 0) proxy.reset();
      if (await call(i)) right++;
    }
    assert.equal(right, 300);
    assert.ok(resumes >= 5, `the client resumed ${resumes} times`);
    assert.equal(serverSides.length, 1, 'one connection all along');
    for (const s of [client!, serverSides[0]]) {
      assert.equal(s.reliable, true);
      assert.deepEqual([s.encrypted, s.authorized, s.alpnProtocol], [undefined, undefined, undefined]);
    }
    await new Promise<void>((resolve) => session.close(resolve));
    // Both ends finish their closing handshake through the proxy before it goes.
    await until(() => serverSides[0].destroyed, 10_000, 'the server side to close');
    await proxy.close();
    await closeServer(server);
  });

  test('earlyData: what is written before connect goes behind the HELLO, so the echo comes one round trip after it, not two', {
    timeout: 30_000,
  }, async () => {
    const DELAY = 40; // each way, through the proxy: a round trip of 80 ms
    const serverSides: ReliableSocket[] = [];
    const { server, port } = await listen({}, (s) => {
      serverSides.push(s);
      echo(s);
    });
    const proxy = new FaultProxy(port);
    const proxyPort = await proxy.listen();
    proxy.setDelay(DELAY);
    const timings: Record<string, number> = {};
    try {
      for (const earlyData of [false, true]) {
        const start = performance.now();
        const c = connect({ port: proxyPort, host: '127.0.0.1', enhanced: true, earlyData });
        try {
          c.write('ping');
          let connectAt = 0;
          c.once('connect', () => (connectAt = performance.now()));
          await once(c, 'data');
          const echoedAt = performance.now();
          timings[String(earlyData)] = echoedAt - start;
          assert.equal(c.reliable, true);
          // With earlyData, WELCOME and the echo travel together: no round trip between 'connect' and the answer.
          if (earlyData) assert.ok(echoedAt - connectAt < DELAY, `echo ${(echoedAt - connectAt).toFixed(1)} ms after connect`);
          else assert.ok(echoedAt - connectAt >= 2 * DELAY - 5, `echo ${(echoedAt - connectAt).toFixed(1)} ms after connect`);
        } finally {
          c.destroy();
        }
      }
      console.log(
        `# connect to first echo through a ${2 * DELAY} ms round trip: ${timings.false.toFixed(0)} ms without earlyData, ${timings.true.toFixed(0)} ms with it`,
      );
    } finally {
      // A destroy's abort may still be on its way through the delay when the proxy closes.
      for (const s of serverSides) s.destroy();
      await proxy.close();
      await closeServer(server);
    }
  });

  test('closing both ends leaves no socket or timer behind', async () => {
    const baseline = resources();
    const { server, port } = await listen({}, echo);
    for (let i = 0; i < 5; i++) {
      const c = connect(port, '127.0.0.1');
      const received = collect(c);
      const closed = once(c, 'close');
      c.end(`round ${i}`);
      assert.equal((await received).toString(), `round ${i}`);
      await closed;
    }
    await closeServer(server);
    await until(() => server.sessionCount === 0, 5000, 'sessions to be released');
    await until(
      () => sameResources(resources(), baseline),
      5000,
      `no handles left (had ${JSON.stringify(baseline)}, now ${JSON.stringify(resources())})`,
    );
  });
});

function resources(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of process.getActiveResourcesInfo()) if (r !== 'TTYWrap' && r !== 'FSReqCallback') out[r] = (out[r] ?? 0) + 1;
  return out;
}

function sameResources(a: Record<string, number>, b: Record<string, number>): boolean {
  for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) if ((a[k] ?? 0) > (b[k] ?? 0)) return false;
  return true;
}
