// 1. Bulk throughput: 1 GiB one way and both ways at once with 64 KiB writes,
// and one way with 1 KiB writes (quick mode: 64 MiB). MB/s of payload moved,
// and beside it the CPU seconds per GiB that client and server used. One way
// with 64 KiB writes runs twice: from a fresh process, and after 256 MiB of
// warm-up on the same connection (quick: 16 MiB), which is where the targets
// are judged (issue 19: CPU per byte at most 1.15x raw): a fresh run also
// carries each process's optimizing compiles, a cost per process rather
// than per byte. socket.io's peers have no warm-up and sit that row out.

import type { BenchCase, Measure } from '../core/types.js';
import { BULK_REPORT, type BulkResult, bulkMeasures, MIB, repeatEach } from './common.js';

export const bulk: BenchCase = {
  id: 'bulk',
  title: 'Bulk throughput',
  async run(ctx) {
    const bytes = ctx.quick ? 64 * MIB : 1024 * MIB;
    const warmupBytes = ctx.quick ? 16 * MIB : 256 * MIB;
    const size = ctx.quick ? '64 MiB' : '1 GiB';
    const out: Measure[] = [];
    for (const [metric, writeSize, both, warm] of [
      [`${size} one way, 64 KiB writes`, 65536, false, false],
      [`${size} one way, 64 KiB writes, warm`, 65536, false, true],
      [`${size} both ways at once, 64 KiB writes`, 65536, true, false],
      [`${size} one way, 1 KiB writes`, 1024, false, false],
    ] as const) {
      const job = [
        ...['--job', 'bulk', '--bytes', String(bytes), '--write-size', String(writeSize)],
        ...(both ? ['--both'] : []),
        ...(warm ? ['--warmup-bytes', String(warmupBytes)] : []),
      ];
      const transports = warm ? ['raw', 'rocks'] : ['raw', 'rocks', 'socket.io'];
      const runs = await repeatEach<BulkResult>(
        ctx.repeats,
        Object.fromEntries(transports.map((transport) => [transport, { transport, serverJob: job, clientJob: job, serverReport: BULK_REPORT }])),
      );
      const note = warm
        ? `timed after ${warmupBytes / MIB} MiB on the same connection; target: CPU per GiB, client and server, at most 1.15x raw`
        : undefined;
      out.push(...bulkMeasures(ctx, { case: 'bulk', metric, note }, runs));
    }
    return out;
  },
};
