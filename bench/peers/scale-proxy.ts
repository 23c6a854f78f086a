// The network of the scale case (bench/cases/scale.ts): FaultProxy instances
// (src/testbed/fault-proxy.ts) between the scale client and the scale
// server, in processes of their own so that forwarding thousands of
// connections' heartbeats costs neither peer any CPU. Several proxies, each
// on its own port, share the connections: every port has its own listen
// backlog and its own range of client ports. A FaultProxy never closes a
// black-holed connection (a black hole closes nothing), so across an outage
// it holds about five descriptors per connection: the case spreads the
// connections over several proxy processes when the open-file limit is low.
//
//   --port P --proxies K [--source A.B.C]   prints {"type":"ready","ports":[...]}
//
// --source A.B.C: the connections to the server come from A.B.C.1 to
// A.B.C.250 in turn (any of 127.0.0.0/8 is loopback on Linux). Not from one
// address: connections to one destination share one range of ephemeral
// ports, and each pair a black hole leaves open holds one; bound to one
// source address, the ports its closed connections hold in TIME_WAIT (a
// minute) make bind() search for a free one. With 20,000 in TIME_WAIT on
// one address, 2,500 bound connects took 12.0 s of CPU, 11.5 s of it in the
// kernel, against 0.21 s from a fresh address (0.16 s with the 20,000 spread
// over 16 addresses). A resume storm's failed attempts leave such
// connections within a round too.
//
//   {"type":"blackhole"}     -> {"type":"blackholed","at"}  (at: the scale clock, ms)
//   {"type":"heal"}          -> {"type":"healed","at"}
//   {"type":"cpu","ms":M}    -> {"type":"cpu","user","system","ms"}
//   {"type":"stats"}         -> {"type":"stats","connections"}  (connections accepted so far)

import { parseArgs } from 'node:util';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { clock, cpuOver } from './scale-common.js';
import { say } from './transport.js';
import { readJsonLines } from '../../test/support/helpers.js';

const args = parseArgs({ options: { port: { type: 'string' }, proxies: { type: 'string', default: '1' }, source: { type: 'string' } } }).values;
const proxies = Array.from({ length: Number(args.proxies) }, () => {
  const proxy = new FaultProxy(Number(args.port));
  if (args.source !== undefined) proxy.upstreamAddress = Array.from({ length: 250 }, (_, i) => `${args.source}.${i + 1}`);
  return proxy;
});
const ports = await Promise.all(proxies.map((p) => p.listen()));
say({ type: 'ready', ports });

readJsonLines<{ type: string; ms?: number }>(process.stdin, (command) => {
  if (command.type === 'blackhole') {
    for (const p of proxies) p.blackhole();
    say({ type: 'blackholed', at: clock() });
  } else if (command.type === 'heal') {
    for (const p of proxies) p.heal();
    say({ type: 'healed', at: clock() });
  } else if (command.type === 'cpu') {
    void cpuOver(command.ms ?? 1000).then((c) => say({ type: 'cpu', ...c }));
  } else if (command.type === 'stats') {
    say({ type: 'stats', connections: proxies.reduce((n, p) => n + p.connections, 0) });
  }
});
process.on('SIGTERM', () => process.exit(0));
