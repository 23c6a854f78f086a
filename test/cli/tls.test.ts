// rock over TLS as a user sets it up: `rock keygen` on the server, `rock
// serve --tls-cert --tls-key`, `rock forward --tls --tls-pin` (or --tls-ca)
// on the client, in separate processes. 32 MiB each way through resets and a
// black hole arrive intact, and the wire between the two never shows the
// payload; a wrong pin is refused with a line that says so; client
// certificates are required when the server asks; bad flags exit 2.

import assert from 'node:assert/strict';
import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect as netConnect, createServer as netCreateServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { spkiPin } from '../../src/index.js';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { sleep } from '../support/helpers.js';
import { freePort, programs, run, start } from '../support/programs.js';
import { ROCK, startRock } from '../support/rock.js';

const rock = (...args: string[]) => run(process.execPath, [ROCK, ...args], { timeout: 20_000 });

const dir = mkdtempSync(join(tmpdir(), 'rock-tls-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** `rock keygen` into a fresh folder: the pin it printed and the paths. */
async function keygen(name: string, ...extra: string[]): Promise<{ pin: string; cert: string; key: string; dir: string }> {
  const d = join(dir, name);
  const r = await rock('keygen', d, ...extra);
  assert.equal(r.code, 0, r.stderr);
  return { pin: r.stdout.toString().trim(), cert: join(d, 'cert.pem'), key: join(d, 'key.pem'), dir: d };
}

/** An ordinary TCP echo server (half-close: it ends when the client ends). */
async function echoServer(): Promise<{ server: Server; port: number }> {
  const server = netCreateServer({ allowHalfOpen: true }, (s) => s.pipe(s));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, port: (server.address() as AddressInfo).port };
}

/** A TCP relay that keeps a copy of everything that crosses it: what an eavesdropper on the link sees. */
async function tap(targetPort: number): Promise<{ port: number; seen: () => Buffer; close: () => void }> {
  const chunks: Buffer[] = [];
  const sockets = new Set<Socket>();
  const server = netCreateServer((down) => {
    const up = netConnect(targetPort, '127.0.0.1');
    for (const s of [down, up]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        down.destroy();
        up.destroy();
      });
      s.on('data', (d: Buffer) => chunks.push(d));
    }
    down.pipe(up);
    up.pipe(down);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as AddressInfo).port,
    seen: () => Buffer.concat(chunks),
    close: () => {
      server.close();
      for (const s of sockets) s.destroy();
    },
  };
}

/**
 * rock serve (with `serveArgs`) behind a tap and a fault proxy, rock forward
 * (with `forwardArgs`) in front: 32 MiB each way through two resets and a
 * black hole, SHA-256 compared; none of the payload visible on the tap.
 */
async function bulkThroughFaults(serveArgs: string[], forwardArgs: string[]): Promise<string> {
  const echo = await echoServer();
  const servePort = await freePort();
  const timing = ['--failure-timeout', '1000', '--heartbeat', '200'];
  const serve = await startRock(
    ['serve', '--listen', `127.0.0.1:${servePort}`, '--to', `127.0.0.1:${echo.port}`, ...timing, ...serveArgs],
    /serving rocks/,
  );
  const wire = await tap(servePort);
  const proxy = new FaultProxy(wire.port);
  const proxyPort = await proxy.listen();
  const forwardPort = await freePort();
  const forward = await startRock(
    ['forward', '--listen', `127.0.0.1:${forwardPort}`, '--to', `127.0.0.1:${proxyPort}`, ...timing, ...forwardArgs],
    /forwarding over rocks/,
  );
  try {
    const TOTAL = 32 * 1024 * 1024;
    const client = netConnect({ port: forwardPort, host: '127.0.0.1', allowHalfOpen: true });
    await once(client, 'connect');
    const sent = createHash('sha256');
    const got = createHash('sha256');
    let received = 0;
    client.on('data', (d: Buffer) => {
      got.update(d);
      received += d.length;
    });
    const ended = new Promise<void>((resolve, reject) => {
      client.once('end', resolve);
      client.once('error', reject);
    });
    ended.catch(() => {}); // awaited below, after the sending
    const startedAt = Date.now();
    const faults = (async () => {
      for (const [at, act] of [
        [300, () => proxy.reset()],
        [900, () => proxy.blackhole()],
        [3400, () => proxy.heal()],
        [4000, () => proxy.reset()],
      ] as [number, () => void][]) {
        await sleep(Math.max(0, at - (Date.now() - startedAt)));
        act();
      }
    })();
    // Marks that would show on the wire if it carried the payload in the clear.
    const marks: Buffer[] = [];
    for (let n = 0; n < TOTAL; n += 64 * 1024) {
      const chunk = randomBytes(64 * 1024);
      if (n % (4 * 1024 * 1024) === 0) marks.push(chunk.subarray(1000, 1032));
      sent.update(chunk);
      if (!client.write(chunk)) await once(client, 'drain');
      if (n % (1024 * 1024) === 0) await sleep(100); // ~3 s of sending, so the faults land mid-transfer
    }
    client.end();
    await faults;
    await ended;
    assert.equal(received, TOTAL);
    assert.equal(got.digest('hex'), sent.digest('hex'), 'SHA-256 of the echo');
    assert.ok(proxy.connections >= 4, `the session went through ${proxy.connections} connections`);
    const seen = wire.seen();
    assert.ok(seen.length > 2 * TOTAL, `the tap saw ${seen.length} bytes`);
    for (const m of marks) assert.equal(seen.indexOf(m), -1, 'payload bytes in the clear on the wire');
    assert.match(serve.output, /mode=reliable/);
    assert.match(serve.output, /resumed/);
    return `32 MiB each way intact through ${proxy.connections} connections, ${(seen.length / 2 ** 20).toFixed(1)} MiB on the wire, none of it in the clear`;
  } catch (err) {
    await sleep(500);
    (err as Error).message += `\nrock serve said:\n${serve.output}\nrock forward said:\n${forward.output}`;
    throw err;
  } finally {
    await serve.stop();
    await forward.stop();
    await proxy.close();
    wire.close();
    echo.server.close();
  }
}

describe('rock keygen', () => {
  test('writes key.pem (0600) and cert.pem, prints the pin of the certificate; refuses to overwrite without --force', async () => {
    const k = await keygen('keygen', '--name', 'db.example', '--name', '10.9.8.7', '--days', '30');
    assert.match(k.pin, /^sha256:[A-Za-z0-9+/]{43}=$/);
    assert.equal(statSync(k.key).mode & 0o777, 0o600);
    const cert = new X509Certificate(readFileSync(k.cert));
    assert.equal(spkiPin(cert), k.pin);
    assert.equal(cert.subjectAltName, 'DNS:db.example, IP Address:10.9.8.7');
    assert.ok(cert.checkPrivateKey(await import('node:crypto').then((c) => c.createPrivateKey(readFileSync(k.key)))));
    assert.equal(cert.ca, false);
    assert.ok(cert.verify(cert.publicKey), 'self-signed');
    const days = (Date.parse(cert.validTo) - Date.now()) / 86_400_000;
    assert.ok(days > 29 && days < 31, `valid ${days} days`);

    const before = readFileSync(k.cert, 'utf8');
    const again = await rock('keygen', k.dir);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /^rock: .*key\.pem exists; give --force to replace it\n$/);
    assert.equal(readFileSync(k.cert, 'utf8'), before, 'nothing overwritten');
    chmodSync(k.key, 0o644); // a replaced key must not keep a looser mode
    const forced = await rock('keygen', k.dir, '--force');
    assert.equal(forced.code, 0, forced.stderr);
    assert.notEqual(forced.stdout.toString().trim(), k.pin);
    assert.equal(statSync(k.key).mode & 0o777, 0o600);

    const plain = await keygen('defaults');
    const names = new X509Certificate(readFileSync(plain.cert)).subjectAltName ?? '';
    for (const n of ['DNS:localhost', 'IP Address:127.0.0.1', 'IP Address:0:0:0:0:0:0:0:1']) assert.ok(names.includes(n), names);
  });

  test('openssl reads the pair and computes the same pin', async (t) => {
    const found = programs('openssl');
    if (found.skip) return t.skip(found.skip);
    const k = await keygen('openssl');
    const r = await run('/bin/sh', [
      '-c',
      `'${found.paths.openssl}' pkey -in '${k.key}' -noout && '${found.paths.openssl}' x509 -in '${k.cert}' -pubkey -noout | '${found.paths.openssl}' pkey -pubin -outform der | '${found.paths.openssl}' dgst -sha256 -binary | base64`,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(`sha256:${r.stdout.toString().trim()}`, k.pin);
  });
});

describe('rock over TLS: command line', () => {
  test('bad TLS flags: one line on stderr, exit code 2', async () => {
    const k = await keygen('flags');
    const other = await keygen('flags-other');
    const notPem = join(dir, 'not.pem');
    writeFileSync(notPem, 'hello\n');
    const serve = ['serve', '--listen', '7000', '--to', 'h:1'];
    const forward = ['forward', '--listen', '7000', '--to', 'h:1'];
    const cases: [string[], RegExp][] = [
      [[...serve, '--tls-cert', k.cert], /--tls-cert goes with --tls-key/],
      [[...serve, '--tls-key', k.key], /--tls-key goes with --tls-cert/],
      [[...serve, '--tls-cert', '/nonexistent/cert.pem', '--tls-key', k.key], /--tls-cert: cannot read '\/nonexistent\/cert.pem': ENOENT/],
      [[...serve, '--tls-cert', notPem, '--tls-key', k.key], /--tls-cert: '.*not\.pem' is not a PEM certificate/],
      [[...serve, '--tls-cert', k.cert, '--tls-key', notPem], /--tls-key: '.*not\.pem' is not a PEM private key/],
      [[...serve, '--tls-cert', k.cert, '--tls-key', other.key], /--tls-key: '.*' is not the key of --tls-cert/],
      [[...serve, '--tls-client-ca', k.cert], /--tls-client-ca goes with --tls-cert and --tls-key/],
      [[...serve, '--tls-cert', k.cert, '--tls-key', k.key, '--workers', '2'], /--workers cannot be used with --tls-cert/],
      [[...serve, '--tls-cert', k.cert, '--tls-key', k.key, '--peers', '1=a:1'], /--peers cannot be used with --tls-cert/],
      [
        [...serve, '--tls-cert', k.cert, '--tls-key', k.key, '--node-id', '1', '--directory', 'redis://r:1'],
        /--directory cannot be used with --tls-cert/,
      ],
      [[...serve, '--tls'], /Unknown option '--tls'/],
      [[...forward, '--tls-pin', k.pin], /--tls-pin goes with --tls/],
      [[...forward, '--tls-ca', k.cert], /--tls-ca goes with --tls/],
      [[...forward, '--tls', '--tls-pin', 'abc'], /--tls-pin: a pin is sha256:BASE64/],
      [[...forward, '--tls', '--tls-pin', 'sha256:abc='], /--tls-pin: a pin's SHA-256 is 44 characters of base64/],
      [[...forward, '--tls', '--tls-ca', '/nonexistent/ca.pem'], /--tls-ca: cannot read '\/nonexistent\/ca.pem': ENOENT/],
      [[...forward, '--tls', '--tls-cert', k.cert], /--tls-cert goes with --tls-key/],
      [[...forward, '--tls', '--tls-client-ca', k.cert], /Unknown option '--tls-client-ca'/],
      [['stdio', 'h:1', '--tls-pin', k.pin], /--tls-pin goes with --tls/],
      [['stdio', 'h:1', '--tls', '--tls-pin', 'sha1:abc'], /--tls-pin: a pin is sha256:BASE64/],
      [['keygen'], /keygen takes one DIR, got none/],
      [['keygen', join(dir, 'x'), '--days', '0'], /--days must be a whole number of days from 1/],
      [['keygen', join(dir, 'x'), '--name', 'a b'], /--name: 'a b' is not a host name or IP address/],
    ];
    for (const [args, message] of cases) {
      const r = await rock(...args);
      assert.equal(r.code, 2, `rock ${args.join(' ')}: exit ${r.code}, stderr ${r.stderr}`);
      assert.match(r.stderr, message, `rock ${args.join(' ')}`);
      assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
      assert.match(r.stderr, /^rock: /);
    }
    const help = await rock('forward', '--help');
    assert.match(help.stdout.toString(), /--tls-pin sha256:BASE64/);
    assert.match((await rock('keygen', '--help')).stdout.toString(), /^Usage: rock keygen DIR/);
  });
});

describe('rock over TLS: forward and serve', () => {
  test('rock keygen + serve --tls-* + forward --tls --tls-pin: 32 MiB each way through resets and a black hole, encrypted on the wire', {
    timeout: 120_000,
  }, async () => {
    const k = await keygen('pin');
    const figures = await bulkThroughFaults(['--tls-cert', k.cert, '--tls-key', k.key], ['--tls', '--tls-pin', k.pin]);
    console.log(`# --tls-pin: ${figures}`);
  });

  test('the same with --tls-ca cert.pem (the certificate names 127.0.0.1) and a client certificate the server requires', {
    timeout: 120_000,
  }, async () => {
    const k = await keygen('ca');
    const client = await keygen('client');
    const figures = await bulkThroughFaults(
      ['--tls-cert', k.cert, '--tls-key', k.key, '--tls-client-ca', client.cert],
      ['--tls', '--tls-ca', k.cert, '--tls-cert', client.cert, '--tls-key', client.key],
    );
    console.log(`# --tls-ca with a client certificate: ${figures}`);
  });

  test('a wrong pin: rock stdio exits 1 and rock forward will not start, each with the line that says so; the right one works', {
    timeout: 60_000,
  }, async () => {
    const k = await keygen('wrong');
    const imposter = await keygen('imposter');
    const echo = await echoServer();
    const servePort = await freePort();
    const serve = await startRock(
      ['serve', '--listen', `127.0.0.1:${servePort}`, '--to', `127.0.0.1:${echo.port}`, '--tls-cert', k.cert, '--tls-key', k.key],
      /serving rocks/,
    );
    try {
      const refusal = new RegExp(
        `^rock: server key does not match --tls-pin ${escapeRegExp(imposter.pin)} \\(the server at 127\\.0\\.0\\.1:${servePort} presents ${escapeRegExp(k.pin)}\\)\\n$`,
      );
      const stdio = await run(process.execPath, [ROCK, 'stdio', `127.0.0.1:${servePort}`, '--tls', '--tls-pin', imposter.pin], { input: 'secret\n' });
      assert.equal(stdio.code, 1, stdio.stderr);
      assert.match(stdio.stderr, refusal);
      assert.equal(stdio.stdout.length, 0);
      const forward = await rock(
        'forward',
        '--listen',
        `127.0.0.1:${await freePort()}`,
        '--to',
        `127.0.0.1:${servePort}`,
        '--tls',
        '--tls-pin',
        imposter.pin,
      );
      assert.equal(forward.code, 1, forward.stderr);
      assert.match(forward.stderr, refusal);
      // The wrong CA: node's own words, exit 1.
      const ca = await run(process.execPath, [ROCK, 'stdio', `127.0.0.1:${servePort}`, '--tls', '--tls-ca', imposter.cert], { input: 'secret\n' });
      assert.equal(ca.code, 1, ca.stderr);
      assert.match(ca.stderr, /^rock: cannot connect to 127\.0\.0\.1:\d+: .*self-signed certificate/);
      // No --tls at all against a TLS server: the server's TLS refuses the bytes; nothing reaches the target.
      const plain = await run(process.execPath, [ROCK, 'stdio', `127.0.0.1:${servePort}`], { input: 'secret\n', timeout: 15_000 });
      assert.equal(plain.stdout.length, 0, plain.stderr);
      assert.doesNotMatch(serve.output, /connection /, 'rock serve relayed nothing');

      const input = randomBytes(1024 * 1024);
      const right = await run(process.execPath, [ROCK, 'stdio', `127.0.0.1:${servePort}`, '--tls', '--tls-pin', k.pin], { input });
      assert.equal(right.code, 0, right.stderr);
      assert.ok(right.stdout.equals(input), `stdio echoed ${right.stdout.length} bytes`);
      console.log(`# wrong pin refused: ${stdio.stderr.trim()}`);
    } finally {
      await serve.stop();
      echo.server.close();
    }
  });

  test('rock forward logs each connection refused when the server key changes while it runs', { timeout: 60_000 }, async () => {
    const k = await keygen('rotate');
    const other = await keygen('rotate-other');
    const echo = await echoServer();
    const servePort = await freePort();
    const serveArgs = ['serve', '--listen', `127.0.0.1:${servePort}`, '--to', `127.0.0.1:${echo.port}`];
    let serve = await startRock([...serveArgs, '--tls-cert', k.cert, '--tls-key', k.key], /serving rocks/);
    const forwardPort = await freePort();
    const forward = start(process.execPath, [
      ROCK,
      'forward',
      '--listen',
      `127.0.0.1:${forwardPort}`,
      '--to',
      `127.0.0.1:${servePort}`,
      '--tls',
      '--tls-pin',
      k.pin,
    ]);
    try {
      await forward.waitForOutput(/forwarding over rocks/, 10_000);
      await serve.stop();
      serve = await startRock([...serveArgs, '--tls-cert', other.cert, '--tls-key', other.key], /serving rocks/);
      const client = netConnect(forwardPort, '127.0.0.1');
      client.on('error', () => {});
      client.write('secret\n');
      await once(client, 'close');
      await forward.waitForOutput(/connection refused: server key does not match --tls-pin/, 10_000);
      assert.doesNotMatch(serve.output, /mode=reliable/);
      assert.equal(forward.exited, undefined, 'rock forward keeps running');
    } finally {
      await forward.stop();
      await serve.stop();
      echo.server.close();
    }
  });
});

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}
