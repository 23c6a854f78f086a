// Bulk writes shared by both peers.

import { randomBytes } from 'node:crypto';
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
