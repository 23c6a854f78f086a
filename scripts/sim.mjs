// `npm run sim -- --seed N [--verbose]`: replays one simulation seed;
// `npm run sim -- --seeds N [--start S]`: runs a range.

import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ensureBuilt, root } from './ensure.mjs';

ensureBuilt();
const result = spawnSync(process.execPath, [join(root, 'dist', 'test', 'sim', 'cli.js'), ...process.argv.slice(2)], { stdio: 'inherit' });
process.exit(result.status ?? 1);
