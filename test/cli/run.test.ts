// `rock run`: unmodified Node programs (the fixtures, plain .mjs files that
// know nothing of rocks) run with the preload, in their own processes, over
// real sockets on 127.0.0.1: an ioredis client whose connection to
// redis-server, through rock serve, survives repeated resets, the same client unchanged against an ordinary redis-server,
// an http server that curl cannot tell apart, an http download through
// resets, HTTP/2 calls through resets, every way of opening a connection,
// child processes, and runProgram;
// and an https client under rock run whose own TLS, end to end to a node
// https server behind rock serve, survives resets and black holes.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as httpsCreateServer } from 'node:https';
import { createServer as tlsCreateServer } from 'node:tls';
import { createServer as netCreateServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { ReliableServer, ReliableServerOptions, ReliableSocket } from '../../src/index.js';
import { preloadEnv, runProgram } from '../../src/cli/run.js';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { parseJsonLines, sleep, until, type Program } from '../support/helpers.js';
import { closeServer, listen } from '../support/net.js';
import { makeCerts } from '../support/certs.js';
import { freePort, programs, run, start, waitForPort } from '../support/programs.js';
import { startRock } from '../support/rock.js';

const FIXTURES = fileURLToPath(new URL('../../../test/cli/fixtures/', import.meta.url));
const fixture = (name: string): string => join(FIXTURES, name);

/** The test runner's environment, without what it sets for its own children. */
function baseEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  delete env.ROCKS_LOG;
  delete env.ROCKS_OPTIONS;
  return env;
}

/** The environment of a program run under the preload (as runProgram makes it). */
const rocksEnv = (options: Record<string, unknown> = {}, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
  ...preloadEnv(baseEnv(), options),
  ...extra,
});

interface Ran {
  stdout: string;
  stderr: string;
  code: number | null;
}

/** Runs `node ARGS` to its end with `env`; kills it after `timeout` ms. `onStdout` sees its output so far. */
async function runNode(args: string[], env: NodeJS.ProcessEnv = baseEnv(), timeout = 30_000, onStdout?: (sofar: string) => void): Promise<Ran> {
  const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
    onStdout?.(stdout);
  });
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeout);
  const [code] = (await once(child, 'close')) as [number | null];
  clearTimeout(timer);
  return { stdout, stderr, code };
}

/**
 * Resets every connection through `proxy` at every `every`-th chunk it
 * forwards, once the session's first connection (the proxy's second: the
 * first is the EDP probe) has carried `after` chunks. A reset before then
 * would fail the connection attempt itself, as it would fail net.connect.
 */
function resetRepeatedly(proxy: FaultProxy, every: number, after = 10): { resets: number } {
  const state = { resets: 0 };
  let chunks = 0;
  let scheduled = false;
  proxy.onChunk = (_direction, _chunk, connection) => {
    if (connection < 2) return;
    chunks++;
    if (chunks < after || chunks % every !== 0 || scheduled) return;
    scheduled = true;
    setImmediate(() => {
      scheduled = false;
      proxy.reset();
      state.resets++;
    });
  };
  return state;
}

/** What a rocks server saw. */
interface Seen {
  reliable: number;
  plain: number;
  /** rocks 'reconnect' events on its sockets: connections it got back after a failure. */
  resumes: number;
  /** Its sockets that closed, and the code of the error each closed with ('' for none). */
  closed: string[];
}

function count(s: ReliableSocket, seen: Seen): void {
  if (s.reliable) seen.reliable++;
  else seen.plain++;
  s.on('reconnect', () => seen.resumes++);
  let code = '';
  s.on('error', (err: NodeJS.ErrnoException) => (code = err.code ?? err.message));
  s.on('close', () => seen.closed.push(code));
}

interface TestServer {
  server: ReliableServer;
  port: number;
  seen: Seen;
  /** Aborts the sockets still open and closes the server, whatever state a failed test left them in. */
  stop(): Promise<void>;
}

/** A rocks server on 127.0.0.1 that counts what it serves. */
async function rocksServer(options: ReliableServerOptions, handler: (s: ReliableSocket) => void): Promise<TestServer> {
  const seen: Seen = { reliable: 0, plain: 0, resumes: 0, closed: [] };
  const open = new Set<ReliableSocket>();
  const { server, port } = await listen(options, (s) => {
    count(s, seen);
    open.add(s);
    s.on('close', () => open.delete(s));
    handler(s);
  });
  const stop = async (): Promise<void> => {
    for (const s of open) s.destroy();
    await Promise.race([closeServer(server), sleep(5000, undefined, { ref: false })]);
  };
  return { server, port, seen, stop };
}

/** A rocks echo server. */
const rocksEcho = (): Promise<TestServer> => rocksServer({ allowHalfOpen: true }, (s) => s.pipe(s));

function startRedis(path: string, port: number): Program {
  return start(path, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']);
}

const REDIS_REPORT = (count: number): string =>
  `INCR: ${count} of ${count} replies in order, counter ${count}\nSET/GET: ${count} of ${count} values read back\nerrors: 0\n`;

describe('rock run: unmodified Node programs over rocks', () => {
  const redisFound = programs('redis-server');

  test('ioredis through rock serve in front of redis-server: 2000 INCRs and SET/GETs through repeated resets, all correct, no client error', {
    skip: redisFound.skip,
    timeout: 90_000,
  }, async () => {
    const redisPort = await freePort();
    const redis = startRedis(redisFound.paths['redis-server'], redisPort);
    try {
      await waitForPort(redisPort, '127.0.0.1', 10_000, redis);
      const servePort = await freePort();
      const serve = await startRock(
        ['serve', '--listen', `127.0.0.1:${servePort}`, '--to', `127.0.0.1:${redisPort}`, '--json', '--failure-timeout', '2000'],
        /serving rocks/,
      );
      const proxy = new FaultProxy(servePort);
      try {
        const proxyPort = await proxy.listen();
        const faults = resetRepeatedly(proxy, 20);
        // The resets stop once the program has its results, so that the end of the session
        // (redis closes after QUIT) is seen at the relay too, not just the program's output.
        const calm = (sofar: string): void => {
          if (sofar.includes('SET/GET')) proxy.onChunk = undefined;
        };
        const result = await runNode([fixture('redis-client.mjs'), String(proxyPort), '2000'], rocksEnv({ failureTimeout: 2000 }), 60_000, calm);
        proxy.onChunk = undefined;
        assert.equal(result.stderr, '', 'no client error');
        assert.equal(result.stdout, REDIS_REPORT(2000));
        assert.equal(result.code, 0, result.stderr);
        assert.ok(faults.resets >= 5, `the proxy reset the connection ${faults.resets} times`);
        // The probe, the session's first connection, then one per resume.
        assert.ok(proxy.connections > 3, `the client came back after resets: ${proxy.connections} connections through the proxy`);
        const logged = () => parseJsonLines<{ msg: string; mode?: string }>(serve.output);
        await until(() => logged().some((l) => l.msg === 'closed'), 10_000, "rock serve's connection to close");
        const lines = logged();
        const modes = lines.filter((l) => l.msg === 'connection').map((l) => l.mode);
        assert.deepEqual(modes, ['reliable'], 'one reliable session, the whole run');
        const resumes = lines.filter((l) => l.msg === 'resumed').length;
        assert.ok(resumes >= 1, `rock serve saw ${resumes} resumes`);
        assert.deepEqual(
          lines.filter((l) => l.msg === 'connection failed'),
          [],
          'the session ended cleanly, without an error',
        );
        console.log(`# ioredis through rock serve: ${faults.resets} resets, ${proxy.connections} connections, ${resumes} resumes, every reply right`);
      } finally {
        await proxy.close();
        await serve.stop();
      }
    } finally {
      await redis.stop();
    }
  });

  test('the same ioredis program against an ordinary redis-server: the same output as without rocks, over a plain connection', {
    skip: redisFound.skip,
    timeout: 60_000,
  }, async () => {
    const port = await freePort();
    const redis = startRedis(redisFound.paths['redis-server'], port);
    try {
      await waitForPort(port, '127.0.0.1', 10_000, redis);
      const args = [fixture('redis-client.mjs'), String(port), '500'];
      const without = await runNode(args);
      assert.deepEqual(without, { stdout: REDIS_REPORT(500), stderr: '', code: 0 }, 'the program itself works');
      const withRocks = await runNode(args, rocksEnv());
      assert.deepEqual(withRocks, without, 'stdout, stderr and exit code unchanged');
      const logged = await runNode(args, rocksEnv({}, { ROCKS_LOG: '1' }));
      assert.equal(logged.stdout, without.stdout);
      assert.match(
        logged.stderr,
        new RegExp(`^rocks\\[\\d+\\]: connect 127\\.0\\.0\\.1:${port}: plain \\(ordinary server \\(probe: closed\\)\\)\n$`),
      );
    } finally {
      await redis.stop();
    }
  });

  const curlFound = programs('curl');
  test('an http server under rock run serves curl exactly as without it', { skip: curlFound.skip, timeout: 60_000 }, async () => {
    const [plainPort, rocksPort] = [await freePort(), await freePort()];
    const plain = start(process.execPath, [fixture('http-server.mjs'), String(plainPort)], { env: baseEnv() });
    const rocks = start(process.execPath, [fixture('http-server.mjs'), String(rocksPort)], { env: rocksEnv({}, { ROCKS_LOG: '1' }) });
    try {
      await waitForPort(plainPort, '127.0.0.1', 10_000, plain);
      await waitForPort(rocksPort, '127.0.0.1', 10_000, rocks);
      const dir = mkdtempSync(join(tmpdir(), 'rock-run-'));
      const upload = join(dir, 'upload');
      writeFileSync(upload, Buffer.alloc(3_000_000, 'rocks '));
      const requests = [['/hello'], ['/echo', '--data-binary', `@${upload}`], ['/big?mib=8'], ['/missing']];
      try {
        for (const [path, ...extra] of requests) {
          const curl = (port: number) => run(curlFound.paths.curl, ['-s', '-i', ...extra, `http://127.0.0.1:${port}${path}`]);
          const [a, b] = [await curl(plainPort), await curl(rocksPort)];
          // Everything but the Date header, byte for byte.
          const strip = (r: { stdout: Buffer }) => r.stdout.toString('latin1').replace(/^Date: .*\r\n/m, '');
          assert.equal(b.code, 0, `curl ${path}: ${b.stderr}`);
          assert.ok(strip(a).length > 0);
          assert.equal(strip(b), strip(a), `curl ${path}`);
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      assert.match(rocks.output, /accept 127\.0\.0\.1:\d+: plain/, 'curl was served as an ordinary client');
    } finally {
      await plain.stop();
      await rocks.stop();
    }
  });

  test('an http client under rock run downloads 32 MiB from an http server under rock run through repeated resets', { timeout: 90_000 }, async () => {
    const port = await freePort();
    const server = start(process.execPath, [fixture('http-server.mjs'), String(port)], { env: rocksEnv({}, { ROCKS_LOG: '1' }) });
    try {
      await waitForPort(port, '127.0.0.1', 10_000, server);
      const proxy = new FaultProxy(port);
      try {
        const proxyPort = await proxy.listen();
        const faults = resetRepeatedly(proxy, 60);
        const result = await runNode(
          [fixture('http-get.mjs'), `http://127.0.0.1:${proxyPort}/big?mib=32`],
          rocksEnv({ failureTimeout: 2000 }, { ROCKS_LOG: '1' }),
          60_000,
        );
        proxy.onChunk = undefined;
        const block = Buffer.alloc(1 << 20);
        for (let i = 0; i < block.length; i++) block[i] = (i * 7 + (i >> 10)) & 0xff;
        const hash = createHash('sha256');
        for (let i = 0; i < 32; i++) hash.update(block);
        assert.equal(result.stdout, `status 200 bytes ${32 << 20} sha256 ${hash.digest('hex')}\n`, result.stderr);
        assert.equal(result.code, 0, result.stderr);
        assert.match(result.stderr, new RegExp(`connect 127\\.0\\.0\\.1:${proxyPort}: reliable`));
        assert.doesNotMatch(result.stderr, /error/);
        assert.match(server.output, /accept 127\.0\.0\.1:\d+: reliable/);
        assert.ok(faults.resets >= 3, `the proxy reset the connection ${faults.resets} times`);
        assert.ok(proxy.connections > 3, `${proxy.connections} connections through the proxy`);
      } finally {
        await proxy.close();
      }
    } finally {
      await server.stop();
    }
  });

  test('an HTTP/2 server and client without TLS (h2c, as gRPC runs) under rock run: 400 calls through repeated resets, every answer right', {
    timeout: 90_000,
  }, async () => {
    const port = await freePort();
    const server = start(process.execPath, [fixture('h2-server.mjs'), String(port)], { env: rocksEnv({}, { ROCKS_LOG: '1' }) });
    try {
      await waitForPort(port, '127.0.0.1', 10_000, server);
      const proxy = new FaultProxy(port);
      try {
        const proxyPort = await proxy.listen();
        const faults = resetRepeatedly(proxy, 40);
        const result = await runNode(
          [fixture('h2-calls.mjs'), `http://127.0.0.1:${proxyPort}`, '400'],
          rocksEnv({ failureTimeout: 2000 }, { ROCKS_LOG: '1' }),
          60_000,
        );
        proxy.onChunk = undefined;
        assert.equal(result.stdout, 'calls 400 of 400 answered right\n', result.stderr);
        assert.equal(result.code, 0, result.stderr);
        assert.match(result.stderr, new RegExp(`connect 127\\.0\\.0\\.1:${proxyPort}: reliable`));
        assert.match(server.output, /accept 127\.0\.0\.1:\d+: reliable/);
        assert.ok(faults.resets >= 3, `the proxy reset the connection ${faults.resets} times`);
      } finally {
        await proxy.close();
      }
    } finally {
      await server.stop();
    }
  });

  test('every way to open a connection through node:net is a rocks socket: ESM named, namespace and default imports, require, new net.Socket; a Unix socket is left to node:net', {
    timeout: 30_000,
  }, async () => {
    const echo = await rocksEcho();
    const dir = mkdtempSync(join(tmpdir(), 'rock-run-'));
    const path = join(dir, 'echo.sock');
    const unix = netCreateServer({ allowHalfOpen: true }, (s) => s.pipe(s));
    unix.listen(path);
    await once(unix, 'listening');
    try {
      const result = await runNode([fixture('forms.mjs'), String(echo.port), path], rocksEnv());
      assert.equal(result.stderr, '');
      assert.equal(result.code, 0, result.stderr);
      const forms = [
        'named import connect',
        'named import createConnection',
        'namespace import connect',
        'default import connect',
        "require('net').connect",
        'new Socket().connect (as pg does)',
        "new (require('net').Socket)().connect",
      ];
      assert.equal(result.stdout, [...forms.map((f) => `${f}: echo ok, reliable true`), 'Unix socket: echo ok, reliable false', ''].join('\n'));
      assert.deepEqual({ reliable: echo.seen.reliable, plain: echo.seen.plain }, { reliable: forms.length, plain: 0 });
    } finally {
      await echo.stop();
      await new Promise((r) => unix.close(r));
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a Node process started by the program inherits rock run', { timeout: 30_000 }, async () => {
    const echo = await rocksEcho();
    const lines: string[] = [];
    try {
      // The parent opens no connection; the child it spawns (with the environment it inherited) does.
      const code = await runProgram([fixture('parent.mjs'), fixture('ping.mjs'), String(echo.port)], { failureTimeout: 3000 }, (l) => lines.push(l));
      assert.equal(code, 0);
      assert.deepEqual({ reliable: echo.seen.reliable, plain: echo.seen.plain }, { reliable: 1, plain: 0 }, "the child's connection was reliable");
      assert.deepEqual(lines, [], 'nothing logged without ROCKS_LOG');
    } finally {
      await echo.stop();
    }
  });

  test('a program that exits with a connection open: its rocks peer learns at once, as a TCP peer would', { timeout: 30_000 }, async () => {
    const echo = await rocksEcho();
    try {
      const result = await runNode([fixture('ping.mjs'), String(echo.port), 'exit'], rocksEnv({ failureTimeout: 10_000 }));
      assert.deepEqual(result, { stdout: '', stderr: '', code: 0 });
      assert.equal(echo.seen.reliable, 1);
      // Without the abort at exit the server would take it for a failure: suspended, for up to suspendLimit.
      await until(() => echo.seen.closed.length === 1, 3000, 'the server to close the socket');
      assert.deepEqual(echo.seen.closed, ['ERR_ROCKS_PEER_ABORTED']);
      assert.equal(echo.server.sessionCount, 0);
    } finally {
      await echo.stop();
    }
  });

  test('bad ROCKS_OPTIONS: a clear message and exit code 2, before the program runs', { timeout: 30_000 }, async () => {
    for (const [value, message] of [
      ['{nope', /ROCKS_OPTIONS is not valid JSON/],
      ['[1]', /ROCKS_OPTIONS must be a JSON object/],
      ['{"failureTimeout":5}', /ROCKS_OPTIONS has a bad option: .*failureTimeout/],
    ] as const) {
      const result = await runNode([fixture('exit.mjs'), 'code', '0'], rocksEnv({}, { ROCKS_OPTIONS: value }));
      assert.equal(result.code, 2, value);
      assert.match(result.stderr, message);
      assert.equal(result.stdout, '');
    }
  });
});

/** The first `mib` MiB of the pattern http-server.mjs and the https server below send. */
function bigBody(): Buffer {
  const block = Buffer.alloc(1 << 20);
  for (let i = 0; i < block.length; i++) block[i] = (i * 7 + (i >> 10)) & 0xff;
  return block;
}

function bigSha256(mib: number): string {
  const block = bigBody();
  const hash = createHash('sha256');
  for (let i = 0; i < mib; i++) hash.update(block);
  return hash.digest('hex');
}

/**
 * Faults, in turn a reset and a black hole (`blackholeMs` long, then healed),
 * one each time another `every` bytes have come down through `proxy`: the
 * first is a reset, after `every` bytes of the download.
 */
function resetAndBlackhole(proxy: FaultProxy, every: number, blackholeMs: number): { resets: number; blackholes: number; stop(): void } {
  const faults = { resets: 0, blackholes: 0, stop };
  let down = 0;
  let next = every;
  let busy = false;
  let stopped = false;
  let healTimer: NodeJS.Timeout | undefined;
  function stop(): void {
    stopped = true;
    proxy.onChunk = undefined;
    clearTimeout(healTimer);
    proxy.heal();
  }
  proxy.onChunk = (direction, chunk) => {
    if (direction !== 'down' || busy || stopped) return;
    down += chunk.length;
    if (down < next) return;
    next = down + every;
    busy = true;
    const blackhole = (faults.resets + faults.blackholes) % 2 === 1;
    setImmediate(() => {
      if (stopped) return;
      if (!blackhole) {
        proxy.reset();
        faults.resets++;
        busy = false;
        return;
      }
      proxy.blackhole();
      faults.blackholes++;
      healTimer = setTimeout(() => {
        proxy.heal();
        busy = false;
      }, blackholeMs);
    });
  };
  return faults;
}

describe("rock run: an application's own TLS, end to end over rocks", () => {
  const certs = makeCerts();
  after(() => certs.cleanup());
  const MIB = 32;
  const FAILURE_TIMEOUT = 2000;

  /**
   * A node https server (plain node:https, in this process) with the test
   * certificate, behind `rock serve`, behind a FaultProxy. The TLS runs from
   * the client to the https server: rock serve and the proxy only see its records.
   */
  async function httpsBehindRockServe(keepAliveTimeout = 120_000): Promise<{
    proxy: FaultProxy;
    proxyPort: number;
    serve: Program;
    handshakes: () => number;
    stop(): Promise<void>;
  }> {
    const block = bigBody();
    let handshakes = 0;
    const https = httpsCreateServer({ key: certs.server.key, cert: certs.server.cert }, (req, res) => {
      const url = new URL(req.url ?? '/', 'https://x');
      if (url.pathname === '/hello') return void res.end('hello, tls\n');
      const blocks = Number(url.searchParams.get('mib') ?? 1);
      res.setHeader('content-length', block.length * blocks);
      let sent = 0;
      const more = (): void => {
        while (sent < blocks) {
          sent++;
          if (!res.write(block)) return void res.once('drain', more);
        }
        res.end();
      };
      more();
    });
    // Node closes a keep-alive connection idle for 5 s by default, and the
    // faults can hold the last bytes of a download longer than that.
    https.keepAliveTimeout = keepAliveTimeout;
    https.on('secureConnection', () => handshakes++);
    https.listen(0, '127.0.0.1');
    await once(https, 'listening');
    const httpsPort = (https.address() as AddressInfo).port;
    const servePort = await freePort();
    const serve = await startRock(
      ['serve', '--listen', `127.0.0.1:${servePort}`, '--to', `127.0.0.1:${httpsPort}`, '--json', '--failure-timeout', String(FAILURE_TIMEOUT)],
      /serving rocks/,
    );
    const proxy = new FaultProxy(servePort);
    const proxyPort = await proxy.listen();
    const stop = async (): Promise<void> => {
      await proxy.close();
      await serve.stop();
      https.closeAllConnections();
      await new Promise((r) => https.close(r));
    };
    return { proxy, proxyPort, serve, handshakes: () => handshakes, stop };
  }

  test(`an https client under rock run downloads ${MIB} MiB from node's https server behind rock serve through resets and black holes, one TLS connection end to end`, {
    skip: certs.skip,
    timeout: 120_000,
  }, async () => {
    const bed = await httpsBehindRockServe();
    try {
      const faults = resetAndBlackhole(bed.proxy, 4 << 20, FAILURE_TIMEOUT * 1.5);
      const started = performance.now();
      const result = await runNode(
        [fixture('https-get.mjs'), `https://127.0.0.1:${bed.proxyPort}/big?mib=${MIB}`, certs.server.certFile],
        rocksEnv({ failureTimeout: FAILURE_TIMEOUT }, { ROCKS_LOG: '1' }),
        90_000,
      );
      const seconds = (performance.now() - started) / 1000;
      faults.stop();
      assert.equal(
        result.stdout,
        `status 200 bytes ${MIB << 20} sha256 ${bigSha256(MIB)}\nhello "hello, tls\\n" TLSv1.3 authorized true reused true\n`,
        result.stderr,
      );
      assert.equal(result.code, 0, result.stderr);
      assert.match(
        result.stderr,
        new RegExp(`^rocks\\[\\d+\\]: connect 127\\.0\\.0\\.1:${bed.proxyPort}: reliable`),
        'the https client dialed over rocks',
      );
      assert.doesNotMatch(result.stderr, /error/);
      // The application's TLS was never redone: its one connection, over one rocks session, outlived every fault.
      assert.equal(bed.handshakes(), 1, 'one TLS handshake at the https server');
      assert.ok(faults.resets >= 2 && faults.blackholes >= 2, `${faults.resets} resets, ${faults.blackholes} black holes`);
      const logged = () => parseJsonLines<{ msg: string; mode?: string }>(bed.serve.output);
      await until(() => logged().some((l) => l.msg === 'closed'), 10_000, "rock serve's session to close");
      const lines = logged();
      assert.deepEqual(
        lines.filter((l) => l.msg === 'connection').map((l) => l.mode),
        ['reliable'],
        'one reliable session at rock serve, the whole run',
      );
      assert.deepEqual(
        lines.filter((l) => l.msg === 'connection failed'),
        [],
        'the session ended cleanly (the https client closed its connection), without an error',
      );
      const resumes = lines.filter((l) => l.msg === 'resumed').length;
      assert.ok(resumes >= faults.resets + faults.blackholes, `rock serve saw ${resumes} resumes after ${faults.resets + faults.blackholes} faults`);
      console.log(
        `# https under rock run, ${MIB} MiB: ${faults.resets} resets, ${faults.blackholes} black holes of ${FAILURE_TIMEOUT * 1.5} ms, ` +
          `${resumes} resumes, ${bed.proxy.connections} connections through the proxy, 1 TLS handshake, ${seconds.toFixed(1)} s`,
      );
    } finally {
      await bed.stop();
    }
  });

  test('a TLS server and an application under rock run that end together: both ends close, with no error', {
    skip: certs.skip,
    timeout: 60_000,
  }, async () => {
    // The client writes and ends as the server's end arrives: its TLS writes
    // close_notify after the rocks socket under it has read the end.
    let received = 0;
    const server = tlsCreateServer({ key: certs.server.key, cert: certs.server.cert }, (s) => {
      s.on('data', (d: Buffer) => (received += d.length));
      s.on('error', () => {});
      s.end('bye\n');
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const servePort = await freePort();
    const target = `127.0.0.1:${(server.address() as AddressInfo).port}`;
    const serve = await startRock(['serve', '--listen', `127.0.0.1:${servePort}`, '--to', target, '--json'], /serving rocks/);
    try {
      for (let run = 0; run < 5; run++) {
        const result = await runNode([fixture('tls-end.mjs'), String(servePort), certs.server.certFile], rocksEnv({}, { ROCKS_LOG: '1' }), 30_000);
        assert.equal(result.stdout, 'read "bye\\n", closed, error false\n', result.stderr);
        assert.match(result.stderr, /: reliable/, 'the client dialed over rocks');
        assert.equal(result.code, 0, result.stderr);
      }
      await until(() => received === 5 * 64 * 1024, 10_000, 'the server to read all 5 x 64 KiB');
    } finally {
      await serve.stop();
      server.close();
    }
  });

  test('a TLS server under rock run and its client that end together: both ends close, with no error', {
    skip: certs.skip,
    timeout: 60_000,
  }, async () => {
    for (let run = 0; run < 5; run++) {
      let port = 0;
      const serving = runNode([fixture('tls-end-server.mjs'), certs.server.certFile, certs.server.keyFile], rocksEnv(), 30_000, (sofar) => {
        port = Number(/^port (\d+)/.exec(sofar)?.[1] ?? 0);
      });
      await until(() => port !== 0, 10_000, 'the server to listen');
      const client = await runNode([fixture('tls-end.mjs'), String(port), certs.server.certFile, 'first'], rocksEnv({}, { ROCKS_LOG: '1' }), 30_000);
      const server = await serving;
      assert.equal(client.stdout, `read ${64 * 1024} bytes, closed, error false\n`, client.stderr);
      assert.match(client.stderr, /: reliable/, 'the client dialed over rocks');
      assert.equal(server.stdout, `port ${port}\nread "hi\\n", closed, error false\n`, server.stderr);
      assert.deepEqual([client.code, server.code], [0, 0], server.stderr);
    }
  });

  test('control: the same https client without rock run, through the same faults, does not get the download', {
    skip: certs.skip,
    timeout: 60_000,
  }, async () => {
    const bed = await httpsBehindRockServe();
    try {
      const faults = resetAndBlackhole(bed.proxy, 4 << 20, FAILURE_TIMEOUT * 1.5);
      const result = await runNode(
        [fixture('https-get.mjs'), `https://127.0.0.1:${bed.proxyPort}/big?mib=${MIB}`, certs.server.certFile],
        baseEnv(),
        30_000,
      );
      faults.stop();
      assert.ok(faults.resets >= 1, 'the first fault, a reset, came');
      assert.doesNotMatch(result.stdout, /status 200/, 'no whole download');
      assert.notEqual(result.code, 0);
      assert.match(result.stderr, /https error: \S+/);
      assert.ok(
        parseJsonLines<{ msg: string; mode?: string }>(bed.serve.output).some((l) => l.msg === 'connection' && l.mode === 'plain'),
        'rock serve carried it as an ordinary TCP connection',
      );
      console.log(`# control, https without rock run: ${result.stderr.trim().replace(/\n/g, '; ')} after ${faults.resets} reset`);
    } finally {
      await bed.stop();
    }
  });
});

describe('runProgram', () => {
  const log = (): void => {};

  test('refuses a command that is not found', async () => {
    await assert.rejects(runProgram(['no-such-program-rocks'], {}, log), /no-such-program-rocks: command not found/);
  });

  test("a program that is not Node runs under proxychains-ng and exits with the program's code", {
    skip: programs('proxychains4').skip,
  }, async () => {
    assert.equal(await runProgram(['sh', '-c', 'exit 7'], {}, log), 7);
    assert.equal(await runProgram(['/bin/true'], {}, log), 0);
  });

  test("runs .mjs files with this node and scripts whose #! runs node; exits with the program's code, 128+N for a signal", {
    timeout: 30_000,
  }, async () => {
    assert.equal(await runProgram([fixture('exit.mjs'), 'code', '3'], {}, log), 3);
    assert.equal(await runProgram([process.execPath, fixture('exit.mjs'), 'code', '0'], {}, log), 0);
    assert.equal(await runProgram([fixture('exit.mjs'), 'signal', 'SIGKILL'], {}, log), 128 + 9);
    const dir = mkdtempSync(join(tmpdir(), 'rock-run-'));
    try {
      const script = join(dir, 'tool');
      writeFileSync(script, `#!/usr/bin/env node\nprocess.exit(process.env.NODE_OPTIONS.includes('preload.js') ? 5 : 6);\n`);
      chmodSync(script, 0o755);
      assert.equal(await runProgram([script], {}, log), 5, 'the script ran, with the preload');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('passes SIGTERM on to the program', { timeout: 30_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rock-run-'));
    const ready = join(dir, 'ready');
    try {
      const running = runProgram([fixture('exit.mjs'), 'wait', ready], {}, log);
      await until(() => existsSync(ready), 10_000, 'the program to start');
      process.kill(process.pid, 'SIGTERM');
      assert.equal(await running, 42, 'the program got SIGTERM and exited its own way');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('keeps NODE_OPTIONS and adds the preload once', () => {
    const env = preloadEnv({ NODE_OPTIONS: '--max-old-space-size=100' }, { failureTimeout: 2000 });
    assert.match(env.NODE_OPTIONS!, /^--max-old-space-size=100 --import=file:\/\/\S+\/dist\/src\/cli\/preload\.js$/);
    assert.equal(env.ROCKS_OPTIONS, '{"failureTimeout":2000}');
    assert.equal(preloadEnv(env, {}).NODE_OPTIONS, env.NODE_OPTIONS);
  });
});
