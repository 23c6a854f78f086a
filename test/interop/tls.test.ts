// EDP by ALPN against real TLS programs nobody here wrote: a rocks TLS client
// talks to node's https server and `openssl s_server` as a plain TLS
// connection that gets the same bytes as tls.connect, with the application's
// ALPN protocol; `curl` and `openssl s_client` get plain TLS connections
// from a rocks TLS server.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer as httpsCreateServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { after, describe, test } from 'node:test';
import { type ConnectionOptions, connect as tlsConnect, type TLSSocket } from 'node:tls';
import { connect, type DetectInfo, type ReliableSocket } from '../../src/index.js';
import { makeCerts } from '../support/certs.js';
import { freePort, programs, run, start, waitForPort } from '../support/programs.js';
import { closeServer, listen } from '../support/net.js';

const certs = makeCerts();
after(() => certs.cleanup());
const found = certs.skip ? { paths: {} as Record<string, string>, skip: certs.skip } : programs('openssl', 'curl');

/** Writes `request`, reads until `done` or the end; what came back. */
async function exchange(socket: TLSSocket | ReliableSocket, request: string, done: (b: Buffer) => boolean): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = Buffer.alloc(0);
  socket.write(request);
  await new Promise<void>((resolve, reject) => {
    socket.on('data', (d: Buffer) => {
      chunks.push(d);
      total = Buffer.concat(chunks);
      if (done(total)) resolve();
    });
    socket.once('end', () => resolve());
    socket.once('error', reject);
  });
  socket.destroy();
  return total;
}

/** A rocks TLS client and a tls.connect with the same options, each doing the same exchange. */
async function bothWays(port: number, tls: ConnectionOptions, request: string, done: (b: Buffer) => boolean) {
  const rocks = connect({ port, host: 'localhost', tls });
  const detect = new Promise<DetectInfo>((resolve) => rocks.once('detect', resolve));
  await once(rocks, 'secureConnect');
  const seen = {
    reliable: rocks.reliable,
    encrypted: rocks.encrypted,
    authorized: rocks.authorized,
    alpn: rocks.alpnProtocol,
    cn: rocks.getPeerCertificate().subject?.CN,
    detect: await detect,
  };
  const fromRocks = await exchange(rocks, request, done);
  const plain = tlsConnect({ port, host: 'localhost', ...tls });
  await once(plain, 'secureConnect');
  const plainAlpn = plain.alpnProtocol;
  const fromTls = await exchange(plain, request, done);
  return { seen, fromRocks, fromTls, plainAlpn };
}

describe('EDP by ALPN with real TLS programs', { skip: found.skip }, () => {
  test("a rocks TLS client against node's https server: plain TLS, the same bytes as tls.connect", async () => {
    const server = httpsCreateServer({ key: certs.server.key, cert: certs.server.cert }, (req, res) => {
      res.sendDate = false;
      res.end(`you asked for ${req.url}\n`);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as AddressInfo).port;
    const request = 'GET /rocks HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n';
    const { seen, fromRocks, fromTls, plainAlpn } = await bothWays(
      port,
      { ca: certs.server.cert, ALPNProtocols: ['http/1.1'] },
      request,
      () => false,
    );
    console.log(`# https: ${seen.detect.reason}; ${fromRocks.length} bytes`);
    assert.deepEqual(
      { reliable: seen.reliable, encrypted: seen.encrypted, authorized: seen.authorized, alpn: seen.alpn, cn: seen.cn },
      { reliable: false, encrypted: true, authorized: true, alpn: 'http/1.1', cn: 'localhost' },
    );
    assert.equal(plainAlpn, 'http/1.1');
    assert.match(fromRocks.toString(), /you asked for \/rocks/);
    assert.deepEqual(fromRocks, fromTls);
    server.close();
  });

  test('a rocks TLS client against openssl s_server: plain TLS, its ALPN protocol, the same bytes as tls.connect', async () => {
    for (const alpn of [['x-app'], undefined]) {
      const port = await freePort();
      const args = ['s_server', '-accept', String(port), '-cert', certs.server.certFile, '-key', certs.server.keyFile, '-rev'];
      const server = start(found.paths.openssl, alpn ? [...args, '-alpn', alpn.join(',')] : args);
      await waitForPort(port, '127.0.0.1', 10_000, server);
      const reversed = 'olleh\ndlrow\n';
      const { seen, fromRocks, fromTls, plainAlpn } = await bothWays(port, { ca: certs.server.cert, ALPNProtocols: alpn }, 'hello\nworld\n', (b) =>
        b.toString().endsWith(reversed),
      );
      console.log(`# openssl s_server ${alpn ? `-alpn ${alpn}` : 'without ALPN'}: ${seen.detect.reason}`);
      assert.equal(seen.reliable, false);
      assert.equal(seen.authorized, true);
      assert.equal(seen.alpn, alpn ? alpn[0] : false);
      assert.equal(plainAlpn, seen.alpn);
      assert.equal(fromRocks.toString(), reversed);
      assert.deepEqual(fromRocks, fromTls);
      await server.stop();
    }
  });

  test('curl against a rocks TLS server: a plain TLS connection carrying its request', async () => {
    for (const alpn of [['http/1.1'], undefined]) {
      const seen: { reliable: boolean; alpn: string | false | null | undefined }[] = [];
      const { server, port } = await listen({ tls: { key: certs.server.key, cert: certs.server.cert, ALPNProtocols: alpn } }, (s) => {
        seen.push({ reliable: s.reliable, alpn: s.alpnProtocol });
        let request = '';
        s.on('data', (d: Buffer) => {
          request += d.toString();
          if (request.includes('\r\n\r\n')) {
            const body = `${request.split('\r\n')[0]}\n`;
            s.end(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
          }
        });
      });
      const out = await run(found.paths.curl, [
        '-sS',
        '--cacert',
        certs.server.certFile,
        '--resolve',
        `localhost:${port}:127.0.0.1`,
        '-w',
        '%{http_version}',
        `https://localhost:${port}/through-rocks`,
      ]);
      console.log(`# curl, server ALPN ${alpn ?? 'none'}: exit ${out.code}, ${JSON.stringify(out.stdout.toString())} ${out.stderr}`);
      assert.equal(out.code, 0, out.stderr);
      assert.equal(out.stdout.toString(), 'GET /through-rocks HTTP/1.1\n1.1');
      assert.deepEqual(seen, [{ reliable: false, alpn: alpn ? 'http/1.1' : false }]);
      await closeServer(server);
    }
  });

  test('openssl s_client against a rocks TLS server: a plain TLS connection, the application gets the bytes', async () => {
    const { server, port } = await listen({ tls: { key: certs.server.key, cert: certs.server.cert } }, (s) => {
      s.on('data', (d: Buffer) => s.end(d.toString().toUpperCase()));
    });
    const out = await run(
      found.paths.openssl,
      ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', 'localhost', '-CAfile', certs.server.certFile, '-verify_return_error', '-quiet'],
      { input: 'hello from s_client\n', holdInput: 5000 },
    );
    assert.equal(out.stdout.toString(), 'HELLO FROM S_CLIENT\n', out.stderr);
    await closeServer(server);
  });
});
