// Checks that every commit subject after BASELINE, merge commits included, is
// at most 72 characters (the rule is in CONTRIBUTING.md). Older history keeps
// its long subjects: published commits are not rewritten.
// Run by `npm test` without filters; plain Node, no dependencies.

import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The last commit before the rule; every commit after it must follow it. */
export const BASELINE = 'db0f45d';
export const MAX_SUBJECT = 72;

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

function git(...args) {
  return execFileSync('git', args, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function skip(why) {
  console.log(`commit subjects: not checked: ${why}`);
  process.exit(0);
}

try {
  if (git('rev-parse', '--is-inside-work-tree').trim() !== 'true') skip('not in a git work tree');
} catch {
  skip('not in a git checkout (or git is missing)');
}
try {
  git('cat-file', '-e', `${BASELINE}^{commit}`);
} catch {
  // A shallow clone lacks older commits; anywhere else a missing baseline means a rewritten history.
  if (git('rev-parse', '--is-shallow-repository').trim() === 'true') skip(`shallow clone without the baseline ${BASELINE}; fetch the full history`);
  console.error(`commit subjects: the baseline commit ${BASELINE} is not in this history`);
  process.exit(1);
}

// %s is the subject as git shows it: the first paragraph of the message on one line.
const commits = git('log', '--format=%h%x00%s', `${BASELINE}..HEAD`)
  .split('\n')
  .filter((line) => line !== '')
  .map((line) => {
    const [hash, subject] = line.split('\0');
    return { hash, subject };
  });
const long = commits.filter((c) => [...c.subject].length > MAX_SUBJECT);
for (const c of long) console.error(`${c.hash}: subject of ${[...c.subject].length} characters (at most ${MAX_SUBJECT}): ${c.subject}`);
if (long.length > 0) {
  console.error(
    `commit subjects: ${long.length} of ${commits.length} after ${BASELINE} are too long; put the details in the body (git commit --amend, or git rebase -i)`,
  );
  process.exit(1);
}
console.log(`commit subjects: ${commits.length} after ${BASELINE}, all at most ${MAX_SUBJECT} characters`);
