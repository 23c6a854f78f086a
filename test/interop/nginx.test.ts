// EDP behind a proxy that closes both sides on the client's FIN: a real
// nginx `stream` proxy with proxy_half_close off (its default). The probe
// half-closes at once, nginx drops the connection before the rocks server
// can answer, and the client falls back to plain TCP: it still works, but is
// not reliable. With proxy_half_close on the probe passes; with
// `enhanced: true` the client skips the probe and gets a real rocks session
// through the same default nginx, which survives a reset (docs/BALANCERS.md).

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect as netConnect } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { connect, detectionCache, type DetectInfo, type ReliableConnectOptions, type ReliableSocket } from '../../src/index.js';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { closeServer, listen } from '../support/net.js';
import { parseJsonLines } from '../support/helpers.js';
import { freePort, programs, start, waitForPort } from '../support/programs.js';
import { startRock } from '../support/rock.js';

const STREAM_MODULE = '/usr/lib/nginx/modules/ngx_stream_module.so';

/** Connects and waits for the verdict (the 'detect' event comes just before 'connect'). */
async function connectAndDetect(options: ReliableConnectOptions): Promise<{ socket: ReliableSocket; detect: DetectInfo }> {
  const socket = connect({ host: '127.0.0.1', ...options });
  const [[detect]] = (await Promise.all([once(socket, 'detect'), once(socket, 'connect')])) as [[DetectInfo], unknown];
  return { socket, detect };
}

async function echoOf(socket: ReliableSocket, text: string): Promise<string> {
  socket.write(text);
  let got = '';
  while (got.length < text.length) got += ((await once(socket, 'data')) as [Buffer])[0].toString();
  return got;
}

const found = programs('nginx', STREAM_MODULE);

describe('EDP through nginx stream', { skip: found.skip, timeout: 60_000 }, () => {
  test('proxy_half_close off turns the verdict to ordinary; on, or enhanced: true, gives rocks', async () => {
    const served: ReliableSocket[] = [];
    const { server, port: serverPort } = await listen({}, (s) => {
      served.push(s);
      s.on('error', () => {});
      s.pipe(s);
    });
    const dir = mkdtempSync(join(tmpdir(), 'rocks-nginx-'));
    const [closing, halfClosing] = [await freePort(), await freePort()];
    writeFileSync(
      join(dir, 'nginx.conf'),
      [
        `load_module ${STREAM_MODULE};`,
        'daemon off;',
        'worker_processes 1;',
        `pid ${join(dir, 'nginx.pid')};`,
        'error_log stderr;',
        'events {}',
        'stream {',
        // nginx's default: the client's FIN closes both sides.
        `    server { listen 127.0.0.1:${closing}; proxy_pass 127.0.0.1:${serverPort}; }`,
        `    server { listen 127.0.0.1:${halfClosing}; proxy_pass 127.0.0.1:${serverPort}; proxy_half_close on; }`,
        '}',
        '',
      ].join('\n'),
    );
    // -e: the error log before the configuration is read (not /var/log/nginx).
    const nginx = start(found.paths.nginx, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-e', 'stderr']);
    const proxy = new FaultProxy(closing);
    const sockets: ReliableSocket[] = [];
    try {
      await Promise.all([waitForPort(closing, '127.0.0.1', 10_000, nginx), waitForPort(halfClosing, '127.0.0.1', 10_000, nginx)]);
      detectionCache.clear();

      // The default: the probe's half-close closes the connection to the server too; no announcement comes back.
      const plain = await connectAndDetect({ port: closing });
      sockets.push(plain.socket);
      assert.deepEqual(plain.detect, { reliable: false, reason: 'ordinary server (probe: closed)', cached: false });
      assert.equal(plain.socket.reliable, false);
      assert.equal(await echoOf(plain.socket, 'still works, as plain TCP'), 'still works, as plain TCP');

      // proxy_half_close on: the probe gets the server's answer.
      const halfClose = await connectAndDetect({ port: halfClosing });
      sockets.push(halfClose.socket);
      assert.deepEqual(halfClose.detect, { reliable: true, reason: 'the server announced rocks', cached: false });

      // enhanced: true skips the probe: a rocks session through the default nginx, resumed after a reset.
      const proxyPort = await proxy.listen();
      const enhanced = await connectAndDetect({ port: proxyPort, enhanced: true });
      sockets.push(enhanced.socket);
      assert.deepEqual(enhanced.detect, { reliable: true, reason: 'the application said the server speaks rocks', cached: false });
      assert.equal(await echoOf(enhanced.socket, 'before'), 'before');
      const resumed = once(enhanced.socket, 'reconnect');
      proxy.reset();
      await resumed;
      assert.equal(await echoOf(enhanced.socket, 'after a reset'), 'after a reset');

      // The same for CLI users: rock forward --enhanced through the default nginx carries rocks.
      const forwardPort = await freePort();
      const forward = await startRock(
        ['forward', '--listen', `127.0.0.1:${forwardPort}`, '--to', `127.0.0.1:${closing}`, '--enhanced', '--json'],
        /forwarding over rocks/,
      );
      try {
        const plainClient = netConnect(forwardPort, '127.0.0.1');
        await once(plainClient, 'connect');
        plainClient.write('through rock forward');
        const [reply] = (await once(plainClient, 'data')) as [Buffer];
        assert.equal(reply.toString(), 'through rock forward');
        plainClient.destroy();
        const modes = parseJsonLines<{ msg: string; mode?: string }>(forward.output).filter((l) => l.msg === 'connection');
        assert.deepEqual(
          modes.map((l) => l.mode),
          ['reliable'],
        );
      } finally {
        await forward.stop();
      }
    } finally {
      for (const s of [...sockets, ...served]) s.destroy();
      await proxy.close();
      await nginx.stop();
      await closeServer(server);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
