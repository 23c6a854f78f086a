// One simulated run from one seed: 1 to 3 clients and a server exchange
// random streams both ways while faults reset, black-hole and partition the
// network at random moments (handshakes, resumes and closes included). Then
// the network heals and the run must finish: every byte delivered exactly
// once and in order, both ends closed cleanly, no state left behind.
//
// In a share of the runs the server is several nodes behind a balancer that
// sends each new link to a random node: resumes are relayed to the node
// holding the session, nodes die (and may restart as new instances) and the
// directory goes out. A session created by a node's instance that died may
// end with ERR_ROCKS_UNKNOWN_SESSION, promptly (or finish, if everything was
// already delivered); every other session must finish as above.

import { createHash } from 'node:crypto';
import { resolveServerLimits, resolveSessionConfig } from '../../src/protocol/config.js';
import type { Session } from '../../src/protocol/session.js';
import { streamBytes } from './app.js';
import type { SimLink } from './network.js';
import { SIM_OPTIONS, type Range } from './options.js';
import { buildCluster, nodeAddress } from './cluster.js';
import { noRunFigures, type RunFigures } from './figures.js';
import { SimRandom } from './random.js';
import { ClientEndpoint, ServerEndpoint, SimNode, World, type ServerPlan } from './world.js';

export interface SimResult extends RunFigures {
  seed: number;
  /** What the run drew from SIM_OPTIONS, printed first when it fails. */
  drawn: Record<string, unknown>;
  failures: string[];
  simTime: number;
  faults: number;
  suspends: number;
  resumes: number;
  bytes: number;
  trace: string[];
}

/**
 * The error a client that sent data behind its HELLO may end with when the
 * link of that HELLO was lost before the session was safe: the session is
 * not started again, since a server that held it may have delivered that
 * data (§3.8, §15.2). Over keyed channels only when no server ever held
 * the session; without, also when a server held it unconfirmed.
 */
const LOST_IN_FIRST_TRIP = 'ERR_ROCKS_CONNECT_FAILED';

/**
 * How a session opened at its early data ends on a server that never heard
 * the client's CONFIRM (§3.8): its link was lost, or the CONFIRM never came.
 */
const NEVER_CONFIRMED = new Set(['ERR_ROCKS_CONNECT_FAILED', 'ERR_ROCKS_HANDSHAKE_TIMEOUT']);

/** The error a session may end with when the node holding it died. */
const LOST_WITH_ITS_NODE = 'ERR_ROCKS_UNKNOWN_SESSION';

/** Simulated time allowed after the network heals for everything to finish. */
const LIVENESS_BOUND = 600_000;
const MAX_STEPS = 20_000_000;

/** Runs one seed. Never throws: an exception anywhere is a failure of that seed. */
export function runSeed(seed: number, verbose = false): SimResult {
  const drawn: Record<string, unknown> = {};
  const trace: string[] = [];
  try {
    return simulate(seed, verbose, drawn, trace);
  } catch (err) {
    const failure = `exception outside the run loop: ${(err as Error)?.stack ?? String(err)}`;
    return { seed, drawn, failures: [failure], simTime: 0, faults: 0, suspends: 0, resumes: 0, bytes: 0, trace, ...noRunFigures() };
  }
}

function simulate(seed: number, verbose: boolean, drawn: Record<string, unknown>, trace: string[]): SimResult {
  const random = new SimRandom(seed);
  const { timing, network, faults: odds, app: apps } = SIM_OPTIONS;
  const spread = (range: Range): number => random.spread(range[0], range[1]);
  const failureTimeout = random.pick(timing.failureTimeouts);
  const latency = spread(network.latency);
  const faultEnd = spread(odds.faultEnd);
  const earlyRandom = new SimRandom(createHash('sha256').update(`early ${seed}`).digest().readUInt32BE(0) >>> 1);
  const kernelRandom = new SimRandom(createHash('sha256').update(`kernel ${seed}`).digest().readUInt32BE(0) >>> 1);
  const kernelWatched = kernelRandom.chance(SIM_OPTIONS.kernelLiveness.share);
  const config = resolveSessionConfig({
    earlyData: earlyRandom.chance(SIM_OPTIONS.earlyData),
    pathCheckInterval: failureTimeout * kernelRandom.pick(SIM_OPTIONS.kernelLiveness.pathChecks),
    failureTimeout,
    heartbeatInterval: random.chance(timing.defaultHeartbeat) ? undefined : Math.round(failureTimeout / random.pick(timing.heartbeatDivisors)),
    receiveWindow: spread(timing.receiveWindow),
    maxInflight: spread(timing.maxInflight),
    reconnectDelay: random.pick(timing.reconnectDelays),
    reconnectDelayMax: random.pick(timing.reconnectDelayMaxes),
    suspendLimit: 24 * 3_600_000,
    // The closing handshake must be able to outlast the faults; what happens
    // when it cannot is tested on its own.
    closeLinger: faultEnd + 60_000,
    connectTimeout: 24 * 3_600_000,
    handshakeTimeout: Math.max(failureTimeout, 12 * latency + 100),
  });
  Object.assign(drawn, { latency, faultEnd, config, kernelWatched });
  const world = new World(
    random.fork(),
    {
      config,
      limits: resolveServerLimits({}),
      kernelWatched,
      shape: () => ({
        latency: latency * (0.5 + random.fraction()),
        bandwidth: spread(network.bandwidth),
        sendBuffer: spread(network.sendBuffer),
      }),
    },
    trace,
  );
  world.verbose = verbose;

  const clientCount = random.int(1, apps.maxClients);
  // A stream cannot go faster than one receive window per round trip (the
  // slowest link's, plus the ACK delay): keep that to about a minute too, so
  // a tiny window on a slow link cannot outlast the deadline by itself.
  const windowLimited = Math.floor((config.receiveWindow * 60_000) / (3 * latency + 40));
  const plans = Array.from({ length: clientCount }, (_, i) => {
    const up = random.chance(apps.emptyStream) ? 0 : Math.min(spread(apps.streamBytes), windowLimited);
    const down = random.chance(apps.emptyStream) ? 0 : Math.min(spread(apps.streamBytes), windowLimited);
    // Small writes are worth testing, but a few thousand of them are enough.
    const maxWrite = Math.max(spread(apps.maxWrite), Math.ceil(Math.max(up, down) / 300));
    // Keep the applications' own pace to about a minute of writing, so that
    // a run that does not finish points at rocks, not at a slow writer.
    const meanWrite = maxWrite === 1 ? 1 : (maxWrite - 1) / Math.log(maxWrite);
    const writes = Math.max(up, down) / meanWrite;
    return {
      up: streamBytes(seed * 8 + 2 * i, up),
      down: streamBytes(seed * 8 + 2 * i + 1, down),
      maxWrite,
      writePause: Math.min(spread(apps.writePause), Math.floor(60_000 / Math.max(1, writes))),
      // A slow reader with a small window is worth testing too, within the same minute.
      clientReadPause: random.chance(apps.readsAtOnce)
        ? 0
        : Math.min(spread(apps.readPause), Math.floor((60_000 * config.receiveWindow) / Math.max(1, down))),
      serverReadPause: random.chance(apps.readsAtOnce)
        ? 0
        : Math.min(spread(apps.readPause), Math.floor((60_000 * config.receiveWindow) / Math.max(1, up))),
    };
  });

  // A keyed channel opens a session before its client has heard WELCOME:
  // then the client is the one at the other end of the session's link.
  const planFor = (session: Session, link: SimLink | undefined): ServerPlan | undefined => {
    let i = world.clients.findIndex((c) => c.session.sessionId?.equals(session.sessionId!));
    if (i < 0 && link !== undefined) i = world.clients.findIndex((c) => [...c.links.values()].includes(link));
    if (i < 0) return undefined;
    const p = plans[i];
    return {
      random: random.fork(),
      plan: { outgoing: p.down, incoming: p.up, maxWrite: p.maxWrite, writePause: p.writePause, readPause: p.serverReadPause },
      client: world.clients[i].name,
    };
  };
  // The cluster draws from a generator of its own, so that single-server
  // runs draw exactly what they drew before nodes existed. Its seed is
  // hashed: xoroshiro's first draws from neighbouring seeds are alike.
  const clusterRandom = new SimRandom(createHash('sha256').update(`cluster ${seed}`).digest().readUInt32BE(0) >>> 1);
  let quietAt = 0;
  if (clusterRandom.chance(SIM_OPTIONS.cluster.multiNode)) {
    quietAt = buildCluster(world, clusterRandom, random, drawn, faultEnd, (node) => new ServerEndpoint(world, random.fork(), planFor, { node }));
  } else {
    const tlsRandom = new SimRandom(createHash('sha256').update(`tls ${seed}`).digest().readUInt32BE(0) >>> 1);
    if (tlsRandom.chance(SIM_OPTIONS.tls.keyedChannel)) world.options.channelKeys = tlsRandom.fork();
    drawn.keyedChannels = world.options.channelKeys !== undefined;
    const server = new ServerEndpoint(world, random.fork(), planFor);
    const node = new SimNode(0, server.core.nodeId, nodeAddress(0));
    node.endpoint = server;
    node.instances.push(server);
    world.nodes.push(node);
  }

  drawn.clients = plans.map((p) => ({
    up: p.up.length,
    down: p.down.length,
    maxWrite: p.maxWrite,
    writePause: p.writePause,
    clientReadPause: p.clientReadPause,
    serverReadPause: p.serverReadPause,
  }));

  let faults = 0;
  const firstDials = new Set<SimLink>();
  const meanGap = spread(odds.meanGap);
  drawn.meanGap = meanGap;

  const injure = (link: SimLink, kind: 'reset' | 'stall'): void => {
    // A client's very first connection attempt failing is an error by design
    // (as with net.connect); the simulation spares it until it connects.
    if (firstDials.has(link)) return;
    faults++;
    if (kind === 'reset') {
      world.trace(`FAULT reset link ${link.id}`);
      link.reset(random.pick(odds.resetNotify));
    } else {
      world.trace(`FAULT black-hole link ${link.id}`);
      link.stall();
    }
    world.links.delete(link);
  };

  const scheduleFault = (): void => {
    world.clock.after(Math.round(-Math.log(1 - random.fraction()) * meanGap), () => {
      if (world.clock.now > faultEnd) return;
      const live = [...world.links].filter((l) => !l.stalled);
      const roll = random.fraction();
      if (roll < odds.outage) {
        const duration = spread(odds.outageDuration);
        faults++;
        world.trace(`FAULT outage for ${duration} ms`);
        world.outageUntil = world.clock.now + duration;
        for (const l of live) injure(l, random.chance(odds.outageStall) ? 'stall' : 'reset');
      } else if (roll < odds.singleLink && live.length > 0) {
        injure(random.pick(live), random.chance(odds.singleReset) ? 'reset' : 'stall');
      }
      scheduleFault();
    });
  };
  scheduleFault();

  // Network changes under clients, from a generator of their own: the other draws stay as they were.
  const netRandom = new SimRandom(createHash('sha256').update(`network ${seed}`).digest().readUInt32BE(0) >>> 1);
  const changing = netRandom.chance(SIM_OPTIONS.changes.changing);
  drawn.networkChanges = changing;
  const changeGap = netRandom.spread(SIM_OPTIONS.changes.meanGap[0], SIM_OPTIONS.changes.meanGap[1]);
  const scheduleChange = (): void => {
    world.clock.after(Math.round(-Math.log(1 - netRandom.fraction()) * changeGap), () => {
      if (world.clock.now > faultEnd) return;
      const live = world.clients.filter((c) => !c.released);
      if (live.length > 0) {
        const client = netRandom.pick(live);
        const current = client.session.activeLink === undefined ? undefined : client.links.get(client.session.activeLink);
        const gone = current !== undefined && !current.stalled && netRandom.chance(SIM_OPTIONS.changes.oldLinkGone);
        const verify = netRandom.chance(SIM_OPTIONS.changes.verify);
        world.trace(`CHANGE ${client.name}${gone ? `, its link ${current.id} black-holed` : ''}${verify ? ' (verify)' : ''}`);
        if (gone) injure(current, 'stall');
        client.act(() => client.session.migrate(world.clock.now, 'sim network change', verify));
      }
      scheduleChange();
    });
  };
  if (changing) scheduleChange();

  // Aim some faults at handshakes and resumes: shortly after a connection starts.
  const dial = world.dial.bind(world);
  world.dial = (client, linkId) => {
    const first = world.outageUntil;
    if (linkId === 1) world.outageUntil = 0;
    dial(client, linkId);
    world.outageUntil = first;
    const link = client.links.get(linkId);
    if (link && linkId === 1) {
      firstDials.add(link);
      world.clock.after(2 * link.shape.latency, () => firstDials.delete(link));
    }
    if (link && world.clock.now < faultEnd && random.chance(odds.handshake)) {
      const when = random.int(0, Math.ceil(4 * link.shape.latency));
      world.clock.after(when, () => {
        if (!link.stalled) injure(link, random.chance(odds.handshakeReset) ? 'reset' : 'stall');
      });
    }
  };

  for (let i = 0; i < clientCount; i++) {
    const p = plans[i];
    world.clients.push(
      new ClientEndpoint(
        world,
        `client${i}`,
        random.fork(),
        {
          outgoing: p.up,
          incoming: p.down,
          maxWrite: p.maxWrite,
          writePause: p.writePause,
          readPause: p.clientReadPause,
        },
        random.fork(),
      ),
    );
  }

  const failures: string[] = [];
  const finishedAll = (): boolean =>
    world.clients.every((c) => c.released && (c.app!.done || c.errors.length > 0)) && world.nodes.every((n) => (n.endpoint?.live.size ?? 0) === 0);

  try {
    // Run until nothing at all is left to happen: no session, no timer, no
    // packet. Live sessions keep timers, so this ends only once all is released.
    for (let steps = 0; ; steps++) {
      const timeout = world.nextTimeout();
      const next = Math.min(world.clock.nextAt, timeout);
      if (next === Infinity) {
        if (!finishedAll()) failures.push('stuck: nothing left to happen but the run is not finished');
        break;
      }
      if (next > Math.max(faultEnd, world.outageUntil, quietAt) + LIVENESS_BOUND + config.closeLinger) {
        failures.push(`not finished ${LIVENESS_BOUND} ms after the network healed`);
        break;
      }
      if (steps > MAX_STEPS) {
        failures.push('livelock: too many steps');
        break;
      }
      if (timeout <= world.clock.nextAt) {
        world.clock.now = Math.max(world.clock.now, next);
        world.handleTimeouts();
      } else {
        world.clock.runNext();
      }
    }
  } catch (err) {
    failures.push(`exception: ${(err as Error).stack}`);
  }

  let bytes = 0;
  let lost = 0;
  /** Whether the client's session was created by a server instance that died: it may be lost, and only so. */
  const doomed = (c: ClientEndpoint): boolean => {
    const id = c.session.sessionId?.toString('hex');
    return id !== undefined && world.doomed.has(id);
  };
  const instances = world.nodes.flatMap((n) => n.instances);
  const finished = instances.flatMap((server) => server.finished);
  type ServerRecord = (typeof finished)[number];
  /** What the servers' applications recorded of a client's sessions. */
  const recordsOf = (c: ClientEndpoint): ServerRecord[] => finished.filter((r) => r.client === c.name);
  /** A client whose session no server ever opened: none of its data can have been delivered. */
  const neverHeld = (c: ClientEndpoint): boolean => recordsOf(c).length === 0;
  /** A session opened at its early data that ended without the client's CONFIRM. */
  const endedUnconfirmed = (r: ServerRecord): boolean => r.errorCodes.length === 1 && NEVER_CONFIRMED.has(r.errorCodes[0]);
  const lostInFirstTrip = new Set<ClientEndpoint>();
  const keyedRun = world.options.channelKeys !== undefined;
  for (const [i, c] of world.clients.entries()) {
    const lostWithItsNode = doomed(c) && c.errorCodes.length === 1 && c.errorCodes[0] === LOST_WITH_ITS_NODE;
    const lostCode = c.errorCodes.length === 1 ? c.errorCodes[0] : undefined;
    // Keyed, only a client that never connected; without TLS also one that
    // connected and restarted after its server dropped an unconfirmed session.
    const lostBehindHello = lostCode === LOST_IN_FIRST_TRIP && (!keyedRun || !c.grammar.established);
    // Without TLS a client that had WELCOME resumes, and hears that the
    // server dropped the session it never confirmed (a session its node
    // took with it counts as that only if a server ended it unconfirmed).
    const droppedUnconfirmed = !keyedRun && lostCode === LOST_WITH_ITS_NODE && (recordsOf(c).some(endedUnconfirmed) || !doomed(c));
    if (c.session.sentEarlyData && (lostBehindHello || droppedUnconfirmed)) {
      lostInFirstTrip.add(c);
      if (keyedRun ? !neverHeld(c) : !recordsOf(c).every(endedUnconfirmed))
        failures.push(`${c.name} failed in its first round trip, yet a server held its session`);
      failures.push(...c.grammar.violations);
      if (c.app!.failure) failures.push(c.app!.failure);
      if (!c.released) failures.push(`${c.name} never released its session`);
      continue;
    }
    if (lostWithItsNode) {
      lost++;
      // Promptly: once faults and the balancer's lag are over, within one
      // failure detection and one resume attempt (two reconnect delays at most).
      const node = world.nodes[world.doomed.get(c.session.sessionId!.toString('hex'))!];
      const from = Math.max(faultEnd, world.outageUntil, node.diedAt + (world.cluster?.balancerLag ?? 0));
      // Where kernels watch the links and nodes relay, a failure beyond the
      // relay (its link to the owner reset without a word) shows only to the
      // end-to-end path check: three pathCheckIntervals of silence
      // (PROTOCOL.md §5.1; seed 77003818). The relay's kernel does not watch
      // its link to the owner.
      const silence =
        world.options.kernelWatched && world.cluster !== undefined
          ? Math.max(config.failureTimeout, 3 * config.pathCheckInterval)
          : config.failureTimeout;
      const bound = silence + config.handshakeTimeout + 2 * config.reconnectDelayMax + 20 * latency;
      if (c.releasedAt > from + bound)
        failures.push(`${c.name} learnt its session was lost ${(c.releasedAt - from).toFixed(0)} ms after it could have (at most ${bound})`);
    } else {
      for (const e of c.errors) failures.push(`${c.name} error: ${e}`);
      if (doomed(c) && c.errors.length > 0) failures.push(`${c.name}: its node died, yet it did not end with ${LOST_WITH_ITS_NODE}`);
    }
    failures.push(...c.grammar.violations);
    const app = c.app!;
    if (app.failure) failures.push(app.failure);
    if (!lostWithItsNode && app.bytesReceived !== plans[i].down.length)
      failures.push(`${c.name} received ${app.bytesReceived} of ${plans[i].down.length} bytes`);
    // A session that fails is released without 'closed' (the socket's 'close' comes from the adapter).
    if (!c.closed && !lostWithItsNode) failures.push(`${c.name} never closed`);
    if (!c.released) failures.push(`${c.name} never released its session`);
    if (c.released && c.session.pollTimeout() !== undefined) failures.push(`${c.name} keeps a timer after release`);
    bytes += app.bytesReceived + app.bytesWritten;
  }
  for (const server of instances) {
    for (const e of server.errors) failures.push(`${server.name}: ${e}`);
    for (const g of server.grammars.values()) {
      failures.push(...g.violations);
      // A dead process's sessions were never released: they vanished.
      if (!g.released && !server.dead) failures.push(`${server.name}: a session was never released`);
    }
  }
  // A session opened at its early data and never confirmed may end in
  // error only if its client failed in its first round trip too.
  const excused = new Set([...lostInFirstTrip].flatMap((c) => recordsOf(c).filter(endedUnconfirmed)));
  for (const r of finished) {
    if (r.app.failure) failures.push(r.app.failure);
    if (excused.has(r)) continue;
    for (const e of r.errors) failures.push(`${r.app.name} error: ${e}`);
    if (!r.closed) failures.push(`${r.app.name} never closed`);
  }
  // Every session that no death took finished on a server, once; one that
  // a death took did at most once. No server finished a session no client has.
  const clientIds = new Set(world.clients.map((c) => c.session.sessionId?.toString('hex')));
  for (const c of world.clients) {
    if (lostInFirstTrip.has(c)) continue;
    const id = c.session.sessionId?.toString('hex');
    const n = finished.filter((r) => r.sessionId === id).length;
    if (n > 1 || (n === 0 && !doomed(c))) failures.push(`${c.name}'s session finished on ${n} servers`);
  }
  for (const r of finished) if (!clientIds.has(r.sessionId) && !excused.has(r)) failures.push(`${r.app.name} finished a session no client holds`);
  for (const n of world.nodes) {
    const server = n.endpoint;
    if (server === undefined) continue;
    if (server.core.sessionCount !== 0) failures.push(`${server.name} still holds ${server.core.sessionCount} sessions`);
    if (server.core.suspendedCount !== 0) failures.push(`${server.name} still counts ${server.core.suspendedCount} suspended sessions`);
    if (server.core.bufferedBytes !== 0) failures.push(`${server.name} still accounts ${server.core.bufferedBytes} buffered bytes`);
    if (server.core.pendingLinkCount !== 0) failures.push(`${server.name} still has ${server.core.pendingLinkCount} pending links`);
  }
  if (failures.length > 0) {
    for (const c of world.clients) failures.push(`  state ${c.name}: ${c.session.describe()}`);
    for (const n of world.nodes) for (const s of n.endpoint?.live ?? []) failures.push(`  state ${n.endpoint!.name}: ${s.describe()}`);
  }

  return {
    seed,
    drawn,
    failures,
    simTime: world.clock.now,
    faults,
    suspends: world.clients.reduce((n, c) => n + c.suspends, 0),
    resumes: world.clients.reduce((n, c) => n + c.resumes, 0),
    bytes,
    trace: world.recentTrace(),
    nodes: world.nodes.length,
    ...world.stats,
    directoryOutages: world.cluster?.directory.outages ?? 0,
    lost,
    keyed: keyedRun ? 1 : 0,
    earlyData: keyedRun ? world.clients.filter((c) => c.session.sentEarlyData).length : 0,
    lostFirstTrip: keyedRun ? lostInFirstTrip.size : 0,
    plainEarlyRuns: !keyedRun && config.earlyData ? 1 : 0,
    plainEarlyData: keyedRun ? 0 : world.clients.filter((c) => c.session.sentEarlyData).length,
    plainLostFirstTrip: keyedRun ? 0 : lostInFirstTrip.size,
    changing: changing ? 1 : 0,
    migrations: world.clients.reduce((n, c) => n + c.migrations, 0),
  };
}
