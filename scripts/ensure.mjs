// Makes a fresh clone ready to run: installs the npm packages when they are
// missing or older than package-lock.json, then compiles the TypeScript.
// Used by `npm test`, `npm run demo` and `npm run sim`; plain Node, no dependencies.

import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..');

function run(command, args) {
  execFileSync(command, args, { cwd: root, stdio: 'inherit' });
}

export function ensureBuilt() {
  const marker = join(root, 'node_modules', '.package-lock.json');
  const lock = join(root, 'package-lock.json');
  if (!existsSync(marker) || statSync(marker).mtimeMs < statSync(lock).mtimeMs) {
    console.log('Installing npm packages (npm ci)...');
    run('npm', ['ci', '--no-audit', '--no-fund']);
  }
  run(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(root, 'tsconfig.json')]);
}
