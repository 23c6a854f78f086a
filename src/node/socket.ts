// ReliableSocket: a Duplex with the net.Socket surface applications use.
//
// Between two rocks ends it is carried by a protocol Session that survives
// the failure of the TCP connections beneath it (`reliable` is true). With an
// ordinary peer, which EDP detects, it is a thin pass-through over one plain
// net.Socket and behaves exactly like one (`reliable` is false).
//
// With the `tls` option every link is a TLS connection (tls-link.ts): the
// server's ALPN answer on the first link decides the mode, and in plain mode
// the socket is a pass-through over that one TLSSocket.

import { connect as netConnect, type AddressInfo, type NetConnectOpts, type Socket, type TcpNetConnectOpts } from 'node:net';
import { Duplex } from 'node:stream';
import { connect as tlsConnect, type ConnectionOptions, type PeerCertificate, TLSSocket } from 'node:tls';
import { debuglog } from 'node:util';
import { EDP_MAGIC } from '../edp/announcement.js';
import { resolveSessionConfig, type SessionOptions } from '../protocol/config.js';
import { RocksError } from '../protocol/errors.js';
import type { ProxyAddress } from '../protocol/proxy-header.js';
import { systemRandom } from '../protocol/random.js';
import { Session, type SessionEvent } from '../protocol/session.js';
import { destinationKey, detectionCache, probe, type Verdict } from './detect.js';
import { normalizeConnectArgs } from './connect-args.js';
import { type LinkHandle, SessionDriver, type ServerSessionHooks, type SessionListener } from './driver.js';
import { monotonicNow } from './scheduler.js';
import { endsOf, familyOf } from './socket-ends.js';
import { clientAlpn, isRocksLink, isVerificationFailure, markSecured, ROCKS_ALPN, watchHandshake } from './tls-link.js';
import { withFlag } from '../util/flags.js';

const debug = debuglog('rocks');

/** What the `suspend` event carries. */
export interface SuspendInfo {
  reason: string;
}

/**
 * What the `migrate` event carries: the session moved to a new connection
 * while the old one was still open (PROTOCOL.md §6.8): on a client, because
 * the network changed under it; on a server, because its client moved. The
 * addresses are the new connection's by then. A `suspend` and a `reconnect`
 * come with it only when bytes were caught on the old connection and went
 * again.
 */
export interface MigrateInfo {
  reason: string;
}

/** What the `reconnect` event carries: the session is carried again after a suspension. */
export interface ReconnectInfo {
  /** How long the connection was suspended, in ms. */
  outage: number;
  /** Bytes this side sent again because the peer had not received them. */
  replayedOut: number;
  /** Bytes the peer sent again to this side. */
  replayedIn: number;
  /** Server side: the resume reached this node through another node of the deployment (a relay). */
  relayed: boolean;
}

/** What the `reconnect-attempt` event carries. */
export interface ReconnectAttemptInfo {
  /** 1 for the first attempt after a failure. */
  attempt: number;
  /** The backoff waited before this attempt, in ms. */
  delay: number;
}

/** What the `detect` event carries (just before 'connect'): which mode the socket runs in, and why. */
export interface DetectInfo {
  reliable: boolean;
  reason: string;
  /** The verdict came from the cache of earlier probes. */
  cached: boolean;
}

export interface ReliableSocketOptions extends SessionOptions {
  /** As for net.Socket: when false (the default) the socket ends its side once the peer ends. */
  allowHalfOpen?: boolean;
  readableHighWaterMark?: number;
  writableHighWaterMark?: number;
  /**
   * Client: every link is a TLS connection made with these node:tls options
   * (ca, servername, rejectUnauthorized, cert/key, checkServerIdentity,
   * ALPNProtocols...). The client offers ALPN `rocks/1` first; a server that
   * selects it carries a rocks session, any other server gets a plain TLS
   * connection, as tls.connect would make it.
   */
  tls?: ConnectionOptions;
  /**
   * Client: when the host's addresses, default route or interfaces change,
   * or the process did not run for longer than failureTimeout (sleep), the
   * session moves to a new connection at once instead of waiting out
   * failureTimeout (PROTOCOL.md §6.8). Default true.
   */
  watchNetwork?: boolean;
  /**
   * After a read of less than a segment that nothing answered in the same
   * turn, the kernel acknowledges it at once (TCP_QUICKACK, Linux): a hop
   * with Nagle's algorithm on may hold the rest of a message until then.
   * False for a peer that never waits for our ACK to send more (a rack
   * daemon's carriages): each such ACK costs a system call and a segment.
   * Default true.
   */
  quickAck?: boolean;
}

export type ReliableConnectOptions = ReliableSocketOptions & {
  port?: number;
  host?: string;
  path?: string;
  family?: number;
  localAddress?: string;
  hints?: number;
  lookup?: TcpNetConnectOpts['lookup'];
  autoSelectFamily?: boolean;
  autoSelectFamilyAttemptTimeout?: number;
  /** As net.connect: calls setNoDelay on the socket. */
  noDelay?: boolean;
  /** As net.connect: calls setTimeout on the socket. */
  timeout?: number;
  /** Skip detection: true when the server is known to speak rocks, false when known not to. */
  enhanced?: boolean;
  /** How long the EDP probe waits for the server's answer (ms). Default 500. */
  probeTimeout?: number;
  /** How long a detection verdict is remembered per destination (ms); 0 disables the cache. Default 600000. */
  detectCacheTtl?: number;
};

/** Connect options passed to net.connect for every dial; the rest are ours. */
const DIAL_KEYS = [
  'port',
  'host',
  'path',
  'family',
  'localAddress',
  'hints',
  'lookup',
  'autoSelectFamily',
  'autoSelectFamilyAttemptTimeout',
] as const;

type Callback = (err?: Error | null) => void;
/** Takes a plain connection back as a rocks link: `first`, its first bytes, are an announcement. */
export type LateAnnouncement = (raw: Socket, first: Buffer) => void;

/** A socket's yes/no state, bits of its `flags` (util/flags.ts). */
const Flag = {
  /** connect() was called and the connection is not yet established. */
  Connecting: 1 << 0,
  /** Connected once, in either mode: writes go through from now on. */
  Established: 1 << 1,
  Referenced: 1 << 2,
  NoDelay: 1 << 3,
  /** Client: the verdict came from the detection cache, not from a probe of this connection. */
  VerdictCached: 1 << 4,
  /** Client: a cached verdict proved wrong and this connection probed again (once at most). */
  Reprobed: 1 << 5,
} as const;

/** What a socket over TLS (the tls option) keeps across its links. */
interface TlsLinks {
  /** Client: the first link, already secured when the session adopts it. */
  firstLink: TLSSocket | undefined;
  /** Client: the latest session ticket, offered on the next dial so that a resume costs one round trip. */
  ticket: Buffer | undefined;
  /** The last link that carried the session, for getPeerCertificate() and friends while suspended. */
  last: TLSSocket | undefined;
}

/** What a client collects while it connects, let go once connected. */
interface Opening {
  /** Writes waiting for the connection to be established, in either mode; undefined when none. */
  writes: { chunks: Buffer[]; callback: Callback }[] | undefined;
  /** end() came meanwhile. */
  final: Callback | undefined;
  /** The mode chosen and why, for the 'detect' event. */
  verdict: DetectInfo | undefined;
}

export class ReliableSocket extends Duplex implements SessionListener {
  /** Reliable mode: the session and its driver. */
  private driver: SessionDriver | undefined;
  /** Plain mode: the one ordinary connection. */
  private raw: Socket | undefined;
  private options: ReliableConnectOptions;
  // The ends of the connection it last ran on (socket-ends.ts); fields of
  // their own, as an object of them would cost each connection 32 bytes more.
  private lastRemoteAddress: string | undefined;
  private lastRemotePort: number | undefined;
  private lastLocalAddress: string | undefined;
  private lastLocalPort: number | undefined;
  /** Client, until the connection is established: one field for what only connecting needs. */
  private opening: Opening | undefined;
  private pendingWrite: Callback | undefined;
  private pendingFinal: Callback | undefined;
  private delivered = 0;
  private idleTimeout = 0;
  /** Yes/no state, one bit each (Flag). */
  private flags: number = Flag.Referenced | Flag.NoDelay;
  /** Plain mode: our listeners on `raw`, so that a late announcement can take it back (detachRaw). */
  // biome-ignore lint/suspicious/noExplicitAny: the listener type of Node's Socket.on(string, ...)
  private plainListeners: [string, (...args: any[]) => void][] | undefined;
  /** Over TLS: one field for the three, which a socket without TLS never needs. */
  private tlsLinks: TlsLinks | undefined;

  constructor(options: ReliableSocketOptions = {}) {
    super({
      allowHalfOpen: options.allowHalfOpen ?? false,
      readableHighWaterMark: options.readableHighWaterMark,
      writableHighWaterMark: options.writableHighWaterMark,
      decodeStrings: true,
      emitClose: true,
      autoDestroy: true,
    });
    this.options = options;
    resolveSessionConfig(options); // fail early on bad options
  }

  private useOpening(): Opening {
    this.opening ??= { writes: undefined, final: undefined, verdict: undefined };
    return this.opening;
  }

  private useTlsLinks(): TlsLinks {
    this.tlsLinks ??= { firstLink: undefined, ticket: undefined, last: undefined };
    return this.tlsLinks;
  }

  private hasFlag(flag: number): boolean {
    return (this.flags & flag) !== 0;
  }

  private setFlag(flag: number, on: boolean): void {
    this.flags = withFlag(this.flags, flag, on);
  }

  /** Wraps a server-side session (used by ReliableServer). */
  static fromSession(session: Session, options: ReliableSocketOptions, hooks: ServerSessionHooks): { socket: ReliableSocket; driver: SessionDriver } {
    const socket = new ReliableSocket(options);
    const driver = new SessionDriver(session, socket, hooks);
    driver.setQuickAck(options.quickAck !== false);
    socket.driver = driver;
    socket.setFlag(Flag.Established, true);
    driver.setRef(true);
    return { socket, driver };
  }

  /**
   * Wraps a server-side connection from an ordinary client (used by
   * ReliableServer): `initial` holds what EDP already read of it.
   * `takeLate`: where a connection that was silent for detectTimeout goes
   * when its first bytes turn out to be a rocks announcement after all.
   */
  static fromPlain(raw: Socket, initial: Buffer, ended: boolean, options: ReliableSocketOptions, takeLate?: LateAnnouncement): ReliableSocket {
    const socket = new ReliableSocket(options);
    socket.setFlag(Flag.Established, true);
    // Over TLS the client's ALPN offer already told a rocks client apart.
    const late = initial.length === 0 && !ended && !(raw instanceof TLSSocket) ? (takeLate ?? 'drop') : undefined;
    socket.attachRaw(raw, late);
    socket.learnFrom(raw);
    if (initial.length > 0) socket.deliver(initial);
    if (ended) socket.push(null);
    return socket;
  }

  // ---- connecting ---------------------------------------------------------------

  connect(options: ReliableConnectOptions, connectListener?: () => void): this;
  connect(port: number, host?: string, connectListener?: () => void): this;
  connect(port: number, connectListener?: () => void): this;
  connect(path: string, connectListener?: () => void): this;
  connect(...args: unknown[]): this {
    if (this.hasFlag(Flag.Connecting) || this.hasFlag(Flag.Established)) {
      throw new RocksError('ERR_ROCKS_INVALID_OPTION', 'socket is already connected or connecting');
    }
    const [options, listener] = normalizeConnectArgs(args);
    this.options = { ...this.options, ...options };
    resolveSessionConfig(this.options);
    checkDetectOptions(this.options);
    if (options.port == null && options.path == null) {
      throw new RocksError('ERR_ROCKS_INVALID_OPTION', 'connect needs a port or a path');
    }
    if (options.noDelay === false) this.setFlag(Flag.NoDelay, false);
    if (listener) this.once('connect', listener);
    if (options.timeout !== undefined) this.setTimeout(options.timeout);
    this.setFlag(Flag.Connecting, true);

    if (this.options.tls !== undefined) this.connectTls(this.options.tls);
    else if (this.options.enhanced === true) this.startReliable({ enhanced: true, reason: 'the application said the server speaks rocks' });
    else if (this.options.enhanced === false) this.startPlain({ enhanced: false, reason: 'the application said the server is ordinary' });
    else this.detect();
    return this;
  }

  /**
   * EDP by ALPN: the first link is a TLS connection offering `rocks/1`; the
   * server's answer is the verdict, with no probe and no cache. A TLS error
   * on it fails the connection as it would fail tls.connect.
   */
  private connectTls(tls: ConnectionOptions): void {
    if (this.options.enhanced === false) {
      this.decided(false, 'the application said the server is ordinary');
      const raw = tlsConnect({ ...this.dialOptions, ...tls } as ConnectionOptions);
      this.attachRaw(raw);
      raw.once('secureConnect', () => this.becomePlainTls(raw));
      return;
    }
    const first = this.dialTls(false);
    this.useTlsLinks().firstLink = first; // destroyed with us until a mode takes it
    const failed = (err: Error): void => {
      this.destroy(err);
    };
    first.once('error', failed);
    first.once('secureConnect', () => {
      first.removeListener('error', failed);
      if (this.destroyed) {
        first.destroy();
        return;
      }
      if (isRocksLink(first)) {
        if (first.getProtocol() !== 'TLSv1.3') {
          first.destroy();
          this.destroy(
            new RocksError('ERR_ROCKS_PROTOCOL', `the server selected ${ROCKS_ALPN} over ${first.getProtocol()}; rocks links need TLSv1.3`),
          );
          return;
        }
        markSecured(first);
        this.startReliable({ enhanced: true, reason: `the server selected ALPN ${ROCKS_ALPN}` });
        return;
      }
      const selected = first.alpnProtocol ? `ALPN ${first.alpnProtocol}` : 'no ALPN protocol';
      if (this.options.enhanced === true) {
        first.destroy();
        this.destroy(new RocksError('ERR_ROCKS_NOT_ENHANCED', `the TLS server selected ${selected}, not ${ROCKS_ALPN}`));
        return;
      }
      this.decided(false, `ordinary TLS server (it selected ${selected})`);
      this.useTlsLinks().firstLink = undefined;
      this.attachRaw(first);
      this.becomePlainTls(first);
    });
  }

  private becomePlainTls(raw: TLSSocket): void {
    this.learnFrom(raw);
    this.becomeConnected();
    this.emit('secureConnect');
  }

  /**
   * A TLS link: the first offers `rocks/1` before the application's own
   * protocols; a resume offers `rocks/1` alone, over TLS 1.3 only, with the
   * latest session ticket.
   */
  private dialTls(resume: boolean): TLSSocket {
    const tls = this.options.tls!;
    const options: ConnectionOptions = {
      ...(this.dialOptions as ConnectionOptions),
      ...tls,
      ALPNProtocols: resume ? [ROCKS_ALPN] : clientAlpn(tls.ALPNProtocols),
    };
    if (resume) options.minVersion = 'TLSv1.3';
    const ticket = this.useTlsLinks().ticket ?? tls.session;
    if (ticket !== undefined) options.session = ticket;
    const s = tlsConnect(options);
    watchHandshake(s);
    s.on('session', (t: Buffer) => {
      this.useTlsLinks().ticket = t;
    });
    if (resume) {
      s.once('secureConnect', () => {
        if (!isRocksLink(s)) s.destroy(new RocksError('ERR_ROCKS_NOT_ENHANCED', `the TLS server of this resume did not select ${ROCKS_ALPN}`));
      });
      // A server that completed a genuine handshake but fails verification
      // (another certificate, a pin that no longer matches) will fail every
      // attempt: end the session with its error instead of trying until
      // suspendLimit. Broken or tampered handshakes only drop the link.
      s.once('error', (err: Error) => {
        if (isVerificationFailure(s) && !this.destroyed) this.destroy(err);
      });
    }
    return s;
  }

  /** EDP: the cached verdict for this destination, or a probe. */
  private detect(): void {
    const key = this.destination();
    const cached = detectionCache.get(key);
    if (cached !== undefined) {
      this.setFlag(Flag.VerdictCached, true);
      this.decide(cached);
      return;
    }
    this.setFlag(Flag.VerdictCached, false);
    const ttl = this.options.detectCacheTtl ?? 600_000;
    const run = (): Promise<Verdict> => probe(this.dialOptions, this.options.probeTimeout ?? 500);
    // With the cache off, every connection probes (what detectCacheTtl: 0 asks for).
    (ttl > 0 ? detectionCache.probeOnce(key, run) : run()).then(
      (verdict) => {
        detectionCache.set(key, verdict, ttl);
        if (!this.destroyed) this.decide(verdict);
      },
      (err: Error) => this.destroy(err),
    );
  }

  private decide(verdict: Verdict): void {
    if (verdict.enhanced) this.startReliable(verdict);
    else this.startPlain(verdict);
  }

  /** Logs a decision; the 'detect' event follows with the connection, once the mode is certain. */
  private decided(reliable: boolean, reason: string): void {
    this.useOpening().verdict = { reliable, reason, cached: this.hasFlag(Flag.VerdictCached) };
    debug('%s %s: %s%s', reliable ? 'reliable' : 'plain', this.destination(), reason, this.hasFlag(Flag.VerdictCached) ? ' (cached)' : '');
  }

  private destination(): string {
    return destinationKey(this.dialOptions as { host?: string; port?: number; path?: string });
  }

  private startReliable(verdict: Verdict): void {
    this.decided(true, verdict.reason);
    const session = Session.connect(resolveSessionConfig(this.options), systemRandom, monotonicNow());
    this.driver = new SessionDriver(session, this);
    this.driver.setNoDelay(this.hasFlag(Flag.NoDelay));
    this.driver.setQuickAck(this.options.quickAck !== false);
    this.driver.setRef(this.hasFlag(Flag.Referenced));
    // From 'connect' on (a change before it is no business of the first dial's). A Unix socket path has no network to change under it.
    if (this.options.watchNetwork !== false && (this.dialOptions as { path?: string }).path === undefined) this.driver.watchNetworkOnceOpen();
    if (this.idleTimeout > 0) session.setIdleTimeout(this.idleTimeout, monotonicNow());
    // Over TLS (the link keys the session), or with the earlyData option,
    // what the application already wrote goes out right behind the HELLO
    // (§3.8, §15.2).
    if (this.earlyData) this.writeQueued();
    this.driver.drive();
  }

  /** What net.connect gets for every dial: made when needed rather than kept (56 bytes an idle client would hold). */
  private get dialOptions(): NetConnectOpts {
    const dial: Record<string, unknown> = {};
    for (const key of DIAL_KEYS) if (this.options[key] != null) dial[key] = this.options[key];
    return dial as unknown as NetConnectOpts;
  }

  /** Writes may go to the session before it is established: data follows the HELLO (over TLS, or with the earlyData option). */
  private get earlyData(): boolean {
    return this.driver !== undefined && (this.options.tls !== undefined || this.options.earlyData === true);
  }

  private writeQueued(): void {
    const queued = this.opening?.writes ?? [];
    if (this.opening !== undefined) this.opening.writes = undefined;
    for (const { chunks, callback } of queued) this.writeChunks(chunks, callback);
  }

  private startPlain(verdict: Verdict): void {
    this.decided(false, verdict.reason);
    const raw = netConnect(this.dialOptions);
    this.attachRaw(raw);
    raw.once('connect', () => {
      this.learnFrom(raw);
      this.becomeConnected();
    });
  }

  /**
   * Before the session was established, the server did not behave as the
   * verdict said. Returns false when the error stands as the connection's own.
   * A cached verdict may be stale (the server changed): forget it and probe
   * again, once. A fresh verdict that the server's own answer contradicts
   * (no announcement, or no common version) falls back to a plain
   * connection. Nothing was sent for the application yet: its writes wait,
   * unless earlyData handed them to the session, which may have sent them
   * behind its HELLO to whatever answered: then the error stands, rather
   * than send them again on another connection (§3.8).
   */
  private fallBack(error: RocksError): boolean {
    const notEnhanced = error.code === 'ERR_ROCKS_NOT_ENHANCED' || error.code === 'ERR_ROCKS_VERSION';
    const retry = this.hasFlag(Flag.VerdictCached) && !this.hasFlag(Flag.Reprobed);
    const handedOver = (this.driver?.session.bytesWritten ?? 0) > 0;
    // Over TLS the server's ALPN answer was the verdict: the error stands.
    if (this.hasFlag(Flag.Established) || handedOver || this.options.enhanced === true || this.options.tls !== undefined || !(notEnhanced || retry))
      return false;
    this.driver = undefined;
    const key = this.destination();
    detectionCache.invalidate(key);
    debug('%s: %s', key, error.message);
    if (retry) {
      this.setFlag(Flag.Reprobed, true);
      this.detect();
    } else {
      detectionCache.set(key, { enhanced: false, reason: error.message }, this.options.detectCacheTtl ?? 600_000);
      this.startPlain({ enhanced: false, reason: error.message });
    }
    return true;
  }

  /** SessionListener: opens a transport for a dial. Host names are resolved again at every attempt. */
  dial(): Socket {
    if (this.options.tls === undefined) return netConnect(this.dialOptions);
    const state = this.useTlsLinks();
    const first = state.firstLink;
    state.firstLink = undefined;
    return first ?? this.dialTls(true);
  }

  private becomeConnected(): void {
    this.setFlag(Flag.Connecting, false);
    this.setFlag(Flag.Established, true);
    const verdict = this.opening?.verdict;
    if (verdict !== undefined) this.emit('detect', verdict);
    this.emit('connect');
    this.emit('ready');
    this.writeQueued();
    const final = this.opening?.final;
    this.opening = undefined; // an idle connection keeps none of it
    if (final) this._final(final);
  }

  // ---- the net.Socket surface ------------------------------------------------------

  get connecting(): boolean {
    return this.hasFlag(Flag.Connecting);
  }

  get pending(): boolean {
    return !this.hasFlag(Flag.Established);
  }

  /** True between two rocks ends, false with an ordinary peer (or before the connection is established). */
  get reliable(): boolean {
    return this.driver !== undefined && this.hasFlag(Flag.Established);
  }

  get readyState(): 'opening' | 'open' | 'readOnly' | 'writeOnly' | 'closed' {
    if (this.hasFlag(Flag.Connecting)) return 'opening';
    if (this.readable && this.writable) return 'open';
    if (this.readable) return 'readOnly';
    if (this.writable) return 'writeOnly';
    return 'closed';
  }

  get remoteAddress(): string | undefined {
    return this.lastRemoteAddress;
  }

  get remotePort(): number | undefined {
    return this.lastRemotePort;
  }

  get remoteFamily(): string | undefined {
    const address = this.lastRemoteAddress;
    return address === undefined ? undefined : familyOf(address);
  }

  get localAddress(): string | undefined {
    return this.lastLocalAddress;
  }

  get localPort(): number | undefined {
    return this.lastLocalPort;
  }

  /** Application bytes received. */
  get bytesRead(): number {
    return this.delivered;
  }

  /** Application bytes written (accepted by write(), delivered or not). */
  get bytesWritten(): number {
    const sent = this.driver?.session.bytesWritten ?? this.raw?.bytesWritten ?? 0;
    return sent + this.writableLength;
  }

  /** The idle timeout set with setTimeout(), or undefined. */
  get timeout(): number | undefined {
    return this.idleTimeout > 0 ? this.idleTimeout : undefined;
  }

  /** True while the connection is suspended (its network path failed and is being restored). */
  get suspended(): boolean {
    return this.driver?.session.state === 'suspended';
  }

  /** The session's id (hex), once established in reliable mode. */
  get sessionId(): string | undefined {
    return this.driver?.session.sessionId?.toString('hex');
  }

  // ---- the tls.TLSSocket surface (with the tls option, or from a TLS server) ----------------

  /** The TLS connection beneath: the plain one, or the link carrying the session (the last one while suspended). */
  private tlsLink(): TLSSocket | undefined {
    if (this.raw instanceof TLSSocket) return this.raw;
    const active = this.driver?.activeSocket();
    return active instanceof TLSSocket ? active : this.tlsLinks?.last;
  }

  /**
   * Over TLS these four read as TLSSocket's; without TLS they are undefined,
   * as on a net.Socket. Libraries tell the two apart by them: node:http2's
   * server answers a connection whose alpnProtocol is false (TLS without
   * ALPN) with "403 Missing ALPN Protocol", so h2c and gRPC servers under
   * `rock run` need undefined here.
   */
  private get overTls(): boolean {
    return this.options.tls !== undefined || this.tlsLink() !== undefined;
  }

  /** True when the connection runs over TLS, as TLSSocket's own `encrypted`; undefined without TLS. */
  get encrypted(): true | undefined {
    return this.overTls ? true : undefined;
  }

  /** Whether the peer's certificate was verified (TLS); undefined without TLS. */
  get authorized(): boolean | undefined {
    return this.overTls ? (this.tlsLink()?.authorized ?? false) : undefined;
  }

  get authorizationError(): Error | undefined {
    return this.tlsLink()?.authorizationError;
  }

  /** The ALPN protocol selected: the application's in plain mode, `rocks/1` in reliable mode; false for none; undefined without TLS. */
  get alpnProtocol(): string | false | null | undefined {
    return this.overTls ? (this.tlsLink()?.alpnProtocol ?? false) : undefined;
  }

  getPeerCertificate(detailed?: boolean): PeerCertificate | Record<string, never> {
    const link = this.tlsLink();
    return link === undefined ? {} : detailed ? link.getPeerCertificate(true) : link.getPeerCertificate();
  }

  getProtocol(): string | null {
    return this.tlsLink()?.getProtocol() ?? null;
  }

  getCipher(): ReturnType<TLSSocket['getCipher']> | undefined {
    return this.tlsLink()?.getCipher();
  }

  /** True when the current TLS link was resumed with a session ticket (every resume link should be). */
  isSessionReused(): boolean {
    return this.tlsLink()?.isSessionReused() ?? false;
  }

  getSession(): Buffer | undefined {
    return this.tlsLink()?.getSession();
  }

  /** Bytes written but not yet acknowledged by the peer. */
  get bufferedAmount(): number {
    return this.driver?.session.bufferedAmount ?? this.raw?.writableLength ?? 0;
  }

  address(): AddressInfo | Record<string, never> {
    const address = this.lastLocalAddress;
    const port = this.lastLocalPort;
    return address === undefined || port === undefined ? {} : { address, family: familyOf(address), port };
  }

  setNoDelay(noDelay = true): this {
    this.setFlag(Flag.NoDelay, noDelay);
    this.driver?.setNoDelay(noDelay);
    this.raw?.setNoDelay(noDelay);
    return this;
  }

  /**
   * A plain connection (the server is not enhanced) takes it as net.Socket
   * does. In reliable mode rocks watches its connections itself (its
   * heartbeats, and the kernel's keepalive where it set it, PROTOCOL.md
   * §5.1), so this changes nothing: it would undo what the session counts on.
   */
  setKeepAlive(enable = false, initialDelay = 0): this {
    this.raw?.setKeepAlive(enable, initialDelay);
    return this;
  }

  /** Emits 'timeout' after `ms` without application data moving in either direction; 0 disables it. */
  setTimeout(ms: number, callback?: () => void): this {
    if (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0) {
      throw new RocksError('ERR_ROCKS_INVALID_OPTION', `timeout must be a non-negative number, got ${String(ms)}`);
    }
    this.idleTimeout = ms;
    if (callback) {
      if (ms === 0) this.removeListener('timeout', callback);
      else this.once('timeout', callback);
    }
    this.raw?.setTimeout(ms);
    if (this.driver) {
      this.driver.session.setIdleTimeout(ms, monotonicNow());
      this.driver.drive();
    }
    return this;
  }

  ref(): this {
    this.setFlag(Flag.Referenced, true);
    this.driver?.setRef(true);
    this.raw?.ref();
    return this;
  }

  unref(): this {
    this.setFlag(Flag.Referenced, false);
    this.driver?.setRef(false);
    this.raw?.unref();
    return this;
  }

  // ---- Duplex -----------------------------------------------------------------------

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: Callback): void {
    this.writeChunks([chunk], callback);
  }

  override _writev(chunks: { chunk: Buffer }[], callback: Callback): void {
    this.writeChunks(
      chunks.map((c) => c.chunk),
      callback,
    );
  }

  private writeChunks(chunks: Buffer[], callback: Callback): void {
    if (!this.hasFlag(Flag.Established) && !this.earlyData) {
      if (!this.hasFlag(Flag.Connecting)) {
        callback(new RocksError('ERR_ROCKS_INVALID_OPTION', 'write before connect()'));
        return;
      }
      const opening = this.useOpening();
      if (opening.writes === undefined) opening.writes = [{ chunks, callback }];
      else opening.writes.push({ chunks, callback });
      return;
    }
    if (this.raw !== undefined) {
      if (chunks.length === 1) {
        this.raw.write(chunks[0], callback);
        return;
      }
      this.raw.cork();
      for (let i = 0; i < chunks.length; i++) this.raw.write(chunks[i], i === chunks.length - 1 ? callback : undefined);
      this.raw.uncork();
      return;
    }
    const driver = this.driver!;
    const now = monotonicNow();
    let room = true;
    for (const chunk of chunks) room = driver.session.write(chunk, now);
    driver.driveSoon();
    // Past the in-flight limit the callback waits for the peer's acknowledgements.
    if (room) callback();
    else this.pendingWrite = callback;
  }

  override _final(callback: Callback): void {
    if (!this.hasFlag(Flag.Established)) {
      if (this.hasFlag(Flag.Connecting)) this.useOpening().final = callback;
      else callback();
      return;
    }
    if (this.raw !== undefined) {
      this.raw.end(() => callback());
      return;
    }
    // The callback (and with it Writable's 'finish') waits for 'fin-acked': the peer holds everything we wrote.
    const driver = this.driver!;
    this.pendingFinal = callback;
    driver.session.end(monotonicNow());
    driver.drive();
  }

  override _read(): void {
    if (this.raw !== undefined) {
      if (this.raw.isPaused()) this.raw.resume();
      return;
    }
    this.reportUnread();
  }

  // Readable calls _read before it takes bytes off its buffer, and not again
  // until the next push: a window that only reopens from _read would stay shut
  // once the peer has filled it. So every read reports what is left unread.
  override read(size?: number): ReturnType<Duplex['read']> {
    const chunk = super.read(size);
    if (this.raw === undefined) this.reportUnread();
    return chunk;
  }

  override _destroy(err: Error | null, callback: Callback): void {
    this.settleCallbacks(err);
    this.raw?.destroy();
    if (this.tlsLinks !== undefined) {
      this.tlsLinks.firstLink?.destroy();
      this.tlsLinks.firstLink = undefined;
    }
    const driver = this.driver;
    if (driver !== undefined) {
      const session = driver.session;
      if (session.finished || session.state === 'done') {
        // A clean close: the closing handshake completes in the background.
        driver.detach();
        driver.drive();
      } else if (
        err === null &&
        this.readableLength === 0 &&
        (session.ended || (this.hasFlag(Flag.Established) && this.writableEnded && this.writableLength === 0))
      ) {
        // Destroyed after end() with nothing left unread, as TLS does to the
        // stream under it: like close() after shutdown() on a TCP socket,
        // our last bytes and FIN still go out, in the background (aborted
        // if the process exits first: unlike the kernel's, they go with it).
        // An end() in this same turn has not reached _final yet.
        if (!session.ended) session.end(monotonicNow());
        driver.detach();
        driver.lingerAfterClose();
        driver.drive();
      } else {
        // Data written in this same turn (drives are deferred) goes out before the abort, as it would have with net.Socket.
        driver.transmitNow();
        driver.session.abort(monotonicNow(), err ? `aborted: ${err.message}` : undefined);
        driver.driveNow();
        driver.detach();
      }
    }
    this.setFlag(Flag.Connecting, false);
    callback(err);
    driver?.socketDestroyed();
  }

  // ---- plain mode ----------------------------------------------------------------------

  /**
   * `late`: plain server side, until the first bytes come, what to do with
   * a rocks announcement that came after detectTimeout (see takeLate).
   */
  private attachRaw(raw: Socket, late?: LateAnnouncement | 'drop'): void {
    this.raw = raw;
    raw.setNoDelay(this.hasFlag(Flag.NoDelay));
    if (!this.hasFlag(Flag.Referenced)) raw.unref();
    if (this.idleTimeout > 0) raw.setTimeout(this.idleTimeout);
    let ended = false;
    this.plainListeners = [
      [
        'data',
        (chunk: Buffer) => {
          const first = late;
          late = undefined;
          if (first === undefined || !this.tookLate(chunk, first)) this.deliver(chunk);
        },
      ],
      [
        'end',
        () => {
          ended = true;
          this.push(null);
        },
      ],
      ['timeout', () => this.emit('timeout')],
      ['error', (err: Error) => this.destroy(err)],
      // Closed without its end and without an error (destroyed under us): nothing more will come.
      ['close', () => !ended && !this.destroyed && this.destroy()],
    ];
    for (const [event, fn] of this.plainListeners) raw.on(event, fn);
  }

  /** The first bytes of a connection served plain: whether they were a rocks announcement, which ends the plain connection. */
  private tookLate(chunk: Buffer, late: LateAnnouncement | 'drop'): boolean {
    if (chunk.length < EDP_MAGIC.length || !chunk.subarray(0, EDP_MAGIC.length).equals(EDP_MAGIC)) return false;
    // A rocks client whose announcement came after detectTimeout (a busy
    // middlebox, a lost first segment). While the application has sent
    // nothing on the connection, the server can still take it as a rocks
    // link; otherwise it is dropped and the client dials again. Either way
    // the application saw a connection that closes empty.
    const raw = this.raw!;
    if (late !== 'drop' && raw.bytesWritten === 0 && !raw.writableEnded) {
      debug('taking up a connection whose rocks announcement came after detectTimeout');
      this.detachRaw();
      this.destroy();
      late(raw, chunk);
    } else {
      debug('dropping a connection whose rocks announcement came too late');
      this.destroy();
    }
    return true;
  }

  /** Gives `raw` up untouched: none of our listeners or settings stays on it. */
  private detachRaw(): void {
    const raw = this.raw!;
    for (const [event, fn] of this.plainListeners!) raw.removeListener(event, fn);
    if (this.idleTimeout > 0) raw.setTimeout(0);
    if (!this.hasFlag(Flag.Referenced)) raw.ref();
    this.raw = undefined;
    this.plainListeners = undefined;
  }

  private deliver(chunk: Buffer): void {
    this.delivered += chunk.length;
    if (!this.push(chunk)) this.raw?.pause();
  }

  /** `client`: the client a relayed link carries, who is then our remote end. */
  private activeHandle(): LinkHandle | undefined {
    const id = this.driver?.session.activeLink;
    return id === undefined ? undefined : this.driver?.link(id);
  }

  private learnFrom(s: Socket, client?: ProxyAddress): void {
    const ends = endsOf(s);
    this.lastRemoteAddress = client?.address ?? ends.remoteAddress;
    this.lastRemotePort = client?.port ?? ends.remotePort;
    this.lastLocalAddress = ends.localAddress;
    this.lastLocalPort = ends.localPort;
  }

  // ---- session events -------------------------------------------------------------------

  /** SessionListener: an event for the application. */
  onSessionEvent(ev: SessionEvent): void {
    switch (ev.type) {
      case 'data':
        this.delivered += ev.data.length;
        this.push(ev.data);
        // We are inside the driver's loop, which sends any window update next.
        this.reportUnread(false);
        return;
      case 'end':
        this.push(null);
        return;
      case 'connect':
        this.becomeConnected();
        if (this.options.tls !== undefined) this.emit('secureConnect');
        return;
      case 'link-active': {
        const h = this.driver?.link(ev.link);
        if (h !== undefined) this.learnFrom(h.socket, h.clientAddress);
        if (h?.socket instanceof TLSSocket) this.useTlsLinks().last = h.socket;
        return;
      }
      case 'writable': {
        const cb = this.pendingWrite;
        this.pendingWrite = undefined;
        cb?.();
        return;
      }
      case 'fin-acked': {
        const cb = this.pendingFinal;
        this.pendingFinal = undefined;
        cb?.();
        return;
      }
      case 'suspend':
        this.emit('suspend', { reason: ev.reason } satisfies SuspendInfo);
        return;
      case 'migrate':
        this.emit('migrate', { reason: ev.reason } satisfies MigrateInfo);
        return;
      case 'resume':
        this.emit('reconnect', {
          outage: ev.outage,
          replayedOut: ev.replayedOut,
          replayedIn: ev.replayedIn,
          relayed: this.activeHandle()?.clientAddress !== undefined,
        } satisfies ReconnectInfo);
        return;
      case 'reconnect-attempt':
        this.emit('reconnect-attempt', { attempt: ev.attempt, delay: ev.delay } satisfies ReconnectAttemptInfo);
        return;
      case 'timeout':
        this.emit('timeout');
        return;
      case 'error':
        if (ev.error instanceof RocksError && this.fallBack(ev.error)) return;
        this.destroy(ev.error);
        return;
      default:
        return; // closed: the stream closes itself once both directions end
    }
  }

  /** Tells the session how much the application has still to read; `drive`: and let it act on that now. */
  private reportUnread(drive = true): void {
    const session = this.driver?.session;
    // Reading often changes nothing (flowing mode reads as it delivers): a
    // check per chunk that must cost next to nothing.
    if (session === undefined || session.unreadBytes === this.readableLength || session.state === 'done') return;
    if (session.updateUnread(this.readableLength, monotonicNow()) && drive) this.driver!.drive();
  }

  /** Calls every write and end callback still waiting, with `err` (null on a clean close). */
  private settleCallbacks(err: Error | null): void {
    const opening = this.opening;
    const callbacks = [this.pendingWrite, this.pendingFinal, opening?.final, ...(opening?.writes ?? []).map((q) => q.callback)];
    this.pendingWrite = this.pendingFinal = undefined;
    if (opening !== undefined) opening.final = opening.writes = undefined;
    for (const cb of callbacks) cb?.(err);
  }
}

// The events rocks adds to those of net.Socket. The session's own word for
// getting its link back is "resume" (the RESUME frame), but a Readable emits
// 'resume' when it starts flowing, so the socket calls it 'reconnect'.
export interface ReliableSocket {
  on(event: 'suspend', listener: (info: SuspendInfo) => void): this;
  on(event: 'reconnect', listener: (info: ReconnectInfo) => void): this;
  on(event: 'reconnect-attempt', listener: (info: ReconnectAttemptInfo) => void): this;
  on(event: 'detect', listener: (info: DetectInfo) => void): this;
  // biome-ignore lint/suspicious/noExplicitAny: the catch-all overload of Node's own EventEmitter typings
  on(event: string | symbol, listener: (...args: any[]) => void): this;
  once(event: 'suspend', listener: (info: SuspendInfo) => void): this;
  once(event: 'reconnect', listener: (info: ReconnectInfo) => void): this;
  once(event: 'reconnect-attempt', listener: (info: ReconnectAttemptInfo) => void): this;
  once(event: 'detect', listener: (info: DetectInfo) => void): this;
  // biome-ignore lint/suspicious/noExplicitAny: the catch-all overload of Node's own EventEmitter typings
  once(event: string | symbol, listener: (...args: any[]) => void): this;
}

function checkDetectOptions(o: ReliableConnectOptions): void {
  if (o.enhanced !== undefined && typeof o.enhanced !== 'boolean') {
    throw new RocksError('ERR_ROCKS_INVALID_OPTION', `enhanced must be true, false or undefined, got ${String(o.enhanced)}`);
  }
  for (const [name, value, max] of [
    ['probeTimeout', o.probeTimeout, 60_000],
    ['detectCacheTtl', o.detectCacheTtl, 7 * 86_400_000],
  ] as const) {
    if (value !== undefined && (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > max)) {
      throw new RocksError('ERR_ROCKS_INVALID_OPTION', `${name} must be a number from 0 to ${max}, got ${String(value)}`);
    }
  }
}
