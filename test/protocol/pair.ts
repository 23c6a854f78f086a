// A deterministic pair for scenario tests of the session state machine, in the
// manner of quinn-proto's `Pair`: a real client Session and a real ServerCore
// (with the server Sessions it creates) joined by in-memory links on a
// simulated clock. The harness only carries bytes, tells each end when a link
// opens or closes, and keeps time; it drives the sessions the way
// src/node/driver.ts and src/node/server.ts do (flush every link, then one
// event, until there are none).
//
// `step()` runs what is due next: deliveries in flight, then every timer
// (`pollTimeout`) that has come due, jumping the clock to that moment. Faults
// are explicit: cut a link (both ends hear a reset), black-hole it (everything
// dropped, nobody told), hold one direction and release or drop what it held,
// and decide how each dial ends. A raw peer stands in for either end to send
// frames built with src/protocol/frames.ts, for the paths a correct peer never
// takes.

import { createHash } from 'node:crypto';
import { encodeAnnouncement, parseAnnouncement, ROCKS } from '../../src/edp/announcement.js';
import { resolveServerLimits, resolveSessionConfig, type ServerLimitOptions, type SessionOptions } from '../../src/protocol/config.js';
import { codeFromWire } from '../../src/protocol/errors.js';
import { FrameParser, FrameType, type Frame } from '../../src/protocol/frames.js';
import type { RandomSource } from '../../src/protocol/random.js';
import { ServerCore, type ServerEvent } from '../../src/protocol/server-core.js';
import { CHANNEL_MATERIAL_SIZE, channelKeys } from '../../src/protocol/keys.js';
import { Session, type ChannelKeys, type LinkId, type SessionEvent } from '../../src/protocol/session.js';
import { Clock } from '../sim/network.js';
import { SimRandom } from '../sim/random.js';

export const CLIENT_ANNOUNCEMENT = encodeAnnouncement([ROCKS]);
export const SERVER_ANNOUNCEMENT = encodeAnnouncement([ROCKS]);

// ---- event names ---------------------------------------------------------------
//
// Tests name session events by these labels. A renamed event type is a
// one-line change here (the compiler points at it); the tests keep reading
// the same.

const LABELS = {
  dial: 'dial',
  'close-link': 'close-link',
  connect: 'connect',
  open: 'open',
  'link-active': 'link-active',
  data: 'data',
  end: 'end',
  'fin-acked': 'fin-acked',
  writable: 'writable',
  suspend: 'suspend',
  resume: 'resume',
  'reconnect-attempt': 'reconnect-attempt',
  migrate: 'migrate',
  timeout: 'timeout',
  closed: 'closed',
  error: 'error',
  released: 'released',
} as const satisfies { [K in SessionEvent['type']]: string };

export type Label = (typeof LABELS)[keyof typeof LABELS];
type ByLabel = { [K in SessionEvent['type'] as (typeof LABELS)[K]]: Extract<SessionEvent, { type: K }> };
export type Timed<E> = E & { at: number };

/** A short line per event: its label and what tells it apart (link, attempt, error code). */
function describe(ev: SessionEvent): string {
  const label = LABELS[ev.type];
  switch (ev.type) {
    case 'dial':
    case 'link-active':
      return `${label} #${ev.link}`;
    case 'close-link':
      return `${label} #${ev.link}${ev.graceful ? ' graceful' : ''}`;
    case 'reconnect-attempt':
      return `${label} ${ev.attempt}`;
    case 'error':
      return `${label} ${(ev.error as { code?: string }).code ?? ev.error.message}`;
    default:
      return label;
  }
}

/** The events one session gave its application, in order, with the time of each. */
export class EventLog {
  readonly all: Timed<SessionEvent>[] = [];
  private taken = 0;

  push(ev: SessionEvent, at: number): void {
    this.all.push({ ...ev, at });
  }

  /** The events since the last take(), described, without 'data' (tests check the bytes instead). */
  take(): string[] {
    const fresh = this.all.slice(this.taken);
    this.taken = this.all.length;
    return fresh.filter((e) => e.type !== 'data').map(describe);
  }

  /** Every event so far, described, without 'data'. */
  names(): string[] {
    return this.all.filter((e) => e.type !== 'data').map(describe);
  }

  /** The events with this label, typed. */
  of<L extends Label>(label: L): Timed<ByLabel[L]>[] {
    return this.all.filter((e) => LABELS[e.type] === label) as Timed<ByLabel[L]>[];
  }

  /** When the one event with this label happened. */
  at(label: Label): number {
    const found = this.of(label);
    if (found.length !== 1) throw new Error(`expected one '${label}' event, found ${found.length}: ${this.names().join(', ')}`);
    return found[0].at;
  }
}

// ---- the wire ------------------------------------------------------------------

/** A frame as a short line: `HELLO`, `DATA 0+5` (offset + length), `ACK 5`, `FIN 5`, `ERROR(4)`... */
export function frameName(f: Frame): string {
  switch (f.type) {
    case FrameType.DATA:
      return `DATA ${f.offset}+${f.data.length}`;
    case FrameType.ACK:
      return `ACK ${f.received}`;
    case FrameType.FIN:
      return `FIN ${f.offset}`;
    case FrameType.ERROR:
      return `ERROR(${f.code})`;
    case FrameType.PACE:
      return `PACE ${f.interval}`;
    default:
      return Object.entries(FrameType).find(([, v]) => v === f.type)![0];
  }
}

/** Reads one direction of a link as the peer would: an EDP announcement, then frames. */
class WireReader {
  readonly frames: Frame[] = [];
  readonly names: string[] = [];
  /** When each entry of `names` was put on the wire. */
  readonly times: number[] = [];
  private announcement: Buffer | undefined = Buffer.alloc(0);
  private readonly parser = new FrameParser();
  private broken = false;

  push(bytes: Buffer, at: number): void {
    if (this.broken) return;
    this.read(bytes);
    while (this.times.length < this.names.length) this.times.push(at);
  }

  private read(bytes: Buffer): void {
    if (this.announcement !== undefined) {
      const all = Buffer.concat([this.announcement, bytes]);
      const r = parseAnnouncement(all);
      if (r.kind === 'incomplete') {
        this.announcement = all;
        return;
      }
      this.announcement = undefined;
      if (r.kind === 'announcement') {
        this.names.push('EDP');
        bytes = all.subarray(r.length);
      } else {
        bytes = all; // no announcement: frames (or garbage) from the first byte
      }
    }
    this.parser.push(bytes);
    try {
      for (let f = this.parser.next(); f !== undefined; f = this.parser.next()) {
        this.frames.push(f);
        this.names.push(frameName(f));
      }
    } catch {
      this.broken = true;
      this.names.push('(malformed)');
    }
  }
}

// ---- links ---------------------------------------------------------------------

export type Side = 'client' | 'server';
const other = (side: Side): Side => (side === 'client' ? 'server' : 'client');

/** What sits at one end of a link. */
interface End {
  data(chunk: Buffer): void;
  /** The peer closed: gracefully (an end of stream after its bytes) or by a reset. */
  closed(graceful: boolean, reason: string): void;
}

type InFlight = { kind: 'bytes'; bytes: Buffer } | { kind: 'close'; graceful: boolean; reason: string };

/** One transport connection, delivering each direction in order after `latency`. */
export class Link {
  readonly ends: Record<Side, End | undefined> = { client: undefined, server: undefined };
  /** Frames each side put on the wire (whether or not they arrived). */
  private readonly readers: Record<Side, WireReader> = { client: new WireReader(), server: new WireReader() };
  private readonly held: Record<Side, InFlight[] | undefined> = { client: undefined, server: undefined };
  private readonly lastArrival: Record<Side, number> = { client: 0, server: 0 };
  /** A side that closed its end, or heard a reset, sends and hears nothing more. */
  private readonly done: Record<Side, boolean> = { client: false, server: false };
  /** A side that was told the peer closed is told nothing more (after a graceful close it may still send). */
  private readonly told: Record<Side, boolean> = { client: false, server: false };
  /** Bumped by a cut or a black hole: whatever was in flight before is lost. */
  private epoch = 0;
  private blackholed = false;

  constructor(
    private readonly pair: Pair,
    readonly id: LinkId,
  ) {}

  /** The frames `side` sent on this link, as short lines ('EDP' for its announcement). */
  sentBy(side: Side): string[] {
    return this.readers[side].names;
  }

  framesSentBy(side: Side): Frame[] {
    return this.readers[side].frames;
  }

  /** When `side` sent each frame whose short line starts with `prefix` ('ACK', 'DATA 0+5'...). */
  timesOf(side: Side, prefix: string): number[] {
    const r = this.readers[side];
    return r.times.filter((_, i) => r.names[i].startsWith(prefix));
  }

  send(from: Side, bytes: Buffer): void {
    if (this.done[from] || bytes.length === 0) return;
    this.readers[from].push(bytes, this.pair.now);
    this.transmit(from, { kind: 'bytes', bytes });
  }

  /** `from` closes its end: graceful after the bytes it sent, or a reset. */
  close(from: Side, graceful: boolean): void {
    if (this.done[from]) return;
    this.done[from] = true;
    this.transmit(from, { kind: 'close', graceful, reason: graceful ? 'closed by peer' : 'ECONNRESET' });
  }

  /** From now on what `from` sends is held back, until release() or dropHeld(). */
  hold(from: Side): void {
    this.held[from] ??= [];
  }

  /** Sends on what `from` held, in order, as if it had just been sent (even after a cut that kept it). */
  release(from: Side): void {
    const items = this.held[from] ?? [];
    this.held[from] = undefined;
    for (const item of items) this.schedule(from, item);
  }

  /** Loses what `from` held; later sends pass again. */
  dropHeld(from: Side): void {
    this.held[from] = undefined;
  }

  /**
   * A reset: each end in `tell` hears ECONNRESET now, the others hear nothing
   * more, and nothing sent from now on passes. What is in flight (or held) is
   * lost, unless `keepInFlight`: then it still arrives (or can be released)
   * at an end that was not told, as when only the client's side of a path failed.
   */
  cut(tell: Side[] = ['client', 'server'], { keepInFlight = false } = {}): void {
    if (!keepInFlight) {
      this.epoch++;
      this.held.client = this.held.server = undefined;
    }
    this.blackholed = true;
    for (const side of tell) this.tellClosed(side, false, 'ECONNRESET');
  }

  /** Everything in flight and everything later is dropped, and nobody is told. */
  blackhole(): void {
    this.cut([]);
  }

  private transmit(from: Side, item: InFlight): void {
    if (this.blackholed) return;
    const held = this.held[from];
    if (held !== undefined) {
      held.push(item);
      return;
    }
    this.schedule(from, item);
  }

  private schedule(from: Side, item: InFlight): void {
    const to = other(from);
    const arrival = Math.max(this.pair.now + this.pair.latency, this.lastArrival[to]);
    this.lastArrival[to] = arrival;
    const epoch = this.epoch;
    this.pair.clock.at(arrival, () => {
      if (epoch !== this.epoch) return;
      if (item.kind === 'close') this.tellClosed(to, item.graceful, item.reason);
      else if (!this.done[to] && !this.told[to]) {
        this.pair.lastHeard[to] = this.pair.now;
        this.ends[to]?.data(item.bytes);
      }
    });
  }

  private tellClosed(side: Side, graceful: boolean, reason: string): void {
    if (this.done[side] || this.told[side]) return;
    this.told[side] = true;
    if (!graceful) this.done[side] = true;
    this.ends[side]?.closed(graceful, reason);
  }
}

// ---- the two kinds of peers ------------------------------------------------------

/** A real session and what its application saw. */
export class Peer {
  readonly events = new EventLog();
  private readonly chunks: Buffer[] = [];
  /** The links the session uses, by its own link ids. */
  readonly links = new Map<LinkId, Link>();

  constructor(
    private readonly pair: Pair,
    readonly session: Session,
  ) {}

  /** Every data byte delivered to the application, in order. */
  get received(): Buffer {
    return Buffer.concat(this.chunks);
  }

  write(data: string | Buffer): boolean {
    const ok = this.session.write(typeof data === 'string' ? Buffer.from(data) : data, this.pair.now);
    this.pair.drive(this);
    return ok;
  }

  end(): void {
    this.session.end(this.pair.now);
    this.pair.drive(this);
  }

  abort(message?: string): void {
    this.session.abort(this.pair.now, message);
    this.pair.drive(this);
  }

  /** Client: the network changed under the session (src/node/network-watch.ts). */
  migrate(reason: string, verify = false): void {
    this.session.migrate(this.pair.now, reason, verify);
    this.pair.drive(this);
  }

  /** The application reads everything delivered so far. */
  read(): void {
    this.session.updateUnread(0, this.pair.now);
    this.pair.drive(this);
  }

  setIdleTimeout(ms: number): void {
    this.session.setIdleTimeout(ms, this.pair.now);
    this.pair.drive(this);
  }

  /** @internal the pair records an event. */
  saw(ev: SessionEvent): void {
    this.events.push(ev, this.pair.now);
    if (ev.type === 'data') this.chunks.push(Buffer.from(ev.data));
  }
}

/** A peer the test speaks for: it sends raw bytes and keeps what it receives. */
export class RawPeer implements End {
  link: Link | undefined;
  private readonly reader = new WireReader();
  /** How the other end closed the link, once it did. */
  closedBy: { graceful: boolean; reason: string } | undefined;

  constructor(private readonly side: Side) {}

  /** What arrived, as short lines ('EDP' for an announcement). */
  get received(): string[] {
    return this.reader.names;
  }

  get frames(): Frame[] {
    return this.reader.frames;
  }

  /** The last frame of this type that arrived. */
  last<T extends Frame['type']>(type: T): Extract<Frame, { type: T }> {
    const f = [...this.reader.frames].reverse().find((x) => x.type === type);
    if (f === undefined) throw new Error(`no frame of type ${type} arrived; got ${this.received.join(', ')}`);
    return f as Extract<Frame, { type: T }>;
  }

  /** The ERROR frames that arrived, as error codes. */
  get errors(): string[] {
    return this.reader.frames.filter((f) => f.type === FrameType.ERROR).map((f) => codeFromWire((f as { code: number }).code));
  }

  send(...buffers: Buffer[]): void {
    if (this.link === undefined) throw new Error('the raw peer has no link yet');
    this.link.send(this.side, Buffer.concat(buffers));
  }

  close(graceful = true): void {
    this.link?.close(this.side, graceful);
  }

  data(chunk: Buffer): void {
    this.reader.push(chunk, 0);
  }

  closed(graceful: boolean, reason: string): void {
    this.closedBy = { graceful, reason };
  }
}

/** A fake server to plan a dial to (PairOptions.dials, Pair.planDials): the test speaks for it. */
export function fakeServer(): RawPeer {
  return new RawPeer('server');
}

// ---- the pair ----------------------------------------------------------------------

/**
 * How a client's dial ends:
 * - 'connect': the transport connects after one latency and reaches the server;
 * - 'refuse': the transport fails after one latency with ECONNREFUSED;
 * - 'drop': the transport closes before connecting, with no error given;
 * - 'hang': nothing ever happens (the SYN is black-holed);
 * - 'silent': it connects, but to a middlebox: nothing reaches the server, nothing comes back;
 * - a RawPeer: it connects to that fake server.
 */
export type DialPlan = 'connect' | 'refuse' | 'drop' | 'hang' | 'silent' | RawPeer;

export interface PairOptions {
  /** Options of both ends, then of each end. */
  options?: SessionOptions;
  client?: SessionOptions;
  server?: SessionOptions;
  limits?: ServerLimitOptions;
  /** One-way delay of every link (ms). Default 10. */
  latency?: number;
  seed?: number;
  /** Fixes the client's backoff jitter (its `fraction()` draws) to this value in [0, 1). */
  jitter?: number;
  /** Start the client at time 0. Default true; false for tests that only use raw clients. */
  connect?: boolean;
  /** How the client's first dials end (see DialPlan); 'connect' for the rest. */
  dials?: DialPlan[];
  /** Every link is a keying channel, as TLS (PROTOCOL.md §15.2): both ends get its key and id. */
  keyed?: boolean;
  /** Whose kernel watches every link for a dead path (PROTOCOL.md §5.1), as the Node adapters report it. Default neither. */
  watched?: { client?: boolean; server?: boolean };
}

/** Raw links get ids from here, apart from the client's own. */
const RAW_LINK_IDS = 1000;

export class Pair {
  readonly clock = new Clock();
  readonly latency: number;
  readonly core: ServerCore;
  /** What ServerCore reported, in order, described ('session #1', 'rejected #1001 ERR_ROCKS_VERSION'...). */
  readonly coreEvents: Timed<ServerEvent>[] = [];
  /** Every server session, in the order they were created. */
  readonly servers: Peer[] = [];
  /** Every link, by id (the client's link id; raw links from 1000). */
  readonly links = new Map<LinkId, Link>();
  /** When each side last received a byte on any link. */
  readonly lastHeard: Record<Side, number> = { client: -Infinity, server: -Infinity };
  /** How the next dials end, first to last; 'connect' when empty. */
  readonly dialPlans: DialPlan[] = [];
  /** Each new link leaves from the local address of the current one (the driver's samePath). */
  samePath = false;
  private readonly _client: Peer | undefined;
  private readonly serverPeers = new Map<Session, Peer>();
  /** Which server session owns each server-side link. */
  private nextRawLink = RAW_LINK_IDS;
  private stepsAtNow = 0;
  private readonly keyed: boolean;
  private readonly watched: { client: boolean; server: boolean };

  constructor(opts: PairOptions = {}) {
    this.latency = opts.latency ?? 10;
    this.keyed = opts.keyed ?? false;
    this.watched = { client: opts.watched?.client ?? false, server: opts.watched?.server ?? false };
    const seed = opts.seed ?? 14;
    const serverConfig = resolveSessionConfig({ ...opts.options, ...opts.server });
    this.core = new ServerCore(serverConfig, resolveServerLimits(opts.limits), new SimRandom(seed + 1));
    this.dialPlans.push(...(opts.dials ?? []));
    if (opts.connect === false) return;
    const random = new SimRandom(seed);
    const source: RandomSource = opts.jitter === undefined ? random : { bytes: (n) => random.bytes(n), fraction: () => opts.jitter! };
    const session = Session.connect(resolveSessionConfig({ ...opts.options, ...opts.client }), source, this.now);
    this._client = new Peer(this, session);
    this.drive(this._client);
  }

  get now(): number {
    return this.clock.now;
  }

  get client(): Peer {
    if (this._client === undefined) throw new Error('this pair has no client');
    return this._client;
  }

  /** The server session (the most recent one, if there were several). */
  get server(): Peer {
    const s = this.servers.at(-1);
    if (s === undefined) throw new Error('the server holds no session yet');
    return s;
  }

  link(id: LinkId): Link {
    const l = this.links.get(id);
    if (l === undefined) throw new Error(`no link #${id}`);
    return l;
  }

  /** The link currently carrying the client's session. */
  get activeLink(): Link {
    const id = this.client.session.activeLink;
    if (id === undefined) throw new Error(`the client has no active link (${this.client.session.describe()})`);
    return this.link(id);
  }

  /** ServerCore's events, described: 'session #1', 'bind #2', 'rejected #1000 ERR_ROCKS_VERSION', 'close-link #1000'... */
  coreNames(): string[] {
    return this.coreEvents
      .filter((e) => e.type !== 'drive' && e.type !== 'send')
      .map((e) => {
        switch (e.type) {
          case 'rejected':
            return `rejected #${e.link} ${e.error.code}`;
          default:
            return `${e.type} #${e.link}`;
        }
      });
  }

  // ---- time ------------------------------------------------------------------

  /** When something next happens: a delivery or a timer. */
  nextWakeUp(): number {
    let t = this.clock.nextAt;
    if (this._client !== undefined) t = Math.min(t, this._client.session.pollTimeout() ?? Infinity);
    t = Math.min(t, this.core.pollTimeout() ?? Infinity);
    for (const s of this.serverPeers.keys()) t = Math.min(t, s.pollTimeout() ?? Infinity);
    return t;
  }

  /** Jumps to the next wake-up and runs what is due: deliveries first, then timers. False when nothing is left. */
  step(): boolean {
    const t = this.nextWakeUp();
    if (t === Infinity) return false;
    // A timer that stays due after it ran would spin here forever: fail instead.
    this.stepsAtNow = t > this.clock.now ? 0 : this.stepsAtNow + 1;
    if (this.stepsAtNow > 10_000) throw new Error(`a timer stays due at ${t} ms without progress (client: ${this._client?.session.describe()})`);
    if (t > this.clock.now) this.clock.now = t;
    while (this.clock.nextAt <= this.now) this.clock.runNext();
    const now = this.now;
    if (this._client !== undefined && (this._client.session.pollTimeout() ?? Infinity) <= now) {
      this._client.session.handleTimeout(now);
      this.drive(this._client);
    }
    if ((this.core.pollTimeout() ?? Infinity) <= now) {
      this.core.handleTimeout(now);
      this.drainCore();
    }
    for (const [s, peer] of [...this.serverPeers]) {
      if ((s.pollTimeout() ?? Infinity) <= now) {
        s.handleTimeout(now);
        this.drive(peer);
      }
    }
    return true;
  }

  /** Runs everything due within `ms`, then sets the clock to exactly now + ms. */
  runFor(ms: number): void {
    const until = this.now + ms;
    for (let guard = 0; this.nextWakeUp() <= until; guard++) {
      if (guard > 1_000_000) throw new Error('the pair does not settle');
      this.step();
    }
    this.clock.now = until;
  }

  /** Steps until `done()` holds; fails if that takes more than `within` ms of simulated time. */
  runUntil(done: () => boolean, within = 60_000): void {
    const limit = this.now + within;
    while (!done()) {
      if (this.nextWakeUp() > limit) throw new Error(`not done within ${within} ms (client: ${this._client?.session.describe()})`);
      this.step();
    }
  }

  /** Steps until the client's session is open and the server has handed its session to the application. */
  handshake(): void {
    this.runUntil(() => this.client.session.state === 'open' && this.servers.length > 0 && this.server.session.state === 'open');
  }

  // ---- links -----------------------------------------------------------------

  /** Decides how the next dials end (see DialPlan). */
  planDials(...plans: DialPlan[]): void {
    this.dialPlans.push(...plans);
  }

  /** A raw client: a new link to the real server, connected after one latency, on which the test speaks for the client. */
  rawClient(): RawPeer {
    const raw = new RawPeer('client');
    const link = new Link(this, this.nextRawLink++);
    this.links.set(link.id, link);
    raw.link = link;
    link.ends.client = raw;
    this.clock.at(this.now + this.latency, () => this.serverAccepts(link));
    return raw;
  }

  private dial(id: LinkId): void {
    const plan = this.dialPlans.shift() ?? 'connect';
    const link = new Link(this, id);
    this.links.set(id, link);
    const client = this.client;
    client.links.set(id, link);
    link.ends.client = {
      data: (chunk) => {
        client.session.handleLinkData(id, chunk, this.now);
        this.drive(client);
      },
      closed: (_graceful, reason) => {
        client.links.delete(id);
        client.session.handleLinkClosed(id, this.now, reason);
        this.drive(client);
      },
    };
    const connected = () => {
      // As src/node/driver.ts: only a HELLO takes the channel's key and id.
      if (this.watched.client) client.session.handleLinkWatched(id, this.now);
      client.session.handleLinkOpen(id, client.session.sessionId === undefined ? this.channelOf(id) : undefined, this.samePath);
      this.drive(client);
    };
    const after = (run: () => void) => this.clock.at(this.now + this.latency, run);
    if (plan === 'connect') {
      after(() => {
        this.serverAccepts(link);
        connected();
      });
    } else if (plan === 'refuse' || plan === 'drop') {
      after(() => {
        client.links.delete(id);
        const error = plan === 'refuse' ? Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }) : undefined;
        client.session.handleLinkClosed(id, this.now, plan === 'refuse' ? 'ECONNREFUSED' : 'closed before connecting', error);
        this.drive(client);
      });
    } else if (plan === 'silent') {
      after(connected);
      link.ends.server = undefined;
    } else if (plan instanceof RawPeer) {
      plan.link = link;
      link.ends.server = plan;
      after(connected);
    }
    // 'hang': nothing happens.
  }

  /** The real server accepts `link`. */
  private serverAccepts(link: Link): void {
    const id = link.id;
    // As src/node/server.ts: everything on a server link goes to the core, which routes it.
    link.ends.server = {
      data: (chunk) => {
        this.core.handleLinkData(id, chunk, this.now);
        this.drainCore();
      },
      closed: (graceful, reason) => {
        for (const peer of this.serverPeers.values()) peer.links.delete(id);
        if (graceful) this.core.handleLinkEnd(id);
        this.core.handleLinkClosed(id, this.now, reason);
        this.drainCore();
      },
    };
    this.core.handleLinkOpen(id, this.now, false, undefined, this.channelOf(id));
    this.drainCore();
  }

  /** What a keying channel gives both ends of link `id`: the same every run. */
  channelOf(id: LinkId): ChannelKeys | undefined {
    if (!this.keyed) return undefined;
    return channelKeys(createHash('sha512').update(`channel ${id}`).digest().subarray(0, CHANNEL_MATERIAL_SIZE));
  }

  // ---- driving -------------------------------------------------------------------

  /** Flushes what the session has for each of its links, then handles one event, until it has none. */
  drive(peer: Peer): void {
    const side: Side = peer === this._client ? 'client' : 'server';
    for (let guard = 0; ; guard++) {
      if (guard > 100_000) throw new Error('the session does not settle');
      for (const [id, link] of peer.links) {
        for (let out = peer.session.pollTransmit(id, this.now, 1 << 20); out !== undefined; out = peer.session.pollTransmit(id, this.now, 1 << 20)) {
          link.send(side, Buffer.concat(out));
        }
      }
      const ev = peer.session.pollEvent();
      if (ev === undefined) return;
      peer.saw(ev);
      switch (ev.type) {
        case 'dial':
          this.dial(ev.link);
          break;
        case 'close-link': {
          const link = peer.links.get(ev.link);
          peer.links.delete(ev.link);
          if (link === undefined) break;
          if (ev.final) link.send(side, Buffer.concat(ev.final));
          link.close(side, ev.graceful);
          break;
        }
        case 'released':
          if (side === 'server') this.serverPeers.delete(peer.session);
          break;
        default:
          break;
      }
    }
  }

  private drainCore(): void {
    for (let ev = this.core.pollEvent(); ev !== undefined; ev = this.core.pollEvent()) {
      this.coreEvents.push({ ...ev, at: this.now });
      switch (ev.type) {
        case 'session':
        case 'bind': {
          let peer = this.serverPeers.get(ev.session);
          if (peer === undefined) {
            peer = new Peer(this, ev.session);
            this.serverPeers.set(ev.session, peer);
            this.servers.push(peer);
          }
          peer.links.set(ev.link, this.link(ev.link));
          if (this.watched.server) ev.session.handleLinkWatched(ev.link, this.now);
          break;
        }
        case 'drive': {
          const peer = this.serverPeers.get(ev.session);
          if (peer) this.drive(peer);
          break;
        }
        case 'close-link': {
          const link = this.link(ev.link);
          if (ev.final) link.send('server', Buffer.concat(ev.final));
          link.close('server', ev.final !== undefined);
          break;
        }
        case 'send':
          this.link(ev.link).send('server', ev.bytes);
          break;
        case 'plain':
          this.link(ev.link).close('server', false);
          break;
        case 'relay':
        case 'rejected':
          break;
      }
    }
  }
}
