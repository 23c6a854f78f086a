// The tampering relay (tamper-relay.ts) as a process, for the netns tests:
// run in the router's namespace, where an nftables rule redirects the
// client daemon's connections to the rack port to it.
//
// Usage: node tamper-relay-helper.js '{"port":7300,"upstream":{"host":"10.2.2.2","port":7225}}'
// stdout: JSON lines {"event":"listening"}, {"event":"tampered",...,"time":ms} for each byte
// altered; stdin: "payload" or "length" arms one tampering, "stats" answers
// {"event":"stats",...}; end of stdin closes it.

import { createInterface } from 'node:readline';
import { TamperRelay, type Tampering } from './tamper-relay.js';

const config = JSON.parse(process.argv[2]) as { port: number; upstream: { host: string; port: number } };
const say = (event: string, data: object = {}): void => {
  process.stdout.write(`${JSON.stringify({ event, ...data }, (_, v) => (typeof v === 'bigint' ? Number(v) : v))}\n`);
};

const relay = new TamperRelay(config.upstream);
const tampered = relay.tampered.push.bind(relay.tampered);
relay.tampered.push = (...items) => {
  for (const t of items) say('tampered', { ...t, time: Date.now() });
  return tampered(...items);
};
await relay.listen(config.port, '0.0.0.0');
say('listening');

const input = createInterface({ input: process.stdin });
input.on('line', (line) => {
  if (line === 'payload' || line === 'length') relay.arm(line as Tampering);
  if (line === 'stats') say('stats', { connections: relay.connections, tampered: relay.tampered });
});
input.on('close', () => void relay.close().then(() => process.exit(0)));
