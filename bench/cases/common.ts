// Small helpers shared by the cases.

import { runPair, type Message } from '../core/process.js';
import type { Measure } from '../core/types.js';

export const MIB = 1024 * 1024;

/** One variant of a measurement: a server peer's job and a client peer's, for `transport`. */
export interface Run {
  transport: string;
  serverJob: string[];
  clientJob: string[];
  options?: object;
  /** A peer between client and server: [name, args]. */
  hop?: [string, string[]];
}

function runOnce<T extends Message>(run: Run): Promise<T> {
  // socket.io has peers of its own (bench/peers/sio-*.ts) that take the same jobs.
  const [server, client, common] =
    run.transport === 'socket.io'
      ? ['sio-server', 'sio-client', []]
      : ['server', 'client', ['--transport', run.transport, '--options', JSON.stringify(run.options ?? {})]];
  return runPair<T>([server, [...common, ...run.serverJob]], [client, [...common, ...run.clientJob]], { hop: run.hop });
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
