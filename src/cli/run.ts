// `rock run`: starts a Node.js program with the rocks preload (preload.ts) in
// NODE_OPTIONS, so that the program, and every Node process it starts, opens
// and accepts its TCP connections as rocks sockets. Programs in other
// languages cannot be interposed this way: they get a pointer to rock
// forward and rock stdio instead.

import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import { constants } from 'node:os';
import { basename, delimiter, extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The preload, next to this file in dist/src/cli/. A file URL: NODE_OPTIONS splits on spaces, and a URL has none. */
export const PRELOAD_URL = new URL('./preload.js', import.meta.url).href;

/** The environment that makes a Node process load the preload with these options. */
export function preloadEnv(env: NodeJS.ProcessEnv, sessionOptions: Record<string, unknown>): NodeJS.ProcessEnv {
  const flag = `--import=${PRELOAD_URL}`;
  const existing = env.NODE_OPTIONS ?? '';
  // Keep the program's own NODE_OPTIONS; a nested rock run does not load the preload twice.
  const nodeOptions = existing.split(/\s+/).includes(flag) ? existing : `${existing} ${flag}`.trim();
  return { ...env, NODE_OPTIONS: nodeOptions, ROCKS_OPTIONS: JSON.stringify(sessionOptions) };
}

/** The first line of a file, if it is a `#!` line (at most 256 bytes are read). */
function shebang(path: string): string | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const buffer = Buffer.alloc(256);
    const line = buffer
      .subarray(0, readSync(fd, buffer, 0, buffer.length, 0))
      .toString('latin1')
      .split('\n')[0];
    return line.startsWith('#!') ? line : undefined;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Where the shell would find `command`: itself if it names a path, else the first match on PATH. */
function findCommand(command: string): string | undefined {
  if (command.includes('/')) return existsSync(command) ? command : undefined;
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue;
    const path = join(dir, command);
    try {
      if (statSync(path).isFile()) return path;
    } catch {}
  }
  return undefined;
}

/**
 * How to start `command` as a Node program: a .js/.mjs/.cjs file (run with
 * this node), the node executable itself (or any binary named node*), or a
 * script whose #! line runs node. Throws for anything else.
 */
export function nodeCommand(command: string[]): { file: string; args: string[] } {
  const [program, ...args] = command;
  if (program === undefined || program === '') throw new Error('rock run needs a command');
  if (program === process.execPath) return { file: program, args };
  const path = findCommand(program);
  if (path === undefined) throw new Error(`${program}: command not found`);
  // A script file needs neither a #! line nor the executable bit.
  if (['.js', '.mjs', '.cjs'].includes(extname(path))) return { file: process.execPath, args: [path, ...args] };
  const line = shebang(path);
  if (line !== undefined ? /\bnode/.test(line) : basename(path).startsWith('node')) return { file: program, args };
  throw new Error(
    `${program} is not a Node.js program: rock run only works for Node programs. ` +
      `For other programs use rock forward --listen 127.0.0.1:PORT --to HOST:PORT and point the program at 127.0.0.1:PORT ` +
      `(with rock serve at HOST), or for ssh: ssh -o ProxyCommand='rock stdio %h:PORT' HOST`,
  );
}

/**
 * Runs a Node program with every TCP connection it opens or accepts made
 * reliable; stdio is the program's own. Resolves with its exit code
 * (128 + the signal's number if a signal killed it).
 */
export async function runProgram(command: string[], sessionOptions: Record<string, unknown>, log: (line: string) => void): Promise<number> {
  const { file, args } = nodeCommand(command);
  if (!existsSync(fileURLToPath(PRELOAD_URL))) throw new Error(`the rocks preload is missing (${fileURLToPath(PRELOAD_URL)}): build rocks first`);
  if (process.env.ROCKS_LOG === '1') log(`${[file, ...args].join(' ')} with ${PRELOAD_URL}, options ${JSON.stringify(sessionOptions)}`);
  const child = spawn(file, args, { stdio: 'inherit', env: preloadEnv(process.env, sessionOptions) });
  // Passed on, so the program can shut down its own way; we exit when it has.
  const forward = (signal: NodeJS.Signals): void => {
    child.kill(signal);
  };
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  for (const signal of signals) process.on(signal, forward);
  try {
    return await new Promise<number>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (code, signal) => resolve(code ?? 128 + (signal ? constants.signals[signal] : 0)));
    });
  } finally {
    for (const signal of signals) process.removeListener(signal, forward);
  }
}
