// The client side of the relay case (bench/cases/relay.ts): one rocks
// session owned by node A (127.0.0.2), carried either straight to A
// (`--route direct`) or by node B (127.0.0.3), which relays each resume to A
// (`--route relayed`). Both nodes are server peers (server.ts) of their own.
//
//   bulk    --bytes N --write-size W [--both]   the first link goes through a
//           fault proxy on --front to A; the proxy resets it once and the resume
//           dials A or B itself (a lookup picks the address: A, B and the proxy
//           share one port), so no proxy stays in the measured path. Says
//           {"type":"connected"} and cuts on {"type":"cut"} (once node A has
//           the session), says {"type":"resumed"} and on {"type":"go"} moves
//           the bytes as client.ts's bulk does.
//   resume  --cuts K                            every link through a fault proxy
//           (to A; with `relayed`, every link after the first to B), reset K
//           times: ms from each reset to the 'reconnect' event, a 1 KiB echo
//           checked between cuts.

import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { LookupFunction } from 'node:net';
import { performance } from 'node:perf_hooks';
import { connect, type ReliableSocket } from '../../src/index.js';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { readJsonLines } from '../../test/support/helpers.js';
import { quantile } from '../core/stats.js';
import { timeBulk } from './bulk.js';
import { peerArgs, say } from './transport.js';

const args = peerArgs({
  route: { type: 'string', default: 'direct' },
  a: { type: 'string', default: '127.0.0.2' },
  b: { type: 'string', default: '127.0.0.3' },
  front: { type: 'string', default: '127.0.0.4' },
  bytes: { type: 'string', default: '0' },
  'write-size': { type: 'string', default: '65536' },
  both: { type: 'boolean', default: false },
  cuts: { type: 'string', default: '20' },
});
const port = Number(args.port);
const options = JSON.parse(args.options) as object;
const relayed = args.route === 'relayed';
const [a, b] = [args.a as string, args.b as string];

const commands: string[] = [];
let heard: (() => void) | undefined;
readJsonLines<{ type: string }>(process.stdin, (m) => {
  commands.push(m.type);
  heard?.();
});

/** Resolves once the case sent `type` on stdin. */
async function command(type: string): Promise<void> {
  while (!commands.includes(type)) await new Promise<void>((resolve) => (heard = resolve));
  commands.splice(commands.indexOf(type), 1);
}

/** A lookup that answers whatever `address()` says at the time: each new link of the session asks again. */
function lookupBy(address: () => string): LookupFunction {
  return (_hostname, lookupOptions, callback) => {
    if (lookupOptions.all) callback(null, [{ address: address(), family: 4 }]);
    else callback(null, address(), 4);
  };
}

async function bulk(): Promise<void> {
  const front = args.front as string;
  const proxy = new FaultProxy(port, a);
  await proxy.listen(front, port);
  let route = front;
  const s = connect({ ...options, host: 'deployment.invalid', port, lookup: lookupBy(() => route), enhanced: true, allowHalfOpen: true });
  s.setNoDelay(true);
  await once(s, 'connect');
  say({ type: 'connected' });
  await command('cut');
  route = relayed ? b : a;
  const cut = performance.now();
  proxy.reset();
  await once(s, 'reconnect');
  const resume = performance.now() - cut;
  await proxy.close();
  say({ type: 'resumed', resume });
  await command('go');
  const bytes = Number(args.bytes);
  const { seconds, cpu } = await timeBulk(s, bytes, Number(args['write-size']), args.both as boolean);
  s.destroy();
  say({ type: 'result', seconds, bytes: args.both ? 2 * bytes : bytes, cpu });
}

/** Writes `message` and resolves once as many bytes came back, checking they are the same. */
async function echo(s: ReliableSocket, message: Buffer): Promise<void> {
  const back: Buffer[] = [];
  let got = 0;
  await new Promise<void>((resolve) => {
    const onData = (d: Buffer) => {
      back.push(d);
      got += d.length;
      if (got >= message.length) {
        s.off('data', onData);
        resolve();
      }
    };
    s.on('data', onData);
    s.write(message);
  });
  if (!Buffer.concat(back).equals(message)) throw new Error('the echo came back changed');
}

async function resume(): Promise<void> {
  const proxy = new FaultProxy(port, a);
  const front = await proxy.listen();
  const s = connect({ ...options, host: '127.0.0.1', port: front, enhanced: true, allowHalfOpen: true });
  s.setNoDelay(true);
  await once(s, 'connect');
  if (relayed) proxy.spread([{ host: b, port }]);
  const times: number[] = [];
  for (let i = 0; i < Number(args.cuts); i++) {
    await echo(s, randomBytes(1024));
    const cut = performance.now();
    proxy.reset();
    await once(s, 'reconnect');
    times.push(performance.now() - cut);
  }
  await echo(s, randomBytes(1024));
  s.destroy();
  await proxy.close();
  say({ type: 'result', times, p50: quantile(times, 0.5), p90: quantile(times, 0.9) });
}

const jobs: Record<string, () => Promise<void>> = { bulk, resume };
const job = jobs[args.job ?? ''];
if (!job) {
  say({ type: 'fatal', message: `unknown job ${args.job}` });
  process.exit(2);
}
await job();
process.exit(0);
