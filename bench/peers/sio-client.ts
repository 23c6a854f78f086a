// The client side of the socket.io benchmarks, against sio-server.ts: the
// counterpart of client.ts. Each job prints one {"type":"result"} line:
//   bulk      --bytes N --write-size W [--both]  {seconds, bytes, cpu} (CPU seconds used)
//   pingpong  --size S --count M --warmup K      {p50, p99} round trips, ms
//   setup     --count K --concurrent C --warmup W {cold: ms[], sequential: ms[], concurrent: ms}
//   detect    [--repeats R]                      {detection: ms | ms[], bound: ms}
//   resume    --repeats R --outage MS             {resume: ms[], lost: bytes[], recovered: boolean[]}
//   hold      --count N                          N idle connections, memory before and after (bench/cases/memory.ts)
// Flow control for bulk: sio-flow.ts.

import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { io, type Socket } from 'socket.io-client';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { quantile } from '../core/stats.js';
import { cpuSince, fatal, say } from './say.js';
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
    outage: { type: 'string', default: '3000' },
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
  const cpu = process.cpuUsage();
  await sendBulk(socket, bytes, Number(args['write-size']));
  await Promise.all([done, receiving]);
  const seconds = (performance.now() - start) / 1000;
  socket.close();
  return { seconds, bytes: args.both ? 2 * bytes : bytes, cpu: cpuSince(cpu) };
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
  const cold: number[] = []; // as bench/peers/client.ts: the first connections of the process, apart
  for (let i = 0; i < Number(args.warmup); i++) cold.push(await roundTrip());
  const sequential: number[] = [];
  for (let i = 0; i < Number(args.count); i++) sequential.push(await roundTrip());
  const start = performance.now();
  await Promise.all(Array.from({ length: Number(args.concurrent) }, roundTrip));
  return { cold, sequential, concurrent: performance.now() - start };
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

/**
 * Resume, as bench/peers/client.ts measures it for rocks: 40 KiB messages
 * every 10 ms, each numbered, echoed by the server; the path black-holed for
 * --outage ms, then back. Times the path's return to the first echo after
 * it, then stops sending, waits for stragglers and counts the bytes of
 * messages never echoed. socket.io runs with its defaults for reconnection
 * (and its 20 s connect timeout): what a user gets.
 */
async function resumeOnce(outage: number): Promise<{ resume: number; lost: number; recovered: boolean }> {
  const proxy = new FaultProxy(port);
  const socket = io(`http://127.0.0.1:${await proxy.listen()}`, { transports: ['websocket'], forceNew: true });
  await once(socket, 'connect');
  const echoed = new Set<number>();
  let healedAt: number | undefined;
  let firstAfterHeal: number | undefined;
  socket.on('d', (d: Buffer) => {
    echoed.add(d.readUInt32BE(0));
    if (healedAt !== undefined && firstAfterHeal === undefined) firstAfterHeal = performance.now();
  });
  let sent = 0;
  const writer = setInterval(() => {
    const message = Buffer.alloc(RESUME_MESSAGE, 3);
    message.writeUInt32BE(sent++, 0);
    socket.emit('d', message);
  }, 10);
  await sleep(1000);
  proxy.blackhole();
  await sleep(outage);
  healedAt = performance.now();
  proxy.heal();
  while (firstAfterHeal === undefined && performance.now() - healedAt < 60_000) await sleep(5);
  if (firstAfterHeal === undefined) fatal('socket.io: nothing echoed within 60 s of the path coming back');
  await sleep(1000);
  clearInterval(writer);
  const stopped = performance.now();
  while (echoed.size < sent && performance.now() - stopped < 5000) await sleep(20);
  const recovered = socket.recovered;
  socket.close();
  await proxy.close();
  return { resume: firstAfterHeal - healedAt, lost: (sent - echoed.size) * RESUME_MESSAGE, recovered };
}

const RESUME_MESSAGE = 40 * 1024;

async function resume(): Promise<object> {
  const runs: { resume: number; lost: number; recovered: boolean }[] = [];
  for (let i = 0; i < Number(args.repeats ?? 1); i++) runs.push(await resumeOnce(Number(args.outage)));
  return { resume: runs.map((r) => r.resume), lost: runs.map((r) => r.lost), recovered: runs.map((r) => r.recovered) };
}

/** N idle connections; says {"type":"ready","before","after"} (memory, after a GC) and holds them until stopped. */
async function hold(): Promise<object> {
  const memory = () => {
    globalThis.gc?.();
    const m = process.memoryUsage();
    return { rss: m.rss, heapUsed: m.heapUsed, external: m.external };
  };
  const count = Number(args.count);
  const before = memory();
  const sockets: Socket[] = [];
  for (let i = 0; i < count; i += 500) {
    const batch = Array.from({ length: Math.min(500, count - i) }, () => open());
    await Promise.all(batch.map((s) => once(s, 'connect')));
    sockets.push(...batch);
  }
  await sleep(500);
  say({ type: 'ready', before, after: memory(), count: sockets.length, suspended: 0 });
  return new Promise<object>(() => {}); // until the case stops this process
}

const jobs: Record<string, () => Promise<object>> = { bulk, pingpong, setup, detect, resume, hold };
const job = jobs[args.job ?? ''];
if (!job) fatal(`unknown --job ${args.job}`);
if (!Number.isInteger(port) || port <= 0) fatal('--port is required');
say({ type: 'result', ...(await job()) });
process.exit(0);
