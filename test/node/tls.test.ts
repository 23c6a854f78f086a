// The tls option: rocks over TLS 1.3 between two rocks ends (EDP by ALPN, no
// probe, session tickets on resumes), certificate errors on the first link
// and on a resume, ordinary TLS clients served as plain TLS connections, and
// the combinations that are refused. Certificates come from the real
// `openssl req -x509`.

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { after, describe, test } from 'node:test';
import { type ConnectionOptions, connect as tlsConnect, type TLSSocket } from 'node:tls';
import { connect, createServer, type DetectInfo, type ReliableServer, type ReliableSocket } from '../../src/index.js';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { makeCerts } from '../support/certs.js';
import { until } from '../support/helpers.js';
import { closeServer, collect, endAll, listen } from '../support/net.js';

const certs = makeCerts();
after(() => certs.cleanup());
const skip = certs.skip;
const fast = { failureTimeout: 300, heartbeatInterval: 75, reconnectDelay: 10, reconnectDelayMax: 150 };
const MIB = 1024 * 1024;

/** What tls.connect gives for the same options: the error it fails with, or undefined. */
function tlsConnectError(port: number, options: ConnectionOptions): Promise<NodeJS.ErrnoException | undefined> {
  return new Promise((resolve) => {
    const s = tlsConnect({ port, host: '127.0.0.1', ...options }, () => {
      s.destroy();
      resolve(undefined);
    });
    s.once('error', (err) => resolve(err));
  });
}

describe('rocks over TLS', { skip }, () => {
  test('rocks TLS to rocks TLS: reliable, no probe, data both ways, every resume with a session ticket', { timeout: 60_000 }, async () => {
    const serverSide: { socket?: ReliableSocket; got?: Promise<Buffer>; reused: boolean[] } = { reused: [] };
    const toClient = randomBytes(4 * MIB);
    const toServer = randomBytes(4 * MIB);
    // Half-open both ways, so that the session stays open for the resets after the server's end.
    const { server, port } = await listen({ ...fast, allowHalfOpen: true, tls: { key: certs.server.key, cert: certs.server.cert } }, (s) => {
      serverSide.socket = s;
      serverSide.got = collect(s);
      s.on('reconnect', () => serverSide.reused.push(s.isSessionReused()));
      s.end(toClient);
    });
    const proxy = new FaultProxy(port);
    const proxyPort = await proxy.listen();

    const c = connect({ port: proxyPort, host: 'localhost', ...fast, allowHalfOpen: true, tls: { ca: certs.server.cert } });
    const reused: boolean[] = [];
    c.on('reconnect', () => reused.push(c.isSessionReused()));
    const [[detect]] = (await Promise.all([once(c, 'detect'), once(c, 'connect'), once(c, 'secureConnect')])) as unknown as [[DetectInfo]];
    assert.equal(proxy.connections, 1, 'one connection, no probe');
    assert.deepEqual(detect, { reliable: true, reason: 'the server selected ALPN rocks/1', cached: false });
    assert.equal(c.reliable, true);
    assert.equal(c.encrypted, true);
    assert.equal(c.authorized, true);
    assert.equal(c.alpnProtocol, 'rocks/1');
    assert.equal(c.getProtocol(), 'TLSv1.3');
    assert.equal(c.isSessionReused(), false, 'the first link is a full handshake');

    const got = collect(c);
    c.write(toServer);
    // Resets while the bytes move: each resume is a new TLS link.
    for (let i = 0; i < 5; i++) {
      await until(() => reused.length === i, 10_000, `resume ${i}`);
      await new Promise((r) => setTimeout(r, 30));
      proxy.reset();
    }
    await until(() => reused.length === 5, 10_000, 'the last resume');
    const fromServer = await got;
    await until(() => serverSide.got !== undefined, 5000, 'server connection');
    c.end();
    const atServer = await serverSide.got!;
    console.log(
      `# ${proxy.connections} TLS connections for 1 session and 5 resets; session reused on resume links: client ${reused}, server ${serverSide.reused}`,
    );
    assert.equal(createHash('sha256').update(fromServer).digest('hex'), createHash('sha256').update(toClient).digest('hex'));
    assert.equal(createHash('sha256').update(atServer).digest('hex'), createHash('sha256').update(toServer).digest('hex'));
    assert.deepEqual(reused, [true, true, true, true, true], 'every resume link resumed a TLS session (one round trip)');
    assert.ok(serverSide.reused.length > 0 && serverSide.reused.every((r) => r));
    await endAll(c, server, proxy);
  });

  test('a certificate error on the first link fails the connect with the error tls.connect gives, once', async () => {
    const { server, port } = await listen({ tls: { key: certs.server.key, cert: certs.server.cert } }, () => assert.fail('no connection expected'));
    const proxy = new FaultProxy(port);
    const proxyPort = await proxy.listen();
    for (const options of [{}, { ca: certs.server.cert, servername: 'elsewhere.example' }, { ca: certs.other.cert }] as ConnectionOptions[]) {
      const expected = await tlsConnectError(proxyPort, options);
      assert.ok(expected, 'tls.connect fails too');
      const before = proxy.connections;
      const c = connect({ port: proxyPort, host: '127.0.0.1', tls: options });
      const [err] = (await once(c, 'error')) as [NodeJS.ErrnoException];
      assert.equal(err.code, expected.code ?? undefined);
      assert.equal(err.message, expected.message);
      assert.equal(proxy.connections, before + 1, 'no retry');
      assert.equal(c.destroyed, true);
    }
    await proxy.close();
    await closeServer(server);
  });

  test('a certificate error on a resume link ends the session with that error instead of trying again', { timeout: 30_000 }, async () => {
    const held: ReliableSocket[] = [];
    const { server, port } = await listen({ ...fast, tls: { key: certs.server.key, cert: certs.server.cert } }, (s) => {
      held.push(s);
      s.on('error', () => {});
    });
    const impostor = await listen({ ...fast, tls: { key: certs.other.key, cert: certs.other.cert } }, () =>
      assert.fail('no session at the impostor'),
    );
    const proxy = new FaultProxy(port);
    const proxyPort = await proxy.listen();
    const c = connect({ port: proxyPort, host: 'localhost', ...fast, tls: { ca: certs.server.cert } });
    await once(c, 'connect');
    assert.equal(c.reliable, true);
    const expected = await tlsConnectError(impostor.port, { ca: certs.server.cert, servername: 'localhost' });
    proxy.spread([{ port: impostor.port }]);
    const before = proxy.connections;
    proxy.reset();
    const [err] = (await once(c, 'error')) as [NodeJS.ErrnoException];
    console.log(`# resume against another certificate: ${err.code}: ${err.message}`);
    assert.equal(err.code, expected?.code);
    assert.equal(proxy.connections, before + 1, 'one attempt, no loop');
    assert.equal(c.destroyed, true);
    for (const s of held) s.destroy(); // the server still holds the session, suspended
    await proxy.close();
    await closeServer(server);
    await closeServer(impostor.server);
  });

  test('ordinary TLS clients get plain TLS connections from a rocks TLS server', async () => {
    const seen: { reliable: boolean; encrypted: true | undefined; alpn: string | false | null | undefined }[] = [];
    for (const [serverAlpn, clientAlpn, selected] of [
      [['http/1.1'], ['h2', 'http/1.1'], 'http/1.1'],
      [undefined, ['h2', 'http/1.1'], false], // no list of the application's: no ALPN answer, as node:tls gives
      [undefined, undefined, false],
    ] as [string[] | undefined, string[] | undefined, string | false][]) {
      const { server, port } = await listen({ tls: { key: certs.server.key, cert: certs.server.cert, ALPNProtocols: serverAlpn } }, (s) => {
        seen.push({ reliable: s.reliable, encrypted: s.encrypted, alpn: s.alpnProtocol });
        s.on('data', (d: Buffer) => s.end(Buffer.from(d.toString().toUpperCase())));
      });
      const t = tlsConnect({ port, host: '127.0.0.1', servername: 'localhost', ca: certs.server.cert, ALPNProtocols: clientAlpn });
      await once(t, 'secureConnect');
      assert.equal(t.alpnProtocol, selected);
      t.write('hello over plain tls');
      const chunks: Buffer[] = [];
      t.on('data', (d: Buffer) => chunks.push(d));
      await once(t, 'end');
      assert.equal(Buffer.concat(chunks).toString(), 'HELLO OVER PLAIN TLS');
      t.destroy();
      await closeServer(server);
    }
    assert.deepEqual(
      seen.map((s) => [s.reliable, s.encrypted, s.alpn]),
      [
        [false, true, 'http/1.1'],
        [false, true, false],
        [false, true, false],
      ],
    );
  });

  test('client certificates: required by the server, seen by the application', async () => {
    let peer = '';
    const { server, port } = await listen(
      { tls: { key: certs.server.key, cert: certs.server.cert, ca: certs.client.cert, requestCert: true, rejectUnauthorized: true } },
      (s) => {
        peer = `${s.authorized} ${s.getPeerCertificate().subject?.CN}`;
        s.resume();
        s.end('ok');
      },
    );
    const c = connect({ port, host: 'localhost', tls: { ca: certs.server.cert, cert: certs.client.cert, key: certs.client.key } });
    const got = await collect(c);
    assert.equal(got.toString(), 'ok');
    assert.equal(c.reliable, true);
    assert.equal(peer, 'true rocks test client');
    await closeServer(server);
  });

  test('a rocks TLS client with enhanced: true refuses a TLS server that does not select rocks/1', async () => {
    const plain = (await import('node:tls')).createServer({ key: certs.server.key, cert: certs.server.cert }, (s: TLSSocket) => s.end());
    plain.listen(0, '127.0.0.1');
    await once(plain, 'listening');
    const port = (plain.address() as { port: number }).port;
    const c = connect({ port, host: 'localhost', enhanced: true, tls: { ca: certs.server.cert } });
    const [err] = (await once(c, 'error')) as [NodeJS.ErrnoException];
    assert.equal(err.code, 'ERR_ROCKS_NOT_ENHANCED');
    plain.close();
  });

  test('tls with relays between nodes is refused at createServer', () => {
    let server: ReliableServer | undefined;
    assert.throws(
      () => {
        server = createServer({
          tls: { key: certs.server.key, cert: certs.server.cert },
          peers: [{ nodeId: 1, host: '127.0.0.1', port: 1 }],
          nodeId: 2,
        });
      },
      (err: NodeJS.ErrnoException) => err.code === 'ERR_ROCKS_INVALID_OPTION' && /relays between nodes/.test(err.message),
    );
    assert.equal(server, undefined);
  });
});
