// Keeps the README complete and self-contained: every error code rocks can
// report is in its table (and in the protocol's, with its wire number), and
// no document points at a file outside the repository.

import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, test } from 'node:test';
import { ERROR_CODES, type RocksErrorCode } from '../../src/protocol/errors.js';
import { ROOT, readRepoFile, section, tableRows } from './markdown.js';

const CODES = Object.keys(ERROR_CODES) as RocksErrorCode[];

/** The codes named in the first cell of the rows of every table in `markdown`. */
function codesInTables(markdown: string): Map<string, string[]> {
  const rows = new Map<string, string[]>();
  for (const cells of tableRows(markdown)) {
    for (const m of cells[0].matchAll(/`(ERR_ROCKS_[A-Z_]+)`/g)) rows.set(m[1], cells);
  }
  return rows;
}

const MARKDOWN = ['README.md', 'CONTRIBUTING.md', ...readdirSync(join(ROOT, 'docs')).map((f) => `docs/${f}`)].filter(
  (f) => f.endsWith('.md') && existsSync(join(ROOT, f)),
);

describe('README and docs', () => {
  test('the README error table lists every code of src/protocol/errors.ts, and no other', () => {
    const table = codesInTables(readRepoFile('README.md'));
    assert.deepEqual([...table.keys()].sort(), [...CODES].sort());
    for (const [code, cells] of table) assert.ok(cells.length >= 2 && cells.at(-1) !== '', `${code} has a meaning`);
  });

  test('docs/PROTOCOL.md §8.2 gives every wire code its number and names every local-only code', () => {
    const codes = section(readRepoFile('docs/PROTOCOL.md'), '### 8.2');
    const table = codesInTables(codes);
    for (const code of CODES) {
      const { wire } = ERROR_CODES[code];
      if (wire === 0) {
        assert.ok(!table.has(code), `${code} never crosses the wire, yet has a row`);
        assert.match(codes, new RegExp(`Local-only codes[^]*\`${code}\``), `${code} is among the local-only codes`);
      } else {
        assert.equal(table.get(code)?.[1], String(wire), `${code}'s wire number`);
      }
    }
    assert.deepEqual([...table.keys()].sort(), CODES.filter((c) => ERROR_CODES[c].wire !== 0).sort());
  });

  test('no document points outside the repository', () => {
    assert.ok(MARKDOWN.length >= 4, MARKDOWN.join(', '));
    for (const file of MARKDOWN) {
      const text = readRepoFile(file);
      assert.doesNotMatch(text, /(^|[\s(`'"])\.\.\/[\w.-]/m, `${file} names a path outside the repository`);
      assert.doesNotMatch(text, /\/work\/|\/home\/|\/root\//, `${file} names a path on one machine`);
      // Every file of the repository a document names (`docs/X.md`, `src/...ts`, ...) exists.
      for (const m of text.matchAll(/`((?:docs|src|test|bench|scripts)\/[\w./-]+\.(?:md|ts|mjs))`/g)) {
        assert.ok(existsSync(join(ROOT, m[1])), `${file} names ${m[1]}, which does not exist`);
      }
      for (const m of text.matchAll(/\]\((?!https?:|#|mailto:)([^)#]+)/g)) {
        assert.ok(existsSync(join(ROOT, dirname(file), m[1])), `${file} links to ${m[1]}, which does not exist`);
      }
    }
  });

  test('the LICENSE is the MIT license package.json names', () => {
    const pkg = JSON.parse(readRepoFile('package.json')) as { license: string };
    assert.equal(pkg.license, 'MIT');
    const license = readRepoFile('LICENSE');
    assert.match(license, /^MIT License\n\nCopyright \(c\) \d{4} the rocks authors\n/);
    assert.match(license, /THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND/);
  });
});
