// The simulated world: rocks clients and rocks server nodes, driven exactly
// as the Node adapters drive them, over a simulated network with faults.
// One server, or several nodes behind a balancer that sends each new link to
// a node at random; a node relays a resume for a session another node holds
// to that node (relay.ts), finding it in a directory (directory.ts). Nodes
// may die (every link of theirs reset, their sessions gone) and restart as a
// new instance with the same node id and address.

import { CHANNEL_MATERIAL_SIZE, channelKeys } from '../../src/protocol/keys.js';
import type { SessionConfig, ServerLimits } from '../../src/protocol/config.js';
import { parseAnnouncement } from '../../src/edp/announcement.js';
import { parseProxyHeader, type ProxyAddress } from '../../src/protocol/proxy-header.js';
import { ownerOf } from '../../src/protocol/routing.js';
import { ServerCore } from '../../src/protocol/server-core.js';
import { Session, type LinkId, type SessionEvent } from '../../src/protocol/session.js';
import { SimApp, type AppPlan } from './app.js';
import type { SimDirectory } from './directory.js';
import { EventGrammar } from './grammar.js';
import { SIM_OPTIONS } from './options.js';
import { Clock, SimLink, type LinkShape } from './network.js';
import type { SimRandom } from './random.js';
import { type RelayOutcome, SimRelay } from './relay.js';

const CLIENT = 0;
const SERVER = 1;

export interface WorldOptions {
  config: SessionConfig;
  limits: ServerLimits;
  shape: () => LinkShape;
  /** Keyed-channel runs (rocks over TLS): every link gets a channel key drawn from this. */
  channelKeys?: SimRandom;
  /**
   * Runs where kernels watch connections (PROTOCOL.md §5.1): every client
   * link and every server link not relayed by another node; a black-holed
   * one is reported to a watching end within failureTimeout + heartbeatInterval.
   */
  kernelWatched?: boolean;
}

/** Who a server session's application plays: the client's plan, seen from the server. */
export interface ServerPlan {
  plan: AppPlan;
  random: SimRandom;
  /** The client at the other end. */
  client: string;
}

/** An endpoint drives sessions the way src/node/driver.ts does. */
abstract class Endpoint {
  constructor(protected readonly world: World) {}

  /** Writes what the session has for each of its links, then handles its events, until it has none. */
  drive(session: Session): void {
    for (let guard = 0; ; guard++) {
      if (guard > 100_000) throw new Error('drive loop does not settle');
      this.flush(session);
      const ev = session.pollEvent();
      if (ev === undefined) break;
      this.onEvent(session, ev);
    }
  }

  protected flush(session: Session): void {
    for (const [id, link] of this.linksOf(session)) {
      const side = this.side;
      for (;;) {
        const room = link.room(side);
        if (!link.isOpen(side)) break;
        const out = session.pollTransmit(id, this.world.clock.now, room);
        if (out === undefined) break;
        link.send(side, out);
        if (link.room(side) <= 0) break;
      }
    }
  }

  protected closeLink(session: Session, ev: Extract<SessionEvent, { type: 'close-link' }>): void {
    const link = this.linksOf(session).get(ev.link);
    if (link === undefined) return;
    this.linksOf(session).delete(ev.link);
    if (ev.final) link.send(this.side, ev.final);
    link.close(this.side, ev.graceful);
  }

  protected abstract readonly side: 0 | 1;
  protected abstract linksOf(session: Session): Map<LinkId, SimLink>;
  protected abstract onEvent(session: Session, ev: SessionEvent): void;
}

export class ClientEndpoint extends Endpoint {
  readonly session: Session;
  readonly links = new Map<LinkId, SimLink>();
  app: SimApp | undefined;
  readonly name: string;
  errors: string[] = [];
  /** The codes of `errors`, in order. */
  errorCodes: string[] = [];
  released = false;
  /** When the session was released. */
  releasedAt = Infinity;
  closed = false;
  readonly grammar: EventGrammar;
  suspends = 0;
  resumes = 0;
  /** Times the session moved to a new link while the old one was open (a network change). */
  migrations = 0;
  protected readonly side = CLIENT;

  constructor(world: World, name: string, random: SimRandom, plan: AppPlan, appRandom: SimRandom) {
    super(world);
    this.name = name;
    this.grammar = new EventGrammar(name, 'client');
    this.session = Session.connect(world.options.config, random, world.clock.now);
    this.app = new SimApp(name, world.clock, appRandom, plan, {
      write: (chunk) => {
        const ok = this.session.write(chunk, world.clock.now);
        this.drive(this.session);
        return ok;
      },
      end: () => this.act(() => this.session.end(world.clock.now)),
      updateUnread: (n) => this.act(() => this.session.updateUnread(n, world.clock.now)),
    });
    this.drive(this.session);
    this.app.start();
  }

  act(fn: () => void): void {
    fn();
    this.drive(this.session);
  }

  protected linksOf(): Map<LinkId, SimLink> {
    return this.links;
  }

  protected onEvent(session: Session, ev: SessionEvent): void {
    const w = this.world;
    if (ev.type !== 'data') w.trace(`${this.name} ${describe(ev)}`);
    this.grammar.see(ev);
    switch (ev.type) {
      case 'dial':
        w.dial(this, ev.link);
        break;
      case 'close-link':
        this.closeLink(session, ev);
        break;
      case 'data':
        this.app?.onData(ev.data);
        break;
      case 'end':
        this.app?.onEnd();
        break;
      case 'writable':
        this.app?.onWritable();
        break;
      case 'suspend':
        this.suspends++;
        break;
      case 'resume':
        this.resumes++;
        break;
      case 'migrate':
        this.migrations++;
        break;
      case 'error':
        this.errors.push(ev.error.message);
        this.errorCodes.push((ev.error as { code?: string }).code ?? 'none');
        break;
      case 'closed':
        this.closed = true;
        break;
      case 'released':
        this.released = true;
        this.releasedAt = w.clock.now;
        break;
      default:
        break;
    }
  }
}

export interface ServerRecord {
  sessionId: string;
  /** The client at the other end. */
  client: string;
  app: SimApp;
  errors: string[];
  errorCodes: string[];
  closed: boolean;
}

export interface ServerEndpointOptions {
  /** The node it runs as; undefined for the lone server of a single-node world (a random node id, no relays). */
  node?: SimNode;
}

export class ServerEndpoint extends Endpoint {
  readonly core: ServerCore;
  readonly node: SimNode | undefined;
  /** Every link of the server; the core routes their input to sessions. */
  private readonly serverLinks = new Map<LinkId, SimLink>();
  /** Who is at the other end of each link (what a socket's remoteAddress says). */
  private readonly remotes = new Map<LinkId, ProxyAddress>();
  /** Links another node relays: the client their PROXY header must name. */
  private readonly relayedFor = new Map<LinkId, ProxyAddress>();
  /** Links our kernel watches (kernelWatched runs): their session hears so once it takes them. */
  private readonly watchedLinks = new Set<LinkId>();
  readonly apps = new Map<Session, SimApp>();
  readonly finished: ServerRecord[] = [];
  private readonly records = new Map<Session, ServerRecord>();
  /** The event grammar of every session the server ever held, opened or not. */
  readonly grammars = new Map<Session, EventGrammar>();
  live = new Set<Session>();
  errors: string[] = [];
  /** The process died: nothing of it runs any more. */
  dead = false;
  /** The id of every session it created (hex). */
  private readonly issued = new Set<string>();
  private nextLinkId = 1;
  protected readonly side = SERVER;

  constructor(
    world: World,
    random: SimRandom,
    /** `link`: the session's link as it opens (a keyed channel opens it before the client knows its id). */
    private readonly planFor: (session: Session, link: SimLink | undefined) => ServerPlan | undefined,
    options: ServerEndpointOptions = {},
  ) {
    super(world);
    this.node = options.node;
    this.core =
      options.node === undefined
        ? new ServerCore(world.options.config, world.options.limits, random)
        : new ServerCore(world.options.config, world.options.limits, random, { owner: { nodeId: options.node.nodeId }, relays: true });
  }

  get name(): string {
    return this.node === undefined ? 'server' : `node${this.node.index}`;
  }

  /**
   * A new connection arrives from `remote`. As src/node/server.ts: all its
   * input goes to the core; `relayedFor`: a node of the deployment relays it
   * for that client.
   */
  accept(link: SimLink, remote: ProxyAddress, relayedFor?: ProxyAddress): void {
    const id = this.nextLinkId++;
    this.serverLinks.set(id, link);
    this.remotes.set(id, remote);
    if (relayedFor !== undefined) this.relayedFor.set(id, relayedFor);
    const now = () => this.world.clock.now;
    link.attach(SERVER, {
      onData: (chunk) => this.fromLink(() => this.core.handleLinkData(id, chunk, now())),
      onClosed: (reason) => {
        this.dropLink(id);
        this.fromLink(() => this.core.handleLinkClosed(id, now(), reason));
      },
      onDrain: () => this.fromLink(() => this.core.handleLinkDrain(id)),
    });
    // A relayed link's connection ends at the relaying node, whose kernel answers for the client.
    if (this.world.options.kernelWatched && relayedFor === undefined) {
      link.watch(SERVER, () => this.world.kernelDetection());
      this.watchedLinks.add(id);
    }
    this.fromLink(() => this.core.handleLinkOpen(id, now(), relayedFor !== undefined, undefined, link.channel));
  }

  /**
   * The process dies: its links are reset, its sessions vanish. Returns the
   * ids of every session it created: a client resuming one of them now
   * learns that its session is unknown, even one the server had dropped
   * unconfirmed (a new instance cannot tell whether it was confirmed).
   */
  kill(): { issued: string[]; held: number } {
    this.dead = true;
    for (const link of this.serverLinks.values()) link.close(SERVER, false);
    this.serverLinks.clear();
    return { issued: [...this.issued], held: this.core.sessionCount };
  }

  handleTimeouts(now: number): void {
    if (this.dead) return;
    if ((this.core.pollTimeout() ?? Infinity) <= now) this.fromLink(() => this.core.handleTimeout(now));
    for (const s of [...this.live]) {
      if ((s.pollTimeout() ?? Infinity) <= now) {
        s.handleTimeout(now);
        this.drive(s);
      }
    }
  }

  nextTimeout(): number {
    if (this.dead) return Infinity;
    let t = this.core.pollTimeout() ?? Infinity;
    for (const s of this.live) t = Math.min(t, s.pollTimeout() ?? Infinity);
    return t;
  }

  private fromLink(input: () => void): void {
    input();
    this.drainCore();
  }

  /** As the Node server's driver: after driving a session, handle what it told the core. */
  override drive(session: Session): void {
    super.drive(session);
    this.drainCore();
  }

  private drainCore(): void {
    for (;;) {
      const ev = this.core.pollEvent();
      if (ev === undefined) break;
      switch (ev.type) {
        case 'session':
          this.issued.add(ev.session.sessionId!.toString('hex'));
          this.live.add(ev.session);
          if (this.watchedLinks.has(ev.link)) ev.session.handleLinkWatched(ev.link, this.world.clock.now);
          break;
        case 'bind':
          this.live.add(ev.session);
          if (this.watchedLinks.has(ev.link)) ev.session.handleLinkWatched(ev.link, this.world.clock.now);
          break;
        case 'drive':
          super.drive(ev.session);
          break;
        case 'close-link': {
          const link = this.serverLinks.get(ev.link);
          if (link === undefined) break;
          if (ev.final) link.send(SERVER, ev.final);
          link.close(SERVER, ev.final !== undefined);
          this.forget(ev.link);
          break;
        }
        case 'send':
          this.serverLinks.get(ev.link)?.send(SERVER, [ev.bytes]);
          break;
        case 'plain': {
          // Only rocks clients live in this world. A link that went silent
          // before its announcement was complete is rightly taken for an
          // ordinary client, but only if a fault black-holed or reset it
          // (a client always sends its announcement at once, a relaying node
          // its PROXY header with it); anything else taken for an ordinary
          // client would be a failure of EDP.
          const link = this.serverLinks.get(ev.link);
          const header = this.relayedFor.has(ev.link) ? parseProxyHeader(ev.initial) : undefined;
          const initial = header?.kind === 'header' ? ev.initial.subarray(header.length) : ev.initial;
          const seen = header?.kind === 'incomplete' ? 'incomplete' : parseAnnouncement(initial).kind;
          if (initial.length > 0 && seen !== 'incomplete') this.errors.push(`link ${ev.link} taken for an ordinary client (${seen}): ${ev.reason}`);
          else if (link !== undefined && !link.stalled)
            this.errors.push(`link ${ev.link} taken for an ordinary client after ${ev.initial.length} bytes, yet no fault cut it`);
          else this.world.trace(`${this.name}: link ${ev.link} cut before its announcement, served as a plain connection`);
          link?.close(SERVER, false);
          this.forget(ev.link);
          break;
        }
        case 'relay': {
          const link = this.serverLinks.get(ev.link);
          const remote = this.remotes.get(ev.link);
          this.dropLink(ev.link);
          if (this.node === undefined) this.errors.push(`link ${ev.link}: a single server was asked to relay to node ${ev.nodeId}`);
          else if (link !== undefined) this.world.relay(this.node, link, ev.nodeId, ev.initial, remote!);
          break;
        }
        case 'client-address': {
          const expected = this.relayedFor.get(ev.link);
          const got = `${ev.address.address}:${ev.address.port}`;
          if (expected === undefined || got !== `${expected.address}:${expected.port}`)
            this.errors.push(`link ${ev.link}: PROXY header names ${got}, the client is ${expected?.address}:${expected?.port}`);
          break;
        }
        case 'rejected':
          this.world.trace(`${this.name} rejected link ${ev.link}: ${ev.error.message}`);
          break;
      }
    }
  }

  /** We closed the link ourselves: the simulated network tells only the far end, so tell the core. */
  private forget(link: LinkId): void {
    this.dropLink(link);
    this.core.handleLinkClosed(link, this.world.clock.now, 'closed');
  }

  private dropLink(link: LinkId): void {
    this.serverLinks.delete(link);
    this.remotes.delete(link);
    this.relayedFor.delete(link);
  }

  protected linksOf(session: Session): Map<LinkId, SimLink> {
    const m = new Map<LinkId, SimLink>();
    for (const id of session.linkIds()) {
      const link = this.serverLinks.get(id);
      if (link !== undefined) m.set(id, link);
    }
    return m;
  }

  protected onEvent(session: Session, ev: SessionEvent): void {
    const w = this.world;
    if (ev.type !== 'data') w.trace(`${this.name}/${session.sessionId?.toString('hex').slice(0, 6)} ${describe(ev)}`);
    let grammar = this.grammars.get(session);
    if (grammar === undefined) {
      grammar = new EventGrammar(`${this.name}/${this.grammars.size}`, 'server');
      this.grammars.set(session, grammar);
    }
    grammar.see(ev);
    const app = this.apps.get(session);
    switch (ev.type) {
      case 'close-link': {
        const link = this.serverLinks.get(ev.link);
        if (link === undefined) break;
        if (ev.final) link.send(SERVER, ev.final);
        link.close(SERVER, ev.graceful);
        this.forget(ev.link);
        break;
      }
      case 'open': {
        const active = session.activeLink;
        const p = this.planFor(session, active === undefined ? undefined : this.serverLinks.get(active));
        if (p === undefined) {
          this.errors.push('session opened with no plan left');
          break;
        }
        // A dead process's application does nothing more.
        const appNow = new SimApp(`${this.name}-app#${this.records.size + this.finished.length}`, w.clock, p.random, p.plan, {
          write: (chunk) => {
            if (this.dead) return false;
            const ok = session.write(chunk, w.clock.now);
            this.drive(session);
            return ok;
          },
          end: () => {
            if (this.dead) return;
            session.end(w.clock.now);
            this.drive(session);
          },
          updateUnread: (n) => {
            if (this.dead) return;
            session.updateUnread(n, w.clock.now);
            this.drive(session);
          },
        });
        this.apps.set(session, appNow);
        this.records.set(session, {
          sessionId: session.sessionId!.toString('hex'),
          client: p.client,
          app: appNow,
          errors: [],
          errorCodes: [],
          closed: false,
        });
        appNow.start();
        break;
      }
      case 'data':
        app?.onData(ev.data);
        break;
      case 'end':
        app?.onEnd();
        break;
      case 'writable':
        app?.onWritable();
        break;
      case 'error': {
        const r = this.records.get(session);
        (r?.errors ?? this.errors).push(ev.error.message);
        r?.errorCodes.push((ev.error as { code?: string }).code ?? 'unknown');
        break;
      }
      case 'closed': {
        const r = this.records.get(session);
        if (r) r.closed = true;
        break;
      }
      case 'released': {
        this.live.delete(session);
        const r = this.records.get(session);
        if (r) this.finished.push(r);
        this.records.delete(session);
        this.apps.delete(session);
        break;
      }
      default:
        break;
    }
  }
}

/** A server node: its node id and address stay; the process (endpoint) may die and restart. */
export class SimNode {
  /** The instance running now; undefined while the node is down. */
  endpoint: ServerEndpoint | undefined;
  /** Every instance it ran, the dead ones included. */
  readonly instances: ServerEndpoint[] = [];
  /** Links it is carrying to other nodes. */
  readonly relays = new Set<SimRelay<SimNode>>();
  /** When it last died. */
  diedAt = -Infinity;
  /** When it will die next (first dials stay away from a node about to die). */
  deathAt = Infinity;

  constructor(
    readonly index: number,
    readonly nodeId: number,
    readonly address: ProxyAddress,
  ) {}
}

/** How a world of several nodes behaves (drawn per run from SIM_OPTIONS.cluster). */
export interface ClusterOptions {
  /** The shape of a link between two nodes. */
  nodeShape: () => LinkShape;
  /** How long the balancer still sends new links to a dead node. */
  balancerLag: number;
  /** The balancer never sends a resume to its session's node while another is up. */
  avoidOwner: boolean;
  /** How long a dead node's directory entry lasts. */
  lease: number;
  directory: SimDirectory<SimNode>;
}

/** What happened across the nodes, for the run's figures. */
export interface ClusterStats {
  relayed: number;
  refused: number;
  unreachable: number;
  deaths: number;
  restarts: number;
}

export class World {
  readonly clock = new Clock();
  readonly random: SimRandom;
  readonly options: WorldOptions;
  readonly clients: ClientEndpoint[] = [];
  /** The server nodes: one, or several behind the balancer (then `cluster` is set). */
  readonly nodes: SimNode[] = [];
  cluster: ClusterOptions | undefined;
  /** Makes a node's next instance (the scenario's, so that it can plan each session's application). */
  makeEndpoint!: (node: SimNode) => ServerEndpoint;
  /** Sessions created by a node's instance that died (hex id -> node index): these, and only these, may be lost. */
  readonly doomed = new Map<string, number>();
  readonly stats: ClusterStats = { relayed: 0, refused: 0, unreachable: 0, deaths: 0, restarts: 0 };
  /** A new link from one node to another: the scenario may aim a fault at it. */
  onNodeLink: (link: SimLink) => void = () => {};
  private nextLinkId = 1;
  /** Links currently carrying something, for the fault injector. */
  readonly links = new Set<SimLink>();
  /** Until then, new connections hang or are refused. */
  outageUntil = 0;
  verbose = false;

  /** `traceLines` receives the last 400 lines of the trace. */
  constructor(
    random: SimRandom,
    options: WorldOptions,
    private readonly traceLines: string[] = [],
  ) {
    this.random = random;
    this.options = options;
  }

  trace(line: string): void {
    const text = `${this.clock.now.toFixed(1).padStart(9)} ${line}`;
    if (this.verbose) console.log(text);
    this.traceLines.push(text);
    if (this.traceLines.length > 400) this.traceLines.shift();
  }

  recentTrace(): string[] {
    return this.traceLines;
  }

  /** How long a watching kernel takes to find a black-holed connection dead: its probes' bound (PROTOCOL.md §5.1). */
  kernelDetection(): number {
    const { failureTimeout, heartbeatInterval } = this.options.config;
    return failureTimeout + this.random.fraction() * heartbeatInterval;
  }

  dial(client: ClientEndpoint, linkId: LinkId): void {
    const link = new SimLink(this.clock, this.random, this.nextLinkId++, this.options.shape());
    const material = this.options.channelKeys?.bytes(CHANNEL_MATERIAL_SIZE);
    link.channel = material === undefined ? undefined : channelKeys(material);
    client.links.set(linkId, link);
    link.attach(CLIENT, {
      onData: (chunk) => client.act(() => client.session.handleLinkData(linkId, chunk, this.clock.now)),
      onClosed: (reason) => {
        client.links.delete(linkId);
        this.links.delete(link);
        client.act(() => client.session.handleLinkClosed(linkId, this.clock.now, reason));
      },
      onDrain: () => client.drive(client.session),
    });
    const rtt = 2 * link.shape.latency;
    if (this.clock.now < this.outageUntil) {
      // The path is down: the SYN vanishes, or something answers with a refusal.
      if (this.random.chance(SIM_OPTIONS.faults.outageRefuses)) this.clock.after(rtt, () => link.fail(CLIENT, 'ECONNREFUSED'));
      return;
    }
    this.links.add(link);
    const node = this.balance(linkId === 1, link.shape.latency, client.session.sessionId);
    if (this.nodes.length > 1) this.trace(`${client.name}: balancer sends link ${link.id} to node${node.index}`);
    const address = { address: `10.0.0.${this.clients.indexOf(client) + 1}`, port: 1024 + (link.id % 60_000) };
    this.open(link, node, address, () => {
      // As src/node/driver.ts: only a HELLO takes the channel's key.
      const channel = client.session.sessionId === undefined ? link.channel : undefined;
      if (!client.links.has(linkId)) return;
      if (this.options.kernelWatched) link.watch(CLIENT, () => this.kernelDetection());
      client.act(() => {
        if (this.options.kernelWatched) client.session.handleLinkWatched(linkId, this.clock.now);
        client.session.handleLinkOpen(linkId, channel);
      });
    });
  }

  /**
   * The balancer: a new link goes to a node drawn at random among those it
   * takes for up, a dead node included until its health check notices
   * (balancerLag). A client's first link goes to a node that is up and not
   * about to die: a first connection that fails is an error by design.
   * With avoidOwner, a resume goes to any node but the one its session id
   * names, while one is up.
   */
  private balance(first: boolean, latency: number, sessionId: Buffer | undefined): SimNode {
    if (this.nodes.length === 1) return this.nodes[0];
    const now = this.clock.now;
    const { balancerLag, avoidOwner } = this.cluster!;
    let choices = first
      ? this.nodes.filter((n) => n.endpoint !== undefined && n.deathAt > now + 4 * latency)
      : this.nodes.filter((n) => n.endpoint !== undefined || now < n.diedAt + balancerLag);
    const owner = sessionId === undefined ? undefined : ownerOf(sessionId)?.nodeId;
    if (avoidOwner && owner !== undefined) {
      const others = choices.filter((n) => n.nodeId !== owner && n.endpoint !== undefined);
      if (others.length > 0) choices = others;
    }
    return this.random.pick(choices);
  }

  /**
   * Connects `link` (its connecting end is side 0) to `node`, from `remote`.
   * After one round trip the connecting end hears it connected, or refused
   * when no process listens there (the node is down); the node accepts when
   * the final ACK arrives, just ahead of the first bytes, unless the process
   * that answered has died meanwhile (then the link is reset).
   * `relayedFor`: another node relays it for that client.
   */
  private open(link: SimLink, node: SimNode, remote: ProxyAddress, opened: () => void, relayedFor?: ProxyAddress): void {
    const rtt = 2 * link.shape.latency;
    const endpoint = node.endpoint;
    if (endpoint === undefined) {
      this.clock.after(rtt, () => {
        if (!link.stalled) link.fail(CLIENT, 'ECONNREFUSED');
      });
      return;
    }
    this.clock.after(rtt, () => {
      if (!link.stalled) opened();
    });
    this.clock.after(rtt + link.shape.latency * 0.99, () => {
      // A connecting end that gave up on the attempt before it connected
      // closed it before the node could accept it: the node never sees it.
      if (link.stalled || !link.isOpen(CLIENT)) return;
      if (node.endpoint !== endpoint) link.close(SERVER, false);
      else endpoint.accept(link, remote, relayedFor);
    });
  }

  /**
   * `from` carries a client's link, whose first bytes it read, to the node
   * holding its session. Links between nodes have their own latency and
   * bandwidth (SIM_OPTIONS.cluster) and take faults like any link: a fault
   * may pick one, an outage cuts it, and one in a few is cut as it starts;
   * but new links between nodes connect during an outage (it cuts the
   * clients' path, not the nodes' network).
   */
  relay(from: SimNode, client: SimLink, nodeId: number, initial: Buffer, source: ProxyAddress): void {
    const cluster = this.cluster!;
    let upstream: SimLink | undefined;
    const relay: SimRelay<SimNode> = new SimRelay<SimNode>(
      {
        clock: this.clock,
        trace: (line) => this.trace(`node${from.index}: ${line}`),
        addressOf: (id) => cluster.directory.addressOf(id),
        resolve: (id, done) => cluster.directory.resolve(id, done),
        connect: (node, opened) => {
          const link = new SimLink(this.clock, this.random, this.nextLinkId++, cluster.nodeShape());
          upstream = link;
          this.links.add(link);
          this.onNodeLink(link);
          this.open(link, node, from.address, opened, source);
          return link;
        },
        outcome: (kind: RelayOutcome) => this.stats[kind]++,
      },
      client,
      initial,
      nodeId,
      source,
      from.address,
      () => {
        from.relays.delete(relay);
        if (upstream !== undefined) this.links.delete(upstream);
      },
    );
    from.relays.add(relay);
    relay.start();
  }

  /** A node's next instance starts: it registers in the directory and takes links. */
  startNode(node: SimNode): void {
    const endpoint = this.makeEndpoint(node);
    node.endpoint = endpoint;
    node.instances.push(endpoint);
    this.cluster?.directory.register(node.nodeId, node);
  }

  /** The node's process dies: every link of it is reset, its sessions are gone. */
  killNode(node: SimNode): void {
    const endpoint = node.endpoint;
    if (endpoint === undefined) return;
    const { issued, held } = endpoint.kill();
    this.trace(`NODE node${node.index} dies, holding ${held} sessions`);
    for (const id of issued) this.doomed.set(id, node.index);
    for (const r of [...node.relays]) r.kill();
    node.endpoint = undefined;
    node.diedAt = this.clock.now;
    node.deathAt = Infinity;
    this.stats.deaths++;
    this.cluster?.directory.leave(node.nodeId, this.cluster.lease);
  }

  /** The node starts again, as a new instance, once the directory answers (it must register). */
  restartNode(node: SimNode): void {
    this.cluster!.directory.whenReachable(() => {
      this.trace(`NODE node${node.index} restarts`);
      this.stats.restarts++;
      this.startNode(node);
    });
  }

  handleTimeouts(): void {
    const now = this.clock.now;
    for (const c of this.clients) {
      if ((c.session.pollTimeout() ?? Infinity) <= now) {
        c.session.handleTimeout(now);
        c.drive(c.session);
      }
    }
    for (const n of this.nodes) n.endpoint?.handleTimeouts(now);
  }

  nextTimeout(): number {
    let t = Infinity;
    for (const n of this.nodes) t = Math.min(t, n.endpoint?.nextTimeout() ?? Infinity);
    for (const c of this.clients) t = Math.min(t, c.session.pollTimeout() ?? Infinity);
    return t;
  }
}

function describe(ev: SessionEvent): string {
  switch (ev.type) {
    case 'close-link':
      return `close-link ${ev.link}${ev.graceful ? ' graceful' : ''}${ev.final ? ` +${ev.final.length} frames` : ''}`;
    case 'dial':
    case 'link-active':
      return `${ev.type} ${ev.link}`;
    case 'suspend':
      return `suspend (${ev.reason})`;
    case 'resume':
      return `resume after ${ev.outage.toFixed(1)} ms, replayed ${ev.replayedOut} out / ${ev.replayedIn} in`;
    case 'error':
      return `error ${ev.error.message}`;
    case 'reconnect-attempt':
      return `reconnect-attempt #${ev.attempt} after ${ev.delay} ms`;
    default:
      return ev.type;
  }
}
