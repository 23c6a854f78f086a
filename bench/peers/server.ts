// The server side of the raw and rocks benchmarks (bench/peers/client.ts is
// the other): `--job echo` echoes; `--job bulk` counts N bytes in (and with
// --both sends N out once the client's first bytes arrive), then writes one
// byte 0xff to say it is done and reports the CPU time it used meanwhile
// (with `--warmup-bytes W`, one way only, it first counts W bytes and writes
// 0xfe, the client's signal to start timing); `--job unary` answers HTTP/2
// (h2c) requests as a gRPC server answers unary calls: headers, the
// request's body echoed, trailers; `--job hold` keeps connections idle and
// reports memory on request. `--host` and `--listen-port` place it (the
// relay case runs two rocks nodes on 127.0.0.2 and 127.0.0.3).

import { createServer as createH2Server } from 'node:http2';
import type { ReconnectInfo } from '../../src/index.js';
import { readJsonLines } from '../../test/support/helpers.js';
import { sendBulk } from './bulk.js';
import { cpuSince } from './say.js';
import { fatal, listen, peerArgs, say, type Stream, type Transport } from './transport.js';

const args = peerArgs({
  bytes: { type: 'string', default: '0' },
  'write-size': { type: 'string', default: '65536' },
  both: { type: 'boolean', default: false },
  'warmup-bytes': { type: 'string', default: '0' },
  host: { type: 'string', default: '127.0.0.1' },
  'listen-port': { type: 'string', default: '0' },
});
const transport = args.transport as Transport;
const bytes = Number(args.bytes);
const writeSize = Number(args['write-size']);
const warmupBytes = Number(args['warmup-bytes']);
if (warmupBytes > 0 && args.both) fatal('--warmup-bytes is for one-way bulk only, not with --both');
const sockets = new Set<Stream>();
/** Resumes this process served, and how many of them another node relayed here. */
const resumes = { all: 0, relayed: 0 };

function bulk(s: Stream): void {
  let received = 0;
  // Sending waits for the client's first bytes: the client times from then,
  // whatever happened to the connection before (the relay case cuts it first).
  let sending: Promise<void> | undefined;
  // Timed from the first byte after the warm-up (which the client sends
  // only once our 0xfe came) to the end byte: this process's CPU time and
  // the bytes it received meanwhile go out as {"type":"server-cpu"}.
  let timed: { cpu: NodeJS.CpuUsage; from: number } | undefined;
  s.on('data', (d: Buffer) => {
    if (timed === undefined && received >= warmupBytes) timed = { cpu: process.cpuUsage(), from: received };
    sending ??= args.both ? sendBulk(s, bytes, writeSize) : Promise.resolve();
    const before = received;
    received += d.length;
    if (before < warmupBytes && received >= warmupBytes) s.write(Buffer.from([0xfe]));
    if (received === warmupBytes + bytes)
      void sending.then(() => {
        s.write(Buffer.from([0xff]));
        say({ type: 'server-cpu', cpu: cpuSince(timed!.cpu), bytes: received - timed!.from });
      });
  });
}

/** node:http2 over whatever stream the transport gives: each connection is handed to it. */
const h2 = createH2Server();
h2.on('stream', (stream) => {
  const body: Buffer[] = [];
  stream.on('data', (d: Buffer) => body.push(d));
  stream.on('end', () => {
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
    stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
    stream.end(Buffer.concat(body));
  });
  stream.on('error', () => {});
});

const { port } = await listen(
  transport,
  JSON.parse(args.options!),
  (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    s.on('reconnect', (info: ReconnectInfo) => {
      resumes.all++;
      if (info.relayed) resumes.relayed++;
    });
    if (args.job === 'echo') s.pipe(s);
    else if (args.job === 'bulk') bulk(s);
    else if (args.job === 'unary') h2.emit('connection', s);
    else if (args.job === 'hold') s.resume();
  },
  { host: args.host as string, port: Number(args['listen-port']) },
);
say({ type: 'ready', port });

readJsonLines<{ type: string }>(process.stdin, (command) => {
  if (command.type === 'memory') {
    globalThis.gc?.();
    const m = process.memoryUsage();
    say({ type: 'memory', rss: m.rss, heapUsed: m.heapUsed, external: m.external, connections: sockets.size });
  } else if (command.type === 'stats') {
    const cpu = process.cpuUsage();
    say({ type: 'stats', connections: sockets.size, resumes: resumes.all, relayedResumes: resumes.relayed, cpu: (cpu.user + cpu.system) / 1e6 });
  }
});
process.on('SIGTERM', () => process.exit(0));
