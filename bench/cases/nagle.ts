// 12. Through a hop with Nagle's algorithm on (socat's default, and many
// middleboxes'): a plain TCP relay process between client and server
// (bench/peers/pipe.ts --nagle), against the same connection direct. Two
// patterns: ping-pong of 64 B (one write each way per round trip) and
// unary calls over HTTP/2 (h2c), answered as a gRPC server answers them:
// HTTP/2 writes a call's frames in several small writes, and the hop holds
// a small segment while an earlier one is unacknowledged, until the peer's
// delayed ACK (40 ms on Linux) comes. The target (issue 19): the hop costs
// rocks no more than it costs raw TCP, that is the ping-pong p50 and the
// mean call through the hop at most what raw pays there plus what rocks
// pays direct. Ping-pong warms up as long as it measures: V8 optimizes
// rocks' data path only after some thousands of round trips, while raw's
// is mostly Node's C++, so a short warm-up times rocks' cold code and
// charges it to the hop.

import type { BenchCase, Context, Measure } from '../core/types.js';
import { median } from '../core/stats.js';
import { measure, repeatEach, type Run } from './common.js';

const TRANSPORTS = ['raw', 'rocks'] as const;
const HOP: [string, string[]] = ['pipe', ['--nagle']];

type Timed = { type: string; mean?: number; p50: number; p99: number };

async function measureAll(ctx: Context): Promise<Measure[]> {
  const out: Measure[] = [];
  // The medians, by `${metric} ${route} ${transport}`, for the hop's cost.
  const medians: Record<string, number> = {};
  for (const route of ['direct', 'Nagle hop'] as const) {
    const hop = route === 'direct' ? undefined : HOP;
    // raw and rocks take turns (repeatEach), so that the machine's drift does not enter their ratio.
    const each = (serverJob: string[], clientJob: string[]) =>
      repeatEach<Timed>(
        ctx.repeats,
        Object.fromEntries(TRANSPORTS.map((transport): [string, Run] => [transport, { transport, serverJob, clientJob, hop }])),
      );
    const count = ctx.quick ? 300 : 20_000;
    const pingRuns = await each(['--job', 'echo'], ['--job', 'pingpong', '--size', '64', '--count', String(count), '--warmup', String(count)]);
    const n = ctx.quick ? 30 : 200;
    const unaryRuns = await each(['--job', 'unary'], ['--job', 'unary', '--size', '100', '--count', String(n), '--warmup', '20']);
    for (const transport of TRANSPORTS) {
      const pings = pingRuns[transport];
      ctx.log(`nagle ${route} ping-pong 64 B ${transport}: p50 ${pings.map((r) => r.p50.toFixed(3)).join(', ')} ms`);
      out.push(
        measure(
          { case: 'nagle', metric: `${route}: ping-pong 64 B p50`, variant: transport, unit: 'ms', better: 'lower' },
          pings.map((r) => r.p50),
        ),
      );
      medians[`ping-pong ${route} ${transport}`] = median(pings.map((r) => r.p50));

      const unary = unaryRuns[transport];
      const means = unary.map((r) => r.mean!);
      ctx.log(
        `nagle ${route} unary ${transport}: mean ${means.map((m) => m.toFixed(2)).join(', ')} ms, p50 ${unary.map((r) => r.p50.toFixed(2)).join(', ')}`,
      );
      out.push(
        measure(
          {
            case: 'nagle',
            metric: `${route}: HTTP/2 unary call, mean`,
            variant: transport,
            unit: 'ms',
            better: 'lower',
            note: `${n} calls one after another, 100 B each way`,
          },
          means,
        ),
      );
      medians[`unary ${route} ${transport}`] = median(means);
    }
  }
  const hopCost = (metric: string, t: string): number => medians[`${metric} Nagle hop ${t}`] - medians[`${metric} direct ${t}`];
  for (const [metric, what, digits] of [
    ['ping-pong', 'ping-pong p50', 3],
    ['unary', 'mean call', 2],
  ] as const) {
    const [raw, rocks] = [hopCost(metric, 'raw'), hopCost(metric, 'rocks')];
    ctx.log(
      `nagle: the hop adds ${raw.toFixed(digits)} ms to raw's ${what}, ${rocks.toFixed(digits)} ms to rocks' (target: no more than to raw: ${rocks <= raw ? 'met' : 'NOT met'})`,
    );
  }
  return out;
}

export const nagle: BenchCase = {
  id: 'nagle',
  title: "Through a hop with Nagle's algorithm on (ping-pong, HTTP/2 unary calls)",
  run: measureAll,
};
