// A stand-in for the rack daemon's data path, for the netns tests: run
// inside one host's namespace (a TUN belongs to the namespace of the process
// that opens it), it opens a TUN, installs racks' rules for the given specs,
// and relays packets TUN ⇄ a plain TCP "carriage" to the other host's helper,
// each packet framed with a 2-byte length. No reliability, no
// authentication: only the data path.
//
// Usage: node relay-helper.js '{"role":"listen"|"connect","host":"10.2.2.2","port":7225,"tun":"rack0","specs":["tcp:5000@10.2.2.2"]}'
// stdout: JSON lines {"event":"installed"} once the TUN and rules are in,
// {"event":"ready"} once the carriage is up, and answers
// to commands on stdin: "stats" → {"event":"stats",...}, "close" (or end of
// stdin) → uninstall, close, {"event":"closed"}, exit.

import { createInterface } from 'node:readline';
import { createServer, connect, type Socket } from 'node:net';
import { classify } from '../../src/racks/packet.js';
import { addClient, install, parseSpec, remove } from '../../src/racks/netfilter.js';
import { TunDevice } from '../../src/racks/tun.js';
import { sleep } from '../support/helpers.js';

interface Config {
  role: 'listen' | 'connect';
  host: string;
  port: number;
  tun: string;
  specs: string[];
  /** How many TCP packets read from the TUN to keep (hex) for checksum tests. */
  capture?: number;
  /** Server side: addresses whose replies take the TUN (the rack daemon learns them from its carriages). */
  clients?: string[];
}

const config = JSON.parse(process.argv[2]) as Config;
const say = (event: string, data: object = {}): void => {
  process.stdout.write(`${JSON.stringify({ event, ...data })}\n`);
};

const tun = new TunDevice({ name: config.tun });
install(config.specs.map(parseSpec), { tun: tun.name });
for (const address of config.clients ?? []) addClient({ tun: tun.name }, address);
say('installed', { tun: tun.name });

/** Packets through the TUN by TCP port (either end), in each direction; other packets by kind. */
const counts = { fromTun: {} as Record<string, number>, toTun: {} as Record<string, number> };
const captured: string[] = [];
function count(table: Record<string, number>, packet: Buffer, capture: boolean): void {
  const c = classify(packet);
  if ('error' in c) {
    table[c.error.code] = (table[c.error.code] ?? 0) + 1;
    return;
  }
  for (const port of new Set([c.tcp.srcPort, c.tcp.dstPort])) table[port] = (table[port] ?? 0) + 1;
  if (capture && captured.length < (config.capture ?? 0)) captured.push(packet.toString('hex'));
}

async function carriage(): Promise<Socket> {
  if (config.role === 'listen') {
    return new Promise((resolve, reject) => {
      const server = createServer((s) => {
        server.close();
        resolve(s);
      });
      server.on('error', reject);
      server.listen(config.port, config.host);
    });
  }
  for (let attempt = 0; ; attempt++) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const s = connect(config.port, config.host);
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
    } catch (err) {
      if (attempt > 100) throw err;
      await sleep(50);
    }
  }
}

let socket: Socket | undefined;
let closing = false;
async function shutdown(): Promise<void> {
  if (closing) return;
  closing = true;
  remove({ tun: tun.name });
  socket?.destroy();
  await tun.close();
  say('closed');
  process.exit(0);
}

const input = createInterface({ input: process.stdin });
input.on('line', (line) => {
  if (line === 'stats') say('stats', { tun: tun.name, stats: tun.stats, counts, captured });
  if (line === 'close') void shutdown();
});
input.on('close', () => void shutdown());

const carried = await carriage();
socket = carried;
carried.setNoDelay(true);

// TUN → carriage: frames written corked, flushed once per batch of packets the TUN drained.
let corked = false;
tun.on('packet', (packet: Buffer) => {
  count(counts.fromTun, packet, true);
  if (!corked) {
    corked = true;
    carried.cork();
    process.nextTick(() => {
      corked = false;
      carried.uncork();
    });
  }
  const header = Buffer.allocUnsafe(2);
  header.writeUInt16BE(packet.length);
  carried.write(header);
  if (!carried.write(packet)) tun.pause();
});
carried.on('drain', () => tun.resume());
tun.on('error', (err: Error) => say('error', { message: err.message }));

// carriage → TUN
let pending: Buffer = Buffer.alloc(0);
carried.on('data', (chunk: Buffer) => {
  let buf = pending.length > 0 ? Buffer.concat([pending, chunk]) : chunk;
  while (buf.length >= 2) {
    const length = buf.readUInt16BE(0);
    if (buf.length < 2 + length) break;
    const packet = buf.subarray(2, 2 + length);
    count(counts.toTun, packet, false);
    tun.write(packet);
    buf = buf.subarray(2 + length);
  }
  pending = buf;
});
carried.on('error', (err) => say('error', { message: `carriage: ${err.message}` }));
say('ready', { tun: tun.name });
