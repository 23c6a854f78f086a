// EDP against real programs nobody here wrote: a rocks client talks to
// ordinary servers (redis-server, OpenSSH's sshd, Python's http.server) as a
// plain socket, and ordinary clients (curl, socat, nc, redis-cli) get from a
// rocks server exactly what the same service on a plain net server gives them.

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect, createServer as netCreateServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { connect, createServer, type DetectInfo, type ReliableServer, type ReliableSocket } from '../../src/index.js';
import { freePort, programs, run, start, startSshd, waitForPort } from '../support/programs.js';

const scratch = mkdtempSync(join(tmpdir(), 'rocks-interop-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

/** Connects a rocks client (EDP on, nothing cached for this fresh port) and waits for its verdict. */
async function rocksClient(port: number): Promise<{ socket: ReliableSocket; detect: DetectInfo }> {
  const socket = connect({ port, host: '127.0.0.1' });
  // 'detect' comes just before 'connect', in the same tick: listen for both at once.
  const [[detect]] = (await Promise.all([once(socket, 'detect'), once(socket, 'connect')])) as [[DetectInfo], unknown];
  return { socket, detect };
}

/** Reads from `socket` until `done` says the bytes so far are complete. */
function readUntil(socket: Socket | ReliableSocket, done: (bytes: Buffer) => boolean, ms = 10_000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let bytes = Buffer.alloc(0);
    const timer = setTimeout(() => finish(new Error(`timed out with ${JSON.stringify(bytes.toString('latin1').slice(0, 200))}`)), ms);
    const onData = (d: Buffer) => {
      bytes = Buffer.concat([bytes, d]);
      if (done(bytes)) finish();
    };
    const onEnd = () => finish(done(bytes) ? undefined : new Error(`ended with ${JSON.stringify(bytes.toString('latin1').slice(0, 200))}`));
    const finish = (err?: Error) => {
      clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.removeListener('end', onEnd);
      if (err) reject(err);
      else resolve(bytes);
    };
    socket.on('data', onData);
    socket.on('end', onEnd);
  });
}

function readAll(socket: Socket | ReliableSocket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  socket.on('data', (d: Buffer) => chunks.push(d));
  return new Promise((resolve, reject) => {
    socket.once('end', () => resolve(Buffer.concat(chunks)));
    socket.once('error', reject);
  });
}

const endsWith = (suffix: string) => (b: Buffer) => b.toString('latin1').endsWith(suffix);

describe('a rocks client with ordinary servers', () => {
  const redisFound = programs('redis-server');
  test('redis-server: real commands and replies; redis sees nothing but them', { skip: redisFound.skip, timeout: 30_000 }, async () => {
    const port = await freePort();
    const redis = start(redisFound.paths['redis-server'], ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']);
    try {
      await waitForPort(port, '127.0.0.1', 10_000, redis);
      const { socket, detect } = await rocksClient(port);
      assert.equal(detect.reliable, false);
      assert.equal(socket.reliable, false);
      assert.match(detect.reason, /ordinary server/);
      const value = randomBytes(24).toString('hex');
      const replies: [string, string][] = [
        ['PING\r\n', '+PONG\r\n'],
        [`*3\r\n$3\r\nSET\r\n$6\r\nrocks1\r\n$${value.length}\r\n${value}\r\n`, '+OK\r\n'],
        ['*2\r\n$3\r\nGET\r\n$6\r\nrocks1\r\n', `$${value.length}\r\n${value}\r\n`],
        ['*2\r\n$4\r\nINCR\r\n$6\r\nrocks2\r\n', ':1\r\n'],
      ];
      for (const [command, reply] of replies) {
        socket.write(command);
        assert.equal((await readUntil(socket, endsWith('\r\n'))).toString(), reply, `reply to ${JSON.stringify(command)}`);
      }
      socket.end();
      await once(socket, 'close');
      // Ask redis itself, over a plain socket, what it saw: no malformed input, only our commands.
      const plain = netConnect(port, '127.0.0.1');
      plain.write('*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n');
      const info = (await readUntil(plain, (b) => /total_error_replies:\d+\r\n/.test(b.toString()) && b.toString().endsWith('\r\n\r\n'))).toString();
      plain.destroy();
      assert.match(info, /total_error_replies:0\r\n/);
      // Our 4 commands (INFO counts once answered); the probe and the port checks sent nothing.
      assert.match(info, /total_commands_processed:4\r\n/);
    } finally {
      await redis.stop();
    }
  });

  const sshFound = programs('sshd', 'ssh-keygen', 'nc');
  const sshSkip = sshFound.skip ?? (process.getuid?.() !== 0 ? 'sshd needs root here (privilege separation)' : undefined);
  test('sshd speaks first: its banner arrives intact, the same bytes nc reads, and the key exchange follows', {
    skip: sshSkip,
    timeout: 30_000,
  }, async () => {
    const sshd = await startSshd(join(scratch, 'sshd'));
    const port = sshd.port;
    try {
      // What an ordinary client reads: nc, silent for a second.
      const nc = await run(sshFound.paths.nc, ['-q', '0', '127.0.0.1', String(port)], { holdInput: 1000 });
      const banner = nc.stdout.toString('latin1');
      assert.match(banner, /^SSH-2\.0-OpenSSH_[^\r\n]*\r\n$/, `nc read ${JSON.stringify(banner)}`);

      const { socket, detect } = await rocksClient(port);
      assert.equal(detect.reliable, false);
      assert.equal(socket.reliable, false);
      const first = await readUntil(socket, (b) => b.includes('\n'));
      assert.equal(first.toString('latin1'), banner, 'the banner is the first thing the application reads, intact');
      // sshd accepts our identification and starts the key exchange: SSH_MSG_KEXINIT (20) in a binary packet.
      socket.write('SSH-2.0-rocks_interop_test\r\n');
      const packet = await readUntil(socket, (b) => b.length >= 6);
      assert.equal(packet[5], 20, 'a KEXINIT packet');
      socket.destroy();
    } finally {
      await sshd.stop();
    }
  });

  const pythonFound = programs('python3');
  test('python3 -m http.server: a real GET, body checked byte for byte', { skip: pythonFound.skip, timeout: 30_000 }, async () => {
    const dir = join(scratch, 'www');
    mkdirSync(dir);
    const body = randomBytes(256 * 1024);
    writeFileSync(join(dir, 'data.bin'), body);
    const port = await freePort();
    const http = start(pythonFound.paths.python3, ['-m', 'http.server', String(port), '--bind', '127.0.0.1', '--directory', dir]);
    try {
      await waitForPort(port, '127.0.0.1', 10_000, http);
      const { socket, detect } = await rocksClient(port);
      assert.equal(detect.reliable, false);
      socket.write('GET /data.bin HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n');
      // HTTP/1.0: the server closes after the body, so the whole stream is the response.
      const response = await readAll(socket);
      const split = response.indexOf('\r\n\r\n');
      const head = response.subarray(0, split).toString('latin1');
      assert.match(head, /^HTTP\/1\.0 200 OK\r\n/);
      assert.match(head, new RegExp(`\r\nContent-Length: ${body.length}(\r\n|$)`));
      assert.ok(response.subarray(split + 4).equals(body), 'the body, byte for byte');
    } finally {
      await http.stop();
    }
  });
});

// ---- ordinary clients and a rocks server -----------------------------------------------------

type Service = (socket: Socket | ReliableSocket) => void;

/** The same service on a rocks server and on a plain net server; records each rocks socket's mode. */
async function serveBoth(service: Service): Promise<{ rocksPort: number; plainPort: number; modes: boolean[]; close(): Promise<void> }> {
  const modes: boolean[] = [];
  const rocks: ReliableServer = createServer((s) => {
    modes.push(s.reliable);
    s.on('error', () => {});
    service(s);
  });
  const plain: Server = netCreateServer((s) => {
    s.on('error', () => {});
    service(s);
  });
  rocks.listen(0, '127.0.0.1');
  plain.listen(0, '127.0.0.1');
  await Promise.all([once(rocks, 'listening'), once(plain, 'listening')]);
  return {
    rocksPort: (rocks.address() as AddressInfo).port,
    plainPort: (plain.address() as AddressInfo).port,
    modes,
    async close() {
      await Promise.all([new Promise((r) => rocks.close(r)), new Promise((r) => plain.close(r))]);
    },
  };
}

const BIG = randomBytes(1024 * 1024);

/** A small HTTP/1.1 service: every response closes the connection. */
const httpService: Service = (socket) => {
  readUntil(socket, (b) => b.includes('\r\n\r\n')).then(
    (request) => {
      // The request names the port in Host:, so the echo leaves that line out.
      const lines = request
        .toString('latin1')
        .split('\r\n')
        .filter((l) => !/^host:/i.test(l));
      const path = lines[0].split(' ')[1] ?? '/';
      const body =
        path === '/big' ? BIG : Buffer.from(`hello from ${path}, request sha256 ${createHash('sha256').update(lines.join('\r\n')).digest('hex')}\n`);
      socket.write(`HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`);
      socket.end(body);
    },
    () => socket.destroy(),
  );
};

const echoService: Service = (socket) => {
  socket.pipe(socket);
};

const BANNER = '220 rocks.test ESMTP ready\r\n';
/** Speaks first, like SMTP: a banner, then an echo. */
const bannerService: Service = (socket) => {
  socket.write(BANNER);
  socket.pipe(socket);
};

/** Just enough of RESP for redis-cli: PING, ECHO, SET, GET. */
const redisService: Service = (socket) => {
  const store = new Map<string, Buffer>();
  let buffered = Buffer.alloc(0);
  const bulk = (b: Buffer) => Buffer.concat([Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n')]);
  socket.on('data', (d: Buffer) => {
    buffered = Buffer.concat([buffered, d]);
    for (;;) {
      const command = parseRespArray(buffered);
      if (command === undefined) return;
      buffered = buffered.subarray(command.length);
      const [name, ...args] = command.items;
      switch (name?.toString().toUpperCase()) {
        case 'PING':
          socket.write('+PONG\r\n');
          break;
        case 'ECHO':
          socket.write(bulk(args[0] ?? Buffer.alloc(0)));
          break;
        case 'SET':
          store.set(args[0].toString(), args[1]);
          socket.write('+OK\r\n');
          break;
        case 'GET': {
          const v = store.get(args[0].toString());
          socket.write(v ? bulk(v) : '$-1\r\n');
          break;
        }
        default:
          socket.write(`-ERR unknown command '${name?.toString()}'\r\n`);
      }
    }
  });
};

/** One RESP array of bulk strings at the start of `b`, or undefined while incomplete. */
function parseRespArray(b: Buffer): { items: Buffer[]; length: number } | undefined {
  const line = (at: number) => {
    const end = b.indexOf('\r\n', at);
    return end < 0 ? undefined : { text: b.toString('latin1', at, end), next: end + 2 };
  };
  const head = line(0);
  if (head === undefined) return undefined;
  const count = Number(head.text.slice(1));
  const items: Buffer[] = [];
  let at = head.next;
  for (let i = 0; i < count; i++) {
    const len = line(at);
    if (len === undefined) return undefined;
    const n = Number(len.text.slice(1));
    if (b.length < len.next + n + 2) return undefined;
    items.push(b.subarray(len.next, len.next + n));
    at = len.next + n + 2;
  }
  return { items, length: at };
}

describe('ordinary clients with a rocks server', () => {
  const curlFound = programs('curl');
  test('curl: responses byte-identical to the same service on a plain net server', { skip: curlFound.skip, timeout: 30_000 }, async () => {
    const both = await serveBoth(httpService);
    try {
      for (const path of ['/hello', '/big']) {
        const fetch = (port: number) => run(curlFound.paths.curl, ['-s', '-S', '-i', '--http1.1', `http://127.0.0.1:${port}${path}`]);
        const [viaRocks, viaPlain] = await Promise.all([fetch(both.rocksPort), fetch(both.plainPort)]);
        assert.equal(viaRocks.code, 0, viaRocks.stderr);
        assert.ok(viaRocks.stdout.equals(viaPlain.stdout), `curl ${path}: the rocks server's answer differs from the plain one`);
        if (path === '/big') assert.ok(viaRocks.stdout.subarray(viaRocks.stdout.length - BIG.length).equals(BIG));
        else assert.match(viaRocks.stdout.toString(), /hello from \/hello, request sha256 [0-9a-f]{64}\n$/);
      }
      assert.deepEqual(both.modes, [false, false], 'served as plain connections');
    } finally {
      await both.close();
    }
  });

  const socatFound = programs('socat');
  test('socat: 1 MiB echoed intact, half-close included, as by a plain net server', { skip: socatFound.skip, timeout: 30_000 }, async () => {
    const both = await serveBoth(echoService);
    try {
      const input = randomBytes(1024 * 1024);
      const echo = (port: number) => run(socatFound.paths.socat, ['-t', '5', '-', `TCP:127.0.0.1:${port}`], { input });
      const [viaRocks, viaPlain] = await Promise.all([echo(both.rocksPort), echo(both.plainPort)]);
      assert.equal(viaRocks.code, 0, viaRocks.stderr);
      assert.ok(viaRocks.stdout.equals(input), `socat got ${viaRocks.stdout.length} bytes back, not the ${input.length} it sent`);
      assert.ok(viaPlain.stdout.equals(input));
      assert.deepEqual(both.modes, [false]);
    } finally {
      await both.close();
    }
  });

  const ncFound = programs('nc');
  test('nc, silent: the banner of a server that speaks first arrives intact', { skip: ncFound.skip, timeout: 30_000 }, async () => {
    const both = await serveBoth(bannerService);
    try {
      // nc sends nothing and keeps its side open (its input stays open) for 1.5 s, then quits.
      // (An nc whose input ends at once half-closes at once, which is what an EDP probe
      // does: see docs/PROTOCOL.md §14.8.)
      const listen = (port: number) => run(ncFound.paths.nc, ['-q', '0', '127.0.0.1', String(port)], { holdInput: 1500 });
      const [viaRocks, viaPlain] = await Promise.all([listen(both.rocksPort), listen(both.plainPort)]);
      assert.equal(viaPlain.stdout.toString(), BANNER);
      assert.equal(viaRocks.stdout.toString(), BANNER, 'the banner, after the server waited detectTimeout for the client to speak');
      assert.deepEqual(both.modes, [false]);
    } finally {
      await both.close();
    }
  });

  const redisCliFound = programs('redis-cli');
  test('redis-cli: real commands get the same replies as from a plain net server', { skip: redisCliFound.skip, timeout: 30_000 }, async () => {
    const both = await serveBoth(redisService);
    try {
      const cli = (port: number, ...args: string[]) => run(redisCliFound.paths['redis-cli'], ['-h', '127.0.0.1', '-p', String(port), ...args]);
      for (const args of [['PING'], ['ECHO', 'über rocks'], ['SET', 'k', 'v'], ['GET', 'nothing']]) {
        const [viaRocks, viaPlain] = await Promise.all([cli(both.rocksPort, ...args), cli(both.plainPort, ...args)]);
        assert.equal(viaRocks.code, 0, viaRocks.stderr);
        assert.equal(viaRocks.stdout.toString(), viaPlain.stdout.toString(), `redis-cli ${args.join(' ')}`);
      }
      assert.equal((await cli(both.rocksPort, 'PING')).stdout.toString(), 'PONG\n');
      assert.ok(both.modes.length === 5 && both.modes.every((m) => m === false));
    } finally {
      await both.close();
    }
  });
});
