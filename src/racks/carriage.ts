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
// start" is proven), and each packet carries its number and an
// HMAC-SHA256 (truncated to 16 bytes) over its direction, its number and its
// bytes. A packet that fails, or whose number is not the next one (a replay),
// is dropped and counted, never injected; the genuine packets after it still
// pass.
//
// Wire format, after rocks' own handshake:
//   frame  = length:u32 type:u8 body (length counts type and body)
//   KEY    (0)  body = X25519 public key, 32 bytes; each side sends one first
//   PACKET (1)  body = number:u64, IP packet, MAC (16 bytes)

import { createHmac, diffieHellman, generateKeyPairSync, hkdfSync, createPublicKey, timingSafeEqual, type KeyObject } from 'node:crypto';
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
  private buffered: Buffer = Buffer.alloc(0);
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
    socket.on('resume', () => this.emit('resume'));
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

  /** Sends one IP packet (queued until the key is agreed). */
  send(packet: Buffer): void {
    if (this.closed) return;
    if (this.key === undefined) {
      this.pending.push(packet);
      return;
    }
    const number = this.sentCount++;
    const mac = this.mac(this.role, number, packet);
    const header = Buffer.alloc(HEADER + NUMBER);
    header.writeUInt32BE(1 + NUMBER + packet.length + MAC, 0);
    header[4] = PACKET;
    header.writeBigUInt64BE(number, HEADER);
    this.socket.cork();
    this.socket.write(header);
    this.socket.write(packet);
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

  private onData(chunk: Buffer): void {
    this.buffered = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
    while (!this.closed && this.buffered.length >= HEADER) {
      const length = this.buffered.readUInt32BE(0);
      const type = this.buffered[4];
      if (length < 1 || length - 1 > MAX_BODY) return this.close(`malformed frame: length ${length}`);
      if (this.buffered.length < 4 + length) return;
      const body = this.buffered.subarray(HEADER, 4 + length);
      this.buffered = this.buffered.subarray(4 + length);
      if (type === KEY) this.onKey(body);
      else if (type === PACKET) this.onPacket(body);
      else return this.close(`malformed frame: type ${type}`);
    }
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
    // A copy: the packet outlives the chunk it came in, which would otherwise stay whole in memory.
    this.emit('packet', Buffer.from(packet));
  }

  private reject(): void {
    this.stats.rejected++;
    this.emit('rejected');
  }

  private mac(by: 'client' | 'server', number: bigint, packet: Buffer): Buffer {
    const n = Buffer.alloc(1 + NUMBER);
    n[0] = by === 'client' ? 1 : 2;
    n.writeBigUInt64BE(number, 1);
    return createHmac('sha256', this.key!).update(n).update(packet).digest().subarray(0, MAC);
  }
}
