// 6. Memory: RSS and heap per idle connection, on each side, at 1,000 and
// 10,000 connections (quick: 1,000), for raw node:net, rocks and socket.io
// (websocket, connection state recovery on); and per suspended rocks
// connection holding 64 KiB its peer never acknowledged.

import { Peer } from '../core/process.js';
import type { BenchCase, Measure } from '../core/types.js';

type Memory = {
  rss: number;
  heapUsed: number;
  external: number;
};

const KIB = 1024;
const gc = { nofile: 65_536, nodeArgs: ['--expose-gc'] };

/** Per-connection growth of one side's memory. */
const perConnection = (before: Memory, after: Memory, count: number) => ({
  rss: (after.rss - before.rss) / count / KIB,
  heap: (after.heapUsed + after.external - before.heapUsed - before.external) / count / KIB,
});

// Idle connections use the default timing (a 200 ms heartbeat on 10,000 sessions would saturate both
// processes); suspended ones a short failure timeout, so that they suspend quickly.
const IDLE = { enhanced: true };
const SUSPENDING = { enhanced: true, failureTimeout: 1000, heartbeatInterval: 200 };

async function hold(
  transport: string,
  count: number,
  inflight = 0,
): Promise<{ server: ReturnType<typeof perConnection>; client: ReturnType<typeof perConnection> }> {
  // enhanced: measure rocks sessions only, never a connection that detection left plain.
  const sio = transport === 'socket.io';
  const common = sio ? [] : ['--transport', transport, '--options', JSON.stringify(inflight > 0 ? SUSPENDING : IDLE)];
  const server = new Peer(sio ? 'sio-server' : 'server', [...common, '--job', 'hold'], gc);
  try {
    const { port } = await server.next<{ type: 'ready'; port: number }>('ready', 30_000);
    server.send({ type: 'memory' });
    const serverBefore = await server.next<Memory & { type: string }>('memory');
    const client = new Peer(
      sio ? 'sio-client' : 'client',
      [...common, '--job', 'hold', '--count', String(count), ...(sio ? [] : ['--inflight', String(inflight)]), '--port', String(port)],
      gc,
    );
    try {
      const ready = await client.next<{ type: string; before: Memory; after: Memory; suspended: number }>('ready', 120_000);
      if (inflight > 0 && ready.suspended !== count) throw new Error(`only ${ready.suspended} of ${count} connections suspended`);
      server.send({ type: 'memory' });
      const serverAfter = await server.next<Memory & { type: string }>('memory');
      return { server: perConnection(serverBefore, serverAfter, count), client: perConnection(ready.before, ready.after, count) };
    } finally {
      await client.stop();
    }
  } finally {
    await server.stop();
  }
}

export const memory: BenchCase = {
  id: 'memory',
  title: 'Memory per connection',
  async run(ctx) {
    const out: Measure[] = [];
    const add = (metric: string, variant: string, samples: number[], note?: string) =>
      out.push({ case: 'memory', metric, variant, unit: 'KiB', better: 'lower', samples, ...(note ? { note } : {}) });
    for (const count of ctx.quick ? [1000] : [1000, 10_000]) {
      for (const transport of ['raw', 'rocks', 'socket.io']) {
        const runs = [];
        for (let i = 0; i < ctx.repeats; i++) runs.push(await hold(transport, count));
        ctx.log(
          `memory ${count} ${transport}: server heap ${runs.map((r) => r.server.heap.toFixed(1)).join(', ')} KiB, client heap ${runs.map((r) => r.client.heap.toFixed(1)).join(', ')} KiB per connection`,
        );
        add(
          `${count} idle: server heap+external`,
          transport,
          runs.map((r) => r.server.heap),
        );
        add(
          `${count} idle: server RSS`,
          transport,
          runs.map((r) => r.server.rss),
        );
        add(
          `${count} idle: client heap+external`,
          transport,
          runs.map((r) => r.client.heap),
        );
        add(
          `${count} idle: client RSS`,
          transport,
          runs.map((r) => r.client.rss),
        );
      }
    }
    const runs = [];
    for (let i = 0; i < ctx.repeats; i++) runs.push(await hold('rocks', 1000, 64 * KIB));
    add(
      'suspended, 64 KiB in flight: client heap+external',
      'rocks',
      runs.map((r) => r.client.heap),
      '1,000 connections, each suspended with 64 KiB unacknowledged',
    );
    return out;
  },
};
