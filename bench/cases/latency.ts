// 2. Round-trip latency: ping-pong of 64 B and 16 KiB messages over one
// connection to an echo server; p50 and p99 of each run.

import type { BenchCase, Measure } from '../core/types.js';
import { measure, repeatEach } from './common.js';

export const latency: BenchCase = {
  id: 'latency',
  title: 'Round-trip latency (ping-pong)',
  async run(ctx) {
    const count = ctx.quick ? 500 : 10_000;
    const out: Measure[] = [];
    for (const [label, size] of [
      ['64 B', 64],
      ['16 KiB', 16384],
    ] as const) {
      const job = ['--job', 'pingpong', '--size', String(size), '--count', String(count), '--warmup', String(count / 10)];
      const transports = ['raw', 'rocks', 'socket.io'];
      const runs = await repeatEach<{ type: string; p50: number; p99: number }>(
        ctx.repeats,
        Object.fromEntries(transports.map((transport) => [transport, { transport, serverJob: ['--job', 'echo'], clientJob: job }])),
      );
      for (const transport of transports) {
        const results = runs[transport];
        ctx.log(`ping-pong ${label} ${transport}: p50 ${results.map((r) => r.p50.toFixed(3)).join(', ')} ms`);
        out.push(
          measure(
            { case: 'latency', metric: `${label} p50`, variant: transport, unit: 'ms', better: 'lower' },
            results.map((r) => r.p50),
          ),
        );
        out.push(
          measure(
            { case: 'latency', metric: `${label} p99`, variant: transport, unit: 'ms', better: 'lower' },
            results.map((r) => r.p99),
          ),
        );
      }
    }
    return out;
  },
};
