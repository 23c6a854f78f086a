// Real sockets on loopback through an in-process fault proxy that resets,
// black-holes and delays the connection: bytes verified by SHA-256 both ways,
// failure detection timed against failureTimeout + one heartbeat, each
// resume tied to the fault that caused it, and the documented error when a
// suspension outlasts suspendLimit, neither before nor long after.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { lookup as dnsLookup } from 'node:dns';
import { type AddressInfo, createServer as createNetServer, connect as netConnect } from 'node:net';
import { describe, test } from 'node:test';
import { connect, RocksError, type ReliableSocket } from '../../src/index.js';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { sleep, until } from '../support/helpers.js';
import { closeServer, endAll, listen, rocksOnly } from '../support/net.js';

const FAILURE_TIMEOUT = 300;
const HEARTBEAT = 75;
const options = {
  failureTimeout: FAILURE_TIMEOUT,
  heartbeatInterval: HEARTBEAT,
  reconnectDelay: 10,
  reconnectDelayMax: 150,
};
const MIB = 1024 * 1024;
const EACH_WAY = 64 * MIB;
const FAULTS_OF_EACH_KIND = 50;
/** How late one more timer may fire on a loaded machine, beyond what a heartbeat's worth already allows (ms). */
const SCHEDULING_MARGIN = 25;

/** Writes random data at a steady pace until stopped, honouring backpressure; hashes what it wrote. */
class Writer {
  readonly hash = createHash('sha256');
  written = 0;
  private stopped = false;
  readonly done: Promise<void>;

  constructor(socket: ReliableSocket, minimum: number) {
    this.done = (async () => {
      while (!this.stopped || this.written < minimum) {
        const chunk = randomBytes(64 * 1024);
        this.hash.update(chunk);
        this.written += chunk.length;
        if (!socket.write(chunk)) await once(socket, 'drain');
        if (this.written % (256 * 1024) === 0) await sleep(8);
      }
      socket.end();
    })();
  }

  /** Lets the writer end once it has written its minimum. */
  stop(): void {
    this.stopped = true;
  }
}

function reader(socket: ReliableSocket): { hash: ReturnType<typeof createHash>; count: () => number; ended: Promise<void> } {
  const hash = createHash('sha256');
  let n = 0;
  socket.on('data', (d: Buffer) => {
    hash.update(d);
    n += d.length;
  });
  return { hash, count: () => n, ended: new Promise((r) => socket.once('end', r)) };
}

describe('surviving faults on real sockets', () => {
  test(`${EACH_WAY / MIB} MiB each way through ${FAULTS_OF_EACH_KIND} resets, black holes and delays each`, { timeout: 300_000 }, async () => {
    const serverSockets: ReliableSocket[] = [];
    const strays: ReliableSocket[] = [];
    const serverSuspends: number[] = [];
    let serverResumes = 0;
    let serverWriter: Writer | undefined;
    let serverReader: ReturnType<typeof reader> | undefined;
    const { server, port } = await listen(
      options,
      rocksOnly((s) => {
        serverSockets.push(s);
        serverReader = reader(s);
        serverWriter = new Writer(s, EACH_WAY);
        s.on('suspend', () => serverSuspends.push(performance.now()));
        s.on('reconnect', () => serverResumes++);
        s.on('error', (e) => assert.fail(`server socket error: ${e.message}`));
      }, strays),
    );
    const proxy = new FaultProxy(port);
    const proxyPort = await proxy.listen();

    const c = connect({ port: proxyPort, host: '127.0.0.1', ...options });
    const clientSuspends: number[] = [];
    const clientResumes: { at: number; outage: number }[] = [];
    c.on('suspend', () => clientSuspends.push(performance.now()));
    c.on('reconnect', (info) => clientResumes.push({ at: performance.now(), outage: info.outage }));
    c.on('error', (e) => assert.fail(`client socket error: ${e.message}`));
    const clientReader = reader(c);
    const clientWriter = new Writer(c, EACH_WAY);
    await once(c, 'connect');
    await until(() => serverWriter !== undefined, 5000, 'server connection');

    const detections: number[] = [];
    const resumeTimes: number[] = [];
    // Each fault as it began: what the system had counted by then. A fault's
    // window runs to the next fault's start (the last one's, to the end).
    type Kind = 'reset' | 'blackhole' | 'short delay' | 'long delay';
    const faults: { kind: Kind; round: number; clientResumes: number; serverResumes: number; connections: number }[] = [];
    const fault = (kind: Kind, round: number) =>
      faults.push({ kind, round, clientResumes: clientResumes.length, serverResumes, connections: proxy.connections });
    // Should the run ever stall, say where: the test would otherwise just time out.
    let phase = 'starting';
    const describe = (s: ReliableSocket) => (s as unknown as { driver?: { session: { describe(): string } } }).driver?.session.describe();
    let progress = '';
    // What the end waits for, and which of it is still pending (a CI run once stalled here with both sessions done).
    const waiting = new Set<string>();
    const streams = (s: ReliableSocket | undefined) =>
      s && `writableFinished ${s.writableFinished} readableEnded ${s.readableEnded} destroyed ${s.destroyed} closed ${s.closed}`;
    const watchdog = setInterval(() => {
      const now = `${phase} ${clientReader.count()} ${serverReader?.count()}`;
      if (now === progress) {
        console.log(
          `stalled (${phase}); client: ${describe(c)}; server: ${describe(serverSockets[0])}; ` +
            `read ${clientReader.count()}/${serverReader?.count()}, written ${clientWriter.written}/${serverWriter?.written}; ` +
            `pending: ${[...waiting].join(', ') || 'nothing'}; client stream: ${streams(c)}; server stream: ${streams(serverSockets[0])}`,
        );
      }
      progress = now;
    }, 20_000);
    const serverSide = serverSockets[0];
    // Each fault starts on a healthy connection: both ends resumed and data flowing.
    const healthy = async (what: string) => {
      const before = clientReader.count() + serverReader!.count();
      await until(() => !c.suspended && !serverSide.suspended && clientReader.count() + serverReader!.count() > before, 10_000, what);
    };
    for (let round = 0; round < FAULTS_OF_EACH_KIND; round++) {
      phase = `round ${round}`;
      await healthy('a healthy connection before the reset');
      // A reset: both ends see ECONNRESET at once.
      fault('reset', round);
      proxy.reset();
      await sleep(20 + (round % 5) * 10);

      // A black hole: nothing arrives, nothing closes; detected by silence.
      await healthy('a healthy connection before the black hole');
      const suspendsBefore = [clientSuspends.length, serverSuspends.length];
      const resumesBefore = clientResumes.length;
      const start = performance.now();
      fault('blackhole', round);
      proxy.blackhole();
      await until(
        () => clientSuspends.length > suspendsBefore[0] && serverSuspends.length > suspendsBefore[1],
        10_000,
        'both ends to detect the black hole',
      );
      detections.push(clientSuspends[clientSuspends.length - 1] - start, serverSuspends[serverSuspends.length - 1] - start);
      const healed = performance.now();
      proxy.heal();
      await until(() => clientResumes.length > resumesBefore, 10_000, 'resume after the black hole');
      resumeTimes.push(clientResumes[clientResumes.length - 1].at - healed);

      // A delay: every chunk held up; half the spikes outlast the failure timeout.
      await healthy('a healthy connection before the delay');
      const long = round % 2 === 1;
      fault(long ? 'long delay' : 'short delay', round);
      proxy.setDelay(long ? FAILURE_TIMEOUT * 2 : 40);
      await sleep(long ? FAILURE_TIMEOUT * 3 : 150);
      proxy.setDelay(0);
      await sleep(20);
    }
    phase = 'finishing';
    clientWriter.stop();
    serverWriter!.stop();
    const closed = new Promise((r) => c.on('close', r));
    const awaited = {
      'client writer': clientWriter.done,
      'server writer': serverWriter!.done,
      'client end': clientReader.ended,
      'server end': serverReader!.ended,
      'client close': closed,
    };
    for (const [name, p] of Object.entries(awaited)) {
      waiting.add(name);
      void p.then(() => waiting.delete(name));
    }
    await Promise.all(Object.values(awaited));
    clearInterval(watchdog);

    assert.equal(serverSockets.length, 1, 'one session on the server for the whole run');
    assert.ok(clientWriter.written >= EACH_WAY && serverWriter!.written >= EACH_WAY);
    assert.equal(serverReader!.count(), clientWriter.written, 'server received every byte the client wrote');
    assert.equal(clientReader.count(), serverWriter!.written, 'client received every byte the server wrote');
    assert.equal(serverReader!.hash.digest('hex'), clientWriter.hash.digest('hex'), 'client to server SHA-256');
    assert.equal(clientReader.hash.digest('hex'), serverWriter!.hash.digest('hex'), 'server to client SHA-256');
    // Every resume is tied to a fault: none before the first; each reset and
    // each black hole cut an established link (healthy() waited for one), so
    // each is followed by exactly one resume at each end over at least one
    // new connection through the proxy; a delay past the failure timeout is a
    // failure too (at least one resume), a 40 ms one is not (none).
    assert.equal(faults[0].clientResumes + faults[0].serverResumes, 0, 'no resume before the first fault');
    const ends = [...faults.slice(1), { clientResumes: clientResumes.length, serverResumes, connections: proxy.connections }];
    const windows = faults.map((f, i) => ({
      ...f,
      client: ends[i].clientResumes - f.clientResumes,
      server: ends[i].serverResumes - f.serverResumes,
      connections: ends[i].connections - f.connections,
    }));
    const show = (w: (typeof windows)[number]) =>
      `${w.kind} in round ${w.round}: ${w.client} client and ${w.server} server resumes, ${w.connections} new connections`;
    for (const w of windows) {
      if (w.kind === 'reset' || w.kind === 'blackhole') {
        assert.ok(w.client === 1 && w.server === 1 && w.connections >= 1, `one resume at each end over a new connection after each ${show(w)}`);
      } else if (w.kind === 'long delay') {
        assert.ok(w.client >= 1 && w.server >= 1 && w.connections >= 1, `a delay past the failure timeout is a failure, then a resume: ${show(w)}`);
      } else {
        assert.ok(w.client === 0 && w.server === 0 && w.connections === 0, `a 40 ms delay is no failure: ${show(w)}`);
      }
    }

    const sorted = [...detections].sort((a, b) => a - b);
    const resumeSorted = [...resumeTimes].sort((a, b) => a - b);
    const pct = (xs: number[], p: number) => xs[Math.min(xs.length - 1, Math.floor(p * xs.length))].toFixed(0);
    console.log(
      `# ${(clientWriter.written / MIB).toFixed(0)} MiB up, ${(serverWriter!.written / MIB).toFixed(0)} MiB down; ` +
        `${clientSuspends.length} client suspends, ${clientResumes.length} resumes; ` +
        `${strays.length} links black-holed before their announcement, served plain and closed`,
    );
    console.log(
      `# black-hole detection (ms, both ends): median ${pct(sorted, 0.5)}, p90 ${pct(sorted, 0.9)}, max ${pct(sorted, 1)}; ` +
        `bound failureTimeout + heartbeat = ${FAILURE_TIMEOUT + HEARTBEAT}`,
    );
    console.log(
      `# resume after the path returned (ms): median ${pct(resumeSorted, 0.5)}, p90 ${pct(resumeSorted, 0.9)}, max ${pct(resumeSorted, 1)}`,
    );
    for (const d of detections) {
      // The last byte may have arrived up to a heartbeat before the black hole began.
      assert.ok(d >= FAILURE_TIMEOUT - HEARTBEAT, `detected after ${d.toFixed(0)} ms, too early to be silence`);
      assert.ok(d <= FAILURE_TIMEOUT + HEARTBEAT, `detected after ${d.toFixed(0)} ms, beyond failureTimeout + heartbeat`);
    }
    await until(() => server.sessionCount === 0, 5000, 'server to release the session');
    await proxy.close();
    await closeServer(server);
  });

  test('a saturated transfer both ways, with readers that stall, is never mistaken for a failure', { timeout: 120_000 }, async () => {
    // The shortest failure timeout there is, and windows that fill while the readers stall.
    // Each side ends only its own direction when done sending (allowHalfOpen).
    const tight = { failureTimeout: 200, heartbeatInterval: 40, receiveWindow: 512 * 1024, maxInflight: 1024 * 1024, allowHalfOpen: true };
    const total = 128 * MIB;
    const suspends: string[] = [];
    const blast = async (socket: ReliableSocket) => {
      const hash = createHash('sha256');
      const chunk = randomBytes(256 * 1024);
      for (let sent = 0; sent < total; sent += chunk.length) {
        hash.update(chunk);
        if (!socket.write(chunk)) await once(socket, 'drain');
      }
      socket.end();
      return hash.digest('hex');
    };
    const drink = (socket: ReliableSocket) => {
      const hash = createHash('sha256');
      let n = 0;
      let stalls = 0;
      socket.on('data', (d: Buffer) => {
        hash.update(d);
        n += d.length;
        if ((n > total / 3 && stalls === 0) || (n > (2 * total) / 3 && stalls === 1)) {
          stalls++;
          socket.pause();
          setTimeout(() => socket.resume(), 600);
        }
      });
      return new Promise<string>((r) => socket.once('end', () => r(hash.digest('hex'))));
    };
    let serverDone: Promise<[string, string]> | undefined;
    const { server, port } = await listen(tight, (s) => {
      s.on('suspend', (i) => suspends.push(`server: ${i.reason}`));
      serverDone = Promise.all([blast(s), drink(s)]);
    });
    const c = connect({ port, host: '127.0.0.1', ...tight });
    c.on('suspend', (i) => suspends.push(`client: ${i.reason}`));
    const clientDone = Promise.all([blast(c), drink(c)]);
    await once(c, 'connect');
    const [clientSent, clientGot] = await clientDone;
    const [serverSent, serverGot] = await serverDone!;
    assert.equal(serverGot, clientSent);
    assert.equal(clientGot, serverSent);
    assert.deepEqual(suspends, [], 'no suspension during a saturated transfer');
    await until(() => server.sessionCount === 0, 5000, 'server to release the session');
    await closeServer(server);
  });

  test('a suspension longer than suspendLimit ends in ERR_ROCKS_SUSPEND_TIMEOUT on both ends', { timeout: 30_000 }, async () => {
    const limits = { ...options, suspendLimit: 500 };
    let serverSide: ReliableSocket | undefined;
    const { server, port } = await listen(
      limits,
      rocksOnly((s) => {
        serverSide = s;
        s.resume();
      }),
    );
    const proxy = new FaultProxy(port);
    const c = connect({ port: await proxy.listen(), host: '127.0.0.1', ...limits });
    try {
      c.resume();
      await once(c, 'connect');
      c.write('hello');
      await until(() => serverSide !== undefined, 5000, 'connection');
      const serverError = new Promise<Error>((r) => serverSide!.on('error', r));
      const clientError = new Promise<Error>((r) => c.on('error', r));
      const clientClosed = new Promise((r) => c.on('close', r));
      const start = performance.now();
      proxy.blackhole();
      const [ce, se] = await Promise.all([clientError, serverError]);
      const elapsed = performance.now() - start;
      for (const e of [ce, se]) {
        assert.ok(e instanceof RocksError);
        assert.equal(e.code, 'ERR_ROCKS_SUSPEND_TIMEOUT');
        assert.match(e.message, /suspended for \d+ ms/);
      }
      // The suspension begins when silence is detected: failureTimeout after the
      // last byte heard, which came at most a heartbeat before the black hole
      // and no later than it. The first test holds detection to failureTimeout
      // + one heartbeat after the black hole (the heartbeat's worth covers a
      // late timer); suspendLimit then runs from the suspension, and one more
      // timer may fire late: SCHEDULING_MARGIN.
      const earliest = FAILURE_TIMEOUT - HEARTBEAT + limits.suspendLimit;
      const latest = FAILURE_TIMEOUT + HEARTBEAT + limits.suspendLimit + SCHEDULING_MARGIN;
      console.log(
        `# suspendLimit ${limits.suspendLimit} ms: both ends failed ${elapsed.toFixed(0)} ms after the black hole (bounds ${earliest}..${latest})`,
      );
      assert.ok(elapsed >= earliest, `failed after ${elapsed.toFixed(0)} ms, before failureTimeout - heartbeat + suspendLimit (${earliest})`);
      assert.ok(
        elapsed <= latest,
        `failed after ${elapsed.toFixed(0)} ms, later than failureTimeout + heartbeat + suspendLimit + ${SCHEDULING_MARGIN} (${latest})`,
      );
      await clientClosed;
      await until(() => server.sessionCount === 0, 5000, 'server to release the session');
    } finally {
      // Whatever failed, nothing is left to hold the test file open.
      c.destroy();
      serverSide?.destroy();
      await proxy.close();
      await closeServer(server);
    }
  });

  test('writes buffer up to maxInflight while suspended; drain follows the resume', { timeout: 30_000 }, async () => {
    const small = { ...options, maxInflight: 256 * 1024 };
    let received = 0;
    const { server, port } = await listen(
      small,
      rocksOnly((s) => {
        s.on('data', (d: Buffer) => (received += d.length));
      }),
    );
    const proxy = new FaultProxy(port);
    const c = connect({ port: await proxy.listen(), host: '127.0.0.1', ...small });
    c.resume();
    await once(c, 'connect');
    proxy.blackhole();
    await once(c, 'suspend');
    let accepted = 0;
    const chunk = Buffer.alloc(16 * 1024, 1);
    while (c.write(chunk)) accepted += chunk.length;
    accepted += chunk.length;
    assert.ok(accepted >= 256 * 1024 && accepted <= 256 * 1024 + 64 * 1024, `write() returned false after ${accepted} bytes`);
    assert.equal(c.suspended, true);
    const events: string[] = [];
    c.on('reconnect', () => events.push('reconnect'));
    c.on('drain', () => events.push('drain'));
    proxy.heal();
    await once(c, 'drain');
    assert.deepEqual(events, ['reconnect', 'drain']);
    await until(() => received === accepted, 10_000, 'all buffered bytes to arrive');
    await endAll(c, server, proxy);
  });

  test('the client re-resolves the host at every attempt and the server follows it to a new address', { timeout: 30_000 }, async () => {
    let serverSide: ReliableSocket | undefined;
    const { server, port } = await listen(
      options,
      rocksOnly((s) => {
        serverSide = s;
        s.pipe(s);
      }),
    );
    const proxy = new FaultProxy(port);
    proxy.upstreamAddress = '127.0.0.2';
    const proxyPort = await proxy.listen();
    let lookups = 0;
    const attempts: number[] = [];
    const c = connect({
      port: proxyPort,
      host: 'localhost',
      family: 4,
      ...options,
      lookup: (host, opts, cb) => {
        lookups++;
        dnsLookup(host, opts, cb);
      },
    });
    c.on('reconnect-attempt', (info) => attempts.push(info.attempt));
    c.resume();
    await once(c, 'connect');
    await until(() => serverSide !== undefined, 5000, 'connection');
    assert.equal(serverSide!.remoteAddress, '127.0.0.2');
    const lookupsBefore = lookups;
    proxy.upstreamAddress = '127.0.0.3';
    proxy.reset();
    await once(c, 'reconnect');
    await until(() => serverSide!.remoteAddress === '127.0.0.3', 5000, 'server to see the new address');
    assert.ok(lookups > lookupsBefore, 'the host name was resolved again');
    assert.ok(attempts.length >= 1 && attempts[0] === 1, `reconnect attempts ${attempts.join(',')}`);
    await endAll(c, server, proxy);
  });
});

const FAULT_PROXY = new URL('../../src/testbed/fault-proxy.js', import.meta.url).href;

describe('the fault proxy', () => {
  // In a process of its own: the failure this guards against is a process
  // that never exits (a reset refused during end() leaks the handle).
  test('resets an open connection, and one still ending without leaking it', async () => {
    const script = `
      import { createServer, connect } from 'node:net';
      import { resetSocket } from ${JSON.stringify(FAULT_PROXY)};
      let accepted = 0;
      const server = createServer({ allowHalfOpen: true }, (s) => {
        s.on('error', (err) => console.log('server side: ' + err.code));
        if (++accepted === 1) { resetSocket(s); return; }
        s.end('bye');
        resetSocket(s); // the shutdown has not completed yet
        server.close();
      });
      const dial = (port, then) => {
        const c = connect(port, '127.0.0.1');
        c.on('error', (err) => console.log('client: ' + err.code));
        c.on('close', then);
        c.resume();
      };
      server.listen(0, '127.0.0.1', () => {
        const { port } = server.address();
        dial(port, () => dial(port, () => console.log('closed')));
      });
    `;
    const run = await new Promise<{ code: number | null; out: string }>((resolve) => {
      const child = execFile(process.execPath, ['--input-type=module', '-e', script], { timeout: 10_000 }, (_err, out) =>
        resolve({ code: child.exitCode, out }),
      );
    });
    assert.equal(run.out, 'client: ECONNRESET\nclosed\n', 'the first connection was reset, the second closed');
    assert.equal(run.code, 0, 'the process exited by itself');
  });

  test('dials the server from each of several upstream addresses in turn', {
    skip: process.platform !== 'linux' && '127/8 is loopback on Linux only',
  }, async () => {
    const seen: string[] = [];
    const server = createNetServer((s) => {
      seen.push(s.remoteAddress!);
      s.destroy();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const proxy = new FaultProxy((server.address() as AddressInfo).port);
    proxy.upstreamAddress = ['127.0.0.4', '127.0.0.5'];
    const proxyPort = await proxy.listen();
    try {
      for (let i = 0; i < 3; i++) {
        const c = netConnect(proxyPort, '127.0.0.1').on('error', () => {});
        await until(() => seen.length === i + 1, 5000, `connection ${i + 1} at the server`);
        c.destroy();
      }
      assert.deepEqual(seen, ['127.0.0.4', '127.0.0.5', '127.0.0.4']);
    } finally {
      await proxy.close();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
