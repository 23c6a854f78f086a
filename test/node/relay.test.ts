// Relays between the nodes of a deployment, on loopback: three rocks echo
// servers on 127.0.0.2-4 that list each other as peers, behind a fault proxy
// that spreads new connections round robin with no stickiness (as an L4
// balancer does) and resets them all now and then. Every resume that lands
// on a node that does not hold its session must be carried to the one that
// does, with the client's address passed on; without peers the same run
// loses sessions, which shows the balancer really scatters them.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import { describe, test } from 'node:test';
import { encodeAnnouncement, ROCKS } from '../../src/edp/announcement.js';
import { connect, createServer, type ReliableServer, type ReliableSocket, RocksError } from '../../src/index.js';
import { encodeResume, FrameParser, FrameType, INSTANCE_SIZE, NONCE_SIZE, SESSION_ID_SIZE } from '../../src/protocol/frames.js';
import { encodeProxyHeader } from '../../src/protocol/proxy-header.js';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { freePort, Program, sleep, until } from '../support/helpers.js';
import { closeServer } from '../support/net.js';

const HOSTS = ['127.0.0.2', '127.0.0.3', '127.0.0.4'];
const NODE_IDS = [0x11, 0x22, 0x33];
/** Where the balancer's connections come from: the address the nodes should report for clients. */
const CLIENT_SIDE = '127.0.0.9';

interface Node {
  server: ReliableServer;
  host: string;
  port: number;
  nodeId: number;
  /** Remote addresses the application saw on its sockets, each time a link became active. */
  seen: Set<string>;
  /** The application's sockets, to end at the close of a test. */
  sockets: Set<ReliableSocket>;
}

function peersOf(nodes: { port: number }[]) {
  return nodes.map((n, i) => ({ nodeId: NODE_IDS[i], host: HOSTS[i], port: n.port }));
}

/** Three nodes (ports picked for all three), of which the first `start` are started here. */
async function startNodes(withPeers: boolean, start = HOSTS.length): Promise<Node[]> {
  const ports = await Promise.all(HOSTS.map((h) => freePort(h)));
  const peers = peersOf(ports.map((port) => ({ port })));
  const started = await Promise.all(
    HOSTS.slice(0, start).map(async (host, i) => {
      const seen = new Set<string>();
      const sockets = new Set<ReliableSocket>();
      const server = createServer({ nodeId: NODE_IDS[i], failureTimeout: 1000, peers: withPeers ? peers : undefined }, (s) => {
        sockets.add(s);
        s.on('close', () => sockets.delete(s));
        s.on('error', () => {});
        if (s.remoteAddress) seen.add(s.remoteAddress);
        s.on('reconnect', () => {
          if (s.remoteAddress) seen.add(s.remoteAddress);
        });
        s.pipe(s);
      });
      server.listen(ports[i], host);
      await once(server, 'listening');
      return { server, host, port: ports[i], nodeId: NODE_IDS[i], seen, sockets };
    }),
  );
  // The ones not started here: their address only.
  return [...started, ...HOSTS.slice(start).map((host, j) => ({ host, port: ports[start + j], nodeId: NODE_IDS[start + j] }) as Node)];
}

const INDEX = new URL('../../src/index.js', import.meta.url).href;

/** A rocks echo node in a process of its own, for a death no in-process server can fake. */
function startNodeProcess(host: string, port: number, nodeId: number, peers: { nodeId: number; host: string; port: number }[]): Program {
  const script = `
    import { createServer } from ${JSON.stringify(INDEX)};
    const server = createServer({ nodeId: ${nodeId}, failureTimeout: 1000, peers: ${JSON.stringify(peers)} }, (s) => { s.on('error', () => {}); s.pipe(s); });
    server.listen(${port}, ${JSON.stringify(host)}, () => console.log('listening'));
  `;
  return new Program(spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] }), `node ${nodeId}`);
}

interface Flow {
  socket: ReliableSocket;
  sent: ReturnType<typeof createHash>;
  received: ReturnType<typeof createHash>;
  receivedBytes: number;
  error: Error | undefined;
  resumes: number;
}

/** `count` clients that each send `bytes` in small writes over time and read the echo. */
function startFlows(port: number, count: number, bytes: number): Flow[] {
  const flows: Flow[] = [];
  for (let i = 0; i < count; i++) {
    const socket = connect({ port, host: '127.0.0.1', enhanced: true, failureTimeout: 1000 });
    const flow: Flow = { socket, sent: createHash('sha256'), received: createHash('sha256'), receivedBytes: 0, error: undefined, resumes: 0 };
    socket.on('data', (d: Buffer) => {
      flow.received.update(d);
      flow.receivedBytes += d.length;
    });
    socket.on('error', (err) => {
      flow.error = err;
    });
    socket.on('reconnect', () => flow.resumes++);
    flows.push(flow);
    void (async () => {
      for (let sent = 0; sent < bytes && flow.error === undefined; ) {
        const chunk = randomBytes(Math.min(4096, bytes - sent));
        flow.sent.update(chunk);
        sent += chunk.length;
        if (!socket.write(chunk)) await once(socket, 'drain');
        await sleep(5);
      }
    })();
  }
  return flows;
}

async function run(withPeers: boolean) {
  const nodes = await startNodes(withPeers);
  const balancer = new FaultProxy(nodes[0].port, nodes[0].host);
  balancer.spread(
    nodes.map((n) => ({ port: n.port, host: n.host })),
    'random',
  );
  balancer.upstreamAddress = CLIENT_SIDE;
  const port = await balancer.listen();
  const BYTES = 200_000;
  const flows = startFlows(port, 30, BYTES);
  try {
    await until(() => flows.every((f) => f.socket.sessionId !== undefined), 10_000, 'every client has a session');
    for (let round = 0; round < 3; round++) {
      await sleep(400);
      balancer.reset();
    }
    await until(() => flows.every((f) => f.error !== undefined || f.receivedBytes === BYTES), 30_000, 'every echo back or failed');
    const lost = flows.filter((f) => f.error !== undefined);
    const relayed = nodes.reduce((n, node) => n + node.server.relayedLinks, 0);
    const resumes = flows.reduce((n, f) => n + f.resumes, 0);
    const perNode = nodes.map((n) => n.server.sessionCount);
    console.log(
      `# ${withPeers ? 'with' : 'without'} peers: ${flows.length} sessions, ${resumes} resumes, ${relayed} relayed, ` +
        `${lost.length} lost (${[...new Set(lost.map((f) => (f.error as RocksError).code))].join(', ')}), sessions per node ${perNode.join('/')}`,
    );
    return { nodes, flows, lost, relayed, resumes };
  } finally {
    for (const f of flows) f.socket.destroy();
    await balancer.close();
    await stopNodes(nodes);
  }
}

/** Closes the nodes started here, their sessions included (a client gone for good leaves them suspended). */
async function stopNodes(nodes: Node[]): Promise<void> {
  const started = nodes.filter((n) => n.server !== undefined);
  for (const n of started) for (const s of n.sockets) s.destroy();
  await Promise.all(started.map((n) => closeServer(n.server)));
}

describe('relays between nodes', () => {
  test('a resume that lands on another node reaches the session through a relay; nothing is lost', async () => {
    const { flows, lost, relayed, resumes, nodes } = await run(true);
    assert.deepEqual(
      lost.map((f) => f.error?.message),
      [],
    );
    for (const f of flows) assert.equal(f.received.digest('hex'), f.sent.digest('hex'), 'echo intact');
    assert.ok(
      flows.every((f) => f.resumes >= 1),
      'every session resumed',
    );
    // A random node of three is another node two times in three.
    assert.ok(relayed >= resumes / 3, `${relayed} of ${resumes} resumes relayed`);
    // Each node's application saw only the client's address, never another node's.
    for (const n of nodes) assert.deepEqual([...n.seen], [CLIENT_SIDE], `node ${n.nodeId} saw ${[...n.seen].join(', ')}`);
  });

  test('without peers the balancer scatters resumes and sessions are lost', async () => {
    const { lost } = await run(false);
    assert.ok(lost.length > 0, 'some sessions lost');
    for (const f of lost) assert.ok(['ERR_ROCKS_UNKNOWN_SESSION', 'ERR_ROCKS_UNCONFIRMED_SESSION'].includes((f.error as RocksError).code));
  });
});

/** Opens a raw TCP link, sends `bytes`, and reads until the peer closes; returns the frames after its announcement. */
async function rawExchange(
  port: number,
  host: string,
  bytes: Buffer,
  localAddress?: string,
): Promise<{ frames: { type: number; code?: number; message?: string }[]; raw: Buffer }> {
  const s: Socket = netConnect({ port, host, localAddress });
  await once(s, 'connect');
  s.write(bytes);
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  await new Promise<void>((resolve) => {
    s.on('close', () => resolve());
    s.on('error', () => resolve());
    setTimeout(() => {
      s.destroy();
      resolve();
    }, 5000);
  });
  const raw = Buffer.concat(chunks);
  const announcement = encodeAnnouncement([ROCKS]);
  const parser = new FrameParser();
  // A link refused before it was read as rocks gets no announcement first.
  parser.push(raw.subarray(0, announcement.length).equals(announcement) ? raw.subarray(announcement.length) : raw);
  const frames: { type: number; code?: number; message?: string }[] = [];
  for (let f = parser.next(); f !== undefined; f = parser.next()) frames.push(f as { type: number; code?: number; message?: string });
  return { frames, raw };
}

function resumeBytes(nodeId: number): Buffer {
  const id = Buffer.alloc(SESSION_ID_SIZE);
  id[0] = 1;
  id.writeUInt32BE(nodeId, 1);
  return Buffer.concat([encodeAnnouncement([ROCKS]), encodeResume(1, id, randomBytes(NONCE_SIZE), Buffer.alloc(INSTANCE_SIZE))]);
}

describe('relays: bad input touches only its own link', () => {
  test('unknown node, forged relay from a non-member, malformed PROXY header, dead owner', async () => {
    // Nodes 0 and 1 here; node 2 is a process of its own, started below.
    const nodes = await startNodes(true, 2);
    // A live session on node 0, which must not notice any of this.
    const live = connect({ port: nodes[0].port, host: nodes[0].host, enhanced: true });
    live.on('error', () => {});
    const echoed: Buffer[] = [];
    live.on('data', (d: Buffer) => echoed.push(d));
    try {
      live.write('before');
      await until(() => Buffer.concat(echoed).toString() === 'before', 5000, 'echo before');

      // A resume naming a node no one knows: told at once that the session is gone.
      const unknown = await rawExchange(nodes[0].port, nodes[0].host, resumeBytes(0x99));
      assert.equal(unknown.frames[0]?.type, FrameType.ERROR, unknown.raw.toString('hex'));
      assert.match(unknown.frames[0].message ?? '', /node 00000099 is not in this deployment/);
      assert.equal(new RocksError('ERR_ROCKS_UNKNOWN_SESSION').wireCode, unknown.frames[0].code);

      // A PROXY header from an address that is no node of the deployment (127.0.0.1).
      const header = encodeProxyHeader({ source: { address: '10.6.6.6', port: 6666 }, destination: { address: nodes[1].host, port: nodes[1].port } });
      const forged = await rawExchange(nodes[1].port, nodes[1].host, Buffer.concat([header, resumeBytes(NODE_IDS[1])]), '127.0.0.1');
      assert.equal(forged.frames[0]?.type, FrameType.ERROR, `forged: ${forged.raw.toString('hex')}`);
      assert.match(forged.frames[0].message ?? '', /relayed link from outside the deployment/);

      // A member that sends a broken header (version 3).
      const broken = Buffer.from(header);
      broken[12] = 0x31;
      const malformed = await rawExchange(nodes[1].port, nodes[1].host, Buffer.concat([broken, resumeBytes(NODE_IDS[1])]), nodes[2].host);
      assert.equal(malformed.frames[0]?.type, FrameType.ERROR, `malformed: ${malformed.raw.toString('hex')}`);
      assert.match(malformed.frames[0].message ?? '', /malformed PROXY header/);

      // The owner of a session dies (a real process, SIGKILLed); the balancer
      // then sends its client's next resume to another node, which finds
      // nobody home at the owner's address and says the session is gone.
      const ownerProcess = startNodeProcess(HOSTS[2], nodes[2].port, NODE_IDS[2], peersOf(nodes));
      await ownerProcess.waitForOutput(/listening/);
      const balancer = new FaultProxy(nodes[2].port, nodes[2].host);
      const balancerPort = await balancer.listen();
      const orphan = connect({ port: balancerPort, host: '127.0.0.1', enhanced: true, failureTimeout: 1000 });
      let orphanError: RocksError | undefined;
      orphan.on('error', (e) => {
        orphanError = e as RocksError;
      });
      orphan.write('x');
      await once(orphan, 'data');
      balancer.spread([{ port: nodes[0].port, host: nodes[0].host }]);
      const died = Date.now();
      ownerProcess.child.kill('SIGKILL');
      await ownerProcess.exit;
      balancer.reset();
      await until(() => orphanError !== undefined, 10_000, 'the orphan hears its session is gone');
      console.log(`# dead owner: its session ended with ${orphanError!.code} ${Date.now() - died} ms after the kill`);
      assert.equal(orphanError!.code, 'ERR_ROCKS_UNKNOWN_SESSION');
      assert.match(orphanError!.message, /node 00000033 is gone/);
      await balancer.close();

      live.write('after');
      await until(() => Buffer.concat(echoed).toString() === 'beforeafter', 5000, 'the live session still flows');
    } finally {
      live.destroy();
      await stopNodes(nodes);
    }
  });
});
