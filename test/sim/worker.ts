// Runs a list of seeds in a worker thread and reports the failures.

import { parentPort, workerData } from 'node:worker_threads';
import { addFigures, type ClusterFigures, noFigures } from './figures.js';
import { runSeed } from './scenario.js';

const seeds = workerData as number[];
const failures: { seed: number; drawn: Record<string, unknown>; failures: string[]; trace: string[] }[] = [];
let faults = 0;
let resumes = 0;
const figures: ClusterFigures = noFigures();
for (const seed of seeds) {
  const r = runSeed(seed);
  addFigures(figures, r);
  faults += r.faults;
  resumes += r.resumes;
  if (r.failures.length > 0) failures.push({ seed, drawn: r.drawn, failures: r.failures, trace: r.trace.slice(-30) });
}
parentPort!.postMessage({ failures, faults, resumes, figures });
