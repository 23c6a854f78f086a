// 4. Failure detection: from a black hole to the 'suspend' event, against
// the configured failure timeout (bound: failureTimeout + one heartbeat);
// socket.io's 'disconnect' with the same budget (pingInterval + pingTimeout).
// 5. Resume: from the path's return to the first new byte delivered, the
// bytes replayed (rocks) and the bytes lost (both; socket.io loses what it
// sent into the dead path before it noticed); the last rocks run's
// bytes-delivered timeline goes into the chart.

import type { BenchCase, Measure } from '../core/types.js';
import { measure, repeat } from './common.js';

const options = { failureTimeout: 1000, heartbeatInterval: 200 };

export const outage: BenchCase = {
  id: 'outage',
  title: 'Failure detection and resume (through a black hole)',
  async run(ctx) {
    const out: Measure[] = [];
    const repeats = String(ctx.quick ? 1 : ctx.repeats);
    const [d] = await repeat<{ type: string; detection: number[]; bound: number }>(
      1,
      'rocks',
      ['--job', 'echo'],
      ['--job', 'detect', '--repeats', repeats],
      options,
    );
    ctx.log(`detection: ${d.detection.map((x) => x.toFixed(0)).join(', ')} ms (bound ${d.bound})`);
    const note = `failureTimeout ${options.failureTimeout} ms, heartbeat ${options.heartbeatInterval} ms: bound ${d.bound} ms`;
    out.push(measure({ case: 'outage', metric: 'black hole to detection', variant: 'rocks', unit: 'ms', better: 'lower', note }, d.detection));
    // socket.io detects by its ping: pingInterval + pingTimeout set to the same budget.
    const [sio] = await repeat<{ type: string; detection: number[]; bound: number }>(
      1,
      'socket.io',
      ['--job', 'echo', '--ping-interval', '500', '--ping-timeout', '500'],
      ['--job', 'detect', '--repeats', repeats],
    );
    ctx.log(`socket.io detection: ${sio.detection.map((x) => x.toFixed(0)).join(', ')} ms (bound ${sio.bound})`);
    out.push(
      measure(
        {
          case: 'outage',
          metric: 'black hole to detection',
          variant: 'socket.io',
          unit: 'ms',
          better: 'lower',
          note: `pingInterval 500 + pingTimeout 500: bound ${sio.bound} ms`,
        },
        sio.detection,
      ),
    );
    const outageMs = ctx.quick ? 1000 : 3000;
    const [r] = await repeat<{
      type: string;
      resume: number[];
      replayed: number[];
      lost: number[];
      timeline: [number, number][];
      marks: [number, string][];
    }>(1, 'rocks', ['--job', 'echo'], ['--job', 'resume', '--repeats', repeats, '--outage', String(outageMs)], options);
    ctx.log(`resume: ${r.resume.map((x) => x.toFixed(0)).join(', ')} ms; replayed ${r.replayed.join(', ')} bytes`);
    out.push(
      measure(
        {
          case: 'outage',
          metric: `path back to first new byte (${outageMs / 1000} s black hole)`,
          variant: 'rocks',
          unit: 'ms',
          better: 'lower',
          note,
        },
        r.resume,
      ),
    );
    out.push(
      measure(
        { case: 'outage', metric: 'bytes replayed at resume', variant: 'rocks', unit: 'KiB', better: 'lower' },
        r.replayed.map((b) => b / 1024),
      ),
    );
    const lostMetric = `bytes lost across the ${outageMs / 1000} s black hole`;
    out.push(
      measure(
        { case: 'outage', metric: lostMetric, variant: 'rocks', unit: 'KiB', better: 'lower', note: 'written minus echoed back, at 4 MB/s each way' },
        r.lost.map((b) => b / 1024),
      ),
    );
    const [sr] = await repeat<{ type: string; resume: number[]; lost: number[]; recovered: boolean[] }>(
      1,
      'socket.io',
      ['--job', 'echo', '--ping-interval', '500', '--ping-timeout', '500'],
      // Each run waits out socket.io's 20 s connect timeout: two runs keep the full benchmark within its time.
      ['--job', 'resume', '--repeats', String(ctx.quick ? 1 : Math.min(ctx.repeats, 2)), '--outage', String(outageMs)],
    );
    ctx.log(
      `socket.io resume: ${sr.resume.map((x) => x.toFixed(0)).join(', ')} ms; lost ${sr.lost.map((b) => (b / 1024).toFixed(0)).join(', ')} KiB; recovered ${sr.recovered.join(', ')}`,
    );
    const sioNote =
      'connectionStateRecovery on, pingInterval 500 + pingTimeout 500, reconnection with its defaults (1 s delay, 20 s connect timeout); 40 KiB messages every 10 ms';
    out.push(
      measure(
        {
          case: 'outage',
          metric: `path back to first new byte (${outageMs / 1000} s black hole)`,
          variant: 'socket.io',
          unit: 'ms',
          better: 'lower',
          note: sioNote,
        },
        sr.resume,
      ),
    );
    out.push(
      measure(
        {
          case: 'outage',
          metric: lostMetric,
          variant: 'socket.io',
          unit: 'KiB',
          better: 'lower',
          note: `messages sent and never echoed; ${sioNote}`,
        },
        sr.lost.map((b) => b / 1024),
      ),
    );
    ctx.timelines.push({
      title: `Bytes delivered around a ${outageMs / 1000} s black hole (echo at 4 MB/s each way)`,
      variant: 'rocks',
      points: r.timeline,
      marks: r.marks,
    });
    return out;
  },
};
