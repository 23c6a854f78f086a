// Strangers over real sockets: raw rocks clients that do as little as an
// attacker needs (HELLO, then an ACK or a CONFIRM, a few bytes, and vanish or
// stall; or HELLO with data behind it, and vanish), to check that they
// cannot crowd a server.

import { once } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import { encodeAnnouncement, parseAnnouncement, ROCKS } from '../../src/edp/announcement.js';
import {
  encodeAck,
  encodeConfirm,
  encodeDataHeader,
  encodeHello,
  FrameParser,
  FrameType,
  type Frame,
  type WelcomeFrame,
} from '../../src/protocol/frames.js';
import { confirmMac, deriveSessionKey, freshKeyPair } from '../../src/protocol/keys.js';

const ANNOUNCEMENT = encodeAnnouncement([ROCKS]);

export interface StrangerOptions {
  /** Prove the key with CONFIRM (a stranger that runs X25519), or just ACK (one that does not). */
  confirm: boolean;
  /** The window its HELLO and ACK advertise (0: it never takes a byte). */
  window?: number;
  /** Data bytes it sends after its first frames (at most what WELCOME allowed). */
  send?: number;
  /** Leave the connection open after sending, instead of vanishing. */
  stay?: boolean;
  /** Send this many data bytes right behind the HELLO (PROTOCOL.md §3.8), then vanish at WELCOME without answering it. */
  early?: number;
}

export interface Stranger {
  socket: Socket;
  /** What the server sent after its announcement. */
  frames: Frame[];
  welcome: WelcomeFrame | undefined;
  /** Resolves when the server closed the connection (or we did). */
  closed: Promise<void>;
}

/** Connects, says HELLO, answers WELCOME as `options` say; resolves once that answer is written. */
export async function stranger(port: number, options: StrangerOptions): Promise<Stranger> {
  const keys = freshKeyPair();
  const window = options.window ?? 65536;
  const socket = netConnect(port, '127.0.0.1');
  socket.on('error', () => {});
  const closed = once(socket, 'close').then(() => undefined);
  const frames: Frame[] = [];
  let received = Buffer.alloc(0);
  let parser: FrameParser | undefined;
  const result: Stranger = { socket, frames, welcome: undefined, closed };
  const answered = new Promise<void>((resolve) => {
    socket.on('data', (chunk: Buffer) => {
      if (parser === undefined) {
        received = Buffer.concat([received, chunk]);
        const r = parseAnnouncement(received);
        if (r.kind !== 'announcement') return;
        parser = new FrameParser();
        chunk = received.subarray(r.length);
      }
      parser.push(chunk);
      for (let f = parser.next(); f !== undefined; f = parser.next()) {
        frames.push(f);
        if (f.type !== FrameType.WELCOME || result.welcome !== undefined) continue;
        result.welcome = f;
        if (options.early !== undefined) {
          socket.end();
          resolve();
          continue;
        }
        const out: Buffer[] = [];
        if (options.confirm) {
          const key = deriveSessionKey(keys, f.publicKey, f.sessionId, keys.publicKey, f.publicKey);
          out.push(encodeConfirm(confirmMac(key, { version: 1, sessionId: f.sessionId, clientPublic: keys.publicKey, serverPublic: f.publicKey })));
        }
        out.push(encodeAck(0, window));
        const n = Math.min(options.send ?? 1, f.window);
        for (let at = 0; at < n; at += 65536) {
          const size = Math.min(65536, n - at);
          out.push(encodeDataHeader(at, size), Buffer.alloc(size, 0x73));
        }
        socket.write(Buffer.concat(out), () => {
          if (!options.stay) socket.end();
          resolve();
        });
      }
    });
    void closed.then(() => resolve());
  });
  await once(socket, 'connect');
  const early = options.early === undefined ? [] : [encodeDataHeader(0, options.early), Buffer.alloc(options.early, 0x65)];
  socket.write(Buffer.concat([ANNOUNCEMENT, encodeHello(1, 1, keys.publicKey, window), ...early]));
  await answered;
  return result;
}
