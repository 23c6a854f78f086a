// `npm run bench -- --quick` as a smoke test: every case runs, side by side,
// and the three outputs are written. No timing is asserted here: the
// numbers are for people (README, closing notes), not for pass or fail.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { netbedSkip } from '../bed/netbed.js';
import { programs } from '../support/programs.js';

const RUN = fileURLToPath(new URL('../../bench/run.js', import.meta.url));

describe('benchmarks', () => {
  test('quick mode runs every case and writes the table, JSON, SVG and Markdown', { skip: programs('iperf3').skip, timeout: 300_000 }, () => {
    const out = mkdtempSync(join(tmpdir(), 'rocks-bench-'));
    try {
      const r = spawnSync(process.execPath, [RUN, '--quick', '--out', out], { encoding: 'utf8', timeout: 280_000 });
      assert.equal(r.status, 0, `bench exited ${r.status}:\n${r.stdout.slice(-3000)}\n${r.stderr.slice(-3000)}`);
      const result = JSON.parse(readFileSync(join(out, 'latest.json'), 'utf8')) as {
        rows: { case: string; metric: string; variant: string; samples: number[] }[];
        machine: { cpus: number };
      };
      const variants = (id: string) => new Set(result.rows.filter((row) => row.case === id).map((row) => row.variant));
      assert.deepEqual(variants('bulk'), new Set(['raw', 'rocks', 'socket.io']));
      assert.deepEqual(variants('latency'), new Set(['raw', 'rocks', 'socket.io']));
      assert.deepEqual(variants('setup'), new Set(['raw', 'rocks (probe)', 'rocks (cached)', 'rocks (enhanced)', 'rocks (early data)', 'socket.io']));
      // tls: 'raw' is node:tls there.
      assert.deepEqual(variants('tls'), new Set(['raw', 'rocks']));
      // Every bulk metric comes with the CPU per GiB of each side, for every variant.
      const bulkMetrics = (id: string, variant: string) =>
        new Set(
          result.rows.filter((row) => row.case === id && row.variant === variant && /one way|both ways/.test(row.metric)).map((row) => row.metric),
        );
      const withCpu = (metrics: string[]) => new Set(metrics.flatMap((m) => [m, `${m}: CPU per GiB, client`, `${m}: CPU per GiB, server`]));
      const oneWay = '64 MiB one way, 64 KiB writes';
      const allBulk = [oneWay, `${oneWay}, warm`, '64 MiB both ways at once, 64 KiB writes', '64 MiB one way, 1 KiB writes'];
      assert.deepEqual(bulkMetrics('bulk', 'raw'), withCpu(allBulk));
      assert.deepEqual(bulkMetrics('bulk', 'rocks'), withCpu(allBulk));
      // socket.io's peers take no warm-up.
      assert.deepEqual(bulkMetrics('bulk', 'socket.io'), withCpu(allBulk.filter((m) => !m.endsWith('warm'))));
      for (const variant of ['raw', 'rocks']) assert.deepEqual(bulkMetrics('tls', variant), withCpu([`${oneWay}, warm`, `${oneWay}, fresh process`]));
      assert.deepEqual(variants('nagle'), new Set(['raw', 'rocks']));
      assert.deepEqual(variants('outage'), new Set(['rocks', 'socket.io']));
      // relay: the case itself fails unless node A heard every relayed resume as relayed (and no direct one).
      assert.deepEqual(variants('relay'), new Set(['raw', 'raw (relayed)', 'rocks (direct)', 'rocks (relayed)']));
      const relayRatios = result.rows.filter((row) => row.case === 'relay' && row.metric.endsWith('relayed / direct')).map((row) => row.metric);
      assert.equal(relayRatios.length, 4, `relayed / direct for both bulk runs and both resume quantiles: ${relayRatios.join('; ')}`);
      assert.deepEqual(variants('memory'), new Set(['raw', 'rocks', 'socket.io']));
      assert.deepEqual(variants('scale'), new Set(['raw', 'rocks', 'rocks (kernel liveness)']));
      assert.deepEqual(variants('iperf'), new Set(['raw', 'rocks']));
      // racks needs root and the network test bed; without them the case measures nothing and says why.
      assert.deepEqual(variants('racks'), netbedSkip() ? new Set() : new Set(['raw', 'racks']));
      // move too: an address change on the bed, with the network watcher and without it.
      assert.deepEqual(variants('move'), netbedSkip() ? new Set() : new Set(['watcher', 'failure timeout']));
      assert.ok(
        result.rows.every((row) => row.samples.length > 0 && row.samples.every(Number.isFinite)),
        'every measure has finite samples',
      );
      assert.match(readFileSync(join(out, 'latest.svg'), 'utf8'), /^<svg [^>]*>.*<polyline/s, 'the chart has bars and the outage timeline');
      assert.match(readFileSync(join(out, 'latest.md'), 'utf8'), /\| bulk \|/);
      assert.match(r.stdout, /case +metric +variant +median +spread +vs raw/);
      console.log(
        `# bench --quick: ${result.rows.length} measures in ${(JSON.parse(readFileSync(join(out, 'latest.json'), 'utf8')) as { seconds: number }).seconds} s`,
      );
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});
