// The carriage between two rack daemons: one rocks connection that carries
// whole IP packets. rocks gives it what racks promises the applications:
// failure detection by heartbeats, suspension for as long as it takes, the
// client's reconnection from a new address with an authenticated resume, and
// every packet delivered exactly once, in order, across any failure.
//
// On top of that every packet is authenticated: the daemons agree on a key
// with X25519 when the carriage begins (HKDF-SHA256, salted with the shared
// secret when both were given one, which is what authenticates the peer
// daemon; without it, as in the original, only "the same peer as at the
// start" is proven), and each packet carries its number and a 16-byte tag:
// ChaCha20-Poly1305 with the packet as associated data and nothing to
// encrypt (the applications' bytes are not encrypted, as in the original),
// under a nonce made of the sender's direction and the packet's number, so
// no nonce repeats under a key. Poly1305 costs a fifth of HMAC-SHA256 on a
// 64 KiB packet. Each side's first frame after the keys is a SYNC of epoch 0,
// which proves it holds the same key: a peer with another secret (or a man
// in the middle of the key exchange) fails it and the carriage closes.
//
// rocks carries the bytes without authenticating them, so an on-path
// attacker can alter them. The rules:
// - A PACKET whose tag fails is dropped and counted (`rejected`), never
//   injected; the genuine packets after it still pass. A packet is accepted
//   only when its number is greater than the last accepted one: rocks
//   delivers the stream in order, so genuine packets arrive in increasing
//   numbers and anything else is a replay; gaps are the dropped ones.
// - The framing is broken when a frame is malformed (a length out of range,
//   an unknown type, a KEY after the keys), when MAX_CONSECUTIVE_REJECTS
//   frames in a row fail their tag (an altered length makes the frames after
//   it misparsed garbage, which may even be frames an application crafted
//   inside its own payload), or when a frame begun stays incomplete with no
//   byte arriving for `stallTimeout` while the carriage is up (an altered
//   length may announce up to 64 KiB that will never come). Then the
//   receiver resynchronizes (`resyncs`): it discards its buffer, sends the
//   peer a SYNC asking for one, and scans what arrives for the peer's SYNC
//   (fixed header, then epoch and a tag under the key: the attacker cannot
//   make one, and an epoch not greater than the last one seen is a replay);
//   the frames after it are parsed again. The request is sent again every
//   `stallTimeout` until a SYNC comes, so the carriage never stays silent
//   after a finite amount of tampering. Packets lost meanwhile are
//   retransmitted by the TCP ends, and the connections go on: the rocks
//   session itself was never broken, so no new key agreement is needed
//   (the packet numbers and SYNC epochs keep growing, and no nonce repeats).
//
// Wire format, after rocks' own handshake:
//   frame  = length:u32 type:u8 body (length counts type and body)
//   KEY    (0)  body = X25519 public key, 32 bytes; each side sends one first
//   PACKET (1)  body = number:u64, IP packet, tag (16 bytes)
//   SYNC   (2)  body = "rack\x00syn" (8 bytes), epoch:u64, request:u8, tag
//               (16 bytes, over the frame before it, nonce direction + 2 and
//               epoch); request 1 asks the peer to send a SYNC back

import { createCipheriv, createPublicKey, diffieHellman, hkdfSync, timingSafeEqual, type KeyObject } from 'node:crypto';
import { freshKeyPair } from '../protocol/keys.js';
import { EventEmitter } from 'node:events';
import type { ReliableSocket } from '../node/socket.js';

const KEY = 0;
const PACKET = 1;
const SYNC = 2;
const HEADER = 5;
const PUBLIC_KEY = 32;
const NUMBER = 8;
const MAC = 16;
/** An IPv4 packet is at most 65,535 bytes. */
const MAX_BODY = NUMBER + 65_535 + MAC;
const INFO = Buffer.from('rack carriage', 'latin1');
const SYNC_MARK = Buffer.from('rack\x00syn', 'latin1');
const SYNC_FRAME = HEADER + SYNC_MARK.length + 8 + 1 + MAC;
/** What a receiver scans for: the header and mark every SYNC starts with. */
const SYNC_START = Buffer.concat([Buffer.from([0, 0, 0, SYNC_FRAME - 4, SYNC]), SYNC_MARK]);
/** Frames in a row whose tag fails before the framing counts as broken (one altered packet is just dropped). */
export const MAX_CONSECUTIVE_REJECTS = 4;
export const DEFAULT_STALL_TIMEOUT = 10_000;

export interface CarriageOptions {
  /** Shared secret mixed into the key: only daemons that hold it can talk. */
  secret?: Buffer;
  /**
   * A frame begun that gets no further byte for this long while the carriage
   * is up means the framing is broken; longer than the failure timeout, so a
   * path that fails mid-frame is rocks' to detect (ms).
   */
  stallTimeout?: number;
}

export interface CarriageStats {
  packetsSent: number;
  packetsReceived: number;
  /** Frames whose tag did not match, and replays: dropped. */
  rejected: number;
  /** Times the framing from the peer broke and was found again. */
  resyncs: number;
  /** Bytes discarded while looking for the peer's SYNC. */
  discardedBytes: number;
}

export interface Carriage {
  on(event: 'packet', listener: (packet: Buffer) => void): this;
  on(event: 'ready' | 'suspend' | 'resume', listener: () => void): this;
  on(event: 'close', listener: (reason: string) => void): this;
  /** The rocks connection moved to a new link while the old one was open (a network change, `reason`). */
  on(event: 'move', listener: (reason: string) => void): this;
  on(event: 'rejected', listener: () => void): this;
  /** The framing broke (`reason`); the carriage is looking for the peer's SYNC. */
  on(event: 'resync', listener: (reason: string) => void): this;
  /** The peer's SYNC was found after `ms` and `discardedBytes`: packets flow again. */
  on(event: 'resynced', listener: (info: { ms: number; discardedBytes: number }) => void): this;
}

export class Carriage extends EventEmitter {
  readonly stats: CarriageStats = { packetsSent: 0, packetsReceived: 0, rejected: 0, resyncs: 0, discardedBytes: 0 };
  private readonly privateKey: KeyObject;
  private readonly publicKey: Buffer;
  private readonly secret: Buffer | undefined;
  private readonly stallTimeout: number;
  private key: Buffer | undefined;
  /** The peer proved it holds the same key (its SYNC of epoch 0). */
  private confirmed = false;
  private sentCount = 0n;
  /** The lowest packet number still acceptable: one past the last accepted. */
  private nextNumber = 0n;
  private syncsSent = 0n;
  /** The lowest SYNC epoch still acceptable from the peer. */
  private nextEpoch = 0n;
  private consecutiveRejects = 0;
  private pending: Buffer[] = [];
  private chunks: Buffer[] = [];
  private bufferedBytes = 0;
  /** Looking for the peer's SYNC since this time (performance.now()), or undefined when the framing holds. */
  private scanningSince: number | undefined;
  private scanDiscarded = 0;
  private bytesIn = 0;
  private stallTimer: NodeJS.Timeout | undefined;
  /** The carriage suspended since the stall timer last looked: silence then is rocks' to judge. */
  private suspendedSinceCheck = false;
  private closed = false;
  /** Why the carriage closed, once it has. */
  closeReason: string | undefined;

  constructor(
    readonly socket: ReliableSocket,
    private readonly role: 'client' | 'server',
    options: CarriageOptions | Buffer | undefined = {},
  ) {
    super();
    const o = Buffer.isBuffer(options) ? { secret: options } : options;
    this.secret = o.secret;
    this.stallTimeout = o.stallTimeout ?? DEFAULT_STALL_TIMEOUT;
    // Not generateKeyPairSync: see keyPairFromSeed.
    const pair = freshKeyPair();
    this.privateKey = pair.privateKey;
    this.publicKey = pair.publicKey;
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('suspend', () => {
      this.suspendedSinceCheck = true;
      this.emit('suspend');
    });
    socket.on('reconnect', () => this.emit('resume'));
    socket.on('migrate', (info: { reason: string }) => this.emit('move', info.reason));
    socket.on('error', (err: Error) => this.close(err.message));
    socket.on('close', () => this.close('connection closed'));
    const frame = Buffer.alloc(HEADER + PUBLIC_KEY);
    frame.writeUInt32BE(1 + PUBLIC_KEY, 0);
    frame[4] = KEY;
    this.publicKey.copy(frame, HEADER);
    socket.write(frame);
  }

  /** Keys agreed and the peer proved it holds the same one. */
  get ready(): boolean {
    return this.confirmed;
  }

  get suspended(): boolean {
    return this.socket.suspended;
  }

  /** Bytes written to the carriage that its peer has not yet acknowledged (held across an outage). */
  get heldBytes(): number {
    return this.socket.bufferedAmount;
  }

  /** Sends one IP packet (queued until the key is agreed). `packet` may be reused by the caller once this returns. */
  send(packet: Buffer): void {
    if (this.closed) return;
    if (this.key === undefined) {
      this.pending.push(Buffer.from(packet)); // the caller may reuse its buffer
      return;
    }
    const number = this.sentCount++;
    const mac = this.mac(this.role, number, packet);
    const header = Buffer.alloc(HEADER + NUMBER);
    header.writeUInt32BE(1 + NUMBER + packet.length + MAC, 0);
    header[4] = PACKET;
    header.writeBigUInt64BE(number, HEADER);
    // rocks copies what it is given into its in-flight buffer at once, unless
    // earlier writes are still queued in the stream: then `packet`, which
    // may be a view the caller reuses, must be copied first.
    const safe = this.socket.writableLength > 0 ? Buffer.from(packet) : packet;
    this.socket.cork();
    this.socket.write(header);
    this.socket.write(safe);
    this.socket.write(mac);
    this.socket.uncork();
    this.stats.packetsSent++;
  }

  close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.closeReason = reason;
    this.stopStallTimer();
    this.socket.destroy();
    this.emit('close', reason);
  }

  private onData(chunk: Buffer): void {
    this.bytesIn += chunk.length;
    this.chunks.push(chunk);
    this.bufferedBytes += chunk.length;
    this.parse();
    if (!this.closed && (this.bufferedBytes > 0 || this.scanningSince !== undefined)) this.startStallTimer();
  }

  /** Frames from the stream; one that spans chunks is copied together once, the rest are views. */
  private parse(): void {
    while (!this.closed) {
      if (this.scanningSince !== undefined && !this.scan()) return;
      if (this.bufferedBytes < HEADER) return;
      const head = this.take(HEADER, false);
      const length = head.readUInt32BE(0);
      const type = head[4];
      if (length < 1 || length - 1 > MAX_BODY || type > SYNC) {
        this.broken(`malformed frame: length ${length}, type ${type}`);
        continue;
      }
      if (this.bufferedBytes < 4 + length) return;
      const frame = this.take(4 + length, true);
      const body = frame.subarray(HEADER);
      if (type === KEY) this.onKey(body);
      else if (type === PACKET) this.onPacket(body);
      else this.onSync(frame);
    }
  }

  /** The first `n` buffered bytes (removed from the buffer when `consume`). */
  private take(n: number, consume: boolean): Buffer {
    const first = this.chunks[0];
    let out: Buffer;
    if (first.length >= n) out = first.subarray(0, n);
    else {
      out = Buffer.allocUnsafe(n);
      let at = 0;
      for (const c of this.chunks) {
        at += c.copy(out, at, 0, Math.min(c.length, n - at));
        if (at === n) break;
      }
    }
    if (consume) this.discard(n);
    return out;
  }

  private discard(n: number): void {
    this.bufferedBytes -= n;
    let left = n;
    while (left > 0) {
      const c = this.chunks[0];
      if (c.length <= left) {
        left -= c.length;
        this.chunks.shift();
      } else {
        this.chunks[0] = c.subarray(left);
        left = 0;
      }
    }
  }

  /**
   * Looking for the peer's SYNC: discards the bytes before a candidate and
   * verifies it. True once a genuine one was taken (the framing holds again
   * after it); false when more bytes are needed.
   */
  private scan(): boolean {
    while (this.bufferedBytes >= SYNC_FRAME) {
      const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
      this.chunks = [all];
      const at = all.indexOf(SYNC_START);
      if (at < 0) {
        // Keep what could be the start of a SYNC cut by the chunk's end.
        this.skip(Math.max(0, all.length - (SYNC_START.length - 1)));
        return false;
      }
      this.skip(at);
      if (this.bufferedBytes < SYNC_FRAME) return false;
      const frame = this.take(SYNC_FRAME, false);
      const epoch = this.verifySync(frame);
      if (epoch === undefined) {
        this.skip(1);
        continue;
      }
      this.discard(SYNC_FRAME);
      const ms = Math.round(performance.now() - this.scanningSince!);
      const discardedBytes = this.scanDiscarded;
      this.scanningSince = undefined;
      this.consecutiveRejects = 0;
      this.acceptSync(epoch, frame);
      this.emit('resynced', { ms, discardedBytes });
      return true;
    }
    return false;
  }

  private skip(n: number): void {
    if (n === 0) return;
    this.discard(n);
    this.scanDiscarded += n;
    this.stats.discardedBytes += n;
  }

  /** The framing from the peer cannot be trusted from here: look for its SYNC, and ask it for one. */
  private broken(reason: string): void {
    if (!this.confirmed) return this.close(reason);
    this.stats.resyncs++;
    this.scanningSince = performance.now();
    this.scanDiscarded = 0;
    this.emit('resync', reason);
    this.sendSync(true);
  }

  private sendSync(request: boolean): void {
    if (this.closed || this.key === undefined) return;
    const frame = Buffer.alloc(SYNC_FRAME);
    SYNC_START.copy(frame);
    const epoch = this.syncsSent++;
    frame.writeBigUInt64BE(epoch, SYNC_START.length);
    frame[SYNC_START.length + 8] = request ? 1 : 0;
    const signed = frame.subarray(0, SYNC_FRAME - MAC);
    this.mac(this.role, epoch, signed, true).copy(frame, SYNC_FRAME - MAC);
    this.socket.write(frame);
  }

  /** The epoch of a genuine SYNC frame not seen before, or undefined. */
  private verifySync(frame: Buffer): bigint | undefined {
    if (this.key === undefined || frame.length !== SYNC_FRAME || !frame.subarray(0, SYNC_START.length).equals(SYNC_START)) return undefined;
    const epoch = frame.readBigUInt64BE(SYNC_START.length);
    const expected = this.mac(this.peerRole, epoch, frame.subarray(0, SYNC_FRAME - MAC), true);
    if (!timingSafeEqual(expected, frame.subarray(SYNC_FRAME - MAC)) || epoch < this.nextEpoch) return undefined;
    return epoch;
  }

  private acceptSync(epoch: bigint, frame: Buffer): void {
    this.nextEpoch = epoch + 1n;
    if (frame[SYNC_START.length + 8] === 1) this.sendSync(false);
    if (!this.confirmed) {
      this.confirmed = true;
      this.emit('ready');
    }
  }

  private onSync(frame: Buffer): void {
    const epoch = this.verifySync(frame);
    if (epoch === undefined) {
      if (!this.confirmed) return this.close('key confirmation failed: the peer daemon holds another secret, or the key exchange was altered');
      return this.reject();
    }
    this.consecutiveRejects = 0;
    this.acceptSync(epoch, frame);
  }

  private onKey(body: Buffer): void {
    if (this.key !== undefined) return this.broken('a second key exchange');
    if (body.length !== PUBLIC_KEY) return this.close('malformed key exchange');
    let shared: Buffer;
    try {
      const peer = createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: body.toString('base64url') }, format: 'jwk' });
      shared = diffieHellman({ privateKey: this.privateKey, publicKey: peer });
    } catch (err) {
      return this.close(`bad public key: ${(err as Error).message}`);
    }
    const [clientPublic, serverPublic] = this.role === 'client' ? [this.publicKey, body] : [body, this.publicKey];
    const info = Buffer.concat([INFO, clientPublic, serverPublic]);
    this.key = Buffer.from(hkdfSync('sha256', shared, this.secret ?? Buffer.alloc(0), info, 32));
    this.sendSync(false); // epoch 0: the key confirmation
    const pending = this.pending;
    this.pending = [];
    for (const p of pending) this.send(p);
  }

  private onPacket(body: Buffer): void {
    if (!this.confirmed) return this.close('a packet before the key confirmation');
    if (body.length <= NUMBER + MAC) return this.reject();
    const number = body.readBigUInt64BE(0);
    const packet = body.subarray(NUMBER, body.length - MAC);
    const expected = this.mac(this.peerRole, number, packet);
    // rocks delivers the stream in order: a genuine number is always above the last accepted.
    if (!timingSafeEqual(expected, body.subarray(body.length - MAC)) || number < this.nextNumber) return this.reject();
    this.nextNumber = number + 1n;
    this.consecutiveRejects = 0;
    this.stats.packetsReceived++;
    // A view: a listener that keeps the packet past its call must copy it.
    this.emit('packet', packet);
  }

  private reject(): void {
    this.stats.rejected++;
    this.emit('rejected');
    if (++this.consecutiveRejects >= MAX_CONSECUTIVE_REJECTS) {
      this.consecutiveRejects = 0;
      this.broken(`${MAX_CONSECUTIVE_REJECTS} frames in a row failed`);
    }
  }

  /** While a frame is incomplete, no byte for stallTimeout while the carriage is up breaks the framing; while a SYNC is awaited, it is asked for again every stallTimeout. */
  private startStallTimer(): void {
    if (this.stallTimer !== undefined) return;
    let seen = this.bytesIn;
    const check = (): void => {
      this.stallTimer = undefined;
      if (this.closed || (this.bufferedBytes === 0 && this.scanningSince === undefined)) return;
      // A request may have been lost in the peer's own broken framing: ask again, whatever arrives.
      if (this.scanningSince !== undefined) {
        if (!this.socket.suspended) this.sendSync(true);
      } else if (this.bytesIn !== seen || this.socket.suspended || this.suspendedSinceCheck) {
        seen = this.bytesIn;
        this.suspendedSinceCheck = this.socket.suspended;
        this.stallTimer = setTimeout(check, this.stallTimeout).unref();
        return;
      } else this.broken(`a frame stalled for ${this.stallTimeout} ms`);
      this.startStallTimer();
    };
    this.stallTimer = setTimeout(check, this.stallTimeout).unref();
  }

  private stopStallTimer(): void {
    clearTimeout(this.stallTimer);
    this.stallTimer = undefined;
  }

  private get peerRole(): 'client' | 'server' {
    return this.role === 'client' ? 'server' : 'client';
  }

  /** The tag of a packet (or of a SYNC frame, `sync`) under a nonce no other frame uses. */
  private mac(by: 'client' | 'server', number: bigint, data: Buffer, sync = false): Buffer {
    const nonce = Buffer.alloc(12);
    nonce[0] = (by === 'client' ? 1 : 2) + (sync ? 2 : 0);
    nonce.writeBigUInt64BE(number, 4);
    const tag = createCipheriv('chacha20-poly1305', this.key!, nonce, { authTagLength: MAC });
    tag.setAAD(data, { plaintextLength: 0 });
    tag.final();
    return tag.getAuthTag();
  }
}
