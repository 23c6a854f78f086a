// Small helpers shared by the cases.

import { runPair, type Message } from '../core/process.js';
import type { Measure } from '../core/types.js';

export const MIB = 1024 * 1024;

/** Runs `job` of the client peer against `serverJob` for `transport`, `repeats` times (through the `hop` peer if given); returns the results. */
export async function repeat<T extends Message>(
  repeats: number,
  transport: string,
  serverJob: string[],
  clientJob: string[],
  options: object = {},
  hop?: [string, string[]],
): Promise<T[]> {
  const results: T[] = [];
  // socket.io has peers of its own (bench/peers/sio-*.ts) that take the same jobs.
  const [server, client, common] =
    transport === 'socket.io'
      ? ['sio-server', 'sio-client', []]
      : ['server', 'client', ['--transport', transport, '--options', JSON.stringify(options)]];
  for (let i = 0; i < repeats; i++) results.push(await runPair<T>([server, [...common, ...serverJob]], [client, [...common, ...clientJob]], { hop }));
  return results;
}

export function measure(fields: Omit<Measure, 'samples'>, samples: number[]): Measure {
  return { ...fields, samples };
}
