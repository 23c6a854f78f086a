// `npm run bench [-- --quick] [-- --only bulk,latency]`: every case side by
// side in one run, each variant against raw node:net on the same machine;
// writes results/bench-<time>.{json,svg} and results/latest.{json,svg,md}.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { bulk } from './cases/bulk.js';
import { iperf } from './cases/iperf.js';
import { latency } from './cases/latency.js';
import { memory } from './cases/memory.js';
import { move } from './cases/move.js';
import { nagle } from './cases/nagle.js';
import { outage } from './cases/outage.js';
import { racks } from './cases/racks.js';
import { relay } from './cases/relay.js';
import { scale } from './cases/scale.js';
import { setup } from './cases/setup.js';
import { tls } from './cases/tls.js';
import { machine, markdown, rows, svg, table } from './core/report.js';
import type { BenchCase, Context, Measure } from './core/types.js';

const CASES: BenchCase[] = [bulk, latency, setup, tls, nagle, outage, move, relay, memory, scale, iperf, racks];

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    repeats: { type: 'string' },
    out: { type: 'string', default: fileURLToPath(new URL('../../results/', import.meta.url)) },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  console.log(`Usage: npm run bench -- [--quick] [--only ${CASES.map((c) => c.id).join(',')}] [--repeats N] [--out DIR]`);
  process.exit(0);
}
const only = values.only?.split(',');
const unknown = only?.filter((id) => !CASES.some((c) => c.id === id)) ?? [];
if (unknown.length > 0) {
  console.error(`bench: unknown case ${unknown.join(', ')} (cases: ${CASES.map((c) => c.id).join(', ')})`);
  process.exit(2);
}

const ctx: Context = {
  quick: values.quick!,
  repeats: Number(values.repeats ?? (values.quick ? 2 : 5)),
  log: (line) => console.log(`  ${line}`),
  timelines: [],
};
const started = Date.now();
const measures: Measure[] = [];
// A case that fails (the scale case gives up when a heal takes over a
// minute) is reported and the run goes on: the other cases' figures are
// still written, and the exit code says that something failed.
const failed: { case: string; error: string }[] = [];
for (const c of CASES.filter((c) => !only || only.includes(c.id))) {
  console.log(`${c.title}...`);
  const t = Date.now();
  try {
    measures.push(...(await c.run(ctx)));
  } catch (err) {
    const error = err instanceof Error ? err.message : String(err);
    failed.push({ case: c.id, error });
    console.log(`  FAILED: ${error}`);
  }
  console.log(`  (${((Date.now() - t) / 1000).toFixed(1)} s)`);
}

const all = rows(measures);
const about = {
  date: new Date().toISOString(),
  quick: ctx.quick,
  repeats: ctx.repeats,
  seconds: Math.round((Date.now() - started) / 1000),
  machine: machine(),
};
console.log(`\n${table(all)}\n`);
mkdirSync(values.out!, { recursive: true });
const stamp = about.date.replace(/[:.]/g, '-');
const json = `${JSON.stringify({ ...about, rows: all, timelines: ctx.timelines, failed }, null, 2)}\n`;
const chart = svg(all, ctx.timelines);
const md = `Taken ${about.date.slice(0, 10)} on ${about.machine.cpus} × ${about.machine.model}, ${about.machine.memoryGiB} GiB, Node ${about.machine.node}, Linux ${about.machine.kernel}; ${ctx.quick ? 'quick mode, ' : ''}${ctx.repeats} runs each.\n\n${markdown(all)}\n${failed.map((f) => `\nFailed: ${f.case}: ${f.error}\n`).join('')}`;
for (const [name, text] of [
  [`bench-${stamp}.json`, json],
  [`bench-${stamp}.svg`, chart],
  ['latest.json', json],
  ['latest.svg', chart],
  ['latest.md', md],
]) {
  writeFileSync(join(values.out!, name), text);
}
console.log(`Written to ${values.out} (latest.json, latest.svg, latest.md) in ${about.seconds} s.`);
if (failed.length > 0) {
  console.error(`bench: ${failed.length} case(s) failed: ${failed.map((f) => f.case).join(', ')}`);
  process.exit(1);
}
