// The client side of the socket.io benchmarks, against sio-server.ts: the
// counterpart of client.ts. Each job prints one {"type":"result"} line:
//   bulk      --bytes N --write-size W [--both]  {seconds, bytes}
//   pingpong  --size S --count M --warmup K      {p50, p99} round trips, ms
//   setup     --count K --concurrent C           {sequential: ms[], concurrent: ms}
//   detect    [--repeats R]                      {detection: ms | ms[], bound: ms}
// Flow control for bulk: sio-flow.ts.

import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { io, type Socket } from 'socket.io-client';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { quantile } from '../core/stats.js';
import { fatal, say } from './say.js';
import { ACK_EVERY, sendBulk } from './sio-flow.js';



const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    job: { type: 'string' },
    bytes: { type: 'string', default: '0' },
    'write-size': { type: 'string', default: '65536' },
    both: { type: 'boolean', default: false },
    size: { type: 'string', default: '64' },
    count: { type: 'string', default: '1000' },
    warmup: { type: 'string', default: '100' },
    concurrent: { type: 'string', default: '100' },
    repeats: { type: 'string' },
  },
});
const port = Number(args.port);

/** A new connection (never a shared Manager), websocket only; the server declines compression. */
function open(toPort = port, reconnection = true): Socket {
  const socket = io(`http://127.0.0.1:${toPort}`, { transports: ['websocket'], forceNew: true, reconnection });
  // A refused connection would otherwise be retried silently forever.
  socket.on('connect_error', fatal);
  return socket;
}

const once = <T = unknown>(socket: Socket, event: string): Promise<T> => new Promise((resolve) => socket.once(event, resolve));

async function bulk(): Promise<object> {
  const bytes = Number(args.bytes);
  const socket = open();
  // Listening before connecting: with --both the server starts sending as soon as it accepts.
  let received = 0;
  let messages = 0;
  let allIn = (): void => {};
  const receiving = args.both ? new Promise<void>((resolve) => (allIn = resolve)) : Promise.resolve();
  socket.on('d', (d: Buffer) => {
    received += d.byteLength;
    if (++messages % ACK_EVERY === 0) socket.emit('ack', ACK_EVERY);
    if (received === bytes) allIn();
  });
  const done = once(socket, 'done');
  await once(socket, 'connect');
  const start = performance.now();
  await sendBulk(socket, bytes, Number(args['write-size']));
  await Promise.all([done, receiving]);
  const seconds = (performance.now() - start) / 1000;
  socket.close();
  return { seconds, bytes: args.both ? 2 * bytes : bytes };
}

async function pingpong(): Promise<object> {
  const [count, warmup] = [Number(args.count), Number(args.warmup)];
  const payload = randomBytes(Number(args.size));
  const socket = open();
  await once(socket, 'connect');
  const rtts: number[] = [];
  for (let i = 0; i < warmup + count; i++) {
    const start = performance.now();
    const echo = once(socket, 'd');
    socket.emit('d', payload);
    await echo;
    if (i >= warmup) rtts.push(performance.now() - start);
  }
  socket.close();
  return { p50: quantile(rtts, 0.5), p99: quantile(rtts, 0.99) };
}

/** Opens a connection, sends one byte, waits for its echo, closes: ms from open to echo. */
async function roundTrip(): Promise<number> {
  const start = performance.now();
  const socket = open();
  const echo = once(socket, 'd');
  // Emitted before the connection is up: socket.io buffers it and sends it on connect.
  socket.emit('d', Buffer.alloc(1));
  await echo;
  const ms = performance.now() - start;
  socket.close();
  return ms;
}

async function setup(): Promise<object> {
  const sequential: number[] = [];
  for (let i = 0; i < Number(args.count); i++) sequential.push(await roundTrip());
  const start = performance.now();
  await Promise.all(Array.from({ length: Number(args.concurrent) }, roundTrip));
  return { sequential, concurrent: performance.now() - start };
}

/** Black-holes an established connection and times socket.io's own detection (its ping timeout). */
async function detectOnce(): Promise<{ detection: number; bound: number }> {
  const proxy = new FaultProxy(port);
  // No reconnection: it would only dial the black hole again.
  const socket = open(await proxy.listen(), false);
  // The server's ping settings reach the client in the engine.io handshake.
  const handshake = new Promise<{ pingInterval: number; pingTimeout: number }>((resolve) => socket.io.engine.once('handshake', resolve));
  await once(socket, 'connect');
  const { pingInterval, pingTimeout } = await handshake;
  await sleep(500);
  const disconnected = once<string>(socket, 'disconnect');
  const start = performance.now();
  proxy.blackhole();
  const reason = await disconnected;
  const detection = performance.now() - start;
  if (reason !== 'ping timeout') fatal(`disconnected by '${reason}', not a ping timeout`);
  socket.close();
  await proxy.close();
  return { detection, bound: pingInterval + pingTimeout };
}

async function detect(): Promise<object> {
  if (args.repeats === undefined) return detectOnce();
  const runs: { detection: number; bound: number }[] = [];
  for (let i = 0; i < Number(args.repeats); i++) runs.push(await detectOnce());
  return { detection: runs.map((r) => r.detection), bound: runs[0]?.bound };
}

const jobs: Record<string, () => Promise<object>> = { bulk, pingpong, setup, detect };
const job = jobs[args.job ?? ''];
if (!job) fatal(`unknown --job ${args.job}`);
if (!Number.isInteger(port) || port <= 0) fatal('--port is required');
say({ type: 'result', ...(await job()) });
process.exit(0);
