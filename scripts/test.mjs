// `npm test`: installs what the tests need, builds, and runs every test.
// Extra arguments are file-name filters: `npm test -- frames sim`.
// Without filters, the lint and format check (Biome) and the commit-subject
// check run first; the tests run either way, and `npm test` fails if any failed.

import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { ensureBuilt, ensurePrograms, root } from './ensure.mjs';

ensureBuilt();
ensurePrograms();

function findTests(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...findTests(path));
    else if (name.endsWith('.test.js')) out.push(path);
  }
  return out;
}

/** Runs one check with plain Node; returns its name when it failed. */
function check(name, args) {
  console.log(`# ${name}`);
  const { status } = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
  return status === 0 ? [] : [name];
}

const filters = process.argv.slice(2);
const failedChecks = [];
if (filters.length === 0) {
  const biome = join(root, 'node_modules', '@biomejs', 'biome', 'bin', 'biome');
  // The summary reporter lists each file that is not formatted and each lint rule's findings by file.
  const colors = process.stdout.isTTY ? [] : ['--colors=off'];
  failedChecks.push(...check('lint and format (biome ci)', [biome, 'ci', '--error-on-warnings', '--reporter=summary', ...colors]));
  failedChecks.push(...check('commit subjects', [join(root, 'scripts', 'check-commits.mjs')]));
}

const files = findTests(join(root, 'dist', 'test'))
  .filter((f) => filters.length === 0 || filters.some((x) => relative(root, f).includes(x)))
  .sort();
if (files.length === 0) {
  console.error(`no test files match ${filters.join(' ')}`);
  process.exit(2);
}
const result = spawnSync(process.execPath, ['--test', '--test-concurrency=1', ...files], { cwd: root, stdio: 'inherit' });
if (failedChecks.length > 0) {
  console.error(`\nFailed checks: ${failedChecks.join(', ')} (see their output above the tests).`);
  console.error('Formatting: `npx biome format --write .`; lint findings: `npx biome lint .` names each rule.');
  process.exit(1);
}
process.exit(result.status ?? 1);
