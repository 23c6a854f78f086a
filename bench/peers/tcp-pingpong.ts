// A plain node:net ping-pong for the racks case (bench/cases/racks.ts): an
// ordinary program, as racks sees it. `--role server --port P` echoes;
// `--role client --host H --port P --size S --count N --warmup K` prints
// {"type":"result","p50","p99"} (ms) and exits.

import { createConnection, createServer } from 'node:net';
import { parseArgs } from 'node:util';
import { quantile } from '../core/stats.js';
import { fatal, say } from './say.js';

const args = parseArgs({
  options: {
    role: { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string' },
    size: { type: 'string', default: '64' },
    count: { type: 'string', default: '2000' },
    warmup: { type: 'string', default: '200' },
  },
}).values;
const port = Number(args.port);

if (args.role === 'server') {
  const server = createServer({ noDelay: true }, (s) => {
    s.on('data', (d) => s.write(d));
    s.on('error', () => {});
  });
  server.on('error', fatal);
  server.listen(port, '0.0.0.0', () => say({ type: 'ready' }));
  process.on('SIGTERM', () => process.exit(0));
} else if (args.role === 'client') {
  const [size, count, warmup] = [Number(args.size), Number(args.count), Number(args.warmup)];
  const s = createConnection({ host: args.host!, port, noDelay: true });
  s.on('error', fatal);
  s.once('connect', () => {
    const message = Buffer.alloc(size, 1);
    const rtts: number[] = [];
    let pending = size;
    let started = performance.now();
    s.on('data', (d: Buffer) => {
      pending -= d.length;
      if (pending > 0) return;
      rtts.push(performance.now() - started);
      if (rtts.length === warmup + count) {
        const measured = rtts.slice(warmup);
        say({ type: 'result', p50: quantile(measured, 0.5), p99: quantile(measured, 0.99) });
        s.destroy();
        return;
      }
      pending = size;
      started = performance.now();
      s.write(message);
    });
    s.write(message);
  });
} else fatal(new Error('--role server|client'));
