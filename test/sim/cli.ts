// Runs simulation seeds from the command line:
//   npm run sim -- --seed 1234 --verbose     replay one seed with its trace
//   npm run sim -- --seeds 5000 --start 1    run a range of seeds

import { parseArgs } from 'node:util';
import { addFigures, describeFigures, noFigures } from './figures.js';
import { runSeed } from './scenario.js';

const { values } = parseArgs({
  options: {
    seed: { type: 'string' },
    seeds: { type: 'string', default: '1000' },
    start: { type: 'string', default: '1' },
    verbose: { type: 'boolean', default: false },
  },
});

function positive(name: string, text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0) {
    console.error(`sim: --${name} must be a whole number, got ${JSON.stringify(text)}`);
    process.exit(2);
  }
  return n;
}

const seeds =
  values.seed !== undefined
    ? [positive('seed', values.seed)]
    : Array.from({ length: positive('seeds', values.seeds!) }, (_, i) => positive('start', values.start!) + i);

let failed = 0;
const started = Date.now();
const totals = noFigures();
for (const seed of seeds) {
  const r = runSeed(seed, values.verbose);
  addFigures(totals, r);
  if (r.failures.length > 0) {
    failed++;
    console.log(`seed ${seed} FAILED after ${r.simTime.toFixed(0)} simulated ms`);
    console.log(`  drawn: ${JSON.stringify(r.drawn)}`);
    for (const f of r.failures) console.log(`  ${f}`);
    if (!values.verbose)
      console.log(
        r.trace
          .slice(-40)
          .map((l) => `    ${l}`)
          .join('\n'),
      );
    console.log(`  replay: npm run sim -- --seed ${seed} --verbose`);
  } else if (seeds.length === 1) {
    console.log(
      `seed ${seed} ok: ${r.bytes} bytes, ${r.faults} faults, ${r.suspends} suspends, ${r.resumes} resumes, ${r.simTime.toFixed(0)} simulated ms`,
    );
    console.log(`  drawn: ${JSON.stringify(r.drawn)}`);
  }
}
console.log(`${seeds.length - failed}/${seeds.length} seeds passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
console.log(describeFigures(totals));
process.exit(failed > 0 ? 1 : 0);
