// The Enhancement Detection Protocol over real sockets: what each kind of
// server sees, what each kind of client gets, the probe's bound, the cache,
// the options that skip detection, version negotiation, and IPv6.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { connect as netConnect, createServer as netCreateServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterEach, describe, test } from 'node:test';
import {
  connect,
  detectionCache,
  encodeAnnouncement,
  ROCKS,
  RocksError,
  type DetectInfo,
  type ReliableConnectOptions,
  type ReliableSocket,
} from '../../src/index.js';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { until } from '../support/helpers.js';
import { closeServer, collect, endAll, hasIPv6Loopback, listen } from '../support/net.js';

/** What an ordinary server saw on each connection it accepted. */
interface Seen {
  received: Buffer;
  /** The client ended its side. */
  ended: boolean;
  closed: boolean;
}

/** An ordinary net server running `service`, which records every connection. */
async function ordinaryServer(
  service: (s: Socket) => void,
  host = '127.0.0.1',
  port = 0,
  allowHalfOpen = false,
): Promise<{ server: Server; port: number; seen: Seen[] }> {
  const seen: Seen[] = [];
  const server = netCreateServer({ allowHalfOpen }, (s) => {
    const record: Seen = { received: Buffer.alloc(0), ended: false, closed: false };
    seen.push(record);
    s.on('data', (d: Buffer) => (record.received = Buffer.concat([record.received, d])));
    s.on('end', () => (record.ended = true));
    s.on('close', () => (record.closed = true));
    s.on('error', () => {});
    service(s);
  });
  server.listen(port, host);
  await once(server, 'listening');
  return { server, port: (server.address() as AddressInfo).port, seen };
}

const netEcho = (s: Socket) => s.pipe(s);
/** An echo for rocks servers; clients here may destroy their end at any time. */
const rocksEcho = (s: ReliableSocket) => {
  s.on('error', () => {});
  s.pipe(s);
};

/** Connects and resolves with the 'detect' event once connected. */
async function connected(options: ReliableConnectOptions): Promise<{ c: ReliableSocket; detect: DetectInfo }> {
  const c = connect(options);
  const detect = new Promise<DetectInfo>((r) => c.once('detect', r));
  await once(c, 'connect');
  return { c, detect: await detect };
}

async function roundTrip(c: ReliableSocket, text: string): Promise<void> {
  let got = '';
  const onData = (d: Buffer) => (got += d.toString());
  c.on('data', onData);
  c.write(text);
  await until(() => got.length >= text.length, 5000, `echo of ${text}`);
  c.removeListener('data', onData);
  assert.equal(got, text);
}

describe('EDP over real sockets', () => {
  afterEach(() => detectionCache.clear());

  test('a rocks client to an ordinary server: a probe that sends nothing, then a plain connection carrying only the application bytes', async () => {
    const { server, port, seen } = await ordinaryServer(netEcho);
    const { c, detect } = await connected({ port, host: '127.0.0.1' });
    assert.deepEqual(detect, { reliable: false, reason: 'ordinary server (probe: closed)', cached: false });
    assert.equal(c.reliable, false);
    const payload = randomBytes(200_000);
    const echoed = collect(c);
    const closed = once(c, 'close');
    c.end(payload);
    assert.ok((await echoed).equals(payload));
    await closed;
    assert.equal(seen.length, 2, 'the probe and the connection');
    assert.equal(seen[0].received.length, 0, 'the probe sent nothing');
    assert.ok(seen[0].ended && seen[0].closed, 'the probe ended its side at once, and closed');
    assert.ok(seen[1].received.equals(payload), 'the connection carried exactly the application bytes, from the first');
    assert.equal(c.bytesWritten, payload.length);
    assert.equal(c.bytesRead, payload.length);
    await new Promise((r) => server.close(r));
  });

  test('an ordinary client to a rocks server: served plainly, same bytes both ways, half-close included', async () => {
    let serverSide: ReliableSocket | undefined;
    const { server, port } = await listen({ allowHalfOpen: true }, (s) => {
      serverSide = s;
      const chunks: Buffer[] = [];
      s.on('data', (d: Buffer) => chunks.push(d));
      // Answers once the client ended its side: the half-close came through.
      s.on('end', () => s.end(Buffer.concat([Buffer.from('got '), ...chunks])));
    });
    const client = netConnect(port, '127.0.0.1');
    await once(client, 'connect');
    const clientPort = client.localPort;
    const payload = randomBytes(100_000);
    client.end(payload);
    const reply: Buffer[] = [];
    client.on('data', (d: Buffer) => reply.push(d));
    await once(client, 'end');
    assert.ok(Buffer.concat(reply).equals(Buffer.concat([Buffer.from('got '), payload])));
    assert.equal(serverSide!.reliable, false);
    assert.equal(serverSide!.remotePort, clientPort);
    assert.equal(serverSide!.bytesRead, payload.length);
    assert.equal(server.sessionCount, 0, 'no rocks session for an ordinary client');
    client.destroy();
    await closeServer(server);
  });

  test('rocks to rocks: detection says enhanced, and the connection survives a reset; a second connect uses the cache and opens one connection', async () => {
    let serverSide: ReliableSocket | undefined;
    const { server, port } = await listen({}, (s) => {
      serverSide ??= s;
      rocksEcho(s);
    });
    const proxy = new FaultProxy(port);
    const proxyPort = await proxy.listen();
    const options = { port: proxyPort, host: '127.0.0.1', failureTimeout: 1000 };
    const { c, detect } = await connected(options);
    assert.deepEqual(detect, { reliable: true, reason: 'the server announced rocks', cached: false });
    assert.equal(c.reliable, true);
    // Each connection through the proxy is one the server accepted: the probe, then the session's.
    assert.equal(proxy.connections, 2);
    await roundTrip(c, 'before ');
    await until(() => serverSide !== undefined, 5000, 'the connection');
    assert.equal(serverSide!.reliable, true);
    proxy.reset();
    await once(c, 'reconnect');
    await roundTrip(c, 'after the reset');

    const { c: second, detect: again } = await connected(options);
    assert.deepEqual(again, { reliable: true, reason: 'the server announced rocks', cached: true });
    assert.equal(proxy.connections, 4, 'the resume, and the second client without a probe');
    await roundTrip(second, 'second');
    second.end();
    await once(second, 'close');
    await endAll(c, server, proxy);
  });

  test('connections started together share one probe, so a crowd of them is not taken for an ordinary server', { timeout: 30_000 }, async () => {
    const { server, port } = await listen({}, rocksEcho);
    const proxy = new FaultProxy(port);
    const options = { port: await proxy.listen(), host: '127.0.0.1' };
    const all = await Promise.all(Array.from({ length: 200 }, () => connected(options)));
    assert.deepEqual(new Set(all.map(({ detect }) => detect.reliable)), new Set([true]), 'every connection reliable');
    assert.equal(proxy.connections, 201, 'one probe, then 200 sessions');
    for (const { c } of all) c.destroy();
    await until(() => server.sessionCount === 0, 5000, 'the server to hear every abort');
    await proxy.close();
    await closeServer(server);
  });

  test('detectCacheTtl 0 probes every time; enhanced: true or false skips the probe', async () => {
    const { server, port } = await listen({}, rocksEcho);
    const proxy = new FaultProxy(port);
    const proxyPort = await proxy.listen();
    for (let i = 0; i < 2; i++) {
      const { c, detect } = await connected({ port: proxyPort, host: '127.0.0.1', detectCacheTtl: 0 });
      assert.equal(detect.cached, false);
      c.destroy();
    }
    assert.equal(proxy.connections, 4);
    const { c: skip, detect } = await connected({ port: proxyPort, host: '127.0.0.1', enhanced: true });
    assert.deepEqual(detect, { reliable: true, reason: 'the application said the server speaks rocks', cached: false });
    assert.equal(proxy.connections, 5);
    await roundTrip(skip, 'known rocks');
    skip.destroy();

    const ordinary = await ordinaryServer(netEcho);
    const { c: plain, detect: plainDetect } = await connected({ port: ordinary.port, host: '127.0.0.1', enhanced: false });
    assert.deepEqual(plainDetect, { reliable: false, reason: 'the application said the server is ordinary', cached: false });
    await roundTrip(plain, 'known ordinary');
    plain.destroy();
    assert.equal(ordinary.seen.length, 1, 'no probe');
    assert.equal(ordinary.seen[0].received.toString(), 'known ordinary');
    await new Promise((r) => ordinary.server.close(r));
    await until(() => server.sessionCount === 0, 5000, 'sessions released');
    await proxy.close();
    await closeServer(server);
  });

  test('a probe that nobody answers costs probeTimeout, then the server is taken for ordinary', async () => {
    // Accepts, never reads, never closes (not even after the probe's end).
    const held: Socket[] = [];
    const { server, port, seen } = await ordinaryServer(
      (s) => {
        s.pause();
        held.push(s);
      },
      '127.0.0.1',
      0,
      true,
    );
    for (const probeTimeout of [200, undefined]) {
      detectionCache.clear();
      const start = performance.now();
      const { c, detect } = await connected({ port, host: '127.0.0.1', probeTimeout });
      const elapsed = performance.now() - start;
      const bound = probeTimeout ?? 500;
      assert.deepEqual(detect, { reliable: false, reason: `ordinary server (probe: no answer within ${bound} ms)`, cached: false });
      console.log(`# probe to a silent server with probeTimeout ${probeTimeout ?? 'default'}: connected in ${elapsed.toFixed(0)} ms`);
      assert.ok(elapsed >= bound - 5, `connected after ${elapsed.toFixed(0)} ms, before the probe timed out`);
      // Loose on purpose: this asserts the bound is kept, not how fast the machine is.
      assert.ok(elapsed < bound + 400, `connected after ${elapsed.toFixed(0)} ms, far beyond the ${bound} ms probe timeout`);
      c.destroy();
    }
    assert.equal(seen.length, 4);
    for (const s of held) s.destroy();
    await new Promise((r) => server.close(r));
  });

  test('a stale cached verdict: the server became ordinary; the client probes again and connects plainly', async () => {
    const rocks = await listen({}, rocksEcho);
    const { c, detect } = await connected({ port: rocks.port, host: '127.0.0.1' });
    assert.equal(detect.reliable, true);
    await endAll(c, rocks.server);
    // An ordinary echo server takes the same port (the hardest case: it echoes our announcement back).
    const { server, seen } = await ordinaryServer(netEcho, '127.0.0.1', rocks.port);
    const { c: plain, detect: after } = await connected({ port: rocks.port, host: '127.0.0.1' });
    assert.deepEqual(after, { reliable: false, reason: 'ordinary server (probe: closed)', cached: false });
    await roundTrip(plain, 'plain now');
    plain.destroy();
    // One attempt with the cached verdict (the one cost of a stale cache), the probe, the plain connection.
    assert.equal(seen.length, 3);
    assert.ok(seen[0].received.subarray(0, 8).equals(encodeAnnouncement([ROCKS]).subarray(0, 8)), 'the stale attempt');
    assert.equal(seen[1].received.length, 0, 'the probe');
    assert.equal(seen[2].received.toString(), 'plain now');
    await new Promise((r) => server.close(r));
  });

  test('a stale cached verdict with earlyData: the data that went behind the HELLO is not sent again, the connection fails with ERR_ROCKS_NOT_ENHANCED', async () => {
    const rocks = await listen({}, rocksEcho);
    const { c, detect } = await connected({ port: rocks.port, host: '127.0.0.1' });
    assert.equal(detect.reliable, true);
    await endAll(c, rocks.server);
    const { server, seen } = await ordinaryServer((s) => s.once('data', () => s.end('ERR unknown command\r\n')), '127.0.0.1', rocks.port);
    const stale = connect({ port: rocks.port, host: '127.0.0.1', earlyData: true });
    stale.write('once only');
    // Falling back would make a plain connection, without the data the session took.
    const outcome = await Promise.race([
      once(stale, 'error').then(([e]) => (e as RocksError).code),
      once(stale, 'connect').then(() => `connected ${stale.reliable ? 'reliably' : 'plainly'}`),
    ]);
    stale.destroy();
    assert.equal(outcome, 'ERR_ROCKS_NOT_ENHANCED');
    await until(() => seen.length >= 1 && seen.every((x) => x.closed), 5000, 'the server to see the attempt close');
    assert.equal(seen.length, 1, 'no second connection carried the data again');
    assert.ok(seen[0].received.includes(Buffer.from('once only')), 'it went behind the HELLO');
    await new Promise((r) => server.close(r));
  });

  test('version negotiation: no rocks version in common means plain, or ERR_ROCKS_VERSION when rocks was required', async () => {
    // A server from the future: it speaks rocks 2-3 and racks 1, and announces that to probes and rocks clients alike.
    const future = encodeAnnouncement([
      { name: 'rocks', minVersion: 2, maxVersion: 3 },
      { name: 'racks', minVersion: 1, maxVersion: 1 },
    ]);
    const { server, port } = await ordinaryServer((s) => {
      let spoke = false;
      s.once('data', () => {
        spoke = true;
        s.end(future);
      });
      s.on('end', () => !spoke && s.end(future));
    });
    const { c, detect } = await connected({ port, host: '127.0.0.1' });
    assert.deepEqual(detect, { reliable: false, reason: 'the server announces rocks 2-3, racks 1-1, no rocks version in common', cached: false });
    c.destroy();
    const required = connect({ port, host: '127.0.0.1', enhanced: true });
    const [err] = (await once(required, 'error')) as [RocksError];
    assert.ok(err instanceof RocksError);
    assert.equal(err.code, 'ERR_ROCKS_VERSION');
    assert.match(err.message, /rocks 2-3/);
    await new Promise((r) => server.close(r));

    // And our server, to a client from the future: its announcement, then the close.
    const rocks = await listen({}, () => assert.fail('no connection for a client without a common version'));
    const stranger = netConnect(rocks.port, '127.0.0.1');
    stranger.write(encodeAnnouncement([{ name: 'rocks', minVersion: 7, maxVersion: 9 }]));
    const answer = await collect(stranger as unknown as ReliableSocket);
    assert.ok(answer.equals(encodeAnnouncement([ROCKS])), 'our announcement, nothing else');
    await closeServer(rocks.server);
  });

  test('servers that speak first: the banner reaches either kind of client intact and first', async () => {
    const BANNER = '220 rocks.test ESMTP ready\r\n';
    const detectTimeout = 200;
    const { server, port } = await listen({ detectTimeout }, (s) => {
      s.write(BANNER);
      rocksEcho(s);
    });
    // A rocks client: the banner travels in the session.
    const { c, detect } = await connected({ port, host: '127.0.0.1' });
    assert.equal(detect.reliable, true);
    const first = await new Promise<string>((r) => c.once('data', (d: Buffer) => r(d.toString())));
    assert.equal(first, BANNER);
    await roundTrip(c, 'EHLO me\r\n');
    // An ordinary client that waits for the banner: it comes after detectTimeout of silence.
    const start = performance.now();
    const ordinary = netConnect(port, '127.0.0.1');
    const [banner] = (await once(ordinary, 'data')) as [Buffer];
    const waited = performance.now() - start;
    assert.equal(banner.toString(), BANNER);
    console.log(`# a silent ordinary client got the banner after ${waited.toFixed(0)} ms (detectTimeout ${detectTimeout})`);
    assert.ok(waited >= detectTimeout - 5, `banner after ${waited.toFixed(0)} ms, before detectTimeout`);
    ordinary.destroy();

    // A rocks client to an ordinary server that speaks first: the probe may read the banner; the application reads it first.
    const plain = await ordinaryServer((s) => {
      s.write(BANNER);
      s.pipe(s);
    });
    const p = connect({ port: plain.port, host: '127.0.0.1' });
    const got = new Promise<string>((r) => p.once('data', (d: Buffer) => r(d.toString())));
    await once(p, 'connect');
    assert.equal(p.reliable, false);
    assert.equal(await got, BANNER);
    await roundTrip(p, 'EHLO me\r\n');
    p.destroy();
    await new Promise((r) => plain.server.close(r));
    await endAll(c, server);
  });

  test('an announcement that comes after detectTimeout: the link is still taken as rocks while the application has written nothing', async () => {
    const detectTimeout = 100;
    const plain: { received: number; closed: boolean }[] = [];
    const { server, port } = await listen({ detectTimeout }, (s) => {
      if (s.reliable) return rocksEcho(s);
      const seen = { received: 0, closed: false };
      plain.push(seen);
      s.on('data', (d: Buffer) => (seen.received += d.length));
      s.on('close', () => (seen.closed = true));
      rocksEcho(s);
    });
    // A middlebox that forwards the client's first bytes 300 ms after it connected to the server (a busy balancer).
    const proxy = new FaultProxy(port);
    const proxyPort = await proxy.listen();
    proxy.setDelay(300);
    const { c, detect } = await connected({ port: proxyPort, host: '127.0.0.1', enhanced: true, connectTimeout: 3000 });
    assert.equal(detect.reliable, true);
    await roundTrip(c, 'after a late announcement');
    // The application was handed the silent connection first; it closed without a byte.
    await until(() => plain.length === 1 && plain[0].closed, 5000, 'the plain connection closed');
    assert.equal(plain[0].received, 0);
    await endAll(c, server);
    await proxy.close();

    // At the bytes: a client silent for longer than detectTimeout, then an announcement, gets the server's.
    const again = await listen({ detectTimeout }, (s) => s.on('error', () => {}));
    const late = netConnect(again.port, '127.0.0.1');
    await once(late, 'connect');
    await new Promise((r) => setTimeout(r, detectTimeout * 3));
    late.write(encodeAnnouncement([ROCKS]));
    const [answer] = (await once(late, 'data')) as [Buffer];
    assert.ok(answer.equals(encodeAnnouncement([ROCKS])), `the server's announcement, got ${answer.toString('hex')}`);
    late.destroy();
    await closeServer(again.server);
  });

  test('an announcement that comes after the application spoke on the plain connection: dropped, the client dials again', async () => {
    const detectTimeout = 100;
    const BANNER = 'SSH-2.0-rocks.test\r\n';
    const { server, port } = await listen({ detectTimeout }, (s) => {
      s.on('error', () => {});
      if (!s.reliable) s.write(BANNER);
    });
    const late = netConnect(port, '127.0.0.1');
    const got = collect(late as unknown as ReliableSocket);
    await once(late, 'data');
    late.write(encodeAnnouncement([ROCKS]));
    // The banner and nothing else: the server closes what it can no longer take as rocks.
    assert.equal((await got).toString(), BANNER);
    await closeServer(server);
  });

  test('IPv6: detection both ways on ::1, cached under the bracketed address', {
    skip: hasIPv6Loopback() ? undefined : 'no IPv6 loopback here',
  }, async () => {
    const rocks = await listen({}, rocksEcho, '::1');
    const { c, detect } = await connected({ port: rocks.port, host: '::1' });
    assert.equal(detect.reliable, true);
    assert.equal(c.remoteFamily, 'IPv6');
    await roundTrip(c, 'over IPv6');
    assert.equal(detectionCache.get(`[::1]:${rocks.port}`)?.enhanced, true);
    await endAll(c, rocks.server);

    const plain = await ordinaryServer(netEcho, '::1');
    const { c: p, detect: plainDetect } = await connected({ port: plain.port, host: '::1' });
    assert.equal(plainDetect.reliable, false);
    assert.equal(p.remoteAddress, '::1');
    await roundTrip(p, 'plain over IPv6');
    p.destroy();
    await new Promise((r) => plain.server.close(r));

    // An ordinary IPv6 client to the rocks server.
    const rocks2 = await listen({}, rocksEcho, '::1');
    const o = netConnect(rocks2.port, '::1');
    o.write('hello v6');
    const [echo] = (await once(o, 'data')) as [Buffer];
    assert.equal(echo.toString(), 'hello v6');
    o.destroy();
    await closeServer(rocks2.server);
  });

  test('plain mode keeps the net.Socket surface: addresses, counters, idle timeout, destroy', async () => {
    const { server, port } = await ordinaryServer(netEcho);
    const { c } = await connected({ port, host: '127.0.0.1', enhanced: false });
    assert.equal(c.remoteAddress, '127.0.0.1');
    assert.equal(c.remotePort, port);
    assert.equal(c.remoteFamily, 'IPv4');
    assert.equal(typeof c.localPort, 'number');
    assert.equal(c.readyState, 'open');
    assert.equal(c.suspended, false);
    assert.equal(c.sessionId, undefined);
    await roundTrip(c, 'abc');
    assert.equal(c.bytesRead, 3);
    assert.equal(c.bytesWritten, 3);
    c.setTimeout(100);
    await once(c, 'timeout');
    c.destroy();
    await once(c, 'close');
    assert.equal(c.readyState, 'closed');
    await new Promise((r) => server.close(r));
  });
});
