// `npm run rock -- ARGS`: builds what is missing, then runs the rock command
// (the same as the installed `rock` bin).

import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ensureBuilt, root } from './ensure.mjs';

ensureBuilt();
const result = spawnSync(process.execPath, [join(root, 'dist', 'src', 'cli', 'rock.js'), ...process.argv.slice(2)], { stdio: 'inherit' });
process.exit(result.status ?? 1);
