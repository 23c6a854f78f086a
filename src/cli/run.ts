// `rock run`: starts a Node.js program with the rocks preload (preload.ts) in
// NODE_OPTIONS, so that the program, and every Node process it starts, opens
// and accepts its TCP connections as rocks sockets. Any other dynamically
// linked program runs under proxychains-ng, which sends its outgoing TCP
// connections (and its DNS lookups) to a SOCKS5 proxy in this process whose
// connections are rocks connections (socks.ts). A statically linked program
// cannot be preloaded and is refused with a pointer to racks and rock forward.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, existsSync, mkdtempSync, openSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { constants, tmpdir } from 'node:os';
import { basename, delimiter, extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Endpoint } from './args.js';
import { createSocksServer, type SocksLog } from './socks.js';

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
  const line = head(path, 256)?.toString('latin1').split('\n')[0];
  return line?.startsWith('#!') ? line : undefined;
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

/** The first bytes of a file (at most `n`), or undefined if it cannot be read. */
function head(path: string, n: number): Buffer | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const buffer = Buffer.alloc(n);
    return buffer.subarray(0, readSync(fd, buffer, 0, n, 0));
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * Whether an ELF executable names a dynamic loader (a PT_INTERP program
 * header): 'static' without one, undefined for a file that is not ELF.
 */
export function linkage(path: string): 'static' | 'dynamic' | undefined {
  const elf = head(path, 64 * 1024);
  if (elf === undefined || elf.length < 52 || elf.readUInt32BE(0) !== 0x7f454c46) return undefined;
  const is64 = elf[4] === 2;
  const le = elf[5] === 1;
  const u16 = (at: number) => (le ? elf.readUInt16LE(at) : elf.readUInt16BE(at));
  const u32 = (at: number) => (le ? elf.readUInt32LE(at) : elf.readUInt32BE(at));
  const phoff = is64 ? Number(le ? elf.readBigUInt64LE(0x20) : elf.readBigUInt64BE(0x20)) : u32(0x1c);
  const phentsize = u16(is64 ? 0x36 : 0x2a);
  const phnum = u16(is64 ? 0x38 : 0x2c);
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (at + 4 > elf.length) return 'dynamic'; // headers beyond what we read: do not refuse
    if (u32(at) === 3) return 'dynamic'; // PT_INTERP
  }
  return 'static';
}

/** The executable a #! line runs (through `env`, the program it names). */
function interpreter(line: string): string | undefined {
  const words = line.slice(2).trim().split(/\s+/);
  if (words[0] === undefined) return undefined;
  if (basename(words[0]) === 'env') {
    const name = words.slice(1).find((w) => !w.startsWith('-') && !w.includes('='));
    return name === undefined ? undefined : findCommand(name);
  }
  return words[0];
}

export type Plan = { kind: 'node'; file: string; args: string[] } | { kind: 'native'; file: string; args: string[] };

/**
 * How to start `command`: as a Node program (a .js/.mjs/.cjs file, run with
 * this node; the node executable itself or any binary named node*; a script
 * whose #! line runs node), or as any other program under proxychains-ng.
 * Throws for a command that is not found or is statically linked.
 */
export function planCommand(command: string[]): Plan {
  const [program, ...args] = command;
  if (program === undefined || program === '') throw new Error('rock run needs a command');
  if (program === process.execPath) return { kind: 'node', file: program, args };
  const path = findCommand(program);
  if (path === undefined) throw new Error(`${program}: command not found`);
  // A script file needs neither a #! line nor the executable bit.
  if (['.js', '.mjs', '.cjs'].includes(extname(path))) return { kind: 'node', file: process.execPath, args: [path, ...args] };
  const line = shebang(path);
  if (line !== undefined ? /\bnode/.test(line) : basename(path).startsWith('node')) return { kind: 'node', file: program, args };
  const binary = line === undefined ? path : interpreter(line);
  if (binary !== undefined && linkage(binary) === 'static') {
    throw new Error(
      `${program} is statically linked${binary === path ? '' : ` (its interpreter ${binary} is)`}, so rock run cannot reach its connections: ` +
        'protect it with racks (rack up, docs/RACKS.md), or run rock forward --listen 127.0.0.1:PORT --to HOST:PORT and point it at 127.0.0.1:PORT',
    );
  }
  return { kind: 'native', file: path, args };
}

/** Options of rock run for programs that are not Node. */
export interface NativeRunOptions {
  /** Destination (lower-case host:port) to where to dial instead (--map). */
  maps?: Map<string, Endpoint>;
  /** Send connections to loopback addresses through rocks too (by default they stay direct). */
  includeLoopback?: boolean;
}

/** After a native program exits, its connections may take this long to finish delivering. */
const CLOSE_GRACE = 30_000;

/** The proxychains-ng configuration: quiet, names resolved by the proxy, loopback direct unless included. */
export function proxychainsConfig(proxyPort: number, includeLoopback: boolean): string {
  return [
    'strict_chain',
    'quiet_mode',
    'proxy_dns',
    'remote_dns_subnet 224',
    // Our CONNECT reply waits for the rocks connection (an EDP probe, a slow path): give it time.
    'tcp_read_time_out 60000',
    'tcp_connect_time_out 60000',
    ...(includeLoopback ? [] : ['localnet 127.0.0.0/255.0.0.0']),
    '[ProxyList]',
    `socks5 127.0.0.1 ${proxyPort}`,
    '',
  ].join('\n');
}

/**
 * Runs a program with every TCP connection it opens (and, for Node, accepts)
 * made reliable; stdio is the program's own. Resolves with its exit code
 * (128 + the signal's number if a signal killed it).
 */
export async function runProgram(
  command: string[],
  sessionOptions: Record<string, unknown>,
  log: (line: string) => void,
  native: NativeRunOptions = {},
): Promise<number> {
  const plan = planCommand(command);
  if (plan.kind === 'native') return runNative(plan.file, plan.args, sessionOptions, log, native);
  const { file, args } = plan;
  if (!existsSync(fileURLToPath(PRELOAD_URL))) throw new Error(`the rocks preload is missing (${fileURLToPath(PRELOAD_URL)}): build rocks first`);
  if (process.env.ROCKS_LOG === '1') log(`${[file, ...args].join(' ')} with ${PRELOAD_URL}, options ${JSON.stringify(sessionOptions)}`);
  return waitForExit(spawn(file, args, { stdio: 'inherit', env: preloadEnv(process.env, sessionOptions) }));
}

/** A program that is not Node: under proxychains-ng, through a SOCKS5 proxy of rocks connections in this process. */
async function runNative(
  file: string,
  args: string[],
  sessionOptions: Record<string, unknown>,
  log: (line: string) => void,
  native: NativeRunOptions,
): Promise<number> {
  const proxychains = findCommand('proxychains4');
  if (proxychains === undefined) {
    throw new Error(
      `${basename(file)} is not a Node.js program, and rock run needs proxychains-ng for it: install it (Debian and Ubuntu: apt-get install proxychains4; macOS: brew install proxychains-ng)`,
    );
  }
  // The program shares our standard output and error. Node makes a pipe
  // non-blocking when it first opens it as process.stdout or stderr (and
  // stream.pipe() looks at process.stdout), which would make the program's
  // own writes fail with EAGAIN (curl: "Failure writing output"). Open them
  // now and keep them blocking.
  for (const stream of [process.stdout, process.stderr]) {
    (stream as unknown as { _handle?: { setBlocking?(on: boolean): number } })._handle?.setBlocking?.(true);
  }
  const verbose = process.env.ROCKS_LOG === '1';
  const say = (fields: object, message: string): void => log(`${message} ${JSON.stringify(fields)}`);
  const proxyLog: SocksLog = { debug: verbose ? say : () => {}, info: verbose ? say : () => {}, warn: say };
  const { server, open } = createSocksServer(sessionOptions, { maps: native.maps ?? new Map() }, proxyLog);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const dir = mkdtempSync(join(tmpdir(), 'rock-run-'));
  const config = join(dir, 'proxychains.conf');
  writeFileSync(config, proxychainsConfig((server.address() as AddressInfo).port, native.includeLoopback === true));
  if (verbose) log(`${[file, ...args].join(' ')} under ${proxychains}, SOCKS5 at ${JSON.stringify(server.address())}`);
  try {
    return await waitForExit(spawn(proxychains, ['-q', '-f', config, file, ...args], { stdio: 'inherit' }));
  } finally {
    server.close();
    // What the program sent just before it exited may still be on its way: let its connections finish.
    let grace: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all([...open].map((s) => (s.destroyed ? undefined : once(s, 'close')))),
      new Promise((resolve) => {
        grace = setTimeout(resolve, CLOSE_GRACE);
      }),
    ]);
    clearTimeout(grace);
    for (const s of open) s.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Passes our signals on, so the program can shut down its own way; resolves with its exit code once it has. */
async function waitForExit(child: ReturnType<typeof spawn>): Promise<number> {
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
