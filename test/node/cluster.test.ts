// Node cluster: a real cluster program (test/node/fixtures/cluster-echo.mjs,
// 3 workers each running a rocks echo server through the library) behind a
// fault proxy on loopback. The primary routes every link by its first bytes:
// resumes reach the worker that holds their session through resets and a
// black hole; without rocks in the primary (Node's own round robin) they do
// not; a worker that dies takes only its own sessions, which end promptly
// with ERR_ROCKS_UNKNOWN_SESSION; odd links are answered on their own.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type AddressInfo, connect as netConnect, createServer as netCreateServer, type Socket } from 'node:net';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createServer, encodeAnnouncement, ROCKS } from '../../src/index.js';
import { EDP_MAGIC } from '../../src/edp/announcement.js';
import { encodeResume, FrameParser, FrameType } from '../../src/protocol/frames.js';
import { FaultProxy, resetSocket } from '../../src/testbed/fault-proxy.js';
import { allFlowing, allResumed, EchoClient, lostSessions, resetsAndBlackHole } from '../support/echo-client.js';
import { type Program, parseJsonLines, readJsonLines, until } from '../support/helpers.js';
import { freePort, start } from '../support/programs.js';

const FIXTURE = fileURLToPath(new URL('../../../test/node/fixtures/cluster-echo.mjs', import.meta.url));
const ROCKS_MODULE = new URL('../../src/index.js', import.meta.url).href;
const OPTIONS = { failureTimeout: 1000, heartbeatInterval: 200, reconnectDelay: 10, reconnectDelayMax: 200 };
const WORKERS = 3;
const CLIENTS = 30;

/** A line the fixture printed. */
interface ClusterEvent {
  pid: number;
  event: 'listening' | 'session' | 'resume' | 'error' | 'plain' | 'exit';
  id?: string;
  port?: number;
  nodeId?: number;
  code?: string | number;
  worker?: number;
}

interface RunningCluster {
  program: Program;
  events: ClusterEvent[];
  port: number;
  nodeId: number;
  /** The workers' pids. */
  pids: number[];
  /** The pid of the worker that printed the session, by session id. */
  holder(id: string | undefined): number | undefined;
}

async function startCluster(
  mode: 'routed' | 'unrouted',
  workers = WORKERS,
  extra: { port?: number; options?: object; quietPlain?: boolean } = {},
): Promise<RunningCluster> {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    ...(extra.quietPlain ? { CLUSTER_QUIET_PLAIN: '1' } : {}),
    CLUSTER_MODE: mode,
    CLUSTER_WORKERS: String(workers),
    CLUSTER_PORT: String(extra.port ?? 0),
    ROCKS_MODULE,
    CLUSTER_OPTIONS: JSON.stringify({ ...OPTIONS, ...extra.options }),
  };
  delete env.NODE_TEST_CONTEXT;
  const program = start(process.execPath, [FIXTURE], { env });
  const events: ClusterEvent[] = [];
  readJsonLines<ClusterEvent>(program.child.stdout!, (e) => events.push(e));
  const listening = () => events.filter((e) => e.event === 'listening');
  await until(
    () => {
      if (program.exited !== undefined) throw new Error(`the cluster exited (${program.exited}):\n${program.output}`);
      return listening().length === workers;
    },
    15_000,
    () => `${workers} workers listening:\n${program.output}`,
  );
  const ports = new Set(listening().map((e) => e.port));
  assert.equal(ports.size, 1, 'the workers share one port');
  return {
    program,
    events,
    port: listening()[0].port!,
    nodeId: listening()[0].nodeId!,
    pids: listening().map((e) => e.pid),
    holder: (id) => events.find((e) => e.event === 'session' && e.id === id)?.pid,
  };
}

const startClients = (port: number): EchoClient[] => Array.from({ length: CLIENTS }, () => new EchoClient(port, OPTIONS));

describe('Node cluster: the primary routes each link to its worker', () => {
  test(`${WORKERS} workers, ${CLIENTS} clients through 3 resets and a black hole: every resume reaches its own worker, every byte comes back`, {
    timeout: 60_000,
  }, async () => {
    const cluster = await startCluster('routed');
    const proxy = new FaultProxy(cluster.port);
    const port = await proxy.listen();
    const clients = startClients(port);
    try {
      await resetsAndBlackHole(proxy, clients, OPTIONS.failureTimeout);
      await Promise.all(clients.map((c) => c.stop()));
      assert.deepEqual(lostSessions(clients), []);

      // Every session was created by one worker, named by its worker byte, and every resume was served by that worker.
      const clientResumes = clients.reduce((n, c) => n + c.reconnects, 0);
      const resumes = () => cluster.events.filter((e) => e.event === 'resume');
      await until(
        () => resumes().length >= clientResumes,
        5000,
        () => `${clientResumes} resumes reported, got ${resumes().length}`,
      );
      // (A server may count one more than its client: an attempt the client gave up on as the server took it.)
      assert.ok(resumes().length <= clientResumes + CLIENTS, `${resumes().length} resumes served for ${clientResumes}`);
      const byteToPid = new Map<number, Set<number>>();
      for (const c of clients) {
        const holder = cluster.holder(c.sessionId);
        assert.ok(holder !== undefined, `a worker reported session ${c.sessionId}`);
        byteToPid.set(c.workerByte!, (byteToPid.get(c.workerByte!) ?? new Set()).add(holder));
      }
      assert.equal(byteToPid.size, WORKERS, 'sessions spread over every worker');
      for (const [byte, pids] of byteToPid) assert.equal(pids.size, 1, `worker byte ${byte} names one worker`);
      for (const r of resumes()) assert.equal(r.pid, cluster.holder(r.id), `resume of ${r.id} served by its worker`);
      assert.deepEqual(
        cluster.events.filter((e) => e.event === 'error' || e.event === 'exit'),
        [],
      );
      const perWorker = [...byteToPid].map(([byte, pids]) => {
        const pid = [...pids][0];
        return `worker ${byte} (pid ${pid}): ${clients.filter((c) => c.workerByte === byte).length} sessions, ${resumes().filter((r) => r.pid === pid).length} resumes`;
      });
      const bytes = clients.reduce((n, c) => n + c.sent, 0);
      console.log(`# cluster: ${(bytes / 1024 / 1024).toFixed(1)} MiB echoed intact, ${clientResumes} resumes; ${perWorker.join('; ')}`);
    } finally {
      for (const c of clients) c.destroy();
      await proxy.close();
      await cluster.program.stop();
    }
  });

  test('control: the same program without rocks in the primary (Node round robin) loses sessions at the first reset', {
    timeout: 60_000,
  }, async () => {
    const cluster = await startCluster('unrouted');
    const proxy = new FaultProxy(cluster.port);
    const port = await proxy.listen();
    const clients = startClients(port);
    try {
      await allFlowing(clients);
      proxy.reset();
      await allResumed(clients, 1);
      const lost = clients.filter((c) => c.error?.code === 'ERR_ROCKS_UNKNOWN_SESSION');
      console.log(`# without routing: ${lost.length} of ${CLIENTS} sessions lost at one reset (${lost[0]?.error?.message})`);
      assert.ok(lost.length > 0, 'resumes scattered by round robin find workers that do not know them');
      assert.match(cluster.program.output, /ROCKS_CLUSTER_UNROUTED/, 'the workers warned');
    } finally {
      for (const c of clients) c.destroy();
      await proxy.close();
      await cluster.program.stop();
    }
  });

  test('a worker killed with SIGKILL: its sessions end with ERR_ROCKS_UNKNOWN_SESSION at their next resume, the others keep flowing', {
    timeout: 60_000,
  }, async () => {
    const cluster = await startCluster('routed');
    const proxy = new FaultProxy(cluster.port);
    const port = await proxy.listen();
    const clients = startClients(port);
    try {
      await allFlowing(clients);
      await until(() => clients.every((c) => cluster.holder(c.sessionId) !== undefined), 5000, 'every session reported');
      const victim = cluster.holder(clients[0].sessionId)!;
      const victims = clients.filter((c) => cluster.holder(c.sessionId) === victim);
      const others = clients.filter((c) => !victims.includes(c));
      const killedAt = performance.now();
      process.kill(victim, 'SIGKILL');
      await until(() => victims.every((c) => c.error !== undefined), 10_000, 'the dead worker’s sessions to fail');
      for (const c of victims) {
        assert.equal(c.error?.code, 'ERR_ROCKS_UNKNOWN_SESSION', c.error?.message);
        assert.match(c.error!.message, /worker \d+ of this node is gone/);
      }
      const times = victims.map((c) => Math.round(c.failedAt! - killedAt));
      await allFlowing(others);
      await allFlowing(others);
      await Promise.all(others.map((c) => c.stop()));
      assert.deepEqual(lostSessions(others), []);
      console.log(
        `# worker ${victim} killed: its ${victims.length} sessions failed after ${times.join(', ')} ms (failureTimeout ${OPTIONS.failureTimeout}); ` +
          `the other ${others.length} finished intact (message: ${victims[0].error?.message})`,
      );
    } finally {
      for (const c of clients) c.destroy();
      await proxy.close();
      await cluster.program.stop();
    }
  });

  test('a cluster node in a deployment: resumes that another node relays to it reach their workers', { timeout: 60_000 }, async () => {
    const [portA, portB] = [await freePort(), await freePort()];
    const peers = [
      { nodeId: 1, host: '127.0.0.1', port: portA },
      { nodeId: 2, host: '127.0.0.1', port: portB },
    ];
    const a = await startCluster('routed', 2, { port: portA, options: { nodeId: 1, peers } });
    const b = createServer({ ...OPTIONS, nodeId: 2, peers, allowHalfOpen: true }, (s) => s.pipe(s));
    b.listen(portB, '127.0.0.1');
    await once(b, 'listening');
    const hop = new SwitchingHop(portA);
    const hopPort = await hop.listen();
    const clients = Array.from({ length: 10 }, () => new EchoClient(hopPort, OPTIONS));
    try {
      await allFlowing(clients);
      assert.equal(new Set(clients.map((c) => c.workerByte)).size, 2, 'sessions on both workers of node 1');
      // The balancer now sends every link to node 2, which relays each resume to node 1's primary.
      hop.target = portB;
      hop.cut();
      await allResumed(clients, 1);
      await allFlowing(clients);
      await Promise.all(clients.map((c) => c.stop()));
      assert.deepEqual(lostSessions(clients), []);
      // Node 2 holds none of them: every resume went through it to node 1's workers.
      assert.equal(b.sessionCount, 0);
      assert.ok(b.relayedLinks >= clients.length, `${b.relayedLinks} relayed links`);
      console.log(`# ${clients.length} sessions of a 2-worker node resumed through another node: ${b.relayedLinks} relayed links, every byte back`);
    } finally {
      for (const c of clients) c.destroy();
      hop.close();
      b.close();
      await a.program.stop();
    }
  });

  test('a worker that disconnects closes its rocks server and exits, as with node:net', { timeout: 30_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rocks-cluster-'));
    try {
      writeFileSync(join(dir, 'disconnect.mjs'), DISCONNECTING);
      const env: NodeJS.ProcessEnv = { ...process.env, ROCKS_MODULE };
      delete env.NODE_TEST_CONTEXT;
      const program = start(process.execPath, [join(dir, 'disconnect.mjs')], { env });
      await until(
        () => program.exited !== undefined,
        10_000,
        () => `the program to exit:\n${program.output}`,
      );
      const events = parseJsonLines<{ event: string; code?: number }>(program.output).map((e) => e.event);
      assert.deepEqual(events, ['listening', 'close', 'exit'], program.output);
      assert.equal(program.exited, 0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a probe, ordinary clients, garbage and forged resumes are each answered on their own link; sessions go on', { timeout: 60_000 }, async () => {
    const cluster = await startCluster('routed');
    const client = new EchoClient(cluster.port, OPTIONS);
    try {
      await allFlowing([client]);
      const announcement = encodeAnnouncement([ROCKS]);

      // A probe (connect, half-close): the primary answers with the announcement.
      const probe = await talk(cluster.port, undefined, true);
      assert.deepEqual(probe.received, announcement);

      // An ordinary client that speaks first: a worker serves it plainly, with its first bytes.
      const hello = await talk(cluster.port, Buffer.from('hello\n'), false, (r) => r.toString().includes('hello\n'));
      assert.match(hello.received.toString(), /^plain \d+\nhello\n$/);

      // Ordinary clients that send much at once: what the primary had not read when it handed the link on is not lost.
      const payloads = Array.from({ length: 20 }, () => randomBytes(256 * 1024));
      const echoes = await Promise.all(payloads.map((p) => plainEcho(cluster.port, p)));
      for (const [i, echo] of echoes.entries()) {
        const text = echo.subarray(0, echo.indexOf(0x0a) + 1).toString();
        assert.match(text, /^plain \d+\n$/);
        assert.ok(
          echo.subarray(text.length).equals(payloads[i]),
          `plain client ${i}: ${echo.length - text.length} of ${payloads[i].length} bytes back intact`,
        );
      }

      // A silent one: served plainly once detectTimeout (500 ms) has passed, counted once, in the primary.
      const silentAt = performance.now();
      const silent = await talk(cluster.port, undefined, false, (r) => r.includes(0x0a));
      const silentMs = Math.round(performance.now() - silentAt);
      assert.match(silent.received.toString(), /^plain \d+\n$/);

      // A malformed announcement: that link is closed.
      const malformed = await talk(cluster.port, Buffer.concat([EDP_MAGIC, Buffer.from([9, 1])]));
      assert.equal(malformed.received.length, 0);

      // A rocks link whose first frame is neither HELLO nor RESUME: an ERROR, that link closed.
      const garbage = await talk(cluster.port, Buffer.concat([announcement, Buffer.from([0x09, 0, 0, 0, 0])]));
      assert.match(errorOf(garbage.received, announcement).message, /unknown frame type 0x09/);

      // A resume naming a worker this node never had: the primary answers ERR_ROCKS_UNKNOWN_SESSION.
      const id = Buffer.alloc(16, 7);
      id[0] = 1;
      id.writeUInt32BE(cluster.nodeId, 1);
      id[5] = 77;
      const forged = await talk(cluster.port, Buffer.concat([announcement, encodeResume(1, id, Buffer.alloc(16), Buffer.alloc(8))]));
      const error = errorOf(forged.received, announcement);
      assert.equal(error.code, 3);
      assert.match(error.message, /there is no worker 77 on this node/);

      // A resume for another node's session: a worker answers it (it would relay it with peers).
      id.writeUInt32BE((cluster.nodeId ^ 1) >>> 0, 1);
      const elsewhere = await talk(cluster.port, Buffer.concat([announcement, encodeResume(1, id, Buffer.alloc(16), Buffer.alloc(8))]));
      assert.equal(errorOf(elsewhere.received, announcement).code, 3);

      await allFlowing([client]);
      await client.stop();
      assert.ok(client.intact);
      assert.deepEqual(
        cluster.events.filter((e) => e.event === 'exit'),
        [],
      );
      console.log(`# a silent client was served plainly after ${silentMs} ms (detectTimeout 500)`);
    } finally {
      client.destroy();
      await cluster.program.stop();
    }
  });

  test('a resume that comes after detectTimeout is dropped in a worker, not taken up where its session may not be', { timeout: 30_000 }, async () => {
    const cluster = await startCluster('routed', 2, { quietPlain: true });
    try {
      const id = Buffer.alloc(16, 7);
      id[0] = 1;
      id.writeUInt32BE(cluster.nodeId, 1);
      // Silent past detectTimeout (500 ms): the primary gives the link to any worker as a plain one.
      const late = netConnect({ port: cluster.port, host: '127.0.0.1', allowHalfOpen: true });
      await once(late, 'connect');
      await until(() => cluster.events.some((e) => e.event === 'plain'), 5000, 'the silent link served plainly');
      late.write(Buffer.concat([encodeAnnouncement([ROCKS]), encodeResume(1, id, Buffer.alloc(16), Buffer.alloc(8))]));
      let received = Buffer.alloc(0);
      late.on('data', (d: Buffer) => (received = Buffer.concat([received, d])));
      await once(late, 'end');
      late.destroy();
      // Taken up, the worker would have answered (its announcement, then an unknown session's ERROR).
      assert.equal(received.length, 0, `closed without a word, got ${received.toString('hex')}`);
    } finally {
      await cluster.program.stop();
    }
  });
});

/** A TCP hop to a port that can change, as a balancer that sends new links elsewhere; cut() resets every link. */
class SwitchingHop {
  private readonly server = netCreateServer((client) => {
    const upstream = netConnect(this.target, '127.0.0.1');
    this.links.add(client);
    this.links.add(upstream);
    for (const [from, to] of [
      [client, upstream],
      [upstream, client],
    ]) {
      from.pipe(to);
      from.on('error', () => to.destroy());
      from.on('close', () => {
        to.destroy();
        this.links.delete(from);
      });
    }
  });
  private readonly links = new Set<Socket>();

  constructor(public target: number) {}

  async listen(): Promise<number> {
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    return (this.server.address() as AddressInfo).port;
  }

  cut(): void {
    for (const s of this.links) resetSocket(s);
  }

  close(): void {
    this.cut();
    this.server.close();
  }
}

/** A cluster program whose one worker listens with rocks, then calls cluster.worker.disconnect(). */
const DISCONNECTING = `
import cluster from 'node:cluster';
const { createServer } = await import(process.env.ROCKS_MODULE);
if (cluster.isPrimary) {
  const worker = cluster.fork();
  worker.on('exit', (code) => console.log(JSON.stringify({ event: 'exit', code })));
  process.on('SIGTERM', () => {
    worker.process.kill('SIGKILL');
    process.exit(1);
  });
} else {
  const server = createServer(() => {});
  server.on('close', () => console.log(JSON.stringify({ event: 'close' })));
  server.listen(0, '127.0.0.1', () => {
    console.log(JSON.stringify({ event: 'listening', port: server.address().port }));
    cluster.worker.disconnect();
  });
}
`;

/** Sends `bytes` at once on a plain link and resolves with what comes back by the time the echo ends. */
async function plainEcho(port: number, bytes: Buffer): Promise<Buffer> {
  const socket: Socket = netConnect({ port, host: '127.0.0.1', allowHalfOpen: true });
  const chunks: Buffer[] = [];
  socket.on('data', (d: Buffer) => chunks.push(d));
  socket.on('error', () => {});
  socket.end(bytes);
  await once(socket, 'close');
  return Buffer.concat(chunks);
}

/**
 * Opens a plain TCP link, sends `bytes` (or nothing), half-closes if asked,
 * and collects what comes back until the link ends or `enough` says so.
 */
async function talk(
  port: number,
  bytes: Buffer | undefined,
  halfClose = false,
  enough?: (received: Buffer) => boolean,
): Promise<{ received: Buffer }> {
  const socket: Socket = netConnect({ port, host: '127.0.0.1', allowHalfOpen: true });
  await once(socket, 'connect');
  if (bytes) socket.write(bytes);
  if (halfClose) socket.end();
  let received = Buffer.alloc(0);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer in 10 s, got ${received.toString('hex')}`)), 10_000);
    const finish = () => {
      clearTimeout(timer);
      resolve();
    };
    socket.on('data', (d: Buffer) => {
      received = Buffer.concat([received, d]);
      if (enough?.(received)) finish();
    });
    socket.on('end', finish);
    socket.on('error', finish);
  });
  socket.destroy();
  return { received };
}

/** The ERROR frame after our announcement in what a server sent. */
function errorOf(received: Buffer, announcement: Buffer): { code: number; message: string } {
  assert.deepEqual(received.subarray(0, announcement.length), announcement);
  const parser = new FrameParser();
  parser.push(received.subarray(announcement.length));
  const frame = parser.next();
  assert.equal(frame?.type, FrameType.ERROR);
  return frame as { code: number; message: string };
}
