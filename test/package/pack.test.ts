// The package as a user gets it: `npm pack`, install the tarball into an
// empty folder (its dependencies come from the npm registry or cache), then
// run the installed `rock --help` and import the library by its name.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { accessSync, constants, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { ERROR_CODES } from '../../src/protocol/errors.js';
import { ROOT } from '../docs/markdown.js';

const run = promisify(execFile);

interface PackResult {
  filename: string;
  files: { path: string; mode: number }[];
}

interface PackageJson {
  name: string;
  main: string;
  types: string;
  exports: Record<string, Record<string, string>>;
  bin: Record<string, string>;
  files: string[];
}

const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as PackageJson;

// Run in the installed copy: imports 'rocks' by name, echoes a byte over loopback, prints what it saw.
const CONSUMER = `
import { connect, createServer, ERROR_CODES, RocksError } from 'rocks';
const timer = setTimeout(() => { console.error('timed out'); process.exit(1); }, 20000);
const server = createServer((s) => s.pipe(s));
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const socket = connect(server.address().port, '127.0.0.1');
await new Promise((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject); });
socket.write(Buffer.from([42]));
const echoed = await new Promise((resolve) => socket.once('data', resolve));
const error = new RocksError('ERR_ROCKS_INVALID_OPTION', 'a test');
console.log(JSON.stringify({
  resolved: import.meta.resolve('rocks'),
  echoed: [...echoed],
  reliable: socket.reliable,
  sessionId: typeof socket.sessionId,
  code: error.code,
  codes: Object.keys(ERROR_CODES).length,
}));
clearTimeout(timer);
process.exit(0);
`;

describe('the packed package', { timeout: 300_000 }, () => {
  let dir: string;
  let packed: PackResult;
  let installed: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'rocks-pack-'));
    const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', dir], { cwd: ROOT, maxBuffer: 16 << 20 });
    [packed] = JSON.parse(stdout) as PackResult[];
    writeFileSync(join(dir, 'package.json'), '{ "private": true }\n');
    await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--no-package-lock', join(dir, packed.filename)], {
      cwd: dir,
      maxBuffer: 16 << 20,
    });
    writeFileSync(join(dir, 'consumer.mjs'), CONSUMER);
    installed = join(dir, 'node_modules', pkg.name);
  });

  after(() => {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  test('every file package.json points at is in the tarball, with the license and docs', () => {
    const files = new Set(packed.files.map((f) => f.path));
    const entries = [pkg.main, pkg.types, ...Object.values(pkg.exports).flatMap((e) => Object.values(e)), ...Object.values(pkg.bin)];
    assert.ok(entries.length >= 6, entries.join(', '));
    for (const entry of entries) assert.ok(files.has(entry.replace(/^\.\//, '')), `${entry} is in the tarball`);
    for (const file of ['LICENSE', 'README.md', 'package.json', 'docs/PROTOCOL.md']) assert.ok(files.has(file), `${file} is in the tarball`);
    const outside = [...files].filter((f) => !/^(dist\/src\/|docs\/|README\.md$|LICENSE$|package\.json$)/.test(f));
    assert.deepEqual(outside, [], 'nothing but the build, the docs, the README and the license');
  });

  test('the commands are scripts Node runs, executable once installed', () => {
    for (const [name, path] of Object.entries(pkg.bin)) {
      const file = join(installed, path);
      assert.equal(readFileSync(file, 'utf8').split('\n')[0], '#!/usr/bin/env node', `${name} starts with a shebang`);
      accessSync(file, constants.X_OK);
      accessSync(join(dir, 'node_modules', '.bin', name), constants.X_OK);
    }
  });

  test('the installed `rock --help` prints the usage', async () => {
    const { stdout, stderr } = await run(join(dir, 'node_modules', '.bin', 'rock'), ['--help'], { cwd: dir });
    assert.match(stdout, /^Usage: rock COMMAND/);
    assert.equal(stderr, '');
  });

  test("a program imports 'rocks' by name and echoes a byte over loopback", async () => {
    const { stdout } = await run(process.execPath, [join(dir, 'consumer.mjs')], { cwd: dir });
    const seen = JSON.parse(stdout) as Record<string, unknown>;
    assert.equal(seen.resolved, `file://${join(installed, pkg.main)}`, 'the installed copy, not the repository');
    assert.deepEqual(seen.echoed, [42]);
    assert.equal(seen.reliable, true, 'rocks to rocks: a session, not a plain connection');
    assert.equal(seen.sessionId, 'string');
    assert.equal(seen.code, 'ERR_ROCKS_INVALID_OPTION');
    assert.equal(seen.codes, Object.keys(ERROR_CODES).length);
  });
});
