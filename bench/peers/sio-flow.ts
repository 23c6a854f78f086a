// Flow control for socket.io bulk transfers, the same both ways: socket.io
// has no backpressure (emit() only queues), so a sender keeps at most WINDOW
// 'd' messages unacknowledged and the receiver emits 'ack' (a count) every
// ACK_EVERY messages. Not emit() with an ack callback: socket.io does not
// store packets with an ack for recovery, which would turn recovery off for
// the very data we measure; and an ack for every message doubles the packets.

import { randomBytes } from 'node:crypto';

export const WINDOW = 64;
export const ACK_EVERY = 16;

/** What both socket.io sockets (server and client side) offer. */
interface Emitter {
  emit(event: string, ...args: unknown[]): unknown;
  on(event: string, listener: (count: number) => void): unknown;
  off(event: string, listener: (count: number) => void): unknown;
}

/** Sends `total` bytes as 'd' messages of `size` bytes under the window; resolves once all are emitted. */
export function sendBulk(socket: Emitter, total: number, size: number): Promise<void> {
  const block = randomBytes(size);
  return new Promise((resolve) => {
    let sent = 0;
    let unacked = 0;
    const pump = (): void => {
      for (; unacked < WINDOW && sent < total; unacked++) {
        const n = Math.min(size, total - sent);
        socket.emit('d', block.subarray(0, n));
        sent += n;
      }
      if (sent === total) {
        socket.off('ack', onAck);
        resolve();
      }
    };
    const onAck = (count: number): void => {
      unacked -= count;
      pump();
    };
    socket.on('ack', onAck);
    pump();
  });
}
