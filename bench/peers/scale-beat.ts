// The floor for the scale case's heartbeat CPU: plain node:net connections
// that each send a 1-byte heartbeat every --beat ms, both ways, as any
// per-connection liveness check at that rate must. Run once as the server
// (--role server) and once as the client (--role client --port P --count N);
// each answers {"type":"cpu","ms":M} on stdin like the rocks peers, and says
// {"type":"ready",...} once listening (server) or all connected (client).

import { createConnection, createServer, type AddressInfo, type Socket } from 'node:net';
import { parseArgs } from 'node:util';
import { cpuOver } from './scale-common.js';
import { fatal, say } from './transport.js';
import { readJsonLines } from '../../test/support/helpers.js';

const args = parseArgs({
  options: {
    role: { type: 'string' },
    port: { type: 'string', default: '0' },
    count: { type: 'string', default: '1000' },
    batch: { type: 'string', default: '500' },
    beat: { type: 'string', default: '1000' },
  },
}).values;
const beatMs = Number(args.beat);
const BEAT = Buffer.from([0]);
const sockets = new Set<Socket>();

/** Beats on `s` from a random phase, as sessions opened over time would. */
function beat(s: Socket): void {
  sockets.add(s);
  s.setNoDelay(true);
  s.on('data', () => {});
  s.on('error', () => {});
  const start = setTimeout(() => {
    const every = setInterval(() => s.write(BEAT), beatMs);
    s.once('close', () => clearInterval(every));
  }, Math.random() * beatMs);
  s.once('close', () => {
    clearTimeout(start);
    sockets.delete(s);
  });
}

if (args.role === 'server') {
  const server = createServer(beat);
  server.on('error', fatal);
  server.listen(0, '127.0.0.1', 4096, () => say({ type: 'ready', port: (server.address() as AddressInfo).port }));
} else if (args.role === 'client') {
  const count = Number(args.count);
  const batch = Number(args.batch);
  const started = performance.now();
  for (let opened = 0; opened < count; opened += batch) {
    await Promise.all(
      Array.from(
        { length: Math.min(batch, count - opened) },
        () =>
          new Promise<void>((resolve, reject) => {
            const s = createConnection(Number(args.port), '127.0.0.1');
            s.once('error', reject);
            s.once('connect', () => {
              s.off('error', reject);
              beat(s);
              resolve();
            });
          }),
      ),
    ).catch(fatal);
  }
  say({ type: 'ready', setup: performance.now() - started, connections: sockets.size });
} else fatal(new Error('--role server|client'));

readJsonLines<{ type: string; ms?: number }>(process.stdin, (command) => {
  if (command.type === 'cpu') void cpuOver(command.ms ?? 1000).then((c) => say({ type: 'cpu', ...c }));
});
process.on('SIGTERM', () => process.exit(0));
