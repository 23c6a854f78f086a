// The server's side before a link belongs to a session, and the book of all
// sessions. Each new link first goes through EDP detection: an announcement
// means a rocks client, end-of-stream before any byte means a probe, anything
// else (or silence for detectTimeout) an ordinary client, handed back to the
// caller as a plain connection. A rocks link's first frame then creates a
// session (HELLO) or names one (RESUME). It enforces the server's limits.
// Like Session, it does no I/O.

import type { ServerLimits, SessionConfig } from './config.js';
import { RocksError, codeFromWire } from './errors.js';
import { commonVersion, encodeAnnouncement, parseAnnouncement, ROCKS } from '../edp/announcement.js';
import { encodeError, FrameParser, FrameType, INSTANCE_SIZE, type HelloFrame, type ResumeFrame } from './frames.js';
import type { RandomSource } from './random.js';
import { MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Session, type LinkId, type SessionHost } from './session.js';
import { invariant, isInvariantBreach } from './invariant.js';
import { makeSessionId, type SessionOwner } from './routing.js';

export type ServerEvent =
  /** A new session now owns `link`; drive it and route the link's bytes to it. */
  | { type: 'session'; session: Session; link: LinkId }
  /** An existing session now owns `link` (a resume attempt). */
  | { type: 'bind'; session: Session; link: LinkId }
  /** Close a link no session owns: after writing `final`, by ending it. */
  | { type: 'close-link'; link: LinkId; final: Buffer[] }
  /** Write these bytes on a link no session owns yet (our EDP announcement). */
  | { type: 'send'; link: LinkId; bytes: Buffer }
  /**
   * An ordinary client: serve the link as a plain connection, starting with
   * the bytes already read (`ended`: the client also closed its side).
   */
  | { type: 'plain'; link: LinkId; initial: Buffer; ended: boolean; reason: string }
  /** A link was refused; for logs and counters. */
  | { type: 'rejected'; link: LinkId; error: RocksError }
  /** Something changed for this session outside its own calls: poll it. */
  | { type: 'wake'; session: Session };

/** How many released session ids the server remembers, to tell a resuming client what became of its session. */
const REMEMBERED_ENDINGS = 65_536;

/** Our EDP announcement: what a client or a probe reads from us first. */
const SERVER_ANNOUNCEMENT = encodeAnnouncement([ROCKS]);

interface PendingLink {
  /** Bytes read while detecting; undefined once the link announced rocks. */
  detecting: Buffer | undefined;
  parser: FrameParser;
  deadline: number;
}

export class ServerCore implements SessionHost {
  private readonly config: SessionConfig;
  private readonly limits: ServerLimits;
  private readonly random: RandomSource;

  private readonly pending = new Map<LinkId, PendingLink>();
  private readonly sessions = new Map<string, Session>();
  /** Suspended sessions in the order they were suspended (oldest first). */
  private readonly suspendedSessions = new Set<Session>();
  private readonly budgetWaiters = new Set<Session>();
  /** Why recently released sessions ended (wire error code), oldest first. */
  private readonly endings = new Map<string, number>();
  private buffered = 0;
  /** This run of the server; a client resuming with another one knows the server restarted. */
  readonly instance: Buffer;
  private readonly owner: SessionOwner;

  private events: ServerEvent[] = [];
  private eventHead = 0;

  /**
   * @param owner where the sessions it creates live (routing.ts); a random
   * node id when not given.
   */
  constructor(config: SessionConfig, limits: ServerLimits, random: RandomSource, owner?: Partial<SessionOwner>) {
    this.config = config;
    this.limits = limits;
    this.random = random;
    this.instance = random.bytes(INSTANCE_SIZE);
    this.owner = {
      nodeId: owner?.nodeId ?? random.bytes(4).readUInt32BE(0),
      workerId: owner?.workerId ?? 0,
    };
  }

  /** The node and worker every session id this server issues names. */
  get nodeId(): number {
    return this.owner.nodeId;
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  get suspendedCount(): number {
    return this.suspendedSessions.size;
  }

  get bufferedBytes(): number {
    return this.buffered;
  }

  get pendingLinkCount(): number {
    return this.pending.size;
  }

  // ---- input --------------------------------------------------------------

  handleLinkOpen(link: LinkId, now: number): void {
    this.pending.set(link, { detecting: Buffer.alloc(0), parser: new FrameParser(), deadline: now + this.limits.detectTimeout });
  }

  /** Bytes on a link no session owns yet. */
  handleLinkData(link: LinkId, chunk: Buffer, now: number): void {
    const p = this.pending.get(link);
    if (p === undefined) return;
    if (p.detecting !== undefined) {
      chunk = this.detect(link, p, chunk, now) ?? Buffer.alloc(0);
      if (chunk.length === 0) return;
    }
    p.parser.push(chunk);
    // Whatever a stranger sends, only this link may suffer for it.
    try {
      const frame = p.parser.next();
      if (frame === undefined) return;
      this.pending.delete(link);
      if (frame.type === FrameType.HELLO) this.onHello(link, p.parser, frame, now);
      else if (frame.type === FrameType.RESUME) this.onResume(link, p.parser, frame, now);
      else this.reject(link, new RocksError('ERR_ROCKS_PROTOCOL', `a connection must start with HELLO or RESUME, not 0x${frame.type.toString(16)}`));
    } catch (err) {
      this.reject(link, err);
    }
  }

  /** The peer ended its side of a link no session owns yet. */
  handleLinkEnd(link: LinkId): void {
    const p = this.pending.get(link);
    if (p === undefined) return;
    this.pending.delete(link);
    if (p.detecting !== undefined && p.detecting.length === 0) {
      // A probe: connect, half-close at once, read what we say. Tell it.
      this.events.push({ type: 'close-link', link, final: [SERVER_ANNOUNCEMENT] });
    } else if (p.detecting !== undefined) {
      this.events.push({ type: 'plain', link, initial: p.detecting, ended: true, reason: 'ordinary client (closed its side)' });
    } else {
      this.reject(link, new RocksError('ERR_ROCKS_HANDSHAKE_TIMEOUT', 'the client closed before HELLO or RESUME'));
    }
  }

  handleLinkClosed(link: LinkId): void {
    this.pending.delete(link);
  }

  handleTimeout(now: number): void {
    for (const [link, p] of this.pending) {
      if (p.deadline > now) continue;
      if (p.detecting !== undefined) {
        // Silent: an ordinary client waiting for the server to speak first.
        this.pending.delete(link);
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

  /** EDP on a new link. Returns the bytes after a rocks announcement, or undefined. */
  private detect(link: LinkId, p: PendingLink, chunk: Buffer, now: number): Buffer | undefined {
    const bytes = p.detecting!.length === 0 ? chunk : Buffer.concat([p.detecting!, chunk]);
    const r = parseAnnouncement(bytes);
    switch (r.kind) {
      case 'incomplete':
        p.detecting = bytes;
        return undefined;
      case 'other':
        this.pending.delete(link);
        this.events.push({ type: 'plain', link, initial: bytes, ended: false, reason: 'ordinary client (spoke first)' });
        return undefined;
      case 'malformed':
        this.pending.delete(link);
        this.events.push({ type: 'rejected', link, error: new RocksError('ERR_ROCKS_PROTOCOL', `malformed EDP announcement: ${r.reason}`) });
        this.events.push({ type: 'close-link', link, final: [] });
        return undefined;
      case 'announcement':
        p.detecting = undefined;
        p.deadline = now + this.config.handshakeTimeout;
        // Our announcement names our versions; with none in common the client
        // falls back on its own, so we say it and close.
        if (commonVersion(ROCKS, r.enhancements) === undefined) {
          this.pending.delete(link);
          this.events.push({ type: 'close-link', link, final: [SERVER_ANNOUNCEMENT] });
          return undefined;
        }
        this.events.push({ type: 'send', link, bytes: SERVER_ANNOUNCEMENT });
        return bytes.subarray(r.length);
    }
  }

  // ---- output -------------------------------------------------------------

  pollEvent(): ServerEvent | undefined {
    if (this.eventHead === this.events.length) return undefined;
    const ev = this.events[this.eventHead++];
    if (this.eventHead === this.events.length) {
      this.events.length = 0;
      this.eventHead = 0;
    }
    return ev;
  }

  pollTimeout(): number | undefined {
    let t = Infinity;
    for (const p of this.pending.values()) if (p.deadline < t) t = p.deadline;
    return t === Infinity ? undefined : t;
  }

  /** Every live session (for shutdown). */
  allSessions(): IterableIterator<Session> {
    return this.sessions.values();
  }

  // ---- SessionHost ----------------------------------------------------------

  bufferChanged(_session: Session, delta: number): void {
    this.buffered += delta;
    invariant(this.buffered >= 0, () => `${this.buffered} bytes buffered after a change of ${delta}`);
    if (delta < 0 && this.budgetWaiters.size > 0 && !this.overBudget()) {
      const waiters = [...this.budgetWaiters];
      this.budgetWaiters.clear();
      for (const s of waiters) {
        s.recheck();
        this.events.push({ type: 'wake', session: s });
      }
    }
  }

  overBudget(): boolean {
    return this.buffered >= this.limits.maxBufferedBytes;
  }

  waitForBudget(session: Session): void {
    this.budgetWaiters.add(session);
  }

  suspended(session: Session, now: number): void {
    this.suspendedSessions.add(session);
    if (this.suspendedSessions.size > this.limits.maxSuspendedSessions) {
      const oldest = this.suspendedSessions.values().next().value as Session;
      oldest.evict(now);
      this.events.push({ type: 'wake', session: oldest });
    }
  }

  resumed(session: Session): void {
    this.suspendedSessions.delete(session);
  }

  released(session: Session, reason: number | undefined): void {
    this.suspendedSessions.delete(session);
    this.budgetWaiters.delete(session);
    const id = session.sessionId!.toString('hex');
    if (this.sessions.get(id) !== session) return;
    this.sessions.delete(id);
    if (reason === undefined) return;
    this.endings.set(id, reason);
    if (this.endings.size > REMEMBERED_ENDINGS) this.endings.delete(this.endings.keys().next().value as string);
  }

  // ---- first frames -----------------------------------------------------------

  private onHello(link: LinkId, parser: FrameParser, hello: HelloFrame, now: number): void {
    if (hello.minVersion > PROTOCOL_VERSION || hello.maxVersion < MIN_PROTOCOL_VERSION) {
      this.reject(link, versionError(hello.minVersion, hello.maxVersion));
      return;
    }
    if (this.sessions.size >= this.limits.maxSessions) {
      this.reject(link, new RocksError('ERR_ROCKS_SERVER_BUSY', `${this.sessions.size} sessions, the most allowed`));
      return;
    }
    if (this.overBudget()) {
      this.reject(link, new RocksError('ERR_ROCKS_SERVER_BUSY', 'buffer budget exhausted'));
      return;
    }
    // Register first: the bytes that came with the HELLO may end the session at once.
    const sessionId = makeSessionId(this.owner, this.random);
    const session = Session.accept(this.config, this.random, this, now, link, parser, hello, this.instance, sessionId);
    this.sessions.set(session.sessionId!.toString('hex'), session);
    this.events.push({ type: 'session', session, link });
    session.processBuffered(link, now);
  }

  private onResume(link: LinkId, parser: FrameParser, resume: ResumeFrame, now: number): void {
    if (resume.version < MIN_PROTOCOL_VERSION || resume.version > PROTOCOL_VERSION) {
      this.reject(link, versionError(resume.version, resume.version));
      return;
    }
    const id = resume.sessionId.toString('hex');
    const session = this.sessions.get(id);
    if (session === undefined) {
      this.reject(link, this.whyUnknown(id, resume.instance));
      return;
    }
    session.handleResumeLink(link, parser, resume, now);
    this.events.push({ type: 'bind', session, link });
    session.processBuffered(link, now);
  }

  /**
   * What to tell a client resuming a session we do not hold. A client needs
   * to know whether its bytes may have reached an application: only then
   * would starting over deliver them twice.
   */
  private whyUnknown(id: string, instance: Buffer): RocksError {
    if (!instance.equals(this.instance)) return new RocksError('ERR_ROCKS_UNKNOWN_SESSION', 'the server restarted');
    const ending = this.endings.get(id);
    if (ending !== undefined) return new RocksError(codeFromWire(ending));
    // This run of the server never confirmed it (or forgot it long ago).
    return new RocksError('ERR_ROCKS_UNCONFIRMED_SESSION');
  }

  private reject(link: LinkId, err: unknown): void {
    if (isInvariantBreach(err)) throw err;
    this.pending.delete(link);
    const error = err instanceof RocksError ? err : new RocksError('ERR_ROCKS_INTERNAL', String(err));
    const final = error.wireCode !== 0 ? [encodeError(error.wireCode, error.message)] : [];
    this.events.push({ type: 'rejected', link, error });
    this.events.push({ type: 'close-link', link, final });
  }
}

function versionError(min: number, max: number): RocksError {
  return new RocksError('ERR_ROCKS_VERSION', `client speaks ${min}-${max}, server ${MIN_PROTOCOL_VERSION}-${PROTOCOL_VERSION}`);
}
