// The server of the scale case (bench/cases/scale.ts): a rocks echo server
// meant to hold many thousands of sessions. Besides echoing it answers
// commands on stdin:
//
//   {"type":"cpu","ms":M}   CPU this process used over the next M ms: {"type":"cpu","user","system","ms"} (µs, µs, ms)
//   {"type":"stats"}        {"type":"stats","connections","sessions","suspended","rss"}

import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import { createServer, type ReliableSocket } from '../../src/index.js';
import { cpuOver } from './scale-common.js';
import { fatal, say } from './transport.js';
import { readJsonLines } from '../../test/support/helpers.js';

const args = parseArgs({ options: { options: { type: 'string', default: '{}' }, backlog: { type: 'string', default: '511' } } }).values;
const options = JSON.parse(args.options!) as object;
const sockets = new Set<ReliableSocket>();

const server = createServer({ ...options, allowHalfOpen: true }, (s) => {
  sockets.add(s);
  s.on('close', () => sockets.delete(s));
  s.on('error', () => {});
  s.pipe(s);
});
server.on('error', fatal);
server.listen(0, '127.0.0.1', Number(args.backlog), () => say({ type: 'ready', port: (server.address() as AddressInfo).port }));

readJsonLines<{ type: string; ms?: number }>(process.stdin, (command) => {
  if (command.type === 'cpu') void cpuOver(command.ms ?? 1000).then((c) => say({ type: 'cpu', ...c }));
  else if (command.type === 'stats') {
    say({
      type: 'stats',
      connections: sockets.size,
      sessions: server.sessionCount,
      suspended: server.suspendedCount,
      rss: process.memoryUsage().rss,
    });
  }
});
process.on('SIGTERM', () => process.exit(0));
