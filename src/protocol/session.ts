// One reliable session, as a state machine with no I/O.
//
// A session outlives the transport connections ("links") that carry it. The
// caller (a Node adapter or the simulator) owns the links and drives the
// session with four kinds of calls, in the manner of quinn-proto:
//
//   handle*   input: a link opened, bytes arrived, a link closed, time passed
//   commands  from the application: write, end, abort, updateUnread
//   poll*     output: bytes to send on a link, the next event, the next deadline
//   getters   state and counters
//
// Time is always passed in (`now`, in ms), never read, and randomness comes
// from a RandomSource, so a seeded simulation replays exactly.
//
// Each direction is one stream of "units": the data bytes, then one unit for
// FIN. Both ends count what they received; acknowledgements trim the sender's
// in-flight buffer, and a resume rewinds the sender to what the peer holds.

import type { SessionConfig } from './config.js';
import { ERROR_CODES, RocksError, codeFromWire, type RocksErrorCode } from './errors.js';
import {
  encodeAck,
  encodeChallenge,
  encodeConfirm,
  DATA_HEADER_SIZE,
  encodeDataHeader,
  encodeError,
  encodeFin,
  encodeHello,
  encodePace,
  encodeProof,
  encodeResume,
  encodeWelcome,
  encodeClose,
  encodeCloseAck,
  FrameParser,
  FrameType,
  NONCE_SIZE,
  INSTANCE_SIZE,
  KEY_SIZE,
  type ChallengeFrame,
  type Frame,
  type HelloFrame,
  type ProofFrame,
  type ResumeFrame,
  type WelcomeFrame,
} from './frames.js';
import { confirmMac, deriveSessionKey, type Held, hold, macMatches, resumeMac, unhold, type ConfirmTranscript, type KeyPair } from './keys.js';
import { commonVersion, encodeAnnouncement, parseAnnouncement, ROCKS } from '../edp/announcement.js';
import { drawKeyPair, type RandomSource } from './random.js';
import { SendBuffer } from './send-buffer.js';
import { stepClose, stepOutgoingFin, type CloseHandshake, type OutgoingFin } from './closing.js';
import { Timer, TimerTable } from './timers.js';
import { DialSchedule } from './dial-schedule.js';
import { invariant, isInvariantBreach } from './invariant.js';
import { Fifo } from '../util/fifo.js';
import { byId, type IdList, withItem, withoutId } from '../util/id-list.js';
import { NO_ITEMS } from '../util/empty.js';
import { withFlag } from '../util/flags.js';

export const PROTOCOL_VERSION = 1;
export const MIN_PROTOCOL_VERSION = 1;

export type LinkId = number;

/**
 * Bytes of application data per DATA frame we send (at most
 * MAX_DATA_PAYLOAD). With its header a full frame is 64 KiB, four whole TLS
 * records: a 64 KiB payload would take a fifth record for 13 bytes, and the
 * receiver would decrypt and handle a quarter more records.
 */
const SEND_FRAME_BYTES = 64 * 1024 - DATA_HEADER_SIZE;
/** An acknowledgement of ACK_LAZY_BYTES or more waits at most this long for company before it goes out alone. */
const ACK_DELAY = 20;
/**
 * Less than ACK_LAZY_BYTES waits up to ACK_DELAY_LAZY (a heartbeat due
 * sooner carries it): long enough for the next write of a paced or
 * request/response stream to carry it, as TCP's delayed ACK waits up to
 * 200 ms. A standalone ACK costs each end a system call and a wake-up; what
 * waits is only that much more in the peer's replay buffer.
 */
const ACK_DELAY_LAZY = 200;
const ACK_LAZY_BYTES = 64 * 1024;
/**
 * New data is acknowledged at once every half receiveWindow, but at least
 * every 2 MiB: the sender stops at its own maxInflight (4 MiB by default),
 * which we do not know, and one that stops before our threshold waits
 * ACK_DELAY for every maxInflight it sends (a 32 MiB window moved 183 MB/s
 * against 866 with the default 4 MiB, when the cap was missing). Half, not a
 * quarter: every ACK is a write and a wake-up of the sender, and at a quarter
 * a 1 GiB rocks+tls transfer on loopback moved 872 MB/s against 1067 (10
 * runs, medians), the server spending 1.67 CPU s/GiB against 1.46.
 */
const ACK_EVERY_MAX = 2 * 1024 * 1024;
/** The window is announced when it can grow by this share of receiveWindow (a session held to its guaranteed share steps by a quarter of that). */
const WINDOW_STEP = 1 / 2;
/**
 * What a keying channel (TLS) gives a session started on it (§15.2): its key
 * and its id, which both ends derive from the channel, so the client knows
 * the id before WELCOME and can resume a session whose WELCOME it missed.
 */
export interface ChannelKeys {
  key: Buffer;
  sessionId: Buffer;
}

/**
 * The client may send this much data right behind its HELLO, before
 * WELCOME tells it the server's window; a server always takes at least this
 * much first (§3.8, §15.2).
 */
export const EARLY_DATA_BYTES = 16 * 1024;
/** HELLO and WELCOME carry no public key over a keying channel. */
const NO_PUBLIC_KEY = Buffer.alloc(KEY_SIZE);
/** Resume attempts a server keeps per session before dropping the oldest. */
const MAX_PENDING_RESUMES = 4;

export type SessionState =
  | 'connecting' // client: no session yet
  | 'accepting' // server: WELCOME sent, waiting for the client's first frame
  | 'open' // a link carries the session
  | 'suspended' // no link; the client is reconnecting, the server waiting
  | 'done'; // released

// How a session closes (FIN each way, then CLOSE and CLOSE_ACK) is spelled
// out as states and transition tables in closing.ts.

export type SessionEvent =
  /** Open a transport to the server and report it with handleLinkOpen / handleLinkClosed. */
  | { type: 'dial'; link: LinkId }
  /** Close the transport: after writing `final` and ending it if graceful, else at once. */
  | { type: 'close-link'; link: LinkId; graceful: boolean; final?: Buffer[]; reason?: string }
  /** Client: the session is established (emitted once). */
  | { type: 'connect' }
  /** Server: the client confirmed the session; hand it to the application (emitted once). */
  | { type: 'open' }
  /** This link now carries the session (its addresses are the session's). */
  | { type: 'link-active'; link: LinkId }
  | { type: 'data'; data: Buffer }
  /** The peer ended its direction; no data follows. */
  | { type: 'end' }
  /** The peer acknowledged our FIN: everything we wrote was received. */
  | { type: 'fin-acked' }
  /** The in-flight buffer has room again after write() returned false. */
  | { type: 'writable' }
  | { type: 'suspend'; reason: string }
  | { type: 'resume'; outage: number; replayedOut: number; replayedIn: number }
  | { type: 'reconnect-attempt'; attempt: number; delay: number }
  /** The session moved to a new link while the old one was still open (after link-active; PROTOCOL.md §6.8). */
  | { type: 'migrate'; reason: string }
  /** No application data moved for the idle timeout. */
  | { type: 'timeout' }
  /** Both directions are finished and acknowledged (server: CLOSE sent; client: CLOSE received). */
  | { type: 'closed' }
  /** The session failed; `released` follows. */
  | { type: 'error'; error: Error }
  /** Every piece of state is gone; no further events. */
  | { type: 'released' };

/** What a server session reports to the server that holds it (budget, caps). */
export interface SessionHost {
  bufferChanged(session: Session, delta: number): void;
  /** How many more bytes this session may come to hold (its share of the buffer budget; Infinity when plenty is left). */
  allowance(session: Session): number;
  /** Bytes of writes a session may always hold, whatever else it holds: unread input never blocks output for good. */
  readonly guaranteedShare: number;
  /** The session is held back by the budget and wants a recheck() when it frees. */
  waitForBudget(session: Session): void;
  suspended(session: Session, now: number): void;
  resumed(session: Session): void;
  /** The client proved it holds the key (CONFIRM or PROOF): the session is no stranger's. */
  confirmed(session: Session): void;
  /**
   * The session is gone. `reason` is the wire error code a client resuming
   * it should be told (the session closed cleanly, was aborted, evicted...),
   * or undefined if the session was never confirmed.
   */
  released(session: Session, reason: number | undefined): void;
}

type LinkPhase =
  | 'dialing' // client: transport not yet connected
  | 'hello' // client: HELLO sent
  | 'resume' // client: RESUME sent
  | 'challenge' // server: CHALLENGE sent, waiting for PROOF
  | 'active'; // carries the session

/**
 * One transport connection of the session. A link is also the parser of
 * the frames that arrive on it: one object where two would cost each link
 * 32 bytes more.
 */
class Link extends FrameParser {
  readonly id: LinkId;
  phase: LinkPhase;
  /** Control frames waiting for pollTransmit; none is undefined, not an array of its own (32 bytes an idle link would keep). */
  out: Buffer[] | undefined = undefined;
  /**
   * The handshake on this link must complete by then (whole ms), or 0 for
   * none: a small integer, where a fraction or Infinity would cost each
   * link a boxed number (16 bytes).
   */
  deadline: number;
  /** Until the link carries the session; an active link keeps none of it. */
  handshake: LinkHandshake | undefined;
  /** Yes/no state, one bit each (LinkFlag). */
  flags = 0;
  /** The peer's PACE on this link: our heartbeats may come as rarely as this (ms). */
  peerPace: number | undefined = undefined;

  constructor(id: LinkId, phase: LinkPhase, deadline: number) {
    super();
    this.id = id;
    this.phase = phase;
    this.deadline = Math.ceil(deadline);
    this.handshake =
      phase === 'active'
        ? undefined
        : { keys: undefined, clientNonce: undefined, serverNonce: undefined, announcement: undefined, migration: undefined };
  }
}

/** A link's yes/no state, bits of Link.flags. */
const LinkFlag = {
  /** Something arrived on this link: a server is at the other end and working on it. */
  Heard: 1 << 0,
  /** Our kernel watches this link's TCP connection for a dead path (keepalive, TCP_USER_TIMEOUT; §5.1). */
  Watched: 1 << 1,
  /** A PACE frame is owed to the peer on this link. */
  PaceOwed: 1 << 2,
} as const;

function linkHas(l: Link, flag: number): boolean {
  return (l.flags & flag) !== 0;
}

function linkSet(l: Link, flag: number, on: boolean): void {
  l.flags = withFlag(l.flags, flag, on);
}

/** What a link's handshake needs, dropped once the link carries the session. */
interface LinkHandshake {
  /** Client, HELLO without a keying channel: our half of the key agreement. */
  keys: KeyPair | undefined;
  /** Resume (RESUME and CHALLENGE): both nonces go into the MACs of CHALLENGE and PROOF. */
  clientNonce: Buffer | undefined;
  serverNonce: Buffer | undefined;
  /** Client: bytes received while waiting for the server's EDP announcement. */
  announcement: Buffer | undefined;
  /** Client: this link moves an open session off its current one (migrate). */
  migration: Migration | undefined;
}

/** Client: why `l` is dialed, if it moves an open session off its current link. */
function migrationOf(l: Link): Migration | undefined {
  return l.handshake?.migration;
}

/** Why a client moves its session to a new link while the current one still carries it. */
interface Migration {
  reason: string;
  /** When the network change was noticed. */
  at: number;
  /** The current link is in doubt (the process stalled, an interface went down): move even if the new link takes the same path. */
  verify: boolean;
}

/**
 * Where our kernel watches the link and the peer heeds our PACE, we wait
 * this many of its path checks before we declare the link failed (§5.1).
 */
const PATH_CHECKS_MISSED = 3;

/** Queues a control frame on `l` for pollTransmit. */
function queueFrame(l: Link, frame: Buffer): void {
  if (l.out === undefined) l.out = [frame];
  else l.out.push(frame);
}

/** A session's yes/no state, bits of its `flags` (util/flags.ts). */
const Flag = {
  /** The application's last write was refused (backpressure); 'writable' is owed. */
  WriteBlocked: 1 << 0,
  FinReceived: 1 << 1,
  /** An ACK goes out with the next transmission (the AckDelay and Heartbeat timers stop meanwhile). */
  AckNeeded: 1 << 2,
  /** The window last stopped short of receiveWindow because of the host's budget. */
  BudgetLimited: 1 << 3,
  /** The peer takes PACE frames: a server learns it from the HELLO, a client from the server's first PACE (§5.1). */
  PeerTakesPace: 1 << 4,
  /**
   * Client: a change put the current link in doubt (a verify migration) and
   * no link has taken the session since. Later changes verify too, so that a
   * route that comes back along the same path still moves the session. What
   * arrives on the current link proves nothing: an interface that came back
   * without its route receives, but cannot send.
   */
  CurrentInDoubt: 1 << 5,
  /** Client: a dialed transport connected at least once, so later dials are reconnect attempts. */
  EverConnected: 1 << 6,
  /** Client: the server has sent something after WELCOME, so it holds the session. */
  ServerConfirmed: 1 << 7,
  /**
   * Client: data went out before WELCOME. The server may have delivered it,
   * so this session is never started over: it fails instead (§3.8, §15.2).
   */
  SentEarly: 1 << 8,
  /** See driveQueued. */
  DriveQueued: 1 << 9,
  /** The session is a server's (role). */
  Server: 1 << 10,
} as const;

/** A session's server instance before WELCOME names it. */
const NO_INSTANCE: Held = hold(Buffer.alloc(INSTANCE_SIZE));
/** The instance the last WELCOME named, held once for every session that names the same (24 bytes a session). */
let lastInstance: Held = NO_INSTANCE;

/** Every client link opens with this EDP announcement (src/edp). */
const CLIENT_ANNOUNCEMENT = encodeAnnouncement([ROCKS]);

export class Session {
  /**
   * Owned by the adapter that drives a server's session (its
   * SessionDriver): a field rather than a Map from sessions to drivers,
   * whose table costs a server about 40 bytes a session.
   */
  driver: unknown = undefined;
  /** Yes/no state, one bit each (Flag). */
  private flags = 0;
  private readonly config: SessionConfig;
  private readonly random: RandomSource;
  private readonly host: SessionHost | undefined;

  private _state: SessionState;
  private close: CloseHandshake = 'streaming';
  private _sessionId: Held | undefined;
  private key: Held | undefined;
  /** Server, until the client confirms: the MAC its CONFIRM must carry (§3.4). */
  private expectedConfirm: Buffer | undefined;
  /** Client: the run of the server that issued the session (WELCOME), named again in RESUME. */
  private serverInstance: Held = NO_INSTANCE;
  /** The link that carries the session, if any. */
  private current: Link | undefined;
  /**
   * The other links: attempts still in their handshake, a link a newer one
   * replaces. None while the session runs on one link, which then costs
   * no array (56 bytes).
   */
  private others: IdList<Link> = NO_ITEMS;
  private nextLinkId = 1;
  private readonly timers = new TimerTable();

  // Sending direction.
  /**
   * What the application wrote and the peer has not acknowledged; none
   * while that is nothing and the session is quiet (a heartbeat drops it:
   * 112 bytes), and sendOffset then tells where the stream stands.
   */
  private sendBuffer: SendBuffer | undefined;
  private sendOffset = 0;
  private fin: OutgoingFin = 'none';
  /** Highest unit offset ever transmitted (FIN included). */
  private maxSent = 0;
  /** The peer lets us send data up to this offset. */
  private peerWindow = 0;

  // Receiving direction.
  private received = 0;
  private unread = 0;
  private ackSent = 0;
  private windowSent = 0;

  // Accounting reported to the host.
  private buffered = 0;

  // Reconnecting (client) and time spent suspended.
  private suspendedAt = 0;
  /**
   * Client, while it has no link carrying the session (connecting or
   * suspended); made again for each outage, so that an open session holds
   * none (dials()). A server never dials.
   */
  private dialSchedule: DialSchedule | undefined;
  /**
   * Client: the link whose HELLO awaits WELCOME with data behind it, or
   * keyed by its channel. The server may hand the session to its
   * application the moment that HELLO arrives, so there is no second HELLO
   * while it is out: if the link is lost, a keyed session is resumed by the
   * id the channel gave it (§15.2), and one with data behind its HELLO
   * fails (§3.8).
   */
  private helloLink: Link | undefined;
  /** Client: the session id the keying channel of the HELLO gave (§15.2). */
  private channelId: Held | undefined;
  /** setIdleTimeout's value; 0 is off. */
  private idleTimeout = 0;

  /** Events for pollEvent; none while the session is quiet (handleTimeout drops the queue). */
  private events: Fifo<SessionEvent> | undefined;

  private constructor(role: 'client' | 'server', config: SessionConfig, random: RandomSource, host?: SessionHost) {
    this.setFlag(Flag.Server, role === 'server');
    this.config = config;
    this.random = random;
    this.host = host;
    this._state = role === 'client' ? 'connecting' : 'accepting';
  }

  /** A client session; it asks for its first link with a `dial` event. */
  static connect(config: SessionConfig, random: RandomSource, now: number): Session {
    const s = new Session('client', config, random);
    s.timers.set(Timer.Connect, now + config.connectTimeout);
    s.dial(now);
    return s;
  }

  /**
   * A server session for a client's HELLO on `link`. `parser` holds whatever
   * arrived after the HELLO. The caller has checked versions and limits.
   * `channelKey`: the link's channel (TLS) keys the session, and `sessionId`
   * came from it too (§15.2). The channel proved the client reachable and
   * holding the key, so the session is confirmed and opens at once, and data
   * may follow the HELLO.
   */
  static accept(
    config: SessionConfig,
    random: RandomSource,
    host: SessionHost | undefined,
    now: number,
    link: LinkId,
    parser: FrameParser,
    hello: HelloFrame,
    instance: Buffer,
    sessionId: Buffer,
    channelKey?: Buffer,
  ): Session {
    const s = new Session('server', config, random, host);
    s.setFlag(Flag.PeerTakesPace, hello.pace);
    let serverPublic: Buffer = NO_PUBLIC_KEY;
    let key = channelKey;
    if (key === undefined) {
      const keys = drawKeyPair(random);
      serverPublic = keys.publicKey;
      key = deriveSessionKey(keys, hello.publicKey, sessionId, hello.publicKey, keys.publicKey);
      s.expectedConfirm = confirmMac(key, { version: PROTOCOL_VERSION, sessionId, clientPublic: hello.publicKey, serverPublic });
    }
    s._sessionId = hold(sessionId);
    s.key = hold(key);
    s.peerWindow = hello.window;
    // A server short of budget offers a new session no more than its share,
    // but always takes what a client may send before WELCOME.
    const offered = Math.floor(Math.min(config.receiveWindow, host?.allowance(s) ?? Infinity));
    s.windowSent = Math.max(offered, EARLY_DATA_BYTES);
    const l = s.addLink(link, 'active', now + config.handshakeTimeout, parser);
    queueFrame(l, encodeWelcome(PROTOCOL_VERSION, sessionId, serverPublic, s.windowSent, instance));
    s.setCurrent(l);
    if (channelKey !== undefined) s.confirm(l, now);
    return s;
  }

  /** Server: `bytes` go out on `link` ahead of anything else (our EDP announcement, in the same write as WELCOME or CHALLENGE). */
  greet(link: LinkId, bytes: Buffer): void {
    const l = this.linkById(link);
    if (l !== undefined) l.out = l.out === undefined ? [bytes] : [bytes, ...l.out];
  }

  /** Parses what a handed-over link's parser already holds (after accept or handleResumeLink). */
  processBuffered(link: LinkId, now: number): void {
    const l = this.linkById(link);
    if (l !== undefined) this.processLink(l, now);
  }

  private hasFlag(flag: number): boolean {
    return (this.flags & flag) !== 0;
  }

  get role(): 'client' | 'server' {
    return this.hasFlag(Flag.Server) ? 'server' : 'client';
  }

  /**
   * Owned by the host that routes this session's input (ServerCore): true
   * while a request to drive it waits in the host's queue. Kept by the
   * session rather than in a Set of queued sessions: adding to and deleting
   * from a long-lived Set at every chunk rebuilds its table in V8's old
   * space, garbage that cost a bulk transfer a full collection every 130 MB.
   */
  get driveQueued(): boolean {
    return this.hasFlag(Flag.DriveQueued);
  }

  set driveQueued(on: boolean) {
    this.setFlag(Flag.DriveQueued, on);
  }

  private setFlag(flag: number, on: boolean): void {
    this.flags = withFlag(this.flags, flag, on);
  }

  // ---- getters ------------------------------------------------------------

  get state(): SessionState {
    return this._state;
  }

  get sessionId(): Buffer | undefined {
    return this._sessionId === undefined ? undefined : unhold(this._sessionId);
  }

  /** The session id as held (latin1): a server's key for the session, one string shared with it. */
  get heldId(): Held | undefined {
    return this._sessionId;
  }

  /** How long the peer may stay silent before the link is declared failed (ms). */
  get failureTimeout(): number {
    return this.config.failureTimeout;
  }

  /** The options the session runs with. */
  get settings(): Readonly<SessionConfig> {
    return this.config;
  }

  /** The link carrying the session, if any. */
  get activeLink(): LinkId | undefined {
    return this.current?.id;
  }

  /** The links the session holds (it may have something to send on any of them). */
  linkIds(): LinkId[] {
    return this.allLinks().map((l) => l.id);
  }

  // The send buffer's offsets, also while there is none.
  private get sendStart(): number {
    return this.sendBuffer?.start ?? this.sendOffset;
  }

  private get sendEnd(): number {
    return this.sendBuffer?.end ?? this.sendOffset;
  }

  private get sendNext(): number {
    return this.sendBuffer?.next ?? this.sendOffset;
  }

  private get sendLength(): number {
    return this.sendBuffer?.length ?? 0;
  }

  /** A heartbeat found the session quiet: what nobody waits for goes. */
  private freeIdleMemory(): void {
    const send = this.sendBuffer;
    if (send === undefined) return;
    if (send.length > 0) {
      send.freeIdleMemory();
      return;
    }
    this.sendOffset = send.end;
    this.sendBuffer = undefined;
  }

  /** Bytes the session holds: written and not yet acknowledged, plus received and not yet read. */
  get heldBytes(): number {
    return this.buffered;
  }

  /** Data bytes that reached the other side or came from it: what eviction weighs a session by. */
  get bytesMoved(): number {
    return this.sendStart + this.bytesReceived;
  }

  /** Bytes written by the application and not yet acknowledged by the peer. */
  get bufferedAmount(): number {
    return this.sendLength;
  }

  /** Data bytes received from the peer. */
  get bytesReceived(): number {
    return this.received - (this.hasFlag(Flag.FinReceived) ? 1 : 0);
  }

  /** Client: data went out right behind a keyed HELLO, before WELCOME (§15.2). */
  get sentEarlyData(): boolean {
    return this.hasFlag(Flag.SentEarly);
  }

  /** Data bytes accepted from the application. */
  get bytesWritten(): number {
    return this.sendEnd;
  }

  /** Both directions are finished and acknowledged. */
  get finished(): boolean {
    return this.fin === 'acked' && this.hasFlag(Flag.FinReceived);
  }

  /** The application ended its direction (the FIN may still be on its way). */
  get ended(): boolean {
    return this.fin !== 'none';
  }

  /** A one-line summary of the session's state, for diagnostics. */
  describe(): string {
    const links = this.allLinks()
      .map((l) => `${l.id}:${l.phase}${l === this.current ? '*' : ''}`)
      .join(',');
    return (
      `${this.role} ${this._state} ${this.close} links[${links}] send[${this.sendStart}..${this.sendNext}..${this.sendEnd}` +
      ` win ${this.peerWindow} fin ${this.fin}]` +
      ` recv[${this.received} unread ${this.unread} win ${this.windowSent}${this.hasFlag(Flag.FinReceived) ? ' fin' : ''}]` +
      `${this.hasFlag(Flag.WriteBlocked) ? ' write-blocked' : ''}${this.hasFlag(Flag.AckNeeded) ? ' ack-needed' : ''}`
    );
  }

  // ---- input --------------------------------------------------------------

  /**
   * Client: the transport for a `dial` event connected. `channel`: its
   * channel (TLS) keys a session started on it (§15.2): the HELLO needs no
   * key agreement, and data may follow it at once. `samePath`: its local
   * address is the current link's (a migration then stops, unless it verifies).
   */
  handleLinkOpen(link: LinkId, channel?: ChannelKeys, samePath = false): void {
    const l = this.linkById(link);
    if (l === undefined || l.phase !== 'dialing') return;
    const migration = migrationOf(l);
    if (migration !== undefined && samePath && !migration.verify && this.current !== undefined) {
      // A new route that leads where the current link already goes: nothing to move to.
      this.dropLink(l, 'the new connection takes the path of the current one');
      return;
    }
    this.setFlag(Flag.EverConnected, true);
    // The EDP announcement, then the first frame without waiting for the
    // server's announcement: we already know (probe, cache or option) that it
    // is enhanced, and the HELLO negotiates the version anyway.
    queueFrame(l, CLIENT_ANNOUNCEMENT);
    const handshake = l.handshake!;
    handshake.announcement = Buffer.alloc(0);
    if (this._sessionId === undefined) {
      let publicKey: Buffer = NO_PUBLIC_KEY;
      if (channel !== undefined) {
        this.key = hold(channel.key);
        this.channelId = hold(channel.sessionId);
      } else {
        handshake.keys = drawKeyPair(this.random);
        publicKey = handshake.keys.publicKey;
      }
      queueFrame(l, encodeHello(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, publicKey, this.config.receiveWindow, true));
      l.phase = 'hello';
      // Keyed by its channel, or with the application's data to go behind it (§3.8, §15.2).
      if (channel !== undefined || (this.config.earlyData && this.sendEnd > 0 && this.helloLink === undefined)) this.onlyHello(l);
    } else {
      handshake.clientNonce = this.random.bytes(NONCE_SIZE);
      queueFrame(l, encodeResume(PROTOCOL_VERSION, unhold(this._sessionId), handshake.clientNonce, unhold(this.serverInstance)));
      l.phase = 'resume';
    }
  }

  /**
   * Client: `l`'s HELLO may open the session at the server the moment it
   * arrives, with data behind it or keyed by its channel: until WELCOME it
   * is the only attempt, and data follows it up to the window every server
   * gives (§3.8, §15.2).
   */
  private onlyHello(l: Link): void {
    this.helloLink = l;
    // The HELLO advertises our window; the server takes EARLY_DATA_BYTES before it says its own.
    this.windowSent = this.config.receiveWindow;
    this.peerWindow = EARLY_DATA_BYTES;
    for (const other of this.allLinks()) if (other !== l) this.dropLink(other, 'a HELLO that may open the session went out on another attempt');
    this.refreshLinkTimers();
  }

  handleLinkData(link: LinkId, chunk: Buffer, now: number): void {
    const l = this.linkById(link);
    if (l === undefined) return;
    if (l === this.current && this._state === 'open') this.timers.set(Timer.Failure, now + this.silenceLimit());
    if (!linkHas(l, LinkFlag.Heard)) {
      linkSet(l, LinkFlag.Heard, true);
      this.refreshLinkTimers();
    }
    if (l.handshake?.announcement !== undefined) {
      chunk = this.readAnnouncement(l, chunk, now) ?? Buffer.alloc(0);
      if (chunk.length === 0) return;
    }
    l.push(chunk);
    this.processLink(l, now);
  }

  /** Client: what the server sends first must be its EDP announcement. Returns the bytes after it. */
  private readAnnouncement(l: Link, chunk: Buffer, now: number): Buffer | undefined {
    const handshake = l.handshake!;
    const bytes = handshake.announcement!.length === 0 ? chunk : Buffer.concat([handshake.announcement!, chunk]);
    const r = parseAnnouncement(bytes);
    if (r.kind === 'incomplete') {
      handshake.announcement = bytes;
      return undefined;
    }
    handshake.announcement = undefined;
    if (r.kind !== 'announcement') {
      this.notEnhanced(l, now, r.kind === 'malformed' ? `malformed announcement: ${r.reason}` : 'the server answered without an announcement');
      return undefined;
    }
    if (commonVersion(ROCKS, r.enhancements) === undefined) {
      const theirs = r.enhancements.map((e) => `${e.name} ${e.minVersion}-${e.maxVersion}`).join(', ');
      this.fail(now, new RocksError('ERR_ROCKS_VERSION', `the server speaks ${theirs}`), undefined);
      return undefined;
    }
    return bytes.subarray(r.length);
  }

  /** Client: the server turned out not to speak rocks. */
  private notEnhanced(l: Link, now: number, reason: string): void {
    // Before the session exists this decides the connection: the caller may
    // fall back to a plain one. Afterwards it is just a failed attempt.
    if (this._state === 'connecting') this.fail(now, new RocksError('ERR_ROCKS_NOT_ENHANCED', reason), undefined);
    else this.dropLink(l, reason);
  }

  /**
   * Our kernel watches `link`'s connection for a dead path from now on
   * (keepalive and TCP_USER_TIMEOUT, §5.1): once it carries the session we
   * tell the peer, which may then beat as rarely as pathCheckInterval, and
   * wait that much longer for it. Any time after the link exists.
   */
  handleLinkWatched(link: LinkId, now: number): void {
    const l = this.linkById(link);
    if (l === undefined || linkHas(l, LinkFlag.Watched)) return;
    linkSet(l, LinkFlag.Watched, true);
    this.offerPace(l, now);
    if (l === this.current && this._state === 'open') this.timers.set(Timer.Failure, now + this.silenceLimit());
  }

  /** A link's transport closed or failed. `error` is the transport's error, if any. */
  handleLinkClosed(link: LinkId, now: number, reason: string, error?: Error): void {
    const l = this.linkById(link);
    if (l === undefined) return;
    if (l === this.current) {
      this.linkFailed(now, reason);
      return;
    }
    if (this.lostHello(l, reason, now)) return;
    this.removeLink(l);
    if (this.role === 'client' && this._state === 'connecting' && l.phase === 'dialing' && l.id === 1) {
      // The very first dial failed outright: report it as net.connect would.
      this.fail(now, error ?? new RocksError('ERR_ROCKS_CONNECT_FAILED', reason), undefined);
    }
  }

  /** Runs the work of every timer due at `now` (see timers.ts). */
  handleTimeout(now: number): void {
    if (this._state === 'done') return;
    const timers = this.timers;
    // A timer finds most sessions quiet (a heartbeat is due): the event
    // queue, empty between turns, goes with its storage (200 bytes).
    if (this.events?.size === 0) this.events = undefined;

    if (timers.expired(Timer.Handshake, now)) {
      for (const l of this.allLinks()) {
        if (l.deadline === 0 || l.deadline > now) continue;
        if (l === this.current) {
          // Only an unconfirmed server session has a deadline on its current
          // link; one opened at its early data tells its application.
          if (this._state === 'open')
            this.fail(now, new RocksError('ERR_ROCKS_HANDSHAKE_TIMEOUT', 'the client never confirmed the session'), undefined);
          else this.release(now, undefined);
          return;
        }
        if (!this.lostHello(l, 'handshake timed out', now)) this.dropLink(l, 'handshake timed out');
      }
      if ((this._state as SessionState) === 'done') return;
    }

    if (timers.expired(Timer.Failure, now)) {
      const lastHeard = timers.get(Timer.Failure) - this.silenceLimit();
      this.linkFailed(now, `nothing heard from the peer for ${Math.round(now - lastHeard)} ms`);
    } else {
      const beat = timers.expired(Timer.Heartbeat, now);
      if (beat || timers.expired(Timer.AckDelay, now)) this.needAck();
      if (beat) this.freeIdleMemory();
    }

    if (timers.expired(Timer.Suspend, now)) {
      this.fail(now, new RocksError('ERR_ROCKS_SUSPEND_TIMEOUT', `suspended for ${Math.round(now - this.suspendedAt)} ms`), undefined);
      return;
    }
    if (timers.expired(Timer.Connect, now)) {
      this.fail(now, new RocksError('ERR_ROCKS_CONNECT_TIMEOUT'), undefined);
      return;
    }
    if (timers.expired(Timer.Linger, now)) {
      // Client: the server never confirmed the close. Server: the client never
      // acknowledged our CLOSE. Either way everything was delivered.
      if (this.role === 'client') this.completeClose(now);
      else this.release(now, ERROR_CODES.ERR_ROCKS_SESSION_CLOSED.wire);
      return;
    }
    if (timers.expired(Timer.Dial, now)) this.dial(now);

    if (timers.expired(Timer.Idle, now)) {
      timers.stop(Timer.Idle);
      this.emit({ type: 'timeout' });
    }
  }

  // ---- application commands -------------------------------------------------

  /** Queues application data. Returns false when the caller should wait for `writable`. */
  write(chunk: Buffer, now: number): boolean {
    if (this._state === 'done' || chunk.length === 0) return true;
    this.sendBuffer ??= new SendBuffer(this.sendOffset);
    this.sendBuffer.append(chunk);
    this.touch(now);
    this.account();
    return this.canAcceptWrites();
  }

  /**
   * Client: the network changed under the session (PROTOCOL.md §6.8).
   * Suspended, the next dial starts now. Open, a new link resumes the
   * session while the current one goes on carrying it; the resume moves it
   * (the server switches when it reads it), and a new link that fails
   * leaves it where it is. One migration at a time: a newer change drops an
   * older attempt, which may have left on a path that is gone. `verify`:
   * the current link is in doubt, so move even along the same path.
   */
  migrate(now: number, reason: string, verify: boolean): void {
    if (this.role !== 'client' || this.helloLink !== undefined) return;
    if (this._state === 'suspended') {
      this.dials().dialNow(now);
      this.refreshLinkTimers();
      return;
    }
    if (this._state !== 'open') return;
    // Until a link takes the session, a change after one that doubted the
    // current link (an interface down, then its route back) verifies too.
    if (verify) this.setFlag(Flag.CurrentInDoubt, true);
    else verify = this.hasFlag(Flag.CurrentInDoubt);
    for (const l of this.others) if (migrationOf(l) !== undefined) this.dropLink(l, 'superseded by a newer network change');
    const id = this.nextLinkId++;
    const l = this.addLink(id, 'dialing', now + this.config.handshakeTimeout);
    l.handshake!.migration = { reason, at: now, verify };
    this.refreshLinkTimers();
    this.emit({ type: 'dial', link: id });
  }

  /** Ends our direction: FIN follows the data already written. */
  end(now: number): void {
    if (this._state === 'done' || this.fin !== 'none') return;
    this.fin = stepOutgoingFin(this.fin, 'end');
    this.touch(now);
  }

  /** Aborts the session: the peer gets ERR_ROCKS_PEER_ABORTED and all state goes. */
  abort(now: number, message = 'connection destroyed by the application'): void {
    if (this._state === 'done') return;
    if (this.current !== undefined && this._state !== 'accepting') {
      this.closeLink(this.current, true, [errorFrame('ERR_ROCKS_PEER_ABORTED', message)]);
    }
    this.release(now, this.endingCode(ERROR_CODES.ERR_ROCKS_PEER_ABORTED.wire));
  }

  /** Bytes delivered to the application that it has not read, as last reported to updateUnread. */
  get unreadBytes(): number {
    return this.unread;
  }

  /** The application has not yet read `unread` of the bytes delivered to it. Returns false when nothing changed. */
  updateUnread(unread: number, now: number): boolean {
    if (unread === this.unread) return false;
    invariant(unread >= 0 && unread <= this.bytesReceived, () => `${unread} bytes unread of ${this.bytesReceived} received`);
    const consumedMore = unread < this.unread;
    this.unread = unread;
    if (consumedMore) this.touch(now);
    this.account();
    this.offerWindow();
    return true;
  }

  /** Announces the window when it can grow by a step: half of receiveWindow, or a quarter of the guaranteed share when held to its share. */
  private offerWindow(): void {
    const growth = this.windowTarget() - this.windowSent; // first: it decides budgetLimited
    const step = this.hasFlag(Flag.BudgetLimited) ? this.host!.guaranteedShare / 4 : this.config.receiveWindow * WINDOW_STEP;
    if (growth >= step) this.needAck();
  }

  /** Emits `timeout` after `ms` without application data moving; 0 turns it off. */
  setIdleTimeout(ms: number, now: number): void {
    this.idleTimeout = ms;
    if (ms > 0) this.timers.set(Timer.Idle, now + ms);
    else this.timers.stop(Timer.Idle);
  }

  /** The host's budget freed: re-evaluate backpressure and our window. */
  recheck(): void {
    if (this._state === 'done') return;
    if (this.hasFlag(Flag.WriteBlocked) && this.canAcceptWrites()) {
      this.setFlag(Flag.WriteBlocked, false);
      this.emit({ type: 'writable' });
    }
    if (this.windowTarget() > this.windowSent) this.needAck();
  }

  // ---- output -------------------------------------------------------------

  /**
   * Bytes to write on `link` now, as a list of buffers to be written in
   * order, or undefined. At most about `budget` bytes of data are included;
   * control frames are always included.
   */
  pollTransmit(link: LinkId, now: number, budget: number): Buffer[] | undefined {
    const l = this.linkById(link);
    if (l === undefined) return undefined;
    let out: Buffer[] | undefined;
    if (l.out !== undefined) {
      out = l.out;
      l.out = undefined;
    }
    const limit = Math.min(this.sendEnd, this.peerWindow);
    if (l === this.helloLink) {
      // Client: data right behind the HELLO, up to the window the server always gives (§3.8, §15.2).
      const before = this.sendNext;
      out = this.pushData(out, limit, budget);
      if (this.sendNext > before) this.setFlag(Flag.SentEarly, true);
      return out;
    }
    if (l !== this.current || this._state !== 'open') return out;
    const queued = out?.length ?? 0; // handshake frames go first

    // A pending acknowledgement rides along with data for free.
    if (this.hasFlag(Flag.AckNeeded) || (this.timers.isArmed(Timer.AckDelay) && this.sendNext < limit)) {
      out ??= [];
      out.push(this.makeAck());
    }
    out = this.pushData(out, limit, budget);
    if (this.fin === 'queued' && this.sendNext === this.sendEnd) {
      out ??= [];
      out.push(encodeFin(this.sendEnd));
      this.fin = stepOutgoingFin(this.fin, 'transmit');
      this.maxSent = this.sendEnd + 1;
    }
    if (this.close === 'close-owed') {
      // The client must hold the acknowledgement of its FIN before CLOSE.
      out ??= [];
      out.push(this.makeAck(), encodeClose());
      this.close = stepClose(this.role, this.close, 'transmit-close');
    }
    // The server's PACE goes out at once (with WELCOME, or the answer to a
    // RESUME); the client's rides with whatever goes next (offerPace).
    if (linkHas(l, LinkFlag.PaceOwed) && (this.role === 'server' || out !== undefined)) {
      linkSet(l, LinkFlag.PaceOwed, false);
      out ??= [];
      out.splice(queued, 0, encodePace(linkHas(l, LinkFlag.Watched) ? this.config.pathCheckInterval : 0));
    }
    if (out !== undefined) this.timers.set(Timer.Heartbeat, now + this.heartbeatEvery());
    return out;
  }

  /** DATA frames for what may be sent up to `limit`, about `budget` bytes at most, appended to `out`. */
  private pushData(out: Buffer[] | undefined, limit: number, budget: number): Buffer[] | undefined {
    const send = this.sendBuffer;
    if (send === undefined) return out; // nothing to send: the stream ends at sendOffset
    while (budget > 0 && send.next < limit) {
      const size = Math.min(SEND_FRAME_BYTES, limit - send.next);
      out ??= [];
      out.push(encodeDataHeader(send.next, size));
      send.read(size, out);
      budget -= size;
    }
    if (send.next > this.maxSent) this.maxSent = send.next;
    return out;
  }

  pollEvent(): SessionEvent | undefined {
    const ev = this.events?.shift();
    // Many connections stay quiet once made (a pool's spare ones): the
    // queue goes with the last event of the connect, not a heartbeat later.
    if (ev?.type === 'connect' && this.events!.size === 0) this.events = undefined;
    return ev;
  }

  /** The earliest time at which handleTimeout has work to do, or undefined. */
  pollTimeout(): number | undefined {
    const t = this.timers.next();
    return t === Infinity ? undefined : t;
  }

  // ---- server side of a resume ---------------------------------------------

  /** Server: a client asks on `link` to resume this session. The caller matched the session id and version. */
  handleResumeLink(link: LinkId, parser: FrameParser, resume: ResumeFrame, now: number): void {
    if (this._state === 'done') return;
    const pending = this.allLinks().filter((l) => l.phase === 'challenge');
    if (pending.length >= MAX_PENDING_RESUMES) this.dropLink(pending[0], 'superseded by a newer resume attempt');
    const l = this.addLink(link, 'challenge', now + this.config.handshakeTimeout, parser);
    const handshake = l.handshake!;
    handshake.clientNonce = resume.nonce;
    handshake.serverNonce = this.random.bytes(NONCE_SIZE);
    const mac = this.resumeMac('server', l, this.received, this.maxSent);
    queueFrame(l, encodeChallenge(handshake.serverNonce, this.received, this.maxSent, mac));
  }

  /** Server: fail this session because the server must shed a suspended session. */
  evict(now: number): void {
    this.fail(now, new RocksError('ERR_ROCKS_EVICTED'), undefined);
  }

  // ---- frame handling ------------------------------------------------------

  private processLink(l: Link, now: number): void {
    try {
      while (this.linkById(l.id) === l) {
        const frame = l.next();
        if (frame === undefined) break;
        this.handleFrame(l, frame, now);
      }
    } catch (err) {
      this.linkError(l, now, err);
    }
  }

  private handleFrame(l: Link, f: Frame, now: number): void {
    switch (l.phase) {
      case 'hello':
        if (f.type === FrameType.WELCOME) return this.onWelcome(l, f, now);
        break;
      case 'resume':
        if (f.type === FrameType.CHALLENGE) return this.onChallenge(l, f, now);
        break;
      case 'challenge':
        if (f.type === FrameType.PROOF) return this.onProof(l, f, now);
        break;
      case 'active':
        return this.onSessionFrame(l, f, now);
      case 'dialing':
        break;
    }
    if (f.type === FrameType.ERROR) return this.onHandshakeError(l, f.code, f.message, now);
    throw new RocksError('ERR_ROCKS_PROTOCOL', `unexpected frame 0x${f.type.toString(16)} during ${l.phase}`);
  }

  private onWelcome(l: Link, f: WelcomeFrame, now: number): void {
    if (f.version < MIN_PROTOCOL_VERSION || f.version > PROTOCOL_VERSION) {
      throw new RocksError('ERR_ROCKS_VERSION', `server chose version ${f.version}`);
    }
    const keyed = l === this.helloLink && this.channelId !== undefined;
    if (keyed && hold(f.sessionId) !== this.channelId) {
      throw new RocksError('ERR_ROCKS_PROTOCOL', 'WELCOME names another session than the keying channel gave');
    }
    let key = this.key;
    if (!keyed) {
      // Without a keying channel the key comes from the key agreement, and
      // CONFIRM, ahead of the ACK and any data, proves we hold it (§3.4).
      const keys = l.handshake!.keys!;
      const transcript: ConfirmTranscript = { version: f.version, sessionId: f.sessionId, clientPublic: keys.publicKey, serverPublic: f.publicKey };
      const derived = deriveSessionKey(keys, f.publicKey, f.sessionId, keys.publicKey, f.publicKey);
      queueFrame(l, encodeConfirm(confirmMac(derived, transcript)));
      key = hold(derived);
    }
    this._sessionId = hold(f.sessionId);
    const instance = hold(f.instance);
    // Equal strings, one copy: the sessions of a client mostly name one server.
    if (instance !== lastInstance) lastInstance = instance;
    this.serverInstance = lastInstance;
    this.key = key;
    this.peerWindow = f.window; // after early data, at least EARLY_DATA_BYTES (§15.2)
    this.windowSent = this.config.receiveWindow;
    // After a restart (the server dropped our unconfirmed session) everything
    // the old session sent goes out again; the new session's count starts at 0.
    // Early data went out on this very link ahead of the WELCOME: the server
    // reads it before anything we send now, so it does not go out again.
    const resent = this.maxSent;
    const early = l === this.helloLink ? this.sendNext : 0;
    this.helloLink = undefined;
    this.maxSent = 0;
    // Over TLS nothing is owed to the server yet: our HELLO gave our window,
    // and data that came with WELCOME is acknowledged as any (§4.4), so a
    // client that connects, reads a reply and leaves sends no extra write.
    this.activate(l, now, 0, 0, resent, !keyed);
    if (early > 0) {
      this.sendBuffer?.rewind(early);
      this.maxSent = early;
    }
  }

  private onChallenge(l: Link, f: ChallengeFrame, now: number): void {
    l.handshake!.serverNonce = f.nonce;
    const expected = this.resumeMac('server', l, f.received, f.sent);
    if (!macMatches(expected, f.mac)) {
      // Not our server (or not our session): keep trying, the real one may come back.
      this.dropLink(l, 'server failed resume authentication');
      return;
    }
    // While the old link still carries the session (a migration), the server
    // may have acknowledged more on it after it wrote this CHALLENGE: what
    // we were told there stands.
    const received = this.current !== undefined ? Math.max(f.received, this.sendStart) : f.received;
    if (!this.peerReceivedValid(received)) {
      this.fail(now, new RocksError('ERR_ROCKS_PROTOCOL', `server claims ${f.received} of our ${this.maxSent} units`), l);
      return;
    }
    const mac = this.resumeMac('client', l, this.received, this.maxSent);
    queueFrame(l, encodeProof(this.received, this.maxSent, mac));
    this.activate(l, now, received, f.sent);
  }

  private onProof(l: Link, f: ProofFrame, now: number): void {
    const expected = this.resumeMac('client', l, f.received, f.sent);
    if (!macMatches(expected, f.mac)) {
      // A stolen session id or a replayed resume: refuse it without touching the session.
      this.closeLink(l, true, [errorFrame('ERR_ROCKS_AUTH_FAILED', 'resume proof did not match')]);
      return;
    }
    if (!this.peerReceivedValid(f.received)) {
      this.fail(now, new RocksError('ERR_ROCKS_PROTOCOL', `client claims ${f.received} of our ${this.maxSent} units`), l);
      return;
    }
    this.activate(l, now, f.received, f.sent);
  }

  /** An ERROR frame on a link still in its handshake. */
  private onHandshakeError(l: Link, wire: number, message: string, now: number): void {
    const code = codeFromWire(wire);
    if (this.role === 'server') {
      this.dropLink(l, `client sent ${code}`);
      return;
    }
    switch (code) {
      case 'ERR_ROCKS_HANDSHAKE_TIMEOUT':
      case 'ERR_ROCKS_SERVER_BUSY':
      case 'ERR_ROCKS_AUTH_FAILED':
        if (code !== 'ERR_ROCKS_SERVER_BUSY' || l.phase === 'resume') {
          // This attempt failed, not the session: try again.
          this.dropLink(l, message);
          return;
        }
        break;
      case 'ERR_ROCKS_UNKNOWN_SESSION':
      case 'ERR_ROCKS_UNCONFIRMED_SESSION':
        if (l.phase === 'resume' && this._state === 'connecting') {
          // We resumed a keyed HELLO whose answer we missed, and the server
          // never held that session: start one, unless data already went out
          // with the HELLO (a server that died since may have delivered it).
          if (!this.hasFlag(Flag.SentEarly)) {
            this.restartSession(l, now);
            return;
          }
          this.fail(
            now,
            new RocksError('ERR_ROCKS_CONNECT_FAILED', 'the connection was lost in its first round trip and the server holds no session for it'),
            undefined,
          );
          return;
        }
        if (
          code === 'ERR_ROCKS_UNCONFIRMED_SESSION' &&
          l.phase === 'resume' &&
          !this.hasFlag(Flag.ServerConfirmed) &&
          !this.hasFlag(Flag.SentEarly)
        ) {
          // The server dropped the session before it ever held data of ours:
          // start a fresh one and send everything again.
          this.restartSession(l, now);
          return;
        }
        break;
      case 'ERR_ROCKS_SESSION_CLOSED':
        if (this.fin !== 'none' && this.hasFlag(Flag.FinReceived)) {
          // The server closed cleanly, so it held our FIN: we are finished.
          this.dropLink(l, message);
          if (this.fin === 'queued') this.fin = stepOutgoingFin(this.fin, 'held-by-peer');
          this.acknowledge(this.sendEnd + 1, now);
          this.completeClose(now);
          return;
        }
        break;
      default:
        break;
    }
    if (this.finished) {
      // Everything was delivered both ways; only the close confirmation was missing.
      this.dropLink(l, message);
      this.completeClose(now);
      return;
    }
    this.fail(
      now,
      RocksError.fromPeer(code === 'ERR_ROCKS_UNCONFIRMED_SESSION' ? 'ERR_ROCKS_UNKNOWN_SESSION' : code, `server said: ${message}`),
      undefined,
    );
  }

  private onSessionFrame(l: Link, f: Frame, now: number): void {
    if (this.expectedConfirm !== undefined) {
      // Server, before CONFIRM: the client's first frames after its HELLO are
      // data it sent behind the HELLO, if any, then CONFIRM, whose MAC proves
      // it derived the session key (§3.4, §3.8). Only then is the session
      // held through a failure. A client giving up instead just leaves.
      if (f.type === FrameType.CONFIRM) {
        if (!macMatches(this.expectedConfirm, f.mac)) {
          this.fail(now, new RocksError('ERR_ROCKS_AUTH_FAILED', 'confirmation MAC did not match'), l);
          return;
        }
        this.confirm(l, now);
        return;
      }
      if (f.type === FrameType.DATA && f.offset + f.data.length <= EARLY_DATA_BYTES) {
        // Its application gets the session with the data, as a TCP server
        // gets a connection with its first bytes; then the DATA as any.
        if (this._state === 'accepting') this.openEarly(l, now);
      } else if (this._state === 'accepting' && f.type === FrameType.ERROR) {
        this.closeLink(l, false);
        this.release(now, undefined);
        return;
      } else if (f.type !== FrameType.ERROR) {
        throw new RocksError('ERR_ROCKS_PROTOCOL', `frame 0x${f.type.toString(16)} after WELCOME, before CONFIRM`);
      }
    } else if (this.role === 'client') {
      this.setFlag(Flag.ServerConfirmed, true);
    }
    switch (f.type) {
      case FrameType.DATA: {
        const dataEnd = this.bytesReceived;
        if (f.offset > dataEnd) {
          throw new RocksError('ERR_ROCKS_PROTOCOL', `DATA at offset ${f.offset}, expected ${dataEnd}`);
        }
        // A resume may replay bytes we already hold: the old link can deliver
        // more after our CHALLENGE named a resume point. Keep only what is new.
        const data = f.offset === dataEnd ? f.data : f.data.subarray(dataEnd - f.offset);
        if (data.length === 0) return;
        if (this.hasFlag(Flag.FinReceived)) throw new RocksError('ERR_ROCKS_PROTOCOL', 'DATA after FIN');
        const end = this.received + data.length;
        if (end > this.windowSent) {
          throw new RocksError('ERR_ROCKS_FLOW_CONTROL', `data up to ${end} beyond window ${this.windowSent}`);
        }
        this.received = end;
        this.unread += data.length;
        this.touch(now);
        this.account();
        this.emit({ type: 'data', data });
        const owed = this.received - this.ackSent;
        if (owed >= Math.min(this.config.receiveWindow * WINDOW_STEP, ACK_EVERY_MAX)) this.needAck();
        else if (!this.hasFlag(Flag.AckNeeded)) this.ackWithin(owed < ACK_LAZY_BYTES ? ACK_DELAY_LAZY : ACK_DELAY, now);
        return;
      }
      case FrameType.ACK:
        return this.onAck(f.received, f.window, now);
      case FrameType.PACE:
        return this.onPace(l, f.interval, now);
      case FrameType.FIN:
        if (this.hasFlag(Flag.FinReceived) && f.offset === this.received - 1) return; // replayed
        if (this.hasFlag(Flag.FinReceived) || f.offset !== this.received) {
          throw new RocksError('ERR_ROCKS_PROTOCOL', `FIN at offset ${f.offset}, expected ${this.received}`);
        }
        this.received += 1;
        this.setFlag(Flag.FinReceived, true);
        this.needAck();
        this.emit({ type: 'end' });
        this.checkFinished(now);
        return;
      case FrameType.CLOSE:
        if (this.role !== 'client' || !this.finished) {
          throw new RocksError('ERR_ROCKS_PROTOCOL', 'CLOSE before both directions finished');
        }
        this.closeLink(l, true, [encodeCloseAck()]);
        this.completeClose(now);
        return;
      case FrameType.CLOSE_ACK:
        if (this.role !== 'server' || this.close === 'streaming') {
          throw new RocksError('ERR_ROCKS_PROTOCOL', 'CLOSE_ACK without CLOSE');
        }
        this.closeLink(l, true);
        this.release(now, ERROR_CODES.ERR_ROCKS_SESSION_CLOSED.wire);
        return;
      case FrameType.ERROR: {
        this.closeLink(l, false);
        if (this.finished && this.role === 'client') {
          // Everything was delivered both ways; only the close confirmation is missing.
          this.completeClose(now);
          return;
        }
        // Whatever the peer reports, for anyone resuming later the peer aborted.
        this.fail(now, RocksError.fromPeer(codeFromWire(f.code), `peer said: ${f.message}`), undefined, ERROR_CODES.ERR_ROCKS_PEER_ABORTED.wire);
        return;
      }
      default:
        throw new RocksError('ERR_ROCKS_PROTOCOL', `unexpected frame 0x${f.type.toString(16)} on an open session`);
    }
  }

  private onAck(received: number, window: number, now: number): void {
    if (received < this.sendStart || received > this.maxSent) {
      throw new RocksError('ERR_ROCKS_PROTOCOL', `ACK of ${received} outside [${this.sendStart}, ${this.maxSent}]`);
    }
    this.acknowledge(received, now);
    if (window > this.peerWindow) this.peerWindow = window;
  }

  /** The peer's kernel watches `l` (a non-zero `interval`), or not; either way it takes PACE (§5.1). */
  private onPace(l: Link, interval: number, now: number): void {
    l.peerPace = interval;
    // A client learns from the server's first PACE that it takes ours; a server learnt it from the HELLO.
    if (this.hasFlag(Flag.PeerTakesPace) || this.role === 'server') return;
    this.setFlag(Flag.PeerTakesPace, true);
    this.offerPace(l, now);
    if (l === this.current && this._state === 'open') this.timers.set(Timer.Failure, now + this.silenceLimit());
  }

  /**
   * Tells the peer on `l`, once confirmed, whether our kernel watches it. A
   * server always does, which is how a client learns that it takes PACE; a
   * client only when it does (a link without PACE is taken as unwatched).
   */
  private offerPace(l: Link, now: number): void {
    if (!this.hasFlag(Flag.PeerTakesPace) || this.expectedConfirm !== undefined || !(this.role === 'server' || linkHas(l, LinkFlag.Watched))) return;
    linkSet(l, LinkFlag.PaceOwed, true);
    // The client's PACE waits for company like a small acknowledgement: on
    // its own it would be a write and a wake-up for both ends at every
    // connection's first reply (pollTransmit).
    if (this.role === 'client') this.ackWithin(ACK_DELAY_LAZY, now);
  }

  /** How long the peer may stay silent on the current link: a path check's tolerance where our kernel watches it (§5.1). */
  private silenceLimit(): number {
    const F = this.config.failureTimeout;
    const current = this.current;
    return current !== undefined && linkHas(current, LinkFlag.Watched) && this.hasFlag(Flag.PeerTakesPace)
      ? Math.max(F, PATH_CHECKS_MISSED * this.config.pathCheckInterval)
      : F;
  }

  /** How long we may stay silent on the current link: as long as the peer's PACE allows, never less than our own rate. */
  private heartbeatEvery(): number {
    return Math.max(this.config.heartbeatInterval, this.current?.peerPace ?? 0);
  }

  private acknowledge(received: number, now: number): void {
    const freed = this.sendBuffer?.trimTo(Math.min(received, this.sendBuffer.end)) ?? 0;
    if (freed > 0) {
      this.account();
      // Held to its share, acknowledged output makes room for input too (an echo's window reopens as its echo is acknowledged).
      if (this.hasFlag(Flag.BudgetLimited)) this.offerWindow();
    }
    if (received > this.sendEnd && this.fin === 'sent') {
      this.fin = stepOutgoingFin(this.fin, 'ack');
      this.emit({ type: 'fin-acked' });
      this.checkFinished(now);
    }
    if (this.hasFlag(Flag.WriteBlocked) && this.canAcceptWrites()) {
      this.setFlag(Flag.WriteBlocked, false);
      this.emit({ type: 'writable' });
    }
  }

  // ---- state changes ---------------------------------------------------------

  /**
   * `l` carries the session from now on; the peer holds `peerReceived` of
   * our units and had sent `peerSent`; `replayedOut` of ours go out again.
   */
  private activate(
    l: Link,
    now: number,
    peerReceived: number,
    peerSent: number,
    replayedOut = Math.max(0, this.maxSent - peerReceived),
    owesAck = true,
  ): void {
    const wasState = this._state;
    const previous = this.current;
    const replacing = previous !== undefined && previous !== l;
    // The server had not noticed the failure yet, or the client moved the
    // session off a link that still worked: the new link replaces the old.
    if (replacing) this.closeLink(previous, false);
    for (const other of this.others) if (other !== l) this.dropLink(other, 'another attempt won');

    this.setCurrent(l);
    this.setFlag(Flag.CurrentInDoubt, false);
    const migration = migrationOf(l);
    l.phase = 'active';
    l.deadline = 0;
    l.handshake = undefined;
    this.dialSchedule = undefined;
    this.timers.stop(Timer.Suspend);
    this.refreshLinkTimers();

    // Rewind to what the peer holds: all before it is acknowledged, the rest is replayed.
    const replayedIn = Math.max(0, peerSent - this.received);
    // A link replaced while open shows the application a suspend and a
    // resume only when bytes were caught on it and go again: a move that
    // stalled nothing is none of its business.
    const moved = replacing && wasState === 'open';
    const movedWhy = migration?.reason ?? 'the peer reconnected on a new connection';
    const stalled = !moved || replayedOut > 0 || replayedIn > 0;
    if (moved && stalled) {
      this.suspendedAt = migration?.at ?? now;
      this.emit({ type: 'suspend', reason: movedWhy });
    }
    this.sendBuffer?.rewind(Math.min(Math.max(peerReceived, this.sendBuffer.start), this.sendBuffer.end));
    if (peerReceived <= this.sendEnd) this.fin = stepOutgoingFin(this.fin, 'rewind');

    if (wasState === 'accepting') {
      this.confirm(l, now);
    } else {
      if (this.expectedConfirm !== undefined) this.confirm(l, now); // a PROOF proves the key as CONFIRM does
      this.enterOpen(now, owesAck);
      this.emit({ type: 'link-active', link: l.id });
      if (moved) this.emit({ type: 'migrate', reason: movedWhy });
      if (wasState === 'connecting') {
        this.timers.stop(Timer.Connect);
        this.emit({ type: 'connect' });
      } else if (stalled) {
        if (wasState === 'suspended') this.host?.resumed(this);
        this.emit({ type: 'resume', outage: now - this.suspendedAt, replayedOut, replayedIn });
      }
    }
    this.offerPace(l, now);
    this.acknowledge(peerReceived, now);
    if (this.close === 'streaming') this.checkFinished(now);
    else this.close = stepClose(this.role, this.close, 'link-activated');
  }

  /** Server: the client's CONFIRM (or a resume's PROOF) makes the session real. */
  private confirm(l: Link, now: number): void {
    this.expectedConfirm = undefined;
    this.host?.confirmed(this);
    this.offerPace(l, now);
    l.deadline = 0;
    this.refreshLinkTimers();
    if (this._state === 'open') return; // opened at its early data (§3.8)
    this.enterOpen(now);
    this.emit({ type: 'link-active', link: l.id });
    this.emit({ type: 'open' });
  }

  /**
   * Server: data came behind the HELLO (§3.8). The application gets the
   * session now and may answer at once; it is not held through a failure
   * until CONFIRM, which is still due within handshakeTimeout of the HELLO.
   */
  private openEarly(l: Link, now: number): void {
    this.enterOpen(now, false);
    this.emit({ type: 'link-active', link: l.id });
    this.emit({ type: 'open' });
  }

  /** The current link carries the session: the peer is watched, and owed an ACK at once (unless not `owesAck`). */
  private enterOpen(now: number, owesAck = true): void {
    this._state = 'open';
    this.timers.set(Timer.Failure, now + this.silenceLimit());
    if (owesAck) this.needAck();
    else this.timers.set(Timer.Heartbeat, now + this.heartbeatEvery());
  }

  private linkFailed(now: number, reason: string): void {
    const l = this.current!;
    this.removeLink(l);
    this.emit({ type: 'close-link', link: l.id, graceful: false });
    if (this._state === 'accepting') {
      // Never confirmed: the client will start over, nothing to keep.
      this.release(now, undefined);
      return;
    }
    if (this.expectedConfirm !== undefined) {
      // Opened at its early data, never confirmed (§3.8): a stranger's as
      // likely as not, so nothing is held; the application hears of it.
      this.fail(now, new RocksError('ERR_ROCKS_CONNECT_FAILED', `the connection was lost before the client confirmed it (${reason})`), undefined);
      return;
    }
    this.enterSuspended(now, reason);
  }

  private enterSuspended(now: number, reason: string): void {
    this._state = 'suspended';
    this.suspendedAt = now;
    this.setFlag(Flag.AckNeeded, false);
    this.timers.stop(Timer.Failure);
    this.timers.stop(Timer.Heartbeat);
    this.timers.stop(Timer.AckDelay);
    this.timers.set(Timer.Suspend, now + this.config.suspendLimit);
    if (this.role === 'client') {
      let pendingSince = -Infinity;
      for (const l of this.others) {
        const migration = migrationOf(l);
        if (migration !== undefined && migration.at > pendingSince) pendingSince = migration.at;
      }
      this.dials().restart(now, pendingSince);
    }
    this.refreshLinkTimers();
    this.emit({ type: 'suspend', reason });
    this.host?.suspended(this, now);
  }

  /**
   * Client: the link of a keyed HELLO, or of one with data behind it, is
   * gone before WELCOME. The server may hold the session since that HELLO
   * arrived. Keyed, the next link resumes it by the id the channel gave
   * (§15.2), instead of starting a second one. Unkeyed, we never learnt its
   * id: with data gone out, the connection fails rather than send that data
   * into a second session (§3.8); without, the next HELLO starts afresh.
   * Returns true when `l` was that link.
   */
  private lostHello(l: Link, reason: string, now: number): boolean {
    if (l !== this.helloLink) return false;
    this.dropLink(l, reason); // no longer the HELLO's link: dials may start again
    if (this.channelId !== undefined) this._sessionId = this.channelId;
    else if (this.hasFlag(Flag.SentEarly))
      this.fail(now, new RocksError('ERR_ROCKS_CONNECT_FAILED', `the connection was lost in its first round trip (${reason})`), undefined);
    return true;
  }

  private restartSession(l: Link, now: number): void {
    this.dropLink(l, 'server dropped the unconfirmed session');
    this._sessionId = undefined;
    this.key = undefined;
    this.fin = stepOutgoingFin(this.fin, 'rewind');
    this.sendBuffer?.rewind(0);
    if (this.current !== undefined) {
      // A move found out (a resume from a new path): the link that carried
      // the dropped session, still open on our side, carries nothing now.
      // Data sent on it would move the cursor of the new session's stream.
      this.linkFailed(now, 'the server dropped the session before it was confirmed');
      return;
    }
    this.dials().dialNow(now);
    this.refreshLinkTimers();
  }

  /** Both directions just finished: the close handshake starts, for at most closeLinger. */
  private checkFinished(now: number): void {
    if (!this.finished || this.close !== 'streaming') return;
    this.close = stepClose(this.role, this.close, 'finished');
    this.timers.set(Timer.Linger, now + this.config.closeLinger);
    if (this.role === 'server') this.emit({ type: 'closed' });
  }

  /** Server: CLOSE went out or is owed, so everything was delivered both ways. */
  private get closeAnnounced(): boolean {
    return this.close === 'close-owed' || this.close === 'close-sent';
  }

  /** Client: the closing handshake is over (or given up on); everything was delivered. */
  private completeClose(now: number): void {
    this.emit({ type: 'closed' });
    this.release(now, undefined);
  }

  /** The session failed: tell the peer on `notify` if given, the application, and let go. */
  private fail(now: number, error: Error, notify: Link | undefined, ending?: number): void {
    if (this._state === 'done') return;
    const wire = error instanceof RocksError && error.wireCode !== 0 ? error.wireCode : ERROR_CODES.ERR_ROCKS_PROTOCOL.wire;
    const told = wire === (error as RocksError).wireCode ? error.message : 'internal error';
    if (notify !== undefined) this.closeLink(notify, true, [encodeError(wire, told)]);
    // An unconfirmed server session was never shown to the application, and
    // one that sent CLOSE has already delivered everything: nobody to tell.
    if (this._state !== 'accepting' && !this.closeAnnounced) this.emit({ type: 'error', error });
    this.release(now, this.endingCode(ending ?? wire));
  }

  /** What a client resuming this session later should hear, given why it ends. */
  private endingCode(reason: number): number | undefined {
    if (this._state === 'accepting' || this.expectedConfirm !== undefined) return undefined; // never confirmed
    if (this.closeAnnounced) return ERROR_CODES.ERR_ROCKS_SESSION_CLOSED.wire;
    return reason;
  }

  private release(_now: number, reason: number | undefined): void {
    if (this._state === 'done') return;
    for (const l of this.allLinks()) this.emit({ type: 'close-link', link: l.id, graceful: false });
    this.others = NO_ITEMS;
    this.current = undefined;
    this._state = 'done';
    this.timers.stopAll();
    this.sendBuffer?.trimTo(this.sendBuffer.end);
    this.unread = 0;
    this.account();
    this.host?.released(this, reason);
    this.emit({ type: 'released' });
  }

  // ---- links -----------------------------------------------------------------

  /** A new link; `arrived`: the frames that came on it before the session took it (the server core's). */
  private addLink(id: LinkId, phase: LinkPhase, deadline: number, arrived?: FrameParser): Link {
    const l = new Link(id, phase, deadline);
    if (arrived !== undefined) l.takeOver(arrived);
    this.others = withItem(this.others, l);
    this.refreshLinkTimers();
    return l;
  }

  private linkById(id: LinkId): Link | undefined {
    const c = this.current;
    return c !== undefined && c.id === id ? c : byId(this.others, id);
  }

  /** Every link in the order they came (a new array, for the walks that need them all). */
  private allLinks(): readonly Link[] {
    const c = this.current;
    if (c === undefined) return this.others;
    let at = 0;
    while (at < this.others.length && this.others[at].id < c.id) at++;
    return [...this.others.slice(0, at), c, ...this.others.slice(at)];
  }

  /** `l` carries the session from now on (the caller has closed the link it replaces). */
  private setCurrent(l: Link): void {
    this.others = withoutId(this.others, l.id);
    this.current = l;
  }

  private removeLink(l: Link): void {
    if (l === this.current) this.current = undefined;
    else this.others = withoutId(this.others, l.id);
    if (l === this.helloLink) this.helloLink = undefined;
    this.refreshLinkTimers();
  }

  /**
   * Re-derives the two timers that depend on the links: the earliest
   * handshake deadline, and (client without a link) the next dial. Called
   * wherever links come, go, change deadline or are first heard from.
   */
  private refreshLinkTimers(): void {
    // The current link has a deadline only until a server hears CONFIRM; 0 is none.
    let handshake = this.current?.deadline || Infinity;
    let silent = 0;
    for (const l of this.others) {
      if (l.deadline !== 0 && l.deadline < handshake) handshake = l.deadline;
      if (!linkHas(l, LinkFlag.Heard)) silent++;
    }
    this.timers.set(Timer.Handshake, handshake);
    let dialAt = Infinity;
    if (this.role === 'client' && this.current === undefined && this._state !== 'done' && this.helloLink === undefined) {
      // Without a current link, every link is a pending attempt.
      dialAt = this.dials().nextDialTime(this.others.length, silent);
    }
    this.timers.set(Timer.Dial, dialAt);
  }

  private dials(): DialSchedule {
    this.dialSchedule ??= new DialSchedule(this.config, this.random);
    return this.dialSchedule;
  }

  private dial(now: number): void {
    const id = this.nextLinkId++;
    this.addLink(id, 'dialing', now + this.config.handshakeTimeout);
    const { attempt, delay } = this.dials().dialed(now);
    if (this._state !== 'connecting' || this.hasFlag(Flag.EverConnected)) this.emit({ type: 'reconnect-attempt', attempt, delay });
    this.refreshLinkTimers();
    this.emit({ type: 'dial', link: id });
  }

  /** Closes a link that is not the current one. */
  private dropLink(l: Link, reason: string): void {
    this.closeLink(l, false, undefined, reason);
  }

  private closeLink(l: Link, graceful: boolean, final?: Buffer[], reason?: string): void {
    if (this.linkById(l.id) !== l) return;
    this.removeLink(l);
    const pending = l.out !== undefined && graceful ? l.out : [];
    const bytes = final ? [...pending, ...final] : pending;
    this.emit({ type: 'close-link', link: l.id, graceful, final: bytes.length > 0 ? bytes : undefined, reason });
  }

  /** A frame on `l` was malformed or broke the protocol. */
  private linkError(l: Link, now: number, err: unknown): void {
    if (isInvariantBreach(err)) throw err;
    // A bug of ours fails the session like a protocol error, but its details
    // (the stack) stay here: the peer only hears ERR_ROCKS_PROTOCOL.
    const error = err instanceof RocksError ? err : new RocksError('ERR_ROCKS_INTERNAL', String((err as Error)?.stack ?? err));
    if (l === this.current || (this.role === 'client' && l.phase === 'hello')) {
      // On the session's own link we cannot trust what the peer holds.
      this.fail(now, error, l);
      return;
    }
    this.closeLink(l, true, error.wireCode !== 0 ? [encodeError(error.wireCode, error.message)] : undefined);
  }

  // ---- helpers -----------------------------------------------------------------

  /** The MAC by which `by` proves, on resume link `l`, that it holds the key, for the offsets it reports. */
  private resumeMac(by: 'client' | 'server', l: Link, received: number, sent: number): Buffer {
    return resumeMac(unhold(this.key!), by, {
      version: PROTOCOL_VERSION,
      sessionId: unhold(this._sessionId!),
      clientNonce: l.handshake!.clientNonce!,
      serverNonce: l.handshake!.serverNonce!,
      received,
      sent,
    });
  }

  /** A peer reporting it holds fewer units than it acknowledged, or more than we sent, is broken. */
  private peerReceivedValid(peerReceived: number): boolean {
    return peerReceived >= this.sendStart && peerReceived <= this.maxSent;
  }

  private makeAck(): Buffer {
    const target = this.windowTarget();
    if (target > this.windowSent) this.windowSent = target;
    this.ackSent = this.received;
    this.setFlag(Flag.AckNeeded, false);
    this.timers.stop(Timer.AckDelay);
    return encodeAck(this.received, this.windowSent);
  }

  /** The window we would like to advertise: room for receiveWindow unread bytes, unless the host is over budget. */
  private windowTarget(): number {
    const target = this.bytesReceived - this.unread + this.config.receiveWindow;
    if (target <= this.windowSent || this.host === undefined) return target;
    // What the peer may still send becomes ours to hold: no more than our share.
    const allowed = this.bytesReceived + this.host.allowance(this);
    this.setFlag(Flag.BudgetLimited, allowed < target);
    if (allowed < target) {
      this.host.waitForBudget(this);
      return Math.max(this.windowSent, Math.floor(allowed));
    }
    return target;
  }

  private canAcceptWrites(): boolean {
    let ok = this.sendLength < this.config.maxInflight;
    // Unread input counts against the share but cannot starve output: an
    // application that echoes reads only as fast as it can write.
    if (ok && this.host !== undefined && this.host.allowance(this) <= 0 && this.sendLength >= this.host.guaranteedShare) {
      this.host.waitForBudget(this);
      ok = false;
    }
    if (!ok) this.setFlag(Flag.WriteBlocked, true);
    return ok;
  }

  private account(): void {
    const now = this.sendLength + this.unread;
    if (now !== this.buffered) {
      const delta = now - this.buffered;
      this.buffered = now;
      this.host?.bufferChanged(this, delta);
    }
  }

  /** Application data moved: the idle timeout starts over. */
  private touch(now: number): void {
    if (this.idleTimeout > 0) this.timers.set(Timer.Idle, now + this.idleTimeout);
  }

  /** An acknowledgement goes out within `delay`, with company if any comes first. */
  private ackWithin(delay: number, now: number): void {
    if (now + delay < this.timers.get(Timer.AckDelay)) this.timers.set(Timer.AckDelay, now + delay);
  }

  /** An ACK goes out with the next transmission, so neither a delayed ACK nor a heartbeat is due meanwhile. */
  private needAck(): void {
    this.setFlag(Flag.AckNeeded, true);
    this.timers.stop(Timer.AckDelay);
    this.timers.stop(Timer.Heartbeat);
  }

  private emit(ev: SessionEvent): void {
    this.events ??= new Fifo();
    this.events.push(ev);
  }
}

function errorFrame(code: RocksErrorCode, message: string): Buffer {
  return encodeError(ERROR_CODES[code].wire, message);
}
