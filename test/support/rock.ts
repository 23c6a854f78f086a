// Runs the `rock` command as the user would: a separate process of the
// compiled CLI, waited on until it says it is ready.

import { fileURLToPath } from 'node:url';
import { start, type Started } from './programs.js';

export const ROCK = fileURLToPath(new URL('../../src/cli/rock.js', import.meta.url));

/** Starts `rock ARGS` and resolves once its output matches `ready`. */
export async function startRock(args: string[], ready: RegExp, ms = 10_000): Promise<Started> {
  const rock = start(process.execPath, [ROCK, ...args]);
  const deadline = Date.now() + ms;
  while (!ready.test(rock.output())) {
    if (rock.exited !== undefined) throw new Error(`rock ${args.join(' ')} exited (${rock.exited}):\n${rock.output()}`);
    if (Date.now() > deadline) throw new Error(`rock ${args.join(' ')} not ready after ${ms} ms:\n${rock.output()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return rock;
}
