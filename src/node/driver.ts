// Drives one protocol Session over real sockets: feeds it the bytes, closes
// and clock ticks of its links, writes what it has to send, and hands its
// application events to the ReliableSocket that owns it. This is the only
// place where the sans-IO core meets node:net.

import type { Socket } from 'node:net';
import { debuglog } from 'node:util';
import type { ProxyAddress } from '../protocol/proxy-header.js';
import type { LinkId, Session, SessionEvent } from '../protocol/session.js';
import { watchInKernelSoon } from './kernel-liveness.js';
import { ackSoon, QUICK_ACK_BELOW } from './quick-ack.js';
import { describeChange, type NetworkChange, type NetworkListener, networkWatcher } from './network-watch.js';
import { monotonicNow, sharedScheduler, type Timed } from './scheduler.js';
import { localAddressOf } from './socket-ends.js';
import { linkChannel, whenLinkReady } from './tls-link.js';
import { withFlag } from '../util/flags.js';

const debug = debuglog('rocks');

// A stalled process (sleep, SIGSTOP) is a change every client session hears of.
sharedScheduler.onStall = (ms) => networkWatcher.reportStall(ms);

/** Data we keep queued in a link's socket before waiting for 'drain'. */
const LINK_HIGH_WATER = 256 * 1024;
/**
 * A transmission this small (a message with its frame header and an ACK) is
 * copied into one buffer: one plain write costs less than corking several.
 */
const SMALL_WRITE_BYTES = 2048;
const SMALL_WRITE_PARTS = 8;

function totalLength(parts: Buffer[]): number {
  let n = 0;
  for (const b of parts) n += b.length;
  return n;
}
/** A link we ended gracefully is destroyed if the peer has not closed it by then. */
const CLOSING_LINK_TIMEOUT = 10_000;
/** How long a session the application closed after end() may take to finish (lingerAfterClose). */
const LINGER_AFTER_CLOSE_MS = 60_000;
/**
 * Sessions finishing in the background after the application closed them,
 * each with the timer that aborts it after a minute (here rather than in a
 * field every driver would carry). At exit they abort, so that their peers
 * learn it now rather than hold them suspended: the kernel finishes a TCP
 * close after its process exits, but these bytes go with the process.
 */
const lingering = new Map<SessionDriver, NodeJS.Timeout>();
function abortAllLingering(): void {
  for (const driver of lingering.keys()) driver.abortLingering('the program exited');
}

/** Whoever currently receives a link's socket events. */
export interface LinkOwner {
  onLinkData(link: LinkId, chunk: Buffer): void;
  onLinkClosed(link: LinkId, reason: string, error: Error | undefined): void;
  onLinkDrain(link: LinkId): void;
  /** The peer ended its side. Without this, the link is simply closed. */
  onLinkEnd?(link: LinkId): void;
}

/** The handle of a socket we listen to; our listeners, shared by all sockets, find it here. */
const kLink = Symbol('rocks.link');
type LinkedSocket = Socket & { [kLink]?: LinkHandle };

// One set of listener functions for every link (Node calls them with the
// socket as `this`): closures per link would cost each idle session about
// 650 bytes.
function onSocketData(this: LinkedSocket, chunk: Buffer): void {
  const h = this[kLink]!;
  // A message's sender may be a middlebox holding the rest of it for our ACK (quick-ack.ts).
  if (h.quickAck && chunk.length < QUICK_ACK_BELOW) ackSoon(this, h.nagle);
  h.owner?.onLinkData(h.id, chunk);
}
function onSocketDrain(this: LinkedSocket): void {
  const h = this[kLink]!;
  h.owner?.onLinkDrain(h.id);
}
function onSocketEnd(this: LinkedSocket): void {
  const h = this[kLink]!;
  if (h.owner?.onLinkEnd) h.owner.onLinkEnd(h.id);
  else this.destroy();
}
// Without a listener Node would throw the error; its 'close' tells it (socket.errored).
function onSocketError(): void {}
function onSocketClose(this: LinkedSocket): void {
  const h = this[kLink]!;
  h.closed = true;
  const owner = h.owner;
  h.owner = undefined;
  const err = this.errored ?? undefined;
  owner?.onLinkClosed(h.id, err ? ((err as NodeJS.ErrnoException).code ?? err.message) : 'closed by peer', err);
}
// biome-ignore lint/suspicious/noExplicitAny: the listener type of Node's Socket.on(string, ...)
const SOCKET_LISTENERS: [string, (this: LinkedSocket, ...args: any[]) => void][] = [
  ['data', onSocketData],
  ['drain', onSocketDrain],
  ['end', onSocketEnd],
  ['error', onSocketError],
  ['close', onSocketClose],
];

/** A link handle's yes/no state, bits of its `flags` (util/flags.ts). */
const HandleFlag = {
  Closed: 1 << 0,
  Nagle: 1 << 1,
  QuickAck: 1 << 2,
} as const;

/** The clients that relayed links carry, by handle: few links are relayed, so no handle keeps a field for it. */
const relayedClients = new WeakMap<LinkHandle, ProxyAddress>();

/** A socket and the owner its events go to (a client's session driver, or a server for all its links). */
export class LinkHandle {
  owner: LinkOwner | undefined;
  /** The next of the links a session's driver holds: a list through the handles, as an array would cost each session 56 bytes. */
  next: LinkHandle | undefined;
  private flags: number = HandleFlag.QuickAck;

  /** The client a relayed link carries (its PROXY header), when not the socket's own peer. */
  get clientAddress(): ProxyAddress | undefined {
    return relayedClients.get(this);
  }

  set clientAddress(client: ProxyAddress) {
    relayedClients.set(this, client);
  }

  /** The socket emitted 'close'. */
  get closed(): boolean {
    return (this.flags & HandleFlag.Closed) !== 0;
  }

  set closed(on: boolean) {
    this.setFlag(HandleFlag.Closed, on);
  }

  /** The socket has Nagle's algorithm on (the application asked for setNoDelay(false)). */
  get nagle(): boolean {
    return (this.flags & HandleFlag.Nagle) !== 0;
  }

  /** Small reads are acknowledged at once (the quickAck option). */
  get quickAck(): boolean {
    return (this.flags & HandleFlag.QuickAck) !== 0;
  }

  set quickAck(on: boolean) {
    this.setFlag(HandleFlag.QuickAck, on);
  }

  private setFlag(flag: number, on: boolean): void {
    this.flags = withFlag(this.flags, flag, on);
  }

  constructor(
    readonly id: LinkId,
    readonly socket: Socket,
    owner: LinkOwner,
  ) {
    this.owner = owner;
    (socket as LinkedSocket)[kLink] = this;
    // A socket that does not allow half-open connections ends and closes
    // by itself at the peer's FIN (Node's own 'end' listener ends it), and
    // a second 'end' listener beside Node's would cost it an array (64
    // bytes a link): we listen for 'end' only where a FIN can stand.
    for (const [event, fn] of SOCKET_LISTENERS) if (event !== 'end' || socket.allowHalfOpen) socket.on(event, fn);
  }

  setNoDelay(on: boolean): void {
    this.setFlag(HandleFlag.Nagle, !on);
    this.socket.setNoDelay(on);
  }

  /** Gives the socket up to a new user: none of our listeners stays on it. */
  handOff(): Socket {
    this.owner = undefined;
    for (const [event, fn] of SOCKET_LISTENERS) this.socket.removeListener(event, fn);
    (this.socket as LinkedSocket)[kLink] = undefined;
    return this.socket;
  }

  /**
   * Writes `final` and ends the socket, or destroys it at once. The owner
   * still hears it close (a server's core forgets the link then); whatever
   * else comes meanwhile goes to a session that already let the link go.
   */
  close(final: Buffer[] | undefined, graceful: boolean): void {
    const s = this.socket;
    if (s.destroyed) return;
    if (!graceful) {
      s.destroy();
      return;
    }
    if (final) for (const b of final) s.write(b);
    s.end();
    s.setTimeout(CLOSING_LINK_TIMEOUT, () => s.destroy());
  }
}

/** What the driver hands to the socket object of the application. */
export interface SessionListener {
  onSessionEvent(ev: SessionEvent): void;
  /** The driver needs a transport to the server for this link. */
  dial?(link: LinkId): Socket;
}

/**
 * What a server hears of a session it holds, straight from the driver: the
 * socket the application holds may be gone long before the session is.
 */
export interface ServerSessionHooks {
  /** The client confirmed the session ('open'): time for 'connection'. */
  opened(session: Session): void;
  /** The session is gone ('released'). */
  released(session: Session): void;
  /** After each drive: the server handles what the session's calls told it (an eviction, freed budget). */
  afterDrive(): void;
  /** The application's socket of a session handed to it (reportSocketClose) closed, its 'close' emitted: the server counts them. */
  socketClosed(): void;
}

/** A driver's yes/no state, bits of its `flags` (util/flags.ts). */
const Flag = {
  /** drive() is running: a nested call only asks for another pass. */
  Driving: 1 << 0,
  Again: 1 << 1,
  /** A drive waits in a microtask. */
  DriveQueued: 1 << 2,
  /**
   * Server: the session was just handed to the application. Its first
   * transmission (WELCOME) waits for the application's first turn (one
   * process.nextTick, when a stream starts flowing), so that a reply to the
   * first bytes leaves in the same write.
   */
  HoldFlush: 1 << 3,
  Referenced: 1 << 4,
  NoDelay: 1 << 5,
  QuickAck: 1 << 6,
  /** Client: hears of network changes (networkWatcher). */
  Watching: 1 << 7,
  WatchWhenOpen: 1 << 8,
  /** Server: the application holds the socket; the server hears when it closes. */
  ReportClose: 1 << 9,
  /**
   * The application closed the session, which finishes in the background
   * (lingerAfterClose). Also known from `lingering`; a bit, so that every
   * 'data' event asks no Map.
   */
  Lingering: 1 << 10,
} as const;

export class SessionDriver implements Timed, LinkOwner, NetworkListener {
  scheduledAt: number | undefined;
  readonly session: Session;
  /** The first handle of the session's links, which go on through `next`. */
  private firstLink: LinkHandle | undefined;
  private listener: SessionListener | undefined;
  /** Yes/no state, one bit each (Flag). */
  private flags: number = Flag.NoDelay | Flag.QuickAck;

  constructor(
    session: Session,
    listener: SessionListener,
    private readonly server?: ServerSessionHooks,
  ) {
    this.session = session;
    this.listener = listener;
  }

  private hasFlag(flag: number): boolean {
    return (this.flags & flag) !== 0;
  }

  private setFlag(flag: number, on: boolean): void {
    this.flags = withFlag(this.flags, flag, on);
  }

  /** Client: moves the session to a new connection when the network changes under it (PROTOCOL.md §6.8), from 'connect' on. */
  watchNetworkOnceOpen(): void {
    this.setFlag(Flag.WatchWhenOpen, true);
  }

  /** The network watcher's call (NetworkListener). */
  onNetworkChange(change: NetworkChange): void {
    const decision = this.migrationFor(change);
    if (decision === undefined) return;
    debug('network change (%s): %s', describeChange(change), decision.reason);
    this.session.migrate(monotonicNow(), decision.reason, decision.verify);
    this.drive();
  }

  /** Whether `change` touches this session's connection, and why. */
  private migrationFor(change: NetworkChange): { reason: string; verify: boolean } | undefined {
    const state = this.session.state;
    if (change.stalledMs > 0) {
      // A stall shorter than failureTimeout left the peer watching us: nothing to verify.
      if (state !== 'open' || change.stalledMs <= this.session.failureTimeout) return undefined;
      return { reason: `the process did not run for ${Math.round(change.stalledMs)} ms: checking the connection`, verify: true };
    }
    // Suspended, any change may have brought the path back.
    if (state === 'suspended') return { reason: `dialing at once after a network change (${describeChange(change)})`, verify: true };
    const active = this.activeSocket();
    const local = active === undefined ? undefined : localAddressOf(active);
    if (state !== 'open' || local === undefined) return undefined;
    if (change.removed.has(local) || change.removed.has('')) return { reason: `address ${local} was removed`, verify: true };
    // An address whose interface the watcher does not know may be on any that changed.
    const device = change.interfaces.get(local);
    const link = device === undefined ? change.links.values().next().value : (change.links.get(device) ?? change.links.get(''));
    if (link !== undefined) return { reason: `interface ${device ?? 'of our address'} went ${link ? 'up' : 'down'}`, verify: true };
    if (change.defaultRoute || change.added.size > 0) return { reason: 'the default route or the addresses changed', verify: false };
    return undefined;
  }

  /**
   * Writes on a link whose socket is already connected (server side); its
   * input keeps going to the server, whose core routes it to the session.
   */
  adopt(handle: LinkHandle): void {
    this.addLink(handle);
    handle.setNoDelay(this.hasFlag(Flag.NoDelay));
    handle.quickAck = this.hasFlag(Flag.QuickAck);
  }

  /**
   * Server: the socket is the application's now; tell the server when it
   * closes. Through the driver rather than by a 'close' listener of the
   * server's own: beside the application's listener, Node would keep an
   * array of the two (64 bytes a session).
   */
  reportSocketClose(): void {
    this.setFlag(Flag.ReportClose, true);
  }

  /** The application's socket was destroyed; Node has queued its 'close'. */
  socketDestroyed(): void {
    if (!this.hasFlag(Flag.ReportClose)) return;
    this.setFlag(Flag.ReportClose, false);
    const server = this.server!;
    // After the socket's 'close', which Node emits in a process.nextTick queued before this one.
    process.nextTick(() => server.socketClosed());
  }

  /** The application let go of the socket (it closed after a clean finish): finish the protocol in the background. */
  detach(): void {
    this.listener = undefined;
    this.setRef(false);
  }

  /**
   * The application closed a session it had ended whose peer may still
   * write: as the kernel does for a TCP socket closed after shutdown(), new
   * data from the peer aborts it (the kernel resets), and so does a close
   * not done within a minute (Linux's tcp_fin_timeout).
   */
  lingerAfterClose(): void {
    const timer = setTimeout(() => this.abortLingering('closed by the application, and not finished within a minute'), LINGER_AFTER_CLOSE_MS);
    timer.unref();
    if (lingering.size === 0) process.once('exit', abortAllLingering);
    lingering.set(this, timer);
    this.setFlag(Flag.Lingering, true);
  }

  /** Aborts a session lingerAfterClose let finish in the background, unless it has. */
  abortLingering(why: string): void {
    this.stopLingering();
    if (this.session.state === 'done') return;
    this.session.abort(monotonicNow(), why);
    this.driveNow();
  }

  /** Its timer would hold the finished session for the rest of the minute. */
  private stopLingering(): void {
    if (!this.hasFlag(Flag.Lingering)) return;
    this.setFlag(Flag.Lingering, false);
    clearTimeout(lingering.get(this));
    lingering.delete(this);
  }

  setRef(on: boolean): void {
    if (on === this.hasFlag(Flag.Referenced) || (on && this.session.state === 'done')) return;
    this.setFlag(Flag.Referenced, on);
    if (on) sharedScheduler.ref();
    else sharedScheduler.unref();
    for (let h = this.firstLink; h !== undefined; h = h.next) {
      if (on) h.socket.ref();
      else h.socket.unref();
    }
  }

  setNoDelay(on: boolean): void {
    this.setFlag(Flag.NoDelay, on);
    for (let h = this.firstLink; h !== undefined; h = h.next) h.setNoDelay(on);
  }

  setQuickAck(on: boolean): void {
    this.setFlag(Flag.QuickAck, on);
    for (let h = this.firstLink; h !== undefined; h = h.next) h.quickAck = on;
  }

  /** The handle of one of the session's links. */
  link(id: LinkId): LinkHandle | undefined {
    let h = this.firstLink;
    while (h !== undefined && h.id !== id) h = h.next;
    return h;
  }

  private addLink(handle: LinkHandle): void {
    this.removeLink(handle.id);
    handle.next = undefined;
    if (this.firstLink === undefined) {
      this.firstLink = handle;
      return;
    }
    let last = this.firstLink;
    while (last.next !== undefined) last = last.next;
    last.next = handle;
  }

  /** Takes the handle of `id` off the list; its own `next` stays, so that a walk standing on it goes on. */
  private removeLink(id: LinkId): void {
    let previous: LinkHandle | undefined;
    for (let h = this.firstLink; h !== undefined; previous = h, h = h.next) {
      if (h.id !== id) continue;
      if (previous === undefined) this.firstLink = h.next;
      else previous.next = h.next;
      return;
    }
  }

  /** The socket carrying the session now, if any. */
  activeSocket(): Socket | undefined {
    const id = this.session.activeLink;
    return id === undefined ? undefined : this.link(id)?.socket;
  }

  // ---- LinkOwner --------------------------------------------------------------

  onLinkData(link: LinkId, chunk: Buffer): void {
    this.session.handleLinkData(link, chunk, monotonicNow());
    this.drive();
  }

  onLinkClosed(link: LinkId, reason: string, error: Error | undefined): void {
    this.removeLink(link);
    this.session.handleLinkClosed(link, monotonicNow(), reason, error);
    this.drive();
  }

  onLinkDrain(): void {
    this.drive();
  }

  onTimer(now: number): void {
    this.session.handleTimeout(now);
    this.drive();
  }

  // ---- the loop ---------------------------------------------------------------

  /**
   * Writes what the session has to send and handles its events until it has
   * none, then asks the scheduler for its next deadline. Re-entrant calls
   * (an application writing from inside a 'data' handler) just ask the
   * running loop to go round once more.
   */
  drive(): void {
    if (this.hasFlag(Flag.Driving)) {
      this.setFlag(Flag.Again, true);
      return;
    }
    this.setFlag(Flag.Driving, true);
    try {
      do {
        this.setFlag(Flag.Again, false);
        // One flush after the events: what the application writes from its
        // handlers (an echo of the first bytes, a reply) leaves in the same
        // write as the session's own frames (WELCOME, an ACK). Only a link's
        // closing must wait for what is queued before it.
        for (let ev = this.session.pollEvent(); ev !== undefined; ev = this.session.pollEvent()) {
          if (ev.type === 'close-link') this.flush();
          this.handle(ev);
        }
        this.flush();
      } while (this.hasFlag(Flag.Again));
    } finally {
      this.setFlag(Flag.Driving, false);
    }
    if (this.session.state === 'done') {
      this.stopLingering();
      this.setRef(false);
      if (this.hasFlag(Flag.Watching)) networkWatcher.unwatch(this);
      this.setFlag(Flag.Watching, false);
    } else sharedScheduler.schedule(this, this.session.pollTimeout());
    this.server?.afterDrive();
  }

  /**
   * Drives once the application's current synchronous run is over (a
   * microtask): a loop of small writes then leaves in one transmission
   * instead of one system call each, and a lone write waits for nothing.
   */
  driveSoon(): void {
    if (this.hasFlag(Flag.Driving)) {
      // Written from an event handler: the running loop transmits it next.
      this.setFlag(Flag.Again, true);
      return;
    }
    if (this.hasFlag(Flag.DriveQueued)) return;
    this.setFlag(Flag.DriveQueued, true);
    queueMicrotask(() => {
      this.setFlag(Flag.DriveQueued, false);
      this.drive();
    });
  }

  /**
   * Runs the loop now, even from inside it (the outer round then goes on
   * with whatever is left). For an abort: a program that calls
   * process.exit() from a 'data' handler gets no later round, and its peer
   * must still be told.
   */
  driveNow(): void {
    const outer = this.hasFlag(Flag.Driving);
    this.setFlag(Flag.Driving, false);
    try {
      this.drive();
    } finally {
      this.setFlag(Flag.Driving, outer);
    }
  }

  /** Hands what the session has to send to the link sockets now, without handling events. */
  transmitNow(): void {
    this.flush();
  }

  private flush(): void {
    if (this.firstLink === undefined || this.hasFlag(Flag.HoldFlush)) return;
    const now = monotonicNow();
    for (let h: LinkHandle | undefined = this.firstLink; h !== undefined; h = h.next) {
      const id = h.id;
      const s = h.socket;
      if (h.closed) this.removeLink(id); // a server link: the core told the session
      if (s.destroyed || s.connecting) continue;
      const out = this.session.pollTransmit(id, now, LINK_HIGH_WATER - s.writableLength);
      if (out === undefined) continue;
      if (out.length === 1) s.write(out[0]);
      else if (out.length <= SMALL_WRITE_PARTS && totalLength(out) <= SMALL_WRITE_BYTES) s.write(Buffer.concat(out));
      else {
        s.cork();
        for (const b of out) s.write(b);
        s.uncork();
      }
    }
  }

  /** The kernel watches `h`'s connection now: the session tells its peer (PACE) if the link still carries it. */
  private linkWatched(h: LinkHandle): void {
    if (this.link(h.id) !== h || this.session.state === 'done') return;
    this.session.handleLinkWatched(h.id, monotonicNow());
    this.drive();
  }

  private handle(ev: SessionEvent): void {
    switch (ev.type) {
      case 'dial': {
        const socket = this.listener?.dial?.(ev.link);
        if (socket === undefined) {
          this.session.handleLinkClosed(ev.link, monotonicNow(), 'no transport available');
          return;
        }
        const handle = new LinkHandle(ev.link, socket, this);
        this.addLink(handle);
        handle.setNoDelay(this.hasFlag(Flag.NoDelay));
        handle.quickAck = this.hasFlag(Flag.QuickAck);
        if (!this.hasFlag(Flag.Referenced)) socket.unref();
        whenLinkReady(socket, () => {
          // Only a HELLO uses the channel's key: a resume keeps the session's.
          const channel = this.session.sessionId === undefined ? linkChannel(socket) : undefined;
          const current = this.activeSocket();
          const local = localAddressOf(socket);
          const samePath = current !== undefined && local !== undefined && local === localAddressOf(current);
          this.session.handleLinkOpen(ev.link, channel, samePath);
          this.drive();
        });
        return;
      }
      case 'close-link': {
        const h = this.link(ev.link);
        if (h === undefined) return;
        if (ev.reason) debug('closing connection %d: %s', ev.link, ev.reason);
        this.removeLink(ev.link);
        h.close(ev.final, ev.graceful);
        return;
      }
      case 'open':
        this.server?.opened(this.session);
        this.setFlag(Flag.HoldFlush, true);
        process.nextTick(() => {
          this.setFlag(Flag.HoldFlush, false);
          this.drive();
        });
        return;
      case 'released':
        this.server?.released(this.session);
        this.listener?.onSessionEvent(ev);
        return;
      case 'link-active': {
        // A rocks link for sure now: the kernel may watch it (never a connection served plain).
        // A relayed link's connection ends at another node, whose kernel would answer for the client.
        const h = this.link(ev.link);
        if (h !== undefined && h.clientAddress === undefined) watchInKernelSoon(h.socket, this.session.settings, () => this.linkWatched(h));
        this.listener?.onSessionEvent(ev);
        return;
      }
      case 'connect':
        if (this.hasFlag(Flag.WatchWhenOpen) && !this.hasFlag(Flag.Watching)) {
          networkWatcher.watch(this);
          this.setFlag(Flag.Watching, true);
        }
        this.listener?.onSessionEvent(ev);
        return;
      case 'data':
        if (this.hasFlag(Flag.Lingering)) this.session.abort(monotonicNow(), 'data after the application closed the connection');
        this.listener?.onSessionEvent(ev);
        return;
      default:
        if (ev.type === 'error') debug('session error: %s', ev.error.message);
        this.listener?.onSessionEvent(ev);
    }
  }
}
