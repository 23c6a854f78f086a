// Real programs for interoperability tests: find them (npm test installs
// them with apt-get when root), start them on free loopback ports, and stop
// them whatever happens.

import { spawn, type SpawnOptions } from 'node:child_process';
import { once } from 'node:events';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect as netConnect } from 'node:net';
import { after } from 'node:test';

import { freePort, Program, until } from './helpers.js';
import { programs } from './which.js';

export { programs, type Found } from './which.js';
export { freePort };

/** Resolves once something accepts TCP connections on host:port; rejects after `ms`, or when `child` exits first. */
export async function waitForPort(port: number, host = '127.0.0.1', ms = 10_000, child?: Program): Promise<void> {
  const accepts = () =>
    new Promise<boolean>((resolve) => {
      const s = netConnect(port, host);
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
  await until(
    async () => {
      if (await accepts()) return true;
      if (child?.exited !== undefined) throw new Error(`${child.name} exited (${child.exited}) before listening:\n${child.output}`);
      return false;
    },
    ms,
    () => `something listening on ${host}:${port}${child ? `:\n${child.output}` : ''}`,
    25,
  );
}

// Programs still running when a test file ends (a test timed out before its
// own stop()): killed, or their pipes would keep the file's process, and so
// the whole run, waiting forever instead of reporting the failure.
const running = new Set<Program>();
after(() => Promise.all([...running].map((p) => p.stop())));

/** Starts a long-running program; stop() ends it (SIGTERM, then SIGKILL). */
export function start(path: string, args: string[], options: SpawnOptions = {}): Program {
  const program = new Program(spawn(path, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options }), path);
  running.add(program);
  void program.exit.then(() => running.delete(program));
  return program;
}

export interface RunOptions {
  /** What the program reads on standard input. */
  input?: Buffer | string;
  /** Keep standard input open this long before ending it (some clients half-close the connection at its end). */
  holdInput?: number;
  /** Kill it after this long (ms). */
  timeout?: number;
}

/** Runs a program to its end; resolves with its output and exit code. */
export async function run(path: string, args: string[], options: RunOptions = {}): Promise<{ stdout: Buffer; stderr: string; code: number | null }> {
  const child = spawn(path, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const stdout: Buffer[] = [];
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => stdout.push(d));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdin!.on('error', () => {}); // a program may exit before reading all of it
  child.stdin!.write(options.input ?? '');
  const holding = setTimeout(() => child.stdin!.end(), options.holdInput ?? 0);
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeout ?? 20_000);
  const [code] = (await once(child, 'close')) as [number | null];
  clearTimeout(timer);
  clearTimeout(holding);
  return { stdout: Buffer.concat(stdout), stderr, code };
}

export interface Sshd {
  port: number;
  /** A private key that may log in as the current user (key-based login only). */
  clientKey: string;
  process: Program;
  stop(): Promise<void>;
}

/**
 * Starts OpenSSH's sshd on a free loopback port in `dir`, with a throwaway
 * host key and a throwaway client key allowed to log in. Needs root (sshd's
 * privilege separation) and the programs sshd and ssh-keygen.
 */
export async function startSshd(dir: string): Promise<Sshd> {
  const { paths } = programs('sshd', 'ssh-keygen');
  mkdirSync(dir, { recursive: true });
  mkdirSync('/run/sshd', { recursive: true });
  for (const name of ['host_key', 'client_key']) {
    const made = await run(paths['ssh-keygen'], ['-q', '-t', 'ed25519', '-N', '', '-C', 'rocks-test', '-f', join(dir, name)]);
    if (made.code !== 0) throw new Error(`ssh-keygen failed: ${made.stderr}`);
  }
  copyFileSync(join(dir, 'client_key.pub'), join(dir, 'authorized_keys'));
  const port = await freePort();
  const config = join(dir, 'sshd_config');
  writeFileSync(
    config,
    [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${join(dir, 'host_key')}`,
      `PidFile ${join(dir, 'sshd.pid')}`,
      `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
      'StrictModes no',
      'PermitRootLogin prohibit-password',
      'UsePAM no',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      '',
    ].join('\n'),
  );
  const sshd = start(paths.sshd, ['-D', '-e', '-f', config]);
  await waitForPort(port, '127.0.0.1', 10_000, sshd);
  return { port, clientKey: join(dir, 'client_key'), process: sshd, stop: () => sshd.stop() };
}
