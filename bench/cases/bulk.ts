// 1. Bulk throughput: 1 GiB one way and both ways at once with 64 KiB writes,
// and one way with 1 KiB writes (quick mode: 64 MiB). MB/s of payload moved.

import type { BenchCase, Measure } from '../core/types.js';
import { MIB, measure, repeatEach } from './common.js';

export const bulk: BenchCase = {
  id: 'bulk',
  title: 'Bulk throughput',
  async run(ctx) {
    const bytes = ctx.quick ? 64 * MIB : 1024 * MIB;
    const size = ctx.quick ? '64 MiB' : '1 GiB';
    const out: Measure[] = [];
    for (const [metric, writeSize, both] of [
      [`${size} one way, 64 KiB writes`, 65536, false],
      [`${size} both ways at once, 64 KiB writes`, 65536, true],
      [`${size} one way, 1 KiB writes`, 1024, false],
    ] as const) {
      const job = ['--job', 'bulk', '--bytes', String(bytes), '--write-size', String(writeSize), ...(both ? ['--both'] : [])];
      const transports = ['raw', 'rocks', 'socket.io'];
      const runs = await repeatEach<{ type: string; seconds: number; bytes: number }>(
        ctx.repeats,
        Object.fromEntries(transports.map((transport) => [transport, { transport, serverJob: job, clientJob: job }])),
      );
      for (const transport of transports) {
        const samples = runs[transport].map((r) => r.bytes / r.seconds / 1e6);
        ctx.log(`bulk ${metric} ${transport}: ${samples.map((s) => s.toFixed(0)).join(', ')} MB/s`);
        out.push(measure({ case: 'bulk', metric, variant: transport, unit: 'MB/s', better: 'higher' }, samples));
      }
    }
    return out;
  },
};
