// Resumption is authenticated: someone who saw a session id on the wire
// cannot take the session over, a recorded resume cannot be replayed, and
// neither attempt disturbs the live session. Nor do strangers: garbage after
// an EDP announcement gets ERROR(PROTOCOL), a malformed announcement is closed
// without a word, and a resume of an unknown session gets UNKNOWN_SESSION.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import { describe, test } from 'node:test';
import { connect, type ReliableSocket } from '../../src/index.js';
import { EDP_MAGIC, encodeAnnouncement, parseAnnouncement, ROCKS } from '../../src/edp/announcement.js';
import { ERROR_CODES } from '../../src/protocol/errors.js';
import { encodeProof, encodeResume, FrameParser, FrameType, type Frame } from '../../src/protocol/frames.js';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { until } from '../support/helpers.js';
import { endAll, listen } from '../support/net.js';
import { stranger as rawStranger } from '../support/strangers.js';

const options = { failureTimeout: 1000, reconnectDelay: 10 };

const ANNOUNCEMENT = encodeAnnouncement([ROCKS]);

/** Splits what one side sent on a connection into its EDP announcement (if any) and its frames. */
function framesOf(bytes: Buffer): { announced: boolean; frames: Frame[] } {
  const r = parseAnnouncement(bytes);
  const parser = new FrameParser();
  parser.push(r.kind === 'announcement' ? bytes.subarray(r.length) : bytes);
  const frames: Frame[] = [];
  for (let f = parser.next(); f; f = parser.next()) frames.push(f);
  return { announced: r.kind === 'announcement', frames };
}

/**
 * Talks to the server as a stranger: sends `first` (by default prefixed with
 * a rocks announcement, as a rocks client would), lets `reply` answer each
 * batch of frames, and returns the frames the server sent until it closed.
 */
async function stranger(
  port: number,
  first: Buffer | string,
  reply: (socket: Socket, frames: Frame[]) => void = () => {},
  announce = true,
): Promise<{ announced: boolean; frames: Frame[] }> {
  const socket = netConnect(port, '127.0.0.1');
  let received = Buffer.alloc(0);
  let seen = 0;
  socket.on('data', (chunk: Buffer) => {
    received = Buffer.concat([received, chunk]);
    const { frames } = framesOf(received);
    if (frames.length > seen) {
      seen = frames.length;
      reply(socket, frames);
    }
  });
  await once(socket, 'connect');
  if (announce) socket.write(ANNOUNCEMENT);
  socket.write(first);
  await once(socket, 'close');
  return framesOf(received);
}

/** A live echo session through a proxy that records what crosses the wire, per connection. */
async function liveSession() {
  let serverSide: ReliableSocket | undefined;
  const serverEvents: string[] = [];
  const { server, port } = await listen(options, (s) => {
    serverSide = s;
    s.on('suspend', () => serverEvents.push('suspend'));
    s.on('error', (e) => serverEvents.push(`error ${e.message}`));
    s.pipe(s);
  });
  const proxy = new FaultProxy(port);
  const wire = new Map<number, { up: Buffer[]; down: Buffer[] }>();
  proxy.onChunk = (direction, chunk, connection) => {
    if (!wire.has(connection)) wire.set(connection, { up: [], down: [] });
    wire.get(connection)![direction].push(Buffer.from(chunk));
  };
  const c = connect({ port: await proxy.listen(), host: '127.0.0.1', ...options });
  let echoed = '';
  c.on('data', (d: Buffer) => (echoed += d.toString()));
  await once(c, 'connect');
  await until(() => serverSide !== undefined, 5000, 'connection');
  const roundTrip = async (text: string) => {
    const before = echoed.length;
    c.write(text);
    await until(() => echoed.length >= before + text.length, 5000, `echo of ${text}`);
    assert.equal(echoed.slice(before), text);
  };
  await roundTrip('before ');
  // What an eavesdropper saw: the WELCOME names the session and the server
  // (the connection before it through the proxy was the EDP probe).
  const seen = [...wire.values()].map((w) => framesOf(Buffer.concat(w.down)).frames[0]);
  const welcome = seen.find((f) => f?.type === FrameType.WELCOME);
  assert.ok(welcome?.type === FrameType.WELCOME);
  const close = () => endAll(c, server, proxy);
  return { server, port, proxy, wire, c, welcome, roundTrip, serverEvents, close };
}

describe('authenticated resumption', () => {
  test('a resume with a stolen session id but without the key is refused; the live session is untouched', async () => {
    const live = await liveSession();
    const resume = encodeResume(1, live.welcome.sessionId, randomBytes(16), live.welcome.instance);
    const { frames } = await stranger(live.port, resume, (socket, got) => {
      if (got.length === 1 && got[0].type === FrameType.CHALLENGE) {
        // Without the session key the best an attacker can do is guess the MAC.
        socket.write(encodeProof(got[0].received, got[0].sent, randomBytes(32)));
      }
    });
    assert.equal(frames[0]?.type, FrameType.CHALLENGE, 'the server challenges the resume');
    const last = frames[frames.length - 1];
    assert.ok(last?.type === FrameType.ERROR && last.code === ERROR_CODES.ERR_ROCKS_AUTH_FAILED.wire, 'refused with AUTH_FAILED');
    await live.roundTrip('after the attempt');
    assert.deepEqual(live.serverEvents, [], 'the live session never noticed');
    assert.equal(live.server.sessionCount, 1);
    await live.close();
  });

  test('a recorded resume replayed verbatim is refused; the live session is untouched', async () => {
    const live = await liveSession();
    // Force a real resume, and record what the client sent on the new connection.
    const connectionsBefore = live.proxy.connections;
    live.proxy.reset();
    await once(live.c, 'reconnect');
    await live.roundTrip('resumed ');
    const recorded = Buffer.concat(live.wire.get(connectionsBefore + 1)!.up);
    const sent = framesOf(recorded);
    assert.ok(sent.announced, 'the resume opens with the announcement');
    assert.deepEqual(
      sent.frames.slice(0, 2).map((f) => f.type),
      [FrameType.RESUME, FrameType.PROOF],
    );
    const eventsBefore = [...live.serverEvents];

    // The recording holds the announcement already.
    const { frames } = await stranger(live.port, recorded, undefined, false);
    assert.equal(frames[0]?.type, FrameType.CHALLENGE);
    const last = frames[frames.length - 1];
    assert.ok(last?.type === FrameType.ERROR && last.code === ERROR_CODES.ERR_ROCKS_AUTH_FAILED.wire, 'replay refused with AUTH_FAILED');
    await live.roundTrip('after the replay');
    assert.deepEqual(live.serverEvents, eventsBefore, 'the replay did not disturb the session');
    await live.close();
  });

  test('garbage, port scans and unknown sessions close only their own connection', async () => {
    const live = await liveSession();
    const errors: Error[] = [];
    live.server.on('clientError', (e: Error) => errors.push(e));
    // A port scan: connect and leave.
    const scan = netConnect(live.port, '127.0.0.1');
    await once(scan, 'connect');
    scan.destroy();
    // Garbage after a rocks announcement, as from a broken client.
    const garbage = await stranger(live.port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.ok(garbage.announced, 'the server announced itself first');
    assert.ok(garbage.frames[0]?.type === FrameType.ERROR && garbage.frames[0].code === ERROR_CODES.ERR_ROCKS_PROTOCOL.wire);
    // An announcement that breaks off into nonsense after the magic.
    const malformed = await stranger(live.port, Buffer.concat([EDP_MAGIC, Buffer.from([9, 0, 0, 0])]), undefined, false);
    assert.deepEqual(malformed, { announced: false, frames: [] }, 'closed without a word');
    // A resume of a session this server never issued.
    const unknown = await stranger(live.port, encodeResume(1, randomBytes(16), randomBytes(16), randomBytes(8)));
    assert.ok(unknown.frames[0]?.type === FrameType.ERROR && unknown.frames[0].code === ERROR_CODES.ERR_ROCKS_UNKNOWN_SESSION.wire);
    await until(() => errors.length === 3, 5000, 'clientError events');
    assert.deepEqual(
      errors.map((e) => (e as { code?: string }).code),
      ['ERR_ROCKS_PROTOCOL', 'ERR_ROCKS_PROTOCOL', 'ERR_ROCKS_UNKNOWN_SESSION'],
    );
    await live.roundTrip('still fine');
    assert.deepEqual(live.serverEvents, []);
    await live.close();
  });
});

describe('strangers cannot crowd the server', () => {
  test('a flood of HELLO, ACK and one byte, then gone (2,000 strangers, no CONFIRM): no session is held', async () => {
    let opened = 0;
    const refusals = new Map<string, number>();
    const live = await liveSession();
    live.server.on('connection', () => opened++);
    live.server.on('clientError', (e: { code?: string }) => refusals.set(String(e.code), (refusals.get(String(e.code)) ?? 0) + 1));
    const started = Date.now();
    const total = 2000;
    const concurrency = 100;
    let next = 0;
    const answers: number[] = [];
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < total) {
          next++;
          const s = await rawStranger(live.port, { confirm: false });
          await s.closed;
          const last = s.frames.at(-1);
          answers.push(last?.type === FrameType.ERROR ? last.code : -1);
        }
      }),
    );
    await until(() => live.server.sessionCount === 1, 10_000, 'the strangers’ sessions to go');
    console.log(
      `HELLO+ACK flood: ${total} strangers in ${Date.now() - started} ms; held afterwards: ${live.server.sessionCount - 1} sessions, ${live.server.suspendedCount} suspended`,
    );
    assert.equal(live.server.suspendedCount, 0, 'no stranger left a suspended session');
    assert.equal(opened, 0, 'no stranger reached the application');
    assert.ok(
      answers.every((c) => c === ERROR_CODES.ERR_ROCKS_PROTOCOL.wire),
      'each was told ERROR(1)',
    );
    await live.roundTrip('the live session carries on');
    assert.deepEqual(live.serverEvents, []);
    await live.close();
  });

  test('a flood of HELLO with data behind it, then gone (1,000 strangers, no CONFIRM): each reaches the application as a connection that fails, none is held', async () => {
    const ends = new Map<string, number>();
    const live = await liveSession();
    let opened = 0;
    live.server.on('connection', (s: ReliableSocket) => {
      opened++; // strangers only: the live session connected before this listener
      let got = '';
      s.on('data', (d: Buffer) => (got += d.toString()));
      s.on('error', (e: { code?: string }) => {
        const key = `${e.code} after ${got.length === 5 ? 'its 5 bytes' : `${got.length} bytes`}`;
        ends.set(key, (ends.get(key) ?? 0) + 1);
      });
    });
    const total = 1000;
    let next = 0;
    await Promise.all(
      Array.from({ length: 100 }, async () => {
        while (next < total) {
          next++;
          const s = await rawStranger(live.port, { confirm: false, early: 5 });
          await s.closed;
        }
      }),
    );
    await until(() => live.server.sessionCount === 1, 10_000, 'the strangers’ sessions to go');
    console.log(`HELLO+data flood: ${total} strangers; their applications' ends: ${JSON.stringify(Object.fromEntries(ends))}`);
    assert.equal(opened, total, 'each reached the application, as a TCP connection with its first bytes would');
    assert.deepEqual(Object.fromEntries(ends), { 'ERR_ROCKS_CONNECT_FAILED after its 5 bytes': total });
    assert.equal(live.server.suspendedCount, 0, 'no stranger left a suspended session');
    await live.roundTrip('the live session carries on');
    // Every server socket's events: the strangers' ends, and nothing from the live session.
    assert.equal(live.serverEvents.length, total);
    assert.ok(live.serverEvents.every((e) => e.startsWith('error') && e.includes('before the client confirmed it')));
    await live.close();
  });
});
