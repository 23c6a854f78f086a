// The client side of the raw and rocks benchmarks: one job per run, one
// {"type":"result"} line at the end (bench/core/process.ts).
//
//   bulk      --bytes N --write-size W [--both]      seconds to move N (2N) bytes, CPU seconds used
//             [--warmup-bytes B]                     after B bytes untimed (one way): a warm process
//   pingpong  --size S --count M --warmup K          round-trip p50 and p99 (ms)
//   unary     --size S --count M --warmup K          HTTP/2 calls one after another: mean, p50 (ms)
//   setup     --count K --concurrent C [--delay MS] [--warmup W]
//                                                    connect to first echoed byte (ms), after W connections
//                                                    whose times are reported apart (cold); --delay: through a
//                                                    proxy here that delays each chunk MS/2 (an MS round trip)
//   detect    --repeats R                            black hole to 'suspend' (ms)     (rocks)
//   resume    --repeats R --outage MS                path back to first new byte (ms) (rocks)
//   hold      --count N [--inflight B]               N idle connections; memory on request

import { once } from 'node:events';
import { connect as connectH2, type ClientHttp2Session } from 'node:http2';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { createInterface } from 'node:readline';
import type { ReconnectInfo } from '../../src/index.js';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { timeBulk } from './bulk.js';
import { dial, fatal, peerArgs, say, type Stream, type Transport } from './transport.js';

const args = peerArgs({
  bytes: { type: 'string', default: '0' },
  'write-size': { type: 'string', default: '65536' },
  both: { type: 'boolean', default: false },
  'warmup-bytes': { type: 'string', default: '0' },
  size: { type: 'string', default: '64' },
  count: { type: 'string', default: '1000' },
  warmup: { type: 'string', default: '100' },
  concurrent: { type: 'string', default: '100' },
  repeats: { type: 'string', default: '5' },
  outage: { type: 'string', default: '2000' },
  inflight: { type: 'string', default: '0' },
  warm: { type: 'boolean', default: false },
  delay: { type: 'string', default: '0' },
});
const transport = args.transport as Transport;
const options = JSON.parse(args.options!) as { failureTimeout?: number; heartbeatInterval?: number };
const port = Number(args.port);

async function connected(s: Stream): Promise<Stream> {
  await once(s, 'connect');
  return s;
}

async function bulk(): Promise<void> {
  const bytes = Number(args.bytes);
  const s = await connected(dial(transport, port, options));
  const { seconds, cpu } = await timeBulk(s, bytes, Number(args['write-size']), args.both as boolean, Number(args['warmup-bytes']));
  s.destroy();
  say({ type: 'result', seconds, bytes: args.both ? 2 * bytes : bytes, cpu });
}

/** Sends `size` bytes and waits until as many came back: one round trip, in ms. */
function roundTrip(s: Stream, message: Buffer): Promise<number> {
  return new Promise((resolve) => {
    let got = 0;
    const start = performance.now();
    const onData = (d: Buffer): void => {
      got += d.length;
      if (got >= message.length) {
        s.off('data', onData);
        resolve(performance.now() - start);
      }
    };
    s.on('data', onData);
    s.write(message);
  });
}

async function pingpong(): Promise<void> {
  const s = await connected(dial(transport, port, options));
  const message = Buffer.alloc(Number(args.size), 7);
  const rtts: number[] = [];
  for (let i = 0; i < Number(args.warmup); i++) await roundTrip(s, message);
  for (let i = 0; i < Number(args.count); i++) rtts.push(await roundTrip(s, message));
  rtts.sort((a, b) => a - b);
  s.destroy();
  say({ type: 'result', p50: rtts[Math.floor(rtts.length * 0.5)], p99: rtts[Math.floor(rtts.length * 0.99)] });
}

/** One call as gRPC makes a unary one (POST, a body, the echo and trailers back); fails on a wrong answer. */
function call(session: ClientHttp2Session, body: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = session.request({ ':method': 'POST', ':path': '/bench.Echo/Call', 'content-type': 'application/grpc', te: 'trailers' });
    const got: Buffer[] = [];
    req.on('data', (d: Buffer) => got.push(d));
    req.on('error', reject);
    req.on('end', () => (Buffer.concat(got).equals(body) ? resolve() : reject(new Error('the answer is not the request echoed'))));
    req.end(body);
  });
}

/**
 * Unary calls over node:http2 (h2c) on one connection of the transport, one
 * after another, as a gRPC client makes them: HTTP/2 writes its frames in
 * several small writes, which a hop with Nagle's algorithm holds back. The
 * mean shows how often that happens; p50 hides it when under half the calls stall.
 */
async function unary(): Promise<void> {
  const session = connectH2('http://localhost', { createConnection: () => dial(transport, port, options) });
  session.on('error', fatal);
  const body = Buffer.alloc(Number(args.size), 9);
  for (let i = 0; i < Number(args.warmup); i++) await call(session, body);
  const times: number[] = [];
  const start = performance.now();
  for (let i = 0; i < Number(args.count); i++) {
    const t = performance.now();
    await call(session, body);
    times.push(performance.now() - t);
  }
  const mean = (performance.now() - start) / times.length;
  times.sort((a, b) => a - b);
  session.destroy();
  say({ type: 'result', mean, p50: times[Math.floor(times.length * 0.5)], p99: times[Math.floor(times.length * 0.99)] });
}

/** Connect, send one byte, wait for its echo, close: ms. */
async function oneConnection(to = port): Promise<number> {
  const start = performance.now();
  const s = dial(transport, to, options);
  s.write(Buffer.from([1]));
  await once(s, 'data');
  const ms = performance.now() - start;
  s.destroy();
  return ms;
}

async function setup(): Promise<void> {
  const delay = Number(args.delay);
  const proxy = delay > 0 ? new FaultProxy(port) : undefined;
  const to = proxy ? await proxy.listen() : port;
  proxy?.setDelay(delay / 2);
  if (args.warm) await oneConnection(to); // fills the EDP verdict cache: what 'cached' measures
  // The first connections of a process run cold code (interpreted, not yet optimized): what they cost is kept apart.
  const cold: number[] = [];
  for (let i = 0; i < Number(args.warmup); i++) cold.push(await oneConnection(to));
  const sequential: number[] = [];
  for (let i = 0; i < Number(args.count); i++) sequential.push(await oneConnection(to));
  const start = performance.now();
  await Promise.all(Array.from({ length: Number(args.concurrent) }, () => oneConnection(to)));
  say({ type: 'result', cold, sequential, concurrent: performance.now() - start });
}

/** A rocks connection through a fault proxy in this process, streaming a little both ways. */
async function throughProxy(): Promise<{ proxy: FaultProxy; s: Stream }> {
  const proxy = new FaultProxy(port);
  const s = await connected(dial(transport, await proxy.listen(), options));
  return { proxy, s };
}

async function detect(): Promise<void> {
  const detection: number[] = [];
  for (let i = 0; i < Number(args.repeats); i++) {
    const { proxy, s } = await throughProxy();
    s.resume();
    await sleep(500);
    const start = performance.now();
    proxy.blackhole();
    await once(s, 'suspend');
    detection.push(performance.now() - start);
    s.destroy();
    await proxy.close();
  }
  say({ type: 'result', detection, bound: (options.failureTimeout ?? 5000) + (options.heartbeatInterval ?? (options.failureTimeout ?? 5000) / 5) });
}

/**
 * Streams 4 MiB/s each way through the proxy (the echo server sends it back),
 * black-holes the path for --outage ms, heals it, and times the first byte
 * that arrives after the heal. The last repetition's bytes-delivered
 * timeline goes into the report.
 */
async function resume(): Promise<void> {
  const resumes: number[] = [];
  const replayed: number[] = [];
  const lost: number[] = [];
  let timeline: [number, number][] = [];
  let marks: [number, string][] = [];
  const outage = Number(args.outage);
  for (let i = 0; i < Number(args.repeats); i++) {
    const { proxy, s } = await throughProxy();
    const t0 = performance.now();
    let received = 0;
    let healedAt: number | undefined;
    let firstAfterHeal: number | undefined;
    s.on('data', (d: Buffer) => {
      received += d.length;
      if (healedAt !== undefined && firstAfterHeal === undefined) firstAfterHeal = performance.now();
    });
    let info: ReconnectInfo | undefined;
    s.on('reconnect', (r: ReconnectInfo) => (info = r));
    const points: [number, number][] = [];
    const sampler = setInterval(() => points.push([Math.round(performance.now() - t0), received]), 20);
    const chunk = Buffer.alloc(40 * 1024, 3);
    let written = 0;
    const writer = setInterval(() => {
      s.write(chunk);
      written += chunk.length;
    }, 10);
    await sleep(1000);
    const broken = performance.now();
    proxy.blackhole();
    await sleep(outage);
    healedAt = performance.now();
    proxy.heal();
    while (firstAfterHeal === undefined) await sleep(5);
    resumes.push(firstAfterHeal - healedAt);
    await sleep(1000);
    clearInterval(writer);
    // Every byte written comes back from the echo server, or it was lost.
    const stopped = performance.now();
    while (received < written && performance.now() - stopped < 5000) await sleep(20);
    lost.push(written - received);
    clearInterval(sampler);
    replayed.push((info?.replayedOut ?? 0) + (info?.replayedIn ?? 0));
    timeline = points;
    marks = [
      [Math.round(broken - t0), 'black hole'],
      [Math.round(healedAt - t0), 'path back'],
    ];
    s.destroy();
    await proxy.close();
  }
  say({ type: 'result', resume: resumes, replayed, lost, timeline, marks });
}

async function hold(): Promise<void> {
  const count = Number(args.count);
  const inflight = Number(args.inflight);
  const proxy = inflight > 0 ? new FaultProxy(port) : undefined;
  const target = proxy ? await proxy.listen() : port;
  const memory = () => {
    globalThis.gc?.();
    const m = process.memoryUsage();
    return { rss: m.rss, heapUsed: m.heapUsed, external: m.external };
  };
  const before = memory();
  const sockets: Stream[] = [];
  let suspended = 0;
  // Opened in batches, so that a listen backlog is never the limit.
  for (let i = 0; i < count; i += 500) {
    const batch = Array.from({ length: Math.min(500, count - i) }, () => dial(transport, target, options));
    await Promise.all(batch.map((s) => once(s, 'connect')));
    for (const s of batch) s.on('error', () => {});
    sockets.push(...batch);
  }
  if (proxy) {
    // Suspended, each holding `inflight` bytes the peer never acknowledged.
    proxy.blackhole();
    const block = Buffer.alloc(inflight, 5);
    for (const s of sockets) s.write(block);
    // A socket that fails instead (a server limit) must not hang the run: it is counted out.
    const states = await Promise.all(sockets.map((s) => Promise.race([once(s, 'suspend').then(() => 1), once(s, 'close').then(() => 0)])));
    suspended = states.reduce((a: number, b: number) => a + b, 0);
  }
  await sleep(500);
  say({ type: 'ready', before, after: memory(), count, suspended });
  createInterface({ input: process.stdin }).on('line', () => {
    say({ type: 'result', after: memory() });
    process.exit(0);
  });
}

const jobs: Record<string, () => Promise<void>> = { bulk, pingpong, unary, setup, detect, resume, hold };
const job = jobs[args.job ?? ''];
if (!job) {
  say({ type: 'fatal', message: `unknown job ${args.job}` });
  process.exit(2);
}
await job();
if (args.job !== 'hold') process.exit(0);
