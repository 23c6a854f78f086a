// OpenSSH through rocks, as the README tells users to run it: ssh's
// ProxyCommand is `rock stdio`, a `rock serve` relays to sshd, and a fault
// proxy between them resets the connection and black-holes it for longer
// than the failure timeout. The session must carry on, and a bulk transfer
// must arrive with the checksum of what was sent. rock serve's JSON log
// shows that each fault suspended the session and that it resumed, over
// connections made after the faults began.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { parseJsonLines, sleep, until, type Program } from '../support/helpers.js';
import { freePort, programs, startSshd, type Sshd } from '../support/programs.js';
import { ROCK, startRock } from '../support/rock.js';

const found = programs('ssh', 'sshd', 'ssh-keygen');
const skip = found.skip ?? (process.getuid?.() !== 0 ? 'sshd needs root here (privilege separation)' : undefined);
const TIMING = ['--failure-timeout', '1000', '--heartbeat', '200'];

/** A line of rock serve's JSON log. */
interface LogLine {
  msg: string;
  time: number;
  conn?: number;
  mode?: string;
  reason?: string;
}

/** When each fault of a run began (Date.now(), the clock of rock serve's log times). */
interface FaultTimes {
  reset: number;
  blackhole: number;
  heal: number;
}

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
      serve = await startRock(
        ['serve', '--listen', `127.0.0.1:${servePort}`, '--to', `127.0.0.1:${sshd.port}`, '--json', ...TIMING],
        /serving rocks/,
      );
      proxy = new FaultProxy(servePort);
      proxyPort = await proxy.listen();
    }
    const proxyCommand = [process.execPath, ROCK, 'stdio', `127.0.0.1:${proxyPort}`, '--log-level', 'warn', ...TIMING].join(' ');
    return spawn(
      found.paths.ssh,
      [
        '-i',
        sshd.clientKey,
        '-o',
        'BatchMode=yes',
        '-o',
        'StrictHostKeyChecking=no',
        '-o',
        'UserKnownHostsFile=/dev/null',
        '-o',
        'LogLevel=ERROR',
        '-o',
        `ProxyCommand=${proxyCommand}`,
        `${userInfo().username}@rocks-test-host`,
        remote,
      ],
      { stdio: ['pipe', 'pipe', 'pipe'] },
    );
  }

  /** Runs `faults` at their times (ms from now); resolves with when each ran. */
  async function schedule(faults: [number, () => void][]): Promise<number[]> {
    const t0 = Date.now();
    const ran: number[] = [];
    for (const [at, act] of faults) {
      await sleep(Math.max(0, at - (Date.now() - t0)));
      ran.push(Date.now());
      act();
    }
    return ran;
  }

  /** rock serve's log lines of the rocks session it accepted last (this test's: each test runs one ssh). */
  function lastSession(): LogLine[] {
    const log = parseJsonLines<LogLine>(serve.output);
    const conn = log.filter((l) => l.msg === 'connection' && l.mode === 'reliable').at(-1)?.conn;
    assert.notEqual(conn, undefined, `rock serve logged no reliable connection:\n${serve.output}`);
    return log.filter((l) => l.conn === conn);
  }

  /**
   * Checks in rock serve's log that the reset suspended the session and it
   * resumed before the black hole; that the black hole suspended it by
   * silence and it resumed after the heal; that every suspension before the
   * heal ended in a resume; and that each resume came over a connection made
   * after the faults began (`connectionsBefore`: the proxy's count just
   * before the first fault, the EDP probe and the session's first connection
   * included). The session's end is not awaited: ssh ends its ProxyCommand
   * with SIGHUP, so rock serve sees the link close (one more suspension)
   * rather than a closing handshake.
   */
  async function checkOutages(t: FaultTimes, connectionsBefore: number): Promise<{ resumes: number; connections: number }> {
    const show = (): string => JSON.stringify(lastSession().map(({ msg, time, reason }) => ({ msg, at: time - t.reset, reason })));
    // Every byte arrived, so the session resumed after the heal; its log line may still be on its way.
    await until(
      () => lastSession().some((l) => l.msg === 'resumed' && l.time >= t.heal),
      5000,
      () => `rock serve to log a resume after the heal: ${show()}`,
    );
    const session = lastSession();
    const suspends = session.filter((l) => l.msg === 'suspended');
    const resumes = session.filter((l) => l.msg === 'resumed');
    const between = (l: LogLine, from: number, to: number): boolean => l.time >= from && l.time < to;
    assert.ok(
      suspends.every((l) => l.time >= t.reset),
      `no suspension before the first fault: ${show()}`,
    );
    const byReset = suspends.find((l) => between(l, t.reset, t.blackhole));
    assert.ok(byReset, `the reset suspended the session: ${show()}`);
    assert.ok(
      resumes.some((l) => between(l, byReset.time, t.blackhole)),
      `resumed after the reset, before the black hole: ${show()}`,
    );
    const bySilence = suspends.find((l) => between(l, t.blackhole, t.heal));
    assert.match(bySilence?.reason ?? 'none', /nothing heard from the peer/, `the black hole suspended the session by silence: ${show()}`);
    const firstAfterHeal = resumes.find((l) => l.time >= t.heal)!;
    assert.equal(
      suspends.filter((l) => l.time < firstAfterHeal.time).length,
      resumes.filter((l) => l.time <= firstAfterHeal.time).length,
      `every suspension up to the resume after the heal ended in a resume: ${show()}`,
    );
    const connections = proxy.connections - connectionsBefore;
    assert.ok(connections >= resumes.length, `${resumes.length} resumes over ${connections} connections made after the faults began`);
    return { resumes: resumes.length, connections };
  }

  test('an interactive-style session keeps answering across a reset and a black hole longer than the failure timeout', {
    timeout: 60_000,
  }, async () => {
    const child = await ssh('cat');
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    let echoed = '';
    child.stdout.on('data', (d: Buffer) => (echoed += d.toString()));
    const exited = once(child, 'close'); // 'close': after its output was all read
    // Wait for the session: the first line comes back.
    child.stdin.write('line 0\n');
    await until(
      () => {
        if (child.exitCode !== null) assert.fail(`ssh exited: ${stderr}`);
        return echoed.includes('line 0\n');
      },
      20_000,
      () => `the first line echoed (ssh stderr: ${stderr})`,
      20,
    );
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
      await sleep(50);
    }
    const [reset, blackhole, heal] = await faults;
    child.stdin.end();
    const [code] = await exited;
    assert.equal(code, 0, `ssh exit ${code}: ${stderr}`);
    assert.equal(echoed, `${lines.join('\n')}\n`, 'every line echoed once, in order');
    const seen = await checkOutages({ reset, blackhole, heal }, connectionsBefore);
    console.log(`# ssh cat: ${seen.resumes} resumes over ${seen.connections} new connections`);
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
    // The faults begin once the transfer has (the session is up).
    await until(
      () => {
        if (child.exitCode !== null) assert.fail(`ssh exited: ${stderr}`);
        return received > 0;
      },
      20_000,
      () => `the first bytes (ssh stderr: ${stderr})`,
      20,
    );
    const connectionsBefore = proxy.connections;
    const [reset, blackhole, heal] = await schedule([
      [800, () => proxy.reset()],
      [1600, () => proxy.blackhole()],
      [3800, () => proxy.heal()],
    ]);
    const [code] = await exited;
    assert.equal(code, 0, `ssh exit ${code}: ${stderr}`);
    assert.equal(received, 50 * 1024 * 1024);
    const sent = createHash('sha256').update(readFileSync(file)).digest('hex');
    assert.equal(hash.digest('hex'), sent, 'SHA-256 of what ssh delivered equals the file tee wrote');
    const seen = await checkOutages({ reset, blackhole, heal }, connectionsBefore);
    console.log(`# ssh: 50 MiB intact through ${seen.resumes} resumes over ${seen.connections} new connections`);
  });
});
