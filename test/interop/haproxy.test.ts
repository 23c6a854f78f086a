// A real HAProxy routing rocks links by their first bytes, with the
// configuration of docs/haproxy.cfg as written (only addresses, ports and
// the map's path replaced, by test/support/haproxy.ts): three rocks echo
// servers with node ids behind it, a fault proxy in front that resets every
// link, three times. Every resume must
// reach the node its session id names, with no relay and no session lost. The
// control run, the same file without its use_backend rule, must lose
// sessions: it proves that haproxy scatters resumes and that the rule is what
// saves them. EDP is checked through both hops too: a probe's half-close must
// reach the server, or every client would take it for an ordinary one.

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { type AddressInfo, connect as netConnect, createServer as netCreateServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { connect, detectionCache, type DetectInfo, type ReliableServer, type ReliableSocket, RocksError } from '../../src/index.js';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { sleep, until } from '../support/helpers.js';
import { docNodeIds, HaproxyLog, writeHaproxyConfig } from '../support/haproxy.js';
import { closeServer, listen } from '../support/net.js';
import { freePort, programs, start, waitForPort } from '../support/programs.js';
import { startRock } from '../support/rock.js';
import type { Program } from '../support/helpers.js';

/** The node ids of the doc's example nodes.map (17, 34, 51): the nodes run with these. */
const NODE_IDS = docNodeIds();
const CLIENTS = 30;
const ROUNDS = 3;
const FAILURE_TIMEOUT = 1000;
const banner = (nodeId: number) => `220 node ${nodeId} ready\r\n`;

/** A rocks server of the bed: its node id and port. */
interface Listening {
  nodeId: number;
  port: number;
}

/** What one rocks server saw. */
interface Node extends Listening {
  server: ReliableServer;
  /** Sessions it held, by id (hex): what it received and how often the session resumed here. */
  sessions: Map<string, { received: ReturnType<typeof createHash>; digest: string | undefined; resumes: number }>;
  /** Links it refused, by error code (a resume of a session it does not hold, say). */
  refused: Map<string, number>;
  plain: number;
  /** Its sockets still open (the control run leaves sessions suspended, their clients gone). */
  open: Set<ReliableSocket>;
}

/** A rocks echo server (ordinary clients get a banner first, then the echo). */
async function startNode(nodeId: number): Promise<Node> {
  const sessions: Node['sessions'] = new Map();
  const refused = new Map<string, number>();
  const open = new Set<ReliableSocket>();
  const node = { nodeId, sessions, refused, plain: 0, open } as Node;
  const { server, port } = await listen({ nodeId, failureTimeout: FAILURE_TIMEOUT }, (socket) => {
    socket.on('error', () => {});
    open.add(socket);
    socket.once('close', () => open.delete(socket));
    if (!socket.reliable) {
      node.plain++;
      socket.write(banner(nodeId));
      socket.pipe(socket);
      return;
    }
    const held = { received: createHash('sha256'), digest: undefined as string | undefined, resumes: 0 };
    sessions.set(socket.sessionId!, held);
    socket.on('reconnect', () => held.resumes++);
    socket.on('data', (d: Buffer) => held.received.update(d));
    socket.once('end', () => (held.digest = held.received.digest('hex')));
    socket.pipe(socket);
  });
  server.on('clientError', (err: RocksError) => refused.set(err.code, (refused.get(err.code) ?? 0) + 1));
  return Object.assign(node, { server, port });
}

interface Haproxy {
  port: number;
  process: Program;
  /** Its log: the links so far (haproxy logs a link when it closes) and its other lines. */
  log: HaproxyLog;
  stop(): Promise<void>;
}

/** haproxy with docs/haproxy.cfg (test/support/haproxy.ts) on a free loopback port; `routed: false` drops the use_backend rule. */
async function startHaproxy(dir: string, nodes: Listening[], routed: boolean): Promise<Haproxy> {
  const port = await freePort();
  const file = writeHaproxyConfig(routed ? 'routed.cfg' : 'control.cfg', {
    dir,
    bind: `127.0.0.1:${port}`,
    servers: new Map(nodes.map((n) => [n.nodeId, `127.0.0.1:${n.port}`])),
    routed,
  });
  const program = start(found.paths.haproxy, ['-db', '-f', file]);
  const log = new HaproxyLog(program.child.stdout!);
  await waitForPort(port, '127.0.0.1', 10_000, program);
  return { port, process: program, log, stop: () => program.stop() };
}

/** Every Streamer not yet closed: a failed test leaves some streaming, and they would keep the file's process alive. */
const streaming = new Set<Streamer>();

/** A rocks client that streams random bytes to an echo server and hashes both directions. */
class Streamer {
  readonly socket: ReliableSocket;
  private readonly sent = createHash('sha256');
  private readonly received = createHash('sha256');
  sentDigest: string | undefined;
  receivedDigest: string | undefined;
  sentBytes = 0;
  receivedBytes = 0;
  reconnects = 0;
  detect: DetectInfo | undefined;
  error: RocksError | undefined;
  /** The session id it opened with, and the one it ended with (a restarted session gets a new one). */
  firstSessionId: string | undefined;
  sessionId: string | undefined;
  readonly closed: Promise<void>;
  private writer: NodeJS.Timeout | undefined;

  constructor(port: number) {
    this.socket = connect({ port, host: '127.0.0.1', failureTimeout: FAILURE_TIMEOUT });
    this.socket.once('detect', (info) => (this.detect = info));
    this.socket.once('connect', () => (this.firstSessionId = this.socket.sessionId));
    this.socket.on('reconnect', () => this.reconnects++);
    this.socket.on('data', (d: Buffer) => {
      this.received.update(d);
      this.receivedBytes += d.length;
    });
    this.socket.once('end', () => {
      this.receivedDigest = this.received.digest('hex');
      this.sessionId = this.socket.sessionId;
    });
    this.socket.once('error', (err) => {
      this.error = err as RocksError;
      this.stopWriting();
    });
    // Not once(): it would reject on 'error', which the listener above records.
    this.closed = new Promise((resolve) => this.socket.once('close', () => resolve()));
    streaming.add(this);
    this.closed.then(() => {
      this.stopWriting();
      streaming.delete(this);
    });
    this.socket.once('connect', () => {
      this.writer = setInterval(() => this.write(randomBytes(2048)), 20);
    });
  }

  private write(chunk: Buffer): void {
    // A suspended session buffers what is written; keep that small.
    if (this.socket.bufferedAmount > 256 * 1024) return;
    this.sent.update(chunk);
    this.sentBytes += chunk.length;
    this.socket.write(chunk);
  }

  private stopWriting(): void {
    clearInterval(this.writer);
    this.writer = undefined;
  }

  /** Stops streaming and ends its side; the echo ends the other. */
  finish(): void {
    if (this.error !== undefined) return;
    this.stopWriting();
    this.sentDigest = this.sent.digest('hex');
    this.socket.end();
  }

  get alive(): boolean {
    return this.error === undefined && !this.socket.destroyed;
  }
}

/** Where the node that holds a session is named: its id's bytes 1..4 (PROTOCOL.md §3.6). */
const nodeOf = (sessionId: string): number => Buffer.from(sessionId, 'hex').readUInt32BE(1);

/**
 * 30 clients stream through `proxy` (in front of haproxy) while the proxy
 * resets every link, `ROUNDS` times; each round waits until every client
 * still alive has resumed (and, when `routed`, its node has seen the resume).
 */
async function streamThroughResets(proxyPort: number, proxy: FaultProxy, nodes: Node[], routed: boolean): Promise<Streamer[]> {
  const clients = Array.from({ length: CLIENTS }, () => new Streamer(proxyPort));
  // Every session confirmed both ways (echoed bytes came back) before the first reset.
  await until(
    () => clients.every((c) => c.receivedBytes > 0 || c.error !== undefined),
    15_000,
    () => `echoes on every client (${clients.filter((c) => c.receivedBytes > 0).length} of ${CLIENTS})`,
  );
  const heldBy = (id: string | undefined) => (id === undefined ? undefined : nodes.find((n) => n.sessions.has(id))?.sessions.get(id));
  for (let round = 1; round <= ROUNDS; round++) {
    await sleep(200);
    proxy.reset();
    await until(
      () =>
        clients.every(
          (c) => !c.alive || (c.reconnects >= round && !c.socket.suspended && (!routed || (heldBy(c.socket.sessionId)?.resumes ?? 0) >= round)),
        ),
      15_000,
      () => `every client to resume after reset ${round}: ${clients.filter((c) => c.alive && c.reconnects < round).length} not yet`,
    );
  }
  await sleep(200);
  for (const c of clients) c.finish();
  await Promise.all(clients.map((c) => c.closed));
  return clients;
}

const found = programs('haproxy');

describe('HAProxy routes resumes by node id (docs/haproxy.cfg)', { skip: found.skip, timeout: 90_000 }, () => {
  let dir: string;
  const nodes: Node[] = [];
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'rocks-haproxy-'));
    for (const id of NODE_IDS) nodes.push(await startNode(id));
  });
  after(async () => {
    for (const c of streaming) c.socket.destroy();
    for (const n of nodes) for (const s of n.open) s.destroy();
    await Promise.all(nodes.map((n) => closeServer(n.server)));
    rmSync(dir, { recursive: true, force: true });
  });

  test('EDP through haproxy and the fault proxy: probes get the rocks verdict; ordinary clients pass', async () => {
    const haproxy = await startHaproxy(dir, nodes, true);
    const viaHaproxy = new FaultProxy(haproxy.port);
    const viaProxyOnly = new FaultProxy(nodes[0].port);
    try {
      detectionCache.clear();
      for (const [path, port] of [
        ['haproxy', haproxy.port],
        ['fault proxy, haproxy', await viaHaproxy.listen()],
        ['fault proxy', await viaProxyOnly.listen()],
      ] as const) {
        const c = connect({ port, host: '127.0.0.1' });
        const [[detect]] = (await Promise.all([once(c, 'detect'), once(c, 'connect')])) as [[DetectInfo], unknown];
        // The server answers a probe only once the probe's half-close reached it.
        assert.deepEqual(detect, { reliable: true, reason: 'the server announced rocks', cached: false }, `through ${path}`);
        c.write('ping');
        const [echo] = (await once(c, 'data')) as [Buffer];
        assert.equal(echo.toString(), 'ping');
        c.end();
        await once(c, 'close');
      }

      // Ordinary clients: one that waits for the server to speak first is
      // held for the inspect delay (haproxy cannot tell it from a rocks
      // client whose bytes are late), then served; one that speaks first is
      // served while the silent one still waits. That it goes on at once
      // (not after the delay) shows in the figures printed.
      const started = performance.now();
      const silent = netConnect(haproxy.port, '127.0.0.1');
      let greeting = '';
      silent.on('data', (d: Buffer) => (greeting += d.toString()));
      await once(silent, 'connect');
      const talker = netConnect(haproxy.port, '127.0.0.1');
      talker.write('EHLO rocks.test\r\n');
      let heard = '';
      talker.on('data', (d: Buffer) => (heard += d.toString()));
      await until(
        () => heard.endsWith('EHLO rocks.test\r\n'),
        10_000,
        () => `the echo, got ${JSON.stringify(heard)}`,
      );
      const talkerWaited = performance.now() - started;
      assert.match(heard, /^220 node \d+ ready\r\nEHLO rocks\.test\r\n$/);
      assert.equal(greeting, '', 'the client that spoke first was served while the silent one waited');
      talker.destroy();
      await until(() => greeting !== '', 10_000, 'the banner for the silent client');
      const silentWaited = performance.now() - started;
      assert.match(greeting, /^220 node \d+ ready\r\n$/);
      silent.destroy();
      console.log(
        `# ordinary clients through haproxy: one that spoke first had its echo after ${talkerWaited.toFixed(0)} ms; ` +
          `a silent one had the banner after ${silentWaited.toFixed(0)} ms (inspect-delay 2 s, then the server's detectTimeout 500 ms)`,
      );
    } finally {
      await Promise.all([viaHaproxy.close(), viaProxyOnly.close()]);
      await haproxy.stop();
    }
  });

  test('30 sessions through 3 rounds of resets: every resume reaches its node, every byte arrives', async () => {
    const haproxy = await startHaproxy(dir, nodes, true);
    const proxy = new FaultProxy(haproxy.port);
    for (const n of nodes) {
      n.sessions.clear();
      n.refused.clear();
    }
    try {
      const clients = await streamThroughResets(await proxy.listen(), proxy, nodes, true);
      for (const [i, c] of clients.entries()) {
        assert.equal(c.error, undefined, `client ${i} failed: ${c.error?.code} ${c.error?.message}`);
        assert.equal(c.detect?.reliable, true, `client ${i} detected rocks`);
        assert.ok(c.sessionId !== undefined && c.sentDigest !== undefined);
        assert.equal(c.receivedDigest, c.sentDigest, `client ${i}: the echo of its ${c.sentBytes} bytes came back exactly`);
        const owner = nodes.find((n) => n.sessions.has(c.sessionId!));
        assert.ok(owner, `client ${i}: some node held session ${c.sessionId}`);
        assert.equal(owner.nodeId, nodeOf(c.sessionId), `client ${i}: the node that held the session is the one its id names`);
        const held = owner.sessions.get(c.sessionId)!;
        assert.equal(held.digest, c.sentDigest, `client ${i}: node ${owner.nodeId} received exactly the ${c.sentBytes} bytes sent`);
        assert.equal(held.resumes, c.reconnects, `client ${i}: each of its ${c.reconnects} resumes reached node ${owner.nodeId}`);
        assert.ok(c.reconnects >= ROUNDS);
      }
      for (const n of nodes) {
        assert.deepEqual(Object.fromEntries(n.refused), {}, `node ${n.nodeId} refused no link (no resume of a session it does not hold)`);
      }
      // haproxy's own word: every resuming link went to the backend of the node it named.
      const resumeCount = clients.reduce((sum, c) => sum + c.reconnects, 0);
      await until(() => haproxy.log.resumes().length >= resumeCount, 10_000, 'haproxy to log every resume');
      const resumes = haproxy.log.resumes();
      for (const l of resumes) assert.deepEqual([l.backend, l.server], [`rocks_node_${l.resumeOf}`, `node_${l.resumeOf}`]);

      const perNode = nodes.map((n) => {
        const ids = clients.map((c) => c.sessionId).filter((id) => n.sessions.has(id!));
        const resumed = ids.reduce((sum, id) => sum + n.sessions.get(id!)!.resumes, 0);
        return `node ${n.nodeId}: ${ids.length} sessions, ${resumed} resumes`;
      });
      const bytes = clients.reduce((sum, c) => sum + c.sentBytes, 0);
      console.log(
        `# haproxy routed: ${CLIENTS} sessions, ${resumeCount} resumes (${resumes.length} resuming links logged, all to their node), ` +
          `none lost, ${(bytes / 2 ** 20).toFixed(1)} MiB each way checked; ${perNode.join('; ')}`,
      );
    } finally {
      await proxy.close();
      await haproxy.stop();
    }
  });

  test('resets during the handshake: unconfirmed sessions are refused by their own node and restart anywhere', async () => {
    // A session is unconfirmed from WELCOME until the client's first frame
    // reaches the server (PROTOCOL.md §3.4); a link that fails in between
    // makes the server drop it. The client's resume still reaches that node,
    // which answers ERR_ROCKS_UNCONFIRMED_SESSION, and the client restarts
    // with a new HELLO that round robin may send to another node (§3.5).
    // The proxy delays every chunk 30 ms and resets every link the moment the
    // 15th client has its WELCOME: its confirmation is still in the proxy.
    const haproxy = await startHaproxy(dir, nodes, true);
    const proxy = new FaultProxy(haproxy.port);
    for (const n of nodes) {
      n.sessions.clear();
      n.refused.clear();
    }
    try {
      const port = await proxy.listen();
      proxy.setDelay(30);
      let connected = 0;
      const clients = Array.from({ length: CLIENTS }, () => new Streamer(port));
      for (const c of clients) {
        c.socket.once('connect', () => {
          if (++connected !== CLIENTS / 2) return;
          proxy.reset();
          proxy.setDelay(0);
        });
      }
      await until(
        () => clients.every((c) => !c.alive || (!c.socket.connecting && !c.socket.suspended && c.receivedBytes > 0)),
        15_000,
        () => `every client to stream again (${clients.filter((c) => c.receivedBytes > 0).length} of ${CLIENTS})`,
      );
      await sleep(200);
      for (const c of clients) c.finish();
      await Promise.all(clients.map((c) => c.closed));

      const restarted = clients.filter((c) => c.firstSessionId !== c.sessionId);
      for (const [i, c] of clients.entries()) {
        assert.equal(c.error, undefined, `client ${i} failed: ${c.error?.code} ${c.error?.message}`);
        assert.equal(c.receivedDigest, c.sentDigest, `client ${i}: its echo came back exactly`);
        const owner = nodes.find((n) => n.sessions.has(c.sessionId!));
        assert.equal(owner?.nodeId, nodeOf(c.sessionId!), `client ${i}: its session is held by the node its id names`);
        assert.equal(owner.sessions.get(c.sessionId!)!.digest, c.sentDigest, `client ${i}: node ${owner.nodeId} received exactly what it sent`);
      }
      // Each restart followed one refusal, and every refusal was of an unconfirmed session by its own node.
      const refusals = nodes.map((n) => {
        assert.deepEqual(
          [...n.refused.keys()].filter((code) => code !== 'ERR_ROCKS_UNCONFIRMED_SESSION'),
          [],
          `node ${n.nodeId}'s refusals`,
        );
        return n.refused.get('ERR_ROCKS_UNCONFIRMED_SESSION') ?? 0;
      });
      assert.ok(restarted.length >= 1, 'at least the 15th client restarted');
      assert.equal(
        refusals.reduce((a, b) => a + b),
        restarted.length,
      );
      await until(() => haproxy.log.resumes().length >= restarted.length, 10_000, 'haproxy to log the resumes');
      const resumes = haproxy.log.resumes();
      for (const l of resumes) assert.deepEqual([l.backend, l.server], [`rocks_node_${l.resumeOf}`, `node_${l.resumeOf}`]);
      const moved = restarted.filter((c) => nodeOf(c.firstSessionId!) !== nodeOf(c.sessionId!)).length;
      console.log(
        `# haproxy, resets during the handshake: ${restarted.length} of ${CLIENTS} sessions restarted after ERR_ROCKS_UNCONFIRMED_SESSION ` +
          `(refused by nodes ${NODE_IDS.map((id, i) => `${id}: ${refusals[i]}`).join(', ')}), ${moved} of them on another node; ` +
          `${resumes.length} resuming links, all to their node; none lost`,
      );
    } finally {
      await proxy.close();
      await haproxy.stop();
    }
  });

  test('a node killed: its sessions end with ERR_ROCKS_UNKNOWN_SESSION at their next resume, the others flow on', async () => {
    // Real processes this time, so that one can die without a word: three
    // `rock serve --node-id` relaying to one plain echo server.
    const echo = netCreateServer({ allowHalfOpen: true }, (s) => {
      s.on('error', () => {});
      s.pipe(s);
    });
    echo.listen(0, '127.0.0.1');
    await once(echo, 'listening');
    const echoPort = (echo.address() as AddressInfo).port;
    const serves: (Listening & { rock: Program })[] = [];
    let haproxy: Haproxy | undefined;
    try {
      for (const nodeId of NODE_IDS) {
        const port = await freePort();
        const args = ['serve', '--listen', `127.0.0.1:${port}`, '--to', `127.0.0.1:${echoPort}`, '--node-id', String(nodeId)];
        serves.push({ nodeId, port, rock: await startRock([...args, '--failure-timeout', String(FAILURE_TIMEOUT)], /serving rocks/) });
      }
      haproxy = await startHaproxy(dir, serves, true);
      const clients = Array.from({ length: CLIENTS }, () => new Streamer(haproxy!.port));
      await until(() => clients.every((c) => c.receivedBytes > 0), 15_000, 'echoes on every client');
      const victim = serves[1];
      const doomed = clients.filter((c) => nodeOf(c.firstSessionId!) === victim.nodeId);
      const spared = clients.filter((c) => !doomed.includes(c));
      const killedAt = performance.now();
      const endedAfter: number[] = [];
      for (const c of doomed) c.socket.once('close', () => endedAfter.push(performance.now() - killedAt));
      victim.rock.child.kill('SIGKILL');
      await until(
        () => doomed.every((c) => c.error !== undefined),
        15_000,
        () => `${doomed.filter((c) => c.alive).length} sessions of the dead node still open`,
      );
      for (const c of doomed) assert.equal(c.error?.code, 'ERR_ROCKS_UNKNOWN_SESSION', `${c.error?.code}: ${c.error?.message}`);
      // The others never noticed: they stream on, and every byte comes back.
      const before = spared.map((c) => c.receivedBytes);
      await until(() => spared.every((c, i) => c.receivedBytes > before[i]), 10_000, 'the other sessions to stream on');
      for (const c of spared) c.finish();
      await Promise.all(spared.map((c) => c.closed));
      for (const c of spared) {
        assert.equal(c.error, undefined, `${c.error?.code}: ${c.error?.message}`);
        assert.equal(c.receivedDigest, c.sentDigest);
        assert.equal(c.reconnects, 0, 'untouched by the death');
      }
      await until(() => haproxy!.log.links.filter((l) => l.resumeOf === victim.nodeId).length >= doomed.length, 10_000, 'haproxy to log the resumes');
      const toBackup = haproxy.log.links.filter((l) => l.resumeOf === victim.nodeId && l.server !== `node_${victim.nodeId}`).length;
      console.log(
        `# haproxy, node ${victim.nodeId} killed: its ${doomed.length} sessions ended with ERR_ROCKS_UNKNOWN_SESSION ` +
          `${Math.round(Math.min(...endedAfter))} to ${Math.round(Math.max(...endedAfter))} ms after (failureTimeout ${FAILURE_TIMEOUT} ms); ` +
          `${toBackup} of their resuming links went to a backup node; the other ${spared.length} streamed on, every byte checked`,
      );
      assert.equal(doomed.length + spared.length, CLIENTS);
      assert.ok(doomed.length > 0 && toBackup > 0);
    } finally {
      await haproxy?.stop();
      await Promise.all(serves.map((s) => s.rock.stop()));
      await new Promise((resolve) => echo.close(resolve));
    }
  });

  test('control: without the use_backend rule haproxy scatters resumes and sessions are lost', async () => {
    const haproxy = await startHaproxy(dir, nodes, false);
    const proxy = new FaultProxy(haproxy.port);
    for (const n of nodes) {
      n.sessions.clear();
      n.refused.clear();
    }
    try {
      const clients = await streamThroughResets(await proxy.listen(), proxy, nodes, false);
      const lost = clients.filter((c) => c.error !== undefined);
      for (const c of lost) {
        assert.ok(c.error instanceof RocksError);
        assert.ok(
          ['ERR_ROCKS_UNKNOWN_SESSION', 'ERR_ROCKS_UNCONFIRMED_SESSION'].includes(c.error.code),
          `lost with ${c.error.code}: ${c.error.message}`,
        );
      }
      assert.ok(lost.length > 0, 'sessions were lost');
      // The survivors' bytes are still exact.
      for (const c of clients.filter((c) => c.error === undefined)) assert.equal(c.receivedDigest, c.sentDigest);
      await until(() => haproxy.log.resumes().length >= lost.length, 10_000, 'haproxy to log the resumes');
      const resumes = haproxy.log.resumes();
      const elsewhere = resumes.filter((l) => l.server !== `node_${l.resumeOf}`).length;
      const refused = nodes.map((n) => `node ${n.nodeId} refused ${JSON.stringify(Object.fromEntries(n.refused))}`);
      console.log(
        `# haproxy without the rule: ${lost.length} of ${CLIENTS} sessions lost; ${elsewhere} of ${resumes.length} resuming links went to another node; ${refused.join('; ')}`,
      );
      assert.ok(elsewhere > 0);
    } finally {
      await proxy.close();
      await haproxy.stop();
    }
  });
});
