// The server side of the raw and rocks benchmarks (bench/peers/client.ts is
// the other): `--job echo` echoes; `--job bulk` counts N bytes in (and with
// --both sends N out), then writes one byte 0xff to say it is done; `--job
// hold` keeps connections idle and reports memory on request.

import { sendBulk } from './bulk.js';
import { listen, peerArgs, say, type Stream, type Transport } from './transport.js';
import { readJsonLines } from '../../test/support/helpers.js';

const args = peerArgs({
  bytes: { type: 'string', default: '0' },
  'write-size': { type: 'string', default: '65536' },
  both: { type: 'boolean', default: false },
});
const transport = args.transport as Transport;
const bytes = Number(args.bytes);
const writeSize = Number(args['write-size']);
const sockets = new Set<Stream>();

function bulk(s: Stream): void {
  let received = 0;
  const sending = args.both ? sendBulk(s, bytes, writeSize) : Promise.resolve();
  s.on('data', (d: Buffer) => {
    received += d.length;
    if (received === bytes) void sending.then(() => s.write(Buffer.from([0xff])));
  });
}

const { port } = await listen(transport, JSON.parse(args.options!), (s) => {
  sockets.add(s);
  s.on('close', () => sockets.delete(s));
  s.on('error', () => {});
  if (args.job === 'echo') s.pipe(s);
  else if (args.job === 'bulk') bulk(s);
  else if (args.job === 'hold') s.resume();
});
say({ type: 'ready', port });

readJsonLines<{ type: string }>(process.stdin, (command) => {
  if (command.type === 'memory') {
    globalThis.gc?.();
    const m = process.memoryUsage();
    say({ type: 'memory', rss: m.rss, heapUsed: m.heapUsed, external: m.external, connections: sockets.size });
  }
});
process.on('SIGTERM', () => process.exit(0));
