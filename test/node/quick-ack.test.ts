// Acknowledging small reads at once (src/node/quick-ack.ts), read back from
// the kernel: getsockopt(TCP_QUICKACK) is 0 while a connection is in the
// delayed-ACK ("ping-pong") mode a request/response exchange puts it in,
// and 1 once TCP_QUICKACK has sent the pending ACK. The time this saves
// behind a hop with Nagle on is measured by the bench (`--only nagle`).

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, connect as netConnect, createServer as netCreateServer, type Socket } from 'node:net';
import { describe, test } from 'node:test';
import { connect, type ReliableSocket } from '../../src/index.js';
import { ackAtOnce, TCP_QUICKACK } from '../../src/node/quick-ack.js';
import { fdOf, IPPROTO_TCP, socketCalls } from '../../src/node/socket-calls.js';
import { closeServer, listen } from '../support/net.js';
import { intOption } from '../support/sockopt.js';

const EXCHANGES = 20;
const MESSAGE = Buffer.alloc(100, 0x61);
const skip = socketCalls() === null ? 'no socket calls here (Linux with koffi only)' : false;

/** The kernel's quick-ACK flag of a socket: 0 while it delays ACKs. */
const quickAck = (socket: Socket): number => intOption(socket, IPPROTO_TCP, TCP_QUICKACK);

/**
 * Sends MESSAGE and waits for its echo EXCHANGES times; returns the quick-ACK
 * flag of `link` read as each echo arrives, after `settle` (the rest of
 * that turn of the event loop, or nothing), before the next write.
 */
async function pingPong(app: Socket, link: () => Socket, settle: () => Promise<void> = async () => {}): Promise<number[]> {
  const flags: number[] = [];
  for (let i = 0; i < EXCHANGES; i++) {
    app.write(MESSAGE);
    let got = 0;
    await new Promise<void>((resolve) => {
      const onData = (d: Buffer) => {
        got += d.length;
        if (got < MESSAGE.length) return;
        app.off('data', onData);
        void settle().then(() => {
          flags.push(quickAck(link()));
          resolve();
        });
      };
      app.on('data', onData);
    });
  }
  return flags;
}

const endOfTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Counts TCP_QUICKACK calls by descriptor while it runs. */
async function countingQuickAcks<T>(run: () => Promise<T>): Promise<{ result: T; calls: Map<number, number> }> {
  const c = socketCalls()!;
  const real = c.setsockopt;
  const calls = new Map<number, number>();
  c.setsockopt = (fd, level, name, value, length) => {
    if (level === IPPROTO_TCP && name === TCP_QUICKACK) calls.set(fd, (calls.get(fd) ?? 0) + 1);
    return real(fd, level, name, value, length);
  };
  try {
    return { result: await run(), calls };
  } finally {
    c.setsockopt = real;
  }
}

type WithDriver = { driver: { activeSocket(): Socket } };
const linkOf = (s: ReliableSocket) => () => (s as unknown as WithDriver).driver.activeSocket();

describe('quick ACK on small reads', { skip }, () => {
  test('raw TCP in a request/response exchange delays its ACKs; TCP_QUICKACK ends it', async (t) => {
    const server = netCreateServer((s) => s.on('data', (d) => s.write(d)));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const c = netConnect((server.address() as AddressInfo).port, '127.0.0.1');
    t.after(() => {
      c.destroy();
      server.close();
    });
    await once(c, 'connect');
    const flags = await pingPong(c, () => c);
    assert.equal(flags.at(-1), 0, `raw flags ${flags.join('')}: the kernel delays ACKs in an exchange`);
    ackAtOnce(c);
    assert.equal(quickAck(c), 1, 'the pending ACK left at once');
  });

  test('a rocks link acknowledges a small read it does not answer by the end of the turn; a reply in the turn carries the ACK instead', async (t) => {
    let served: ReliableSocket | undefined;
    const { server, port } = await listen({}, (s) => {
      served = s;
      s.on('error', () => {});
      s.on('data', (d) => s.write(d)); // answers in the same turn
    });
    const c: ReliableSocket = connect({ port, host: '127.0.0.1', enhanced: true });
    t.after(async () => {
      c.destroy();
      await closeServer(server);
    });
    await once(c, 'connect');
    const { result: flags, calls } = await countingQuickAcks(() => pingPong(c as unknown as Socket, linkOf(c), endOfTurn));
    // The client reads each echo and writes nothing until the next turn.
    assert.deepEqual(flags, new Array(EXCHANGES).fill(1), `client flags ${flags.join('')}`);
    assert.equal(calls.get(fdOf(linkOf(c)())!), EXCHANGES, 'one call per unanswered read');
    assert.ok(served !== undefined);
    assert.equal(calls.get(fdOf(linkOf(served)())!) ?? 0, 0, 'the server answered every request in its turn: no call');
  });

  test('quickAck: false leaves the ACKs of both ends to the kernel: no call, and the exchange delays its ACKs as raw TCP does', async (t) => {
    let served: ReliableSocket | undefined;
    const { server, port } = await listen({ quickAck: false }, (s) => {
      served = s;
      s.on('error', () => {});
      // Answers in the next turn: with quickAck on, every request would get a call.
      s.on('data', (d) => setImmediate(() => s.write(d)));
    });
    const c: ReliableSocket = connect({ port, host: '127.0.0.1', enhanced: true, quickAck: false });
    t.after(async () => {
      c.destroy();
      await closeServer(server);
    });
    await once(c, 'connect');
    const { result: flags, calls } = await countingQuickAcks(() => pingPong(c as unknown as Socket, linkOf(c), endOfTurn));
    assert.equal(flags.at(-1), 0, `client flags ${flags.join('')}: the kernel delays ACKs in an exchange`);
    assert.ok(served !== undefined);
    assert.deepEqual([...calls.values()], [], 'no TCP_QUICKACK call on either end');
  });
});
