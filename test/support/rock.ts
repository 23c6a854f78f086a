// Runs the `rock` command as the user would: a separate process of the
// compiled CLI, waited on until it says it is ready.

import { fileURLToPath } from 'node:url';
import type { Program } from './helpers.js';
import { start } from './programs.js';

export const ROCK = fileURLToPath(new URL('../../src/cli/rock.js', import.meta.url));

/** Starts `rock ARGS` and resolves once its output matches `ready`. */
export async function startRock(args: string[], ready: RegExp, ms = 10_000): Promise<Program> {
  const rock = start(process.execPath, [ROCK, ...args]);
  await rock.waitForOutput(ready, ms);
  return rock;
}
