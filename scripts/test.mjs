// `npm test`: installs what the tests need, builds, and runs every test.
// Extra arguments are file-name filters: `npm test -- frames sim`.
// Without filters, the lint and format check (Biome) and the commit-subject
// check run first; the tests run either way, and `npm test` fails if any failed.
//
// Each test file runs in its own `node --test` with a watchdog: a file still
// running after FILE_TIMEOUT has the stacks of its processes printed (thread
// wait channels, gdb when present, and Node's diagnostic report for those
// whose event loop still runs), is killed and runs once more. A file that
// hangs twice fails; a failing file is never run again. Without it, one hang
// (as Node's generateKeyPairSync deadlock was, see src/protocol/keys.ts)
// costs CI its whole time limit.

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { ensureBuilt, ensurePrograms, root } from './ensure.mjs';

// No --test-force-exit: on Node 20 it sometimes ends a run before its last
// suites ran, with exit code 0 (test/protocol/session reported 110, 119 or
// 122 of its 128 tests). A file whose process does not end (test/node/relay
// was seen once spinning in Node's exit clean-up after all its tests had
// passed) is left to the watchdog below.

/** Seconds one test file may run before it counts as hung (ROCKS_TEST_FILE_TIMEOUT overrides). */
const FILE_TIMEOUT = Number(process.env.ROCKS_TEST_FILE_TIMEOUT ?? 600);

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
const outcome = await runFiles(files);
if (failedChecks.length > 0) {
  console.error(`\nFailed checks: ${failedChecks.join(', ')} (see their output above the tests).`);
  console.error('Formatting: `npx biome format --write .`; lint findings: `npx biome lint .` names each rule.');
  process.exit(1);
}
process.exit(outcome);

/** Runs every file, one after another; returns the exit code. */
async function runFiles(list) {
  const totals = { tests: 0, pass: 0, fail: 0, skipped: 0, todo: 0, cancelled: 0 };
  const failed = [];
  const rerun = [];
  const started = Date.now();
  for (const file of list) {
    const name = relative(root, file);
    let result = await runFile(file, totals);
    if (result.hung) {
      console.log(`# ${name} HUNG: still running after ${FILE_TIMEOUT} s; reports above; running it once more`);
      rerun.push(name);
      result = await runFile(file, totals);
      if (result.hung) console.log(`# ${name} HUNG again after ${FILE_TIMEOUT} s`);
    }
    if (result.code !== 0) failed.push(name);
  }
  const minutes = ((Date.now() - started) / 60_000).toFixed(1);
  console.log(`\n# all files: ${list.length} files in ${minutes} min`);
  for (const [key, value] of Object.entries(totals)) console.log(`# ${key} ${value}`);
  if (rerun.length > 0) console.log(`# hung once and run again: ${rerun.join(', ')}`);
  if (failed.length > 0) console.log(`# failed files: ${failed.join(', ')}`);
  return failed.length === 0 ? 0 : 1;
}

/**
 * One `node --test FILE` in its own process group, output passed through and
 * its summary added to `totals`. On timeout: a diagnostic report from each
 * Node process of the group, then the group is killed.
 */
function runFile(file, totals) {
  const reports = mkdtempSync(join(tmpdir(), 'rocks-test-report-'));
  const env = {
    ...process.env,
    NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --report-on-signal --report-signal=SIGUSR2 --report-directory=${reports}`.trim(),
  };
  const child = spawn(process.execPath, ['--test', file], { cwd: root, env, stdio: ['ignore', 'pipe', 'inherit'], detached: true });
  const counts = {};
  let pending = '';
  child.stdout.on('data', (chunk) => {
    process.stdout.write(chunk);
    const lines = (pending + chunk.toString('utf8')).split('\n');
    pending = lines.pop();
    for (const line of lines) {
      const m = /^# (tests|pass|fail|skipped|todo|cancelled) (\d+)$/.exec(line);
      if (m) counts[m[1]] = Number(m[2]);
    }
  });
  let hung = false;
  let closed = false;
  const timer = setTimeout(() => {
    hung = true;
    describeGroup(child.pid);
    signalGroup(child.pid, 'SIGUSR2');
    setTimeout(() => {
      // The group may have ended meanwhile (its reports went with it): then there is nothing left to print or kill.
      if (!closed) printReports(reports);
      signalGroup(child.pid, 'SIGKILL');
    }, 3000);
  }, FILE_TIMEOUT * 1000);
  return new Promise((resolve) => {
    child.on('close', (code, signal) => {
      closed = true;
      clearTimeout(timer);
      for (const [key, value] of Object.entries(counts)) totals[key] += value;
      rmSync(reports, { recursive: true, force: true });
      resolve({ code: code ?? (signal ? 1 : 0), hung });
    });
  });
}

/** Where each process of the group waits: its threads' kernel wait channels, and gdb's stacks when gdb is there. */
function describeGroup(pgid) {
  const pids = spawnSync('pgrep', ['-g', String(pgid)], { encoding: 'utf8' })
    .stdout.split('\n')
    .filter(Boolean);
  for (const pid of pids) {
    const read = (path) => {
      try {
        return readFileSync(path, 'utf8').replaceAll('\0', ' ').trim();
      } catch {
        return '?';
      }
    };
    console.log(`# process ${pid}: ${read(`/proc/${pid}/cmdline`)}`);
    let threads = [];
    try {
      threads = readdirSync(`/proc/${pid}/task`);
    } catch {}
    for (const tid of threads) {
      const stat = read(`/proc/${pid}/task/${tid}/stat`).split(') ')[1]?.split(' ')[0];
      console.log(`#   thread ${tid} ${read(`/proc/${pid}/task/${tid}/comm`)} state ${stat} wchan ${read(`/proc/${pid}/task/${tid}/wchan`)}`);
    }
    const gdb = spawnSync('gdb', ['-p', pid, '-batch', '-ex', 'thread apply all bt 12'], { encoding: 'utf8', timeout: 30_000 });
    if (gdb.error === undefined) for (const line of gdb.stdout.split('\n').filter((l) => /^(Thread|#)/.test(l))) console.log(`#   gdb ${line}`);
  }
}

function signalGroup(pid, signal) {
  try {
    process.kill(-pid, signal);
  } catch {
    // Already gone.
  }
}

/** The JavaScript stack of each report: where a hung process whose event loop still runs is waiting. */
function printReports(dir) {
  for (const name of readdirSync(dir)) {
    try {
      const report = JSON.parse(readFileSync(join(dir, name), 'utf8'));
      console.log(`# report ${name}: ${report.header?.commandLine?.join(' ')}`);
      for (const line of report.javascriptStack?.stack ?? []) console.log(`#   js ${line}`);
    } catch (error) {
      console.log(`# report ${name} unreadable: ${error.message}`);
    }
  }
}
