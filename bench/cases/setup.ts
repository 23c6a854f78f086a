// 3. Connection set-up: connect to the first echoed byte, one after another
// (the median of each run, after as many to warm up, whose median is shown
// apart: the first connections of a process run code V8 has not optimized
// yet) and 100 at once (until all have their echo).
// rocks four ways: probing every time (EDP cache off), with the verdict
// cached, with detection skipped (enhanced: true), and with the verdict
// cached and the first bytes behind the HELLO (earlyData). socket.io: a new
// websocket connection (forceNew) each time. Then the same one after another
// through a 20 ms round trip (a proxy in the client's process delays each
// chunk 10 ms): on a real path round trips, not CPU, decide set-up.

import type { Message } from '../core/process.js';
import type { BenchCase, Measure } from '../core/types.js';
import { median } from '../core/stats.js';
import { measure, repeatEach, type Run } from './common.js';

const VARIANTS: [string, string, object, boolean][] = [
  ['raw', 'raw', {}, false],
  ['rocks (probe)', 'rocks', { detectCacheTtl: 0 }, false],
  ['rocks (cached)', 'rocks', {}, true],
  ['rocks (enhanced)', 'rocks', { enhanced: true }, false],
  ['rocks (early data)', 'rocks', { earlyData: true }, true],
  ['socket.io', 'socket.io', {}, false],
];
/** The round trip of the delayed runs, ms. */
const RTT = 20;

export const setup: BenchCase = {
  id: 'setup',
  title: 'Connection set-up (connect to first echoed byte)',
  async run(ctx) {
    const count = ctx.quick ? 20 : 200;
    const out: Measure[] = [];
    // The variants take turns (repeatEach), so that the machine's drift does not enter their ratios.
    const each = <T extends Message>(variants: typeof VARIANTS, clientJob: (warm: boolean) => string[]) =>
      repeatEach<T>(
        ctx.repeats,
        Object.fromEntries(
          variants.map(([variant, transport, options, warm]): [string, Run] => [
            variant,
            { transport, options, serverJob: ['--job', 'echo'], clientJob: clientJob(warm) },
          ]),
        ),
      );
    const runs = await each<{ type: string; cold: number[]; sequential: number[]; concurrent: number }>(VARIANTS, (warm) => [
      '--job',
      'setup',
      '--warmup',
      String(count),
      '--count',
      String(count),
      '--concurrent',
      '100',
      ...(warm ? ['--warm'] : []),
    ]);
    for (const [variant] of VARIANTS) {
      const results = runs[variant];
      ctx.log(
        `setup ${variant}: sequential median ${results.map((r) => median(r.sequential).toFixed(2)).join(', ')} ms; the first ${count} of each process: ${results.map((r) => median(r.cold).toFixed(2)).join(', ')} ms`,
      );
      out.push(
        measure(
          { case: 'setup', metric: 'sequential, median', variant, unit: 'ms', better: 'lower', note: `after ${count} to warm up` },
          results.map((r) => median(r.sequential)),
        ),
      );
      out.push(
        measure(
          { case: 'setup', metric: `sequential, the first ${count} of a process, median`, variant, unit: 'ms', better: 'lower' },
          results.map((r) => median(r.cold)),
        ),
      );
      out.push(
        measure(
          { case: 'setup', metric: '100 concurrent, all echoed', variant, unit: 'ms', better: 'lower' },
          results.map((r) => r.concurrent),
        ),
      );
    }
    const delayed = VARIANTS.filter(([, transport]) => transport !== 'socket.io');
    const delayedRuns = await each<{ type: string; sequential: number[] }>(delayed, (warm) => [
      '--job',
      'setup',
      '--warmup',
      '0', // round trips decide these, not the code's warmth
      '--count',
      String(ctx.quick ? 5 : 30),
      '--concurrent',
      '0',
      '--delay',
      String(RTT),
      ...(warm ? ['--warm'] : []),
    ]);
    for (const [variant] of delayed) {
      const results = delayedRuns[variant];
      ctx.log(`setup ${variant} through a ${RTT} ms round trip: median ${results.map((r) => median(r.sequential).toFixed(1)).join(', ')} ms`);
      out.push(
        measure(
          { case: 'setup', metric: `sequential, median, ${RTT} ms round trip`, variant, unit: 'ms', better: 'lower' },
          results.map((r) => median(r.sequential)),
        ),
      );
    }
    return out;
  },
};
