// `rock socks`, the SOCKS5 proxy whose outgoing connections are rocks
// connections, run as a user runs it (a process of the compiled CLI):
// RFC 1928 conformance with a byte-level client (every address type,
// refusals with their reply codes, garbage, clients that vanish mid-handshake,
// pipelined bytes, RFC 1929 authentication, 1,000 concurrent CONNECTs), then
// curl through it to a rock serve across resets and a black hole, against a
// control through the same faults without rock serve.

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { connect as netConnect, createServer as netCreateServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { type Program, sleep } from '../support/helpers.js';
import { freePort, programs, run } from '../support/programs.js';
import { slowHttpServer } from '../support/net.js';
import { ROCK, serveWithControl, startRock } from '../support/rock.js';

/** A plain TCP echo server on `host`. */
async function echoServer(host = '127.0.0.1'): Promise<{ server: Server; port: number }> {
  const server = netCreateServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {});
    s.pipe(s);
  });
  server.listen(0, host);
  await once(server, 'listening');
  return { server, port: (server.address() as AddressInfo).port };
}

/** Reads exactly `n` bytes (or fewer if the socket ends first). */
function readBytes(s: Socket, n: number, ms = 5000): Promise<Buffer> {
  return new Promise((resolve) => {
    let got = Buffer.alloc(0);
    const done = (): void => {
      clearTimeout(timer);
      s.removeListener('data', onData);
      s.removeListener('close', done);
      const out = got.subarray(0, n);
      if (got.length > n) s.unshift(got.subarray(n));
      resolve(out);
    };
    const onData = (d: Buffer): void => {
      got = Buffer.concat([got, d]);
      if (got.length >= n) done();
    };
    const timer = setTimeout(done, ms);
    s.on('data', onData);
    s.once('close', done);
  });
}

const GREETING = Buffer.from([5, 1, 0]);

function connectRequest(host: string, port: number, command = 1): Buffer {
  const p = Buffer.alloc(2);
  p.writeUInt16BE(port);
  if (/^\d+\.\d+\.\d+\.\d+$/.test(host)) return Buffer.concat([Buffer.from([5, command, 0, 1, ...host.split('.').map(Number)]), p]);
  if (host.includes(':')) {
    const groups = host === '::1' ? [0, 0, 0, 0, 0, 0, 0, 1] : host.split(':').map((g) => Number.parseInt(g, 16));
    const b = Buffer.alloc(16);
    groups.forEach((g, i) => {
      b.writeUInt16BE(g, i * 2);
    });
    return Buffer.concat([Buffer.from([5, command, 0, 4]), b, p]);
  }
  return Buffer.concat([Buffer.from([5, command, 0, 3, host.length]), Buffer.from(host, 'latin1'), p]);
}

/** Greets and asks for `host:port`; resolves with the reply code and the connected socket. */
async function socksConnect(proxyPort: number, host: string, port: number, command = 1): Promise<{ code: number; s: Socket }> {
  const s = netConnect({ port: proxyPort, host: '127.0.0.1' });
  s.on('error', () => {});
  await once(s, 'connect');
  s.write(GREETING);
  assert.deepEqual([...(await readBytes(s, 2))], [5, 0], 'method: no authentication');
  s.write(connectRequest(host, port, command));
  const head = await readBytes(s, 4);
  assert.equal(head[0], 5, `reply version (got ${head.toString('hex')})`);
  const rest = head[3] === 4 ? 18 : 6;
  await readBytes(s, rest);
  return { code: head[1], s };
}

async function echoes(s: Socket, bytes: Buffer): Promise<void> {
  s.write(bytes);
  assert.deepEqual(await readBytes(s, bytes.length), bytes);
}

/** Closes when the proxy closes on us; true if it did within `ms`. */
async function closedByProxy(s: Socket, ms = 3000): Promise<boolean> {
  if (s.destroyed) return true;
  s.resume(); // read whatever reply came first, or 'end' never arrives
  return Promise.race([once(s, 'close').then(() => true), sleep(ms).then(() => false)]);
}

describe('rock socks: SOCKS5 conformance', () => {
  let proxy: Program;
  let proxyPort: number;
  let echo: { server: Server; port: number };
  let echo6: { server: Server; port: number } | undefined;

  before(async () => {
    echo = await echoServer();
    echo6 = await echoServer('::1').catch(() => undefined);
    proxyPort = await freePort();
    proxy = await startRock(['socks', '--listen', `127.0.0.1:${proxyPort}`], /SOCKS5 proxy over rocks/);
  });
  after(async () => {
    await proxy.stop();
    echo.server.close();
    echo6?.server.close();
  });

  test('IPv4, IPv6 and host-name CONNECTs reach an ordinary server as plain TCP, bytes unchanged', async () => {
    const targets: [string, number][] = [
      ['127.0.0.1', echo.port],
      ['localhost', echo.port],
    ];
    if (echo6) targets.push(['::1', echo6.port]);
    for (const [host, port] of targets) {
      const { code, s } = await socksConnect(proxyPort, host, port);
      assert.equal(code, 0, `CONNECT ${host}`);
      await echoes(s, randomBytes(100_000));
      s.destroy();
    }
    assert.ok(echo6 !== undefined, 'this machine has ::1 (IPv6 loopback)');
  });

  test('refusals: connection refused, unknown host, BIND, UDP ASSOCIATE, unknown address type', async () => {
    const closedPort = await freePort();
    const cases: [string, number, number, number][] = [
      ['127.0.0.1', closedPort, 1, 0x05],
      ['no-such-host.invalid', 80, 1, 0x04],
      ['127.0.0.1', echo.port, 2, 0x07],
      ['127.0.0.1', echo.port, 3, 0x07],
    ];
    for (const [host, port, command, expected] of cases) {
      const { code, s } = await socksConnect(proxyPort, host, port, command);
      assert.equal(code, expected, `${host}:${port} command ${command}`);
      assert.ok(await closedByProxy(s), 'closed after the refusal');
    }
    const s = netConnect({ port: proxyPort, host: '127.0.0.1' });
    await once(s, 'connect');
    s.write(Buffer.concat([GREETING, Buffer.from([5, 1, 0, 9, 1, 2, 3, 4, 0, 80])]));
    assert.deepEqual([...(await readBytes(s, 4))], [5, 0, 5, 8], 'method, then address type not supported');
    assert.ok(await closedByProxy(s));
  });

  test('garbage before or after the greeting, and clients that leave mid-handshake, close only themselves', async () => {
    const garbage = [
      Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'),
      Buffer.from([4, 1, 0, 80, 127, 0, 0, 1, 0]), // SOCKS4
      Buffer.from([5, 0]), // no methods
      Buffer.concat([GREETING, Buffer.from('garbage after the greeting')]),
      Buffer.concat([GREETING, Buffer.from([5, 1, 0, 3, 5]), Buffer.from('a b c'), Buffer.from([0, 80])]),
    ];
    for (const bytes of garbage) {
      const s = netConnect({ port: proxyPort, host: '127.0.0.1' });
      s.on('error', () => {});
      await once(s, 'connect');
      s.write(bytes);
      assert.ok(await closedByProxy(s), `closed after ${bytes.toString('hex')}`);
    }
    for (const part of [Buffer.from([5]), GREETING, Buffer.concat([GREETING, Buffer.from([5, 1, 0, 1, 127])])]) {
      const s = netConnect({ port: proxyPort, host: '127.0.0.1' });
      s.on('error', () => {});
      await once(s, 'connect');
      s.write(part);
      await sleep(20);
      s.destroy();
    }
    // The proxy is still there for everyone else.
    const { code, s } = await socksConnect(proxyPort, '127.0.0.1', echo.port);
    assert.equal(code, 0);
    await echoes(s, Buffer.from('still serving'));
    s.destroy();
  });

  test('greeting, request and data in one write: the data goes to the destination after the reply', async () => {
    const s = netConnect({ port: proxyPort, host: '127.0.0.1' });
    await once(s, 'connect');
    s.write(Buffer.concat([GREETING, connectRequest('127.0.0.1', echo.port), Buffer.from('pipelined')]));
    const head = await readBytes(s, 2 + 10 + 'pipelined'.length);
    assert.deepEqual([...head.subarray(0, 4)], [5, 0, 5, 0]);
    assert.equal(head.subarray(12).toString(), 'pipelined');
    s.destroy();
  });

  test('1,000 concurrent CONNECTs each get their own bytes back', { timeout: 60_000 }, async () => {
    const results = await Promise.all(
      Array.from({ length: 1000 }, async (_, i) => {
        const { code, s } = await socksConnect(proxyPort, '127.0.0.1', echo.port);
        const mine = Buffer.from(`client ${i} `.repeat(20));
        s.write(mine);
        const back = await readBytes(s, mine.length, 20_000);
        s.destroy();
        return code === 0 && back.equals(mine);
      }),
    );
    assert.equal(results.filter(Boolean).length, 1000);
  });
});

describe('rock socks: username and password (RFC 1929)', () => {
  test('the right pair connects; a wrong one and a client without the method are refused', async () => {
    const echo = await echoServer();
    const port = await freePort();
    const proxy = await startRock(['socks', '--listen', `127.0.0.1:${port}`, '--user', 'ann', '--password', 's3cret'], /SOCKS5 proxy/);
    try {
      const login = async (user: string, password: string): Promise<{ status: number; s: Socket }> => {
        const s = netConnect({ port, host: '127.0.0.1' });
        s.on('error', () => {});
        await once(s, 'connect');
        s.write(Buffer.from([5, 1, 2]));
        assert.deepEqual([...(await readBytes(s, 2))], [5, 2]);
        s.write(Buffer.concat([Buffer.from([1, user.length]), Buffer.from(user), Buffer.from([password.length]), Buffer.from(password)]));
        const [, status] = await readBytes(s, 2);
        return { status, s };
      };
      const good = await login('ann', 's3cret');
      assert.equal(good.status, 0);
      good.s.write(connectRequest('127.0.0.1', echo.port));
      assert.equal((await readBytes(good.s, 10))[1], 0);
      await echoes(good.s, Buffer.from('authenticated'));
      good.s.destroy();

      const bad = await login('ann', 'wrong');
      assert.equal(bad.status, 1);
      assert.ok(await closedByProxy(bad.s));

      const s = netConnect({ port, host: '127.0.0.1' });
      await once(s, 'connect');
      s.write(GREETING);
      assert.deepEqual([...(await readBytes(s, 2))], [5, 0xff], 'no acceptable method');
      assert.ok(await closedByProxy(s));
    } finally {
      await proxy.stop();
      echo.server.close();
    }
  });

  test('bad command lines: one line, exit code 2', async () => {
    const cases: [string[], RegExp][] = [
      [['socks', '--map', 'a:1'], /--map: expected HOST:PORT=HOST:PORT, got 'a:1'/],
      [['socks', '--map', 'a:1=b:x'], /--map \(where to dial\): bad port 'x'/],
      [['socks', '--map', 'a:1=b:2', '--map', 'A:1=c:3'], /--map names A:1 twice/],
      [['socks', '--user', 'ann'], /--user and --password go together/],
      [['socks', 'extra'], /Unexpected argument 'extra'/],
    ];
    for (const [args, message] of cases) {
      const r = await run(process.execPath, [ROCK, ...args], { timeout: 15_000 });
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    }
  });
});

describe('rock socks: curl through faults', () => {
  const curlFound = programs('curl');
  test('curl downloads 32 MiB from behind a rock serve through resets and a black hole; without rock serve it fails', {
    skip: curlFound.skip,
    timeout: 120_000,
  }, async () => {
    const SIZE = 32 * 1024 * 1024;
    const body = randomBytes(SIZE);
    const digest = createHash('sha256').update(body).digest('hex');
    const { server: http, port: httpPort } = await slowHttpServer(body);
    const timing = ['--failure-timeout', '1000', '--heartbeat', '200'];
    const { withServe, withoutServe, withPort, withoutPort, close } = await serveWithControl(httpPort, timing);
    const socksPort = await freePort();
    // The destination the user names is the service's usual address; --map sends it through the faults.
    const proxy = await startRock(
      [
        'socks',
        '--listen',
        `127.0.0.1:${socksPort}`,
        '--map',
        `files.test:80=127.0.0.1:${withPort}`,
        '--map',
        `plain.test:80=127.0.0.1:${withoutPort}`,
        ...timing,
      ],
      /SOCKS5 proxy/,
    );
    try {
      const download = async (host: string, faults: FaultProxy) => {
        const curl = run(curlFound.paths.curl, ['-sS', '--socks5-hostname', `127.0.0.1:${socksPort}`, `http://${host}/`, '-o', '-'], {
          timeout: 90_000,
        });
        const startedAt = Date.now();
        for (const [at, act] of [
          [600, () => faults.reset()],
          [1200, () => faults.blackhole()],
          [3200, () => faults.heal()],
          [3800, () => faults.reset()],
        ] as [number, () => void][]) {
          await sleep(Math.max(0, at - (Date.now() - startedAt)));
          act();
        }
        return curl;
      };
      const good = await download('files.test', withServe);
      const got = good.stdout;
      assert.equal(good.code, 0, `curl through rock socks and rock serve: ${good.stderr}`);
      assert.equal(got.length, SIZE);
      assert.equal(createHash('sha256').update(got).digest('hex'), digest, 'SHA-256 of the download');
      assert.ok(withServe.connections >= 3, `the session went through ${withServe.connections} connections`);

      const control = await download('plain.test', withoutServe);
      const partial = control.stdout;
      assert.ok(control.code !== 0 || partial.length < SIZE, 'without rock serve the faults break the download');
      console.log(
        `# curl via rock socks: 32 MiB intact through ${withServe.connections} connections; ` +
          `control without rock serve: curl exit ${control.code}, ${partial.length} of ${SIZE} bytes`,
      );
    } finally {
      await proxy.stop();
      await close();
      http.close();
    }
  });
});
