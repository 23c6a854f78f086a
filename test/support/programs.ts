// Real programs for interoperability tests: find them (npm test installs
// them with apt-get when root), start them on free loopback ports, and stop
// them whatever happens.

import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { once } from 'node:events';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect as netConnect, createServer as netCreateServer, type AddressInfo } from 'node:net';
import { after } from 'node:test';

import { programs } from './which.js';

export { programs, type Found } from './which.js';

/** A port nothing listens on right now. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const s = netCreateServer();
  s.listen(0, host);
  await once(s, 'listening');
  const { port } = s.address() as AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

/** Resolves once something accepts TCP connections on host:port; rejects after `ms`. */
export async function waitForPort(port: number, host = '127.0.0.1', ms = 10_000, child?: Started): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = netConnect(port, host);
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (child?.exited) throw new Error(`${child.name} exited (${child.exited}) before listening:\n${child.output()}`);
    if (Date.now() > deadline) throw new Error(`nothing listening on ${host}:${port} after ${ms} ms${child ? `:\n${child.output()}` : ''}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export interface Started {
  name: string;
  child: ChildProcess;
  /** How it exited ('code N' or 'signal S'), once it has. */
  exited: string | undefined;
  /** What it printed so far, for failure messages. */
  output(): string;
  stop(): Promise<void>;
}

// Programs still running when a test file ends (a test timed out before its
// own stop()): killed, or their pipes would keep the file's process, and so
// the whole run, waiting forever instead of reporting the failure.
const running = new Set<Started>();
after(() => Promise.all([...running].map((s) => s.stop())));

/** Starts a long-running program; stop() ends it (SIGTERM, then SIGKILL). */
export function start(path: string, args: string[], options: SpawnOptions = {}): Started {
  const child = spawn(path, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-64_000)));
  child.stderr?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-64_000)));
  const started: Started = {
    name: path,
    child,
    exited: undefined,
    output: () => out,
    async stop() {
      if (started.exited !== undefined) return;
      const gone = once(child, 'exit');
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await gone;
      clearTimeout(timer);
    },
  };
  running.add(started);
  child.on('exit', (code, signal) => {
    started.exited = signal ? `signal ${signal}` : `code ${code}`;
    running.delete(started);
  });
  return started;
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
  process: Started;
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
  writeFileSync(config, [
    `Port ${port}`, 'ListenAddress 127.0.0.1', `HostKey ${join(dir, 'host_key')}`, `PidFile ${join(dir, 'sshd.pid')}`,
    `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`, 'StrictModes no', 'PermitRootLogin prohibit-password',
    'UsePAM no', 'PasswordAuthentication no', 'KbdInteractiveAuthentication no', '',
  ].join('\n'));
  const sshd = start(paths.sshd, ['-D', '-e', '-f', config]);
  await waitForPort(port, '127.0.0.1', 10_000, sshd);
  return { port, clientKey: join(dir, 'client_key'), process: sshd, stop: () => sshd.stop() };
}
