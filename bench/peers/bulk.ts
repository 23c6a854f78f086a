// Bulk writes shared by both peers.

import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { cpuSince } from './say.js';
import type { Stream } from './transport.js';

/** Writes `total` bytes in `size` writes, honouring backpressure; resolves when all are handed over. */
export async function sendBulk(s: Stream, total: number, size: number): Promise<void> {
  const block = randomBytes(Math.max(size, 65536));
  for (let sent = 0; sent < total; ) {
    const n = Math.min(size, total - sent);
    sent += n;
    if (!s.write(block.subarray(0, n))) await new Promise((r) => s.once('drain', r));
  }
}

/**
 * The client's side of a bulk run on a connected stream (the server peer's
 * `--job bulk` is the other): sends `bytes` in `writeSize` writes and, with
 * `both`, reads as many coming back; done when the server's end byte came.
 * With `warmupBytes` (one way only) it first sends that many untimed and
 * waits for the server's byte saying they all arrived: the timed bytes then
 * run through code V8 has optimized, as in a long-lived process.
 * Returns the seconds it took and the CPU seconds this process used meanwhile.
 */
export async function timeBulk(
  s: Stream,
  bytes: number,
  writeSize: number,
  both: boolean,
  warmupBytes = 0,
): Promise<{ seconds: number; cpu: number }> {
  let received = 0;
  let last = -1;
  let awaited = Number.POSITIVE_INFINITY;
  let reached: () => void = () => {};
  s.on('data', (d: Buffer) => {
    received += d.length;
    last = d[d.length - 1];
    if (received >= awaited) reached();
  });
  /** Resolves once `n` bytes in all have come from the server, the last of them `end`. */
  const receivedAll = async (n: number, end: number) => {
    await new Promise<void>((resolve) => {
      awaited = n;
      reached = resolve;
      if (received >= n) resolve();
    });
    if (received !== n || last !== end)
      throw new Error(`bulk: expected ${n} bytes ending in ${end} from the server, got ${received} ending in ${last}`);
  };
  if (warmupBytes > 0) {
    await sendBulk(s, warmupBytes, writeSize);
    await receivedAll(1, 0xfe);
  }
  const done = receivedAll(received + (both ? bytes + 1 : 1), 0xff);
  const start = performance.now();
  const cpu = process.cpuUsage();
  await sendBulk(s, bytes, writeSize);
  await done;
  return { seconds: (performance.now() - start) / 1000, cpu: cpuSince(cpu) };
}
