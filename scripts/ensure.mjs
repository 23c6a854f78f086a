// Makes a fresh clone ready to run: installs the npm packages when they are
// missing or older than package-lock.json, then compiles the TypeScript.
// Used by `npm test`, `npm run demo` and `npm run sim`; plain Node, no dependencies.
// `npm test` also installs the real programs the interoperability tests run
// (Debian packages, when root); without them those tests skip and say why.

import { execFileSync } from 'node:child_process';
import { accessSync, constants, existsSync, statSync } from 'node:fs';
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

/** Programs the tests start, and the Debian package of each. */
export const PROGRAMS = {
  'redis-server': 'redis-server',
  'redis-cli': 'redis-tools',
  sshd: 'openssh-server',
  ssh: 'openssh-client',
  'ssh-keygen': 'openssh-client',
  socat: 'socat',
  nc: 'netcat-openbsd',
  curl: 'curl',
  // TLS certificates for tests, and a real TLS server and client (test/interop/tls.test.ts).
  openssl: 'openssl',
  python3: 'python3',
  // rock run for programs that are not Node (test/cli/run-any.test.ts).
  proxychains4: 'proxychains4',
  // psql and a throwaway PostgreSQL server under rock run (Debian 12's version).
  psql: 'postgresql-client',
  '/usr/lib/postgresql/15/bin/postgres': 'postgresql',
  // The network test bed (test/bed): namespaces, veth, routes, tbf, nftables.
  ip: 'iproute2',
  tc: 'iproute2',
  nft: 'nftables',
  // PROXY protocol headers checked against a real writer and reader (test/protocol/proxy-header.test.ts),
  // and a real load balancer routing resumes by node id (docs/haproxy.cfg).
  haproxy: 'haproxy',
  // The benchmark's real client (bench/cases/iperf.ts).
  iperf3: 'iperf3',
  // A proxy that breaks EDP probes unless told to pass half-closes (docs/BALANCERS.md),
  // and its stream module (a file, not a program: found by its full path).
  nginx: 'nginx',
  '/usr/lib/nginx/modules/ngx_stream_module.so': 'libnginx-mod-stream',
};

/**
 * The full path of `program` on PATH (or in /usr/sbin, where sshd lives), or
 * undefined. A full path names a file that must exist (a module, say).
 */
export function findProgram(program) {
  if (program.startsWith('/')) return existsSync(program) ? program : undefined;
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin'];
  for (const dir of dirs) {
    if (dir === '') continue;
    const path = join(dir, program);
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {}
  }
  return undefined;
}

/** Installs the packages of missing programs with apt-get (one update, one install) when root. */
export function ensurePrograms() {
  const missing = Object.entries(PROGRAMS).filter(([program]) => findProgram(program) === undefined);
  if (missing.length === 0) return;
  const packages = [...new Set(missing.map(([, pkg]) => pkg))];
  if (process.getuid?.() !== 0 || findProgram('apt-get') === undefined) {
    console.log(`Not root or no apt-get: tests that need ${packages.join(', ')} will be skipped.`);
    return;
  }
  console.log(`Installing ${packages.join(' ')} (apt-get)...`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  try {
    execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
    execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...packages], { stdio: 'inherit', env });
  } catch (err) {
    // The tests that need them say they are skipped, and why.
    console.log(`apt-get failed (${err.message}); tests that need ${packages.join(', ')} will be skipped.`);
  }
}
