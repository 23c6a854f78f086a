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
//
// With `via: 'haproxy'` the client enters through a real HAProxy instead
// of the router's DNAT: docs/haproxy.cfg as written (test/support/haproxy.ts)
// on server 0, at its own address and HAPROXY_PORT. The client's path to it
// crosses the router, where the faults act; haproxy reaches the nodes
// through the router too, on node-to-node paths the faults spare.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ownerOf } from '../../src/protocol/routing.js';
import { HaproxyLog, writeHaproxyConfig } from '../support/haproxy.js';
import { Program, sleep, until } from '../support/helpers.js';
import { programs } from '../support/which.js';
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
  /** Every node's id, by index. */
  nodeIds: number[];
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
  /** The node id of each server, by index (default 1, 2, 3...); with haproxy, those of the doc's nodes.map. */
  nodeIds?: number[];
  /**
   * Where the client enters: the router's round-robin DNAT to the service
   * address (the default), or haproxy with docs/haproxy.cfg on server 0 at
   * HAPROXY_PORT (new sessions round robin, resumes to the node they name).
   */
  via?: 'dnat' | 'haproxy';
  /** Extra options for the client's connect() (detectCacheTtl: 0 makes every connection probe with EDP). */
  clientOptions?: Record<string, unknown>;
}

/** Where haproxy listens on server 0 (via: 'haproxy'). */
export const HAPROXY_PORT = 7500;

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
  /** The nodes' warnings and errors, by message and error (a failed connection, a target that refused one). */
  nodeWarnings: Record<string, number>;
  /**
   * Connections whose EDP verdict came from a probe that found rocks, not from the cache. With the
   * cache on, connections made at once share one probe; with detectCacheTtl: 0 each runs its own.
   */
  probed: number;
  /** With via: 'haproxy', its log: links it carried, resuming ones, and those that went to another node than the one they named. */
  haproxy?: { links: number; resumingLinks: number; misrouted: number; ended: Record<string, number> };
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

/** The node ids servers run with unless told (BalancedOptions.nodeIds): 1, 2, 3... */
export const defaultNodeIds = (servers: number): number[] => Array.from({ length: servers }, (_, i) => i + 1);

/** `ID=HOST:PORT,...` for every node of `bed`: a static peer list (`rock serve --peers`). */
export function peersOf(bed: NetBed, port: number, nodeIds = defaultNodeIds(bed.servers)): string {
  return bed.serverAddresses.map((address, i) => `${nodeIds[i]}=${address}:${port}`).join(',');
}

const describeFault = (f: BalancedFault, nodeIds: number[]): string =>
  f.kind === 'move' || f.kind === 'redis-down' ? f.kind : f.kind === 'kill' ? `kill node ${nodeIds[f.index]}` : `${f.kind} ${f.ms / 1000} s`;

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

/** Of `ids`, those suspended now: their last suspend has no resume after it. */
function suspendedNow(client: Agent, ids: number[]): number[] {
  const last = new Map<number, AgentEvent['type']>();
  for (const e of client.events) if (e.type === 'suspend' || e.type === 'resume') last.set(e.id!, e.type);
  return ids.filter((id) => last.get(id) === 'suspend');
}

/** Connection `id`'s last events, their times from `since`: why a session did not do what was awaited. */
function lastEvents(client: Agent, id: number, since: number): string {
  const events = client.events.filter((e) => e.id === id).slice(-4);
  return `${id}: ${events.map((e) => `${e.type}${e.reason ? ` (${e.reason})` : ''} at ${e.t - since} ms`).join(', ')}`;
}

/**
 * Kills a node and waits until each of its sessions ended (their links
 * break; the resume reaches another node, whose relay finds the owner gone,
 * or the dead node's port itself). The other sessions must not notice.
 */
async function killNode(
  client: Agent,
  fault: { index: number },
  serves: RockProcess[],
  nodeIds: number[],
  live: number[],
  broken: number,
): Promise<FaultOutcome> {
  serves[fault.index].child.kill('SIGKILL');
  const owner = new Map(client.of('connected').map((e) => [e.id!, ownerOf(Buffer.from(e.session ?? '', 'hex'))?.nodeId]));
  const orphans = live.filter((id) => owner.get(id) === nodeIds[fault.index]);
  await client.waitFor(
    () => withEventSince(client, 'error', orphans, broken).length === orphans.length,
    5 * FAILURE_TIMEOUT + 10_000,
    `every session of node ${nodeIds[fault.index]} to end`,
  );
  await sleep(2 * FAILURE_TIMEOUT); // long enough for any other session that noticed to show it
  const ended = client.events
    .filter((e) => e.type === 'error' && e.t >= broken && live.includes(e.id!))
    .map((e) => ({ id: e.id!, code: e.code, ms: e.t - broken }));
  return {
    fault: describeFault({ kind: 'kill', ...fault }, nodeIds),
    live: live.length,
    resumed: live.length - ended.length,
    lost: ended.length,
    ended,
  };
}

/** Applies one fault, lifts it, and waits until every session alive before it resumed or failed. */
async function applyFault(
  bed: NetBed,
  client: Agent,
  fault: BalancedFault,
  serves: RockProcess[],
  nodeIds: number[],
  redis: Program | undefined,
): Promise<FaultOutcome> {
  const live = alive(client);
  const broken = Date.now();
  // Already suspended (a link lost to the load, say): the fault holds back its resume all the same.
  const suspended = suspendedNow(client, live);
  if (fault.kind === 'redis-down') {
    if (redis === undefined) throw new Error('a redis-down fault needs the redis option');
    redis.child.kill('SIGKILL');
    await redis.exit;
    return { fault: 'redis-down', live: live.length, resumed: live.length, lost: 0, ended: [] };
  }
  if (fault.kind === 'blackhole') bed.blackhole();
  else if (fault.kind === 'reset') bed.reject();
  else if (fault.kind === 'kill') return killNode(client, fault, serves, nodeIds, live, broken);
  else bed.moveClient();
  const failedSince = (): number[] => withEventSince(client, 'error', live, broken);
  // Lifted only once every live session noticed, so none rides it out unsuspended (and so never resumes).
  // A move may be noticed as a move (the network watcher, PROTOCOL.md §6.8) with no suspension, when no bytes were caught.
  const moved = (): number[] => (fault.kind === 'move' ? withEventSince(client, 'migrate', live, broken) : []);
  const unnoticed = (): number[] => {
    const noticed = new Set([...suspended, ...withEventSince(client, 'suspend', live, broken), ...moved(), ...failedSince()]);
    return live.filter((id) => !noticed.has(id));
  };
  await client.waitFor(
    () => unnoticed().length === 0,
    5 * FAILURE_TIMEOUT,
    () =>
      `every live session to notice the ${describeFault(fault, nodeIds)} (not yet: ${unnoticed()
        .map((id) => lastEvents(client, id, broken))
        .join('; ')})`,
  );
  if (fault.kind === 'blackhole' || fault.kind === 'reset') {
    await sleep(Math.max(0, fault.ms - (Date.now() - broken)));
    bed.heal();
  }
  const settled = (): boolean => {
    const failed = new Set(failedSince());
    const back = new Set([...withEventSince(client, 'resume', live, broken), ...moved()]);
    return live.every((id) => failed.has(id) || back.has(id));
  };
  await client.waitFor(settled, 30_000, `every session to resume or fail after the ${describeFault(fault, nodeIds)}`);
  const lost = failedSince().length;
  const ended = client.events
    .filter((e) => e.type === 'error' && e.t >= broken && live.includes(e.id!))
    .map((e) => ({ id: e.id!, code: e.code, ms: e.t - broken }));
  return { fault: describeFault(fault, nodeIds), live: live.length, resumed: live.length - lost, lost, ended };
}

/** haproxy on server 0 as a bed's entry, and what it logs. */
interface BedHaproxy {
  program: Program;
  log: HaproxyLog;
}

/**
 * Starts haproxy with docs/haproxy.cfg on server 0, listening on its
 * address at HAPROXY_PORT, its servers the nodes' rock serve (node id
 * `nodeIds[i]` on server i at `port`); resolves once it listens.
 */
async function startHaproxy(bed: NetBed, nodeIds: number[], port: number, dir: string): Promise<BedHaproxy> {
  const file = writeHaproxyConfig('bed.cfg', {
    dir,
    bind: `${bed.serverAddress}:${HAPROXY_PORT}`,
    servers: new Map(nodeIds.map((id, i) => [id, `${bed.serverAddresses[i]}:${port}`])),
  });
  const child = bed.spawn('server', programs('haproxy').paths.haproxy, ['-db', '-f', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  const program = new Program(child, 'haproxy', { keep: ['stderr'] });
  const log = new HaproxyLog(child.stdout!);
  // Asked of the kernel (ss), not by connecting: a test connection would be a link in haproxy's log.
  const listening = async (): Promise<boolean> => {
    if (program.exited !== undefined) throw new Error(`haproxy exited (${program.exited}) before listening:\n${program.output}`);
    const ss = bed.spawn('server', 'ss', ['-Hltn', `sport = :${HAPROXY_PORT}`], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    ss.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    await new Promise((resolve) => ss.once('close', resolve));
    return out.trim() !== '';
  };
  try {
    await until(listening, 10_000, () => `haproxy to listen on ${bed.serverAddress}:${HAPROXY_PORT}:\n${program.output}`, 50);
  } catch (err) {
    await program.stop();
    throw err;
  }
  return { program, log };
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
  nodeIds = defaultNodeIds(servers),
  via = 'dnat',
  clientOptions = {},
}: BalancedOptions = {}): Promise<BalancedReport> {
  if (nodeIds.length !== servers || new Set(nodeIds).size !== servers) {
    throw new RangeError(`nodeIds must give ${servers} distinct ids, one per server; got ${nodeIds.join(', ')}`);
  }
  const bed = new NetBed({ servers, spread });
  const processes: Program[] = [];
  let redisServer: Program | undefined;
  let dir: string | undefined;
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
      const nodeId = nodeIds[index];
      const args = ['serve', '--listen', `0.0.0.0:${port}`, '--to', `127.0.0.1:${port + 1}`, '--node-id', String(nodeId), ...rockOptions];
      const serve = new RockProcess(bed, host, [...args, ...serveArgs({ index, nodeId, nodeIds, bed, port })]);
      processes.push(serve);
      serves.push(serve);
    }
    await Promise.all(serves.map((s) => s.ready('serving rocks, relaying to the target')));
    let haproxy: BedHaproxy | undefined;
    if (via === 'haproxy') {
      dir = mkdtempSync(join(tmpdir(), 'rocks-bed-haproxy-'));
      haproxy = await startHaproxy(bed, nodeIds, port, dir);
      processes.push(haproxy.program);
    }

    const [entry, entryPort] = haproxy ? [bed.serverAddress, HAPROXY_PORT] : [bed.serviceAddress, port];
    const client = await agentClient(bed, entryPort, { ...sessionOptions, ...clientOptions }, rate, count, false, entry);
    processes.push(client);
    const connected = client.of('connected');
    const plain = connected.filter((e) => !e.reliable);
    if (plain.length > 0) {
      const why = new Map<string, number>();
      for (const e of plain) why.set(`${e.reason}${e.cached ? ' (cached)' : ''}`, (why.get(`${e.reason}${e.cached ? ' (cached)' : ''}`) ?? 0) + 1);
      throw new Error(`${plain.length} of ${count} connections fell back to plain TCP: ${JSON.stringify(Object.fromEntries(why))}`);
    }
    const spread = Array.from({ length: servers }, () => 0);
    for (const e of connected) {
      const owner = ownerOf(Buffer.from(e.session ?? '', 'hex'));
      const index = owner === undefined ? -1 : nodeIds.indexOf(owner.nodeId);
      if (spread[index] === undefined) throw new Error(`connection ${e.id}: session ${e.session} names no node of this bed`);
      spread[index]++;
    }

    await sleep(1000); // streaming before the first fault
    const outcomes: FaultOutcome[] = [];
    for (const fault of faults) {
      outcomes.push(await applyFault(bed, client, fault, serves, nodeIds, redisServer));
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
    const resumes = client.of('resume').length;
    if (haproxy) {
      // haproxy logs a link once it closes: every link that carried a resume has closed by now, or soon.
      const log = haproxy.log;
      await until(() => log.resumes().length >= resumes, 10_000, `haproxy to log ${resumes} resuming links`).catch(() => {});
    }
    return {
      connections: count,
      spread,
      intact,
      lost,
      lostTotal: Object.values(lost).reduce((a, b) => a + b, 0),
      resumes,
      relayedLinks: serves.reduce((n, s) => n + (s.counts.get(RELAYED) ?? 0), 0),
      relayed: serves.reduce((n, s) => n + (s.counts.get('resumed (relayed)') ?? 0), 0),
      notRelayed: serves.reduce((n, s) => n + (s.counts.get(NOT_RELAYED) ?? 0), 0),
      nodeWarnings: tally(serves.flatMap((s) => [...s.warnings])),
      probed: connected.filter((e) => e.reliable && e.cached === false && e.reason === 'the server announced rocks').length,
      haproxy: haproxy && {
        links: haproxy.log.links.length,
        resumingLinks: haproxy.log.resumes().length,
        misrouted: haproxy.log.misrouted().length,
        ended: tally(haproxy.log.links.map((l) => [l.ended, 1])),
      },
      faults: outcomes,
      bytes,
    };
  } finally {
    await Promise.all(processes.map((p) => p.stop()));
    bed.destroy();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  }
}

/** Sums counts by key. */
function tally(entries: [string, number][]): Record<string, number> {
  const sums: Record<string, number> = {};
  for (const [key, n] of entries) sums[key] = (sums[key] ?? 0) + n;
  return sums;
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
  const warnings = Object.entries(r.nodeWarnings)
    .map(([what, n]) => `${n}x ${what}`)
    .join(', ');
  const haproxy = r.haproxy
    ? `; haproxy carried ${r.haproxy.links} links (ended ${JSON.stringify(r.haproxy.ended)}), ${r.haproxy.resumingLinks} resuming, ` +
      `${r.haproxy.misrouted} of them to another node than they named`
    : '';
  return (
    `# ${label}: ${r.connections} sessions spread ${r.spread.join('/')} over ${r.spread.length} nodes; ` +
    `${r.intact} intact (${(r.bytes / 2 ** 20).toFixed(1)} MiB checked both ways), ${r.lostTotal} lost${lost ? ` (${lost})` : ''}; ` +
    `${r.resumes} resumes, ${r.relayed} of them relayed (${r.relayedLinks} links relayed)${r.notRelayed > 0 ? `, ${r.notRelayed} not relayed` : ''}; ` +
    `${r.probed} found rocks by EDP probe${haproxy}; ${faults}${warnings ? `; the nodes warned: ${warnings}` : ''}`
  );
}
