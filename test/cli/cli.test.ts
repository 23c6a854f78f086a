// The `rock` command as a user runs it, in separate processes: bad command
// lines get one line and exit code 2; port in use and unreachable targets
// their own codes; forward + serve carry a bulk transfer intact through
// resets and a black hole, with JSON logs and Prometheus metrics; stdio
// carries standard input and output; SIGTERM shuts down cleanly.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { connect as netConnect, createServer as netCreateServer, type AddressInfo, type Server } from 'node:net';
import { describe, test } from 'node:test';
import { COMMON_OPTIONS, commonOptions, parse } from '../../src/cli/args.js';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { parseJsonLines, sleep } from '../support/helpers.js';
import { freePort, run, start } from '../support/programs.js';
import { ROCK, startRock } from '../support/rock.js';

const rock = (...args: string[]) => run(process.execPath, [ROCK, ...args], { timeout: 15_000 });

/** An ordinary TCP echo server (half-close: it ends when the client ends). */
async function echoServer(): Promise<{ server: Server; port: number }> {
  const server = netCreateServer({ allowHalfOpen: true }, (s) => s.pipe(s));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, port: (server.address() as AddressInfo).port };
}

describe('rock: command line', () => {
  test('bad input: one line on stderr, exit code 2, nothing started', async () => {
    const cases: [string[], RegExp][] = [
      [['bogus'], /unknown command 'bogus'/],
      [['serve', '--listen', '7000'], /--to needs HOST:PORT/],
      [['serve', '--listen', 'a:b:c', '--to', '127.0.0.1:1'], /--listen: expected HOST:PORT/],
      [['forward', '--listen', '7000', '--to', 'host:99999'], /--to: bad port '99999'/],
      [['forward', '--listen', '7000', '--to', 'host:1', '--frobnicate'], /Unknown option '--frobnicate'/],
      [['serve', '--listen', '7000', '--to', 'h:1', '--failure-timeout', '50'], /--failure-timeout must be a number from 200/],
      [['serve', '--listen', '7000', '--to', 'h:1', '--failure-timeout', 'soon'], /--failure-timeout: expected milliseconds/],
      [['serve', '--listen', '7000', '--to', 'h:1', '--suspend-limit', 'forever'], /--suspend-limit: expected a duration/],
      [['forward', '--listen', '7000', '--to', 'h:1', '--path-check', '10'], /--path-check must be a number from 1000/],
      [['forward', '--listen', '7000', '--to', 'h:1', '--path-check', 'rarely'], /--path-check: expected milliseconds/],
      [['serve', '--listen', '7000', '--to', 'h:1', '--log-level', 'loud'], /--log-level: expected one of error, warn, info, debug/],
      [
        ['serve', '--listen', '7000', '--to', 'h:1', '--node-id', '-1'],
        /--node-id takes a value; for one that starts with a dash write --node-id=VALUE/,
      ],
      [['serve', '--listen', '7000', '--to', 'h:1', '--node-id=-1'], /--node-id must be a whole number from 0 to 4294967295, got "-1"/],
      [['serve', '--listen', '7000', '--to', 'h:1', '--node-id', '4294967296'], /--node-id must be a whole number/],
      [['serve', '--listen', '7000', '--to', 'h:1', '--node-id', '0x10'], /--node-id must be a whole number/],
      [['forward', '--listen', '7000', '--to', 'h:1', '--node-id', '1'], /Unknown option '--node-id'/],
      [['serve', '--listen', '7000', '--to', 'h:1', '--peers', '1=h'], /--peers \(node 1\): expected HOST:PORT/],
      [['serve', '--listen', '7000', '--to', 'h:1', '--peers', 'h:1'], /--peers: expected ID=HOST:PORT, got 'h:1'/],
      [['serve', '--listen', '7000', '--to', 'h:1', '--peers', 'one=h:1'], /--peers: a node id must be a whole number/],
      [['serve', '--listen', '7000', '--to', 'h:1', '--peers', '1=a:1,1=b:2'], /--peers names node 1 twice/],
      [['forward', '--listen', '7000', '--to', 'h:1', '--peers', '1=a:1'], /Unknown option '--peers'/],
      [['serve', '--listen', '7000', '--to', 'h:1', '--directory', 'redis://r:6379'], /--directory needs --node-id/],
      [['serve', '--listen', '7000', '--to', 'h:1', '--node-id', '1', '--directory', 'r:6379'], /--directory: expected redis:\/\/HOST:PORT/],
      [['serve', '--listen', '7000', '--to', 'h:1', '--node-id', '1', '--peers', '1=a:1', '--directory', 'redis://r:1'], /not both/],
      [['serve', '--listen', '7000', '--to', 'h:1', '--advertise', 'a:1'], /--advertise goes with --directory/],
      [['stdio'], /stdio takes one HOST:PORT, got none/],
      [['stdio', 'a:1', 'b:2'], /stdio takes one HOST:PORT/],
      [['run'], /run needs a command/],
      [['run', '--metrics', '9100', '--', 'node', '-e', '1'], /--metrics is not available with rock run/],
    ];
    for (const [args, message] of cases) {
      const r = await rock(...args);
      assert.equal(r.code, 2, `rock ${args.join(' ')}: exit ${r.code}, stderr ${r.stderr}`);
      assert.match(r.stderr, message, `rock ${args.join(' ')}`);
      assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
      assert.match(r.stderr, /^rock: /);
    }
  });

  test('--help for the command and each subcommand', async () => {
    const top = await rock('--help');
    assert.equal(top.code, 0);
    assert.match(top.stdout.toString(), /Usage: rock COMMAND/);
    assert.match(top.stdout.toString(), /Exit codes: 0 done, 1 connection failed/);
    for (const command of ['run', 'serve', 'forward', 'stdio', 'demo']) {
      const r = await rock(command, '--help');
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout.toString(), new RegExp(`^Usage: rock ${command}`));
    }
    assert.match((await rock('serve', '-h')).stdout.toString(), /--suspend-limit DURATION/);
    assert.match((await rock('forward', '-h')).stdout.toString(), /--no-watch-network/);
  });

  test('--no-watch-network turns the network watcher off for the sockets of the command', () => {
    assert.equal(commonOptions(parse(['--no-watch-network'], COMMON_OPTIONS).values).session.watchNetwork, false);
    assert.equal(commonOptions(parse([], COMMON_OPTIONS).values).session.watchNetwork, undefined, 'on by default');
    assert.throws(() => parse(['--no-watch-network=yes'], COMMON_OPTIONS), /--no-watch-network/);
  });

  test('--no-kernel-liveness and --path-check reach the sockets of the command', () => {
    const { session } = commonOptions(parse(['--no-kernel-liveness', '--path-check', '60000'], COMMON_OPTIONS).values);
    assert.deepEqual([session.kernelLiveness, session.pathCheckInterval], [false, 60_000]);
    assert.equal(commonOptions(parse([], COMMON_OPTIONS).values).session.kernelLiveness, undefined, 'the library default');
  });

  test('port in use exits 3; an unreachable target exits 1', async () => {
    const echo = await echoServer();
    try {
      const busy = await rock('serve', '--listen', `127.0.0.1:${echo.port}`, '--to', `127.0.0.1:${echo.port}`);
      assert.equal(busy.code, 3, busy.stderr);
      assert.match(busy.stderr, /^rock: cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE\n$/);
      const nowhere = await freePort();
      for (const kind of ['serve', 'forward']) {
        const r = await rock(kind, '--listen', `127.0.0.1:${await freePort()}`, '--to', `127.0.0.1:${nowhere}`);
        assert.equal(r.code, 1, r.stderr);
        assert.match(r.stderr, /^rock: cannot reach --to 127\.0\.0\.1:\d+: ECONNREFUSED\n$/);
      }
      const stdio = await rock('stdio', `127.0.0.1:${nowhere}`);
      assert.equal(stdio.code, 1);
      assert.match(stdio.stderr, /cannot connect to 127\.0\.0\.1:\d+: ECONNREFUSED/);
    } finally {
      echo.server.close();
    }
  });
});

describe('rock: forward and serve', () => {
  test('a bulk transfer both ways through resets and a black hole arrives intact; JSON logs, metrics, clean SIGTERM', {
    timeout: 90_000,
  }, async () => {
    const echo = await echoServer();
    const servePort = await freePort();
    const metricsPort = await freePort();
    const timing = ['--failure-timeout', '1000', '--heartbeat', '200'];
    const serve = await startRock(
      ['serve', '--listen', `127.0.0.1:${servePort}`, '--to', `127.0.0.1:${echo.port}`, '--json', '--metrics', `127.0.0.1:${metricsPort}`, ...timing],
      /serving rocks/,
    );
    // The network between the two ends: the fault proxy.
    const proxy = new FaultProxy(servePort);
    const proxyPort = await proxy.listen();
    const forwardPort = await freePort();
    const forward = await startRock(
      ['forward', '--listen', `127.0.0.1:${forwardPort}`, '--to', `127.0.0.1:${proxyPort}`, ...timing],
      /forwarding over rocks/,
    );
    try {
      // An ordinary client of the forward port: sends 32 MiB, reads the echo.
      const TOTAL = 32 * 1024 * 1024;
      const client = netConnect({ port: forwardPort, host: '127.0.0.1', allowHalfOpen: true });
      await once(client, 'connect');
      const sent = createHash('sha256');
      const got = createHash('sha256');
      let received = 0;
      client.on('data', (d: Buffer) => {
        got.update(d);
        received += d.length;
      });
      const ended = once(client, 'end');
      const startedAt = Date.now();
      const faults = (async () => {
        for (const [at, act] of [
          [300, () => proxy.reset()],
          [900, () => proxy.blackhole()],
          [3400, () => proxy.heal()],
          [4000, () => proxy.reset()],
        ] as [number, () => void][]) {
          await sleep(Math.max(0, at - (Date.now() - startedAt)));
          act();
        }
      })();
      for (let n = 0; n < TOTAL; n += 64 * 1024) {
        const chunk = randomBytes(64 * 1024);
        sent.update(chunk);
        if (!client.write(chunk)) await once(client, 'drain');
        if (n % (1024 * 1024) === 0) await sleep(100); // ~3 s of sending, so the faults land mid-transfer
      }
      client.end();
      await faults;
      await ended;
      assert.equal(received, TOTAL);
      assert.equal(got.digest('hex'), sent.digest('hex'), 'SHA-256 of the echo');
      assert.ok(proxy.connections >= 4, `the session went through ${proxy.connections} connections`);

      const metrics = await fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.text());
      const resumes = Number(/^rocks_resumes_total (\d+)$/m.exec(metrics)?.[1]);
      assert.ok(resumes >= 2, `rocks_resumes_total ${resumes}:\n${metrics}`);
      assert.match(metrics, /^rocks_connections_total\{mode="reliable"\} 1$/m);
      assert.match(metrics, /^rocks_replayed_bytes_total\{direction="out"\} \d+$/m);
      assert.match(metrics, /^rocks_outage_seconds_count \d+$/m);

      // Listen for both exits before either can happen: whichever ends first
      // would otherwise be missed.
      const exits = Promise.all([once(serve.child, 'exit'), once(forward.child, 'exit')]);
      serve.child.kill('SIGTERM');
      forward.child.kill('SIGTERM');
      const [[serveCode], [forwardCode]] = await exits;
      assert.equal(serveCode, 0, serve.output);
      assert.equal(forwardCode, 0, forward.output);
      const lines = parseJsonLines<{ msg: string; outageMs?: number }>(serve.output);
      const messages = lines.map((l) => l.msg);
      for (const m of ['serving rocks, relaying to the target', 'connection', 'suspended', 'resumed', 'closed', 'shutting down']) {
        assert.ok(messages.includes(m), `serve logged '${m}': ${messages.join(', ')}`);
      }
      const outages = lines.filter((l) => l.msg === 'resumed').map((l) => l.outageMs);
      console.log(`# forward+serve: 32 MiB each way intact through ${proxy.connections} connections; outages (ms): ${outages.join(', ')}`);
    } finally {
      await serve.stop();
      await forward.stop();
      await proxy.close();
      echo.server.close();
    }
  });

  test('rock stdio on SIGHUP (ssh hangs up its ProxyCommand) ends its session; rock serve never suspends it', { timeout: 30_000 }, async () => {
    const echo = await echoServer();
    const servePort = await freePort();
    const serve = await startRock(
      ['serve', '--listen', `127.0.0.1:${servePort}`, '--to', `127.0.0.1:${echo.port}`, '--node-id', '4000000000'],
      /serving rocks/,
    );
    assert.match(serve.output, /nodeId=4000000000/);
    // Standard input stays open, as ssh keeps it: an EOF would end the session cleanly by itself.
    const stdio = start(process.execPath, [ROCK, 'stdio', `127.0.0.1:${servePort}`], { stdio: ['pipe', 'pipe', 'pipe'] });
    try {
      await serve.waitForOutput(/connection .*mode=reliable/, 10_000);
      await sleep(200);
      assert.equal(stdio.exited, undefined, 'rock stdio ended before it was hung up');
      stdio.child.kill('SIGHUP');
      await stdio.exit;
      await serve.waitForOutput(/closed/, 5000);
      assert.doesNotMatch(serve.output, /suspended/);
    } finally {
      await stdio.stop();
      await serve.stop();
      echo.server.close();
    }
  });

  test('an ordinary client of rock serve is relayed too (EDP), and rock stdio carries standard input and output', { timeout: 30_000 }, async () => {
    const echo = await echoServer();
    const servePort = await freePort();
    const serve = await startRock(['serve', '--listen', `127.0.0.1:${servePort}`, '--to', `127.0.0.1:${echo.port}`], /serving rocks/);
    try {
      const plain = netConnect({ port: servePort, host: '127.0.0.1' });
      plain.write('plain hello\n');
      const [reply] = (await once(plain, 'data')) as [Buffer];
      assert.equal(reply.toString(), 'plain hello\n');
      plain.destroy();

      const input = randomBytes(2 * 1024 * 1024);
      const r = await run(process.execPath, [ROCK, 'stdio', `127.0.0.1:${servePort}`], { input, timeout: 20_000 });
      assert.equal(r.code, 0, r.stderr);
      assert.ok(r.stdout.equals(input), `stdio echoed ${r.stdout.length} bytes`);
      assert.match(r.stderr, /connection .*mode=reliable/);

      // A reader that takes its time (10 ms after each read): rock stdio must not exit before standard
      // output has drained. Without the drain it lost the tail in about one run of three here.
      const slow = spawn(process.execPath, [ROCK, 'stdio', `127.0.0.1:${servePort}`], { stdio: ['pipe', 'pipe', 'ignore'] });
      slow.stdin.end(input);
      const chunks: Buffer[] = [];
      slow.stdout.on('data', (d: Buffer) => {
        chunks.push(d);
        slow.stdout.pause();
        setTimeout(() => slow.stdout.resume(), 10);
      });
      const [code] = await once(slow, 'close');
      assert.equal(code, 0);
      assert.ok(Buffer.concat(chunks).equals(input), `stdio echoed ${Buffer.concat(chunks).length} bytes to a slow reader`);
      assert.match(serve.output, /mode=plain/);
      assert.match(serve.output, /mode=reliable/);
    } finally {
      await serve.stop();
      echo.server.close();
    }
  });
});
