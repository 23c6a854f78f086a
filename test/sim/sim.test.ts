// Deterministic simulation: thousands of seeded runs of clients and a server
// (or several nodes behind a balancer, relaying, dying and restarting) over a
// simulated network that resets, black-holes and partitions them at random
// moments. A fixed range of seeds runs every time, plus a fresh random range
// so that each CI run explores new ground. Any failure prints the command
// that replays it.
//
// ROCKS_SIM_SEEDS (default 2000) and ROCKS_SIM_RANDOM (default 1000) set the
// counts; ROCKS_SIM_START fixes the random range's start.

import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { addFigures, type ClusterFigures, describeFigures, noFigures } from './figures.js';

const fixed = Number(process.env.ROCKS_SIM_SEEDS ?? 2000);
const extra = Number(process.env.ROCKS_SIM_RANDOM ?? 1000);
const start = Number(process.env.ROCKS_SIM_START ?? randomInt(1_000_000, 2 ** 31 - extra));

interface Report {
  failures: { seed: number; drawn: Record<string, unknown>; failures: string[]; trace: string[] }[];
  faults: number;
  resumes: number;
  figures: ClusterFigures;
}

function runInWorker(seeds: number[]): Promise<Report> {
  return new Promise((resolve, reject) => {
    const w = new Worker(new URL('./worker.js', import.meta.url), { workerData: seeds });
    w.once('message', resolve);
    w.once('error', reject);
  });
}

test(`simulation: seeds 1-${fixed} and ${extra} seeds from ${start}`, { timeout: 600_000 }, async () => {
  const seeds = [...Array.from({ length: fixed }, (_, i) => 1 + i), ...Array.from({ length: extra }, (_, i) => start + i)];
  const workers = Math.max(1, Math.min(availableParallelism(), 4));
  const shares = Array.from({ length: workers }, (_, w) => seeds.filter((_, i) => i % workers === w));
  const reports = await Promise.all(shares.map(runInWorker));
  const failures = reports.flatMap((r) => r.failures);
  const faults = reports.reduce((n, r) => n + r.faults, 0);
  const resumes = reports.reduce((n, r) => n + r.resumes, 0);
  const figures: ClusterFigures = noFigures();
  for (const r of reports) addFigures(figures, r.figures);
  console.log(`# ${seeds.length} seeds, ${faults} faults injected, ${resumes} client resumes`);
  console.log(`# ${describeFigures(figures)}`);
  for (const f of failures) {
    console.log(
      `seed ${f.seed} failed\n  drawn: ${JSON.stringify(f.drawn)}\n  ${f.failures.join('\n  ')}\n${f.trace.map((l) => `    ${l}`).join('\n')}`,
    );
    console.log(`  replay: npm run sim -- --seed ${f.seed} --verbose`);
  }
  assert.deepEqual(
    failures.map((f) => f.seed),
    [],
    'seeds that failed (see above for how to replay them)',
  );
});
