// Small helpers shared by the cases.

import { runPair, type Message } from '../core/process.js';
import { median } from '../core/stats.js';
import type { Context, Measure } from '../core/types.js';

export const MIB = 1024 * 1024;

/** One variant of a measurement: a server peer's job and a client peer's, for `transport`. */
export interface Run {
  transport: string;
  serverJob: string[];
  clientJob: string[];
  options?: object;
  /** A peer between client and server: [name, args]. */
  hop?: [string, string[]];
  /** A message type the server sends too: it comes as the result's `server`. */
  serverReport?: string;
}

function runOnce<T extends Message>(run: Run): Promise<T> {
  // socket.io has peers of its own (bench/peers/sio-*.ts) that take the same jobs.
  const [server, client, common] =
    run.transport === 'socket.io'
      ? ['sio-server', 'sio-client', []]
      : ['server', 'client', ['--transport', run.transport, '--options', JSON.stringify(run.options ?? {})]];
  return runPair<T>([server, [...common, ...run.serverJob]], [client, [...common, ...run.clientJob]], {
    hop: run.hop,
    serverReport: run.serverReport,
  });
}

/**
 * Runs each variant `repeats` times, taking turns (a, b, a, b, ...): this
 * machine's speed drifts by tens of percent over minutes, and variants
 * measured one after the other would carry that drift into their ratio.
 */
export async function repeatEach<T extends Message>(repeats: number, runs: Record<string, Run>): Promise<Record<string, T[]>> {
  const results: Record<string, T[]> = {};
  for (const variant of Object.keys(runs)) results[variant] = [];
  for (let i = 0; i < repeats; i++) for (const [variant, run] of Object.entries(runs)) results[variant].push(await runOnce<T>(run));
  return results;
}

/** Runs `job` of the client peer against `serverJob` for `transport`, `repeats` times (through the `hop` peer if given); returns the results. */
export async function repeat<T extends Message>(
  repeats: number,
  transport: string,
  serverJob: string[],
  clientJob: string[],
  options: object = {},
  hop?: [string, string[]],
): Promise<T[]> {
  return (await repeatEach<T>(repeats, { only: { transport, serverJob, clientJob, options, hop } })).only;
}

export function measure(fields: Omit<Measure, 'samples'>, samples: number[]): Measure {
  return { ...fields, samples };
}

/** A bulk run (the client peer's --job bulk): the client's seconds and CPU seconds, and the server's (its 'server-cpu'). */
export type BulkResult = Message & { seconds: number; bytes: number; cpu: number; server: { cpu: number } };

/** The message a bulk server peer sends with its CPU time (Run.serverReport). */
export const BULK_REPORT = 'server-cpu';

/**
 * The rows of one bulk metric: MB/s for each variant, and beside them the
 * CPU seconds each side used per GiB moved, so that what a byte costs
 * shows in every run, not only how fast the two cores moved it. The log
 * gives both sides together as a ratio to raw.
 */
export function bulkMeasures(ctx: Context, fields: { case: string; metric: string; note?: string }, runs: Record<string, BulkResult[]>): Measure[] {
  const out: Measure[] = [];
  const perGiB = (r: BulkResult, cpu: number) => cpu / (r.bytes / 2 ** 30);
  const both: Record<string, number> = {};
  for (const [variant, results] of Object.entries(runs)) {
    const mbps = results.map((r) => r.bytes / r.seconds / 1e6);
    const client = results.map((r) => perGiB(r, r.cpu));
    const server = results.map((r) => perGiB(r, r.server.cpu));
    both[variant] = median(results.map((r) => perGiB(r, r.cpu + r.server.cpu)));
    const vsRaw = variant !== 'raw' && both.raw !== undefined ? `, ${(both[variant] / both.raw).toFixed(2)}x raw` : '';
    ctx.log(
      `${fields.case} ${fields.metric} ${variant}: ${mbps.map((s) => s.toFixed(0)).join(', ')} MB/s; CPU s per GiB client ${client.map((c) => c.toFixed(2)).join(', ')}, server ${server.map((c) => c.toFixed(2)).join(', ')} (both, median: ${both[variant].toFixed(2)}${vsRaw})`,
    );
    const row = { case: fields.case, variant, ...(fields.note ? { note: fields.note } : {}) };
    out.push(measure({ ...row, metric: fields.metric, unit: 'MB/s', better: 'higher' }, mbps));
    out.push(measure({ ...row, metric: `${fields.metric}: CPU per GiB, client`, unit: 's', better: 'lower' }, client));
    out.push(measure({ ...row, metric: `${fields.metric}: CPU per GiB, server`, unit: 's', better: 'lower' }, server));
  }
  return out;
}
