// The bulk job's warm-up (bench/peers/bulk.ts): the client sends the
// warm-up bytes, waits for the server's word that they all arrived, and
// only then times the rest. A server that miscounts either leaves the
// client waiting (the run fails by its deadline) or sends its words out of
// turn (the client checks them: 0xfe, then 0xff, one byte each).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Peer, runPair } from '../../bench/core/process.js';

const MIB = 1024 * 1024;

describe('bench bulk peers', () => {
  for (const transport of ['raw', 'rocks']) {
    test(`${transport}: times the bytes after the warm-up, and only those`, { timeout: 60_000 }, async () => {
      const job = ['--transport', transport, '--options', '{}', '--job', 'bulk', '--bytes', String(MIB), '--write-size', '65536'];
      const result = await runPair<{ type: 'result'; seconds: number; bytes: number; cpu: number; server: { cpu: number; bytes: number } }>(
        ['server', [...job, '--warmup-bytes', String(8 * MIB)]],
        ['client', [...job, '--warmup-bytes', String(8 * MIB)]],
        { serverReport: 'server-cpu' },
      );
      assert.equal(result.bytes, MIB);
      assert.ok(result.seconds > 0 && Number.isFinite(result.seconds));
      // The server's CPU time covers the timed bytes, not the warm-up.
      assert.equal(result.server.bytes, MIB);
      for (const cpu of [result.cpu, result.server.cpu]) assert.ok(cpu > 0 && Number.isFinite(cpu), `CPU seconds ${cpu}`);
    });
  }

  test('the server refuses a warm-up both ways with a clear error', { timeout: 30_000 }, async () => {
    const server = new Peer('server', ['--transport', 'raw', '--options', '{}', '--job', 'bulk', '--bytes', '1', '--both', '--warmup-bytes', '1']);
    try {
      await assert.rejects(server.next('ready', 20_000), /--warmup-bytes is for one-way bulk only/);
    } finally {
      await server.stop();
    }
  });
});
