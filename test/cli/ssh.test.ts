// OpenSSH through rocks, as the README tells users to run it: ssh's
// ProxyCommand is `rock stdio`, a `rock serve` relays to sshd, and a fault
// proxy between them resets the connection and black-holes it for longer
// than the failure timeout. The session must carry on, and a bulk transfer
// must arrive with the checksum of what was sent.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { freePort, programs, startSshd, type Sshd } from '../support/programs.js';
import { ROCK, startRock } from '../support/rock.js';
import type { Program } from '../support/helpers.js';

const found = programs('ssh', 'sshd', 'ssh-keygen');
const skip = found.skip ?? (process.getuid?.() !== 0 ? 'sshd needs root here (privilege separation)' : undefined);
const TIMING = ['--failure-timeout', '1000', '--heartbeat', '200'];

describe('ssh over rock stdio and rock serve', { skip }, () => {
  const scratch = mkdtempSync(join(tmpdir(), 'rocks-ssh-'));
  let sshd: Sshd;
  let serve: Program;
  let proxy: FaultProxy;
  let proxyPort: number;
  after(async () => {
    await serve?.stop();
    await proxy?.close();
    await sshd?.stop();
    rmSync(scratch, { recursive: true, force: true });
  });

  /** Starts `ssh host REMOTE` through rocks, with piped standard streams. */
  async function ssh(remote: string) {
    if (sshd === undefined) {
      sshd = await startSshd(join(scratch, 'sshd'));
      const servePort = await freePort();
      serve = await startRock(['serve', '--listen', `127.0.0.1:${servePort}`, '--to', `127.0.0.1:${sshd.port}`, ...TIMING], /serving rocks/);
      proxy = new FaultProxy(servePort);
      proxyPort = await proxy.listen();
    }
    const proxyCommand = [process.execPath, ROCK, 'stdio', `127.0.0.1:${proxyPort}`, '--log-level', 'warn', ...TIMING].join(' ');
    return spawn(found.paths.ssh, [
      '-i', sshd.clientKey, '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
      '-o', 'LogLevel=ERROR', '-o', `ProxyCommand=${proxyCommand}`, `${userInfo().username}@rocks-test-host`, remote,
    ], { stdio: ['pipe', 'pipe', 'pipe'] });
  }

  /** Runs `faults` at their times (ms from now). */
  async function schedule(faults: [number, () => void][]): Promise<void> {
    const t0 = Date.now();
    for (const [at, act] of faults) {
      await new Promise((r) => setTimeout(r, at - (Date.now() - t0)));
      act();
    }
  }

  test('an interactive-style session keeps answering across a reset and a black hole longer than the failure timeout', { timeout: 60_000 }, async () => {
    const child = await ssh('cat');
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    let echoed = '';
    child.stdout.on('data', (d: Buffer) => (echoed += d.toString()));
    const exited = once(child, 'close'); // 'close': after its output was all read
    // Wait for the session: the first line comes back.
    child.stdin.write('line 0\n');
    while (!echoed.includes('line 0\n')) {
      if (child.exitCode !== null) assert.fail(`ssh exited: ${stderr}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const connectionsBefore = proxy.connections;
    const faults = schedule([
      [500, () => proxy.reset()],
      [1500, () => proxy.blackhole()],
      [4000, () => proxy.heal()], // 2.5 s of silence: both ends suspend
      [5000, () => proxy.reset()],
    ]);
    const lines = ['line 0'];
    for (let i = 1; i <= 120; i++) {
      lines.push(`line ${i}`);
      child.stdin.write(`line ${i}\n`);
      await new Promise((r) => setTimeout(r, 50));
    }
    await faults;
    child.stdin.end();
    const [code] = await exited;
    assert.equal(code, 0, `ssh exit ${code}: ${stderr}`);
    assert.equal(echoed, lines.join('\n') + '\n', 'every line echoed once, in order');
    assert.ok(proxy.connections - connectionsBefore >= 3, `resumed over ${proxy.connections - connectionsBefore} new connections`);
    assert.match(serve.output, /suspended/);
    assert.match(serve.output, /resumed/);
  });

  test('head -c 50M /dev/urandom | tee f: the bytes ssh delivers match the file, across a reset and a black hole', { timeout: 90_000 }, async () => {
    const file = join(scratch, 'sent.bin');
    const child = await ssh(`head -c 50M /dev/urandom | tee ${file}`);
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const hash = createHash('sha256');
    let received = 0;
    // Read at about 10 MiB/s so the transfer lasts long enough for the faults to land in it.
    child.stdout.on('data', (d: Buffer) => {
      hash.update(d);
      received += d.length;
      child.stdout.pause();
      setTimeout(() => child.stdout.resume(), Math.ceil(d.length / 10_000));
    });
    const exited = once(child, 'close'); // 'close': after its output was all read
    const connectionsBefore = proxy.connections;
    await schedule([
      [800, () => proxy.reset()],
      [1600, () => proxy.blackhole()],
      [3800, () => proxy.heal()],
    ]);
    const [code] = await exited;
    assert.equal(code, 0, `ssh exit ${code}: ${stderr}`);
    assert.equal(received, 50 * 1024 * 1024);
    const sent = createHash('sha256').update(readFileSync(file)).digest('hex');
    assert.equal(hash.digest('hex'), sent, 'SHA-256 of what ssh delivered equals the file tee wrote');
    assert.ok(proxy.connections - connectionsBefore >= 2, `resumed over ${proxy.connections - connectionsBefore} new connections`);
    console.log(`# ssh: 50 MiB intact through ${proxy.connections - connectionsBefore} new connections`);
  });
});
