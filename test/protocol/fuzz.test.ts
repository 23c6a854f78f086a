// Bad input: property-based fuzzing (fast-check) of the frame parser, of the
// server's EDP detection and handshake (ServerCore) and of an established
// server session, with
// random bytes and with valid streams that are then mutated. Whatever arrives,
// the code must answer with a clear RocksError, never let another exception
// escape, and keep what it buffers bounded.
//
// Every property runs a fixed number of times with a fresh seed; a failure
// prints the seed and the shrunk counterexample. FUZZ_SEED=<seed> replays
// every property from that seed.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { resolveServerLimits, resolveSessionConfig, type SessionOptions } from '../../src/protocol/config.js';
import { ERROR_CODES, RocksError, codeFromWire, type RocksErrorCode } from '../../src/protocol/errors.js';
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
  encodePace,
  encodeProof,
  encodeResume,
  encodeWelcome,
  FrameParser,
  FrameType,
  DATA_HEADER_SIZE,
  HEADER_SIZE,
  KEY_SIZE,
  MAX_ERROR_MESSAGE,
  HELLO_EXT_PACE,
  MAX_HELLO_EXTENSION,
  MAX_OFFSET,
  NONCE_SIZE,
  SESSION_ID_SIZE,
  MAC_SIZE,
  INSTANCE_SIZE,
  type Frame,
} from '../../src/protocol/frames.js';
import { confirmMac, deriveSessionKey, freshKeyPair, keyPairFromSeed, type KeyPair } from '../../src/protocol/keys.js';
import { systemRandom } from '../../src/protocol/random.js';
import { EDP_MAGIC, encodeAnnouncement, parseAnnouncement, ROCKS } from '../../src/edp/announcement.js';
import { ServerCore, type ServerEvent } from '../../src/protocol/server-core.js';
import { EARLY_DATA_BYTES, type LinkId, type Session, type SessionEvent } from '../../src/protocol/session.js';

// ---- the bound on what a parser may keep ---------------------------------------
//
// FrameParser.next() returns undefined (having consumed nothing more) only when
//   * a DATA frame is in progress and nothing is buffered (0 bytes), or
//   * fewer than HEADER_SIZE bytes are buffered (<= 4), or
//   * a DATA header is incomplete: fewer than DATA_HEADER_SIZE bytes (<= 12), or
//   * a control frame whose header passed the CONTROL_SIZES check is incomplete:
//     fewer than HEADER_SIZE + length bytes, with length <= the largest accepted
//     control payload.
// The largest accepted control payload is the ERROR frame's, 2 + MAX_ERROR_MESSAGE
// = 514 bytes (HELLO with all its extension bytes is only 42 + 256 = 298), so
// once a next() loop has drained to undefined the parser holds at most
// HEADER_SIZE + 514 - 1 = 518 bytes. The sizes are measured with the encoders
// here, so the bound follows the code.

const HELLO_PAYLOAD = encodeHello(1, 1, Buffer.alloc(KEY_SIZE), 0).length - HEADER_SIZE;
const ERROR_PAYLOAD_MAX = encodeError(0, 'x'.repeat(MAX_ERROR_MESSAGE + 100)).length - HEADER_SIZE;
const CONTROL_PAYLOAD_MAX = Math.max(
  HELLO_PAYLOAD + MAX_HELLO_EXTENSION,
  ERROR_PAYLOAD_MAX,
  encodeWelcome(1, Buffer.alloc(SESSION_ID_SIZE), Buffer.alloc(KEY_SIZE), 0, Buffer.alloc(INSTANCE_SIZE)).length - HEADER_SIZE,
  encodeResume(1, Buffer.alloc(SESSION_ID_SIZE), Buffer.alloc(NONCE_SIZE), Buffer.alloc(INSTANCE_SIZE)).length - HEADER_SIZE,
  encodeChallenge(Buffer.alloc(NONCE_SIZE), 0, 0, Buffer.alloc(MAC_SIZE)).length - HEADER_SIZE,
  encodeProof(0, 0, Buffer.alloc(MAC_SIZE)).length - HEADER_SIZE,
  encodeConfirm(Buffer.alloc(MAC_SIZE)).length - HEADER_SIZE,
  encodeAck(0, 0).length - HEADER_SIZE,
  encodeFin(0).length - HEADER_SIZE,
  encodePace(0).length - HEADER_SIZE,
);
/** Most bytes a drained parser may hold: 518. */
const RESIDUE_BOUND = Math.max(HEADER_SIZE + CONTROL_PAYLOAD_MAX - 1, DATA_HEADER_SIZE - 1);

/** Codes a peer may be refused with, or fail a session with: every documented code but the internal one. */
const WIRE_CODES = new Set((Object.keys(ERROR_CODES) as RocksErrorCode[]).filter((c) => ERROR_CODES[c].wire !== 0));
/** What ServerCore may refuse a new link with. */
const HANDSHAKE_CODES = new Set<RocksErrorCode>([
  'ERR_ROCKS_PROTOCOL',
  'ERR_ROCKS_VERSION',
  'ERR_ROCKS_UNKNOWN_SESSION',
  'ERR_ROCKS_UNCONFIRMED_SESSION',
  'ERR_ROCKS_SERVER_BUSY',
  'ERR_ROCKS_HANDSHAKE_TIMEOUT',
]);

/**
 * X25519 public keys of small order (RFC 7748 section 7, libsodium's list),
 * with their high-bit twins. A HELLO may carry any 32 bytes.
 */
const LOW_ORDER_KEYS = [
  '0000000000000000000000000000000000000000000000000000000000000000',
  '0100000000000000000000000000000000000000000000000000000000000000',
  'e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800',
  '5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157',
  'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  'eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  '0000000000000000000000000000000000000000000000000000000000000080',
  '0100000000000000000000000000000000000000000000000000000000000080',
  'e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880',
  '5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7',
  'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff',
  'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff',
  'eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff',
].map((hex) => Buffer.from(hex, 'hex'));

/** fast-check parameters: the number of runs, and the failing assertion's message in the report. */
const replaySeed = process.env.FUZZ_SEED === undefined ? undefined : Number(process.env.FUZZ_SEED);
const runs = (numRuns: number) => ({ numRuns, includeErrorInReport: true, ...(replaySeed === undefined ? {} : { seed: replaySeed }) });

const NOW = 1_000;
const LATER = NOW + 60_000;

// ---- arbitraries: bytes -----------------------------------------------------------

const bytes = (n: number) => fc.uint8Array({ minLength: n, maxLength: n }).map((a) => Buffer.from(a));
const u8 = fc.integer({ min: 0, max: 0xff });
const u16 = fc.integer({ min: 0, max: 0xffff });
const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
const u53 = fc.maxSafeNat();
/** Keys: usually random, sometimes a small-order point. */
const publicKey = fc.oneof({ arbitrary: bytes(KEY_SIZE), weight: 5 }, { arbitrary: fc.constantFrom(...LOW_ORDER_KEYS), weight: 1 });

/** Plain random bytes. */
const randomBytes = fc.uint8Array({ maxLength: 700 }).map((a) => Buffer.from(a));

/** Frame-shaped garbage: a known or unknown type, a plausible or absurd length, random payload. */
const frameish = fc
  .tuple(
    fc.oneof(fc.constantFrom(...Object.values(FrameType)), u8),
    fc.oneof(
      fc.constantFrom(0, 1, 2, 8, 9, 16, 37, 42, 43, 48, 49, 64, 298, 299, 514, 515, 8 + 256 * 1024, 8 + 256 * 1024 + 1),
      fc.integer({ min: 0, max: 600 }),
      u32,
    ),
    fc.uint8Array({ maxLength: 600 }),
  )
  .map(([type, length, payload]) => {
    const header = Buffer.alloc(HEADER_SIZE);
    header[0] = type;
    header.writeUInt32BE(length, 1);
    return Buffer.concat([header, Buffer.from(payload)]);
  });
const frameishStream = fc.array(frameish, { minLength: 1, maxLength: 4 }).map((parts) => Buffer.concat(parts));

// ---- arbitraries: valid frames ------------------------------------------------------

interface Encoded {
  bytes: Buffer;
  frame: Frame;
}

/**
 * A HELLO extension: entries (`kind | length | value`), then maybe a last
 * entry whose length runs past the end, which ends the list. The frame
 * takes PACE when an entry before that is of kind HELLO_EXT_PACE.
 */
const helloExtension = fc
  .record({
    entries: fc.array(fc.record({ kind: u8, value: fc.uint8Array({ maxLength: 40 }) }), { maxLength: 5 }),
    cut: fc.option(fc.record({ kind: u8, claimed: fc.integer({ min: 1, max: 255 }), value: fc.uint8Array({ maxLength: 40 }) })),
  })
  .map(({ entries, cut }) => {
    const parts = entries.map((e) => Buffer.concat([Buffer.from([e.kind, e.value.length]), e.value]));
    if (cut !== null && cut.claimed > cut.value.length) parts.push(Buffer.concat([Buffer.from([cut.kind, cut.claimed]), cut.value]));
    return { ext: Buffer.concat(parts), pace: entries.some((e) => e.kind === HELLO_EXT_PACE) };
  })
  .filter(({ ext }) => ext.length <= MAX_HELLO_EXTENSION);

const helloFrame = fc.record({ min: u8, max: u8, key: publicKey, window: u32, extension: helloExtension }).map((h): Encoded => {
  const base = encodeHello(h.min, h.max, h.key, h.window);
  const buf = Buffer.concat([base, h.extension.ext]);
  buf.writeUInt32BE(base.length - HEADER_SIZE + h.extension.ext.length, 1);
  return {
    bytes: buf,
    frame: { type: FrameType.HELLO, minVersion: h.min, maxVersion: h.max, publicKey: h.key, window: h.window, pace: h.extension.pace },
  };
});

/** UTF-8 text that survives encodeError and decoding unchanged. */
const errorMessage = fc
  .string({ unit: 'binary', maxLength: 200 })
  .filter((s) => Buffer.byteLength(s, 'utf8') <= MAX_ERROR_MESSAGE && Buffer.from(s, 'utf8').toString('utf8') === s);

const dataFrame = fc.uint8Array({ minLength: 1, maxLength: 300 }).chain((data) =>
  fc.integer({ min: 0, max: MAX_OFFSET - data.length }).map((offset): Encoded => {
    const payload = Buffer.from(data);
    return { bytes: Buffer.concat([encodeDataHeader(offset, payload.length), payload]), frame: { type: FrameType.DATA, offset, data: payload } };
  }),
);

const anyFrame: fc.Arbitrary<Encoded> = fc.oneof(
  helloFrame,
  fc.record({ v: u8, id: bytes(SESSION_ID_SIZE), key: bytes(KEY_SIZE), window: u32, instance: bytes(INSTANCE_SIZE) }).map(
    ({ v, id, key, window, instance }): Encoded => ({
      bytes: encodeWelcome(v, id, key, window, instance),
      frame: { type: FrameType.WELCOME, version: v, sessionId: id, publicKey: key, window, instance },
    }),
  ),
  fc.record({ v: u8, id: bytes(SESSION_ID_SIZE), nonce: bytes(NONCE_SIZE), instance: bytes(INSTANCE_SIZE) }).map(
    ({ v, id, nonce, instance }): Encoded => ({
      bytes: encodeResume(v, id, nonce, instance),
      frame: { type: FrameType.RESUME, version: v, sessionId: id, nonce, instance },
    }),
  ),
  fc.record({ nonce: bytes(NONCE_SIZE), received: u53, sent: u53, mac: bytes(MAC_SIZE) }).map(
    ({ nonce, received, sent, mac }): Encoded => ({
      bytes: encodeChallenge(nonce, received, sent, mac),
      frame: { type: FrameType.CHALLENGE, nonce, received, sent, mac },
    }),
  ),
  fc.record({ received: u53, sent: u53, mac: bytes(MAC_SIZE) }).map(
    ({ received, sent, mac }): Encoded => ({
      bytes: encodeProof(received, sent, mac),
      frame: { type: FrameType.PROOF, received, sent, mac },
    }),
  ),
  dataFrame,
  bytes(MAC_SIZE).map((mac): Encoded => ({ bytes: encodeConfirm(mac), frame: { type: FrameType.CONFIRM, mac } })),
  fc.record({ received: u53, window: u53 }).map(
    ({ received, window }): Encoded => ({
      bytes: encodeAck(received, window),
      frame: { type: FrameType.ACK, received, window },
    }),
  ),
  u53.map((offset): Encoded => ({ bytes: encodeFin(offset), frame: { type: FrameType.FIN, offset } })),
  u32.map((interval): Encoded => ({ bytes: encodePace(interval), frame: { type: FrameType.PACE, interval } })),
  fc.constant<Encoded>({ bytes: encodeClose(), frame: { type: FrameType.CLOSE } }),
  fc.constant<Encoded>({ bytes: encodeCloseAck(), frame: { type: FrameType.CLOSE_ACK } }),
  fc.record({ code: u16, message: errorMessage }).map(
    ({ code, message }): Encoded => ({
      bytes: encodeError(code, message),
      frame: { type: FrameType.ERROR, code, message },
    }),
  ),
);

const validStream = fc.array(anyFrame, { minLength: 1, maxLength: 12 });

// ---- arbitraries: mutations and chunkings ------------------------------------------------

type Mutation =
  | { op: 'flip'; pos: number; mask: number }
  | { op: 'set'; pos: number; value: number }
  | { op: 'truncate'; keep: number }
  | { op: 'insert'; pos: number; data: Buffer }
  | { op: 'delete'; pos: number; len: number }
  | { op: 'duplicate'; pos: number; len: number; at: number }
  | { op: 'fill'; pos: number; len: number; value: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('flip' as const), pos: fc.nat(), mask: fc.integer({ min: 1, max: 0xff }) }),
  fc.record({
    op: fc.constant('set' as const),
    pos: fc.nat(),
    value: fc.constantFrom(0, 1, 2, 3, 4, 5, 0x10, 0x11, 0x12, 0x13, 0x14, 0x1f, 0x7f, 0xff),
  }),
  fc.record({ op: fc.constant('truncate' as const), keep: fc.nat() }),
  fc.record({ op: fc.constant('insert' as const), pos: fc.nat(), data: fc.uint8Array({ minLength: 1, maxLength: 40 }).map((a) => Buffer.from(a)) }),
  fc.record({ op: fc.constant('delete' as const), pos: fc.nat(), len: fc.integer({ min: 1, max: 40 }) }),
  fc.record({ op: fc.constant('duplicate' as const), pos: fc.nat(), len: fc.integer({ min: 1, max: 120 }), at: fc.nat() }),
  fc.record({ op: fc.constant('fill' as const), pos: fc.nat(), len: fc.integer({ min: 1, max: 40 }), value: fc.constantFrom(0x00, 0xff) }),
);
const mutations = fc.array(mutation, { minLength: 1, maxLength: 5 });

function mutate(input: Buffer, ops: readonly Mutation[]): Buffer {
  let buf = Buffer.from(input);
  for (const m of ops) {
    const n = buf.length;
    switch (m.op) {
      case 'flip':
        if (n > 0) buf[m.pos % n] ^= m.mask;
        break;
      case 'set':
        if (n > 0) buf[m.pos % n] = m.value;
        break;
      case 'truncate':
        buf = buf.subarray(0, m.keep % (n + 1));
        break;
      case 'insert': {
        const at = m.pos % (n + 1);
        buf = Buffer.concat([buf.subarray(0, at), m.data, buf.subarray(at)]);
        break;
      }
      case 'delete': {
        const at = m.pos % (n + 1);
        buf = Buffer.concat([buf.subarray(0, at), buf.subarray(at + m.len)]);
        break;
      }
      case 'duplicate': {
        const from = m.pos % (n + 1);
        const region = buf.subarray(from, from + m.len);
        const at = m.at % (n + 1);
        buf = Buffer.concat([buf.subarray(0, at), region, buf.subarray(at)]);
        break;
      }
      case 'fill': {
        if (n === 0) break;
        const from = m.pos % n;
        buf = Buffer.from(buf);
        buf.fill(m.value, from, Math.min(n, from + m.len));
        break;
      }
    }
  }
  return buf;
}

/** Chunk sizes, cycled: tiny chunks, typical ones and whole streams. */
const chunking = fc.array(fc.oneof(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 1, max: 700 })), { minLength: 1, maxLength: 16 });

function split(buf: Buffer, sizes: readonly number[]): Buffer[] {
  const out: Buffer[] = [];
  for (let pos = 0, i = 0; pos < buf.length; i++) {
    const n = sizes[i % sizes.length];
    out.push(buf.subarray(pos, pos + n));
    pos += n;
  }
  return out;
}

// ---- parser helpers ---------------------------------------------------------------------

interface ParseOutcome {
  frames: Frame[];
  error?: RocksError;
  /** Bytes still buffered at the end (when no error). */
  residue: number;
}

function describeError(e: unknown): string {
  if (e instanceof RocksError) return `RocksError ${e.code}: ${e.message}`;
  if (e instanceof Error) return `${e.name}: ${e.message}\n${e.stack}`;
  return String(e);
}

/**
 * Feeds `chunks` to one parser, checking after every push and every frame that
 * it buffers exactly what it should, and after every drained loop that it
 * holds at most RESIDUE_BOUND bytes. Stops at the first throw, which must be a
 * RocksError ERR_ROCKS_PROTOCOL.
 */
function parseChecked(chunks: readonly Buffer[]): ParseOutcome {
  const p = new FrameParser();
  const frames: Frame[] = [];
  for (const chunk of chunks) {
    const before = p.bufferedBytes;
    p.push(chunk);
    assert.equal(p.bufferedBytes, before + chunk.length, 'push buffers exactly the chunk');
    let held = p.bufferedBytes;
    for (;;) {
      let f: Frame | undefined;
      try {
        f = p.next();
      } catch (e) {
        assert.ok(e instanceof RocksError, `parser threw a non-RocksError: ${describeError(e)}`);
        assert.equal(e.code, 'ERR_ROCKS_PROTOCOL', `parser threw ${e.code}`);
        return { frames, error: e, residue: p.bufferedBytes };
      }
      if (f === undefined) break;
      assert.ok(p.bufferedBytes < held, 'every frame consumes bytes');
      assert.ok(p.bufferedBytes >= 0);
      held = p.bufferedBytes;
      frames.push(f);
    }
    assert.ok(p.bufferedBytes <= RESIDUE_BOUND, `drained parser holds ${p.bufferedBytes} bytes, more than ${RESIDUE_BOUND}`);
  }
  return { frames, residue: p.bufferedBytes };
}

/** Joins the pieces of DATA frames (contiguous offsets) so that chunkings compare equal. */
function mergeData(frames: readonly Frame[]): Frame[] {
  const out: Frame[] = [];
  for (const f of frames) {
    const last = out[out.length - 1];
    if (f.type === FrameType.DATA && last?.type === FrameType.DATA && last.offset + last.data.length === f.offset) {
      out[out.length - 1] = { type: FrameType.DATA, offset: last.offset, data: Buffer.concat([last.data, f.data]) };
    } else {
      out.push(f);
    }
  }
  return out;
}

/** The outcome must not depend on how the bytes were cut into chunks. */
function assertChunkingInvariant(whole: ParseOutcome, chunked: ParseOutcome): void {
  assert.deepEqual(mergeData(chunked.frames), mergeData(whole.frames), 'frames depend on the chunking');
  assert.equal(chunked.error?.message, whole.error?.message, 'the error depends on the chunking');
  if (whole.error === undefined) assert.equal(chunked.residue, whole.residue, 'the residue depends on the chunking');
}

/** Parses bytes that must be a complete run of valid frames. */
function parseAll(bufs: readonly Buffer[]): Frame[] {
  const out = parseChecked(bufs);
  assert.equal(out.error, undefined, `invalid frames: ${out.error?.message}`);
  assert.equal(out.residue, 0, 'a partial frame');
  return mergeData(out.frames);
}

// ---- ServerCore harness ---------------------------------------------------------------------

const CLIENT_ANNOUNCEMENT = encodeAnnouncement([ROCKS]);
const SERVER_ANNOUNCEMENT = encodeAnnouncement([ROCKS]);

function newCore(options: SessionOptions = {}): ServerCore {
  return new ServerCore(resolveSessionConfig(options), resolveServerLimits({}), systemRandom);
}

/** Drives a ServerCore and the sessions it creates the way src/node/server.ts does, recording everything. */
class Harness {
  readonly core: ServerCore;
  readonly coreEvents: ServerEvent[] = [];
  /** What ServerCore wrote on links it does not hand over (our announcement), per link. */
  readonly sent = new Map<LinkId, Buffer[]>();
  readonly sessions: Session[] = [];
  readonly sessionEvents = new Map<Session, SessionEvent[]>();
  now = NOW;

  constructor(core: ServerCore) {
    this.core = core;
  }

  /** A new link; by default it opens as a rocks client's does, with the announcement, and gets ours back. */
  open(link: LinkId, announce = true): void {
    this.core.handleLinkOpen(link, this.now);
    this.pump();
    if (!announce) return;
    this.core.handleLinkData(link, CLIENT_ANNOUNCEMENT, this.now);
    this.pump();
    assert.deepEqual(this.sent.get(link), [SERVER_ANNOUNCEMENT], 'the server answers an announcement with its own');
  }

  /** Bytes from the peer on `link`; fails the property if anything throws. */
  feed(link: LinkId, chunk: Buffer): void {
    this.now += 1;
    let thrown: unknown;
    try {
      this.core.handleLinkData(link, chunk, this.now);
    } catch (e) {
      thrown = e;
    }
    assert.equal(thrown, undefined, `ServerCore.handleLinkData threw: ${describeError(thrown)}`);
    this.pump();
  }

  timeout(now: number): void {
    this.now = now;
    this.core.handleTimeout(now);
    for (const s of this.sessions) s.handleTimeout(now);
    this.pump();
  }

  pump(): void {
    for (let again = true; again; ) {
      again = false;
      for (let ev = this.core.pollEvent(); ev !== undefined; ev = this.core.pollEvent()) {
        again = true;
        if (ev.type === 'send') {
          this.sent.set(ev.link, [...(this.sent.get(ev.link) ?? []), ev.bytes]);
          continue;
        }
        if (ev.type === 'drive') continue; // the loop below polls every session anyway
        this.coreEvents.push(ev);
        if (ev.type === 'session' || ev.type === 'bind') {
          if (!this.sessionEvents.has(ev.session)) {
            this.sessions.push(ev.session);
            this.sessionEvents.set(ev.session, []);
          }
        }
      }
      for (const s of this.sessions) {
        for (let ev = s.pollEvent(); ev !== undefined; ev = s.pollEvent()) {
          again = true;
          this.sessionEvents.get(s)!.push(ev);
          // As the Node server does: the socket closes, and the core hears it.
          if (ev.type === 'close-link') this.core.handleLinkClosed(ev.link, this.now);
        }
      }
    }
  }

  liveSessions(): number {
    return this.sessions.filter((s) => s.state !== 'done').length;
  }
}

/** A refusal: 'rejected' then 'close-link' whose final bytes are one ERROR frame carrying the error's code. */
function assertRefused(evs: readonly ServerEvent[], link: LinkId, codes: ReadonlySet<RocksErrorCode>): RocksError {
  assert.equal(evs.length, 2, `expected rejected + close-link, got ${evs.map((e) => e.type).join(', ')}`);
  const [rejected, close] = evs;
  assert.ok(rejected.type === 'rejected' && rejected.link === link, `first event is ${rejected.type}`);
  assert.ok(rejected.error instanceof RocksError, 'rejected with a RocksError');
  assert.ok(codes.has(rejected.error.code), `rejected with ${rejected.error.code}: ${rejected.error.message}`);
  assert.ok(close.type === 'close-link' && close.link === link, `second event is ${close.type}`);
  const frames = parseAll(close.final ?? []);
  assert.equal(frames.length, 1, 'final holds one frame');
  const f = frames[0];
  assert.ok(f.type === FrameType.ERROR, `final holds frame type ${f.type}`);
  assert.equal(f.code, rejected.error.wireCode);
  assert.equal(codeFromWire(f.code), rejected.error.code);
  assert.equal(f.message, rejected.error.message);
  return rejected.error;
}

/**
 * The whole story of one link fed through ServerCore: it was refused, became a
 * session, was bound to one, or is still pending. Returns which.
 */
function linkOutcome(h: Harness, link: LinkId): 'refused' | 'session' | 'bind' | 'pending' {
  const evs = h.coreEvents.filter((e) => 'link' in e && e.link === link);
  if (evs.length === 0) return 'pending';
  if (evs[0].type === 'session' || evs[0].type === 'bind') {
    assert.equal(evs.length, 1, `ServerCore kept talking about link ${link} after handing it over: ${evs.map((e) => e.type).join(', ')}`);
    return evs[0].type;
  }
  assertRefused(evs, link, HANDSHAKE_CODES);
  return 'refused';
}

/** Checks the event log of a server session against the rules in session.ts. */
function assertSessionLog(log: readonly SessionEvent[], link: LinkId): void {
  const types = log.map((e) => e.type);
  const opened = types.indexOf('open');
  const released = types.indexOf('released');
  if (opened >= 0) {
    assert.equal(types.lastIndexOf('open'), opened, "'open' at most once");
    assert.ok(opened >= 1 && log[opened - 1].type === 'link-active', "'link-active' precedes 'open'");
  }
  if (released >= 0) assert.equal(released, log.length - 1, `events after 'released': ${types.join(', ')}`);
  let ended = false;
  for (const [i, ev] of log.entries()) {
    switch (ev.type) {
      case 'data':
      case 'end':
        assert.ok(opened >= 0 && opened < i, `'${ev.type}' before 'open'`);
        assert.ok(!ended, `'${ev.type}' after 'end'`);
        if (ev.type === 'end') ended = true;
        else assert.ok(ev.data.length > 0, 'empty data event');
        break;
      case 'error':
        assert.ok(ev.error instanceof RocksError, `error event with a non-RocksError: ${describeError(ev.error)}`);
        assert.ok(WIRE_CODES.has(ev.error.code), `error event with ${ev.error.code}: ${ev.error.message}`);
        assert.ok(opened >= 0 && opened < i, "'error' for a session the application never saw");
        assert.equal(log[i + 1]?.type, 'released', "'released' follows 'error'");
        break;
      case 'close-link':
        assert.equal(ev.link, link);
        if (ev.final !== undefined) {
          const frames = parseAll(ev.final);
          const last = frames[frames.length - 1];
          assert.ok(last?.type === FrameType.ERROR, 'a link closed with final bytes ends them with ERROR');
          const err = log.find((e) => e.type === 'error');
          if (err?.type === 'error' && err.error instanceof RocksError) assert.equal(last.code, err.error.wireCode);
        }
        break;
      case 'link-active':
        assert.equal(ev.link, link);
        break;
      case 'open':
      case 'released':
        break;
      default:
        assert.fail(`unexpected event '${ev.type}' from a server session fed client bytes`);
    }
  }
  assert.ok(types.filter((t) => t === 'error').length <= 1, "at most one 'error'");
  if (released >= 0) assert.ok(types.includes('close-link'), "the link is closed before 'released'");
}

// ---- 1 and 2: the frame parser -------------------------------------------------------------

describe('fuzz: FrameParser', () => {
  test(`the drain bound of ${RESIDUE_BOUND} bytes is exact`, () => {
    // The largest partial frame a parser must keep: an ERROR frame one byte short.
    assert.equal(RESIDUE_BOUND, 518);
    const full = encodeError(1, 'x'.repeat(MAX_ERROR_MESSAGE));
    const p = new FrameParser();
    p.push(full.subarray(0, full.length - 1));
    assert.equal(p.next(), undefined);
    assert.equal(p.bufferedBytes, RESIDUE_BOUND);
    p.push(full.subarray(full.length - 1));
    const f = p.next();
    assert.ok(f?.type === FrameType.ERROR && f.message.length === MAX_ERROR_MESSAGE);
    assert.equal(p.bufferedBytes, 0);
  });

  test('random bytes in random chunks: frames or ERR_ROCKS_PROTOCOL, bounded, independent of chunking', () => {
    fc.assert(
      fc.property(fc.oneof(randomBytes, frameishStream), chunking, (input, sizes) => {
        const whole = parseChecked([input]);
        const chunked = parseChecked(split(input, sizes));
        assertChunkingInvariant(whole, chunked);
      }),
      runs(5000),
    );
  });

  test('valid frame streams round-trip whatever the chunking', () => {
    fc.assert(
      fc.property(validStream, chunking, (frames, sizes) => {
        const stream = Buffer.concat(frames.map((f) => f.bytes));
        const out = parseChecked(split(stream, sizes));
        assert.equal(out.error, undefined, `valid stream refused: ${out.error?.message}`);
        assert.equal(out.residue, 0);
        assert.deepEqual(mergeData(out.frames), mergeData(frames.map((f) => f.frame)));
      }),
      runs(2000),
    );
  });

  test('mutated valid streams: frames or ERR_ROCKS_PROTOCOL, bounded, and the untouched prefix decodes as before', () => {
    fc.assert(
      fc.property(validStream, mutations, chunking, (frames, ops, sizes) => {
        const original = Buffer.concat(frames.map((f) => f.bytes));
        const input = mutate(original, ops);
        const whole = parseChecked([input]);
        const chunked = parseChecked(split(input, sizes));
        assertChunkingInvariant(whole, chunked);

        // Frames lying wholly before the first changed byte come out unchanged.
        let diff = 0;
        while (diff < input.length && diff < original.length && input[diff] === original[diff]) diff++;
        const intact: Frame[] = [];
        for (let end = 0, i = 0; i < frames.length; i++) {
          end += frames[i].bytes.length;
          if (end > diff) break;
          intact.push(frames[i].frame);
        }
        assert.ok(whole.frames.length >= intact.length, `only ${whole.frames.length} frames before ${whole.error?.message}`);
        assert.deepEqual(whole.frames.slice(0, intact.length), intact);
      }),
      runs(4000),
    );
  });

  test('DATA piece offsets stay exact (safe integers) whatever the chunking', () => {
    // readU64 refuses offsets beyond 2^53 because they must stay exact in a
    // JS number; the offsets of later pieces of the same frame must, too.
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 0, max: 64 }), fc.integer({ min: 1, max: 16 }), (length, below, piece) => {
        const offset = MAX_OFFSET - Math.min(below, MAX_OFFSET);
        const payload = Buffer.alloc(length, 0x61);
        const stream = Buffer.concat([encodeDataHeader(offset, length), payload]);
        const out = parseChecked([stream.subarray(0, DATA_HEADER_SIZE), ...split(stream.subarray(DATA_HEADER_SIZE), [piece])]);
        if (out.error !== undefined) return; // refusing the frame is fine
        let expected = offset;
        for (const f of out.frames) {
          assert.ok(f.type === FrameType.DATA);
          assert.ok(Number.isSafeInteger(f.offset), `DATA piece at offset ${f.offset}, beyond 2^53 - 1`);
          assert.equal(f.offset, expected, 'pieces are contiguous');
          expected += f.data.length;
        }
      }),
      runs(300),
    );
  });
});

// ---- 3: the handshake (ServerCore) ---------------------------------------------------------

/** A valid HELLO from a client with a random key (of large order, as any real client's). */
const validHello = bytes(KEY_SIZE)
  .filter((key) => !LOW_ORDER_KEYS.some((k) => k.equals(key)))
  .map((key) => encodeHello(1, 1, key, 65536));

/** A valid HELLO whose private key the test holds, so it can CONFIRM the session as a real client does. */
const confirmableHello = bytes(KEY_SIZE).map((seed) => {
  const keys = keyPairFromSeed(seed);
  return { keys, bytes: encodeHello(1, 1, keys.publicKey, 65536) };
});

/** The CONFIRM a real client sends for `session`, whose HELLO carried `keys`. */
function confirmFor(session: Session, keys: KeyPair, welcome: Buffer[]): Buffer {
  const w = parseAll(welcome)[0];
  assert.ok(w?.type === FrameType.WELCOME);
  const key = deriveSessionKey(keys, w.publicKey, w.sessionId, keys.publicKey, w.publicKey);
  assert.ok(w.sessionId.equals(session.sessionId!));
  return encodeConfirm(confirmMac(key, { version: 1, sessionId: w.sessionId, clientPublic: keys.publicKey, serverPublic: w.publicKey }));
}

/** Garbage a new link might send before any session exists. */
const handshakeGarbage = fc.oneof(
  randomBytes,
  frameishStream,
  fc
    .tuple(
      fc.oneof(
        helloFrame,
        validHello.map((b) => ({ bytes: b })),
      ),
      fc.oneof(
        fc.constant(Buffer.alloc(0)),
        randomBytes,
        validStream.map((fs) => Buffer.concat(fs.map((f) => f.bytes))),
      ),
      mutations,
    )
    .map(([hello, tail, ops]) => mutate(Buffer.concat([hello.bytes, tail]), ops)),
  fc
    .tuple(fc.record({ v: u8, id: bytes(SESSION_ID_SIZE), nonce: bytes(NONCE_SIZE) }), mutations)
    .map(([r, ops]) => mutate(encodeResume(r.v, r.id, r.nonce, Buffer.alloc(INSTANCE_SIZE)), ops)),
  fc.tuple(validStream, mutations).map(([fs, ops]) => mutate(Buffer.concat(fs.map((f) => f.bytes)), ops)),
);

/** Garbage without any HELLO in it, for the isolation property. */
const nonHelloGarbage = fc.oneof(
  randomBytes,
  frameishStream.filter((b) => b[0] !== FrameType.HELLO),
  fc
    .tuple(fc.record({ v: u8, id: bytes(SESSION_ID_SIZE), nonce: bytes(NONCE_SIZE) }), mutations)
    .map(([r, ops]) => mutate(encodeResume(r.v, r.id, r.nonce, Buffer.alloc(INSTANCE_SIZE)), ops)),
);

/** Checks a Harness after everything on one garbage link, including its sessions. */
function assertGarbageLinkSettled(h: Harness, link: LinkId): void {
  const outcome = linkOutcome(h, link);
  if (outcome === 'pending') {
    assert.equal(h.core.pendingLinkCount, 1, 'a link with no complete frame stays pending');
    h.timeout(LATER);
    const evs = h.coreEvents.filter((e) => 'link' in e && e.link === link);
    const err = assertRefused(evs, link, HANDSHAKE_CODES);
    assert.equal(err.code, 'ERR_ROCKS_HANDSHAKE_TIMEOUT');
  }
  assert.notEqual(outcome, 'bind', 'no session existed to bind to');
  assert.equal(h.core.pendingLinkCount, 0, 'no link left pending');
  for (const s of h.sessions) assertSessionLog(h.sessionEvents.get(s)!, link);
  assert.equal(h.core.sessionCount, h.liveSessions(), 'ServerCore counts exactly the sessions that are not released');
  if (h.liveSessions() === 0) assert.equal(h.core.bufferedBytes, 0, 'released sessions give back their buffer budget');

  // Once the link is settled, more bytes on it change nothing in ServerCore.
  if (outcome !== 'session') {
    const before = h.coreEvents.length;
    h.feed(link, Buffer.from([FrameType.HELLO, 0, 0, 0, 0]));
    assert.equal(h.coreEvents.length, before, 'events for a link already refused');
  }
  // Whatever became of it, a timeout long after ends every unconfirmed session.
  h.timeout(LATER + 3_600_000);
  for (const s of h.sessions) assert.notEqual(s.state, 'accepting', 'an unconfirmed session outlived its handshake timeout');
  assert.equal(h.core.sessionCount, h.liveSessions(), 'ServerCore counts exactly the sessions that are not released');
}

// ---- EDP detection on a new link (ServerCore) ---------------------------------------------

const enhancementName = fc.oneof(fc.constantFrom('rocks', 'racks'), fc.stringMatching(/^[a-z0-9-]{1,32}$/));
const enhancements = fc
  .array(fc.record({ name: enhancementName, minVersion: u8, maxVersion: u8 }), { minLength: 1, maxLength: 16 })
  .map((es) => es.map((e) => ({ ...e })));

/** What a new link may open with: an ordinary client's bytes, a broken or foreign announcement, or a good one. */
const firstBytes = fc.oneof(
  randomBytes,
  // Anything after a part of the magic, or after all of it.
  fc.tuple(fc.integer({ min: 0, max: EDP_MAGIC.length }), randomBytes).map(([n, tail]) => Buffer.concat([EDP_MAGIC.subarray(0, n), tail])),
  fc.tuple(enhancements, mutations, randomBytes).map(([es, ops, tail]) => Buffer.concat([mutate(encodeAnnouncement(es), ops), tail])),
  fc.tuple(enhancements, randomBytes).map(([es, tail]) => Buffer.concat([encodeAnnouncement(es), tail])),
);

/** Events about `link` that ServerCore emitted, 'send' included. */
function edpEvents(h: Harness, link: LinkId): string[] {
  const out = (h.sent.get(link) ?? []).map((b) => `send ${b.toString('hex')}`);
  for (const e of h.coreEvents) {
    if (!('link' in e) || e.link !== link) continue;
    if (e.type === 'plain') out.push(`plain ${e.initial.toString('hex')} ended=${e.ended}`);
    else if (e.type === 'close-link') out.push(`close ${Buffer.concat(e.final ?? []).toString('hex')}`);
    else if (e.type === 'rejected') out.push(`rejected ${e.error.code}`);
    else out.push(e.type);
  }
  return out;
}

describe('fuzz: EDP detection', () => {
  test('announcements round-trip; bytes that do not start like the magic are never one', () => {
    fc.assert(
      fc.property(enhancements, randomBytes, (es, other) => {
        const ok = es.every((e, i) => e.minVersion <= e.maxVersion && es.findIndex((o) => o.name === e.name) === i);
        const bytes = encodeAnnouncement(es);
        const r = parseAnnouncement(Buffer.concat([bytes, other]));
        if (ok) {
          assert.deepEqual(r, { kind: 'announcement', enhancements: es, length: bytes.length });
          for (let n = 0; n < bytes.length; n++) assert.equal(parseAnnouncement(bytes.subarray(0, n)).kind, 'incomplete');
        } else {
          assert.equal(r.kind, 'malformed');
        }
        const lead = other.findIndex((b, i) => i < EDP_MAGIC.length && b !== EDP_MAGIC[i]);
        if (lead >= 0) assert.equal(parseAnnouncement(other).kind, 'other');
      }),
      runs(1000),
    );
  });

  test("whatever a new link sends first: an ordinary client's bytes are handed over whole, an announcement is answered, nothing else", () => {
    fc.assert(
      fc.property(firstBytes, chunking, fc.constantFrom('end', 'silence'), (input, sizes, then) => {
        const h = new Harness(newCore());
        h.open(1, false);
        let fed = Buffer.alloc(0);
        let verdict: ReturnType<typeof parseAnnouncement> = { kind: 'incomplete' };
        for (const chunk of split(input, sizes)) {
          const before = edpEvents(h, 1).length;
          h.feed(1, chunk);
          if (verdict.kind !== 'incomplete') continue; // decided: the rest belongs to whoever took the link
          fed = Buffer.concat([fed, chunk]);
          verdict = parseAnnouncement(fed);
          const evs = edpEvents(h, 1).slice(before);
          switch (verdict.kind) {
            case 'incomplete':
              assert.deepEqual(evs, [], 'nothing decided while the bytes could still be an announcement');
              break;
            case 'other':
              assert.deepEqual(evs, [`plain ${fed.toString('hex')} ended=false`], 'an ordinary client gets every byte read so far');
              break;
            case 'malformed':
              assert.deepEqual(evs, ['rejected ERR_ROCKS_PROTOCOL', 'close '], 'a malformed announcement is closed without a word');
              break;
            case 'announcement': {
              const rocks = verdict.enhancements.some((e) => e.name === 'rocks' && e.minVersion <= 1 && e.maxVersion >= 1);
              const ours = SERVER_ANNOUNCEMENT.toString('hex');
              // A rocks client is answered (and its frames go on to the handshake): our announcement
              // goes out alone, or ahead of the answer to a first frame that came with it (a
              // refusal, or the session's WELCOME or CHALLENGE). Any other is told what we speak.
              if (rocks) {
                const session = h.sessions.at(-1);
                const answer = evs[0] === 'session' || evs[0] === 'bind' ? Buffer.concat(session?.pollTransmit(1, h.now, 0) ?? []) : undefined;
                assert.ok(
                  evs[0] === `send ${ours}` ||
                    (evs[0]?.startsWith('rejected') && evs[1]?.startsWith(`close ${ours}`)) ||
                    answer?.subarray(0, SERVER_ANNOUNCEMENT.length).equals(SERVER_ANNOUNCEMENT),
                  `our announcement first, got ${evs.join(', ')}`,
                );
              } else assert.deepEqual(evs, [`close ${ours}`]);
              break;
            }
          }
        }
        if (verdict.kind === 'incomplete') {
          assert.equal(h.core.pendingLinkCount, 1);
          if (then === 'end') {
            h.core.handleLinkEnd(1);
            h.pump();
            // End-of-stream before any byte is the probe; after some bytes, an ordinary client that said little.
            const expected = fed.length === 0 ? `close ${SERVER_ANNOUNCEMENT.toString('hex')}` : `plain ${fed.toString('hex')} ended=true`;
            assert.deepEqual(edpEvents(h, 1), [expected]);
          } else {
            h.core.handleTimeout(h.now + 1);
            h.pump();
            assert.deepEqual(edpEvents(h, 1), [], 'not before detectTimeout');
            h.timeout(LATER);
            assert.deepEqual(
              edpEvents(h, 1),
              [`plain ${fed.toString('hex')} ended=false`],
              'a silent client is served as one that waits for the server',
            );
          }
        }
        if (verdict.kind !== 'announcement') {
          assert.equal(h.core.pendingLinkCount, 0, 'no link left pending');
          assert.equal(h.core.sessionCount, 0);
        }
      }),
      runs(3000),
    );
  });

  test("one link's detection never disturbs another's", () => {
    fc.assert(
      fc.property(firstBytes, chunking, validHello, (input, sizes, hello) => {
        const h = new Harness(newCore());
        h.open(1, false);
        h.open(2);
        for (const chunk of split(input, sizes)) h.feed(1, chunk);
        h.feed(2, hello);
        const good = h.coreEvents.filter((e) => 'link' in e && e.link === 2);
        assert.deepEqual(
          good.map((e) => e.type),
          ['session'],
        );
      }),
      runs(1000),
    );
  });
});

describe('fuzz: ServerCore handshake', () => {
  test('garbage on a new link: refused with an ERROR frame, or a session, or a handshake timeout; nothing escapes', () => {
    fc.assert(
      fc.property(handshakeGarbage, chunking, (input, sizes) => {
        const h = new Harness(newCore());
        h.open(1);
        for (const chunk of split(input, sizes)) h.feed(1, chunk);
        assertGarbageLinkSettled(h, 1);
      }),
      runs(2000),
    );
  });

  test('a HELLO with a small-order X25519 key is refused, not thrown', () => {
    fc.assert(
      fc.property(fc.constantFrom(...LOW_ORDER_KEYS), u32, fc.boolean(), (key, window, extraFrame) => {
        const h = new Harness(newCore());
        h.open(1);
        const hello = encodeHello(1, 1, key, window);
        h.feed(1, extraFrame ? Buffer.concat([hello, encodeAck(0, 0)]) : hello);
        assertGarbageLinkSettled(h, 1);
      }),
      runs(100),
    );
  });

  test('HELLO followed in the same chunk by bytes that end the new session: ServerCore forgets it', () => {
    fc.assert(
      fc.property(
        validHello,
        fc.oneof(
          randomBytes,
          frameishStream,
          validStream.map((fs) => Buffer.concat(fs.map((f) => f.bytes))),
        ),
        (hello, tail) => {
          const h = new Harness(newCore());
          h.open(1);
          h.feed(1, Buffer.concat([hello, tail]));
          const outcome = linkOutcome(h, 1);
          assert.equal(outcome, 'session', 'a valid HELLO makes a session');
          assertGarbageLinkSettled(h, 1);
        },
      ),
      runs(1000),
    );
  });

  test("garbage on one link never disturbs another link's valid HELLO", () => {
    fc.assert(
      fc.property(
        nonHelloGarbage,
        chunking,
        validHello,
        chunking,
        fc.array(fc.boolean(), { minLength: 1, maxLength: 32 }),
        (garbage, gSizes, hello, hSizes, order) => {
          const h = new Harness(newCore());
          h.open(1);
          h.open(2);
          const g = split(garbage, gSizes);
          const v = split(hello, hSizes);
          for (let i = 0; g.length > 0 || v.length > 0; i++) {
            const takeGarbage = v.length === 0 || (g.length > 0 && order[i % order.length]);
            if (takeGarbage) h.feed(1, g.shift()!);
            else h.feed(2, v.shift()!);
          }
          const good = h.coreEvents.filter((e) => 'link' in e && e.link === 2);
          assert.equal(good.length, 1, `valid HELLO got ${good.map((e) => e.type).join(', ')}`);
          assert.ok(good[0].type === 'session', `valid HELLO got ${good[0].type}`);
          const session = good[0].session;
          assert.equal(session.state, 'accepting');
          assert.deepEqual(h.sessionEvents.get(session), [], 'a new server session says nothing before the client speaks');
          const welcome = parseAll(session.pollTransmit(2, h.now, 1 << 20) ?? []);
          assert.ok(welcome.length === 1 && welcome[0].type === FrameType.WELCOME, 'the session sends WELCOME');
          assert.ok(welcome[0].sessionId.equals(session.sessionId!));

          const bad = linkOutcome(h, 1);
          assert.notEqual(bad, 'session');
          assert.equal(h.core.sessionCount, 1);
          if (bad === 'pending') {
            assert.equal(h.core.pendingLinkCount, 1);
            h.core.handleTimeout(h.now + 1); // too early for anyone
            h.pump();
            assert.equal(h.core.pendingLinkCount, 1);
            h.timeout(LATER);
            const err = assertRefused(
              h.coreEvents.filter((e) => 'link' in e && e.link === 1),
              1,
              HANDSHAKE_CODES,
            );
            assert.equal(err.code, 'ERR_ROCKS_HANDSHAKE_TIMEOUT');
          }
          assert.equal(h.core.pendingLinkCount, 0);
        },
      ),
      runs(1000),
    );
  });

  test('mutated RESUME naming a live session never harms that session', () => {
    fc.assert(
      fc.property(
        confirmableHello,
        fc.boolean(),
        bytes(NONCE_SIZE),
        fc.oneof(
          fc.constant(Buffer.alloc(0)),
          randomBytes,
          validStream.map((fs) => Buffer.concat(fs.map((f) => f.bytes))),
        ),
        fc.oneof(fc.constant([] as Mutation[]), mutations),
        chunking,
        (hello, confirm, nonce, tail, ops, sizes) => {
          const h = new Harness(newCore());
          h.open(1);
          h.feed(1, hello.bytes);
          const ev = h.coreEvents[0];
          assert.ok(ev?.type === 'session');
          const session = ev.session;
          const welcome = session.pollTransmit(1, h.now, 1 << 20) ?? [];
          if (confirm) {
            h.feed(1, Buffer.concat([confirmFor(session, hello.keys, welcome), encodeAck(0, 65536)]));
            assert.equal(session.state, 'open');
          }
          const state = session.state;

          h.open(2);
          const input = mutate(Buffer.concat([encodeResume(1, session.sessionId!, nonce, Buffer.alloc(INSTANCE_SIZE)), tail]), ops);
          for (const chunk of split(input, sizes)) h.feed(2, chunk);
          const outcome = linkOutcome(h, 2);
          if (ops.length === 0) assert.equal(outcome, 'bind', 'a valid RESUME naming the session is bound to it');
          if (outcome === 'bind') {
            const bind = h.coreEvents.find((e) => e.type === 'bind')!;
            assert.ok(bind.type === 'bind' && bind.session === session);
            // The attempt got CHALLENGE, unless bytes after RESUME already closed the link.
            const log = h.sessionEvents.get(session)!;
            const closed = log.find((e) => e.type === 'close-link' && e.link === 2);
            if (closed === undefined) {
              const out = parseAll(session.pollTransmit(2, h.now, 1 << 20) ?? []);
              assert.ok(out.length === 1 && out[0].type === FrameType.CHALLENGE, 'a resume attempt gets CHALLENGE');
            } else if (closed.type === 'close-link' && closed.final !== undefined) {
              const frames = parseAll(closed.final);
              assert.ok(frames[frames.length - 1].type === FrameType.ERROR, 'a refused resume ends with ERROR');
            }
          } else if (outcome === 'pending') {
            h.core.handleTimeout(LATER);
            h.pump();
            const err = assertRefused(
              h.coreEvents.filter((e) => 'link' in e && e.link === 2),
              2,
              HANDSHAKE_CODES,
            );
            assert.equal(err.code, 'ERR_ROCKS_HANDSHAKE_TIMEOUT');
          }
          assert.equal(h.core.pendingLinkCount, 0);
          assert.equal(session.state, state, 'a failed resume attempt changed the session');
          assert.equal(session.activeLink, 1, 'a failed resume attempt took over the session');
          // A mutation can turn RESUME into a valid HELLO (type 0x03 to 0x01): a new session of its own,
          // unless the bytes after that HELLO broke the new session at once (seed -1091533513).
          const fresh = outcome === 'session' ? h.coreEvents.find((e) => e.type === 'session' && e.link === 2) : undefined;
          const freshAlive = fresh?.type === 'session' && fresh.session.state !== 'done';
          assert.equal(h.core.sessionCount, freshAlive ? 2 : 1);
          assert.ok(
            !h.sessionEvents.get(session)!.some((e) => e.type === 'error' || e.type === 'released' || (e.type === 'close-link' && e.link === 1)),
          );
        },
      ),
      runs(1000),
    );
  });
});

// ---- 4: an established server session ---------------------------------------------------------

interface ClientStream {
  bytes: Buffer;
  /** The application bytes the frames carry, from offset 0. */
  data: Buffer;
  fin: boolean;
  /** Wire code of a trailing ERROR frame, if any. */
  error?: number;
}

/**
 * What a correct client sends after WELCOME: DATA frames over a logical
 * stream (some replaying bytes already sent, as after a resume), ACK(0, w),
 * then maybe FIN, maybe an ERROR.
 */
const clientStream: fc.Arbitrary<ClientStream> = fc
  .record({
    data: fc.uint8Array({ maxLength: 3000 }).map((a) => Buffer.from(a)),
    cuts: fc.array(fc.record({ back: fc.nat({ max: 200 }), size: fc.integer({ min: 1, max: 600 }) }), { maxLength: 12 }),
    acks: fc.array(fc.tuple(fc.nat({ max: 12 }), u53), { maxLength: 3 }),
    fin: fc.boolean(),
    error: fc.option(fc.record({ code: u16, message: errorMessage }), { freq: 4 }),
  })
  .map(({ data, cuts, acks, fin, error }) => {
    const frames: Buffer[] = [];
    let sent = 0;
    for (const cut of cuts) {
      if (data.length === 0) break;
      const from = Math.max(0, sent - cut.back);
      const to = Math.min(data.length, from + cut.size);
      if (to <= from) continue;
      frames.push(Buffer.concat([encodeDataHeader(from, to - from), data.subarray(from, to)]));
      sent = Math.max(sent, to);
    }
    if (sent < data.length) {
      frames.push(Buffer.concat([encodeDataHeader(sent, data.length - sent), data.subarray(sent)]));
      sent = data.length;
    }
    // ACK(0, window) is always valid: the server has sent nothing yet.
    for (const [at, window] of acks) frames.splice(Math.min(at, frames.length), 0, encodeAck(0, window));
    if (fin) frames.push(encodeFin(data.length));
    if (error) frames.push(encodeError(error.code, error.message));
    return { bytes: Buffer.concat(frames), data, fin, error: error?.code };
  })
  .filter((s) => s.bytes.length > 0);

interface Established {
  h: Harness;
  session: Session;
  /** The CONFIRM a real client sends first. */
  confirm: Buffer;
}

/** A server session created from a valid HELLO, WELCOME already sent. */
/** A new session's first window: its receiveWindow, but never less than a client may send behind its HELLO (§3.8). */
const firstWindow = (options: SessionOptions): number => Math.max(resolveSessionConfig(options).receiveWindow, EARLY_DATA_BYTES);

function establish(options: SessionOptions): Established {
  const h = new Harness(newCore(options));
  h.open(1);
  const keys = freshKeyPair();
  h.feed(1, encodeHello(1, 1, keys.publicKey, 65536));
  assert.equal(h.coreEvents.length, 1);
  const ev = h.coreEvents[0];
  assert.ok(ev.type === 'session' && ev.link === 1);
  const session = ev.session;
  assert.equal(session.state, 'accepting');
  const sent = session.pollTransmit(1, h.now, 1 << 20) ?? [];
  const welcome = parseAll(sent);
  assert.ok(welcome.length === 1 && welcome[0].type === FrameType.WELCOME);
  assert.equal(welcome[0].window, firstWindow(options));
  assert.deepEqual(h.sessionEvents.get(session), [], 'nothing for the application before the client speaks');
  return { h, session, confirm: confirmFor(session, keys, sent) };
}

/** Feeds a session chunk by chunk, sending what it wants to send after each; returns its event log. */
function runSession({ h, session }: Established, chunks: readonly Buffer[]): SessionEvent[] {
  for (const chunk of chunks) {
    h.feed(1, chunk);
    const out = session.pollTransmit(1, h.now, 1 << 20);
    if (out !== undefined) {
      for (const f of parseAll(out)) assert.ok(f.type === FrameType.ACK, `server sent frame type ${f.type} in reply to client bytes`);
    }
  }
  return h.sessionEvents.get(session)!;
}

/** The checks every run ends with: the log is well-formed, the accounting exact, and release frees everything. */
function assertSessionSettled(est: Established, log: readonly SessionEvent[], window: number): void {
  const { h, session } = est;
  assertSessionLog(log, 1);
  const delivered = log.reduce((n, e) => n + (e.type === 'data' ? e.data.length : 0), 0);
  assert.ok(delivered <= window, `${delivered} bytes delivered past the window of ${window}`);
  if (session.state === 'done') {
    assert.equal(log[log.length - 1]?.type, 'released');
    assert.equal(h.core.sessionCount, 0, 'a released session is gone from ServerCore');
    assert.equal(h.core.bufferedBytes, 0);
    // Nothing more happens on a released session.
    h.feed(1, encodeAck(0, 0));
    assert.equal(h.sessionEvents.get(session)!.length, log.length);
  } else {
    assert.ok(!log.some((e) => e.type === 'released' || e.type === 'error'));
    assert.equal(h.core.sessionCount, 1);
    assert.equal(h.core.bufferedBytes, delivered, 'unread bytes are what the server holds for the session');
    session.abort(h.now);
    h.pump();
    assert.equal(session.state, 'done');
    assert.equal(h.core.sessionCount, 0);
    assert.equal(h.core.bufferedBytes, 0);
  }
}

const windows = fc.constantFrom<SessionOptions>({}, { receiveWindow: 1024 });

describe('fuzz: established server session', () => {
  test('a valid client stream is delivered exactly, within the window', () => {
    fc.assert(
      fc.property(windows, clientStream, chunking, (options, stream, sizes) => {
        const window = firstWindow(options);
        const est = establish(options);
        const log = runSession(est, split(Buffer.concat([est.confirm, stream.bytes]), sizes));
        const state = est.session.state;
        assertSessionSettled(est, log, window); // (ends the session if still open)

        const types = log.map((e) => e.type);
        assert.deepEqual(types.slice(0, 2), ['link-active', 'open']);
        const received = Buffer.concat(log.flatMap((e) => (e.type === 'data' ? [e.data] : [])));
        if (stream.data.length > window) {
          const err = log.find((e) => e.type === 'error');
          assert.ok(
            err?.type === 'error' && err.error instanceof RocksError && err.error.code === 'ERR_ROCKS_FLOW_CONTROL',
            `no flow-control error: ${types.join(', ')}`,
          );
          assert.ok(received.length <= window);
          assert.deepEqual(received, stream.data.subarray(0, received.length));
          return;
        }
        assert.deepEqual(received, stream.data, 'delivered bytes differ from what was sent');
        assert.equal(types.includes('end'), stream.fin);
        if (stream.error !== undefined) {
          const err = log.find((e) => e.type === 'error');
          assert.ok(err?.type === 'error' && err.error instanceof RocksError);
          assert.equal(err.error.code, codeFromWire(stream.error));
          assert.equal(state, 'done');
        } else {
          assert.equal(state, 'open');
          assert.ok(!types.includes('error'));
        }
      }),
      runs(1000),
    );
  });

  test('random and mutated bytes after WELCOME: events or one RocksError then released; nothing escapes', () => {
    const input = fc.oneof(
      randomBytes,
      frameishStream,
      fc.tuple(clientStream, mutations).map(([s, ops]) => mutate(s.bytes, ops)),
      fc.tuple(validStream, mutations).map(([fs, ops]) => mutate(Buffer.concat(fs.map((f) => f.bytes)), ops)),
      validStream.map((fs) => Buffer.concat(fs.map((f) => f.bytes))),
    );
    fc.assert(
      fc.property(windows, input, chunking, fc.boolean(), (options, bytes, sizes, confirmed) => {
        const window = firstWindow(options);
        const est = establish(options);
        const log = runSession(est, split(confirmed ? Buffer.concat([est.confirm, bytes]) : bytes, sizes));
        assertSessionSettled(est, log, window);
      }),
      runs(3000),
    );
  });
});
