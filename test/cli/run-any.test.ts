// `rock run` for programs that are not Node: real redis-cli, python3, ssh, psql and curl
// under proxychains-ng, through a fault proxy that resets and black-holes
// the path to a rock serve in front of the real server, against controls
// through the same faults without rock serve; a statically linked program
// is refused, and a missing proxychains-ng is named in one line.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as httpCreateServer } from 'node:http';
import { createServer as netCreateServer, type AddressInfo, type Server } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { linkage, planCommand, runProgram } from '../../src/cli/run.js';
import type { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { sleep } from '../support/helpers.js';
import { freePort, programs, run, start, startSshd, waitForPort } from '../support/programs.js';
import { slowHttpServer } from '../support/net.js';
import { ROCK, serveWithControl } from '../support/rock.js';

/** The smallest ELF64 executable header: one PT_LOAD program header, no PT_INTERP (statically linked). */
function staticElf(): Buffer {
  const b = Buffer.alloc(64 + 56);
  b.writeUInt32BE(0x7f454c46, 0);
  b[4] = 2; // 64-bit
  b[5] = 1; // little-endian
  b[6] = 1;
  b.writeUInt16LE(2, 16); // ET_EXEC
  b.writeUInt16LE(62, 18); // x86-64
  b.writeUInt32LE(1, 20);
  b.writeBigUInt64LE(64n, 0x20); // e_phoff
  b.writeUInt16LE(64, 0x34);
  b.writeUInt16LE(56, 0x36); // e_phentsize
  b.writeUInt16LE(1, 0x38); // e_phnum
  b.writeUInt32LE(1, 64); // PT_LOAD
  return b;
}

/** The same with its program header turned into PT_INTERP: dynamically linked. */
function dynamicElf(): Buffer {
  const b = staticElf();
  b.writeUInt32LE(3, 64);
  return b;
}

const timing = ['--failure-timeout', '1000', '--heartbeat', '200'];

/**
 * Runs `program ARGS` plainly and under `rock run --include-loopback`
 * against an ordinary server: the same exit code, stdout (after `strip`)
 * and stderr.
 */
async function sameWithAndWithout(program: string, args: string[], input = '', strip = (b: Buffer) => b.toString('latin1')): Promise<string> {
  const plain = await run(program, args, { input, timeout: 30_000 });
  const under = await run(process.execPath, [ROCK, 'run', '--include-loopback', '--', program, ...args], { input, timeout: 30_000 });
  assert.equal(under.code, plain.code, under.stderr);
  assert.equal(strip(under.stdout), strip(plain.stdout), `${program}: the same output`);
  assert.equal(under.stderr, plain.stderr, `${program}: the same errors`);
  return strip(plain.stdout);
}

/**
 * Once the program's connection is through (a black hole during its EDP
 * probe would rightly make it plain TCP), resets every 400 ms and one 2 s
 * black hole, until `done` resolves.
 */
async function faultsUntil(proxy: FaultProxy, done: Promise<unknown>): Promise<void> {
  let over = false;
  void done.finally(() => {
    over = true;
  });
  while (proxy.connections === 0 && !over) await sleep(20);
  await sleep(300);
  for (let i = 0; !over; i++) {
    await sleep(400);
    if (over) break;
    if (i === 3) {
      proxy.blackhole();
      await sleep(2000);
      proxy.heal();
    } else proxy.reset();
  }
}

describe('rock run: programs that are not Node', () => {
  test('a statically linked program, or a script whose interpreter is one, is refused with a pointer to racks and rock forward', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rocks-static-'));
    try {
      const binary = join(dir, 'static-program');
      writeFileSync(binary, staticElf());
      chmodSync(binary, 0o755);
      const script = join(dir, 'script');
      writeFileSync(script, `#!${binary} --flag\n`);
      chmodSync(script, 0o755);
      const dynamic = join(dir, 'dynamic-program');
      writeFileSync(dynamic, dynamicElf());
      assert.equal(linkage(binary), 'static');
      assert.equal(linkage(dynamic), 'dynamic');
      assert.equal(linkage(process.execPath), 'dynamic');
      assert.equal(linkage(script), undefined, 'a script is not ELF');
      const log = () => {};
      await assert.rejects(
        runProgram([binary], {}, log),
        /static-program is statically linked, so rock run cannot reach its connections: protect it with racks/,
      );
      await assert.rejects(
        runProgram([script], {}, log),
        /script is statically linked \(its interpreter .*static-program is\).*rock forward --listen/,
      );
      assert.equal(planCommand(['sh', '-c', 'true']).kind, 'native');
      assert.equal(planCommand([dynamic]).kind, 'native');
      // The command line says it in one line, exit code 2.
      const r = await run(process.execPath, [ROCK, 'run', '--', binary]);
      assert.equal(r.code, 2);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(r.stderr, /statically linked/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('without proxychains-ng: one line that names the package to install', async () => {
    const path = process.env.PATH;
    process.env.PATH = '/nonexistent-rocks-test';
    try {
      await assert.rejects(
        runProgram(['/bin/sh', '-c', 'exit 0'], {}, () => {}),
        /sh is not a Node\.js program, and rock run needs proxychains-ng.*apt-get install proxychains4/,
      );
    } finally {
      process.env.PATH = path;
    }
  });

  const redis = programs('redis-server', 'redis-cli', 'proxychains4');
  test('redis-cli under rock run, through resets and a black hole to rock serve in front of redis-server: exactly N INCRs', {
    skip: redis.skip,
    timeout: 120_000,
  }, async () => {
    const N = 20_000;
    const redisPort = await freePort();
    const server = start(redis.paths['redis-server'], ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']);
    await waitForPort(redisPort, '127.0.0.1', 10_000, server);
    const { withServe, withoutServe, withPort, withoutPort, close } = await serveWithControl(redisPort, timing);
    const cli = redis.paths['redis-cli'];
    const counter = async (key: string): Promise<number> =>
      Number((await run(cli, ['-p', String(redisPort), 'GET', key])).stdout.toString().trim() || 0);
    try {
      const script = (key: string) => `INCR ${key}\n`.repeat(N);
      // redis-cli names the service's own port; --map sends it through the faults to rock serve.
      const reliable = run(
        process.execPath,
        [ROCK, 'run', '--include-loopback', '--map', `127.0.0.1:${redisPort}=127.0.0.1:${withPort}`, ...timing, '--', cli, '-p', String(redisPort)],
        { input: script('reliable'), timeout: 100_000 },
      );
      await faultsUntil(withServe, reliable);
      const r = await reliable;
      assert.equal(r.code, 0, r.stderr);
      const replies = r.stdout.toString().trim().split('\n');
      assert.equal(replies.length, N, `${replies.length} replies`);
      assert.equal(replies[N - 1], String(N));
      assert.equal(await counter('reliable'), N, 'the counter');
      assert.ok(withServe.connections >= 4, `the session went through ${withServe.connections} connections`);

      const plain = run(
        process.execPath,
        [
          ROCK,
          'run',
          '--include-loopback',
          '--map',
          `127.0.0.1:${redisPort}=127.0.0.1:${withoutPort}`,
          ...timing,
          '--',
          cli,
          '-p',
          String(redisPort),
        ],
        { input: script('plain'), timeout: 100_000 },
      );
      await faultsUntil(withoutServe, plain);
      const p = await plain;
      const plainCount = await counter('plain');
      const errors = (p.stdout.toString() + p.stderr).split('\n').filter((l) => /error|closed|refused|reset/i.test(l)).length;
      assert.ok(plainCount !== N || errors > 0, `without rock serve the faults show: ${plainCount} of ${N}, ${errors} error lines`);
      console.log(
        `# redis-cli under rock run: ${N} of ${N} INCRs through ${withServe.connections} connections; ` +
          `control without rock serve: counter ${plainCount}, ${errors} error lines, exit ${p.code}`,
      );
    } finally {
      await close();
      await server.stop();
    }
  });

  const python = programs('python3', 'proxychains4');
  test('a Python socket client under rock run streams 8 MiB to an echo behind rock serve through faults: SHA-256 equal', {
    skip: python.skip,
    timeout: 120_000,
  }, async () => {
    const echo: Server = netCreateServer({ allowHalfOpen: true }, (s) => {
      s.on('error', () => {});
      s.pipe(s);
    });
    echo.listen(0, '127.0.0.1');
    await once(echo, 'listening');
    const echoPort = (echo.address() as AddressInfo).port;
    const { withServe, withoutServe, withPort, withoutPort, close } = await serveWithControl(echoPort, timing);
    // echo.test exists only in --map: proxychains sends the name to the proxy (proxy_dns), which maps it.
    // Sends 8 MiB of a seeded stream in 64 KiB pieces over about 4 s, reads the echo, prints both digests.
    const client = `
import hashlib, random, socket, sys, threading, time
s = socket.create_connection(("echo.test", ${echoPort}))
rng = random.Random(7)
sent, got = hashlib.sha256(), hashlib.sha256()
total = 8 * 1024 * 1024
def reader():
    n = 0
    while n < total:
        d = s.recv(65536)
        if not d: break
        got.update(d); n += len(d)
    print("received", n)
t = threading.Thread(target=reader); t.start()
for i in range(total // 65536):
    b = rng.randbytes(65536); sent.update(b); s.sendall(b); time.sleep(0.03)
t.join()
print(sent.hexdigest(), got.hexdigest())
`;
    try {
      const under = (port: number) =>
        run(
          process.execPath,
          [ROCK, 'run', '--map', `echo.test:${echoPort}=127.0.0.1:${port}`, ...timing, '--', python.paths.python3, '-c', client],
          {
            timeout: 100_000,
          },
        );
      const reliable = under(withPort);
      await faultsUntil(withServe, reliable);
      const r = await reliable;
      assert.equal(r.code, 0, r.stderr);
      const [received, digests] = r.stdout.toString().trim().split('\n');
      assert.equal(received, `received ${8 * 1024 * 1024}`);
      const [sent, got] = digests.split(' ');
      assert.equal(got, sent, 'SHA-256 of the echo');

      const plain = under(withoutPort);
      await faultsUntil(withoutServe, plain);
      const p = await plain;
      const out = p.stdout.toString();
      assert.ok(p.code !== 0 || !out.includes(`received ${8 * 1024 * 1024}`), `without rock serve the faults break the stream: ${out}`);
      console.log(`# python under rock run: 8 MiB echoed intact through ${withServe.connections} connections; control: exit ${p.code}`);
    } finally {
      await close();
      echo.close();
    }
  });

  const ordinary = programs('redis-server', 'redis-cli', 'curl', 'proxychains4');
  test('against ordinary servers (no rock serve) redis-cli, curl and python print byte for byte what they print without rock run', {
    skip: ordinary.skip,
    timeout: 60_000,
  }, async () => {
    const redisPort = await freePort();
    const server = start(ordinary.paths['redis-server'], ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']);
    await waitForPort(redisPort, '127.0.0.1', 10_000, server);
    const body = Buffer.from('x'.repeat(100_000));
    const http = httpCreateServer((_req, res) => res.end(body));
    http.listen(0, '127.0.0.1');
    await once(http, 'listening');
    const httpPort = (http.address() as AddressInfo).port;
    try {
      const commands = 'FLUSHALL\nSET a 1\nINCR a\nGET a\nLPUSH l x y z\nLRANGE l 0 -1\nGET missing\nINCR l\n';
      await sameWithAndWithout(ordinary.paths['redis-cli'], ['-p', String(redisPort)], commands);
      const noDate = (b: Buffer) => b.toString('latin1').replace(/^Date: .*\r\n/m, '');
      await sameWithAndWithout(ordinary.paths.curl, ['-s', '-i', `http://127.0.0.1:${httpPort}/x`], '', noDate);
      const py = programs('python3');
      if (py.skip === undefined) {
        const script = `import http.client\nc = http.client.HTTPConnection("127.0.0.1", ${httpPort})\nc.request("GET", "/py")\nr = c.getresponse()\nprint(r.status, len(r.read()))`;
        assert.equal(await sameWithAndWithout(py.paths.python3, ['-c', script]), '200 100000\n');
      }
    } finally {
      http.close();
      await server.stop();
    }
  });

  const sshFound = programs('ssh', 'sshd', 'ssh-keygen', 'proxychains4');
  const sshSkip = sshFound.skip ?? (process.getuid?.() !== 0 ? 'sshd needs root here (privilege separation)' : undefined);
  test('ssh under rock run (no ProxyCommand) streams 20 MiB from sshd behind rock serve through faults: SHA-256 equal', {
    skip: sshSkip,
    timeout: 120_000,
  }, async () => {
    const scratch = mkdtempSync(join(tmpdir(), 'rocks-run-ssh-'));
    const sshd = await startSshd(join(scratch, 'sshd'));
    const { withServe, withoutServe, withPort, withoutPort, close } = await serveWithControl(sshd.port, timing);
    try {
      const stream = async (port: number, file: string) => {
        // 20 MiB over about 4 s, kept in `file` on the server side to compare.
        const remote = `for i in $(seq 20); do head -c 1048576 /dev/urandom; sleep 0.2; done | tee ${file}`;
        const args = ['-p', String(sshd.port), '-i', sshd.clientKey, '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no'];
        args.push('-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR', `${userInfo().username}@127.0.0.1`, remote);
        const map = `127.0.0.1:${sshd.port}=127.0.0.1:${port}`;
        const ssh = run(process.execPath, [ROCK, 'run', '--include-loopback', '--map', map, ...timing, '--', sshFound.paths.ssh, ...args], {
          timeout: 100_000,
        });
        await faultsUntil(port === withPort ? withServe : withoutServe, ssh);
        return ssh;
      };
      // Against the ordinary sshd, no faults: the same as without rock run.
      const sshArgs = ['-p', String(sshd.port), '-i', sshd.clientKey, '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no'];
      sshArgs.push('-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR', `${userInfo().username}@127.0.0.1`, 'echo hello; id -un; exit 3');
      await sameWithAndWithout(sshFound.paths.ssh, sshArgs);

      const file = join(scratch, 'sent');
      const r = await stream(withPort, file);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.length, 20 * 1024 * 1024);
      const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
      assert.equal(sha(r.stdout), sha(readFileSync(file)), 'SHA-256 of what sshd sent');
      assert.ok(withServe.connections >= 4, `the session went through ${withServe.connections} connections`);

      const control = await stream(withoutPort, join(scratch, 'control'));
      assert.ok(control.code !== 0 || control.stdout.length < 20 * 1024 * 1024, 'without rock serve the faults end the ssh session');
      console.log(
        `# ssh under rock run: 20 MiB intact through ${withServe.connections} connections; ` +
          `control: exit ${control.code}, ${control.stdout.length} bytes`,
      );
    } finally {
      await close();
      await sshd.stop();
      rmSync(scratch, { recursive: true, force: true });
    }
  });

  const pgBin = (() => {
    try {
      const version = readdirSync('/usr/lib/postgresql').sort().at(-1);
      return version === undefined ? undefined : `/usr/lib/postgresql/${version}/bin`;
    } catch {
      return undefined;
    }
  })();
  const psqlFound = programs('psql', 'proxychains4');
  const pgSkip =
    psqlFound.skip ??
    (pgBin === undefined ? 'the PostgreSQL server is not installed (npm test installs it as root)' : undefined) ??
    (process.getuid?.() !== 0 ? 'the throwaway PostgreSQL server runs as the postgres user, which needs root' : undefined);
  test('psql under rock run runs 5,000 numbered INSERTs through faults to rock serve in front of PostgreSQL: exactly 5,000 rows', {
    skip: pgSkip,
    timeout: 150_000,
  }, async () => {
    const N = 5000;
    const { uid, gid } = (() => {
      const id = (flag: string) => Number(execFileSync('id', [flag, 'postgres']).toString().trim());
      return { uid: id('-u'), gid: id('-g') };
    })();
    const scratch = mkdtempSync(join(tmpdir(), 'rocks-run-pg-'));
    chmodSync(scratch, 0o777);
    const data = join(scratch, 'data');
    execFileSync(`${pgBin}/initdb`, ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8'], { uid, gid, stdio: 'ignore' });
    const pgPort = await freePort();
    const server = start(
      `${pgBin}/postgres`,
      ['-D', data, '-p', String(pgPort), '-k', scratch, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off'],
      {
        uid,
        gid,
      },
    );
    await waitForPort(pgPort, '127.0.0.1', 20_000, server);
    const { withServe, withoutServe, withPort, withoutPort, close } = await serveWithControl(pgPort, timing);
    const psql = (args: string[], input = '') =>
      run(psqlFound.paths.psql, ['-h', '127.0.0.1', '-p', String(pgPort), '-U', 'postgres', '-X', '-q', '-A', '-t', ...args], {
        input,
        timeout: 120_000,
      });
    const count = async (table: string) => (await psql(['-c', `SELECT count(*) || ' ' || count(DISTINCT n) FROM ${table}`])).stdout.toString().trim();
    try {
      await psql(['-c', 'CREATE TABLE reliable (n int); CREATE TABLE plain (n int);']);
      // Against the ordinary server: the same rows and the same error as without rock run.
      const query = ['-h', '127.0.0.1', '-p', String(pgPort), '-U', 'postgres', '-X', '-c', 'SELECT generate_series(1, 3) AS n', '-c', 'SELECT 1/0'];
      await sameWithAndWithout(psqlFound.paths.psql, query);
      const script = (table: string) => Array.from({ length: N }, (_, i) => `INSERT INTO ${table} VALUES (${i + 1});`).join('\n');
      const under = (port: number, table: string) => {
        const map = `127.0.0.1:${pgPort}=127.0.0.1:${port}`;
        const args = ['-h', '127.0.0.1', '-p', String(pgPort), '-U', 'postgres', '-X', '-q'];
        return run(process.execPath, [ROCK, 'run', '--include-loopback', '--map', map, ...timing, '--', psqlFound.paths.psql, ...args], {
          input: script(table),
          timeout: 120_000,
        });
      };
      const reliable = under(withPort, 'reliable');
      await faultsUntil(withServe, reliable);
      const r = await reliable;
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stderr, '', 'no psql errors');
      assert.equal(await count('reliable'), `${N} ${N}`, 'rows, and distinct numbers');
      assert.ok(withServe.connections >= 4, `the session went through ${withServe.connections} connections`);

      const plain = under(withoutPort, 'plain');
      await faultsUntil(withoutServe, plain);
      const p = await plain;
      const got = await count('plain');
      assert.ok(got !== `${N} ${N}` || p.stderr !== '', `without rock serve the faults show: ${got}, stderr ${p.stderr.slice(0, 200)}`);
      console.log(
        `# psql under rock run: ${N} of ${N} rows through ${withServe.connections} connections; ` +
          `control without rock serve: rows/distinct ${got}, ${p.stderr.split('\n').filter(Boolean).length} error lines`,
      );
    } finally {
      await close();
      await server.stop();
      rmSync(scratch, { recursive: true, force: true });
    }
  });

  const curlFound = programs('curl', 'proxychains4');
  test('curl under rock run downloads 32 MiB from behind rock serve through faults: SHA-256 equal', {
    skip: curlFound.skip,
    timeout: 120_000,
  }, async () => {
    const SIZE = 32 * 1024 * 1024;
    const body = randomBytes(SIZE);
    const { server: http, port: httpPort } = await slowHttpServer(body);
    const { withServe, withoutServe, withPort, withoutPort, close } = await serveWithControl(httpPort, timing);
    try {
      // files.test exists only in --map: curl's lookup goes to the proxy (proxy_dns).
      const download = async (port: number, faults: FaultProxy) => {
        const map = `files.test:80=127.0.0.1:${port}`;
        const curl = run(process.execPath, [ROCK, 'run', '--map', map, ...timing, '--', curlFound.paths.curl, '-sS', 'http://files.test/'], {
          timeout: 100_000,
        });
        await faultsUntil(faults, curl);
        return curl;
      };
      const r = await download(withPort, withServe);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.length, SIZE);
      assert.equal(createHash('sha256').update(r.stdout).digest('hex'), createHash('sha256').update(body).digest('hex'), 'SHA-256 of the download');
      const control = await download(withoutPort, withoutServe);
      assert.ok(control.code !== 0 || control.stdout.length < SIZE, 'without rock serve the faults break the download');
      console.log(
        `# curl under rock run: 32 MiB intact through ${withServe.connections} connections; ` +
          `control: curl exit ${control.code}, ${control.stdout.length} bytes`,
      );
    } finally {
      await close();
      http.close();
    }
  });
});
