// A plain TCP relay: accepts on 127.0.0.1 and splices each connection to
// --to-port both ways. The relay case's 'raw (relayed)' baseline, as a rocks
// node splices a relayed link (src/node/node-relay.ts: pipe() both ways, no
// delay), so the case shows what relaying costs a connection that is not
// rocks. With --nagle it keeps Nagle's algorithm on both sides, as socat
// and many middleboxes do (the nagle case). Half-closes pass through, as
// they do through socat. Answers {"type":"stats"} with the CPU seconds it
// used.

import { connect, createServer } from 'node:net';
import { readJsonLines } from '../../test/support/helpers.js';
import { peerArgs, say } from './transport.js';

const args = peerArgs({ 'to-port': { type: 'string' }, nagle: { type: 'boolean', default: false } });
const noDelay = !args.nagle;
const server = createServer({ allowHalfOpen: true, noDelay }, (client) => {
  client.pause();
  const upstream = connect({ port: Number(args['to-port']), host: '127.0.0.1', allowHalfOpen: true, noDelay }, () => {
    client.pipe(upstream);
    upstream.pipe(client);
  });
  client.on('error', () => upstream.destroy());
  upstream.on('error', () => client.destroy());
});
server.listen(0, '127.0.0.1', () => say({ type: 'ready', port: (server.address() as { port: number }).port }));
readJsonLines<{ type: string }>(process.stdin, (command) => {
  if (command.type !== 'stats') return;
  const cpu = process.cpuUsage();
  say({ type: 'stats', cpu: (cpu.user + cpu.system) / 1e6 });
});
process.on('SIGTERM', () => process.exit(0));
