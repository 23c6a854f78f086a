// ReliableSocket: a Duplex with the net.Socket surface applications use,
// carried by a protocol Session that survives the failure of the TCP
// connections beneath it.

import { connect as netConnect, type AddressInfo, type NetConnectOpts, type Socket, type TcpNetConnectOpts } from 'node:net';
import { Duplex } from 'node:stream';
import { resolveSessionConfig, type SessionOptions } from '../protocol/config.js';
import { RocksError } from '../protocol/errors.js';
import { systemRandom } from '../protocol/random.js';
import { Session, type LinkId, type SessionEvent } from '../protocol/session.js';
import { SessionDriver, type SessionListener } from './driver.js';
import { monotonicNow } from './scheduler.js';

/** What the `suspend` event carries. */
export interface SuspendInfo {
  reason: string;
}

/** What the `resume` event carries. */
export interface ResumeInfo {
  /** How long the connection was suspended, in ms. */
  outage: number;
  /** Bytes this side sent again because the peer had not received them. */
  replayedOut: number;
  /** Bytes the peer sent again to this side. */
  replayedIn: number;
}

/** What the `reconnect-attempt` event carries. */
export interface ReconnectAttemptInfo {
  /** 1 for the first attempt after a failure. */
  attempt: number;
  /** The backoff waited before this attempt, in ms. */
  delay: number;
}

export interface ReliableSocketOptions extends SessionOptions {
  /** As for net.Socket: when false (the default) the socket ends its side once the peer ends. */
  allowHalfOpen?: boolean;
  readableHighWaterMark?: number;
  writableHighWaterMark?: number;
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
};

/** Connect options passed to net.connect for every dial; the rest are ours. */
const DIAL_KEYS = [
  'port', 'host', 'path', 'family', 'localAddress', 'hints', 'lookup', 'autoSelectFamily', 'autoSelectFamilyAttemptTimeout',
] as const;

/** How a server learns what becomes of the sockets it made. */
export interface ServerSocketHooks {
  /** The client confirmed the session: time to emit 'connection'. */
  opened(): void;
  released(): void;
  /** Runs after every drive of the session. */
  afterDrive(): void;
}

interface Addresses {
  remoteAddress?: string;
  remotePort?: number;
  remoteFamily?: string;
  localAddress?: string;
  localPort?: number;
  local?: AddressInfo;
}

export class ReliableSocket extends Duplex implements SessionListener {
  private driver: SessionDriver | undefined;
  private options: ReliableSocketOptions;
  private dialOptions: NetConnectOpts | undefined;
  private addresses: Addresses = {};
  private pendingWrite: ((err?: Error | null) => void) | undefined;
  private pendingFinal: ((err?: Error | null) => void) | undefined;
  private delivered = 0;
  private _connecting = false;
  private referenced = true;
  private idleTimeout = 0;
  private noDelay = true;
  private serverHooks: ServerSocketHooks | undefined;

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

  /** Wraps a server-side session (used by ReliableServer). */
  static fromSession(
    session: Session,
    options: ReliableSocketOptions,
    hooks: ServerSocketHooks,
  ): { socket: ReliableSocket; driver: SessionDriver } {
    const socket = new ReliableSocket(options);
    const driver = new SessionDriver(session, socket, hooks.afterDrive);
    socket.driver = driver;
    socket.serverHooks = hooks;
    driver.setRef(true);
    return { socket, driver };
  }

  // ---- connecting ---------------------------------------------------------------

  connect(options: ReliableConnectOptions, connectListener?: () => void): this;
  connect(port: number, host?: string, connectListener?: () => void): this;
  connect(port: number, connectListener?: () => void): this;
  connect(path: string, connectListener?: () => void): this;
  connect(...args: unknown[]): this {
    if (this.driver !== undefined) throw new RocksError('ERR_ROCKS_INVALID_OPTION', 'socket is already connected or connecting');
    const [options, listener] = normalizeConnectArgs(args);
    this.options = { ...this.options, ...options };
    const config = resolveSessionConfig(this.options);
    const dial: Record<string, unknown> = {};
    for (const key of DIAL_KEYS) if (options[key] !== undefined) dial[key] = options[key];
    if (dial.port === undefined && dial.path === undefined) {
      throw new RocksError('ERR_ROCKS_INVALID_OPTION', 'connect needs a port or a path');
    }
    this.dialOptions = dial as unknown as NetConnectOpts;
    if (options.noDelay === false) this.noDelay = false;
    if (listener) this.once('connect', listener);
    if (options.timeout !== undefined) this.setTimeout(options.timeout);

    this._connecting = true;
    const session = Session.connect(config, systemRandom, monotonicNow());
    this.driver = new SessionDriver(session, this);
    this.driver.setNoDelay(this.noDelay);
    this.driver.setRef(this.referenced);
    if (this.idleTimeout > 0) session.setIdleTimeout(this.idleTimeout, monotonicNow());
    this.driver.drive();
    return this;
  }

  /** SessionListener: opens a transport for a dial. Host names are resolved again at every attempt. */
  dial(): Socket {
    return netConnect(this.dialOptions!);
  }

  // ---- the net.Socket surface ------------------------------------------------------

  get connecting(): boolean {
    return this._connecting;
  }

  get pending(): boolean {
    return this._connecting || this.driver === undefined;
  }

  get readyState(): 'opening' | 'open' | 'readOnly' | 'writeOnly' | 'closed' {
    if (this._connecting) return 'opening';
    if (this.readable && this.writable) return 'open';
    if (this.readable) return 'readOnly';
    if (this.writable) return 'writeOnly';
    return 'closed';
  }

  get remoteAddress(): string | undefined {
    return this.addresses.remoteAddress;
  }

  get remotePort(): number | undefined {
    return this.addresses.remotePort;
  }

  get remoteFamily(): string | undefined {
    return this.addresses.remoteFamily;
  }

  get localAddress(): string | undefined {
    return this.addresses.localAddress;
  }

  get localPort(): number | undefined {
    return this.addresses.localPort;
  }

  /** Application bytes received. */
  get bytesRead(): number {
    return this.delivered;
  }

  /** Application bytes written (accepted by write(), delivered or not). */
  get bytesWritten(): number {
    return (this.driver?.session.bytesWritten ?? 0) + this.writableLength;
  }

  /** The idle timeout set with setTimeout(), or undefined. */
  get timeout(): number | undefined {
    return this.idleTimeout > 0 ? this.idleTimeout : undefined;
  }

  /** True while the connection is suspended (its network path failed and is being restored). */
  get suspended(): boolean {
    return this.driver?.session.state === 'suspended';
  }

  /** The session's id (hex), once established. */
  get sessionId(): string | undefined {
    return this.driver?.session.sessionId?.toString('hex');
  }

  /** Bytes written but not yet acknowledged by the peer. */
  get bufferedAmount(): number {
    return this.driver?.session.bufferedAmount ?? 0;
  }

  address(): AddressInfo | Record<string, never> {
    return this.addresses.local ?? {};
  }

  setNoDelay(noDelay = true): this {
    this.noDelay = noDelay;
    this.driver?.setNoDelay(noDelay);
    return this;
  }

  /** Accepted for compatibility; rocks' own heartbeats detect failures within failureTimeout. */
  setKeepAlive(enable = false, initialDelay = 0): this {
    this.driver?.activeSocket()?.setKeepAlive(enable, initialDelay);
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
    if (this.driver) {
      this.driver.session.setIdleTimeout(ms, monotonicNow());
      this.driver.drive();
    }
    return this;
  }

  ref(): this {
    this.referenced = true;
    this.driver?.setRef(true);
    return this;
  }

  unref(): this {
    this.referenced = false;
    this.driver?.setRef(false);
    return this;
  }

  // ---- Duplex -----------------------------------------------------------------------

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.writeChunks([chunk], callback);
  }

  override _writev(chunks: { chunk: Buffer }[], callback: (err?: Error | null) => void): void {
    this.writeChunks(chunks.map((c) => c.chunk), callback);
  }

  private writeChunks(chunks: Buffer[], callback: (err?: Error | null) => void): void {
    const driver = this.driver;
    if (driver === undefined) {
      callback(new RocksError('ERR_ROCKS_INVALID_OPTION', 'write before connect()'));
      return;
    }
    const now = monotonicNow();
    let room = true;
    for (const chunk of chunks) room = driver.session.write(chunk, now);
    driver.drive();
    // Past the in-flight limit the callback waits for the peer's acknowledgements.
    if (room) callback();
    else this.pendingWrite = callback;
  }

  override _final(callback: (err?: Error | null) => void): void {
    const driver = this.driver;
    if (driver === undefined) {
      callback();
      return;
    }
    // 'finish' means the peer acknowledged everything we wrote, FIN included.
    this.pendingFinal = callback;
    driver.session.end(monotonicNow());
    driver.drive();
  }

  override _read(): void {
    this.reportUnread();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    const driver = this.driver;
    this.releaseCallbacks(err);
    if (driver !== undefined) {
      if (driver.session.finished || driver.session.state === 'done') {
        // A clean close: the closing handshake completes in the background.
        driver.detach();
        driver.drive();
      } else {
        driver.session.abort(monotonicNow(), err ? `aborted: ${err.message}` : undefined);
        driver.drive();
        driver.detach();
      }
    }
    this._connecting = false;
    callback(err);
  }

  // ---- session events -------------------------------------------------------------------

  /** SessionListener: an event for the application. */
  onSessionEvent(ev: SessionEvent): void {
    switch (ev.type) {
      case 'data':
        this.delivered += ev.data.length;
        this.push(ev.data);
        // We are inside the driver's loop, which sends any window update next.
        this.driver!.session.updateUnread(this.readableLength, monotonicNow());
        return;
      case 'end':
        this.push(null);
        return;
      case 'connect':
        this._connecting = false;
        this.emit('connect');
        this.emit('ready');
        return;
      case 'link-active':
        this.learnAddresses(ev.link);
        return;
      case 'writable': {
        const cb = this.pendingWrite;
        this.pendingWrite = undefined;
        cb?.();
        return;
      }
      case 'finish': {
        const cb = this.pendingFinal;
        this.pendingFinal = undefined;
        cb?.();
        return;
      }
      case 'suspend':
        this.emit('suspend', { reason: ev.reason } satisfies SuspendInfo);
        return;
      case 'resume':
        this.emit('resume', { outage: ev.outage, replayedOut: ev.replayedOut, replayedIn: ev.replayedIn } satisfies ResumeInfo);
        return;
      case 'reconnect-attempt':
        this.emit('reconnect-attempt', { attempt: ev.attempt, delay: ev.delay } satisfies ReconnectAttemptInfo);
        return;
      case 'timeout':
        this.emit('timeout');
        return;
      case 'error':
        this.destroy(ev.error);
        return;
      case 'open':
        this.serverHooks?.opened();
        return;
      case 'released':
        this.serverHooks?.released();
        return;
      default:
        return; // closed: the stream closes itself once both directions end
    }
  }

  private reportUnread(): void {
    const driver = this.driver;
    if (driver === undefined || driver.session.state === 'done') return;
    driver.session.updateUnread(this.readableLength, monotonicNow());
    driver.drive();
  }

  private learnAddresses(link: LinkId): void {
    const s = this.driver?.links.get(link)?.socket;
    if (s === undefined) return;
    const local = s.address();
    this.addresses = {
      remoteAddress: s.remoteAddress,
      remotePort: s.remotePort,
      remoteFamily: s.remoteFamily,
      localAddress: s.localAddress,
      localPort: s.localPort,
      local: 'port' in local ? (local as AddressInfo) : undefined,
    };
  }

  private releaseCallbacks(err: Error | null): void {
    const w = this.pendingWrite;
    const f = this.pendingFinal;
    this.pendingWrite = undefined;
    this.pendingFinal = undefined;
    w?.(err);
    f?.(err);
  }
}

// The events rocks adds to those of net.Socket. Note that a Readable also
// emits 'resume' (without an argument) when it starts flowing; ours always
// carries a ResumeInfo.
export interface ReliableSocket {
  on(event: 'suspend', listener: (info: SuspendInfo) => void): this;
  on(event: 'resume', listener: (info: ResumeInfo | undefined) => void): this;
  on(event: 'reconnect-attempt', listener: (info: ReconnectAttemptInfo) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
  once(event: 'suspend', listener: (info: SuspendInfo) => void): this;
  once(event: 'resume', listener: (info: ResumeInfo | undefined) => void): this;
  once(event: 'reconnect-attempt', listener: (info: ReconnectAttemptInfo) => void): this;
  once(event: string | symbol, listener: (...args: any[]) => void): this;
}

/** The argument forms of net.connect: (options[, cb]), (port[, host][, cb]), (path[, cb]). */
export function normalizeConnectArgs(args: unknown[]): [ReliableConnectOptions, (() => void) | undefined] {
  const listener = typeof args[args.length - 1] === 'function' ? (args[args.length - 1] as () => void) : undefined;
  const first = args[0];
  if (first !== null && typeof first === 'object') return [{ ...(first as ReliableConnectOptions) }, listener];
  if (typeof first === 'string' && !/^\d+$/.test(first)) return [{ path: first }, listener];
  if (typeof first === 'number' || typeof first === 'string') {
    const port = Number(first);
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new RocksError('ERR_ROCKS_INVALID_OPTION', `port must be 0-65535, got ${String(first)}`);
    }
    const host = typeof args[1] === 'string' ? args[1] : undefined;
    return [{ port, host }, listener];
  }
  throw new RocksError('ERR_ROCKS_INVALID_OPTION', 'connect needs options, a port or a path');
}
