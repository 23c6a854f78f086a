// 11. An address change (network test bed, root): the client's address
// moves mid-stream, and the time runs from the move's first command to the
// session carried again from the new address (the server's `migrate` or
// `resume` event), with the network watcher (the default, PROTOCOL.md §6.8)
// and without it (failure detection at the default failureTimeout).

import { NetBed, netbedSkip } from '../../test/bed/netbed.js';
import { type Agent, agentClient, agentServer } from '../../test/bed/programs.js';
import { sleep } from '../../test/support/helpers.js';
import type { BenchCase, Measure } from '../core/types.js';

const PORT = 7000;
const RATE = 64 * 1024;
const VARIANTS = [
  ['watcher', {}],
  ['failure timeout', { watchNetwork: false }],
] as const;

/** When the server took the session back from `address` after `since` (ms), waiting for it. */
async function backFrom(server: Agent, address: string, since: number): Promise<number> {
  const back = () => server.events.find((e) => (e.type === 'migrate' || e.type === 'resume') && e.t >= since && e.remote === address);
  await server.waitFor(() => back() !== undefined, 30_000, `the session back from ${address}`);
  return back()!.t - since;
}

export const move: BenchCase = {
  id: 'move',
  title: "Address change: the client's address moves mid-stream (network test bed)",
  async run(ctx) {
    const skip = netbedSkip();
    if (skip) {
      ctx.log(`  move: skipped: ${skip}`);
      return [];
    }
    const out: Measure[] = [];
    for (const [variant, options] of VARIANTS) {
      const bed = new NetBed();
      let server: Agent | undefined;
      let client: Agent | undefined;
      try {
        bed.shape(100);
        server = await agentServer(bed, PORT, options, RATE);
        client = await agentClient(bed, PORT, options, RATE, 1);
        const samples: number[] = [];
        for (let i = 0; i < (ctx.quick ? 1 : ctx.repeats); i++) {
          await sleep(500); // streaming before the move
          const moved = Date.now();
          const address = bed.moveClient();
          samples.push(await backFrom(server, address, moved));
          ctx.log(`  move ${i + 1} ${variant}: the session carried from ${address} ${samples.at(-1)} ms after the move began`);
        }
        out.push({
          case: 'move',
          metric: 'address change to the session carried from the new address',
          variant,
          unit: 'ms',
          better: 'lower',
          samples,
          note: 'default failureTimeout (5000 ms), a stream of 64 KiB/s each way; watcher: PROTOCOL.md §6.8, failure timeout: watchNetwork false',
        });
      } finally {
        await client?.stop();
        await server?.stop();
        bed.destroy();
      }
    }
    return out;
  },
};
