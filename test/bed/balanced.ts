// Many rocks nodes behind a non-sticky L4 balancer, the deployment issue 15
// is about: a bed with N server hosts behind the router's round-robin DNAT
// (test/bed/netbed.ts), `rock serve` on every node relaying to an echo on
// that node, and reliable connections from the client host to the service
// address while the client's path fails in turn (black holes, resets, a
// move). Each fault sends every session back through the balancer, which
// picks a node with no regard for who holds the session.
//
// The scenario checks every byte of every connection that survives (SHA-256
// of what the client sent against what the echo brought back) and counts
// the rest by error code, so one run without relays shows sessions lost to
// scattering and the same run with relays (extra `rock serve` arguments per
// node) can demand that none are.

import { ownerOf } from '../../src/protocol/routing.js';
import { Program, sleep } from '../support/helpers.js';
import { NetBed, serverHost } from './netbed.js';
import { type Agent, agentClient, type AgentEvent, RockProcess, socatEcho } from './programs.js';

export type BalancedFault =
  /** The client's path black-holed for `ms` (held until every live session noticed). */
  | { kind: 'blackhole'; ms: number }
  /** Every segment of the client's path answered with a reset for `ms`. */
  | { kind: 'reset'; ms: number }
  /** The Redis of the node directory dies (BalancedOptions.redis): nothing may change for the sessions. */
  | { kind: 'redis-down' }
  /** Node `index` dies: its rock serve gets SIGKILL (its sessions must end, the others flow on). */
  | { kind: 'kill'; index: number }
  /** The client's address changes (bed.moveClient()). */
  | { kind: 'move' };

/** What one node is told: its index, the node id it runs with, and where everything is. */
export interface BalancedNode {
  index: number;
  nodeId: number;
  bed: NetBed;
  port: number;
}

export interface BalancedOptions {
  servers?: number;
  /** How the balancer picks a node for a new connection (NetBedOptions.spread). */
  spread?: 'inc' | 'random';
  /** Reliable connections from the client. */
  count?: number;
  /** Bytes a second each connection sends (and gets back). */
  rate?: number;
  faults?: BalancedFault[];
  /** Extra `rock serve` arguments for each node (--peers, say), after --listen, --to and --node-id. */
  serveArgs?: (node: BalancedNode) => string[];
  /** The port rock serve listens on (the echo is on port + 1, on 127.0.0.1). */
  port?: number;
  /** Runs a redis-server on server 0 (at REDIS_PORT) for a node directory, started before the nodes. */
  redis?: boolean;
}

export const REDIS_PORT = 6379;

/** What happened in one fault. */
export interface FaultOutcome {
  fault: string;
  /** Sessions alive when it began. */
  live: number;
  resumed: number;
  lost: number;
  /** The sessions it ended: connection id, error code, ms from the fault to the error. */
  ended: { id: number; code: string | undefined; ms: number }[];
}

export interface BalancedReport {
  connections: number;
  /** New sessions per node, by index: where the balancer put them. */
  spread: number[];
  /** Connections that ended with every byte intact both ways. */
  intact: number;
  /** Connections that failed, by error code. */
  lost: Record<string, number>;
  lostTotal: number;
  /** Resumes the client made (all faults). */
  resumes: number;
  /** Resumes that reached the node holding the session through another node (the owners' logs). */
  relayed: number;
  /** Resuming links a node carried to another (attempts, some cut by the faults before they resumed). */
  relayedLinks: number;
  /** Resuming links a node could not carry (unknown or dead owner). */
  notRelayed: number;
  faults: FaultOutcome[];
  /** Bytes carried by the intact connections, both ways. */
  bytes: number;
}

export const FAILURE_TIMEOUT = 2000;
const HEARTBEAT = 400;
const sessionOptions = { failureTimeout: FAILURE_TIMEOUT, reconnectDelayMax: 1000 };
const rockOptions = ['--failure-timeout', String(FAILURE_TIMEOUT), '--heartbeat', String(HEARTBEAT)];

export const DEFAULT_FAULTS: BalancedFault[] = [
  { kind: 'blackhole', ms: 3000 },
  { kind: 'reset', ms: 1000 },
  { kind: 'move' },
  { kind: 'blackhole', ms: 3000 },
];

/** The node id server `index` runs with. */
export const nodeIdOf = (index: number): number => index + 1;

/** `ID=HOST:PORT,...` for every node of `bed`: a static peer list (`rock serve --peers`). */
export function peersOf(bed: NetBed, port: number): string {
  return bed.serverAddresses.map((address, i) => `${nodeIdOf(i)}=${address}:${port}`).join(',');
}

const describeFault = (f: BalancedFault): string =>
  f.kind === 'move' || f.kind === 'redis-down' ? f.kind : f.kind === 'kill' ? `kill node ${nodeIdOf(f.index)}` : `${f.kind} ${f.ms / 1000} s`;

/** The client connections (ids) still open: connected and no error yet. */
function alive(client: Agent): number[] {
  const failed = new Set(client.of('error').map((e) => e.id));
  return client
    .of('connected')
    .map((e) => e.id!)
    .filter((id) => !failed.has(id));
}

/** Of `ids`, those with an event of `type` at or after `since`. */
function withEventSince(client: Agent, type: AgentEvent['type'], ids: number[], since: number): number[] {
  const seen = new Set(client.events.filter((e) => e.type === type && e.t >= since).map((e) => e.id));
  return ids.filter((id) => seen.has(id));
}

/**
 * Kills a node and waits until each of its sessions ended (their links
 * break; the resume reaches another node, whose relay finds the owner gone,
 * or the dead node's port itself). The other sessions must not notice.
 */
async function killNode(client: Agent, fault: { index: number }, serves: RockProcess[], live: number[], broken: number): Promise<FaultOutcome> {
  serves[fault.index].child.kill('SIGKILL');
  const owner = new Map(client.of('connected').map((e) => [e.id!, ownerOf(Buffer.from(e.session ?? '', 'hex'))?.nodeId]));
  const orphans = live.filter((id) => owner.get(id) === nodeIdOf(fault.index));
  await client.waitFor(
    () => withEventSince(client, 'error', orphans, broken).length === orphans.length,
    5 * FAILURE_TIMEOUT + 10_000,
    `every session of node ${nodeIdOf(fault.index)} to end`,
  );
  await sleep(2 * FAILURE_TIMEOUT); // long enough for any other session that noticed to show it
  const ended = client.events
    .filter((e) => e.type === 'error' && e.t >= broken && live.includes(e.id!))
    .map((e) => ({ id: e.id!, code: e.code, ms: e.t - broken }));
  return { fault: describeFault({ kind: 'kill', ...fault }), live: live.length, resumed: live.length - ended.length, lost: ended.length, ended };
}

/** Applies one fault, lifts it, and waits until every session alive before it resumed or failed. */
async function applyFault(
  bed: NetBed,
  client: Agent,
  fault: BalancedFault,
  serves: RockProcess[],
  redis: Program | undefined,
): Promise<FaultOutcome> {
  const live = alive(client);
  const broken = Date.now();
  if (fault.kind === 'redis-down') {
    if (redis === undefined) throw new Error('a redis-down fault needs the redis option');
    redis.child.kill('SIGKILL');
    await redis.exit;
    return { fault: 'redis-down', live: live.length, resumed: live.length, lost: 0, ended: [] };
  }
  if (fault.kind === 'blackhole') bed.blackhole();
  else if (fault.kind === 'reset') bed.reject();
  else if (fault.kind === 'kill') return killNode(client, fault, serves, live, broken);
  else bed.moveClient();
  const failedSince = (): number[] => withEventSince(client, 'error', live, broken);
  // Lifted only once every live session noticed, so none rides it out unsuspended (and so never resumes).
  // A session already suspended when the fault began (a heartbeat missed
  // on a loaded machine, say) has nothing more to notice: it resumes after.
  const suspendedBefore = live.filter((id) => {
    const last = client.events.findLast((e) => e.id === id && e.t < broken && (e.type === 'suspend' || e.type === 'resume'));
    return last?.type === 'suspend';
  });
  if (suspendedBefore.length > 0) console.log(`# ${suspendedBefore.length} sessions were already suspended when the ${describeFault(fault)} began`);
  const unnoticed = (): number[] => {
    const noticed = new Set([...suspendedBefore, ...withEventSince(client, 'suspend', live, broken), ...failedSince()]);
    return live.filter((id) => !noticed.has(id));
  };
  await client.waitFor(
    () => unnoticed().length === 0,
    5 * FAILURE_TIMEOUT,
    () => `every live session to notice the ${describeFault(fault)} (not yet: ${unnoticed().join(', ')})`,
  );
  if (fault.kind === 'blackhole' || fault.kind === 'reset') {
    await sleep(Math.max(0, fault.ms - (Date.now() - broken)));
    bed.heal();
  }
  const settled = (): boolean => {
    const failed = new Set(failedSince());
    return live.every((id) => failed.has(id) || withEventSince(client, 'resume', [id], broken).length > 0);
  };
  await client.waitFor(settled, 30_000, `every session to resume or fail after the ${describeFault(fault)}`);
  const lost = failedSince().length;
  const ended = client.events
    .filter((e) => e.type === 'error' && e.t >= broken && live.includes(e.id!))
    .map((e) => ({ id: e.id!, code: e.code, ms: e.t - broken }));
  return { fault: describeFault(fault), live: live.length, resumed: live.length - lost, lost, ended };
}

/**
 * Runs the scenario on a fresh bed and tears it down whatever happens.
 * Throws if a connection that did not fail lost, duplicated or changed a
 * byte; failures are counted, not thrown: judging them is the caller's part.
 */
export async function balancedScenario({
  servers = 3,
  spread = 'inc',
  count = 50,
  rate = 16 * 1024,
  faults = DEFAULT_FAULTS,
  serveArgs = () => [],
  port = 7400,
  redis = false,
}: BalancedOptions = {}): Promise<BalancedReport> {
  const bed = new NetBed({ servers, spread });
  const processes: Program[] = [];
  let redisServer: Program | undefined;
  try {
    if (redis) {
      const args = ['--bind', bed.serverAddress, '--port', String(REDIS_PORT), '--save', '', '--appendonly', 'no', '--protected-mode', 'no'];
      redisServer = new Program(bed.spawn('server', 'redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] }), 'redis-server');
      processes.push(redisServer);
      await redisServer.waitForOutput(/Ready to accept connections/);
    }
    const serves: RockProcess[] = [];
    for (let index = 0; index < servers; index++) {
      const host = serverHost(index);
      processes.push(socatEcho(bed, `127.0.0.1:${port + 1}`, host));
      const nodeId = nodeIdOf(index);
      const args = ['serve', '--listen', `0.0.0.0:${port}`, '--to', `127.0.0.1:${port + 1}`, '--node-id', String(nodeId), ...rockOptions];
      const serve = new RockProcess(bed, host, [...args, ...serveArgs({ index, nodeId, bed, port })]);
      processes.push(serve);
      serves.push(serve);
    }
    await Promise.all(serves.map((s) => s.ready('serving rocks, relaying to the target')));

    const client = await agentClient(bed, port, sessionOptions, rate, count, false, bed.serviceAddress);
    processes.push(client);
    const connected = client.of('connected');
    const plain = connected.filter((e) => !e.reliable).length;
    if (plain > 0) throw new Error(`${plain} of ${count} connections fell back to plain TCP`);
    const spread = Array.from({ length: servers }, () => 0);
    for (const e of connected) {
      const owner = ownerOf(Buffer.from(e.session ?? '', 'hex'));
      const index = owner === undefined ? -1 : owner.nodeId - 1;
      if (spread[index] === undefined) throw new Error(`connection ${e.id}: session ${e.session} names no node of this bed`);
      spread[index]++;
    }

    await sleep(1000); // streaming before the first fault
    const outcomes: FaultOutcome[] = [];
    for (const fault of faults) {
      outcomes.push(await applyFault(bed, client, fault, serves, redisServer));
      await sleep(500);
    }
    await sleep(1000); // and after the last

    client.finish();
    await client.waitFor((a) => a.of('done').length === 1, 60_000, 'every connection to close');
    const lost: Record<string, number> = {};
    let intact = 0;
    let bytes = 0;
    for (const r of client.of('result')) {
      if (r.error !== undefined) {
        lost[r.error] = (lost[r.error] ?? 0) + 1;
        continue;
      }
      // The echo sends back what it got: equal bytes and digests prove both directions whole.
      if (r.received !== r.sent || r.receivedSha !== r.sentSha) {
        throw new Error(`connection ${r.id} sent ${r.sent} bytes (${r.sentSha}) and got back ${r.received} (${r.receivedSha})`);
      }
      intact++;
      bytes += r.sent! + r.received!;
    }
    return {
      connections: count,
      spread,
      intact,
      lost,
      lostTotal: Object.values(lost).reduce((a, b) => a + b, 0),
      resumes: client.of('resume').length,
      relayedLinks: serves.reduce((n, s) => n + (s.counts.get(RELAYED) ?? 0), 0),
      relayed: serves.reduce((n, s) => n + (s.counts.get('resumed (relayed)') ?? 0), 0),
      notRelayed: serves.reduce((n, s) => n + (s.counts.get(NOT_RELAYED) ?? 0), 0),
      faults: outcomes,
      bytes,
    };
  } finally {
    await Promise.all(processes.map((p) => p.stop()));
    bed.destroy();
  }
}

/** What `rock serve` logs for each resume it relays, or cannot. */
const RELAYED = 'resume relayed to the node that holds the session';
const NOT_RELAYED = 'resume not relayed';

/** One line for the test's output. */
export function describeReport(label: string, r: BalancedReport): string {
  const lost = Object.entries(r.lost)
    .map(([code, n]) => `${n} ${code}`)
    .join(', ');
  const faults = r.faults.map((f) => `${f.fault}: ${f.resumed}/${f.live} resumed`).join('; ');
  return (
    `# ${label}: ${r.connections} sessions spread ${r.spread.join('/')} over ${r.spread.length} nodes; ` +
    `${r.intact} intact (${(r.bytes / 2 ** 20).toFixed(1)} MiB checked both ways), ${r.lostTotal} lost${lost ? ` (${lost})` : ''}; ` +
    `${r.resumes} resumes, ${r.relayed} of them relayed (${r.relayedLinks} links relayed)${r.notRelayed > 0 ? `, ${r.notRelayed} not relayed` : ''}; ${faults}`
  );
}
