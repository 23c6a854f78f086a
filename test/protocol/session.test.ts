// Named scenarios of the session state machine (src/protocol/session.ts) and
// the server's routing (src/protocol/server-core.ts), on the deterministic
// pair of test/protocol/pair.ts: a real client and a real server on in-memory
// links and a simulated clock, with 10 ms of latency each way. Each test is one
// behaviour, in the words of docs/PROTOCOL.md, and asserts the events each
// application sees, in order, what went on the wire, and the exact times the
// protocol defines. Only the public API is used.
//
// Reading the assertions: events are described as 'dial #1' (the client asks
// for link 1), 'link-active #2', 'close-link #1', 'error ERR_ROCKS_...'; frames
// as 'EDP' (an announcement), 'HELLO', 'DATA 0+5' (offset + length),
// 'ACK 5' (units received), 'FIN 5', 'ERROR(4)' (wire code).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { encodeAnnouncement, ROCKS } from '../../src/edp/announcement.js';
import { ERROR_CODES, type RocksError, type RocksErrorCode } from '../../src/protocol/errors.js';
import {
  encodeAck,
  encodeChallenge,
  encodeClose,
  encodeCloseAck,
  encodeConfirm,
  encodeDataHeader,
  encodeError,
  encodeFin,
  encodeHello,
  encodeProof,
  encodeResume,
  encodeWelcome,
  FrameType,
  INSTANCE_SIZE,
  KEY_SIZE,
  MAC_SIZE,
  NONCE_SIZE,
  SESSION_ID_SIZE,
  type HelloFrame,
  type ResumeFrame,
} from '../../src/protocol/frames.js';
import { confirmMac, deriveSessionKey, keyPairFromSeed, resumeMac } from '../../src/protocol/keys.js';
import { performance } from 'node:perf_hooks';
import { resolveServerLimits, resolveSessionConfig } from '../../src/protocol/config.js';
import { ServerCore } from '../../src/protocol/server-core.js';
import { EARLY_DATA_BYTES } from '../../src/protocol/session.js';
import { SimRandom } from '../sim/random.js';
import { CLIENT_ANNOUNCEMENT, fakeServer, Pair, SERVER_ANNOUNCEMENT, type PairOptions, type RawPeer } from './pair.js';

// ---- helpers ---------------------------------------------------------------------

/** `n` bytes that differ from any other call's: a replayed or duplicated byte shows. */
let patternSeed = 0;
function pattern(n: number): Buffer {
  const seed = ++patternSeed;
  return Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed * 17) & 0xff));
}

/** A pair whose handshake is done and whose event logs are read up to now. */
function established(opts: PairOptions = {}): Pair {
  const p = new Pair(opts);
  p.handshake();
  p.client.events.take();
  p.server.events.take();
  return p;
}

/** Runs until the client is suspended and has resumed again. */
/** Fields a session shares with others (its settings, its random source, its server), not walked. */
const SHARED_FIELDS = new Set(['config', 'random', 'host']);

/** Paths from a session to Buffers that are views of a larger ArrayBuffer (Node's pool, a read chunk). */
function slicesHeldBy(root: object): string[] {
  const found: string[] = [];
  const seen = new Set<unknown>();
  const walk = (v: unknown, path: string): void => {
    if (v === null || typeof v !== 'object' || seen.has(v)) return;
    seen.add(v);
    if (Buffer.isBuffer(v)) {
      if (v.byteLength !== v.buffer.byteLength) found.push(`${path} (${v.byteLength} of ${v.buffer.byteLength})`);
      return;
    }
    for (const [k, child] of Object.entries(v)) if (!(v === root && SHARED_FIELDS.has(k))) walk(child, `${path}.${k}`);
  };
  walk(root, 'session');
  return found;
}

function untilResumed(p: Pair, within = 60_000): void {
  const resumed = p.client.events.of('resume').length;
  p.runUntil(() => p.client.session.state === 'suspended', within);
  // The server switches links silently when nothing was in flight: wait for it to carry the session on the client's link.
  p.runUntil(
    () =>
      p.client.session.state === 'open' &&
      p.client.events.of('resume').length > resumed &&
      p.server.session.state === 'open' &&
      p.server.session.activeLink === p.client.session.activeLink,
    within,
  );
}

const wire = (code: RocksErrorCode) => ERROR_CODES[code].wire;

/** A client's HELLO with a key pair of its own, so the test can derive the session key. */
function rawHello(seed = 1, window = 1 << 20) {
  const keys = keyPairFromSeed(Buffer.alloc(KEY_SIZE, seed));
  return { keys, frame: encodeHello(1, 1, keys.publicKey, window) };
}

/**
 * A raw client that establishes a session with the real server, as a correct
 * client would (EDP, HELLO, then CONFIRM and ACK after WELCOME), and knows its key.
 */
function rawSession(p: Pair, window = 1 << 20) {
  const raw = p.rawClient();
  const hello = rawHello(3, window);
  raw.send(CLIENT_ANNOUNCEMENT, hello.frame);
  p.runUntil(() => raw.frames.some((f) => f.type === FrameType.WELCOME));
  const welcome = raw.last(FrameType.WELCOME);
  const key = deriveSessionKey(hello.keys, welcome.publicKey, welcome.sessionId, hello.keys.publicKey, welcome.publicKey);
  raw.send(rawConfirm(key, welcome.sessionId, hello.keys.publicKey, welcome.publicKey), encodeAck(0, window));
  p.runFor(p.latency);
  return { raw, key, sessionId: welcome.sessionId, window: welcome.window, instance: welcome.instance };
}

/** The CONFIRM a correct client sends right after WELCOME. */
function rawConfirm(key: Buffer, sessionId: Buffer, clientPublic: Buffer, serverPublic: Buffer): Buffer {
  return encodeConfirm(confirmMac(key, { version: 1, sessionId, clientPublic, serverPublic }));
}

/** A raw client link that asks to resume `sessionId` and waits for the server's answer. */
function rawResume(p: Pair, sessionId: Buffer, instance = p.core.instance, nonce = Buffer.alloc(NONCE_SIZE, 9)): RawPeer {
  const raw = p.rawClient();
  raw.send(CLIENT_ANNOUNCEMENT, encodeResume(1, sessionId, nonce, instance));
  p.runFor(3 * p.latency);
  return raw;
}

/**
 * A fake server's side of establishment: on the client's HELLO it answers
 * with WELCOME from a key pair of its own, so it knows the session key.
 */
function fakeWelcome(p: Pair, fake: RawPeer, window = 1 << 20, version = 1) {
  p.runUntil(() => fake.frames.some((f) => f.type === FrameType.HELLO));
  const hello = fake.last(FrameType.HELLO) as HelloFrame;
  const keys = keyPairFromSeed(Buffer.alloc(KEY_SIZE, 5));
  const sessionId = Buffer.alloc(SESSION_ID_SIZE, 0x5e);
  const instance = Buffer.alloc(INSTANCE_SIZE, 0x1e);
  fake.send(SERVER_ANNOUNCEMENT, encodeWelcome(version, sessionId, keys.publicKey, window, instance));
  const key = deriveSessionKey(keys, hello.publicKey, sessionId, hello.publicKey, keys.publicKey);
  return { key, sessionId };
}

/** The client's session with a fake server that the test speaks for. */
function establishedWithFake(opts: PairOptions = {}, window = 1 << 20) {
  const fake = fakeServer();
  const p = new Pair({ ...opts, dials: [fake] });
  const s = fakeWelcome(p, fake, window);
  p.runUntil(() => p.client.session.state === 'open');
  p.runFor(p.latency); // the client's ACK reaches the fake server
  return { p, fake, ...s };
}

/** Runs until the client dials again and that dial, planned to reach `fake`, has sent its RESUME. */
function resumeToFake(p: Pair, fake: RawPeer): ResumeFrame {
  p.planDials(fake);
  p.activeLink.cut();
  p.runUntil(() => fake.frames.some((f) => f.type === FrameType.RESUME));
  return fake.last(FrameType.RESUME);
}

// ---- establishment ---------------------------------------------------------------------

describe('establishment', () => {
  test('handshake: the client connects after WELCOME, the server opens on the first frame after it, bytes flow both ways', () => {
    const p = new Pair();
    p.handshake();
    // Dial at 0, connected at 10, HELLO at the server at 20, WELCOME at the client at 30, its ACK at the server at 40.
    assert.deepEqual(p.client.events.take(), ['dial #1', 'link-active #1', 'connect']);
    assert.equal(p.client.events.at('connect'), 30);
    assert.deepEqual(p.server.events.take(), ['link-active #1', 'open']);
    assert.equal(p.server.events.at('open'), 40);
    assert.deepEqual(p.coreNames(), ['session #1']);
    assert.deepEqual(p.link(1).sentBy('client'), ['EDP', 'HELLO', 'CONFIRM', 'ACK 0']);
    assert.deepEqual(p.link(1).sentBy('server'), ['EDP', 'WELCOME', 'PACE 0', 'ACK 0']);
    assert.ok(p.client.session.sessionId!.equals(p.server.session.sessionId!));

    const up = pattern(5000);
    const down = pattern(7000);
    p.client.write(up);
    p.server.write(down);
    p.runFor(250); // a few KiB are acknowledged within ACK_DELAY_LAZY (200 ms)
    assert.ok(p.server.received.equals(up));
    assert.ok(p.client.received.equals(down));
    assert.equal(p.client.session.bytesReceived, 7000);
    assert.equal(p.server.session.bytesReceived, 5000);
    assert.equal(p.client.session.bufferedAmount, 0, 'acknowledged');
    assert.equal(p.server.session.bufferedAmount, 0, 'acknowledged');
  });

  test("what a session keeps for life (id, key) is held in strings, not in Buffers or a slab of Node's pool", () => {
    // A slice of the 8 KiB pool keeps the whole slab alive, filled by
    // short-lived buffers (about 570 bytes per idle session); a Buffer of
    // its own costs about 240 bytes, a string 32-48.
    const p = established();
    for (const side of [p.client, p.server]) {
      const held = side.session.heldId!;
      assert.equal(typeof held, 'string');
      assert.equal(held.length, SESSION_ID_SIZE);
      assert.ok(Buffer.from(held, 'latin1').equals(side.session.sessionId!), 'held byte for byte');
    }
  });

  test('after a resume neither session keeps a slice of a larger buffer (a nonce, a frame): each would pin the whole of it', () => {
    const p = established();
    p.link(1).cut();
    untilResumed(p);
    p.runFor(100);
    for (const side of [p.client, p.server]) {
      const pinned = slicesHeldBy(side.session);
      assert.deepEqual(pinned, [], `${side.session.role}: ${pinned.join(', ')}`);
    }
  });

  test('deadlines are whole ms, the link carrying the session has none and is in no list (a boxed number, an array)', () => {
    type Linked = { allLinks(): readonly { deadline: number; phase: string }[] };
    const deadlines = (s: object) => (s as Linked).allLinks().map((l) => [l.phase, l.deadline] as const);
    const p = new Pair({ latency: 2.25 });
    p.runFor(0.5);
    const [[phase, deadline]] = deadlines(p.client.session);
    assert.equal(phase, 'dialing');
    assert.ok(Number.isInteger(deadline) && deadline > p.now, `dialing link's deadline ${deadline}`);
    p.handshake();
    p.runFor(100.3);
    p.link(1).cut();
    p.runUntil(() => deadlines(p.client.session).some(([phase]) => phase !== 'active'), 10_000);
    for (const [phase, at] of deadlines(p.client.session))
      if (phase !== 'active') assert.ok(Number.isInteger(at) && at > p.now, `${phase} link's deadline ${at}`);
    untilResumed(p);
    for (const side of [p.client, p.server]) {
      assert.deepEqual(deadlines(side.session), [['active', 0]], side.session.role);
      // The link that carries the session is in no array of its own (56 bytes).
      assert.equal((side.session as unknown as { others: readonly unknown[] }).others.length, 0, `${side.session.role}: other links`);
    }
  });

  test('sessions with the same settings share one config object; other settings get their own', () => {
    const a = resolveSessionConfig({ failureTimeout: 3000 });
    assert.equal(resolveSessionConfig({ failureTimeout: 3000 }), a, 'the same object');
    assert.equal(resolveSessionConfig({ failureTimeout: 3000, heartbeatInterval: 600 }), a, 'the same settings, spelled out');
    const b = resolveSessionConfig({ failureTimeout: 3000, earlyData: true });
    assert.notEqual(b, a);
    assert.deepEqual([a.earlyData, b.earlyData, b.failureTimeout, b.heartbeatInterval], [false, true, 3000, 600]);
    assert.throws(() => resolveSessionConfig({ failureTimeout: -1 }), /failureTimeout must be a number/);
  });

  test('an unconfirmed server session sends nothing after WELCOME and is not shown until the client speaks', () => {
    const p = new Pair();
    p.runFor(20); // the HELLO has arrived
    p.link(1).hold('client');
    p.runFor(500);
    assert.deepEqual(p.link(1).sentBy('server'), ['EDP', 'WELCOME']);
    assert.equal(p.servers[0].session.state, 'accepting');
    assert.deepEqual(p.servers[0].events.take(), []);
    p.link(1).release('client');
    p.runFor(p.latency);
    assert.deepEqual(p.server.events.take(), ['link-active #1', 'open']);
  });

  test('an unconfirmed server session is dropped silently handshakeTimeout after the HELLO', () => {
    const p = new Pair({ server: { handshakeTimeout: 300 } });
    p.runFor(20); // the HELLO arrives at 20
    p.link(1).hold('client');
    p.runUntil(() => p.servers[0].session.state === 'done');
    assert.equal(p.now, 20 + 300);
    assert.deepEqual(p.servers[0].events.names(), ['close-link #1', 'released']);
    assert.deepEqual(p.link(1).sentBy('server'), ['EDP', 'WELCOME'], 'no ERROR');
    assert.equal(p.core.sessionCount, 0);
  });

  test('link cut before WELCOME arrives: the server drops the unconfirmed session, the client dials again', () => {
    const p = new Pair({ jitter: 0.5 });
    p.runFor(25); // HELLO arrived at 20; WELCOME is on its way
    p.link(1).cut();
    p.handshake();
    // The first dial's backoff: base 100 ms, jitter 0.5 -> 75 ms after it.
    assert.deepEqual(p.client.events.names(), ['dial #1', 'reconnect-attempt 2', 'dial #2', 'link-active #2', 'connect']);
    assert.equal(p.client.events.of('dial')[1].at, 75);
    assert.deepEqual(p.servers[0].events.names(), ['close-link #1', 'released']);
    assert.deepEqual(p.servers[1].events.names(), ['link-active #2', 'open']);
    assert.equal(p.core.sessionCount, 1);
  });

  test("link cut after WELCOME, before the client's first frame: told UNCONFIRMED_SESSION, the client restarts and sends everything again", () => {
    const p = new Pair();
    p.runFor(20);
    p.link(1).hold('client'); // the ACK (and data) after WELCOME never arrive
    p.runUntil(() => p.client.session.state === 'open');
    const data = pattern(3000);
    p.client.write(data);
    p.runFor(5);
    p.link(1).cut();
    p.runUntil(() => p.servers.length === 2 && p.servers[1].session.state === 'open');
    p.runFor(100);
    assert.deepEqual(p.client.events.names(), [
      'dial #1',
      'link-active #1',
      'connect',
      'close-link #1',
      'suspend',
      'reconnect-attempt 1',
      'dial #2',
      'close-link #2', // RESUME answered with ERROR(11)
      'reconnect-attempt 2',
      'dial #3',
      'link-active #3',
      'resume', // a new session, shown as a resume
    ]);
    assert.equal(p.client.events.of('dial')[2].at, p.client.events.of('close-link')[1].at, 'the restart dials at once');
    assert.deepEqual(p.link(2).sentBy('client'), ['EDP', 'RESUME']);
    assert.deepEqual(p.link(2).sentBy('server'), ['EDP', 'ERROR(11)']);
    assert.deepEqual(p.link(3).sentBy('client').slice(0, 5), ['EDP', 'HELLO', 'CONFIRM', 'ACK 0', 'DATA 0+3000']);
    assert.deepEqual(p.servers[0].events.names(), ['close-link #1', 'released'], 'never shown to the application');
    assert.ok(p.servers[1].received.equals(data));
    assert.ok(!p.client.session.sessionId!.equals(p.servers[0].session.sessionId!), 'a new session id');
  });

  test('after a restart, the resume event counts the bytes sent again (README: "bytes sent again each way")', () => {
    const p = new Pair();
    p.runFor(20);
    p.link(1).hold('client');
    p.runUntil(() => p.client.session.state === 'open');
    p.client.write(pattern(3000));
    p.runFor(5);
    p.link(1).cut();
    p.runUntil(() => p.client.events.of('resume').length === 1);
    assert.deepEqual(p.link(3).sentBy('client').slice(0, 5), ['EDP', 'HELLO', 'CONFIRM', 'ACK 0', 'DATA 0+3000'], 'all 3000 bytes went out again');
    const [resume] = p.client.events.of('resume');
    assert.equal(resume.replayedOut, 3000);
  });
});

describe('key confirmation (CONFIRM)', () => {
  const serverOnly = (opts: PairOptions = {}) => new Pair({ ...opts, connect: false });

  /** A raw client that sent HELLO and read WELCOME; what it sends next is up to the test. */
  function helloed(p: Pair, seed = 3) {
    const raw = p.rawClient();
    const hello = rawHello(seed);
    raw.send(CLIENT_ANNOUNCEMENT, hello.frame);
    p.runUntil(() => raw.frames.some((f) => f.type === FrameType.WELCOME));
    const welcome = raw.last(FrameType.WELCOME);
    const key = deriveSessionKey(hello.keys, welcome.publicKey, welcome.sessionId, hello.keys.publicKey, welcome.publicKey);
    return { raw, hello, welcome, key };
  }

  test('a correct client sends CONFIRM right after WELCOME, ahead of its ACK and data', () => {
    const p = new Pair();
    p.handshake();
    p.client.session.write(Buffer.from('hi'), p.now);
    p.runFor(50);
    assert.deepEqual(p.link(1).sentBy('client').slice(0, 5), ['EDP', 'HELLO', 'CONFIRM', 'ACK 0', 'DATA 0+2']);
  });

  test('HELLO then ACK and data without CONFIRM (the stranger flood): ERROR(1), the session is released, never shown', () => {
    const p = serverOnly();
    const { raw } = helloed(p);
    raw.send(encodeAck(0, 1 << 20), encodeDataHeader(0, 1), Buffer.from('x'));
    p.runFor(50);
    assert.deepEqual(raw.received, ['EDP', 'WELCOME', 'ERROR(1)']);
    assert.equal(raw.closedBy?.graceful, true);
    assert.deepEqual(p.servers[0].events.names(), ['close-link #1000 graceful', 'released']);
    assert.equal(p.core.sessionCount, 0, 'nothing is held');
  });

  test('a wrong CONFIRM MAC: ERROR(4), the session is released and a later RESUME of it hears UNCONFIRMED_SESSION', () => {
    const p = serverOnly();
    const { raw, welcome } = helloed(p);
    raw.send(encodeConfirm(Buffer.alloc(MAC_SIZE, 7)), encodeAck(0, 1 << 20));
    p.runFor(50);
    assert.deepEqual(raw.received, ['EDP', 'WELCOME', 'ERROR(4)']);
    assert.deepEqual(p.servers[0].events.names(), ['close-link #1000 graceful', 'released']);
    assert.equal(p.core.sessionCount, 0);
    const again = rawResume(p, welcome.sessionId);
    assert.deepEqual(again.errors, ['ERR_ROCKS_UNCONFIRMED_SESSION']);
  });

  test("another session's CONFIRM (a replay) does not confirm this one", () => {
    const p = serverOnly();
    const first = helloed(p, 3);
    const replay = rawConfirm(first.key, first.welcome.sessionId, first.hello.keys.publicKey, first.welcome.publicKey);
    first.raw.send(replay, encodeAck(0, 1 << 20));
    p.runFor(50);
    assert.equal(p.servers[0].session.state, 'open', 'the genuine CONFIRM confirms');
    // Same client key, a new session: the recorded CONFIRM names the old id and server key.
    const second = helloed(p, 3);
    second.raw.send(replay);
    p.runFor(50);
    assert.deepEqual(second.raw.received, ['EDP', 'WELCOME', 'ERROR(4)']);
    assert.equal(p.core.sessionCount, 1);
  });

  test('CONFIRM on an open session is a protocol error', () => {
    const p = serverOnly();
    const { raw, key, hello, welcome } = helloed(p);
    const confirm = rawConfirm(key, welcome.sessionId, hello.keys.publicKey, welcome.publicKey);
    raw.send(confirm, encodeAck(0, 1 << 20));
    p.runFor(50);
    raw.send(confirm);
    p.runFor(50);
    assert.deepEqual(raw.errors, ['ERR_ROCKS_PROTOCOL']);
  });
});

describe('data behind a HELLO without TLS (the earlyData option, PROTOCOL.md §3.8)', () => {
  const early = (opts: PairOptions = {}) => new Pair({ ...opts, client: { earlyData: true, ...opts.client } });

  test('data written before the connection goes right behind the HELLO; the server opens at it and answers before CONFIRM', () => {
    const p = early();
    const data = pattern(100);
    p.client.write(data);
    p.runFor(20); // the HELLO and the data arrive at 20
    assert.deepEqual(p.server.events.take(), ['link-active #1', 'open']);
    assert.equal(p.server.events.at('open'), 20);
    assert.ok(p.server.received.equals(data));
    assert.equal(p.core.unprovenLinkCount, 1, 'unconfirmed: its link still counts against the pending-link caps');
    p.server.write('answer');
    p.runFor(10); // WELCOME and the answer arrive at 30
    assert.equal(p.client.events.at('connect'), 30);
    assert.equal(p.client.received.toString(), 'answer', 'the answer came with WELCOME, one round trip after the HELLO');
    assert.deepEqual(p.link(1).sentBy('client').slice(0, 4), ['EDP', 'HELLO', 'DATA 0+100', 'CONFIRM']);
    p.runFor(10); // the CONFIRM arrives at 40
    assert.equal(p.core.unprovenLinkCount, 0, 'confirmed');
    p.link(1).cut();
    p.runUntil(() => p.client.events.of('resume').length === 1);
    assert.equal(p.servers.length, 1, 'a confirmed session is held through a failure');
    assert.ok(p.server.received.equals(data), 'delivered once');
  });

  test('without the option data waits for WELCOME, behind CONFIRM', () => {
    const p = new Pair();
    p.client.write(pattern(100));
    p.runFor(50);
    assert.deepEqual(p.link(1).sentBy('client').slice(0, 5), ['EDP', 'HELLO', 'CONFIRM', 'ACK 0', 'DATA 0+100']);
  });

  test('the link is lost after the data arrived, before WELCOME: the server application and the client fail; nothing is held or sent again', () => {
    const p = early();
    const data = pattern(3000);
    p.client.write(data);
    p.runFor(25); // HELLO and data arrived at 20; WELCOME is on its way
    p.link(1).cut();
    p.runUntil(() => p.client.session.state === 'done');
    p.runFor(100);
    assert.deepEqual(p.server.events.names().slice(-2), ['error ERR_ROCKS_CONNECT_FAILED', 'released']);
    assert.ok(p.server.received.equals(data), 'what arrived was delivered, once');
    assert.deepEqual(p.client.events.names().slice(-2), ['error ERR_ROCKS_CONNECT_FAILED', 'released']);
    assert.equal(p.links.size, 1, 'no second HELLO carried the data');
    assert.equal(p.core.sessionCount, 0);
    assert.equal(p.core.suspendedCount, 0);
  });

  test("the link is lost after WELCOME, before the server heard CONFIRM: the client's resume hears UNCONFIRMED_SESSION and it fails", () => {
    const p = early();
    p.client.write(pattern(300));
    p.runFor(25);
    p.link(1).hold('client'); // the CONFIRM the client sends at WELCOME (30) never arrives
    p.runFor(10);
    assert.equal(p.client.events.at('connect'), 30);
    p.link(1).cut();
    p.runUntil(() => p.client.session.state === 'done');
    assert.deepEqual(p.server.events.names().slice(-2), ['error ERR_ROCKS_CONNECT_FAILED', 'released']);
    assert.deepEqual(p.link(2).sentBy('server'), ['EDP', 'ERROR(11)']);
    assert.deepEqual(
      p.client.events.of('error').map((e) => (e.error as RocksError).code),
      ['ERR_ROCKS_UNKNOWN_SESSION'],
    );
    assert.equal(p.links.size, 2, 'no new session: the data went behind a HELLO');
  });

  test("a stranger's HELLO and data, then nothing: its application hears ERR_ROCKS_HANDSHAKE_TIMEOUT, nothing is held", () => {
    const p = new Pair({ connect: false, server: { handshakeTimeout: 500 } });
    const raw = p.rawClient();
    const hello = rawHello(5);
    raw.send(CLIENT_ANNOUNCEMENT, hello.frame, encodeDataHeader(0, 5), Buffer.from('hello'));
    p.runFor(20);
    assert.deepEqual(p.servers[0].events.take(), ['link-active #1000', 'open']);
    assert.equal(p.servers[0].received.toString(), 'hello');
    p.runFor(1000);
    assert.deepEqual(p.servers[0].events.names().slice(-3), ['error ERR_ROCKS_HANDSHAKE_TIMEOUT', 'close-link #1000', 'released']);
    assert.equal(p.core.sessionCount, 0);
    assert.equal(p.core.suspendedCount, 0);
    assert.equal(p.core.unprovenLinkCount, 0);
    assert.deepEqual(
      rawResume(p, raw.last(FrameType.WELCOME).sessionId).errors,
      ['ERR_ROCKS_UNCONFIRMED_SESSION'],
      'no record of an unconfirmed session',
    );
  });

  test('more than 16 KiB before CONFIRM, or an ACK before it: ERROR(1)', () => {
    for (const frames of [
      [encodeDataHeader(0, EARLY_DATA_BYTES + 1), Buffer.alloc(EARLY_DATA_BYTES + 1)],
      [encodeDataHeader(0, 5), Buffer.from('hello'), encodeAck(0, 1 << 20)],
    ]) {
      const p = new Pair({ connect: false });
      const raw = p.rawClient();
      raw.send(CLIENT_ANNOUNCEMENT, rawHello(6).frame, ...frames);
      p.runFor(50);
      assert.deepEqual(raw.received, ['EDP', 'WELCOME', 'ERROR(1)']);
      assert.equal(p.core.sessionCount, 0);
    }
  });
});

describe('pending links (before the first frame, or before CONFIRM)', () => {
  /** A ServerCore alone, driven as src/node/server.ts drives it: each event, then drain, then the next deadline. */
  function bareCore(limits = {}) {
    const core = new ServerCore(resolveSessionConfig(), resolveServerLimits(limits), new SimRandom(1));
    const events: string[] = [];
    const drain = () => {
      for (let ev = core.pollEvent(); ev !== undefined; ev = core.pollEvent()) {
        events.push(ev.type === 'rejected' ? `rejected #${ev.link} ${ev.error.code}` : `${ev.type} #${'link' in ev ? ev.link : ''}`);
      }
      return core.pollTimeout();
    };
    return { core, events, drain };
  }

  test('20,000 pending links: the work per new link stays constant (the scan over all of them is gone)', () => {
    const { core, drain } = bareCore({ maxPendingLinks: 30_000, maxPendingLinksPerAddress: 30_000 });
    const now = 1000;
    const perLink: Record<number, number> = {};
    const checksPerEvent: Record<number, number> = {};
    const batch = 1000;
    let link = 1;
    for (const at of [0, 10_000, 20_000]) {
      while (core.pendingLinkCount < at) {
        // Part of an EDP magic: pending, waiting for the rest, as a stalling stranger leaves it.
        core.handleLinkOpen(link, now, false, '198.51.100.7');
        core.handleLinkData(link++, CLIENT_ANNOUNCEMENT.subarray(0, 3), now);
        core.handleTimeout(now);
        drain();
      }
      const checks = core.pendingDeadlineChecks;
      const started = performance.now();
      for (let i = 0; i < batch; i++) {
        core.handleLinkOpen(link, now, false, '198.51.100.7');
        core.handleLinkData(link++, CLIENT_ANNOUNCEMENT.subarray(0, 3), now);
        core.handleTimeout(now);
        drain();
      }
      perLink[at] = ((performance.now() - started) * 1000) / batch;
      checksPerEvent[at] = (core.pendingDeadlineChecks - checks) / batch;
    }
    console.log(
      `pending-link cost: ${Object.entries(perLink)
        .map(([at, us]) => `${us.toFixed(1)} µs per new link at ${at} pending`)
        .join(', ')}`,
    );
    for (const at of [0, 10_000, 20_000]) {
      // Per new link the deadline queues look at their heads only (two queues), whatever waits behind them.
      assert.ok(checksPerEvent[at] <= 2, `${checksPerEvent[at]} pending links examined per new link at ${at} pending`);
    }
    // Their time comes: each expires once, in order, and nothing is left.
    core.handleTimeout(now + 500);
    drain();
    assert.equal(core.pendingLinkCount, 0);
    assert.equal(core.unprovenLinkCount, 0);
  });

  test('the caps: per address, then in total; a refused link is closed at once, the others are untouched', () => {
    const { core, events, drain } = bareCore({ maxPendingLinks: 5, maxPendingLinksPerAddress: 3 });
    for (let i = 1; i <= 4; i++) core.handleLinkOpen(i, 0, false, '198.51.100.7');
    drain();
    assert.deepEqual(events.splice(0), ['rejected #4 ERR_ROCKS_SERVER_BUSY', 'close-link #4']);
    core.handleLinkOpen(5, 0, false, '203.0.113.9');
    core.handleLinkOpen(6, 0, false, '203.0.113.9');
    core.handleLinkOpen(7, 0, true, '192.0.2.1'); // a member: counted in total only, and the total is full
    drain();
    assert.deepEqual(events.splice(0), ['rejected #7 ERR_ROCKS_SERVER_BUSY', 'close-link #7']);
    assert.equal(core.pendingLinkCount, 5);
    // A HELLO makes a session whose link still counts until the client confirms.
    const hello = rawHello(4);
    core.handleLinkData(1, Buffer.concat([CLIENT_ANNOUNCEMENT, hello.frame]), 0);
    drain();
    assert.equal(core.unprovenLinkCount, 5);
    core.handleLinkOpen(8, 0, false, '198.51.100.7');
    drain();
    assert.match(events.at(-2) ?? '', /rejected #8 ERR_ROCKS_SERVER_BUSY/);
    // The session goes (its link closed): a place frees.
    core.handleLinkClosed(1, 10);
    drain();
    assert.equal(core.unprovenLinkCount, 4);
    core.handleLinkOpen(9, 10, false, '198.51.100.7');
    drain();
    assert.equal(core.pendingLinkCount, 5);
  });
});

// ---- resume ----------------------------------------------------------------------------

describe('over a keying channel (TLS, PROTOCOL.md §15.2)', () => {
  const keyed = (opts: PairOptions = {}) => new Pair({ ...opts, keyed: true });

  test('data written before the connection goes right behind the HELLO; the server opens at the HELLO; no CONFIRM', () => {
    const p = keyed();
    const data = pattern(100);
    p.client.write(data);
    p.runFor(20); // the HELLO and the data arrive at 20
    assert.deepEqual(p.server.events.take(), ['link-active #1', 'open']);
    assert.equal(p.server.events.at('open'), 20);
    assert.ok(p.server.received.equals(data));
    p.handshake();
    assert.equal(p.client.events.at('connect'), 30);
    assert.deepEqual(p.link(1).sentBy('client').slice(0, 3), ['EDP', 'HELLO', 'DATA 0+100']);
    assert.ok(!p.link(1).sentBy('client').includes('CONFIRM'));
    assert.deepEqual(p.link(1).sentBy('server').slice(0, 2), ['EDP', 'WELCOME']);
    const id = p.client.session.sessionId!;
    assert.ok(id.equals(p.server.session.sessionId!));
    assert.ok(id.equals(p.channelOf(1)!.sessionId), 'the id the channel gave');
    assert.equal(id[0], 2, 'not a routable id');
    const hello = p
      .link(1)
      .framesSentBy('client')
      .find((f) => f.type === FrameType.HELLO) as HelloFrame;
    assert.ok(hello.publicKey.equals(Buffer.alloc(KEY_SIZE)), 'no public key');
    p.runFor(100);
    assert.ok(p.server.received.equals(data), 'once');
  });

  test('at most 16 KiB go before WELCOME, even to a server with a smaller window; the rest after it', () => {
    const p = keyed({ server: { receiveWindow: 1024 } });
    const data = pattern(40_000);
    p.client.write(data);
    p.runFor(25); // WELCOME has not arrived yet
    assert.deepEqual(
      p
        .link(1)
        .sentBy('client')
        .filter((f) => f.startsWith('DATA')),
      ['DATA 0+16384'],
    );
    p.runUntil(() => {
      p.server.read();
      return p.server.received.length === data.length;
    });
    assert.ok(p.server.received.equals(data));
    assert.deepEqual(p.server.events.of('error'), []);
  });

  test('the HELLO link is cut after the HELLO arrived: the client resumes the session by its channel id, the data arrives once', () => {
    const p = keyed();
    const data = pattern(3000);
    p.client.write(data);
    p.runFor(25); // HELLO and data arrived at 20; WELCOME is on its way
    p.link(1).cut();
    p.runUntil(() => p.client.session.state === 'open');
    p.runFor(100);
    assert.deepEqual(p.client.events.names(), ['dial #1', 'close-link #1', 'reconnect-attempt 2', 'dial #2', 'link-active #2', 'connect']);
    assert.deepEqual(p.link(2).sentBy('client').slice(0, 3), ['EDP', 'RESUME', 'PROOF']);
    const resume = p
      .link(2)
      .framesSentBy('client')
      .find((f) => f.type === FrameType.RESUME) as ResumeFrame;
    assert.ok(resume.instance.equals(Buffer.alloc(INSTANCE_SIZE)), 'no instance: WELCOME never arrived');
    assert.equal(p.servers.length, 1, 'one session');
    assert.ok(p.server.received.equals(data), 'delivered once');
    p.server.write('back');
    p.runFor(50);
    assert.equal(p.client.received.toString(), 'back');
  });

  test('the HELLO never arrived and nothing went behind it: the resume hears UNCONFIRMED_SESSION and the client starts over', () => {
    const p = keyed();
    p.runFor(15); // connected at 10; the HELLO is in flight
    p.link(1).cut();
    p.runUntil(() => p.client.session.state === 'open');
    assert.deepEqual(p.link(2).sentBy('server'), ['EDP', 'ERROR(11)']);
    assert.deepEqual(p.link(3).sentBy('client').slice(0, 2), ['EDP', 'HELLO']);
    assert.equal(p.servers.length, 1);
    assert.ok(p.client.session.sessionId!.equals(p.channelOf(3)!.sessionId), "the new link's channel names the new session");
  });

  test('the HELLO never arrived but data went behind it: the connection fails with ERR_ROCKS_CONNECT_FAILED, nothing was delivered', () => {
    const p = keyed();
    p.client.write(pattern(500));
    p.runFor(15);
    p.link(1).cut();
    p.runUntil(() => p.client.session.state === 'done');
    assert.deepEqual(p.client.events.names().slice(-3), ['error ERR_ROCKS_CONNECT_FAILED', 'close-link #2', 'released']);
    assert.equal(p.servers.length, 0);
    assert.ok(p.client.session.sentEarlyData);
  });

  test('no second attempt while a HELLO is unanswered: a silent first link ends by its handshake timeout, then a resume', () => {
    // Without the rule, a silent attempt would not hold up a fresh one past reconnectDelayMax (dial-schedule.ts).
    const p = keyed({ client: { handshakeTimeout: 3000, reconnectDelay: 50, reconnectDelayMax: 100 }, dials: ['silent'] });
    p.client.write(pattern(10));
    p.runUntil(() => p.client.session.state === 'done' || p.client.session.state === 'open');
    assert.deepEqual(
      p.client.events.of('dial').map((d) => d.at),
      [0, 3000],
      'one dial until the timeout, then the next at once',
    );
    assert.deepEqual(
      p.client.events.of('error').map((e) => (e.error as { code?: string }).code),
      ['ERR_ROCKS_CONNECT_FAILED'],
      'the server never held it',
    );
  });

  test('a WELCOME naming another session than the channel gave fails the session (ERR_ROCKS_PROTOCOL)', () => {
    const fake = fakeServer();
    const p = keyed({ dials: [fake] });
    p.runUntil(() => fake.frames.some((f) => f.type === FrameType.HELLO));
    fake.send(
      SERVER_ANNOUNCEMENT,
      encodeWelcome(1, Buffer.alloc(SESSION_ID_SIZE, 0x5e), Buffer.alloc(KEY_SIZE), 1 << 20, Buffer.alloc(INSTANCE_SIZE, 1)),
    );
    p.runUntil(() => p.client.session.state === 'done');
    assert.deepEqual(
      p.client.events.of('error').map((e) => (e.error as { code?: string }).code),
      ['ERR_ROCKS_PROTOCOL'],
    );
  });

  test('a HELLO with no public key on a link without a keying channel is refused with ERROR(1), no session', () => {
    const p = new Pair({ connect: false });
    const raw = p.rawClient();
    raw.send(CLIENT_ANNOUNCEMENT, encodeHello(1, 1, Buffer.alloc(KEY_SIZE), 1 << 20));
    p.runFor(50);
    assert.deepEqual(raw.received, ['EDP', 'ERROR(1)']);
    assert.equal(p.core.sessionCount, 0);
  });
});

describe('acknowledgements', () => {
  test("a window far above the sender's maxInflight: new data is acknowledged every 1 MiB, the writer never waits for the ACK delay", () => {
    // The server offers 32 MiB; the client may hold 4 MiB unacknowledged (the
    // default). An ACK only every 8 MiB (a quarter of the window) would leave
    // the writer blocked until each delayed ACK, 20 ms after every 4 MiB.
    const p = established({ latency: 1, server: { receiveWindow: 32 * 1024 * 1024 } });
    const total = 64 * 1024 * 1024;
    const chunk = Buffer.alloc(256 * 1024, 7);
    let written = 0;
    let wakes = 0;
    let blocked = false;
    const start = p.now;
    p.runUntil(() => {
      const now = p.client.events.of('writable').length;
      if (now > wakes) {
        wakes = now;
        blocked = false;
      }
      while (!blocked && written < total) {
        written += chunk.length;
        blocked = !p.client.write(chunk);
      }
      p.server.read();
      return written === total && p.client.session.bufferedAmount === 0;
    }, 20_000);
    const took = p.now - start;
    console.log(`64 MiB through a 32 MiB window, maxInflight 4 MiB: ${took} ms simulated (latency ${p.latency} ms), ${wakes} waits for 'writable'`);
    assert.ok(wakes > 0, 'the writer was held by maxInflight');
    assert.ok(took < (16 * 20) / 2, `${took} ms: the writer waited for a delayed ACK (20 ms) after each 4 MiB`);
  });
});

describe('resume', () => {
  test('link cut while idle: the client redials at once and both sides resume with nothing to replay', () => {
    const p = established();
    const cutAt = p.now;
    p.link(1).cut();
    untilResumed(p);
    p.runFor(100);
    assert.deepEqual(p.client.events.take(), ['close-link #1', 'suspend', 'reconnect-attempt 1', 'dial #2', 'link-active #2', 'resume']);
    assert.equal(p.client.events.of('dial')[1].at, cutAt, 'the first dial after a failure is immediate');
    assert.deepEqual(p.server.events.take(), ['close-link #1', 'suspend', 'link-active #2', 'resume']);
    assert.deepEqual(p.link(2).sentBy('client'), ['EDP', 'RESUME', 'PROOF', 'ACK 0']);
    assert.deepEqual(p.link(2).sentBy('server').slice(0, 4), ['EDP', 'CHALLENGE', 'PACE 0', 'ACK 0']);
    const [c] = p.client.events.of('resume');
    const [s] = p.server.events.of('resume');
    assert.deepEqual([c.replayedOut, c.replayedIn, s.replayedOut, s.replayedIn], [0, 0, 0, 0]);
    // Suspended at the cut; CHALLENGE arrives 30 ms later (connect 10, RESUME 10, CHALLENGE 10).
    assert.equal(c.outage, 30);
    assert.equal(p.client.events.at('resume'), cutAt + 30);
    assert.equal(p.server.events.at('resume'), cutAt + 40, 'on the PROOF');
  });

  test('link cut while data is in flight to the server: the client replays exactly what the server lacks', () => {
    const p = established();
    const a = pattern(10_000);
    const b = pattern(4000);
    p.client.write(a);
    p.runFor(50);
    p.client.write(b);
    p.runFor(5);
    p.link(1).cut(); // b is lost
    untilResumed(p);
    p.runFor(100);
    const [c] = p.client.events.of('resume');
    const [s] = p.server.events.of('resume');
    assert.deepEqual([c.replayedOut, c.replayedIn], [4000, 0]);
    assert.deepEqual([s.replayedOut, s.replayedIn], [0, 4000]);
    assert.ok(p.server.received.equals(Buffer.concat([a, b])), 'every byte once, in order');
    assert.deepEqual(p.link(2).sentBy('client').slice(1), ['RESUME', 'PROOF', 'ACK 0', 'DATA 10000+4000']);
  });

  test('link cut while data is in flight both ways: each side replays what the other lacks, every byte arrives once', () => {
    const p = established();
    const up = [pattern(3000), pattern(2000)];
    const down = [pattern(5000), pattern(1000)];
    p.client.write(up[0]);
    p.server.write(down[0]);
    p.runFor(50);
    p.client.write(up[1]);
    p.server.write(down[1]);
    p.runFor(5);
    p.link(1).cut();
    untilResumed(p);
    p.runFor(100);
    const [c] = p.client.events.of('resume');
    const [s] = p.server.events.of('resume');
    assert.deepEqual([c.replayedOut, c.replayedIn], [2000, 1000]);
    assert.deepEqual([s.replayedOut, s.replayedIn], [1000, 2000]);
    assert.ok(p.server.received.equals(Buffer.concat(up)));
    assert.ok(p.client.received.equals(Buffer.concat(down)));
  });

  test('bytes already received but not yet acknowledged are not replayed to the application twice', () => {
    const p = established();
    const a = pattern(2000);
    p.link(1).hold('server'); // the server's ACKs never come back
    p.client.write(a);
    p.runFor(50);
    assert.ok(p.server.received.equals(a));
    assert.equal(p.client.session.bufferedAmount, 2000, 'not acknowledged');
    p.link(1).cut();
    untilResumed(p);
    p.runFor(100);
    const [c] = p.client.events.of('resume');
    assert.equal(c.replayedOut, 0, 'CHALLENGE said the server holds all 2000 bytes');
    assert.equal(p.client.session.bufferedAmount, 0, 'the resume acknowledged them');
    assert.ok(p.server.received.equals(a));
  });

  test('the old link delivers data after the CHALLENGE: the replay skips what the server already holds', () => {
    const p = established();
    const a = pattern(1000);
    p.link(1).hold('client');
    p.client.write(a); // held on the old link
    p.runFor(1);
    p.link(1).cut(['client'], { keepInFlight: true }); // only the client's side failed
    p.runUntil(() => p.links.has(2) && p.link(2).sentBy('server').includes('CHALLENGE'));
    const challenge = p
      .link(2)
      .framesSentBy('server')
      .find((f) => f.type === FrameType.CHALLENGE);
    assert.equal(challenge?.type === FrameType.CHALLENGE && challenge.received, 0);
    p.link(1).release('client'); // a arrives at the server on the old link, after CHALLENGE said it held 0
    untilResumed(p);
    p.runFor(100);
    assert.deepEqual(p.link(2).sentBy('client').slice(1, 5), ['RESUME', 'PROOF', 'ACK 0', 'DATA 0+1000']);
    assert.ok(p.server.received.equals(a), 'every byte once');
    assert.equal(p.server.session.bytesReceived, 1000);
    // Nothing the server sent or was sent had to go again: its application saw no stall, only the move.
    assert.deepEqual(p.server.events.take(), ['close-link #1', 'link-active #2', 'migrate']);
  });

  test('the old link delivers the FIN after the CHALLENGE: the replayed FIN is ignored', () => {
    const p = established();
    p.link(1).hold('client');
    p.client.write('ab');
    p.client.end(); // DATA and FIN held on the old link
    p.runFor(1);
    p.link(1).cut(['client'], { keepInFlight: true });
    p.runUntil(() => p.links.has(2) && p.link(2).sentBy('server').includes('CHALLENGE'));
    p.link(1).release('client');
    untilResumed(p);
    p.runFor(100);
    assert.deepEqual(p.link(2).sentBy('client').slice(1, 6), ['RESUME', 'PROOF', 'ACK 0', 'DATA 0+2', 'FIN 2']);
    assert.deepEqual(p.server.events.take(), ['end', 'close-link #1', 'link-active #2', 'migrate']);
    assert.equal(p.server.received.toString(), 'ab');
    assert.deepEqual(p.client.events.take().slice(-2), ['resume', 'fin-acked']);
  });

  test('RESUME lost: that attempt fails and the next one resumes; the server never saw it', () => {
    const p = established({ jitter: 0.5 });
    const a = pattern(1000);
    p.client.write(a);
    p.runFor(1);
    p.link(1).cut();
    p.runUntil(() => p.links.has(2));
    p.link(2).hold('client'); // EDP + RESUME
    p.runFor(15);
    p.link(2).cut();
    untilResumed(p);
    p.runFor(100);
    assert.deepEqual(p.client.events.take(), [
      'close-link #1',
      'suspend',
      'reconnect-attempt 1',
      'dial #2',
      'reconnect-attempt 2',
      'dial #3',
      'link-active #3',
      'resume',
    ]);
    assert.deepEqual(p.server.events.take(), ['close-link #1', 'suspend', 'link-active #3', 'resume']);
    assert.equal(p.client.events.of('resume')[0].replayedOut, 1000);
    assert.ok(p.server.received.equals(a));
  });

  test('CHALLENGE lost: the server keeps its session suspended, the next attempt resumes', () => {
    const p = established({ jitter: 0.5 });
    const down = pattern(1000);
    p.server.write(down);
    p.runFor(1);
    p.link(1).cut();
    p.runUntil(() => p.links.has(2));
    p.link(2).hold('server'); // EDP + CHALLENGE
    p.runFor(30);
    assert.equal(p.server.session.state, 'suspended');
    p.link(2).cut();
    untilResumed(p);
    p.runFor(100);
    assert.deepEqual(p.server.events.take(), ['close-link #1', 'suspend', 'link-active #3', 'resume']);
    assert.equal(p.server.events.of('resume')[0].replayedOut, 1000);
    assert.ok(p.client.received.equals(down));
  });

  test('PROOF lost: the client resumed at once, fails again, and resumes on the next link; bytes arrive once', () => {
    const p = established({ jitter: 0.5 });
    const up = pattern(1500);
    const down = pattern(2500);
    p.client.write(up);
    p.server.write(down);
    p.runFor(1);
    p.link(1).cut();
    p.runUntil(() => p.links.has(2));
    p.runFor(15); // RESUME has left
    p.link(2).hold('client'); // PROOF, ACK and the replay
    p.runUntil(() => p.client.events.of('resume').length === 1);
    p.runFor(5);
    assert.equal(p.server.session.state, 'suspended', 'the server never got the PROOF');
    p.link(2).cut();
    p.runUntil(() => p.client.events.of('resume').length === 2 && p.server.session.state === 'open');
    p.runFor(100);
    assert.deepEqual(p.client.events.take(), [
      'close-link #1',
      'suspend',
      'reconnect-attempt 1',
      'dial #2',
      'link-active #2',
      'resume',
      'close-link #2',
      'suspend',
      'reconnect-attempt 1',
      'dial #3',
      'link-active #3',
      'resume',
    ]);
    assert.deepEqual(p.server.events.take(), ['close-link #1', 'suspend', 'link-active #3', 'resume']);
    const [, second] = p.client.events.of('resume');
    assert.deepEqual([second.replayedOut, second.replayedIn], [1500, 2500]);
    assert.ok(p.server.received.equals(up));
    assert.ok(p.client.received.equals(down));
  });

  test('a server that has not noticed the failure: the resume replaces its still-open link, silently when nothing was in flight', () => {
    const p = established();
    p.link(1).cut(['client']); // only the client hears the reset
    untilResumed(p);
    assert.deepEqual(p.server.events.take(), ['close-link #1', 'link-active #2', 'migrate']);
    assert.equal(p.server.events.of('migrate')[0].reason, 'the peer reconnected on a new connection');
  });

  test('a server that has not noticed the failure, with bytes lost on the old link: suspend and resume, outage 0', () => {
    const p = established();
    p.link(1).cut(['client']); // only the client hears the reset
    const down = pattern(3000);
    p.server.write(down); // goes out on the old link, which no longer reaches the client
    untilResumed(p);
    p.runFor(100);
    assert.deepEqual(p.server.events.take(), ['close-link #1', 'suspend', 'link-active #2', 'migrate', 'resume']);
    assert.equal(p.server.events.of('suspend')[0].reason, 'the peer reconnected on a new connection');
    assert.deepEqual([p.server.events.of('resume')[0].outage, p.server.events.of('resume')[0].replayedOut], [0, 3000]);
    assert.ok(p.client.received.equals(down));
  });

  test('a bad PROOF is refused with ERROR(4) and leaves the session untouched', () => {
    const p = established();
    const raw = p.rawClient();
    raw.send(CLIENT_ANNOUNCEMENT, encodeResume(1, p.client.session.sessionId!, Buffer.alloc(NONCE_SIZE, 1), p.core.instance));
    p.runUntil(() => raw.frames.some((f) => f.type === FrameType.CHALLENGE));
    raw.send(encodeProof(0, 0, Buffer.alloc(MAC_SIZE, 0xab)));
    p.runFor(50);
    assert.deepEqual(raw.received, ['EDP', 'CHALLENGE', 'ERROR(4)']);
    assert.equal(raw.closedBy?.graceful, true);
    assert.deepEqual(p.server.events.take(), ['close-link #1000 graceful']);
    assert.deepEqual(p.client.events.take(), []);
    const data = pattern(100);
    p.client.write(data);
    p.runFor(50);
    assert.ok(p.server.received.equals(data));
    assert.equal(p.server.session.activeLink, 1);
  });

  test('a bad CHALLENGE MAC: the client drops that link without a word and keeps trying; the real server resumes it', () => {
    const p = established({ jitter: 0.5 });
    const fake = fakeServer();
    const resume = resumeToFake(p, fake);
    assert.ok(resume.sessionId.equals(p.client.session.sessionId!));
    fake.send(SERVER_ANNOUNCEMENT, encodeChallenge(Buffer.alloc(NONCE_SIZE, 2), 0, 0, Buffer.alloc(MAC_SIZE, 0xcd)));
    untilResumed(p);
    assert.deepEqual(p.client.events.take(), [
      'close-link #1',
      'suspend',
      'reconnect-attempt 1',
      'dial #2',
      'close-link #2',
      'reconnect-attempt 2',
      'dial #3',
      'link-active #3',
      'resume',
    ]);
    assert.deepEqual(p.link(2).sentBy('client'), ['EDP', 'RESUME'], 'no PROOF, no ERROR');
    assert.deepEqual(fake.closedBy, { graceful: false, reason: 'ECONNRESET' });
  });

  test('at most 4 resume attempts wait for PROOF: a fifth closes the oldest, without ERROR', () => {
    const p = established();
    const raws = [1, 2, 3, 4, 5].map((i) => {
      const raw = p.rawClient();
      raw.send(CLIENT_ANNOUNCEMENT, encodeResume(1, p.client.session.sessionId!, Buffer.alloc(NONCE_SIZE, i), p.core.instance));
      p.runFor(1);
      return raw;
    });
    p.runFor(50);
    assert.deepEqual(
      raws.map((r) => r.received),
      [
        ['EDP', 'CHALLENGE'],
        ['EDP', 'CHALLENGE'],
        ['EDP', 'CHALLENGE'],
        ['EDP', 'CHALLENGE'],
        ['EDP', 'CHALLENGE'],
      ],
    );
    assert.deepEqual(
      raws.map((r) => r.closedBy?.reason),
      ['ECONNRESET', undefined, undefined, undefined, undefined],
    );
    assert.equal(p.server.session.state, 'open');
  });

  test('a resume attempt that sends ERROR instead of PROOF only loses its link', () => {
    const p = established();
    const raw = rawResume(p, p.client.session.sessionId!);
    raw.send(encodeError(wire('ERR_ROCKS_HANDSHAKE_TIMEOUT'), 'gave up'));
    p.runFor(50);
    assert.deepEqual(raw.received, ['EDP', 'CHALLENGE']);
    assert.equal(raw.closedBy?.graceful, false);
    assert.deepEqual(p.server.events.take(), ['close-link #1000']);
    assert.equal(p.server.session.state, 'open');
  });
});

// ---- timers ----------------------------------------------------------------------------

describe('kernel liveness: PACE (PROTOCOL.md §5.1)', () => {
  const both = { watched: { client: true, server: true } };

  test('both kernels watch the link: each side sends PACE once, then heartbeats every pathCheckInterval, not every heartbeatInterval', () => {
    const p = established(both);
    p.runFor(2 * p.latency); // the server's PACE reaches the client
    assert.deepEqual(p.link(1).sentBy('server'), ['EDP', 'WELCOME', 'PACE 30000', 'ACK 0']);
    // The client's own waits for company, 200 ms at most (ACK_DELAY_LAZY); nothing else comes here, so an ACK carries it.
    const heardPace = p.link(1).timesOf('server', 'PACE')[0] + p.latency;
    p.runFor(200);
    assert.deepEqual(p.link(1).sentBy('client'), ['EDP', 'HELLO', 'CONFIRM', 'ACK 0', 'PACE 30000', 'ACK 0']);
    assert.deepEqual(p.link(1).timesOf('client', 'PACE'), [heardPace + 200]);
    const from = p.now;
    p.runFor(120_000);
    const beats = (side: 'client' | 'server') =>
      p
        .link(1)
        .timesOf(side, 'ACK')
        .filter((t) => t > from);
    // One heartbeat at the default rate went out before the peer's PACE arrived, then one every 30 s.
    assert.ok(beats('client').length <= 5, `client heartbeats in 120 s: ${beats('client')}`);
    assert.ok(beats('server').length <= 5, `server heartbeats in 120 s: ${beats('server')}`);
    for (const side of ['client', 'server'] as const) {
      const t = beats(side);
      for (let i = 1; i < t.length; i++) assert.equal(t[i] - t[i - 1], 30_000, `${side}: ${t}`);
    }
    assert.deepEqual([p.client.session.state, p.server.session.state], ['open', 'open']);
    assert.deepEqual([p.client.events.take(), p.server.events.take()], [[], []]);
  });

  test("the client's PACE rides with its next data instead of going alone", () => {
    const p = established(both);
    p.runFor(2 * p.latency); // the server's PACE reaches the client
    const sent = p.link(1).sentBy('client').length;
    p.client.write(pattern(10));
    p.runFor(p.latency);
    assert.deepEqual(p.link(1).sentBy('client').slice(sent), ['PACE 30000', 'ACK 0', 'DATA 0+10']);
    assert.equal(p.link(1).timesOf('client', 'PACE')[0], p.link(1).timesOf('client', 'DATA')[0], 'in one transmission');
  });

  test('only the server is watched: the client may beat every 30 s, the server still beats every second for the client', () => {
    const p = established({ watched: { server: true } });
    assert.deepEqual(p.link(1).sentBy('client'), ['EDP', 'HELLO', 'CONFIRM', 'ACK 0'], 'an unwatched client sends no PACE');
    const from = p.now + 2000;
    p.runFor(62_000);
    const count = (side: 'client' | 'server') =>
      p
        .link(1)
        .timesOf(side, 'ACK')
        .filter((t) => t > from).length;
    assert.ok(count('client') <= 2, `client: ${count('client')} heartbeats in 60 s`);
    assert.ok(count('server') >= 59, `server: ${count('server')} heartbeats in 60 s`);
    assert.deepEqual([p.client.session.state, p.server.session.state], ['open', 'open']);
  });

  test('a black hole no kernel reports: user space still finds it, at three path checks (90 s)', () => {
    const p = established(both);
    p.runFor(40_000);
    p.planDials('hang', 'hang');
    p.link(1).blackhole();
    const heard = { ...p.lastHeard };
    p.runUntil(() => p.client.session.state === 'suspended' && p.server.session.state === 'suspended', 200_000);
    assert.equal(p.client.events.at('suspend'), heard.client + 90_000);
    assert.equal(p.server.events.at('suspend'), heard.server + 90_000);
  });

  test('each new link starts at the default rate and is paced again once both PACEs crossed it', () => {
    const p = established(both);
    p.runFor(40_000);
    p.link(1).cut();
    untilResumed(p);
    p.runFor(100);
    assert.deepEqual(p.link(2).sentBy('client'), ['EDP', 'RESUME', 'PROOF', 'PACE 30000', 'ACK 0']);
    assert.deepEqual(p.link(2).sentBy('server').slice(0, 3), ['EDP', 'CHALLENGE', 'PACE 30000']);
    const from = p.now;
    p.runFor(61_000);
    assert.ok(
      p
        .link(2)
        .timesOf('client', 'ACK')
        .filter((t) => t > from).length <= 3,
    );
    assert.ok(
      p
        .link(2)
        .timesOf('server', 'ACK')
        .filter((t) => t > from).length <= 3,
    );
  });

  test('an old server (no PACE): a watched client sends none, beats every heartbeatInterval and gives up at failureTimeout', () => {
    const { p, fake } = establishedWithFake({ watched: { client: true } });
    p.planDials('hang');
    const heard = p.lastHeard.client;
    // The fake server never speaks again: the client's silence limit is failureTimeout, as without a kernel.
    p.runUntil(() => p.client.session.state === 'suspended', 10_000);
    assert.equal(p.client.events.at('suspend'), heard + 5000);
    assert.ok(!fake.received.some((f) => f.startsWith('PACE')), `nothing the server cannot read: ${fake.received}`);
    const beats = p
      .link(1)
      .timesOf('client', 'ACK')
      .filter((t) => t > heard);
    assert.ok(beats.length >= 4, `heartbeats before the suspend: ${beats}`);
    for (let i = 1; i < beats.length; i++) assert.equal(beats[i] - beats[i - 1], 1000, `${beats}`);
  });
});

describe('timers', () => {
  test('failure detection: nothing heard for failureTimeout suspends each side at exactly lastHeard + failureTimeout', () => {
    const p = established({ options: { failureTimeout: 2000 } });
    p.runFor(3000);
    p.planDials('hang', 'hang');
    p.link(1).blackhole();
    const heard = { ...p.lastHeard };
    p.runUntil(() => p.client.session.state === 'suspended' && p.server.session.state === 'suspended');
    assert.equal(p.client.events.at('suspend'), heard.client + 2000);
    assert.equal(p.server.events.at('suspend'), heard.server + 2000);
    assert.equal(p.client.events.of('suspend')[0].reason, 'nothing heard from the peer for 2000 ms');
    assert.deepEqual(p.client.events.take().slice(0, 2), ['close-link #1', 'suspend']);
    assert.deepEqual(p.server.events.take(), ['close-link #1', 'suspend']);
  });

  test('heartbeats: an idle side sends an ACK every heartbeatInterval, and nothing else', () => {
    const p = established({ options: { failureTimeout: 1000, heartbeatInterval: 250 } });
    p.runFor(2000);
    // The client's ACK after WELCOME left at 30; the server's after confirmation at 40.
    assert.deepEqual(p.link(1).timesOf('client', 'ACK'), [30, 280, 530, 780, 1030, 1280, 1530, 1780, 2030]);
    assert.deepEqual(p.link(1).timesOf('server', 'ACK'), [40, 290, 540, 790, 1040, 1290, 1540, 1790, 2040]);
    assert.deepEqual(p.client.events.take(), []);
    assert.equal(p.client.session.state, 'open');
  });

  test('a client keeps no event queue once its connect is told, and makes one again for the next event', () => {
    const p = new Pair();
    const queue = () => (p.client.session as unknown as { events: unknown }).events;
    p.runUntil(() => p.client.events.of('connect').length > 0, 5000);
    assert.equal(queue(), undefined, 'after connect');
    p.server.write('late');
    p.runFor(100);
    assert.equal(p.client.events.of('data').length, 1, 'the next event arrives');
  });

  test('a quiet session drops its send buffer at a heartbeat, and the stream goes on from where it stood, also over a resume', () => {
    const p = established({ options: { failureTimeout: 1000, heartbeatInterval: 250 } });
    const held = (side: typeof p.client) => (side.session as unknown as { sendBuffer: unknown }).sendBuffer !== undefined;
    const first = pattern(5000);
    p.client.write(first);
    p.server.write(first);
    p.runFor(100);
    assert.ok(held(p.client) && held(p.server), 'a buffer while there is data');
    p.runFor(1000); // acknowledged, then a heartbeat or more
    assert.ok(!held(p.client) && !held(p.server), 'none once all is acknowledged and a heartbeat came');
    const second = pattern(7000).subarray(3000);
    p.client.write(second);
    p.server.write(second);
    p.runFor(10);
    p.link(1).cut(); // the resume replays from offsets the new buffers started at
    untilResumed(p);
    p.runFor(500);
    const both = Buffer.concat([first, second]);
    assert.ok(p.server.received.equals(both), 'client to server: every byte once, in order');
    assert.ok(p.client.received.equals(both), 'server to client: every byte once, in order');
    assert.equal(p.client.session.bytesWritten, both.length);
  });

  test('a delayed ACK: less than 64 KiB waits 200 ms (ACK_DELAY_LAZY) for company, more 20 ms (ACK_DELAY)', () => {
    const p = established();
    p.runFor(60);
    let t = p.now;
    p.client.write(pattern(100));
    p.runFor(300);
    assert.deepEqual(p.link(1).timesOf('server', 'ACK 100'), [t + 10 + 200]);
    t = p.now;
    p.client.write(pattern(100 * 1024)); // two frames: the second brings the debt past 64 KiB
    p.runFor(300);
    assert.deepEqual(p.link(1).timesOf('server', `ACK ${100 + 100 * 1024}`), [t + 10 + 20]);
  });

  test('a heartbeat due before the delayed ACK carries it', () => {
    const p = established({ options: { heartbeatInterval: 50 } });
    p.runFor(60);
    const t = p.now;
    p.client.write(pattern(100));
    p.runFor(100);
    const first = p.link(1).timesOf('server', 'ACK 100')[0];
    assert.ok(first <= t + 10 + 50, `acknowledged ${first - t - 10} ms after it arrived`);
  });

  test('an ACK rides along with data and goes first', () => {
    const p = established();
    p.runFor(60);
    p.client.write(pattern(100));
    p.runFor(15); // arrived at +10; its ACK is due at +30
    p.server.write(pattern(50));
    const sent = p.link(1).sentBy('server');
    assert.deepEqual(sent.slice(-2), ['ACK 100', 'DATA 0+50']);
  });

  test('half the receive window unacknowledged is acknowledged at once, less waits for company', () => {
    const p = established({ options: { receiveWindow: 4096 } });
    p.runFor(60);
    const t = p.now;
    p.client.write(pattern(1024));
    p.runFor(15);
    assert.deepEqual(p.link(1).timesOf('server', 'ACK 1024'), [], 'a quarter waits');
    p.client.write(pattern(1024));
    p.runFor(15);
    // The second write arrives 10 ms after it left at t + 15, and is acknowledged at once.
    assert.deepEqual(p.link(1).timesOf('server', 'ACK 2048'), [t + 25]);
  });

  test('idle timeout: timeout fires once after that long without application data, and again after data moves', () => {
    const p = established();
    const t = p.now;
    p.client.setIdleTimeout(500);
    p.runFor(1200);
    assert.deepEqual(
      p.client.events.of('timeout').map((e) => e.at),
      [t + 500],
    );
    p.server.write(pattern(10)); // arrives 10 ms later
    const dataAt = p.now + 10;
    p.runFor(600);
    assert.deepEqual(
      p.client.events.of('timeout').map((e) => e.at),
      [t + 500, dataAt + 500],
    );
  });

  test('suspendLimit: a suspended session fails with ERR_ROCKS_SUSPEND_TIMEOUT at exactly suspendedAt + suspendLimit', () => {
    const p = established({ options: { suspendLimit: 10_000 }, jitter: 0.5 });
    p.planDials(...Array(50).fill('refuse'));
    p.link(1).cut();
    const cutAt = p.now;
    p.runUntil(() => p.client.session.state === 'done' && p.server.session.state === 'done');
    assert.equal(p.client.events.at('error'), cutAt + 10_000);
    assert.equal(p.server.events.at('error'), cutAt + 10_000);
    assert.deepEqual(
      p.client.events.take().filter((e) => !/dial|reconnect|close-link/.test(e)),
      ['suspend', 'error ERR_ROCKS_SUSPEND_TIMEOUT', 'released'],
    );
    assert.deepEqual(p.server.events.take(), ['close-link #1', 'suspend', 'error ERR_ROCKS_SUSPEND_TIMEOUT', 'released']);
    assert.equal(p.core.sessionCount, 0);
  });

  test("a session the server let expire: the client's RESUME hears ERROR(7) and fails with ERR_ROCKS_SUSPEND_TIMEOUT", () => {
    const p = established({ server: { suspendLimit: 1000 }, jitter: 0.5 });
    p.planDials('hang');
    p.link(1).cut();
    p.runUntil(() => p.server.session.state === 'done');
    p.runUntil(() => p.client.session.state === 'done');
    assert.deepEqual(p.client.events.names().slice(-4), ['error ERR_ROCKS_SUSPEND_TIMEOUT', 'close-link #2', 'close-link #3', 'released']);
    assert.deepEqual(p.link(3).sentBy('server'), ['EDP', 'ERROR(7)']);
  });

  test('connectTimeout: a connection not established in time fails with ERR_ROCKS_CONNECT_TIMEOUT at exactly that time', () => {
    const p = new Pair({ client: { connectTimeout: 3000 }, dials: ['hang', 'hang', 'hang'] });
    p.runUntil(() => p.client.session.state === 'done');
    assert.equal(p.now, 3000);
    // The silent first dial does not hold up a second at reconnectDelayMax (2000).
    assert.deepEqual(p.client.events.names(), [
      'dial #1',
      'dial #2',
      'error ERR_ROCKS_CONNECT_TIMEOUT',
      'close-link #1',
      'close-link #2',
      'released',
    ]);
    assert.equal(p.client.events.of('dial')[1].at, 2000);
  });

  test("the first dial refused: the connection fails with the transport's error", () => {
    const p = new Pair({ dials: ['refuse'] });
    p.runUntil(() => p.client.session.state === 'done');
    assert.deepEqual(p.client.events.names(), ['dial #1', 'error ECONNREFUSED', 'released']);
    assert.equal(p.now, 10);
  });

  test('the first dial closed before connecting, with no error given: ERR_ROCKS_CONNECT_FAILED', () => {
    const p = new Pair({ dials: ['drop'] });
    p.runUntil(() => p.client.session.state === 'done');
    assert.deepEqual(p.client.events.names(), ['dial #1', 'error ERR_ROCKS_CONNECT_FAILED', 'released']);
  });

  test('a later dial refused is only a failed attempt', () => {
    const p = established({ jitter: 0.5 });
    p.planDials('refuse', 'refuse');
    p.link(1).cut();
    untilResumed(p);
    assert.deepEqual(
      p.client.events.take().filter((e) => !e.startsWith('reconnect')),
      ['close-link #1', 'suspend', 'dial #2', 'dial #3', 'dial #4', 'link-active #4', 'resume'],
    );
  });
});

// ---- reconnection ---------------------------------------------------------------------

describe('network changes (migrate, PROTOCOL.md §6.8)', () => {
  test('a move over a link that still works: a new link resumes the session, which neither application sees stall', () => {
    const p = established();
    p.client.migrate('the default route changed');
    assert.deepEqual(p.client.events.take(), ['dial #2']);
    p.runUntil(() => p.server.session.activeLink === 2 && p.client.session.activeLink === 2);
    p.runFor(100);
    assert.deepEqual(p.client.events.take(), ['close-link #1', 'link-active #2', 'migrate']);
    assert.equal(p.client.events.of('migrate')[0].reason, 'the default route changed');
    assert.deepEqual(p.server.events.take(), ['close-link #1', 'link-active #2', 'migrate']);
    const up = pattern(5000);
    const down = pattern(7000);
    p.client.write(up);
    p.server.write(down);
    p.runFor(200);
    assert.ok(p.server.received.equals(up) && p.client.received.equals(down));
    assert.deepEqual(p.link(2).sentBy('client').slice(0, 3), ['EDP', 'RESUME', 'PROOF']);
  });

  test('a move finds the server dropped the unconfirmed session: the old link goes too, the new HELLO starts the stream at 0', () => {
    // Seed 1291871450: the old link, black-holed after WELCOME, kept sending
    // for the dead session after the restart, and the new HELLO's early
    // data began where that left off (DATA at 13197, expected 0).
    const p = new Pair({ client: { earlyData: true, handshakeTimeout: 300 }, server: { handshakeTimeout: 300 } });
    p.runUntil(() => p.client.session.state === 'open');
    p.link(1).blackhole(); // CONFIRM and all after it are lost, and nobody is told
    const data = pattern(20_000);
    p.client.write(data);
    p.runFor(1000); // the server dropped the session it never saw confirmed
    assert.deepEqual(p.servers[0].events.names(), ['close-link #1', 'released']);
    p.client.migrate('the default route changed');
    p.runUntil(() => p.servers.length === 2 && p.servers[1].received.length === data.length, 10_000);
    p.runFor(200);
    assert.ok(p.servers[1].received.equals(data), 'every byte once, from 0');
    assert.deepEqual(p.client.events.names().slice(3), [
      'dial #2',
      'close-link #2', // RESUME answered with ERROR(11)
      'close-link #1', // the dead session's link goes with it
      'suspend',
      'reconnect-attempt 1',
      'dial #3',
      'link-active #3',
      'resume',
    ]);
    assert.deepEqual(p.link(3).sentBy('client').slice(0, 3), ['EDP', 'HELLO', 'DATA 0+16384']);
  });

  test('a move off a link that lost bytes (its address vanished): both ends suspend and resume, every byte once', () => {
    const p = established();
    const up = pattern(3000);
    const down = pattern(4000);
    p.link(1).blackhole(); // the old address is gone: nothing on link 1 arrives any more, and nobody is told
    p.client.write(up);
    p.server.write(down);
    p.runFor(50);
    p.client.migrate('address 10.1.1.2 was removed', true);
    p.runUntil(() => p.client.events.of('resume').length === 1 && p.server.events.of('resume').length === 1, 2000);
    p.runFor(200);
    assert.deepEqual(p.client.events.take(), ['dial #2', 'close-link #1', 'suspend', 'link-active #2', 'migrate', 'resume']);
    assert.equal(p.client.events.of('suspend')[0].reason, 'address 10.1.1.2 was removed');
    const resumed = p.client.events.of('resume')[0];
    assert.deepEqual([resumed.replayedOut, resumed.replayedIn], [3000, 4000]);
    assert.ok(resumed.outage < 2 * p.latency * 3, `resumed ${resumed.outage} ms after the change: a round trip and the handshake`);
    assert.deepEqual(p.server.events.take(), ['close-link #1', 'suspend', 'link-active #2', 'migrate', 'resume']);
    assert.ok(p.server.received.equals(up) && p.client.received.equals(down));
  });

  test('the old link acknowledges more after the server wrote its CHALLENGE: the move goes on from what was acknowledged', () => {
    const p = established();
    const a = pattern(1000);
    p.link(1).hold('client');
    p.client.write(a); // in flight on the old link
    p.runFor(1);
    p.client.migrate('the default route changed');
    p.runUntil(() => p.links.has(2));
    p.link(2).hold('server'); // nothing of the new link reaches the client for now
    p.runUntil(() => p.link(2).sentBy('server').includes('CHALLENGE'));
    const challenge = p
      .link(2)
      .framesSentBy('server')
      .find((f) => f.type === FrameType.CHALLENGE);
    assert.equal(challenge?.type === FrameType.CHALLENGE && challenge.received, 0);
    p.link(1).release('client'); // a reaches the server on the old link, which acknowledges it there
    p.runUntil(() => p.client.session.bufferedAmount === 0);
    p.link(2).release('server'); // then the CHALLENGE, which says 0 of our 1000
    p.runUntil(() => p.client.session.activeLink === 2 && p.server.session.activeLink === 2);
    p.runFor(100);
    assert.deepEqual(p.client.events.of('error'), []);
    assert.ok(p.server.received.equals(a), 'every byte once');
    assert.deepEqual(p.client.events.take(), ['dial #2', 'close-link #1', 'link-active #2', 'migrate']);
  });

  test('a new route that leads where the current link goes: the new link closes, the session stays', () => {
    const p = established();
    p.samePath = true;
    p.client.migrate('the default route changed');
    p.runFor(200);
    assert.deepEqual(p.client.events.take(), ['dial #2', 'close-link #2']);
    assert.equal(p.client.session.activeLink, 1);
    assert.deepEqual(p.link(2).sentBy('client'), [], 'not even the EDP announcement went out on it');
    assert.deepEqual(p.server.events.take(), []);
  });

  test('after a stall (verify), the session moves even along the same path', () => {
    const p = established();
    p.samePath = true;
    p.client.migrate('the process did not run for 30000 ms', true);
    p.runUntil(() => p.server.session.activeLink === 2 && p.client.session.activeLink === 2);
  });

  test('a newer change drops the attempt of an older one; a failed attempt leaves the session where it was', () => {
    const p = established();
    p.planDials('hang', 'refuse');
    p.client.migrate('interface eth0 went down', true);
    p.client.migrate('the default route changed');
    p.runFor(200);
    // #2 hung and was dropped for the newer change; #3 was refused (the transport closed itself).
    assert.deepEqual(p.client.events.take(), ['dial #2', 'close-link #2', 'dial #3']);
    assert.match(p.client.session.describe(), /links\[1:active\*\]/);
    assert.equal(p.client.session.state, 'open');
    assert.equal(p.client.session.activeLink, 1);
    p.client.write('still here');
    p.runFor(100);
    assert.equal(p.server.received.toString(), 'still here');
  });

  test('an interface down (its attempt fails), then its route back along the same path: the second change still moves', () => {
    const p = established();
    const up = pattern(2000);
    p.link(1).blackhole(); // down: what the old link sends is lost until the session leaves it
    p.planDials('refuse');
    p.client.migrate('interface eth0 went down', true);
    p.client.write(up);
    p.runFor(50);
    assert.deepEqual(p.client.events.take(), ['dial #2']);
    p.samePath = true; // back up: the new default route leaves from the same address
    p.client.migrate('the default route or the addresses changed');
    p.runUntil(() => p.server.session.activeLink === 3 && p.client.session.activeLink === 3, 1000);
    p.runFor(100);
    assert.ok(p.server.received.equals(up), 'every byte once');
  });

  test('what arrives on a doubted link does not clear the doubt: it may receive and not send', () => {
    const p = established();
    p.link(1).hold('client'); // the interface is back without its route: the client's bytes go nowhere
    p.planDials('refuse');
    p.client.migrate('interface eth0 went up', true);
    p.server.write('arrives');
    p.runFor(50);
    assert.equal(p.client.received.toString(), 'arrives');
    p.samePath = true;
    p.client.migrate('the default route or the addresses changed');
    p.runUntil(() => p.server.session.activeLink === 3 && p.client.session.activeLink === 3, 1000);
  });

  test('once a link took the session, a same-path change no longer doubts it', () => {
    const p = established();
    p.client.migrate('interface eth0 went up', true);
    p.runUntil(() => p.server.session.activeLink === 2 && p.client.session.activeLink === 2);
    p.client.events.take();
    p.samePath = true;
    p.client.migrate('the default route or the addresses changed');
    p.runFor(200);
    assert.deepEqual(p.client.events.take(), ['dial #3', 'close-link #3']);
    assert.equal(p.client.session.activeLink, 2);
  });

  test('suspended: a change makes the next dial start now instead of after the backoff', () => {
    const p = established({ options: { reconnectDelay: 5000, reconnectDelayMax: 5000 }, jitter: 0.5 });
    p.planDials('refuse');
    p.link(1).cut();
    p.runUntil(() => p.client.events.of('reconnect-attempt').length === 1 && p.links.has(2) && !p.client.links.has(2));
    const refused = p.now;
    p.runFor(100);
    assert.equal(p.client.events.of('reconnect-attempt').length, 1, 'the backoff holds the next dial');
    p.client.migrate('dialing at once after a network change');
    p.runUntil(() => p.client.session.state === 'open');
    assert.ok(p.now - refused < 1000, `resumed ${p.now - refused} ms after the refused dial, not after the ${5000} ms backoff`);
  });

  test('no migration before the session exists, or after it ended', () => {
    const p = new Pair({ connect: true });
    p.client.migrate('too early', true);
    p.handshake();
    p.client.end();
    p.server.end();
    p.runUntil(() => p.client.session.state === 'done');
    p.client.migrate('too late', true);
    p.runFor(100);
    assert.deepEqual(
      p.client.events.all.filter((e) => e.type === 'dial' || e.type === 'migrate').map((e) => e.type),
      ['dial'],
      'only the first dial',
    );
  });
});

describe('reconnection', () => {
  test('backoff: the delays double from reconnectDelay up to reconnectDelayMax, jittered over their upper half', () => {
    for (const [jitter, expected] of [
      [0, [0, 50, 100, 200, 400, 800, 1000, 1000]],
      [0.999, [0, 100, 200, 400, 800, 1599, 1999, 1999]],
    ] as const) {
      const p = established({ jitter, options: { reconnectDelay: 100, reconnectDelayMax: 2000 } });
      p.planDials(...Array(7).fill('refuse'));
      p.link(1).cut();
      const cutAt = p.now;
      untilResumed(p);
      const attempts = p.client.events.of('reconnect-attempt');
      assert.deepEqual(
        attempts.map((a) => a.delay),
        expected,
        `jitter ${jitter}`,
      );
      assert.deepEqual(
        attempts.map((a) => a.attempt),
        [1, 2, 3, 4, 5, 6, 7, 8],
      );
      let t = cutAt;
      const dials = p.client.events
        .of('dial')
        .slice(1)
        .map((d) => d.at);
      assert.deepEqual(
        dials,
        expected.map((d) => (t += d)),
        `dial times with jitter ${jitter}`,
      );
    }
  });

  // §6.5 also says a successful resume resets `attempts`; every later dial follows a new
  // suspension, which resets it too, so that reset cannot be seen on its own.
  test('each suspension starts the backoff over', () => {
    const p = established({ jitter: 0 });
    p.planDials('refuse', 'refuse');
    p.link(1).cut();
    untilResumed(p);
    p.runFor(100);
    p.activeLink.cut();
    untilResumed(p);
    const delays = p.client.events.of('reconnect-attempt').map((a) => `${a.attempt}:${a.delay}`);
    assert.deepEqual(delays, ['1:0', '2:50', '3:100', '1:0']);
  });

  test('a silent attempt does not hold up a fresh one: the second dial starts reconnectDelayMax after the first', () => {
    const p = established({ jitter: 0.5, options: { reconnectDelayMax: 2000, handshakeTimeout: 5000 } });
    p.planDials('silent');
    p.link(1).cut();
    const cutAt = p.now;
    untilResumed(p);
    assert.deepEqual(p.client.events.take(), [
      'close-link #1',
      'suspend',
      'reconnect-attempt 1',
      'dial #2',
      'reconnect-attempt 2',
      'dial #3',
      'close-link #2',
      'link-active #3',
      'resume',
    ]);
    assert.equal(p.client.events.of('dial')[2].at, cutAt + 2000);
  });

  test('a pending move holds up the first dial after a failure as any silent attempt: until reconnectDelayMax after its dial', () => {
    const p = established({ jitter: 0.5, options: { reconnectDelayMax: 2000, handshakeTimeout: 5000 } });
    p.runFor(3000); // the last reconnect-schedule dial (the first link's) is long past
    p.planDials('silent');
    p.client.migrate('the default route changed');
    const movedAt = p.now;
    p.runFor(500);
    p.link(1).cut();
    untilResumed(p);
    // The move's dial, then the reconnect dial: not at the cut, but reconnectDelayMax after the move's.
    assert.deepEqual(
      p.client.events
        .of('dial')
        .slice(1)
        .map((d) => d.at - movedAt),
      [0, 2000],
    );
  });

  test('at most two attempts at once: a third waits until one of two silent attempts times out', () => {
    const p = established({ jitter: 0.5, options: { reconnectDelayMax: 2000, handshakeTimeout: 5000 } });
    p.planDials('silent', 'silent');
    p.link(1).cut();
    const cutAt = p.now;
    untilResumed(p);
    const dials = p.client.events
      .of('dial')
      .slice(1)
      .map((d) => d.at - cutAt);
    assert.deepEqual(dials, [0, 2000, 5000]);
    assert.deepEqual(
      p.client.events.of('close-link').map((c) => `#${c.link}@${c.at - cutAt}`),
      ['#1@0', '#2@5000', '#3@5030'],
    );
  });

  test('an attempt that has heard from the server is given its whole handshakeTimeout', () => {
    const p = established({ jitter: 0.5, options: { reconnectDelayMax: 2000, handshakeTimeout: 5000 } });
    const slow = fakeServer();
    p.planDials(slow);
    p.link(1).cut();
    const cutAt = p.now;
    p.runUntil(() => slow.received.length > 0);
    slow.send(SERVER_ANNOUNCEMENT); // and then nothing
    untilResumed(p);
    const dials = p.client.events
      .of('dial')
      .slice(1)
      .map((d) => d.at - cutAt);
    assert.deepEqual(dials, [0, 5000]);
    assert.deepEqual(slow.closedBy, { graceful: false, reason: 'ECONNRESET' });
  });
});

// ---- closing ---------------------------------------------------------------------------

describe('closing', () => {
  test('FIN one way: the server sees end, the client sees fin-acked, and both stay open', () => {
    const p = established();
    p.client.write('abc');
    p.client.end();
    const t = p.now;
    p.runFor(100);
    assert.deepEqual(p.client.events.take(), ['fin-acked']);
    assert.deepEqual(p.server.events.take(), ['end']);
    assert.deepEqual(p.link(1).sentBy('client').slice(-2), ['DATA 0+3', 'FIN 3']);
    assert.deepEqual(p.link(1).timesOf('server', 'ACK 4'), [t + 10], 'a FIN is acknowledged at once');
    assert.equal(p.client.events.at('fin-acked'), t + 20);
    p.server.write('still here');
    p.runFor(50);
    assert.equal(p.client.received.toString(), 'still here');
    assert.deepEqual([p.client.session.state, p.server.session.state], ['open', 'open']);
  });

  test('FIN both ways: the finished server sends ACK and CLOSE, the client answers CLOSE_ACK, both release', () => {
    const p = established();
    p.client.write('abc');
    p.client.end();
    p.runFor(50);
    p.server.write('xy');
    p.server.end();
    p.runUntil(() => p.client.session.state === 'done' && p.server.session.state === 'done');
    assert.deepEqual(p.client.events.take(), ['fin-acked', 'end', 'close-link #1 graceful', 'closed', 'released']);
    assert.deepEqual(p.server.events.take(), ['end', 'fin-acked', 'closed', 'close-link #1 graceful', 'released']);
    assert.deepEqual(p.link(1).sentBy('server').slice(-4), ['DATA 0+2', 'FIN 2', 'ACK 4', 'CLOSE']);
    assert.deepEqual(p.link(1).sentBy('client').slice(-2), ['ACK 3', 'CLOSE_ACK']);
    assert.equal(p.client.received.toString(), 'xy');
    assert.equal(p.server.received.toString(), 'abc');
    assert.equal(p.core.sessionCount, 0);
    // The server remembers the clean ending.
    assert.deepEqual(rawResume(p, p.client.session.sessionId!).received, ['EDP', 'ERROR(12)']);
  });

  test('FINs that cross: both sides finish and the close completes the same way', () => {
    const p = established();
    p.client.end();
    p.server.end();
    p.runUntil(() => p.client.session.state === 'done' && p.server.session.state === 'done');
    assert.deepEqual(p.client.events.take(), ['end', 'fin-acked', 'close-link #1 graceful', 'closed', 'released']);
    assert.deepEqual(p.server.events.take(), ['end', 'fin-acked', 'closed', 'close-link #1 graceful', 'released']);
  });

  test('link cut after the FIN arrived, before its ACK: the resume acknowledges the FIN', () => {
    const p = established();
    p.link(1).hold('server');
    p.client.end();
    p.runFor(15); // the FIN arrived at +10, its ACK is held
    assert.deepEqual(p.server.events.take(), ['end']);
    p.link(1).cut();
    untilResumed(p);
    assert.deepEqual(p.client.events.take(), ['close-link #1', 'suspend', 'reconnect-attempt 1', 'dial #2', 'link-active #2', 'resume', 'fin-acked']);
    assert.deepEqual(p.server.events.take(), ['close-link #1', 'suspend', 'link-active #2', 'resume']);
    assert.equal(p.client.events.of('resume')[0].replayedOut, 0);
    assert.ok(!p.link(2).sentBy('client').includes('FIN 0'), 'the FIN is not sent again');
  });

  test('FIN lost in a cut: the client sends it again after the resume, and the server sees end once', () => {
    const p = established();
    p.client.end();
    p.runFor(5);
    p.link(1).cut();
    untilResumed(p);
    p.runFor(50);
    assert.equal(p.client.events.of('resume')[0].replayedOut, 1, 'the FIN is one unit');
    assert.ok(p.link(2).sentBy('client').includes('FIN 0'));
    assert.deepEqual(
      p.server.events.names().filter((e) => e === 'end'),
      ['end'],
    );
    assert.deepEqual(p.client.events.take().slice(-1), ['fin-acked']);
  });

  test("cut while the server's FIN is in flight: the resume replays it and the close completes", () => {
    const p = established();
    p.client.end();
    p.runFor(50);
    p.server.write('last');
    p.server.end();
    p.runFor(5);
    p.link(1).cut();
    p.runUntil(() => p.client.session.state === 'done' && p.server.session.state === 'done');
    assert.deepEqual(p.client.events.take(), [
      'fin-acked',
      'close-link #1',
      'suspend',
      'reconnect-attempt 1',
      'dial #2',
      'link-active #2',
      'resume',
      'end',
      'close-link #2 graceful',
      'closed',
      'released',
    ]);
    assert.equal(p.client.received.toString(), 'last');
    assert.deepEqual(p.server.events.take(), [
      'end',
      'close-link #1',
      'suspend',
      'link-active #2',
      'resume',
      'fin-acked',
      'closed',
      'close-link #2 graceful',
      'released',
    ]);
  });

  test('cut after CLOSE, before CLOSE_ACK: the client resumes and the server sends ACK and CLOSE again', () => {
    const p = established();
    p.client.end();
    p.server.end();
    p.runUntil(() => p.server.events.of('closed').length === 1);
    p.link(1).cut(); // CLOSE is lost
    p.runUntil(() => p.client.session.state === 'done' && p.server.session.state === 'done');
    assert.deepEqual(p.client.events.take(), [
      'end',
      'fin-acked',
      'close-link #1',
      'suspend',
      'reconnect-attempt 1',
      'dial #2',
      'link-active #2',
      'resume',
      'close-link #2 graceful',
      'closed',
      'released',
    ]);
    assert.deepEqual(p.server.events.take(), [
      'end',
      'fin-acked',
      'closed',
      'close-link #1',
      'suspend',
      'link-active #2',
      'resume',
      'close-link #2 graceful',
      'released',
    ]);
    // The ACK every newly active link starts with, then the ACK that goes with CLOSE.
    assert.deepEqual(p.link(2).sentBy('server'), ['EDP', 'CHALLENGE', 'PACE 0', 'ACK 1', 'ACK 1', 'CLOSE']);
    assert.deepEqual(p.link(2).sentBy('client'), ['EDP', 'RESUME', 'PROOF', 'ACK 1', 'CLOSE_ACK']);
  });

  test('closeLinger: a finished client that never gets CLOSE reports closed, with no error, closeLinger after it finished', () => {
    const p = established({ client: { closeLinger: 500 }, server: { closeLinger: 800 } });
    p.client.end();
    p.runFor(50);
    p.server.end();
    p.runUntil(() => p.client.events.of('end').length === 1); // the client is finished now
    const finishedAt = p.now;
    p.link(1).hold('server'); // ACK + CLOSE never arrive
    p.runUntil(() => p.client.session.state === 'done' && p.server.session.state === 'done');
    assert.deepEqual(p.client.events.take(), ['fin-acked', 'end', 'closed', 'close-link #1', 'released']);
    assert.equal(p.client.events.at('closed'), finishedAt + 500);
    // The server finished when the client's ACK arrived; it releases closeLinger later, as a clean close.
    assert.deepEqual(p.server.events.take(), ['end', 'fin-acked', 'closed', 'close-link #1', 'suspend', 'released']);
    assert.equal(p.server.events.at('closed'), finishedAt + 10);
    assert.equal(p.server.events.at('released'), finishedAt + 10 + 800);
    assert.deepEqual(rawResume(p, p.client.session.sessionId!).received, ['EDP', 'ERROR(12)']);
  });

  test('closeLinger: a server that never gets CLOSE_ACK releases closeLinger after CLOSE, with no error', () => {
    const p = established({ options: { closeLinger: 1000 } });
    p.client.end();
    p.server.end();
    p.runUntil(() => p.server.events.of('closed').length === 1);
    const closedAt = p.now;
    p.link(1).hold('client'); // CLOSE_ACK (and the end of the link) never arrive
    p.runUntil(() => p.server.session.state === 'done');
    assert.equal(p.now, closedAt + 1000);
    assert.deepEqual(p.server.events.take(), ['end', 'fin-acked', 'closed', 'close-link #1', 'released']);
    assert.deepEqual(p.client.events.names().slice(-3), ['close-link #1 graceful', 'closed', 'released']);
    assert.deepEqual(rawResume(p, p.client.session.sessionId!).received, ['EDP', 'ERROR(12)']);
  });

  test("a client whose FIN's acknowledgement was lost hears ERROR(12) on its RESUME after the server let go, and completes its close", () => {
    const p = established({ options: { closeLinger: 1000, reconnectDelay: 100 }, jitter: 0 });
    p.server.end();
    p.runFor(50); // the client holds the server's FIN; the server's FIN is acknowledged
    p.link(1).hold('server');
    p.client.end();
    p.runFor(15); // the server is finished and sent ACK + CLOSE, held
    assert.equal(p.server.events.of('closed').length, 1);
    p.planDials(...Array(5).fill('refuse')); // unreachable until the server has let go (dial 6 at +1550 ms)
    p.link(1).cut();
    p.runUntil(() => p.client.session.state === 'done');
    assert.ok(p.server.events.at('released') < p.client.events.at('closed'));
    assert.deepEqual(
      p.client.events.take().filter((e) => !/dial|reconnect/.test(e)),
      ['end', 'close-link #1', 'suspend', 'close-link #7', 'fin-acked', 'closed', 'released'],
    );
    assert.deepEqual(p.link(7).sentBy('server'), ['EDP', 'ERROR(12)']);
  });
});

// ---- errors: what the server refuses before a link belongs to a session --------------------

describe('errors: a new link at the server', () => {
  const serverOnly = (opts: PairOptions = {}) => new Pair({ ...opts, connect: false });

  test('a first frame other than HELLO or RESUME is refused with ERROR(1)', () => {
    const p = serverOnly();
    const raw = p.rawClient();
    raw.send(CLIENT_ANNOUNCEMENT, encodeAck(0, 0));
    p.runFor(50);
    assert.deepEqual(raw.received, ['EDP', 'ERROR(1)']);
    assert.equal(raw.closedBy?.graceful, true);
    assert.deepEqual(p.coreNames(), ['rejected #1000 ERR_ROCKS_PROTOCOL', 'close-link #1000']);
  });

  test('a malformed first frame is refused with ERROR(1)', () => {
    const p = serverOnly();
    const raw = p.rawClient();
    raw.send(CLIENT_ANNOUNCEMENT, Buffer.from([0x7f, 0, 0, 0, 0]));
    p.runFor(50);
    assert.deepEqual(raw.received, ['EDP', 'ERROR(1)']);
    assert.deepEqual(p.coreNames(), ['rejected #1000 ERR_ROCKS_PROTOCOL', 'close-link #1000']);
  });

  test('a malformed EDP announcement is refused without an ERROR frame', () => {
    const p = serverOnly();
    const raw = p.rawClient();
    raw.send(Buffer.concat([CLIENT_ANNOUNCEMENT.subarray(0, 8), Buffer.from([9, 1])])); // EDP format version 9
    p.runFor(50);
    assert.deepEqual(raw.received, []);
    assert.equal(raw.closedBy?.graceful, true);
    assert.deepEqual(p.coreNames(), ['rejected #1000 ERR_ROCKS_PROTOCOL', 'close-link #1000']);
  });

  test('an announcement with no rocks version in common gets our announcement and the link is closed', () => {
    const p = serverOnly();
    const raw = p.rawClient();
    raw.send(encodeAnnouncement([{ ...ROCKS, minVersion: 2, maxVersion: 3 }]), rawHello().frame);
    p.runFor(50);
    assert.deepEqual(raw.received, ['EDP']);
    assert.equal(raw.closedBy?.graceful, true);
    assert.equal(p.core.sessionCount, 0);
  });

  test('HELLO with no protocol version in common: ERROR(2)', () => {
    const p = serverOnly();
    const raw = p.rawClient();
    raw.send(CLIENT_ANNOUNCEMENT, encodeHello(2, 3, rawHello().keys.publicKey, 4096));
    p.runFor(50);
    assert.deepEqual(raw.received, ['EDP', 'ERROR(2)']);
    assert.deepEqual(p.coreNames(), ['rejected #1000 ERR_ROCKS_VERSION', 'close-link #1000']);
  });

  test('RESUME of an unsupported version: ERROR(2)', () => {
    const p = serverOnly();
    const raw = p.rawClient();
    raw.send(CLIENT_ANNOUNCEMENT, encodeResume(2, Buffer.alloc(SESSION_ID_SIZE), Buffer.alloc(NONCE_SIZE), p.core.instance));
    p.runFor(50);
    assert.deepEqual(raw.received, ['EDP', 'ERROR(2)']);
  });

  test('HELLO with a low-order X25519 key: ERROR(1) and no session', () => {
    const p = serverOnly();
    const raw = p.rawClient();
    raw.send(CLIENT_ANNOUNCEMENT, encodeHello(1, 1, Buffer.alloc(KEY_SIZE), 4096));
    p.runFor(50);
    assert.deepEqual(raw.received, ['EDP', 'ERROR(1)']);
    assert.equal(p.core.sessionCount, 0);
  });

  test('HELLO at maxSessions: ERROR(5), the existing session untouched', () => {
    const p = established({ limits: { maxSessions: 1 } });
    const raw = p.rawClient();
    raw.send(CLIENT_ANNOUNCEMENT, rawHello().frame);
    p.runFor(50);
    assert.deepEqual(raw.received, ['EDP', 'ERROR(5)']);
    assert.deepEqual(p.coreNames(), ['session #1', 'rejected #1000 ERR_ROCKS_SERVER_BUSY', 'close-link #1000']);
    assert.equal(p.server.session.state, 'open');
  });

  test('HELLO while the buffer budget is exhausted: welcomed, with a window of its guaranteed share (16 KiB)', () => {
    const p = established({ limits: { maxBufferedBytes: 64 * 1024 } });
    p.client.write(pattern(100_000)); // the server application reads none of it
    p.runFor(200);
    assert.ok(p.core.bufferedBytes >= 64 * 1024, `${p.core.bufferedBytes} buffered`);
    const raw = p.rawClient();
    raw.send(CLIENT_ANNOUNCEMENT, rawHello().frame);
    p.runFor(50);
    assert.deepEqual(raw.received, ['EDP', 'WELCOME']);
    assert.equal(raw.last(FrameType.WELCOME).window, 16 * 1024);
  });

  test('held to its guaranteed share, an echo keeps moving: acknowledged output reopens its window at once', () => {
    // Heartbeats a minute apart: a window that reopened only with a heartbeat would crawl.
    const budget = 32 * 1024;
    const p = established({ limits: { maxBufferedBytes: budget }, options: { failureTimeout: 300_000 }, server: { receiveWindow: budget } });
    const echo = p.servers[0];
    const pin = rawSession(p, 0); // a stranger that takes nothing; its application reads nothing
    pin.raw.send(encodeDataHeader(0, budget), Buffer.alloc(budget));
    p.runFor(50);
    assert.ok(p.core.bufferedBytes >= budget, `${p.core.bufferedBytes} buffered`);
    const data = pattern(256 * 1024);
    const start = p.now;
    p.client.write(data);
    let echoed = 0;
    p.runUntil(() => {
      const got = echo.received.length;
      if (got > echoed) {
        echo.write(echo.received.subarray(echoed));
        echo.read();
        echoed = got;
      }
      return p.client.received.length === data.length;
    }, 20_000);
    console.log(`256 KiB echoed through a 16 KiB share in ${p.now - start} ms of simulated time (10 ms latency)`);
    assert.deepEqual(p.client.received, data);
    assert.ok(p.core.bufferedBytes >= budget, 'the stranger still pinned the budget');
  });

  test('RESUME naming another run of the server: ERROR(3)', () => {
    const p = serverOnly();
    const raw = rawResume(p, Buffer.alloc(SESSION_ID_SIZE, 1), Buffer.alloc(INSTANCE_SIZE, 0xee));
    assert.deepEqual(raw.received, ['EDP', 'ERROR(3)']);
    assert.deepEqual(p.coreNames(), ['rejected #1000 ERR_ROCKS_UNKNOWN_SESSION', 'close-link #1000']);
  });

  test('RESUME naming a session this run never confirmed: ERROR(11)', () => {
    const p = serverOnly();
    const raw = rawResume(p, Buffer.alloc(SESSION_ID_SIZE, 1));
    assert.deepEqual(raw.received, ['EDP', 'ERROR(11)']);
  });

  test('HANDSHAKE_TIMEOUT: a link silent after its announcement gets ERROR(9) handshakeTimeout after it', () => {
    const p = serverOnly({ server: { handshakeTimeout: 700 } });
    const raw = p.rawClient();
    raw.send(CLIENT_ANNOUNCEMENT); // arrives at 10
    p.runFor(1000);
    assert.deepEqual(raw.received, ['EDP', 'ERROR(9)']);
    assert.deepEqual(
      p.coreEvents.filter((e) => e.type === 'rejected').map((e) => e.at),
      [10 + 700],
    );
  });

  test('a link that ends after its announcement, before HELLO, is refused with ERROR(9)', () => {
    const p = serverOnly();
    const raw = p.rawClient();
    raw.send(CLIENT_ANNOUNCEMENT);
    raw.close();
    p.runFor(50);
    assert.deepEqual(p.coreNames(), ['rejected #1000 ERR_ROCKS_HANDSHAKE_TIMEOUT', 'close-link #1000']);
    assert.deepEqual(p.link(1000).sentBy('server'), ['EDP', 'ERROR(9)']);
  });

  test('a link silent from its first byte is an ordinary client after detectTimeout, served plain', () => {
    const p = serverOnly({ limits: { detectTimeout: 300 } });
    p.rawClient();
    p.runFor(1000);
    assert.deepEqual(p.coreNames(), ['plain #1000']);
    assert.equal(p.coreEvents[0].at, 10 + 300);
  });
});

// ---- errors: a server session ------------------------------------------------------------

describe('errors: a server session', () => {
  test('an unconfirmed session told ERROR by its client is dropped silently', () => {
    const p = new Pair({ connect: false });
    const raw = p.rawClient();
    raw.send(CLIENT_ANNOUNCEMENT, rawHello().frame);
    p.runUntil(() => raw.frames.some((f) => f.type === FrameType.WELCOME));
    raw.send(encodeError(wire('ERR_ROCKS_PEER_ABORTED'), 'never mind'));
    p.runFor(50);
    assert.deepEqual(p.server.events.names(), ['close-link #1000', 'released']);
    assert.deepEqual(raw.received, ['EDP', 'WELCOME']);
    assert.equal(p.core.sessionCount, 0);
    // No ending is kept for a session never confirmed.
    assert.deepEqual(rawResume(p, raw.last(FrameType.WELCOME).sessionId).received, ['EDP', 'ERROR(11)']);
  });

  test('an unconfirmed session whose first frame is not DATA, ACK or FIN: ERROR(1), dropped unseen', () => {
    const p = new Pair({ connect: false });
    const raw = p.rawClient();
    raw.send(CLIENT_ANNOUNCEMENT, rawHello().frame);
    p.runUntil(() => raw.frames.some((f) => f.type === FrameType.WELCOME));
    raw.send(encodeClose());
    p.runFor(50);
    assert.deepEqual(raw.received, ['EDP', 'WELCOME', 'ERROR(1)']);
    assert.deepEqual(p.server.events.names(), ['close-link #1000 graceful', 'released']);
  });

  const sessionFrameErrors: [string, () => Buffer[], RocksErrorCode][] = [
    // A new session's first window is never below EARLY_DATA_BYTES (§3.8).
    [
      'DATA beyond the advertised window',
      () => [encodeDataHeader(0, EARLY_DATA_BYTES + 1), Buffer.alloc(EARLY_DATA_BYTES + 1)],
      'ERR_ROCKS_FLOW_CONTROL',
    ],
    ['DATA leaving a gap', () => [encodeDataHeader(5, 1), Buffer.alloc(1)], 'ERR_ROCKS_PROTOCOL'],
    ['DATA after FIN', () => [encodeFin(0), encodeDataHeader(0, 1), Buffer.alloc(1)], 'ERR_ROCKS_PROTOCOL'],
    ['an ACK of more than was sent', () => [encodeAck(1, 1 << 20)], 'ERR_ROCKS_PROTOCOL'],
    ['a FIN at the wrong offset', () => [encodeFin(3)], 'ERR_ROCKS_PROTOCOL'],
    ['CLOSE (only a server sends it)', () => [encodeClose()], 'ERR_ROCKS_PROTOCOL'],
    ['CLOSE_ACK without CLOSE', () => [encodeCloseAck()], 'ERR_ROCKS_PROTOCOL'],
    ['a handshake frame on the open session', () => [rawHello().frame], 'ERR_ROCKS_PROTOCOL'],
    ['an unknown frame type', () => [Buffer.from([0x7f, 0, 0, 0, 0])], 'ERR_ROCKS_PROTOCOL'],
  ];
  for (const [what, frames, code] of sessionFrameErrors) {
    test(`${what}: the server sends ERROR(${wire(code)}), its application sees ${code}, a later RESUME hears ERROR(${wire(code)})`, () => {
      const p = new Pair({ connect: false, server: { receiveWindow: 1024 } });
      const s = rawSession(p);
      assert.deepEqual(p.server.events.take(), ['link-active #1000', 'open']);
      s.raw.send(...frames());
      p.runFor(50);
      assert.deepEqual(s.raw.received.slice(-1), [`ERROR(${wire(code)})`]);
      assert.equal(s.raw.closedBy?.graceful, true);
      assert.deepEqual(
        p.server.events.take().filter((e) => e !== 'end'),
        ['close-link #1000 graceful', `error ${code}`, 'released'],
      );
      assert.deepEqual(rawResume(p, s.sessionId).received, ['EDP', `ERROR(${wire(code)})`]);
    });
  }

  test('ERROR from the client on the open session: the application sees its code, nothing is sent back, the ending is PEER_ABORTED', () => {
    const p = new Pair({ connect: false });
    const s = rawSession(p);
    s.raw.send(encodeError(wire('ERR_ROCKS_FLOW_CONTROL'), 'you sent too much'));
    p.runFor(50);
    assert.deepEqual(p.server.events.names(), ['link-active #1000', 'open', 'close-link #1000', 'error ERR_ROCKS_FLOW_CONTROL', 'released']);
    assert.deepEqual(s.raw.received, ['EDP', 'WELCOME', 'ACK 0']);
    assert.deepEqual(rawResume(p, s.sessionId).received, ['EDP', 'ERROR(6)']);
  });

  /** A raw client's session, cut, then resumed with a correctly signed PROOF that claims `received` of the server's units. */
  function resumeWithProof(p: Pair, received: number) {
    const s = rawSession(p);
    s.raw.close(false);
    p.runFor(50);
    const raw = rawResume(p, s.sessionId, s.instance, Buffer.alloc(NONCE_SIZE, 4));
    const challenge = raw.last(FrameType.CHALLENGE);
    const t = { version: 1, sessionId: s.sessionId, clientNonce: Buffer.alloc(NONCE_SIZE, 4), serverNonce: challenge.nonce, received, sent: 0 };
    raw.send(encodeProof(received, 0, resumeMac(s.key, 'client', t)));
    p.runFor(50);
    return raw;
  }

  test('a valid PROOF claiming more than the server sent: ERROR(1), the session fails with ERR_ROCKS_PROTOCOL', () => {
    const p = new Pair({ connect: false });
    const raw = resumeWithProof(p, 7);
    assert.deepEqual(raw.received, ['EDP', 'CHALLENGE', 'ERROR(1)']);
    assert.deepEqual(p.server.events.take().slice(-3), ['close-link #1001 graceful', 'error ERR_ROCKS_PROTOCOL', 'released']);
  });

  test('a valid PROOF from a raw client resumes its session (the check above is the only difference)', () => {
    const p = new Pair({ connect: false });
    const raw = resumeWithProof(p, 0);
    assert.deepEqual(raw.received, ['EDP', 'CHALLENGE', 'ACK 0']);
    assert.deepEqual(p.server.events.take().slice(-3), ['suspend', 'link-active #1001', 'resume']);
  });

  test("EVICTED: past maxSuspendedSessions the suspended session is failed, and the client's RESUME hears ERROR(10)", () => {
    const p = established({ limits: { maxSuspendedSessions: 0 } });
    p.link(1).cut();
    p.runUntil(() => p.client.session.state === 'done');
    assert.deepEqual(p.server.events.take(), ['close-link #1', 'suspend', 'error ERR_ROCKS_EVICTED', 'released']);
    assert.deepEqual(p.link(2).sentBy('server'), ['EDP', 'ERROR(10)']);
    assert.deepEqual(
      p.client.events.take().filter((e) => !/dial|reconnect|close-link/.test(e)),
      ['suspend', 'error ERR_ROCKS_EVICTED', 'released'],
    );
  });

  test('the server application aborts: the client gets ERROR(6) and fails with ERR_ROCKS_PEER_ABORTED', () => {
    const p = established();
    p.server.abort('bye');
    p.runFor(50);
    assert.deepEqual(p.server.events.take(), ['close-link #1 graceful', 'released']);
    assert.deepEqual(p.link(1).sentBy('server').slice(-1), ['ERROR(6)']);
    assert.deepEqual(p.client.events.take(), ['close-link #1', 'error ERR_ROCKS_PEER_ABORTED', 'released']);
    assert.match(p.client.events.of('error')[0].error.message, /bye/);
  });

  test("the server application aborts a suspended session: nothing is sent, the client's RESUME hears ERROR(6)", () => {
    const p = established();
    p.link(1).cut(['server']);
    p.runFor(1);
    p.server.abort();
    p.link(1).cut();
    p.runUntil(() => p.client.session.state === 'done');
    assert.deepEqual(p.server.events.take(), ['close-link #1', 'suspend', 'released']);
    assert.deepEqual(p.link(2).sentBy('server'), ['EDP', 'ERROR(6)']);
    assert.deepEqual(p.client.events.names().slice(-3), ['error ERR_ROCKS_PEER_ABORTED', 'close-link #2', 'released']);
  });

  test('the client application aborts: the server gets ERROR(6) and its application sees ERR_ROCKS_PEER_ABORTED', () => {
    const p = established();
    p.client.abort();
    p.runFor(50);
    assert.deepEqual(p.client.events.take(), ['close-link #1 graceful', 'released']);
    assert.deepEqual(p.link(1).sentBy('client').slice(-1), ['ERROR(6)']);
    assert.deepEqual(p.server.events.take(), ['close-link #1', 'error ERR_ROCKS_PEER_ABORTED', 'released']);
  });

  test('the client application aborts while suspended: nothing is sent, the server waits for its suspendLimit', () => {
    const p = established({ server: { suspendLimit: 5000 } });
    p.link(1).cut();
    const cutAt = p.now;
    p.client.abort();
    p.runUntil(() => p.server.session.state === 'done');
    assert.deepEqual(p.client.events.take(), ['close-link #1', 'suspend', 'released']);
    assert.equal(p.now, cutAt + 5000);
    assert.deepEqual(p.server.events.take(), ['close-link #1', 'suspend', 'error ERR_ROCKS_SUSPEND_TIMEOUT', 'released']);
  });
});

// ---- errors: the client -----------------------------------------------------------------

describe('errors: the client', () => {
  test('a server that answers without an announcement: ERR_ROCKS_NOT_ENHANCED', () => {
    const fake = fakeServer();
    const p = new Pair({ dials: [fake] });
    p.runUntil(() => fake.received.length > 0);
    fake.send(Buffer.from('SSH-2.0-OpenSSH_9.2\r\n'));
    p.runFor(50);
    assert.deepEqual(p.client.events.names(), ['dial #1', 'error ERR_ROCKS_NOT_ENHANCED', 'close-link #1', 'released']);
  });

  test('an established session meeting a server without an announcement: only that attempt fails', () => {
    const p = established({ jitter: 0.5 });
    const plain = fakeServer();
    p.planDials(plain);
    p.link(1).cut();
    p.runUntil(() => plain.received.length > 0);
    plain.send(Buffer.from('HTTP/1.1 400 Bad Request\r\n\r\n'));
    untilResumed(p);
    assert.deepEqual(
      p.client.events.take().filter((e) => !e.startsWith('reconnect')),
      ['close-link #1', 'suspend', 'dial #2', 'close-link #2', 'dial #3', 'link-active #3', 'resume'],
    );
  });

  test('a server announcement with no rocks version in common: ERR_ROCKS_VERSION', () => {
    const fake = fakeServer();
    const p = new Pair({ dials: [fake] });
    p.runUntil(() => fake.received.length > 0);
    fake.send(encodeAnnouncement([{ ...ROCKS, minVersion: 2, maxVersion: 2 }]));
    p.runFor(50);
    assert.deepEqual(p.client.events.names(), ['dial #1', 'error ERR_ROCKS_VERSION', 'close-link #1', 'released']);
  });

  test('WELCOME with a version the client does not speak: the client sends ERROR(2) and fails with ERR_ROCKS_VERSION', () => {
    const fake = fakeServer();
    const p = new Pair({ dials: [fake] });
    fakeWelcome(p, fake, 1 << 20, 2);
    p.runFor(50);
    assert.deepEqual(fake.received.slice(-1), ['ERROR(2)']);
    assert.deepEqual(p.client.events.names(), ['dial #1', 'close-link #1 graceful', 'error ERR_ROCKS_VERSION', 'released']);
  });

  test('a frame other than WELCOME in reply to HELLO: the client sends ERROR(1) and fails with ERR_ROCKS_PROTOCOL', () => {
    const fake = fakeServer();
    const p = new Pair({ dials: [fake] });
    p.runUntil(() => fake.received.length > 0);
    fake.send(SERVER_ANNOUNCEMENT, encodeAck(0, 0));
    p.runFor(50);
    assert.deepEqual(fake.received.slice(-1), ['ERROR(1)']);
    assert.deepEqual(p.client.events.names(), ['dial #1', 'close-link #1 graceful', 'error ERR_ROCKS_PROTOCOL', 'released']);
  });

  test('WELCOME with a low-order X25519 key: the client sends ERROR(1) and fails with ERR_ROCKS_PROTOCOL', () => {
    const fake = fakeServer();
    const p = new Pair({ dials: [fake] });
    p.runUntil(() => fake.received.length > 0);
    fake.send(SERVER_ANNOUNCEMENT, encodeWelcome(1, Buffer.alloc(SESSION_ID_SIZE, 1), Buffer.alloc(KEY_SIZE), 4096, Buffer.alloc(INSTANCE_SIZE)));
    p.runFor(50);
    assert.deepEqual(fake.received.slice(-1), ['ERROR(1)']);
    assert.deepEqual(p.client.events.names(), ['dial #1', 'close-link #1 graceful', 'error ERR_ROCKS_PROTOCOL', 'released']);
  });

  test('HELLO answered with ERROR(9) HANDSHAKE_TIMEOUT: the client dials again', () => {
    const fake = fakeServer();
    const p = new Pair({ dials: [fake], jitter: 0.5 });
    p.runUntil(() => fake.received.length > 0);
    fake.send(SERVER_ANNOUNCEMENT, encodeError(wire('ERR_ROCKS_HANDSHAKE_TIMEOUT'), 'slow'));
    p.handshake();
    assert.deepEqual(p.client.events.names(), ['dial #1', 'close-link #1', 'reconnect-attempt 2', 'dial #2', 'link-active #2', 'connect']);
  });

  for (const code of ['ERR_ROCKS_PROTOCOL', 'ERR_ROCKS_VERSION', 'ERR_ROCKS_SERVER_BUSY'] as const) {
    test(`HELLO answered with ERROR(${wire(code)}): the connection fails with ${code}`, () => {
      const fake = fakeServer();
      const p = new Pair({ dials: [fake] });
      p.runUntil(() => fake.received.length > 0);
      fake.send(SERVER_ANNOUNCEMENT, encodeError(wire(code), 'no'));
      p.runFor(50);
      assert.deepEqual(p.client.events.names(), ['dial #1', `error ${code}`, 'close-link #1', 'released']);
      assert.deepEqual(fake.received, ['EDP', 'HELLO'], 'nothing sent back');
    });
  }

  test("DATA beyond the client's window: the client sends ERROR(8) and fails with ERR_ROCKS_FLOW_CONTROL", () => {
    const { p, fake } = establishedWithFake({ client: { receiveWindow: 1024 } });
    fake.send(encodeDataHeader(0, 1025), Buffer.alloc(1025));
    p.runFor(50);
    assert.deepEqual(fake.received.slice(-1), ['ERROR(8)']);
    assert.deepEqual(p.client.events.names().slice(-3), ['close-link #1 graceful', 'error ERR_ROCKS_FLOW_CONTROL', 'released']);
  });

  test('CLOSE before the client is finished: the client sends ERROR(1) and fails', () => {
    const { p, fake } = establishedWithFake();
    fake.send(encodeClose());
    p.runFor(50);
    assert.deepEqual(fake.received.slice(-1), ['ERROR(1)']);
    assert.deepEqual(p.client.events.names().slice(-3), ['close-link #1 graceful', 'error ERR_ROCKS_PROTOCOL', 'released']);
  });

  for (const [sent, code] of [
    [6, 'ERR_ROCKS_PEER_ABORTED'],
    [8, 'ERR_ROCKS_FLOW_CONTROL'],
    [999, 'ERR_ROCKS_PROTOCOL'],
  ] as const) {
    test(`ERROR(${sent}) on the active link: the client fails with ${code}, sending nothing back`, () => {
      const { p, fake } = establishedWithFake();
      fake.send(encodeError(sent, 'x'));
      p.runFor(50);
      assert.deepEqual(p.client.events.names().slice(-3), ['close-link #1', `error ${code}`, 'released']);
      assert.deepEqual(fake.received, ['EDP', 'HELLO', 'CONFIRM', 'ACK 0']);
    });
  }

  test('a finished client told ERROR on its active link treats the close as complete', () => {
    const { p, fake } = establishedWithFake();
    p.client.end();
    p.runFor(15);
    fake.send(encodeAck(1, 1 << 20), encodeFin(0)); // the client's FIN acknowledged, the server's FIN
    p.runFor(15);
    assert.ok(p.client.session.finished);
    fake.send(encodeError(wire('ERR_ROCKS_PEER_ABORTED'), 'x'));
    p.runFor(15);
    assert.deepEqual(p.client.events.names().slice(-5), ['fin-acked', 'end', 'close-link #1', 'closed', 'released']);
  });

  test('a finished client told any ERROR in reply to its RESUME treats the close as complete', () => {
    const { p, fake } = establishedWithFake();
    p.client.end();
    p.runFor(15);
    fake.send(encodeAck(1, 1 << 20), encodeFin(0));
    p.runFor(15);
    const fake2 = fakeServer();
    resumeToFake(p, fake2);
    fake2.send(SERVER_ANNOUNCEMENT, encodeError(wire('ERR_ROCKS_UNKNOWN_SESSION'), 'restarted'));
    p.runFor(15);
    assert.deepEqual(p.client.events.names().slice(-3), ['close-link #2', 'closed', 'released']);
    assert.equal(p.client.events.of('error').length, 0);
  });

  for (const code of ['ERR_ROCKS_AUTH_FAILED', 'ERR_ROCKS_SERVER_BUSY', 'ERR_ROCKS_HANDSHAKE_TIMEOUT'] as const) {
    test(`RESUME answered with ERROR(${wire(code)}): the client drops that link and keeps trying`, () => {
      const p = established({ jitter: 0.5 });
      const fake = fakeServer();
      resumeToFake(p, fake);
      fake.send(SERVER_ANNOUNCEMENT, encodeError(wire(code), 'not now'));
      untilResumed(p);
      assert.deepEqual(p.client.events.take(), [
        'close-link #1',
        'suspend',
        'reconnect-attempt 1',
        'dial #2',
        'close-link #2',
        'reconnect-attempt 2',
        'dial #3',
        'link-active #3',
        'resume',
      ]);
    });
  }

  const fatalOnResume: [number, RocksErrorCode][] = [
    [wire('ERR_ROCKS_UNKNOWN_SESSION'), 'ERR_ROCKS_UNKNOWN_SESSION'],
    [wire('ERR_ROCKS_PEER_ABORTED'), 'ERR_ROCKS_PEER_ABORTED'],
    [wire('ERR_ROCKS_SUSPEND_TIMEOUT'), 'ERR_ROCKS_SUSPEND_TIMEOUT'],
    [wire('ERR_ROCKS_EVICTED'), 'ERR_ROCKS_EVICTED'],
    [wire('ERR_ROCKS_SESSION_CLOSED'), 'ERR_ROCKS_SESSION_CLOSED'],
    [wire('ERR_ROCKS_VERSION'), 'ERR_ROCKS_VERSION'],
    [999, 'ERR_ROCKS_PROTOCOL'],
  ];
  for (const [sent, code] of fatalOnResume) {
    test(`RESUME answered with ERROR(${sent}) by an unfinished client: the session fails with ${code}`, () => {
      const p = established();
      const fake = fakeServer();
      resumeToFake(p, fake);
      fake.send(SERVER_ANNOUNCEMENT, encodeError(sent, 'gone'));
      p.runFor(15);
      assert.deepEqual(p.client.events.take(), [
        'close-link #1',
        'suspend',
        'reconnect-attempt 1',
        'dial #2',
        `error ${code}`,
        'close-link #2',
        'released',
      ]);
      assert.deepEqual(fake.received, ['EDP', 'RESUME'], 'nothing sent back');
    });
  }

  test('RESUME answered with ERROR(11) after the server had confirmed the session: ERR_ROCKS_UNKNOWN_SESSION, no restart', () => {
    const p = established();
    p.runFor(100); // the server's ACK arrived: it holds the session
    const fake = fakeServer();
    resumeToFake(p, fake);
    fake.send(SERVER_ANNOUNCEMENT, encodeError(wire('ERR_ROCKS_UNCONFIRMED_SESSION'), 'who?'));
    p.runFor(15);
    assert.deepEqual(p.client.events.names().slice(-3), ['error ERR_ROCKS_UNKNOWN_SESSION', 'close-link #2', 'released']);
  });

  test('a CHALLENGE with a valid MAC claiming more than the client sent: the client sends ERROR(1) and fails', () => {
    const { p, key, sessionId } = establishedWithFake();
    const fake2 = fakeServer();
    const resume = resumeToFake(p, fake2);
    const serverNonce = Buffer.alloc(NONCE_SIZE, 6);
    const t = { version: 1, sessionId, clientNonce: resume.nonce, serverNonce, received: 50, sent: 0 };
    fake2.send(SERVER_ANNOUNCEMENT, encodeChallenge(serverNonce, 50, 0, resumeMac(key, 'server', t)));
    p.runFor(30);
    assert.deepEqual(fake2.received, ['EDP', 'RESUME', 'ERROR(1)']);
    assert.deepEqual(p.client.events.names().slice(-3), ['close-link #2 graceful', 'error ERR_ROCKS_PROTOCOL', 'released']);
  });

  test('a valid CHALLENGE from the fake server resumes the session (the check above is the only difference)', () => {
    const { p, key, sessionId } = establishedWithFake();
    const fake2 = fakeServer();
    const resume = resumeToFake(p, fake2);
    const serverNonce = Buffer.alloc(NONCE_SIZE, 6);
    const t = { version: 1, sessionId, clientNonce: resume.nonce, serverNonce, received: 0, sent: 0 };
    fake2.send(SERVER_ANNOUNCEMENT, encodeChallenge(serverNonce, 0, 0, resumeMac(key, 'server', t)));
    p.runFor(30);
    assert.deepEqual(fake2.received, ['EDP', 'RESUME', 'PROOF', 'ACK 0']);
    assert.deepEqual(p.client.events.names().slice(-2), ['link-active #2', 'resume']);
  });

  test('a WELCOME on a resume link: the client sends ERROR(1) on that link only and keeps trying', () => {
    const p = established({ jitter: 0.5 });
    const fake = fakeServer();
    resumeToFake(p, fake);
    fake.send(SERVER_ANNOUNCEMENT, encodeWelcome(1, Buffer.alloc(SESSION_ID_SIZE), rawHello().keys.publicKey, 4096, Buffer.alloc(INSTANCE_SIZE)));
    untilResumed(p);
    assert.deepEqual(fake.received, ['EDP', 'RESUME', 'ERROR(1)']);
    assert.deepEqual(p.client.events.take(), [
      'close-link #1',
      'suspend',
      'reconnect-attempt 1',
      'dial #2',
      'close-link #2 graceful',
      'reconnect-attempt 2',
      'dial #3',
      'link-active #3',
      'resume',
    ]);
  });
});
