// Options shared by both ends of a session, with their defaults and checks.

import { RocksError } from './errors.js';

export interface SessionOptions {
  /** Silence from the peer for this long (ms) declares the link failed. Default 5000, at least 200. */
  failureTimeout?: number;
  /** Send a keepalive when nothing was sent for this long (ms). Default failureTimeout / 5; at most failureTimeout / 2. */
  heartbeatInterval?: number;
  /** A session suspended this long (ms) fails with ERR_ROCKS_SUSPEND_TIMEOUT. Default 72 h. */
  suspendLimit?: number;
  /** Most bytes written but not yet acknowledged by the peer; past it `write()` returns false. Default 4 MiB. */
  maxInflight?: number;
  /** Most bytes received but not yet read by the application. Default 4 MiB. */
  receiveWindow?: number;
  /** A dial plus its handshake must finish within this many ms. Default failureTimeout. */
  handshakeTimeout?: number;
  /** First reconnect backoff step (ms). Default 100. */
  reconnectDelay?: number;
  /** Cap of the reconnect backoff (ms). Default 2000. */
  reconnectDelayMax?: number;
  /** A new connection must be established within this many ms of connect(). Default 20000. */
  connectTimeout?: number;
  /** How long the closing handshake may take once both directions are finished (ms): a client keeps resuming to receive CLOSE, a server keeps its record of the session to answer it. Default 120000. */
  closeLinger?: number;
  /**
   * Client, links without TLS: what the application wrote before the
   * connection was established goes right behind the HELLO (up to 16 KiB),
   * so the first answer comes a round trip sooner. The price: a connection
   * whose first link is lost before the server confirmed the session fails
   * (as a TCP connection reset in its first round trip does) instead of
   * starting over, since that data may have been delivered (PROTOCOL.md
   * §3.8). Over TLS data always goes behind the HELLO (§15.2). Default false.
   */
  earlyData?: boolean;
  /**
   * Where the OS allows (Linux), each link's socket gets TCP keepalive and
   * TCP_USER_TIMEOUT so that its kernel finds a dead path within
   * failureTimeout plus heartbeatInterval, and a peer that agrees (PACE
   * frames, PROTOCOL.md §5.1) sends heartbeats only every
   * pathCheckInterval: an idle session wakes neither process. Needs a
   * heartbeatInterval of at least 1000 ms (the kernel counts whole seconds).
   * Default true.
   */
  kernelLiveness?: boolean;
  /**
   * On a link the kernel watches, an end-to-end heartbeat still crosses at
   * least this often (ms), and the peer's silence is tolerated for three
   * times as long: what finds a failure behind a TCP-terminating middlebox,
   * whose own kernel answers ours. Default 30000 (or heartbeatInterval, if more).
   */
  pathCheckInterval?: number;
}

export type SessionConfig = Required<SessionOptions>;

const HOUR = 3_600_000;
const MIB = 1024 * 1024;

function check(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    throw new RocksError('ERR_ROCKS_INVALID_OPTION', `${name} must be a number from ${min} to ${max}, got ${String(value)}`);
  }
  return value;
}

function flag(name: string, value: unknown): boolean {
  if (typeof value !== 'boolean') throw new RocksError('ERR_ROCKS_INVALID_OPTION', `${name} must be true or false, got ${String(value)}`);
  return value;
}

export function resolveSessionConfig(options: SessionOptions = {}): SessionConfig {
  const config = resolve(options);
  // Sessions keep their config for life and never change it: those with the
  // same settings share one object (about 120 bytes each otherwise).
  const key = Object.values(config).join();
  const shared = resolved.get(key);
  if (shared !== undefined) return shared;
  if (resolved.size >= RESOLVED_KEPT) resolved.clear();
  resolved.set(key, config);
  return config;
}
const resolved = new Map<string, SessionConfig>();
/** Distinct settings kept for sharing; a program that makes more only shares less. */
const RESOLVED_KEPT = 64;

function resolve(options: SessionOptions): SessionConfig {
  const failureTimeout = check('failureTimeout', options.failureTimeout ?? 5000, 200, 24 * HOUR);
  const heartbeatInterval = check('heartbeatInterval', options.heartbeatInterval ?? Math.round(failureTimeout / 5), 10, failureTimeout / 2);
  const reconnectDelayMax = check('reconnectDelayMax', options.reconnectDelayMax ?? 2000, 1, HOUR);
  return {
    failureTimeout,
    heartbeatInterval,
    suspendLimit: check('suspendLimit', options.suspendLimit ?? 72 * HOUR, 0, 10_000 * HOUR),
    maxInflight: check('maxInflight', options.maxInflight ?? 4 * MIB, 1024, 2 ** 40),
    receiveWindow: check('receiveWindow', options.receiveWindow ?? 4 * MIB, 1024, 0xffff_ffff),
    handshakeTimeout: check('handshakeTimeout', options.handshakeTimeout ?? failureTimeout, 50, HOUR),
    reconnectDelay: check('reconnectDelay', options.reconnectDelay ?? 100, 0, reconnectDelayMax),
    reconnectDelayMax,
    connectTimeout: check('connectTimeout', options.connectTimeout ?? 20_000, 50, 24 * HOUR),
    closeLinger: check('closeLinger', options.closeLinger ?? 120_000, 0, 24 * HOUR),
    earlyData: flag('earlyData', options.earlyData ?? false),
    kernelLiveness: flag('kernelLiveness', options.kernelLiveness ?? true),
    pathCheckInterval: check('pathCheckInterval', options.pathCheckInterval ?? Math.max(30_000, heartbeatInterval), heartbeatInterval, 24 * HOUR),
  };
}

export interface ServerLimitOptions {
  /** Most sessions at once, suspended ones included. Default 100000. */
  maxSessions?: number;
  /** Most suspended sessions; past it the longest-suspended one is evicted. Default 50000. */
  maxSuspendedSessions?: number;
  /** Most bytes buffered by all sessions together (unacknowledged sends plus unread receives). Default 1 GiB. */
  maxBufferedBytes?: number;
  /**
   * How long a new connection may stay silent before the server treats it as
   * an ordinary client that waits for the server to speak first (SSH, SMTP).
   * Rocks clients speak at once, so this only delays such ordinary clients;
   * it must outlast the retransmission of a lost first segment. Default 500 ms.
   */
  detectTimeout?: number;
  /**
   * Most connections at once that have not yet proved anything: before their
   * first frame, or carrying a session the client has not confirmed. Past
   * it a new connection is closed at once (ERR_ROCKS_SERVER_BUSY on
   * 'clientError'). Default 20000.
   */
  maxPendingLinks?: number;
  /** As maxPendingLinks, from one remote address (nodes of the deployment are not counted). Default 1000. */
  maxPendingLinksPerAddress?: number;
}

export type ServerLimits = Required<ServerLimitOptions>;

export interface ServerRoutingOptions {
  /**
   * This server's node id, written into every session id it issues so that a
   * balancer or another node can send a resume to it (PROTOCOL.md §3.6).
   * Unique within a deployment; an integer from 0 to 4294967295. Random when unset.
   */
  nodeId?: number;
}

/** The node id option, checked; undefined when unset. */
export function resolveNodeId(options: ServerRoutingOptions = {}): number | undefined {
  const id = options.nodeId;
  if (id === undefined) return undefined;
  if (!Number.isInteger(id)) throw new RocksError('ERR_ROCKS_INVALID_OPTION', `nodeId must be an integer from 0 to 4294967295, got ${String(id)}`);
  return check('nodeId', id, 0, 0xffff_ffff);
}

export function resolveServerLimits(options: ServerLimitOptions = {}): ServerLimits {
  return {
    maxSessions: check('maxSessions', options.maxSessions ?? 100_000, 1, 2 ** 31),
    maxSuspendedSessions: check('maxSuspendedSessions', options.maxSuspendedSessions ?? 50_000, 0, 2 ** 31),
    maxBufferedBytes: check('maxBufferedBytes', options.maxBufferedBytes ?? 1024 * MIB, 1024, 2 ** 50),
    detectTimeout: check('detectTimeout', options.detectTimeout ?? 500, 1, 60_000),
    maxPendingLinks: check('maxPendingLinks', options.maxPendingLinks ?? 20_000, 1, 2 ** 31),
    maxPendingLinksPerAddress: check('maxPendingLinksPerAddress', options.maxPendingLinksPerAddress ?? 1000, 1, 2 ** 31),
  };
}
