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
// 64 KiB packet. A packet that fails, or whose number is not the next one
// (a replay), is dropped and counted, never injected; the genuine packets
// after it still pass.
//
// Wire format, after rocks' own handshake:
//   frame  = length:u32 type:u8 body (length counts type and body)
//   KEY    (0)  body = X25519 public key, 32 bytes; each side sends one first
//   PACKET (1)  body = number:u64, IP packet, MAC (16 bytes)

import { createCipheriv, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, timingSafeEqual, type KeyObject } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { ReliableSocket } from '../node/socket.js';

const KEY = 0;
const PACKET = 1;
const HEADER = 5;
const PUBLIC_KEY = 32;
const NUMBER = 8;
const MAC = 16;
/** An IPv4 packet is at most 65,535 bytes. */
const MAX_BODY = NUMBER + 65_535 + MAC;
const INFO = Buffer.from('rack carriage', 'latin1');

export interface CarriageStats {
  packetsSent: number;
  packetsReceived: number;
  /** Packets whose MAC did not match: dropped. */
  rejected: number;
}

export interface Carriage {
  on(event: 'packet', listener: (packet: Buffer) => void): this;
  on(event: 'ready' | 'suspend' | 'resume', listener: () => void): this;
  on(event: 'close', listener: (reason: string) => void): this;
  on(event: 'rejected', listener: () => void): this;
}

export class Carriage extends EventEmitter {
  readonly stats: CarriageStats = { packetsSent: 0, packetsReceived: 0, rejected: 0 };
  private readonly privateKey: KeyObject;
  private readonly publicKey: Buffer;
  private key: Buffer | undefined;
  private sentCount = 0n;
  private receivedCount = 0n;
  private pending: Buffer[] = [];
  private chunks: Buffer[] = [];
  private bufferedBytes = 0;
  private closed = false;

  constructor(
    readonly socket: ReliableSocket,
    private readonly role: 'client' | 'server',
    private readonly secret: Buffer | undefined,
  ) {
    super();
    const pair = generateKeyPairSync('x25519');
    this.privateKey = pair.privateKey;
    this.publicKey = Buffer.from(pair.publicKey.export({ format: 'jwk' }).x as string, 'base64url');
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('suspend', () => this.emit('suspend'));
    socket.on('reconnect', () => this.emit('resume'));
    socket.on('error', (err: Error) => this.close(err.message));
    socket.on('close', () => this.close('connection closed'));
    const frame = Buffer.alloc(HEADER + PUBLIC_KEY);
    frame.writeUInt32BE(1 + PUBLIC_KEY, 0);
    frame[4] = KEY;
    this.publicKey.copy(frame, HEADER);
    socket.write(frame);
  }

  get ready(): boolean {
    return this.key !== undefined;
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
    this.socket.destroy();
    this.emit('close', reason);
  }

  /** Frames from the stream; one that spans chunks is copied together once, the rest are views. */
  private onData(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.bufferedBytes += chunk.length;
    while (!this.closed && this.bufferedBytes >= HEADER) {
      const head = this.take(HEADER, false);
      const length = head.readUInt32BE(0);
      const type = head[4];
      if (length < 1 || length - 1 > MAX_BODY) return this.close(`malformed frame: length ${length}`);
      if (this.bufferedBytes < 4 + length) return;
      const body = this.take(4 + length, true).subarray(HEADER);
      if (type === KEY) this.onKey(body);
      else if (type === PACKET) this.onPacket(body);
      else return this.close(`malformed frame: type ${type}`);
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
    if (!consume) return out;
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
    return out;
  }

  private onKey(body: Buffer): void {
    if (this.key !== undefined || body.length !== PUBLIC_KEY) return this.close('malformed key exchange');
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
    this.emit('ready');
    const pending = this.pending;
    this.pending = [];
    for (const p of pending) this.send(p);
  }

  private onPacket(body: Buffer): void {
    const from = this.role === 'client' ? 'server' : 'client';
    if (this.key === undefined || body.length <= NUMBER + MAC) {
      this.reject();
      return;
    }
    const number = body.readBigUInt64BE(0);
    const packet = body.subarray(NUMBER, body.length - MAC);
    const expected = this.mac(from, number, packet);
    if (!timingSafeEqual(expected, body.subarray(body.length - MAC)) || number !== this.receivedCount) {
      this.reject();
      return;
    }
    this.receivedCount++;
    this.stats.packetsReceived++;
    // A view: a listener that keeps the packet past its call must copy it.
    this.emit('packet', packet);
  }

  private reject(): void {
    this.stats.rejected++;
    this.emit('rejected');
  }

  private mac(by: 'client' | 'server', number: bigint, packet: Buffer): Buffer {
    const nonce = Buffer.alloc(12);
    nonce[0] = by === 'client' ? 1 : 2;
    nonce.writeBigUInt64BE(number, 4);
    const tag = createCipheriv('chacha20-poly1305', this.key!, nonce, { authTagLength: MAC });
    tag.setAAD(packet, { plaintextLength: 0 });
    tag.final();
    return tag.getAuthTag();
  }
}
