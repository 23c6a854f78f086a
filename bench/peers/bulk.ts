// Bulk writes shared by both peers.

import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
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
 * Returns the seconds it took and the CPU seconds this process used meanwhile.
 */
export async function timeBulk(s: Stream, bytes: number, writeSize: number, both: boolean): Promise<{ seconds: number; cpu: number }> {
  const expect = both ? bytes + 1 : 1;
  let received = 0;
  const done = new Promise<void>((resolve) =>
    s.on('data', (d: Buffer) => {
      received += d.length;
      if (received >= expect) resolve();
    }),
  );
  const start = performance.now();
  const cpu = process.cpuUsage();
  await sendBulk(s, bytes, writeSize);
  await done;
  const used = process.cpuUsage(cpu);
  return { seconds: (performance.now() - start) / 1000, cpu: (used.user + used.system) / 1e6 };
}
