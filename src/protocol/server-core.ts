// The server's endpoint: every link of the server goes through it, and it
// routes each one's bytes, end and close to the session that owns it, so the
// Node server and the simulator share one routing path (quinn-proto's
// Endpoint is the model). A new link first goes through EDP detection: an
// announcement means a rocks client, end-of-stream before any byte means a
// probe, anything else (or silence for detectTimeout) an ordinary client,
// handed back to the caller as a plain connection. A rocks link's first frame
// then creates a session (HELLO) or names one (RESUME); a RESUME of a session
// another node of the deployment holds is handed back to be relayed there.
// The endpoint enforces the server's limits and keeps the book of sessions.
// What the caller must do is polled as events. Like Session, it does no I/O.

import type { ServerLimits, SessionConfig } from './config.js';
import { RocksError, codeFromWire } from './errors.js';
import { commonVersion, encodeAnnouncement, parseAnnouncement, ROCKS } from '../edp/announcement.js';
import { encodeError, FrameParser, FrameType, INSTANCE_SIZE, type HelloFrame, type ResumeFrame } from './frames.js';
import { hold, type Held } from './keys.js';
import type { RandomSource } from './random.js';
import { MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Session, type ChannelKeys, type LinkId, type SessionHost } from './session.js';
import { invariant, isInvariantBreach } from './invariant.js';
import { parseProxyHeader, type ProxyAddress } from './proxy-header.js';
import { CHANNEL_FORMAT, makeSessionId, routeLink, type SessionOwner } from './routing.js';
import { Fifo } from '../util/fifo.js';

export type ServerEvent =
  /** A new session owns `link`: give it a driver (and, once it opens, to the application). */
  | { type: 'session'; session: Session; link: LinkId }
  /** An existing session now also owns `link` (a resume attempt). */
  | { type: 'bind'; session: Session; link: LinkId }
  /** The session has new input or was changed from outside: poll it (transmit, events, timeout). */
  | { type: 'drive'; session: Session }
  /**
   * Close a link no session drives: after writing `final`, by ending it; with
   * `final` undefined, at once.
   */
  | { type: 'close-link'; link: LinkId; final: Buffer[] | undefined }
  /** Write these bytes on a link no session owns yet (our EDP announcement). */
  | { type: 'send'; link: LinkId; bytes: Buffer }
  /**
   * An ordinary client: serve the link as a plain connection, starting with
   * the bytes already read (`ended`: the client also closed its side).
   */
  | { type: 'plain'; link: LinkId; initial: Buffer; ended: boolean; reason: string }
  /**
   * A resume for a session that node `nodeId` holds: carry the link there,
   * starting with `initial` (every byte read so far). The endpoint forgets
   * the link; if the relay cannot start, answer with relayRefusal().
   */
  | { type: 'relay'; link: LinkId; nodeId: number; initial: Buffer }
  /** A relayed link names the client it carries (PROXY header): its address for remoteAddress and logs. */
  | { type: 'client-address'; link: LinkId; address: ProxyAddress }
  /** A link was refused; for logs and counters. */
  | { type: 'rejected'; link: LinkId; error: RocksError };

/** How many released session ids the server remembers, to tell a resuming client what became of its session. */
const REMEMBERED_ENDINGS = 65_536;

/** Bytes any session may always come to hold, however full the budget (see allowance). */
const GUARANTEED_SHARE = 16 * 1024;

/** Our EDP announcement: what a client or a probe reads from us first. */
const SERVER_ANNOUNCEMENT = encodeAnnouncement([ROCKS]);

interface PendingLink {
  /** Bytes read while detecting and routing; undefined once the link is ours to parse. */
  detecting: Buffer | undefined;
  /** The announcement was read: only routing waits for more bytes (relays on). */
  announced: boolean;
  /** The link comes from a node of the deployment: it may carry a PROXY header. */
  fromMember: boolean;
  /** It did: another node relayed it here, so it is never relayed again. */
  relayed: boolean;
  /** A member's link began with part of a PROXY header: not an ordinary client, whatever comes. */
  proxyStarted: boolean;
  parser: FrameParser;
  deadline: number;
  /** The deadline queue the link waits in (see DeadlineQueue). */
  queue: DeadlineQueue;
  /** The link's channel (TLS) keys a session it starts, and names it (§15.2). */
  channel: ChannelKeys | undefined;
}

/**
 * Pending links in deadline order. Every link in one queue got its deadline
 * as now + the same timeout, so insertion order is deadline order and each
 * operation is O(1): no scan over all pending links. (A link handed over
 * with an age gets an earlier deadline than those queued before it; it then
 * expires with them, at most its age late.)
 */
class DeadlineQueue {
  readonly links = new Map<LinkId, PendingLink>();

  first(): [LinkId, PendingLink] | undefined {
    return this.links.entries().next().value;
  }
}

export interface EndpointOptions {
  /** Where the sessions it creates live (routing.ts); a random node id when not given. */
  owner?: Partial<SessionOwner>;
  /**
   * Resumes of sessions that other nodes hold are handed back as `relay`
   * events instead of being refused here. Without it (one node) the server
   * answers as soon as it reads an announcement.
   */
  relays?: boolean;
}

export class ServerCore implements SessionHost {
  private readonly config: SessionConfig;
  private readonly limits: ServerLimits;
  private readonly random: RandomSource;
  private readonly relays: boolean;

  private readonly pending = new Map<LinkId, PendingLink>();
  /**
   * While a link's bytes are handled: we read its client's announcement and
   * owe ours, which goes out with our answer to its first frame (greetWith,
   * reject), or alone when no whole frame came (announceAlone).
   */
  private greeting: LinkId | undefined;
  /** Pending links waiting for detectTimeout (no byte, or part of an announcement's magic). */
  private readonly detectQueue = new DeadlineQueue();
  /** Pending links given the handshake's time (announced, or a member's relay). */
  private readonly handshakeQueue = new DeadlineQueue();
  /**
   * Links that cost the server without having proved anything: pending ones
   * and those of unconfirmed sessions, each with the address it counts
   * against (undefined: a node of the deployment, not counted per address).
   */
  private readonly unproven = new Map<LinkId, string | undefined>();
  private readonly unprovenByAddress = new Map<string, number>();
  /** Unconfirmed sessions and the link that counts for each. */
  private readonly unconfirmed = new Map<Session, LinkId>();
  /** Pending links examined for their deadlines, ever (a measure of work, for tests). */
  private deadlineChecks = 0;
  /** Links a session owns: their input goes to it. */
  private readonly owned = new Map<LinkId, Session>();
  /** Sessions by their id as held (Session.heldId): the key is the string the session holds, not a copy. */
  private readonly sessions = new Map<Held, Session>();
  /**
   * Suspended sessions by the bytes they moved before (Session.bytesMoved):
   * bucket b holds those that moved fewer than 2^b (bucket 0: none), each in
   * the order they were suspended. Eviction takes the oldest of the lowest
   * bucket: O(1), as every bucket is an insertion-ordered Set.
   */
  private readonly suspendedBuckets: Set<Session>[] = Array.from({ length: 55 }, () => new Set<Session>());
  private readonly suspendedIn = new Map<Session, Set<Session>>();
  private readonly budgetWaiters = new Set<Session>();
  /** Why recently released sessions ended (wire error code), oldest first. */
  private readonly endings = new Map<Held, number>();
  private buffered = 0;
  /** This run of the server; a client resuming with another one knows the server restarted. */
  readonly instance: Buffer;
  private owner: SessionOwner;

  private readonly events = new Fifo<ServerEvent>();

  constructor(config: SessionConfig, limits: ServerLimits, random: RandomSource, options: EndpointOptions = {}) {
    this.config = config;
    this.limits = limits;
    this.random = random;
    this.relays = options.relays ?? false;
    this.instance = random.bytes(INSTANCE_SIZE);
    this.owner = {
      nodeId: options.owner?.nodeId ?? random.bytes(4).readUInt32BE(0),
      workerId: options.owner?.workerId ?? 0,
    };
  }

  /** The node and worker every session id this server issues names. */
  get nodeId(): number {
    return this.owner.nodeId;
  }

  /** Names another owner in the sessions created from now on (a cluster worker learns its own when it listens). */
  assignOwner(owner: SessionOwner): void {
    this.owner = { ...owner };
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  get suspendedCount(): number {
    return this.suspendedIn.size;
  }

  get bufferedBytes(): number {
    return this.buffered;
  }

  get pendingLinkCount(): number {
    return this.pending.size;
  }

  /** Links before their first frame plus links of unconfirmed sessions (what the pending-link caps count). */
  get unprovenLinkCount(): number {
    return this.unproven.size;
  }

  /** How many pending links were examined for their deadlines so far: constant per event, whatever the number pending. */
  get pendingDeadlineChecks(): number {
    return this.deadlineChecks;
  }

  // ---- input --------------------------------------------------------------

  /**
   * A new link; `fromMember`: its peer is a node of the deployment (a relay
   * may come from it); `address`: the peer's address, which the per-address
   * cap counts (links of members are not counted per address);
   * `channel`: the link's channel (TLS) keys a session it starts, and names it (§15.2).
   */
  handleLinkOpen(link: LinkId, now: number, fromMember = false, address?: string, channel?: ChannelKeys): void {
    // A connection admitted before it was a link (admitConnection) is counted already.
    const admitted = this.unproven.has(link);
    const counted = admitted ? this.unproven.get(link) : fromMember ? undefined : address;
    const refusal = admitted ? undefined : this.admissionRefusal(counted);
    if (refusal !== undefined) {
      // Closed at once and without a word: we do not know yet what it speaks.
      this.events.push({ type: 'rejected', link, error: refusal });
      this.events.push({ type: 'close-link', link, final: undefined });
      return;
    }
    const p: PendingLink = {
      detecting: Buffer.alloc(0),
      announced: false,
      fromMember,
      relayed: false,
      proxyStarted: false,
      parser: new FrameParser(),
      deadline: 0,
      queue: this.detectQueue,
      channel,
    };
    this.pending.set(link, p);
    this.schedule(link, p, this.detectQueue, now + this.limits.detectTimeout);
    if (!admitted) this.countUnproven(link, counted);
  }

  /**
   * A connection the adapter holds before it is a link (a TLS connection
   * whose ClientHello or handshake is under way) counts against the
   * pending-link caps as a link does, from its first moment. Returns why it
   * may not, when a cap is reached: the adapter then closes it at once. It
   * stops counting at releaseConnection, or goes on counting as link `link`
   * when handleLinkOpen gets that id.
   */
  admitConnection(link: LinkId, fromMember = false, address?: string): RocksError | undefined {
    const counted = fromMember ? undefined : address;
    const refusal = this.admissionRefusal(counted);
    if (refusal === undefined) this.countUnproven(link, counted);
    return refusal;
  }

  /** An admitted connection closed, or was settled without becoming a link (a plain TLS connection). */
  releaseConnection(link: LinkId): void {
    if (!this.pending.has(link) && !this.owned.has(link)) this.releaseUnproven(link);
  }

  private countUnproven(link: LinkId, address: string | undefined): void {
    this.unproven.set(link, address);
    if (address !== undefined) this.unprovenByAddress.set(address, (this.unprovenByAddress.get(address) ?? 0) + 1);
  }

  /** Why a new link from `address` may not open now, or undefined when it may. */
  private admissionRefusal(address: string | undefined): RocksError | undefined {
    if (this.unproven.size >= this.limits.maxPendingLinks) {
      return new RocksError('ERR_ROCKS_SERVER_BUSY', `${this.unproven.size} connections not yet confirmed, the most allowed (maxPendingLinks)`);
    }
    const fromAddress = address === undefined ? 0 : (this.unprovenByAddress.get(address) ?? 0);
    if (fromAddress >= this.limits.maxPendingLinksPerAddress) {
      return new RocksError(
        'ERR_ROCKS_SERVER_BUSY',
        `${fromAddress} connections from ${address} not yet confirmed, the most allowed from one address (maxPendingLinksPerAddress)`,
      );
    }
    return undefined;
  }

  /** The link proved itself (a confirmed session or a resume) or is gone: it no longer counts against the caps. */
  private releaseUnproven(link: LinkId): void {
    if (!this.unproven.has(link)) return;
    const address = this.unproven.get(link);
    this.unproven.delete(link);
    if (address === undefined) return;
    const n = this.unprovenByAddress.get(address)! - 1;
    if (n === 0) this.unprovenByAddress.delete(address);
    else this.unprovenByAddress.set(address, n);
  }

  /** (Re)sets a pending link's deadline, in the queue of its timeout. */
  private schedule(link: LinkId, p: PendingLink, queue: DeadlineQueue, deadline: number): void {
    p.queue.links.delete(link);
    p.queue = queue;
    p.deadline = deadline;
    queue.links.set(link, p);
  }

  /** The link is no longer pending (its first frame came, or it was settled). */
  private unpend(link: LinkId): PendingLink | undefined {
    const p = this.pending.get(link);
    if (p === undefined) return undefined;
    this.pending.delete(link);
    p.queue.links.delete(link);
    return p;
  }

  /** The link is settled without a session: it is no longer pending, nor counted. */
  private forget(link: LinkId): void {
    this.unpend(link);
    this.releaseUnproven(link);
  }

  handleLinkData(link: LinkId, chunk: Buffer, now: number): void {
    const session = this.owned.get(link);
    if (session !== undefined) {
      session.handleLinkData(link, chunk, now);
      this.drive(session);
      return;
    }
    const p = this.pending.get(link);
    if (p === undefined) return;
    if (p.detecting !== undefined) {
      chunk = this.detect(link, p, chunk, now) ?? Buffer.alloc(0);
      if (chunk.length === 0) {
        this.announceAlone(link);
        return;
      }
    }
    p.parser.push(chunk);
    // Whatever a stranger sends, only this link may suffer for it.
    try {
      const frame = p.parser.next();
      if (frame === undefined) {
        this.announceAlone(link);
        return;
      }
      this.unpend(link);
      if (frame.type === FrameType.HELLO) this.onHello(link, p.parser, frame, now, p.channel);
      else if (frame.type === FrameType.RESUME) this.onResume(link, p.parser, frame, now);
      else this.reject(link, new RocksError('ERR_ROCKS_PROTOCOL', `a connection must start with HELLO or RESUME, not 0x${frame.type.toString(16)}`));
    } catch (err) {
      this.reject(link, err);
    } finally {
      this.greeting = undefined;
    }
  }

  /** No whole first frame yet (a probe, or a slow client): the announcement we owe goes out now, alone. */
  private announceAlone(link: LinkId): void {
    if (this.greeting !== link) return;
    this.greeting = undefined;
    this.events.push({ type: 'send', link, bytes: SERVER_ANNOUNCEMENT });
  }

  /** The session that now owns `link` sends our announcement ahead of its answer, if we owe it. */
  private greetWith(session: Session, link: LinkId): void {
    if (this.greeting !== link) return;
    this.greeting = undefined;
    session.greet(link, SERVER_ANNOUNCEMENT);
  }

  /** The link can take more bytes: its session may have some to send. */
  handleLinkDrain(link: LinkId): void {
    const session = this.owned.get(link);
    if (session !== undefined) this.drive(session);
  }

  /** The peer ended its side of a link. */
  handleLinkEnd(link: LinkId): void {
    const p = this.pending.get(link);
    if (p === undefined) {
      // A session's link, or one we are closing: a rocks peer that ends its
      // side has nothing more to say on it.
      this.events.push({ type: 'close-link', link, final: undefined });
      return;
    }
    this.forget(link);
    if (p.detecting !== undefined && p.detecting.length === 0) {
      // A probe: connect, half-close at once, read what we say. Tell it.
      this.events.push({ type: 'close-link', link, final: [SERVER_ANNOUNCEMENT] });
    } else if (p.detecting !== undefined && !p.announced && !p.proxyStarted) {
      this.events.push({ type: 'plain', link, initial: p.detecting, ended: true, reason: 'ordinary client (closed its side)' });
    } else {
      this.reject(link, new RocksError('ERR_ROCKS_HANDSHAKE_TIMEOUT', 'the client closed before HELLO or RESUME'));
    }
  }

  /** A link's transport closed or failed (whoever closed it). */
  handleLinkClosed(link: LinkId, now: number, reason = 'closed', error?: Error): void {
    const session = this.owned.get(link);
    if (session !== undefined) {
      this.owned.delete(link);
      session.handleLinkClosed(link, now, reason, error);
      this.drive(session);
      return;
    }
    this.forget(link);
  }

  /** Deadlines of links no session owns yet (sessions keep their own timers). */
  handleTimeout(now: number): void {
    this.expire(this.detectQueue, now);
    this.expire(this.handshakeQueue, now);
  }

  /** Settles the links of `queue` whose deadline has come: only those, in deadline order. */
  private expire(queue: DeadlineQueue, now: number): void {
    for (let head = queue.first(); head !== undefined; head = queue.first()) {
      this.deadlineChecks++;
      const [link, p] = head;
      if (p.deadline > now) return;
      if (p.detecting !== undefined && !p.announced && !p.proxyStarted) {
        // Silent: an ordinary client waiting for the server to speak first.
        this.forget(link);
        this.events.push({
          type: 'plain',
          link,
          initial: p.detecting,
          ended: false,
          reason: 'ordinary client (waits for the server to speak first)',
        });
      } else {
        this.reject(link, new RocksError('ERR_ROCKS_HANDSHAKE_TIMEOUT', 'no HELLO or RESUME in time'));
      }
    }
  }

  /**
   * EDP on a new link, then (relays on) where it belongs. Returns the bytes
   * after a rocks announcement once the link is ours, or undefined.
   */
  private detect(link: LinkId, p: PendingLink, chunk: Buffer, now: number): Buffer | undefined {
    let bytes = p.detecting!.length === 0 ? chunk : Buffer.concat([p.detecting!, chunk]);
    if (this.relays && !p.relayed && !p.announced) {
      const rest = this.readProxyHeader(link, p, bytes, now);
      if (rest === undefined) return undefined;
      bytes = rest;
      if (bytes.length === 0) {
        p.detecting = bytes;
        return undefined;
      }
    }
    const r = parseAnnouncement(bytes);
    switch (r.kind) {
      case 'incomplete':
        p.detecting = bytes;
        return undefined;
      case 'other':
        this.forget(link);
        this.events.push({ type: 'plain', link, initial: bytes, ended: false, reason: 'ordinary client (spoke first)' });
        return undefined;
      case 'malformed':
        this.forget(link);
        this.events.push({ type: 'rejected', link, error: new RocksError('ERR_ROCKS_PROTOCOL', `malformed EDP announcement: ${r.reason}`) });
        this.events.push({ type: 'close-link', link, final: [] });
        return undefined;
      case 'announcement':
        if (!p.announced) {
          p.announced = true;
          this.schedule(link, p, this.handshakeQueue, now + this.config.handshakeTimeout);
        }
        // Our announcement names our versions; with none in common the client
        // falls back on its own, so we say it and close.
        if (commonVersion(ROCKS, r.enhancements) === undefined) {
          this.forget(link);
          this.events.push({ type: 'close-link', link, final: [SERVER_ANNOUNCEMENT] });
          return undefined;
        }
        if (this.relays) {
          // Another node may hold the session: it must be the one to answer,
          // so we say nothing until the first frame names the session.
          const route = routeLink(bytes);
          if (route.kind === 'incomplete') {
            p.detecting = bytes;
            return undefined;
          }
          if (route.kind === 'resume' && route.owner.nodeId !== this.owner.nodeId && !p.relayed) {
            this.forget(link);
            this.events.push({ type: 'relay', link, nodeId: route.owner.nodeId, initial: bytes });
            return undefined;
          }
        }
        p.detecting = undefined;
        this.greeting = link; // answered with our first frame, one TLS record and one segment
        return bytes.subarray(r.length);
    }
  }

  /**
   * A link that another node relays starts with a PROXY header naming the
   * client. Returns the bytes after it (all of them when there is none), or
   * undefined when the link must wait for more or was refused.
   */
  private readProxyHeader(link: LinkId, p: PendingLink, bytes: Buffer, now: number): Buffer | undefined {
    const h = parseProxyHeader(bytes);
    switch (h.kind) {
      case 'none':
        return bytes;
      case 'incomplete':
        p.detecting = bytes;
        if (p.fromMember && !p.proxyStarted) {
          // A relay from another node: it has the handshake's time, as a rocks client has.
          p.proxyStarted = true;
          this.schedule(link, p, this.handshakeQueue, now + this.config.handshakeTimeout);
        }
        return undefined;
      case 'malformed':
        this.reject(link, new RocksError('ERR_ROCKS_PROTOCOL', `malformed PROXY header: ${h.reason}`));
        return undefined;
      case 'header':
        // Anyone can write a header: only a node of the deployment may speak for a client.
        if (!p.fromMember) {
          this.reject(link, new RocksError('ERR_ROCKS_PROTOCOL', 'a relayed link from outside the deployment'));
          return undefined;
        }
        p.relayed = true;
        if (h.source !== undefined) this.events.push({ type: 'client-address', link, address: h.source });
        return bytes.subarray(h.length);
    }
  }

  // ---- output -------------------------------------------------------------

  pollEvent(): ServerEvent | undefined {
    const ev = this.events.shift();
    if (ev?.type === 'drive') ev.session.driveQueued = false;
    return ev;
  }

  pollTimeout(): number | undefined {
    const a = this.detectQueue.first()?.[1].deadline ?? Infinity;
    const b = this.handshakeQueue.first()?.[1].deadline ?? Infinity;
    const t = Math.min(a, b);
    return t === Infinity ? undefined : t;
  }

  /** Asks the caller to drive the session (once, however often asked before it polls). */
  private drive(session: Session): void {
    if (session.driveQueued) return;
    session.driveQueued = true;
    this.events.push({ type: 'drive', session });
  }

  /** Links no session owns yet (for shutdown). */
  pendingLinks(): IterableIterator<LinkId> {
    return this.pending.keys();
  }

  /** Every live session (for shutdown). */
  allSessions(): IterableIterator<Session> {
    return this.sessions.values();
  }

  // ---- SessionHost ----------------------------------------------------------

  bufferChanged(_session: Session, delta: number): void {
    const before = this.buffered;
    this.buffered += delta;
    invariant(this.buffered >= 0, () => `${this.buffered} bytes buffered after a change of ${delta}`);
    // Sessions held back wake when the total falls below a threshold it was over.
    const budget = this.limits.maxBufferedBytes;
    if (delta < 0 && this.budgetWaiters.size > 0 && (crossed(before, this.buffered, budget) || crossed(before, this.buffered, budget / 2))) {
      const waiters = [...this.budgetWaiters];
      this.budgetWaiters.clear();
      for (const s of waiters) {
        s.recheck();
        this.drive(s);
      }
    }
  }

  /**
   * How many more bytes `session` may come to hold. While under half the
   * budget is used, any number (its own windows bound it). Past half, a
   * session may grow to its fair share of that half, budget / (2 x
   * sessions held), and past the whole budget to the guaranteed share
   * (budget / maxSessions, at least GUARANTEED_SHARE). So sessions that pin
   * their bytes (a peer advertising a zero window, an application not
   * reading) cannot stop another session from moving data: each may always
   * reach its guaranteed share.
   */
  allowance(session: Session): number {
    const budget = this.limits.maxBufferedBytes;
    if (this.buffered < budget / 2) return Infinity;
    const guaranteed = this.guaranteedShare;
    const share = this.buffered < budget ? Math.max(guaranteed, budget / (2 * Math.max(1, this.sessions.size))) : guaranteed;
    return Math.max(0, share - session.heldBytes);
  }

  /** What any session may always hold: budget / maxSessions, at least GUARANTEED_SHARE. */
  get guaranteedShare(): number {
    return Math.max(GUARANTEED_SHARE, this.limits.maxBufferedBytes / this.limits.maxSessions);
  }

  waitForBudget(session: Session): void {
    this.budgetWaiters.add(session);
  }

  suspended(session: Session, now: number): void {
    const moved = session.bytesMoved;
    const bucket = this.suspendedBuckets[moved === 0 ? 0 : Math.min(54, Math.floor(Math.log2(moved)) + 1)];
    bucket.add(session);
    this.suspendedIn.set(session, bucket);
    if (this.suspendedIn.size > this.limits.maxSuspendedSessions) {
      const victim = this.leastValuableSuspended()!;
      victim.evict(now);
      this.drive(victim);
    }
  }

  /** The suspended session that moved the fewest bytes (to a factor of 2), the longest suspended of those. */
  private leastValuableSuspended(): Session | undefined {
    for (const bucket of this.suspendedBuckets) {
      if (bucket.size > 0) return bucket.values().next().value as Session;
    }
    return undefined;
  }

  private unsuspend(session: Session): void {
    this.suspendedIn.get(session)?.delete(session);
    this.suspendedIn.delete(session);
  }

  resumed(session: Session): void {
    this.unsuspend(session);
  }

  confirmed(session: Session): void {
    const link = this.unconfirmed.get(session);
    if (link === undefined) return;
    this.unconfirmed.delete(session);
    this.releaseUnproven(link);
  }

  released(session: Session, reason: number | undefined): void {
    this.confirmed(session);
    this.unsuspend(session);
    this.budgetWaiters.delete(session);
    const id = session.heldId!;
    if (this.sessions.get(id) !== session) return;
    this.sessions.delete(id);
    if (reason === undefined) return;
    this.endings.set(id, reason);
    if (this.endings.size > REMEMBERED_ENDINGS) this.endings.delete(this.endings.keys().next().value as string);
  }

  // ---- first frames -----------------------------------------------------------

  private onHello(link: LinkId, parser: FrameParser, hello: HelloFrame, now: number, channel: ChannelKeys | undefined): void {
    if (hello.minVersion > PROTOCOL_VERSION || hello.maxVersion < MIN_PROTOCOL_VERSION) {
      this.reject(link, versionError(hello.minVersion, hello.maxVersion));
      return;
    }
    if (channel === undefined && hello.publicKey.every((b) => b === 0)) {
      // A HELLO for a keying channel (TLS) on a link that has none.
      this.reject(link, new RocksError('ERR_ROCKS_PROTOCOL', 'HELLO without a public key on a link with no keying channel'));
      return;
    }
    if (this.sessions.size >= this.limits.maxSessions) {
      this.reject(link, new RocksError('ERR_ROCKS_SERVER_BUSY', `${this.sessions.size} sessions, the most allowed`));
      return;
    }
    // No refusal for the budget: a new session holds nothing, and may only grow to its share (allowance).
    // Register first: the bytes that came with the HELLO may end the session at once.
    const sessionId = channel?.sessionId ?? makeSessionId(this.owner, this.random);
    if (this.sessions.has(hold(sessionId))) {
      // Only a channel names sessions, with 120 random bits: a replayed channel, not chance.
      this.reject(link, new RocksError('ERR_ROCKS_PROTOCOL', 'a session by this id exists'));
      return;
    }
    const session = Session.accept(this.config, this.random, this, now, link, parser, hello, this.instance, sessionId, channel?.key);
    this.greetWith(session, link);
    this.sessions.set(session.heldId!, session);
    this.owned.set(link, session);
    // Its link counts against the pending-link caps until the client confirms (a channel confirmed it already).
    if (session.state === 'accepting') this.unconfirmed.set(session, link);
    else this.releaseUnproven(link);
    this.events.push({ type: 'session', session, link });
    session.processBuffered(link, now);
    this.drive(session);
  }

  private onResume(link: LinkId, parser: FrameParser, resume: ResumeFrame, now: number): void {
    if (resume.version < MIN_PROTOCOL_VERSION || resume.version > PROTOCOL_VERSION) {
      this.reject(link, versionError(resume.version, resume.version));
      return;
    }
    const session = this.sessions.get(hold(resume.sessionId));
    if (session === undefined) {
      this.reject(link, this.whyUnknown(resume));
      return;
    }
    // A resume link is bounded by its session's resume slots (§6.3), not by the pending-link caps.
    this.releaseUnproven(link);
    session.handleResumeLink(link, parser, resume, now);
    this.greetWith(session, link);
    this.owned.set(link, session);
    this.events.push({ type: 'bind', session, link });
    session.processBuffered(link, now);
    this.drive(session);
  }

  /**
   * What to tell a client resuming a session we do not hold. A client needs
   * to know whether its bytes may have reached an application: only then
   * would starting over deliver them twice.
   */
  private whyUnknown(resume: ResumeFrame): RocksError {
    const ending = this.endings.get(hold(resume.sessionId));
    // A session a TLS channel named, resumed with no instance: its client missed the WELCOME (§15.2).
    const preWelcome = resume.sessionId[0] === CHANNEL_FORMAT && resume.instance.every((b) => b === 0);
    if (!preWelcome && !resume.instance.equals(this.instance)) return new RocksError('ERR_ROCKS_UNKNOWN_SESSION', 'the server restarted');
    if (ending !== undefined) return new RocksError(codeFromWire(ending));
    // This run of the server never confirmed it (or forgot it long ago).
    return new RocksError('ERR_ROCKS_UNCONFIRMED_SESSION');
  }

  private reject(link: LinkId, err: unknown): void {
    if (isInvariantBreach(err)) throw err;
    this.forget(link);
    const error = err instanceof RocksError ? err : new RocksError('ERR_ROCKS_INTERNAL', String(err));
    const final = error.wireCode !== 0 ? [encodeError(error.wireCode, error.message)] : [];
    if (this.greeting === link) {
      this.greeting = undefined;
      final.unshift(SERVER_ANNOUNCEMENT);
    }
    this.events.push({ type: 'rejected', link, error });
    this.events.push({ type: 'close-link', link, final });
  }
}

/**
 * What a node answers on a resuming link it cannot carry to the session's
 * owner (no such node, or the node is gone): our announcement, then why, so
 * the client ends the session at once instead of retrying for hours.
 */
export function relayRefusal(message: string): Buffer[] {
  const error = new RocksError('ERR_ROCKS_UNKNOWN_SESSION', message);
  return [SERVER_ANNOUNCEMENT, encodeError(error.wireCode, error.message)];
}

function versionError(min: number, max: number): RocksError {
  return new RocksError('ERR_ROCKS_VERSION', `client speaks ${min}-${max}, server ${MIN_PROTOCOL_VERSION}-${PROTOCOL_VERSION}`);
}

/** A total that fell from `before` to `after` went below `limit`. */
function crossed(before: number, after: number, limit: number): boolean {
  return before >= limit && after < limit;
}
