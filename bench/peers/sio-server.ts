// The server side of the socket.io benchmarks (bench/peers/sio-client.ts is
// the other), the counterpart of server.ts: `--job echo` sends every 'd'
// back; `--job bulk` counts N bytes of 'd' in (and with --both sends N out)
// then emits 'done' and reports the CPU time it used since the connection
// came; `--job hold` keeps connections idle and reports memory on request.
// socket.io runs as a user wanting reliability would run it: websocket
// only, connection state recovery on.
// Flow control for bulk: sio-flow.ts.

import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import { Server, type Socket } from 'socket.io';
import { cpuSince, fatal, say } from './say.js';
import { ACK_EVERY, sendBulk } from './sio-flow.js';
import { readJsonLines } from '../../test/support/helpers.js';

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
if (args.job !== 'echo' && args.job !== 'bulk' && args.job !== 'hold') fatal(`unknown --job ${args.job}`);
const bytes = Number(args.bytes);
const writeSize = Number(args['write-size']);

function bulk(socket: Socket): void {
  const cpu = process.cpuUsage();
  const sending = args.both ? sendBulk(socket, bytes, writeSize) : Promise.resolve();
  let received = 0;
  let messages = 0;
  socket.on('d', (d: Buffer) => {
    received += d.byteLength;
    if (++messages % ACK_EVERY === 0) socket.emit('ack', ACK_EVERY);
    if (received === bytes)
      void sending.then(() => {
        socket.emit('done');
        say({ type: 'server-cpu', cpu: cpuSince(cpu), bytes: received });
      });
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
  else if (args.job === 'bulk') bulk(socket);
});
// `--job hold` keeps connections idle; {"type":"memory"} on stdin gets this process's memory after a GC.
readJsonLines<{ type: string }>(process.stdin, (command) => {
  if (command.type !== 'memory') return;
  globalThis.gc?.();
  const m = process.memoryUsage();
  say({ type: 'memory', rss: m.rss, heapUsed: m.heapUsed, external: m.external, connections: io.engine.clientsCount });
});
await new Promise<void>((resolve, reject) => {
  http.once('error', reject);
  http.listen(0, '127.0.0.1', resolve);
});
say({ type: 'ready', port: (http.address() as AddressInfo).port });
process.on('SIGTERM', () => process.exit(0));
