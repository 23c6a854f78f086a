// `npm run bench`: builds, then runs the benchmarks (bench/run.ts). Arguments pass through: `npm run bench -- --quick`.

import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ensureBuilt, root } from './ensure.mjs';

ensureBuilt();
const result = spawnSync(process.execPath, [join(root, 'dist', 'bench', 'run.js'), ...process.argv.slice(2)], { cwd: root, stdio: 'inherit' });
process.exit(result.status ?? 1);
