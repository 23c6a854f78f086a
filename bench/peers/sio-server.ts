// The server side of the socket.io benchmarks (bench/peers/sio-client.ts is
// the other), the counterpart of server.ts: `--job echo` sends every 'd'
// back; `--job bulk` counts N bytes of 'd' in (and with --both sends N out)
// then emits 'done'. socket.io runs as a user wanting reliability would run
// it: websocket only, connection state recovery on.
//
// Flow control, the same both ways (sio-client.ts has a copy): socket.io has
// no backpressure, emit() only queues, so a sender keeps at most WINDOW 'd'
// messages unacknowledged and the receiver emits 'ack' (a count) every
// ACK_EVERY messages. Not emit() with an ack callback: socket.io does not
// store packets with an ack for recovery, which would turn recovery off for
// the very data we measure; and an ack for every message doubles the packets.

import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import { Server, type Socket } from 'socket.io';

const WINDOW = 64;
const ACK_EVERY = 16;

const say = (message: { type: string; [key: string]: unknown }): void => void process.stdout.write(`${JSON.stringify(message)}\n`);
function fatal(err: unknown): never {
  say({ type: 'fatal', message: err instanceof Error ? err.message : String(err) });
  process.exit(1);
}
process.on('uncaughtException', fatal);

const { values: args } = parseArgs({
  options: {
    job: { type: 'string' },
    bytes: { type: 'string', default: '0' },
    'write-size': { type: 'string', default: '65536' },
    both: { type: 'boolean', default: false },
    'ping-interval': { type: 'string' },
    'ping-timeout': { type: 'string' },
  },
});
if (args.job !== 'echo' && args.job !== 'bulk') fatal(`unknown --job ${args.job}`);
const bytes = Number(args.bytes);
const writeSize = Number(args['write-size']);

/** Sends `total` bytes as 'd' messages of `size` bytes under the window; resolves once all are emitted. */
function sendBulk(socket: Socket, total: number, size: number): Promise<void> {
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

function bulk(socket: Socket): void {
  const sending = args.both ? sendBulk(socket, bytes, writeSize) : Promise.resolve();
  let received = 0;
  let messages = 0;
  socket.on('d', (d: Buffer) => {
    received += d.byteLength;
    if (++messages % ACK_EVERY === 0) socket.emit('ack', ACK_EVERY);
    if (received === bytes) void sending.then(() => socket.emit('done'));
  });
}

const http = createServer();
const io = new Server(http, {
  transports: ['websocket'],
  connectionStateRecovery: { maxDisconnectionDuration: 2 * 60 * 1000 },
  // The default (1 MB) would already pass 64 KiB messages; this leaves room for larger write sizes.
  maxHttpBufferSize: 64 * 1024 * 1024,
  perMessageDeflate: false,
  // Unset: socket.io's defaults (25 s and 20 s).
  ...(args['ping-interval'] ? { pingInterval: Number(args['ping-interval']) } : {}),
  ...(args['ping-timeout'] ? { pingTimeout: Number(args['ping-timeout']) } : {}),
});
io.on('connection', (socket) => {
  if (args.job === 'echo') socket.on('d', (d: Buffer) => socket.emit('d', d));
  else bulk(socket);
});
await new Promise<void>((resolve, reject) => {
  http.once('error', reject);
  http.listen(0, '127.0.0.1', resolve);
});
say({ type: 'ready', port: (http.address() as AddressInfo).port });
process.on('SIGTERM', () => process.exit(0));
