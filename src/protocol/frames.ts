// Frame layouts, encoders and the incremental frame parser.
//
// Every frame is `type:u8 | length:u32be | payload`. DATA payloads are not
// collected: the parser hands out each piece as soon as it arrives, as a view
// of the chunk it came in, so application bytes are never copied on receive.
// docs/PROTOCOL.md is the normative description of these layouts.

import { RocksError } from './errors.js';
import { NO_ITEMS } from '../util/empty.js';

export const FrameType = {
  HELLO: 0x01,
  WELCOME: 0x02,
  RESUME: 0x03,
  CHALLENGE: 0x04,
  PROOF: 0x05,
  CONFIRM: 0x06,
  DATA: 0x10,
  ACK: 0x11,
  FIN: 0x12,
  CLOSE: 0x13,
  CLOSE_ACK: 0x14,
  PACE: 0x15,
  ERROR: 0x1f,
} as const;

export const MAGIC = Buffer.from('RCKS', 'latin1');
export const HEADER_SIZE = 5;
export const DATA_HEADER_SIZE = HEADER_SIZE + 8;
export const KEY_SIZE = 32;
export const SESSION_ID_SIZE = 16;
export const NONCE_SIZE = 16;
export const MAC_SIZE = 32;
/** Identifies one run of a server, so a client can tell a restarted server from the same one. */
export const INSTANCE_SIZE = 8;
/** Largest number of application bytes one DATA frame may carry. */
export const MAX_DATA_PAYLOAD = 256 * 1024;
/** Longest human-readable message an ERROR frame may carry, in bytes. */
export const MAX_ERROR_MESSAGE = 512;
/** HELLO may grow in later versions; a v1 peer ignores this many extra bytes at most. */
export const MAX_HELLO_EXTENSION = 256;
/**
 * HELLO extension entry (`kind:u8 | length:u8 | value`): the client takes
 * PACE frames (§5.1). Its value is empty.
 */
export const HELLO_EXT_PACE = 0x01;
/** Offsets are u64 on the wire but must stay exact in a JS number. */
export const MAX_OFFSET = Number.MAX_SAFE_INTEGER;

const HELLO_SIZE = 4 + 1 + 1 + KEY_SIZE + 4;
const WELCOME_SIZE = 1 + SESSION_ID_SIZE + KEY_SIZE + 4 + INSTANCE_SIZE;
const RESUME_SIZE = 4 + 1 + SESSION_ID_SIZE + NONCE_SIZE + INSTANCE_SIZE;
const CHALLENGE_SIZE = NONCE_SIZE + 8 + 8 + MAC_SIZE;
const PROOF_SIZE = 8 + 8 + MAC_SIZE;
const CONFIRM_SIZE = MAC_SIZE;
const ACK_SIZE = 16;
const FIN_SIZE = 8;
const PACE_SIZE = 4;

export interface HelloFrame {
  type: typeof FrameType.HELLO;
  minVersion: number;
  maxVersion: number;
  publicKey: Buffer;
  window: number;
  /** The client takes PACE frames (its HELLO extension said so). */
  pace: boolean;
}
export interface WelcomeFrame {
  type: typeof FrameType.WELCOME;
  version: number;
  sessionId: Buffer;
  publicKey: Buffer;
  window: number;
  instance: Buffer;
}
export interface ResumeFrame {
  type: typeof FrameType.RESUME;
  version: number;
  sessionId: Buffer;
  nonce: Buffer;
  instance: Buffer;
}
export interface ChallengeFrame {
  type: typeof FrameType.CHALLENGE;
  nonce: Buffer;
  received: number;
  sent: number;
  mac: Buffer;
}
export interface ProofFrame {
  type: typeof FrameType.PROOF;
  received: number;
  sent: number;
  mac: Buffer;
}
/** The client's first frame after WELCOME: proof that it holds the session key. */
export interface ConfirmFrame {
  type: typeof FrameType.CONFIRM;
  mac: Buffer;
}
/** One piece of a DATA frame: `data` holds the stream bytes starting at `offset`. */
export interface DataFrame {
  type: typeof FrameType.DATA;
  offset: number;
  data: Buffer;
}
export interface AckFrame {
  type: typeof FrameType.ACK;
  received: number;
  window: number;
}
export interface FinFrame {
  type: typeof FrameType.FIN;
  offset: number;
}
/** The sender's kernel watches the link: the receiver's heartbeats may come as rarely as every `interval` ms (§5.1). */
export interface PaceFrame {
  type: typeof FrameType.PACE;
  interval: number;
}
export interface CloseFrame {
  type: typeof FrameType.CLOSE;
}
export interface CloseAckFrame {
  type: typeof FrameType.CLOSE_ACK;
}
export interface ErrorFrame {
  type: typeof FrameType.ERROR;
  code: number;
  message: string;
}

export type Frame =
  | HelloFrame
  | WelcomeFrame
  | ResumeFrame
  | ChallengeFrame
  | ProofFrame
  | ConfirmFrame
  | DataFrame
  | AckFrame
  | FinFrame
  | CloseFrame
  | CloseAckFrame
  | PaceFrame
  | ErrorFrame;

// ---- encoding -------------------------------------------------------------

function writeU64(buf: Buffer, value: number, pos: number): void {
  buf.writeUInt32BE(Math.floor(value / 0x1_0000_0000), pos);
  buf.writeUInt32BE(value >>> 0, pos + 4);
}

function readU64(buf: Buffer, pos: number): number {
  const hi = buf.readUInt32BE(pos);
  if (hi > 0x1f_ffff) throw new RocksError('ERR_ROCKS_PROTOCOL', 'offset beyond 2^53');
  const lo = buf.readUInt32BE(pos + 4);
  // hi * 2^32 is a double even when hi is 0. Stored into a session's small
  // integer fields (peerWindow, offsets), it would widen them to doubles,
  // and V8 would throw away the code compiled for the session's old shape.
  return hi === 0 ? lo : hi * 0x1_0000_0000 + lo;
}

function frame(type: number, payloadSize: number): Buffer {
  const buf = Buffer.allocUnsafe(HEADER_SIZE + payloadSize);
  buf[0] = type;
  buf.writeUInt32BE(payloadSize, 1);
  return buf;
}

/** `pace`: the extension tells the server that this client takes PACE frames. */
export function encodeHello(minVersion: number, maxVersion: number, publicKey: Buffer, window: number, pace = false): Buffer {
  const buf = frame(FrameType.HELLO, HELLO_SIZE + (pace ? 2 : 0));
  MAGIC.copy(buf, 5);
  buf[9] = minVersion;
  buf[10] = maxVersion;
  publicKey.copy(buf, 11);
  buf.writeUInt32BE(window, 11 + KEY_SIZE);
  if (pace) {
    buf[5 + HELLO_SIZE] = HELLO_EXT_PACE;
    buf[6 + HELLO_SIZE] = 0;
  }
  return buf;
}

export function encodeWelcome(version: number, sessionId: Buffer, publicKey: Buffer, window: number, instance: Buffer): Buffer {
  const buf = frame(FrameType.WELCOME, WELCOME_SIZE);
  buf[5] = version;
  sessionId.copy(buf, 6);
  publicKey.copy(buf, 6 + SESSION_ID_SIZE);
  buf.writeUInt32BE(window, 6 + SESSION_ID_SIZE + KEY_SIZE);
  instance.copy(buf, 10 + SESSION_ID_SIZE + KEY_SIZE);
  return buf;
}

export function encodeResume(version: number, sessionId: Buffer, nonce: Buffer, instance: Buffer): Buffer {
  const buf = frame(FrameType.RESUME, RESUME_SIZE);
  MAGIC.copy(buf, 5);
  buf[9] = version;
  sessionId.copy(buf, 10);
  nonce.copy(buf, 10 + SESSION_ID_SIZE);
  instance.copy(buf, 10 + SESSION_ID_SIZE + NONCE_SIZE);
  return buf;
}

export function encodeChallenge(nonce: Buffer, received: number, sent: number, mac: Buffer): Buffer {
  const buf = frame(FrameType.CHALLENGE, CHALLENGE_SIZE);
  nonce.copy(buf, 5);
  writeU64(buf, received, 5 + NONCE_SIZE);
  writeU64(buf, sent, 13 + NONCE_SIZE);
  mac.copy(buf, 21 + NONCE_SIZE);
  return buf;
}

export function encodeProof(received: number, sent: number, mac: Buffer): Buffer {
  const buf = frame(FrameType.PROOF, PROOF_SIZE);
  writeU64(buf, received, 5);
  writeU64(buf, sent, 13);
  mac.copy(buf, 21);
  return buf;
}

export function encodeConfirm(mac: Buffer): Buffer {
  const buf = frame(FrameType.CONFIRM, CONFIRM_SIZE);
  mac.copy(buf, 5);
  return buf;
}

/** Header of a DATA frame carrying `length` bytes from `offset`; the bytes follow as their own buffers. */
export function encodeDataHeader(offset: number, length: number): Buffer {
  const header = Buffer.allocUnsafe(DATA_HEADER_SIZE);
  header[0] = FrameType.DATA;
  header.writeUInt32BE(8 + length, 1);
  writeU64(header, offset, HEADER_SIZE);
  return header;
}

export function encodeAck(received: number, window: number): Buffer {
  const buf = frame(FrameType.ACK, ACK_SIZE);
  writeU64(buf, received, 5);
  writeU64(buf, window, 13);
  return buf;
}

export function encodeFin(offset: number): Buffer {
  const buf = frame(FrameType.FIN, FIN_SIZE);
  writeU64(buf, offset, 5);
  return buf;
}

export function encodePace(interval: number): Buffer {
  const buf = frame(FrameType.PACE, PACE_SIZE);
  buf.writeUInt32BE(interval, 5);
  return buf;
}

export function encodeClose(): Buffer {
  return frame(FrameType.CLOSE, 0);
}

export function encodeCloseAck(): Buffer {
  return frame(FrameType.CLOSE_ACK, 0);
}

export function encodeError(code: number, message: string): Buffer {
  let text = Buffer.from(message, 'utf8');
  if (text.length > MAX_ERROR_MESSAGE) {
    // Cut at a character boundary: never before a UTF-8 continuation byte.
    let end = MAX_ERROR_MESSAGE;
    while (end > 0 && (text[end] & 0xc0) === 0x80) end--;
    text = text.subarray(0, end);
  }
  const buf = frame(FrameType.ERROR, 2 + text.length);
  buf.writeUInt16BE(code, 5);
  text.copy(buf, 7);
  return buf;
}

// ---- parsing --------------------------------------------------------------

/** Accepted payload sizes of the control frames: [min, max]. */
const CONTROL_SIZES: Record<number, readonly [number, number]> = {
  [FrameType.HELLO]: [HELLO_SIZE, HELLO_SIZE + MAX_HELLO_EXTENSION],
  [FrameType.WELCOME]: [WELCOME_SIZE, WELCOME_SIZE],
  [FrameType.RESUME]: [RESUME_SIZE, RESUME_SIZE],
  [FrameType.CHALLENGE]: [CHALLENGE_SIZE, CHALLENGE_SIZE],
  [FrameType.PROOF]: [PROOF_SIZE, PROOF_SIZE],
  [FrameType.CONFIRM]: [CONFIRM_SIZE, CONFIRM_SIZE],
  [FrameType.ACK]: [ACK_SIZE, ACK_SIZE],
  [FrameType.FIN]: [FIN_SIZE, FIN_SIZE],
  [FrameType.CLOSE]: [0, 0],
  [FrameType.CLOSE_ACK]: [0, 0],
  [FrameType.PACE]: [PACE_SIZE, PACE_SIZE],
  [FrameType.ERROR]: [2, 2 + MAX_ERROR_MESSAGE],
};

/**
 * Turns a byte stream into frames. Feed it chunks with `push`, then call
 * `next` until it returns undefined. Malformed input throws a RocksError with
 * code ERR_ROCKS_PROTOCOL; after that the parser must be dropped.
 *
 * It never holds more than the chunks pushed and not yet parsed: a control
 * frame is at most a few hundred bytes and DATA is handed out piece by piece.
 */
export class FrameParser {
  private chunks: Buffer[] = NO_ITEMS;
  private buffered = 0;
  /** Bytes of the current DATA frame still to come, or 0 between frames. */
  private dataRemaining = 0;
  private dataOffset = 0;

  get bufferedBytes(): number {
    return this.buffered;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    if (this.chunks.length === 0) this.chunks = [chunk];
    else this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /** Takes over what `from` holds and has parsed so far, leaving it empty (a link the server core hands to a session). */
  takeOver(from: FrameParser): void {
    this.chunks = from.chunks;
    this.buffered = from.buffered;
    this.dataRemaining = from.dataRemaining;
    this.dataOffset = from.dataOffset;
    from.chunks = NO_ITEMS;
    from.buffered = 0;
    from.dataRemaining = 0;
    from.dataOffset = 0;
  }

  /** Removes and returns whatever is still buffered (used to hand a link over). */
  drain(): Buffer[] {
    const chunks = this.chunks;
    this.chunks = NO_ITEMS;
    this.buffered = 0;
    return chunks;
  }

  next(): Frame | undefined {
    if (this.dataRemaining > 0) return this.nextDataPiece();
    if (this.buffered < HEADER_SIZE) return undefined;

    const header = this.peek(HEADER_SIZE);
    const type = header[0];
    const length = header.readUInt32BE(1);

    if (type === FrameType.DATA) {
      if (length <= 8 || length > 8 + MAX_DATA_PAYLOAD) {
        throw new RocksError('ERR_ROCKS_PROTOCOL', `DATA frame of ${length} bytes`);
      }
      if (this.buffered < DATA_HEADER_SIZE) return undefined;
      const offset = readU64(this.take(DATA_HEADER_SIZE), HEADER_SIZE);
      if (offset > MAX_OFFSET - (length - 8)) throw new RocksError('ERR_ROCKS_PROTOCOL', 'DATA beyond offset 2^53');
      this.dataOffset = offset;
      this.dataRemaining = length - 8;
      return this.nextDataPiece();
    }

    const sizes = CONTROL_SIZES[type];
    if (sizes === undefined) {
      throw new RocksError('ERR_ROCKS_PROTOCOL', `unknown frame type 0x${type.toString(16).padStart(2, '0')}`);
    }
    if (length < sizes[0] || length > sizes[1]) {
      throw new RocksError('ERR_ROCKS_PROTOCOL', `frame type 0x${type.toString(16)} with ${length} bytes`);
    }
    if (this.buffered < HEADER_SIZE + length) return undefined;
    const body = this.take(HEADER_SIZE + length).subarray(HEADER_SIZE);
    return decodeControl(type, body);
  }

  private nextDataPiece(): Frame | undefined {
    if (this.buffered === 0) return undefined;
    const n = Math.min(this.dataRemaining, this.chunks[0].length);
    const data = this.take(n);
    const offset = this.dataOffset;
    this.dataOffset += n;
    this.dataRemaining -= n;
    return { type: FrameType.DATA, offset, data };
  }

  /** The first `n` buffered bytes, without consuming them. */
  private peek(n: number): Buffer {
    const first = this.chunks[0];
    if (first.length >= n) return first;
    return this.gather(n, false);
  }

  /** Consumes `n` bytes: a view when they lie in the first chunk, else a copy. */
  private take(n: number): Buffer {
    const first = this.chunks[0];
    if (first.length < n) return this.gather(n, true);
    this.buffered -= n;
    if (first.length === n) {
      // An emptied list is let go: its storage is 150 bytes an idle link
      // would keep; shift() would keep it.
      if (this.chunks.length === 1) this.chunks = NO_ITEMS;
      else this.chunks.shift();
      return first;
    }
    this.chunks[0] = first.subarray(n);
    return first.subarray(0, n);
  }

  private gather(n: number, consume: boolean): Buffer {
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    let i = 0;
    while (filled < n) {
      const chunk = this.chunks[i];
      const need = n - filled;
      if (chunk.length <= need) {
        chunk.copy(out, filled);
        filled += chunk.length;
        i++;
      } else {
        chunk.copy(out, filled, 0, need);
        filled += need;
        if (consume) this.chunks[i] = chunk.subarray(need);
      }
    }
    if (consume) {
      if (i === this.chunks.length) this.chunks = NO_ITEMS;
      else this.chunks.splice(0, i);
      this.buffered -= n;
    }
    return out;
  }
}

function decodeControl(type: number, body: Buffer): Frame {
  switch (type) {
    case FrameType.HELLO:
      checkMagic(body);
      return {
        type,
        minVersion: body[4],
        maxVersion: body[5],
        publicKey: Buffer.from(body.subarray(6, 6 + KEY_SIZE)),
        window: body.readUInt32BE(6 + KEY_SIZE),
        pace: extensionHas(body.subarray(HELLO_SIZE), HELLO_EXT_PACE),
      };
    case FrameType.WELCOME:
      return {
        type,
        version: body[0],
        sessionId: Buffer.from(body.subarray(1, 1 + SESSION_ID_SIZE)),
        publicKey: Buffer.from(body.subarray(1 + SESSION_ID_SIZE, 1 + SESSION_ID_SIZE + KEY_SIZE)),
        window: body.readUInt32BE(1 + SESSION_ID_SIZE + KEY_SIZE),
        instance: Buffer.from(body.subarray(5 + SESSION_ID_SIZE + KEY_SIZE, 5 + SESSION_ID_SIZE + KEY_SIZE + INSTANCE_SIZE)),
      };
    case FrameType.RESUME:
      checkMagic(body);
      return {
        type,
        version: body[4],
        sessionId: Buffer.from(body.subarray(5, 5 + SESSION_ID_SIZE)),
        nonce: Buffer.from(body.subarray(5 + SESSION_ID_SIZE, 5 + SESSION_ID_SIZE + NONCE_SIZE)),
        instance: Buffer.from(body.subarray(5 + SESSION_ID_SIZE + NONCE_SIZE, 5 + SESSION_ID_SIZE + NONCE_SIZE + INSTANCE_SIZE)),
      };
    case FrameType.CHALLENGE:
      return {
        type,
        nonce: Buffer.from(body.subarray(0, NONCE_SIZE)),
        received: readU64(body, NONCE_SIZE),
        sent: readU64(body, NONCE_SIZE + 8),
        mac: Buffer.from(body.subarray(NONCE_SIZE + 16, NONCE_SIZE + 16 + MAC_SIZE)),
      };
    case FrameType.PROOF:
      return {
        type,
        received: readU64(body, 0),
        sent: readU64(body, 8),
        mac: Buffer.from(body.subarray(16, 16 + MAC_SIZE)),
      };
    case FrameType.CONFIRM:
      return { type, mac: Buffer.from(body) };
    case FrameType.ACK:
      return { type, received: readU64(body, 0), window: readU64(body, 8) };
    case FrameType.FIN:
      return { type, offset: readU64(body, 0) };
    case FrameType.CLOSE:
    case FrameType.CLOSE_ACK:
      return { type };
    case FrameType.PACE:
      return { type, interval: body.readUInt32BE(0) };
    default: // FrameType.ERROR; CONTROL_SIZES admits no other type
      return { type: FrameType.ERROR, code: body.readUInt16BE(0), message: body.subarray(2).toString('utf8') };
  }
}

/**
 * Whether a HELLO extension holds an entry of `kind`. Entries of other kinds
 * are skipped; one that runs past the end ends the list (a v1 server ignored
 * the extension altogether, so nothing in it may fail a HELLO).
 */
function extensionHas(ext: Buffer, kind: number): boolean {
  for (let pos = 0; pos + 2 <= ext.length; pos += 2 + ext[pos + 1]) {
    if (pos + 2 + ext[pos + 1] > ext.length) return false;
    if (ext[pos] === kind) return true;
  }
  return false;
}

function checkMagic(body: Buffer): void {
  if (!body.subarray(0, 4).equals(MAGIC)) throw new RocksError('ERR_ROCKS_PROTOCOL', 'bad magic');
}
