// `npm run demo`: installs and builds what is missing, then runs `rock demo` (src/cli/demo.ts).

import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ensureBuilt, root } from './ensure.mjs';

ensureBuilt();
const result = spawnSync(process.execPath, [join(root, 'dist', 'src', 'cli', 'rock.js'), 'demo'], { stdio: 'inherit' });
process.exit(result.status ?? 1);
