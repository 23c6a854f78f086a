// Peeking at a connection's first bytes (src/node/peek.ts), on real sockets:
// the bytes stay for whoever reads next, and with deferAccept a connection
// reaches the server only once it has sent something.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { deferAccept, peekBytes } from '../../src/node/peek.js';

const linux = process.platform === 'linux';

describe('peek', { skip: linux ? false : 'MSG_PEEK and TCP_DEFER_ACCEPT are used on Linux only' }, () => {
  test('peeked bytes are left in place: the next read gets them all', async () => {
    const server = createServer({ pauseOnConnect: true });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const client = connect((server.address() as AddressInfo).port, '127.0.0.1');
    const [socket] = (await once(server, 'connection')) as [Socket];
    assert.equal(peekBytes(socket, 1024), undefined, 'nothing there yet');
    client.write('hello, rocks');
    await sleep(50);
    assert.equal(peekBytes(socket, 1024)?.toString(), 'hello, rocks');
    assert.equal(peekBytes(socket, 5)?.toString(), 'hello', 'at most max bytes');
    socket.resume();
    const [chunk] = (await once(socket, 'data')) as [Buffer];
    assert.equal(chunk.toString(), 'hello, rocks', 'the read still gets every byte');
    client.destroy();
    socket.destroy();
    server.close();
  });

  test('with deferAccept a silent connection is not accepted; its first byte gets it accepted with the byte waiting', async () => {
    const server = createServer({ pauseOnConnect: true });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    deferAccept(server);
    const accepted: Socket[] = [];
    server.on('connection', (s: Socket) => accepted.push(s));
    const client = connect((server.address() as AddressInfo).port, '127.0.0.1');
    await once(client, 'connect');
    await sleep(500);
    assert.equal(accepted.length, 0, 'not accepted while silent');
    client.write('x');
    const deadline = Date.now() + 2000;
    while (accepted.length === 0 && Date.now() < deadline) await sleep(10);
    assert.equal(accepted.length, 1);
    assert.equal(peekBytes(accepted[0], 16)?.toString(), 'x', 'the first byte is there to peek at');
    client.destroy();
    accepted[0].destroy();
    server.close();
  });
});
