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
//   --port P --proxies K [--source A]   prints {"type":"ready","ports":[...]}
//
// --source: the local address of the connections to the server (any of
// 127.0.0.0/8 on Linux). Each proxy process uses its own: connections to one
// destination share one range of ephemeral ports, and with the dead pairs a
// black hole leaves open that range fills up, so that finding a free port
// makes the kernel's connect() scan it (a third of the machine's CPU in a
// 10,000-connection resume, without --source).
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
  proxy.upstreamAddress = args.source;
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
