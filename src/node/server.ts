// ReliableServer: the net.Server surface over a protocol ServerCore. It
// accepts TCP connections and feeds everything that happens on them to the
// core, which routes it to the session the link belongs to; it then does what
// the core's events say: a new ReliableSocket for a HELLO, drive a session
// that has input, serve an ordinary client as a plain connection.
//
// With the `tls` option each accepted connection goes to TLS first: a client
// whose ClientHello offers ALPN `rocks/1` gets a TLS 1.3 link fed to the core
// as any link; any other is a plain TLS connection for the application, as a
// node:tls server with the same options would serve it (tls-link.ts).

import { EventEmitter } from 'node:events';
import { createServer as netCreateServer, type AddressInfo, type ListenOptions, type Server, type Socket } from 'node:net';
import { createServer as tlsCreateServer, type Server as TlsServer, type TLSSocket, type TlsOptions } from 'node:tls';
import { debuglog } from 'node:util';
import { resolveNodeId, resolveServerLimits, resolveSessionConfig, type ServerLimitOptions, type ServerRoutingOptions } from '../protocol/config.js';
import { RocksError } from '../protocol/errors.js';
import { systemRandom } from '../protocol/random.js';
import { relayRefusal, ServerCore } from '../protocol/server-core.js';
import { type DeploymentOptions, openDirectory, reachableAt } from './deployment.js';
import type { NodeDirectory } from './directory.js';
import { relayLink } from './node-relay.js';
import { listenThroughPrimary, type PrimaryListen, routedByPrimary } from './cluster.js';
import type { LinkId, Session } from '../protocol/session.js';
import { LinkHandle, type LinkOwner, type ServerSessionHooks, type SessionDriver } from './driver.js';
import { monotonicNow, sharedScheduler, type Timed } from './scheduler.js';
import { remoteAddressOf } from './socket-ends.js';
import { ReliableSocket, type ReliableSocketOptions } from './socket.js';
import { deferAccept, peekBytes } from './peek.js';
import { CLIENT_HELLO_LIMIT, linkChannel, offeredAlpn, ROCKS_ALPN } from './tls-link.js';

const debug = debuglog('rocks');

export interface ReliableServerOptions extends Omit<ReliableSocketOptions, 'tls'>, ServerLimitOptions, ServerRoutingOptions, DeploymentOptions {
  /** As net.createServer: each socket is handed to 'connection' paused, and nothing is read until it is resumed. */
  pauseOnConnect?: boolean;
  /**
   * Every connection is TLS, with these node:tls server options (key, cert,
   * ca, requestCert, ALPNProtocols...). Rocks clients (ALPN `rocks/1`) get
   * TLS 1.3 links; other TLS clients get plain TLS connections. Not yet with
   * relays between nodes (peers, directory) or a rocks cluster primary.
   */
  tls?: TlsOptions;
}

/** The two TLS servers that never listen: connections are handed to them after their ClientHello was read. */
interface TlsSides {
  /** Rocks links: ALPN `rocks/1` only, TLS 1.3 only. */
  rocks: TlsServer;
  /** Everyone else: exactly the application's options. */
  plain: TlsServer;
  /** Connections not yet a link nor a plain TLS connection, by remote address and port (see tlsKey). */
  early: Map<string, EarlyTls>;
}

/**
 * A TLS connection before it is a rocks link or a plain TLS connection: its
 * ClientHello or handshake is under way. It counts against the pending-link
 * caps under `id` (the link id it keeps if it becomes a rocks link).
 */
interface EarlyTls {
  id: LinkId;
  socket: Socket;
  /** Closes it when its ClientHello and (rocks) handshake are not done within handshakeTimeout. */
  deadline: NodeJS.Timeout | undefined;
}

/**
 * The TLSSocket a tls.Server makes for a connection shows that connection's
 * peer address and port: no other connection to us has both while it lives.
 */
function tlsKey(s: Socket): string {
  return `${s.remoteAddress}|${s.remotePort}`;
}

/** The driver a server set on one of its sessions (Session.driver). */
function driverOf(session: Session): SessionDriver | undefined {
  return session.driver as SessionDriver | undefined;
}

/** What the 'relay' event tells about a resuming link this node carried (or could not carry) to another node. */
export interface RelayInfo {
  nodeId: number;
  remoteAddress: string | undefined;
  remotePort: number | undefined;
  outcome: 'relayed' | 'refused' | 'unreachable';
  reason?: string;
}

export class ReliableServer extends EventEmitter implements LinkOwner, Timed {
  scheduledAt: number | undefined;
  private readonly server: Server;
  private readonly core: ServerCore;
  private readonly options: ReliableServerOptions;
  /** Every link of the server; the core knows which session owns which. */
  private readonly links = new Map<LinkId, LinkHandle>();
  /** The socket of each session not yet handed to the application (until the client confirms it). */
  private readonly unopened = new Map<Session, ReliableSocket>();
  /** A socket handed out closed: the 'close' listener of plain ones (one for all, not a closure each), and what drivers report. */
  private readonly forgetSocket: () => void;
  /** What the driver of each session tells this server: one object for all, not closures per session. */
  private readonly sessionHooks: ServerSessionHooks = {
    // The application sees the socket once the client confirms the session.
    opened: (session) => {
      const socket = this.unopened.get(session);
      if (socket === undefined) return;
      this.unopened.delete(session);
      this.handToApplication(socket, driverOf(session));
    },
    released: (session) => {
      session.driver = undefined;
      this.unopened.delete(session);
    },
    afterDrive: () => this.drainCore(),
    socketClosed: () => this.forgetSocket(),
  };
  /** Sockets the application holds (emitted by 'connection' and not yet closed): a count, as nothing needs them by name. */
  private openSockets = 0;
  /** Where the other nodes of the deployment are, when there are any. */
  private readonly directory: NodeDirectory | undefined;
  private relayed = 0;
  private nextLinkId = 1;
  /** In a cluster worker: the listen the primary does for us (cluster.ts). */
  private cluster: PrimaryListen | undefined;
  private closing = false;
  private closeEmitted = false;
  private readonly tls: TlsSides | undefined;
  /** What each socket of the server is made with: the options without the server's tls. */
  private readonly socketOptions: ReliableSocketOptions;
  /** How long a TLS connection may take to become a rocks link (its ClientHello and handshake). */
  private readonly handshakeTimeout: number;

  constructor(options: ReliableServerOptions = {}, connectionListener?: (socket: ReliableSocket) => void) {
    super();
    this.options = options;
    this.forgetSocket = () => {
      this.openSockets--;
      this.maybeClosed();
    };
    const { tls: _serverTls, ...socketOptions } = options;
    this.socketOptions = socketOptions;
    this.handshakeTimeout = resolveSessionConfig(options).handshakeTimeout;
    const nodeId = resolveNodeId(options) ?? systemRandom.bytes(4).readUInt32BE(0);
    this.directory = openDirectory(options, nodeId);
    // Directory trouble (Redis away, a bad entry) never stops the server: it is told, not thrown.
    this.directory?.on('error', (err) => {
      debug('directory: %s', err.message);
      this.emit('directoryError', err);
    });
    this.core = new ServerCore(resolveSessionConfig(options), resolveServerLimits(options), systemRandom, {
      owner: { nodeId },
      relays: this.directory !== undefined,
    });
    // Half-open, so that we can still answer a probe after it ended its side.
    // Over TLS nothing is read before the ClientHello was peeked (acceptTls).
    this.server = netCreateServer({ allowHalfOpen: true, pauseOnConnect: options.tls !== undefined }, (s) => this.onTcpConnection(s));
    this.server.on('listening', () => this.onListening());
    this.server.on('error', (err) => this.emit('error', err));
    this.server.on('close', () => this.maybeClosed());
    if (connectionListener) this.on('connection', connectionListener);
    if (options.tls !== undefined) this.tls = this.makeTlsSides(options.tls);
  }

  private makeTlsSides(tls: TlsOptions): TlsSides {
    // Relays and a cluster primary read a link's first bytes to route it;
    // over TLS those are ciphertext they cannot read.
    if (this.directory !== undefined || routedByPrimary()) {
      throw new RocksError(
        'ERR_ROCKS_INVALID_OPTION',
        'tls cannot be combined yet with relays between nodes (peers, directory) or a rocks cluster primary: terminate TLS in front of the deployment, or run a single server',
      );
    }
    const rocks = tlsCreateServer({ ...tls, ALPNProtocols: [ROCKS_ALPN], ALPNCallback: undefined, minVersion: 'TLSv1.3' });
    const plain = tlsCreateServer(tls);
    const early = new Map<string, EarlyTls>();
    rocks.on('secureConnection', (s: TLSSocket) => {
      // The link keeps the id it was counted under: it goes on counting as a link until confirmed.
      const e = this.settleEarly(early, s, false);
      if (e === undefined) s.destroy();
      else this.openLink(s, Buffer.alloc(0), 0, e.id);
    });
    plain.on('secureConnection', (s: TLSSocket) => {
      this.settleEarly(early, s, true);
      if (this.closing) s.destroy();
      else this.handToApplication(ReliableSocket.fromPlain(s, Buffer.alloc(0), false, this.socketOptions));
    });
    for (const side of [rocks, plain]) {
      side.on('tlsClientError', (err: Error, s: TLSSocket) => {
        debug('TLS client error from %s: %s', s.remoteAddress, err.message);
        if (this.listenerCount('tlsClientError') > 0) this.emit('tlsClientError', err, s);
        // With a listener, node:tls leaves the socket open (even after its handshakeTimeout): close it.
        s.destroy();
      });
    }
    return { rocks, plain, early };
  }

  /**
   * Reads a TLS connection's ClientHello for the ALPN protocols it offers,
   * then hands it to the right TLS side. From its accept it counts against
   * the pending-link caps until it is a rocks link (which goes on counting
   * until its session is confirmed), a plain TLS connection, or closed. Its
   * ClientHello and, for a rocks client, its TLS handshake must be done
   * within handshakeTimeout of the accept; a plain TLS connection's
   * handshake has the application's tls handshakeTimeout.
   */
  private acceptTls(socket: Socket, tls: TlsSides): void {
    const key = tlsKey(socket);
    if (this.closing || socket.remoteAddress === undefined || tls.early.has(key)) {
      socket.destroy();
      return;
    }
    const id = this.nextLinkId++;
    const refusal = this.core.admitConnection(id, false, socket.remoteAddress);
    if (refusal !== undefined) {
      // As for a link: closed at once and without a word.
      debug('refused a connection from %s: %s', socket.remoteAddress, refusal.message);
      if (this.listenerCount('clientError') > 0) this.emit('clientError', refusal, socket);
      socket.destroy();
      return;
    }
    const e: EarlyTls = { id, socket, deadline: setTimeout(() => socket.destroy(), this.handshakeTimeout).unref() };
    tls.early.set(key, e);
    socket.once('close', () => {
      if (tls.early.get(key) === e) this.settleEarly(tls.early, socket, true);
    });
    const handOver = (offered: string[] | undefined): void => {
      const rocks = offered?.includes(ROCKS_ALPN) === true;
      if (!rocks) {
        // A plain TLS connection's handshake has the application's tls handshakeTimeout, as with node:tls.
        clearTimeout(e.deadline);
        e.deadline = undefined;
      }
      (rocks ? tls.rocks : tls.plain).emit('connection', socket);
    };
    // Usually the whole ClientHello is there to peek at (peek.ts): TLS then gets the socket untouched.
    const peeked = peekBytes(socket, CLIENT_HELLO_LIMIT);
    const offeredNow = peeked === undefined ? 'incomplete' : offeredAlpn(peeked);
    if (offeredNow !== 'incomplete') {
      handOver(offeredNow);
      return;
    }
    let bytes: Buffer = Buffer.alloc(0);
    const onError = (): void => {
      socket.destroy();
    };
    const onData = (chunk: Buffer): void => {
      bytes = bytes.length === 0 ? chunk : Buffer.concat([bytes, chunk]);
      const offered = offeredAlpn(bytes);
      if (offered === 'incomplete') return;
      socket.removeListener('data', onData);
      socket.removeListener('error', onError);
      socket.pause();
      socket.unshift(bytes);
      handOver(offered);
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.resume();
  }

  /**
   * The early TLS connection behind `s` (a TLSSocket, or the TCP socket it
   * wraps) is settled: no more deadline; with `release`, it stops counting
   * against the pending-link caps too.
   */
  private settleEarly(early: Map<string, EarlyTls>, s: Socket, release: boolean): EarlyTls | undefined {
    const key = tlsKey(s);
    const e = early.get(key);
    if (e === undefined) return undefined;
    early.delete(key);
    clearTimeout(e.deadline);
    if (release) this.core.releaseConnection(e.id);
    return e;
  }

  /** Takes every argument form of net.Server.listen. */
  listen(port?: number, hostname?: string, backlog?: number, listeningListener?: () => void): this;
  listen(port?: number, hostname?: string, listeningListener?: () => void): this;
  listen(port?: number, listeningListener?: () => void): this;
  listen(path: string, listeningListener?: () => void): this;
  listen(options: ListenOptions, listeningListener?: () => void): this;
  listen(...args: unknown[]): this {
    this.cluster = listenThroughPrimary(args, this.options, {
      listening: (owner) => {
        this.core.assignOwner(owner);
        this.onListening();
      },
      error: (err) => this.emit('error', err),
      link: (socket, initial, age) => this.acceptLink(socket, initial, age),
      close: () => this.close(),
    });
    if (this.cluster === undefined) (this.server.listen as (...a: unknown[]) => Server)(...args);
    return this;
  }

  /** Stops accepting connections; 'close' follows once every open socket has closed. */
  close(callback?: (err?: Error) => void): this {
    this.closing = true;
    if (callback) {
      if (!this.listening) {
        const err = Object.assign(new Error('Server is not running.'), { code: 'ERR_SERVER_NOT_RUNNING' });
        queueMicrotask(() => callback(err));
      } else {
        this.once('close', () => callback());
      }
    }
    if (this.server.listening) this.server.close();
    this.cluster?.close();
    void this.directory?.close().catch((err) => this.emit('error', err));
    // Links still being detected or handshaking: nobody holds them yet.
    for (const id of this.core.pendingLinks()) this.links.get(id)?.close(undefined, false);
    for (const e of this.tls?.early.values() ?? []) e.socket.destroy();
    // With no socket of the application's left, we are closed now: the TCP
    // server's own 'close' may wait for links still finishing their closing
    // handshake, unref'd, and a program could exit before it came.
    process.nextTick(() => this.maybeClosed());
    return this;
  }

  address(): AddressInfo | string | null {
    return this.cluster ? this.cluster.address() : this.server.address();
  }

  get listening(): boolean {
    return this.cluster?.listening ?? this.server.listening;
  }

  getConnections(callback: (err: Error | null, count: number) => void): this {
    const count = this.openSockets;
    queueMicrotask(() => callback(null, count));
    return this;
  }

  /** The node id in every session id this server issues (the nodeId option, or a random one). */
  get nodeId(): number {
    return this.core.nodeId;
  }

  /** Resuming links this node carried to the node that holds their session. */
  get relayedLinks(): number {
    return this.relayed;
  }

  /** Sessions held, suspended ones included (a diagnostic, not part of net.Server). */
  get sessionCount(): number {
    return this.core.sessionCount;
  }

  get suspendedCount(): number {
    return this.core.suspendedCount;
  }

  /** Bytes all sessions hold, counted against maxBufferedBytes (a diagnostic). */
  get bufferedBytes(): number {
    return this.core.bufferedBytes;
  }

  ref(): this {
    this.server.ref();
    this.cluster?.ref();
    return this;
  }

  unref(): this {
    this.server.unref();
    this.cluster?.unref();
    return this;
  }

  // ---- links before they belong to a session -------------------------------------------

  private onTcpConnection(socket: Socket): void {
    if (this.tls !== undefined) this.acceptTls(socket, this.tls);
    else this.acceptLink(socket, Buffer.alloc(0));
  }

  /**
   * Serves a TCP connection accepted elsewhere (a cluster primary, a balancer
   * of your own) as if this server had accepted it: `initial` holds the bytes
   * already read from it, `age` how long ago (ms) it was accepted, so that a
   * silent client is not kept waiting for detectTimeout twice.
   */
  acceptLink(socket: Socket, initial: Buffer, age = 0): void {
    this.openLink(socket, initial, age, this.nextLinkId++);
  }

  /**
   * A plain connection whose announcement came late, taken back as a new
   * link (ReliableSocket.fromPlain). Not in a cluster worker: the primary
   * gave the silent connection to any worker, and a resume there of another
   * worker's session would be answered as unknown, ending it; dropped, the
   * client dials again and the primary routes it.
   */
  private readonly takeLate = (socket: Socket, first: Buffer): void => this.acceptLink(socket, first);

  /** A link under `id` (one the core may already count, see acceptTls). */
  private openLink(socket: Socket, initial: Buffer, age: number, id: LinkId): void {
    if (this.closing) {
      this.core.releaseConnection(id);
      socket.destroy();
      return;
    }
    // A socket passed between processes comes without it; a probe's answer needs it.
    socket.allowHalfOpen = true;
    const handle = new LinkHandle(id, socket, this);
    handle.quickAck = this.options.quickAck !== false;
    this.links.set(id, handle);
    const from = remoteAddressOf(socket);
    const fromMember = from !== undefined && this.directory?.isMember(from) === true;
    this.core.handleLinkOpen(id, monotonicNow() - age, fromMember, from, linkChannel(socket));
    if (initial.length > 0) this.core.handleLinkData(id, initial, monotonicNow());
    this.drainCore();
  }

  /** The directory starts once we listen: a node advertises where it can be reached. */
  private onListening(): void {
    if (this.tls !== undefined) deferAccept(this.server);
    if (this.directory === undefined) {
      this.emit('listening');
      return;
    }
    this.directory.start(this.address()).then(
      () => this.emit('listening'),
      (err) => {
        this.server.close();
        this.emit('error', err);
      },
    );
  }

  onLinkData(link: LinkId, chunk: Buffer): void {
    this.core.handleLinkData(link, chunk, monotonicNow());
    this.drainCore();
  }

  onLinkClosed(link: LinkId, reason: string, error: Error | undefined): void {
    this.links.delete(link);
    this.core.handleLinkClosed(link, monotonicNow(), reason, error);
    this.drainCore();
  }

  onLinkDrain(link: LinkId): void {
    this.core.handleLinkDrain(link);
    this.drainCore();
  }

  onLinkEnd(link: LinkId): void {
    this.core.handleLinkEnd(link);
    this.drainCore();
  }

  onTimer(now: number): void {
    this.core.handleTimeout(now);
    this.drainCore();
  }

  private drainCore(): void {
    for (let ev = this.core.pollEvent(); ev !== undefined; ev = this.core.pollEvent()) {
      switch (ev.type) {
        case 'session': {
          const session = ev.session;
          const { socket, driver } = ReliableSocket.fromSession(session, this.socketOptions, this.sessionHooks);
          session.driver = driver;
          this.unopened.set(session, socket);
          this.bindLink(ev.link, driver);
          break;
        }
        case 'bind': {
          const driver = driverOf(ev.session);
          if (driver === undefined) this.links.get(ev.link)?.close(undefined, false);
          else this.bindLink(ev.link, driver);
          break;
        }
        case 'drive':
          driverOf(ev.session)?.drive();
          break;
        case 'close-link':
          this.links.get(ev.link)?.close(ev.final, ev.final !== undefined);
          break;
        case 'send':
          this.links.get(ev.link)?.socket.write(ev.bytes);
          break;
        case 'plain': {
          const h = this.links.get(ev.link);
          if (h === undefined) break;
          this.links.delete(ev.link);
          debug('%s:%d: %s', h.socket.remoteAddress, h.socket.remotePort, ev.reason);
          const socket = ReliableSocket.fromPlain(h.handOff(), ev.initial, ev.ended, this.socketOptions, this.cluster ? undefined : this.takeLate);
          this.handToApplication(socket);
          break;
        }
        case 'relay': {
          const h = this.links.get(ev.link);
          if (h === undefined) break;
          this.links.delete(ev.link);
          h.socket.pause(); // nothing may be read until the relay pipes it
          const socket = h.handOff();
          socket.on('error', () => socket.destroy()); // a reset while we look the owner up
          this.relay(socket, ev.initial, ev.nodeId);
          break;
        }
        case 'client-address': {
          const h = this.links.get(ev.link);
          if (h !== undefined) h.clientAddress = ev.address;
          break;
        }
        case 'rejected':
          this.onRejected(ev.link, ev.error);
          break;
      }
    }
    sharedScheduler.schedule(this, this.core.pollTimeout());
  }

  /** Carries a resuming link to the node that holds its session, or tells the client why it cannot. */
  private relay(socket: Socket, initial: Buffer, nodeId: number): void {
    const node = `node ${nodeId.toString(16).padStart(8, '0')}`;
    const from = `${socket.remoteAddress}:${socket.remotePort}`;
    const refuse = (why: string) => {
      debug('cannot relay %s to %s: %s', from, node, why);
      this.emit('relay', {
        nodeId,
        remoteAddress: socket.remoteAddress,
        remotePort: socket.remotePort,
        outcome: 'refused',
        reason: why,
      } satisfies RelayInfo);
      if (socket.destroyed) return;
      for (const b of relayRefusal(`${node} ${why}`)) socket.write(b);
      socket.end();
    };
    const directory = this.directory!;
    const known = directory.addressOf(nodeId);
    const found = known !== undefined ? Promise.resolve(known) : directory.resolve(nodeId);
    found.then(
      (address) => {
        if (address === undefined) {
          // With the directory away, an unknown node may be one that joined
          // just before: drop the link and let the client try again, rather
          // than end a session that may be alive.
          if (!directory.reachable) {
            socket.destroy();
            debug('cannot relay %s to %s: not known, and the directory is away', from, node);
            this.emit('relay', {
              nodeId,
              remoteAddress: socket.remoteAddress,
              remotePort: socket.remotePort,
              outcome: 'unreachable',
              reason: 'the directory is away',
            } satisfies RelayInfo);
            return;
          }
          refuse('is not in this deployment');
          return;
        }
        relayLink(socket, initial, address, reachableAt(this.address())?.host, (outcome) => {
          if (outcome.kind === 'refused') {
            refuse('is gone');
            return;
          }
          if (outcome.kind === 'relayed') this.relayed++;
          debug('relay %s to %s: %s', from, node, outcome.kind === 'relayed' ? 'started' : outcome.reason);
          const reason = outcome.kind === 'unreachable' ? outcome.reason : undefined;
          this.emit('relay', {
            nodeId,
            remoteAddress: socket.remoteAddress,
            remotePort: socket.remotePort,
            outcome: outcome.kind,
            reason,
          } satisfies RelayInfo);
        });
      },
      (err) => refuse(`could not be looked up: ${err instanceof Error ? err.message : String(err)}`),
    );
  }

  /** `driver`: the socket's session's, which reports its close (SessionDriver.reportSocketClose); a plain socket has none. */
  private handToApplication(socket: ReliableSocket, driver?: SessionDriver): void {
    this.openSockets++;
    if (driver !== undefined) driver.reportSocketClose();
    else socket.on('close', this.forgetSocket);
    if (this.options.pauseOnConnect) socket.pause();
    this.emit('connection', socket);
  }

  /** The session's driver writes on the link from now on; its input still comes through the core. */
  private bindLink(link: LinkId, driver: SessionDriver): void {
    const h = this.links.get(link);
    if (h !== undefined) driver.adopt(h);
  }

  private onRejected(link: LinkId, error: RocksError): void {
    const socket = this.links.get(link)?.socket;
    debug('refused a connection from %s: %s', socket?.remoteAddress, error.message);
    if (this.listenerCount('clientError') > 0) this.emit('clientError', error, socket);
  }

  private maybeClosed(): void {
    if (this.closing && !this.listening && this.openSockets === 0 && !this.closeEmitted) {
      this.closeEmitted = true;
      this.emit('close');
    }
  }
}

export function createServer(connectionListener?: (socket: ReliableSocket) => void): ReliableServer;
export function createServer(options?: ReliableServerOptions, connectionListener?: (socket: ReliableSocket) => void): ReliableServer;
export function createServer(a?: ReliableServerOptions | ((socket: ReliableSocket) => void), b?: (socket: ReliableSocket) => void): ReliableServer {
  if (typeof a === 'function') return new ReliableServer({}, a);
  return new ReliableServer(a ?? {}, b);
}
