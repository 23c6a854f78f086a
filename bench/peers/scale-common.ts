// What the scale case's peers (scale-server, scale-proxy, scale-client) share.

import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';

/** CPU this process uses over the next `ms`: µs of user and system time, and the ms that really passed. */
export async function cpuOver(ms: number): Promise<{ user: number; system: number; ms: number }> {
  const start = performance.now();
  const before = process.cpuUsage();
  await sleep(ms);
  const used = process.cpuUsage(before);
  return { user: used.user, system: used.system, ms: performance.now() - start };
}

/**
 * A clock the peer processes share (ms since the epoch, sub-ms resolution):
 * the case compares an instant taken in one peer with one taken in another.
 */
export const clock = (): number => performance.timeOrigin + performance.now();
