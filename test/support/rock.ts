// Runs the `rock` command as the user would: a separate process of the
// compiled CLI, waited on until it says it is ready.

import { fileURLToPath } from 'node:url';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import type { Program } from './helpers.js';
import { freePort, start } from './programs.js';

export const ROCK = fileURLToPath(new URL('../../src/cli/rock.js', import.meta.url));

/** Starts `rock ARGS` and resolves once its output matches `ready`. */
export async function startRock(args: string[], ready: RegExp, ms = 10_000): Promise<Program> {
  const rock = start(process.execPath, [ROCK, ...args]);
  await rock.waitForOutput(ready, ms);
  return rock;
}

/**
 * `rock serve ARGS` in front of the real server at 127.0.0.1:`target`, and a
 * fault proxy in front of each: `withPort` reaches the server through rocks,
 * `withoutPort` is the control that reaches it directly through the same
 * kind of faults. `close` stops all three.
 */
export async function serveWithControl(target: number, args: string[]) {
  const servePort = await freePort();
  const serve = await startRock(['serve', '--listen', `127.0.0.1:${servePort}`, '--to', `127.0.0.1:${target}`, ...args], /serving rocks/);
  const withServe = new FaultProxy(servePort);
  const withoutServe = new FaultProxy(target);
  const [withPort, withoutPort] = [await withServe.listen(), await withoutServe.listen()];
  const close = async (): Promise<void> => {
    await serve.stop();
    await withServe.close();
    await withoutServe.close();
  };
  return { withServe, withoutServe, withPort, withoutPort, close };
}
