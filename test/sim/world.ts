// The simulated world: rocks clients and a rocks server, driven exactly as
// the Node adapters drive them, over a simulated network with faults.

import type { SessionConfig, ServerLimits } from '../../src/protocol/config.js';
import { parseAnnouncement } from '../../src/edp/announcement.js';
import { ServerCore } from '../../src/protocol/server-core.js';
import { Session, type LinkId, type SessionEvent } from '../../src/protocol/session.js';
import { SimApp, type AppPlan } from './app.js';
import { EventGrammar } from './grammar.js';
import { SIM_OPTIONS } from './options.js';
import { Clock, SimLink, type LinkShape } from './network.js';
import type { SimRandom } from './random.js';

const CLIENT = 0;
const SERVER = 1;

export interface WorldOptions {
  config: SessionConfig;
  limits: ServerLimits;
  shape: () => LinkShape;
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
  released = false;
  closed = false;
  readonly grammar: EventGrammar;
  suspends = 0;
  resumes = 0;
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
      case 'error':
        this.errors.push(ev.error.message);
        break;
      case 'closed':
        this.closed = true;
        break;
      case 'released':
        this.released = true;
        break;
      default:
        break;
    }
  }
}

interface ServerRecord {
  app: SimApp;
  errors: string[];
  closed: boolean;
}

export class ServerEndpoint extends Endpoint {
  readonly core: ServerCore;
  /** Every link of the server; the core routes their input to sessions. */
  private readonly serverLinks = new Map<LinkId, SimLink>();
  readonly apps = new Map<Session, SimApp>();
  readonly finished: ServerRecord[] = [];
  private readonly records = new Map<Session, ServerRecord>();
  /** The event grammar of every session the server ever held, opened or not. */
  readonly grammars = new Map<Session, EventGrammar>();
  live = new Set<Session>();
  errors: string[] = [];
  private nextLinkId = 1;
  protected readonly side = SERVER;

  constructor(
    world: World,
    random: SimRandom,
    private readonly planFor: (session: Session) => { plan: AppPlan; random: SimRandom } | undefined,
  ) {
    super(world);
    this.core = new ServerCore(world.options.config, world.options.limits, random);
  }

  /** A new connection arrives. As src/node/server.ts: all its input goes to the core. */
  accept(link: SimLink): void {
    const id = this.nextLinkId++;
    this.serverLinks.set(id, link);
    const now = () => this.world.clock.now;
    link.attach(SERVER, {
      onData: (chunk) => this.fromLink(() => this.core.handleLinkData(id, chunk, now())),
      onClosed: (reason) => {
        this.serverLinks.delete(id);
        this.fromLink(() => this.core.handleLinkClosed(id, now(), reason));
      },
      onDrain: () => this.fromLink(() => this.core.handleLinkDrain(id)),
    });
    this.fromLink(() => this.core.handleLinkOpen(id, now()));
  }

  handleTimeouts(now: number): void {
    if ((this.core.pollTimeout() ?? Infinity) <= now) this.fromLink(() => this.core.handleTimeout(now));
    for (const s of [...this.live]) {
      if ((s.pollTimeout() ?? Infinity) <= now) {
        s.handleTimeout(now);
        this.drive(s);
      }
    }
  }

  nextTimeout(): number {
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
        case 'bind':
          this.live.add(ev.session);
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
          // (a client always sends its announcement at once); anything else
          // taken for an ordinary client would be a failure of EDP.
          const link = this.serverLinks.get(ev.link);
          const seen = parseAnnouncement(ev.initial).kind;
          if (ev.initial.length > 0 && seen !== 'incomplete')
            this.errors.push(`link ${ev.link} taken for an ordinary client (${seen}): ${ev.reason}`);
          else if (link !== undefined && !link.stalled)
            this.errors.push(`link ${ev.link} taken for an ordinary client after ${ev.initial.length} bytes, yet no fault cut it`);
          else this.world.trace(`server: link ${ev.link} cut before its announcement, served as a plain connection`);
          link?.close(SERVER, false);
          this.forget(ev.link);
          break;
        }
        case 'relay':
          this.errors.push(`link ${ev.link}: a single server was asked to relay to node ${ev.nodeId}`);
          break;
        case 'rejected':
          this.world.trace(`server rejected link ${ev.link}: ${ev.error.message}`);
          break;
      }
    }
  }

  /** We closed the link ourselves: the simulated network tells only the far end, so tell the core. */
  private forget(link: LinkId): void {
    this.serverLinks.delete(link);
    this.core.handleLinkClosed(link, this.world.clock.now, 'closed');
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
    if (ev.type !== 'data') w.trace(`server/${session.sessionId?.toString('hex').slice(0, 6)} ${describe(ev)}`);
    let grammar = this.grammars.get(session);
    if (grammar === undefined) {
      grammar = new EventGrammar(`server/${this.grammars.size}`, 'server');
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
        const p = this.planFor(session);
        if (p === undefined) {
          this.errors.push('server: session opened with no plan left');
          break;
        }
        const appNow = new SimApp(`server-app#${this.records.size}`, w.clock, p.random, p.plan, {
          write: (chunk) => {
            const ok = session.write(chunk, w.clock.now);
            this.drive(session);
            return ok;
          },
          end: () => {
            session.end(w.clock.now);
            this.drive(session);
          },
          updateUnread: (n) => {
            session.updateUnread(n, w.clock.now);
            this.drive(session);
          },
        });
        this.apps.set(session, appNow);
        this.records.set(session, { app: appNow, errors: [], closed: false });
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
      case 'error':
        (this.records.get(session)?.errors ?? this.errors).push(ev.error.message);
        break;
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

export class World {
  readonly clock = new Clock();
  readonly random: SimRandom;
  readonly options: WorldOptions;
  readonly clients: ClientEndpoint[] = [];
  server!: ServerEndpoint;
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

  dial(client: ClientEndpoint, linkId: LinkId): void {
    const link = new SimLink(this.clock, this.random, this.nextLinkId++, this.options.shape());
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
    // The client connects after one round trip; the server accepts when the
    // client's final ACK arrives, just ahead of the client's first bytes.
    this.clock.after(rtt, () => {
      if (link.stalled || !client.links.has(linkId)) return;
      client.act(() => client.session.handleLinkOpen(linkId));
    });
    this.clock.after(rtt + link.shape.latency * 0.99, () => {
      // A client that gave up on the attempt before it connected closed it
      // before the server could accept it: the server never sees it.
      if (link.stalled || !link.isOpen(CLIENT)) return;
      this.server.accept(link);
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
    this.server.handleTimeouts(now);
  }

  nextTimeout(): number {
    let t = this.server.nextTimeout();
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
