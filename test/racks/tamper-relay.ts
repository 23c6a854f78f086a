// An on-path attacker between two rack daemons: a real TCP relay that
// follows rocks' framing (EDP announcement, then type:u8 length:u32 frames,
// DATA carrying offset:u64 and the stream's bytes) and the carriage's inside
// it (length:u32 type:u8 body), and alters one byte where it is told to:
//
//   'payload'  a byte in the middle of the next carried packet (a PACKET
//              frame with at least 64 bytes of packet): its tag fails.
//   'length'   the third byte of the next carriage frame's length (±16 KiB):
//              the framing after it is broken.
//
// It changes bytes in place, never adds or removes any, so rocks' own framing
// and acknowledgements stay consistent and rocks sees nothing wrong: what
// rocks carries is not authenticated (docs/PROTOCOL.md §9). Only links that
// start with HELLO (a session's first link) are followed; a resumed link
// would start mid-stream and is relayed untouched.

import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { encodeAnnouncement, ROCKS } from '../../src/edp/announcement.js';
import { FrameType } from '../../src/protocol/frames.js';

export type Tampering = 'payload' | 'length';

export interface Tampered {
  kind: Tampering;
  /** Index of the altered frame among the carriage frames of its direction. */
  frame: number;
  /** The packet number of a PACKET frame whose payload was altered. */
  number?: bigint;
  /** The frame's length before and after. */
  length?: [number, number];
}

const ANNOUNCEMENT = encodeAnnouncement([ROCKS]).length;
const PACKET = 1;

/** Follows one direction of one rocks link and alters what `take` hands it. */
export class CarriageTamperer {
  private announcementLeft = ANNOUNCEMENT;
  private readonly rocksHead = Buffer.alloc(5);
  private rocksHeadHave = 0;
  private first = true;
  /** Not a session's first link (or not rocks): relayed untouched. */
  private lost = false;
  private offsetLeft = 0;
  private dataLeft = 0;
  private skipLeft = 0;
  private readonly head = Buffer.alloc(13);
  private headHave = 0;
  private bodyAt = 0;
  private bodyLength = 0;
  private target: { kind: Tampering; at: number } | undefined;
  /** Carriage frames seen. */
  frames = 0;

  constructor(
    /** The next tampering asked for, if any; called at each frame, takes it when it applies. */
    private readonly take: (kind: Tampering) => boolean,
    private readonly done: (t: Tampered) => void,
  ) {}

  /** Alters `chunk` in place as planned. */
  feed(chunk: Buffer): void {
    let i = 0;
    while (i < chunk.length && !this.lost) {
      if (this.announcementLeft > 0) {
        const n = Math.min(this.announcementLeft, chunk.length - i);
        this.announcementLeft -= n;
        i += n;
      } else if (this.skipLeft > 0) {
        const n = Math.min(this.skipLeft, chunk.length - i);
        this.skipLeft -= n;
        i += n;
      } else if (this.offsetLeft > 0) {
        const n = Math.min(this.offsetLeft, chunk.length - i);
        this.offsetLeft -= n;
        i += n;
      } else if (this.dataLeft > 0) {
        const n = Math.min(this.dataLeft, chunk.length - i);
        this.carriage(chunk, i, n);
        this.dataLeft -= n;
        i += n;
      } else {
        this.rocksHead[this.rocksHeadHave++] = chunk[i++];
        if (this.rocksHeadHave < 5) continue;
        this.rocksHeadHave = 0;
        const type = this.rocksHead[0];
        const length = this.rocksHead.readUInt32BE(1);
        if (this.first && type !== FrameType.HELLO && type !== FrameType.WELCOME) this.lost = true;
        this.first = false;
        if (type === FrameType.DATA) {
          this.offsetLeft = 8;
          this.dataLeft = length - 8;
        } else this.skipLeft = length;
      }
    }
  }

  /** `n` bytes of the carriage's stream at chunk[i]. */
  private carriage(chunk: Buffer, i: number, n: number): void {
    const end = i + n;
    while (i < end) {
      if (this.headHave < 5) {
        if (this.headHave === 0 && this.frames > 0 && this.target === undefined && this.take('length')) this.target = { kind: 'length', at: -1 };
        // The relay keeps following the genuine frames (it keeps the byte as it was).
        this.head[this.headHave++] = chunk[i];
        if (this.headHave === 3 && this.target?.kind === 'length') {
          chunk[i] ^= 0x40;
          this.target = { kind: 'length', at: 0 };
        }
        i++;
        if (this.headHave === 5) {
          const length = this.head.readUInt32BE(0);
          if (this.target?.kind === 'length' && this.target.at === 0) {
            this.done({ kind: 'length', frame: this.frames, length: [length, length ^ 0x4000] });
            this.target = undefined;
          }
          this.bodyLength = length - 1;
          this.bodyAt = 0;
          if (this.head[4] === PACKET && this.bodyLength >= 8 + 64 + 16 && this.target === undefined && this.take('payload'))
            this.target = { kind: 'payload', at: 8 + Math.floor((this.bodyLength - 24) / 2) };
          this.head.fill(0, 0, 4);
          if (this.bodyLength <= 0) this.endFrame();
        }
        continue;
      }
      const n = Math.min(this.bodyLength - this.bodyAt, end - i);
      if (this.bodyAt < 8) chunk.copy(this.head, 5 + this.bodyAt, i, i + Math.min(n, 8 - this.bodyAt));
      const t = this.target;
      if (t?.kind === 'payload' && t.at >= this.bodyAt && t.at < this.bodyAt + n) {
        chunk[i + (t.at - this.bodyAt)] ^= 0xff;
        this.done({ kind: 'payload', frame: this.frames, number: this.head.readBigUInt64BE(5) });
        this.target = undefined;
      }
      this.bodyAt += n;
      i += n;
      if (this.bodyAt === this.bodyLength) this.endFrame();
    }
  }

  private endFrame(): void {
    this.headHave = 0;
    this.frames++;
  }
}

/** A TCP relay to `upstream` that tampers with what its clients send, as asked with `arm`. */
export class TamperRelay {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private readonly armed: Tampering[] = [];
  readonly tampered: Tampered[] = [];
  connections = 0;

  constructor(private readonly upstream: { host: string; port: number }) {
    // Half-open both ways: EDP's probe half-closes at once and reads the answer.
    this.server = createServer({ allowHalfOpen: true }, (down) => this.relay(down));
  }

  async listen(port = 0, host = '127.0.0.1'): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => resolve());
    });
    return (this.server.address() as AddressInfo).port;
  }

  /** Alters the next frame of this kind the clients send. */
  arm(kind: Tampering): void {
    this.armed.push(kind);
  }

  private relay(down: Socket): void {
    this.connections++;
    const up = connect({ ...this.upstream, allowHalfOpen: true });
    this.sockets.add(down).add(up);
    down.setNoDelay(true);
    up.setNoDelay(true);
    const tamperer = new CarriageTamperer(
      (kind) => {
        if (this.armed[0] !== kind) return false;
        this.armed.shift();
        return true;
      },
      (t) => this.tampered.push(t),
    );
    down.on('data', (chunk: Buffer) => {
      tamperer.feed(chunk);
      if (!up.write(chunk)) down.pause();
    });
    up.on('drain', () => down.resume());
    up.on('data', (chunk: Buffer) => {
      if (!down.write(chunk)) up.pause();
    });
    down.on('drain', () => up.resume());
    down.on('end', () => up.end());
    up.on('end', () => down.end());
    const close = (): void => {
      down.destroy();
      up.destroy();
      this.sockets.delete(down);
      this.sockets.delete(up);
    };
    down.on('error', close).on('close', close);
    up.on('error', close).on('close', close);
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
