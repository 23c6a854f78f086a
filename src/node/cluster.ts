// Node cluster support: one listening socket per address, in the primary,
// and every link sent to the worker that holds its session.
//
// With Node's own shared handle the primary hands each new TCP connection to
// the next worker, so a resume lands on a worker that does not know its
// session. Here a worker's ReliableServer.listen asks the primary to listen
// for it instead. The primary reads each link's first bytes (routeLink,
// after a PROXY header when another node relays the link): a RESUME of this
// node's session goes to the worker its session id names (or, if that
// worker is gone, gets ERR_ROCKS_UNKNOWN_SESSION from the primary), a HELLO
// to the next worker round robin, anything else to any worker: an ordinary
// client, another node's session (the worker relays it), garbage (the worker
// refuses it). The socket travels with worker.send(message, socket), the
// bytes already read in the message.
//
// The primary answers an EDP probe itself. A silent link waits in the
// primary for detectTimeout, as it would in a single server, so that a
// resume whose first segment comes late still reaches its worker; then it
// goes to any worker with its age, and the worker serves it plainly at once
// (it does not wait detectTimeout again).
//
// Messages are Node's internal kind (a `cmd` starting with NODE_, as Node's
// own cluster uses): the application's 'message' listeners never see them,
// and listening for them keeps no IPC channel referenced.

import cluster, { type Worker } from 'node:cluster';
import { randomBytes, randomUUID } from 'node:crypto';
import type { EventEmitter } from 'node:events';
import { type AddressInfo, createServer as netCreateServer, type Server, type Socket } from 'node:net';
import { encodeAnnouncement, parseAnnouncement, ROCKS } from '../edp/announcement.js';
import {
  resolveNodeId,
  resolveServerLimits,
  resolveSessionConfig,
  type ServerLimitOptions,
  type ServerRoutingOptions,
  type SessionOptions,
} from '../protocol/config.js';
import { RocksError } from '../protocol/errors.js';
import { encodeError } from '../protocol/frames.js';
import { parseProxyHeader } from '../protocol/proxy-header.js';
import { MAX_WORKER_ID, routeLink, type SessionOwner } from '../protocol/routing.js';
import { relayRefusal } from '../protocol/server-core.js';

const CMD = 'NODE_ROCKS';
/** Set in the primary's environment, so its workers know they may ask it to listen: the primary's pid. */
const PRIMARY_ENV = 'ROCKS_CLUSTER_PRIMARY';
/** One router per primary process, even with two copies of rocks loaded. */
const ROUTER = Symbol.for('rocks.cluster.router');

/** What a worker's listen asks the primary for: a TCP address (JSON, it crosses the IPC channel). */
interface AddressOptions {
  port: number;
  host?: string;
  backlog?: number;
  ipv6Only?: boolean;
}

type ToPrimary =
  | { cmd: typeof CMD; act: 'listen'; id: string; address: AddressOptions; nodeId?: number; detectTimeout: number; handshakeTimeout: number }
  | { cmd: typeof CMD; act: 'close'; id: string };

type ToWorker =
  | { cmd: typeof CMD; act: 'listening'; id: string; owner: SessionOwner; address: AddressInfo | string | null }
  | { cmd: typeof CMD; act: 'error'; id: string; error: ListenErrorInfo }
  /** A link with the bytes the primary read from it (base64), and how long ago (ms) it was accepted. */
  | { cmd: typeof CMD; act: 'link'; id: string; initial: string; age: number };

interface ListenErrorInfo {
  message: string;
  code?: string;
  errno?: number;
  syscall?: string;
  address?: string;
  port?: number;
}

function isOurs(message: unknown): message is { cmd: typeof CMD; act: string; id: string } {
  return typeof message === 'object' && message !== null && (message as { cmd?: unknown }).cmd === CMD;
}

/** Our EDP announcement, as a ReliableServer sends it. */
const SERVER_ANNOUNCEMENT = encodeAnnouncement([ROCKS]);
const LATE = new RocksError('ERR_ROCKS_HANDSHAKE_TIMEOUT', 'no HELLO or RESUME in time');
/** A link the primary refuses is destroyed if the client has not closed it by then. */
const REFUSED_LINK_TIMEOUT = 10_000;

// ---- the primary ---------------------------------------------------------------------------

/** One worker's server on an address. */
interface Listener {
  id: string;
  worker: Worker;
  workerId: number;
}

/**
 * Makes this process, a cluster primary, listen and route for its workers'
 * ReliableServers. Loading rocks in the primary does it; call it yourself
 * only if the primary does not load rocks otherwise (its workers import it
 * later), before cluster.fork(). Without it, workers fall back to Node's own
 * shared handle, with a warning: a resume may then reach the wrong worker.
 * Does nothing outside a cluster primary or when already done.
 */
export function setupPrimary(): void {
  if (!cluster.isPrimary) return;
  const global = globalThis as { [ROUTER]?: Router };
  global[ROUTER] ??= new Router();
}

class Router {
  private readonly addresses = new Map<string, RoutedAddress>();
  /** The worker byte of each live worker that listened. */
  private readonly workerIds = new Map<Worker, number>();
  /** Worker bytes of workers that exited, until a new worker gets the byte. */
  private readonly gone = new Set<number>();
  private lastWorkerId = 0;

  constructor() {
    process.env[PRIMARY_ENV] = String(process.pid);
    for (const worker of Object.values(cluster.workers ?? {})) if (worker) this.watch(worker);
    cluster.on('fork', (worker) => this.watch(worker));
    // A disconnected worker can take no more links; its sessions are gone.
    cluster.on('disconnect', (worker) => this.drop(worker));
    cluster.on('exit', (worker) => this.drop(worker));
  }

  private watch(worker: Worker): void {
    (worker.process as EventEmitter).on('internalMessage', (message: unknown) => {
      if (isOurs(message)) this.onMessage(worker, message as ToPrimary);
    });
  }

  private onMessage(worker: Worker, message: ToPrimary): void {
    if (message.act === 'close') {
      for (const address of this.addresses.values()) if (address.remove(message.id)) this.closeIfUnused(address);
      return;
    }
    if (message.act !== 'listen') return;
    const fail = (error: ListenErrorInfo): void => send(worker, { cmd: CMD, act: 'error', id: message.id, error });
    const workerId = this.workerIdOf(worker);
    if (workerId === undefined) {
      fail({ message: `more than ${MAX_WORKER_ID} workers listen with rocks at once`, code: 'ERR_ROCKS_INVALID_OPTION' });
      return;
    }
    const key = addressKey(message.address);
    let address = this.addresses.get(key);
    if (address === undefined) {
      address = new RoutedAddress(message.address, message, this);
      this.addresses.set(key, address);
    }
    const owner = { nodeId: message.nodeId ?? address.nodeId, workerId };
    address.add({ id: message.id, worker, workerId }, owner, (error) => {
      if (error === undefined) return;
      fail(error);
      if (this.addresses.get(key) === address && !address.listening) this.addresses.delete(key);
    });
  }

  /** The worker's byte: 1..255, unique among live workers, reused as late as possible after a worker exits. */
  private workerIdOf(worker: Worker): number | undefined {
    const known = this.workerIds.get(worker);
    if (known !== undefined) return known;
    const used = new Set(this.workerIds.values());
    for (let i = 1; i <= MAX_WORKER_ID; i++) {
      const id = ((this.lastWorkerId + i - 1) % MAX_WORKER_ID) + 1;
      if (used.has(id)) continue;
      this.lastWorkerId = id;
      this.workerIds.set(worker, id);
      this.gone.delete(id);
      return id;
    }
    return undefined;
  }

  private drop(worker: Worker): void {
    const id = this.workerIds.get(worker);
    if (id === undefined) return;
    this.workerIds.delete(worker);
    this.gone.add(id);
    // The address stays open when its last worker dies: resumes still learn at once that their sessions are gone.
    for (const address of this.addresses.values()) address.removeWorker(worker);
  }

  private closeIfUnused(address: RoutedAddress): void {
    if (address.listenerCount > 0) return;
    this.addresses.delete(address.key);
    address.close();
  }

  /** Why a resume for worker `id` cannot be served here. */
  whyNoWorker(id: number): string {
    if (this.gone.has(id)) return `worker ${id} of this node is gone`;
    return [...this.workerIds.values()].includes(id) ? `worker ${id} of this node no longer listens here` : `there is no worker ${id} on this node`;
  }
}

function addressKey(a: AddressOptions): string {
  return `${a.host ?? ''}|${a.port}|${a.ipv6Only === true ? 'v6only' : ''}`;
}

/** One listening socket in the primary, shared by the workers that listen on its address. */
class RoutedAddress {
  readonly key: string;
  readonly nodeId: number;
  private readonly server: Server;
  private readonly listeners: Listener[] = [];
  /** Listens waiting for the socket to be bound: they learn the outcome together. */
  private waiting: (() => void)[] = [];
  private next = 0;
  /** The node ids in the sessions this address's workers issue (a worker may name its own). */
  private readonly nodeIds = new Set<number>();
  private readonly detectTimeout: number;
  private readonly handshakeTimeout: number;
  private bindError: ListenErrorInfo | undefined;

  constructor(
    options: AddressOptions,
    timeouts: { detectTimeout: number; handshakeTimeout: number },
    private readonly router: Router,
  ) {
    this.key = addressKey(options);
    this.nodeId = randomBytes(4).readUInt32BE(0);
    this.nodeIds.add(this.nodeId);
    this.detectTimeout = timeouts.detectTimeout;
    this.handshakeTimeout = timeouts.handshakeTimeout;
    // Half-open, so that a probe's half-close still gets our answer.
    this.server = netCreateServer({ allowHalfOpen: true }, (socket) => this.accept(socket));
    // The workers keep the primary alive; this socket alone must not.
    this.server.unref();
    this.server.on('listening', () => this.settle());
    this.server.on('error', (err: NodeJS.ErrnoException) => {
      if (this.server.listening) return; // an accept error: Node retries
      this.bindError = { message: err.message, code: err.code, errno: err.errno, syscall: err.syscall, address: options.host, port: options.port };
      this.settle();
    });
    try {
      this.server.listen({ port: options.port, host: options.host, backlog: options.backlog, ipv6Only: options.ipv6Only });
    } catch (err) {
      this.bindError = { message: (err as Error).message, code: (err as NodeJS.ErrnoException).code };
      queueMicrotask(() => this.settle());
    }
  }

  get listening(): boolean {
    return this.server.listening;
  }

  get listenerCount(): number {
    return this.listeners.length;
  }

  /** Adds a worker's server once the socket is bound; `done` gets the bind error, if any. */
  add(listener: Listener, owner: SessionOwner, done: (error?: ListenErrorInfo) => void): void {
    const join = (): void => {
      if (this.bindError !== undefined) return done(this.bindError);
      if (this.listeners.some((l) => l.worker === listener.worker && l.id !== listener.id)) {
        // As when one process listens twice on a port.
        return done({ message: `listen EADDRINUSE: address already in use ${this.key}`, code: 'EADDRINUSE', syscall: 'listen' });
      }
      if (!listener.worker.isConnected()) return;
      this.listeners.push(listener);
      this.nodeIds.add(owner.nodeId);
      const address = this.server.address();
      send(listener.worker, { cmd: CMD, act: 'listening', id: listener.id, owner, address });
      // What Node's cluster says when a worker's server listens: programs wait for it.
      const info =
        typeof address === 'object' && address !== null
          ? { address: address.address, port: address.port, addressType: address.family === 'IPv6' ? 6 : 4 }
          : { address, addressType: -1 };
      listener.worker.emit('listening', info);
      cluster.emit('listening', listener.worker, info);
      done();
    };
    if (this.server.listening || this.bindError !== undefined) join();
    else this.waiting.push(join);
  }

  private settle(): void {
    const waiting = this.waiting;
    this.waiting = [];
    for (const join of waiting) join();
  }

  /** Removes a worker's server; true when it was here. */
  remove(id: string): boolean {
    const i = this.listeners.findIndex((l) => l.id === id);
    if (i < 0) return false;
    this.listeners.splice(i, 1);
    return true;
  }

  removeWorker(worker: Worker): void {
    for (let i = this.listeners.length - 1; i >= 0; i--) if (this.listeners[i].worker === worker) this.listeners.splice(i, 1);
  }

  close(): void {
    if (this.server.listening) this.server.close();
  }

  // ---- links ---------------------------------------------------------------------------

  private accept(socket: Socket): void {
    const accepted = Date.now();
    let first: Buffer = Buffer.alloc(0);
    // A link's failures concern that link alone.
    socket.on('error', () => {});
    const decide = (route: Route): void => {
      clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.removeListener('end', onEnd);
      this.route(socket, first, accepted, route);
    };
    const onData = (chunk: Buffer): void => {
      first = first.length === 0 ? chunk : Buffer.concat([first, chunk]);
      // A link another node of the deployment relays starts with a PROXY header: route on what follows.
      const proxy = parseProxyHeader(first);
      if (proxy.kind === 'incomplete') return;
      if (proxy.kind === 'malformed') return decide({ kind: 'other' }); // a worker refuses it
      const rest = proxy.kind === 'header' ? first.subarray(proxy.length) : first;
      const route = routeLink(rest);
      if (route.kind !== 'incomplete') return decide(route);
      // A rocks client announced itself: the rest of its first frame may be late (a lost segment), as a single server would allow.
      if (parseAnnouncement(rest).kind === 'announcement' && !announced) {
        announced = true;
        clearTimeout(timer);
        timer = setTimeout(() => decide({ kind: 'late' }), Math.max(0, accepted + this.handshakeTimeout - Date.now()));
      }
    };
    // Connected and half-closed with nothing said: an EDP probe. Otherwise an ordinary client that ended its side.
    const onEnd = (): void => decide(first.length === 0 ? { kind: 'probe' } : { kind: 'other' });
    let announced = false;
    // Silent for detectTimeout: an ordinary client that waits for the server to speak first (SSH, SMTP).
    let timer = setTimeout(() => decide({ kind: 'other' }), this.detectTimeout);
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.once('close', () => clearTimeout(timer));
  }

  private route(socket: Socket, first: Buffer, accepted: number, route: Route): void {
    switch (route.kind) {
      case 'probe':
        socket.end(SERVER_ANNOUNCEMENT);
        return;
      case 'late':
        this.refuse(socket, [SERVER_ANNOUNCEMENT, encodeError(LATE.wireCode, LATE.message)]);
        return;
      case 'resume': {
        if (this.nodeIds.has(route.owner.nodeId)) {
          const owner = this.listeners.find((l) => l.workerId === route.owner.workerId);
          if (owner === undefined) this.refuse(socket, relayRefusal(this.router.whyNoWorker(route.owner.workerId)));
          else this.hand(socket, first, accepted, owner);
          return;
        }
        this.handToAny(socket, first, accepted); // another node's session: a worker relays it to its peer, or refuses it
        return;
      }
      default:
        // A new session, an ordinary client, an id we cannot route, garbage: any worker will do.
        this.handToAny(socket, first, accepted);
    }
  }

  /** To the next worker, round robin. */
  private handToAny(socket: Socket, first: Buffer, accepted: number): void {
    if (this.listeners.length === 0) {
      socket.destroy(); // no worker left to serve it; the client may try again
      return;
    }
    this.next = (this.next + 1) % this.listeners.length;
    this.hand(socket, first, accepted, this.listeners[this.next]);
  }

  /** Answers a link with `answer` (our announcement and an ERROR frame) and closes it. */
  private refuse(socket: Socket, answer: Buffer[]): void {
    socket.resume(); // whatever else it sends is read and dropped
    socket.end(Buffer.concat(answer));
    socket.setTimeout(REFUSED_LINK_TIMEOUT, () => socket.destroy());
  }

  private hand(socket: Socket, first: Buffer, accepted: number, listener: Listener): void {
    stopReading(socket);
    const message: ToWorker = { cmd: CMD, act: 'link', id: listener.id, initial: first.toString('base64'), age: Date.now() - accepted };
    listener.worker.send(message, socket, (err: Error | null) => {
      if (err) socket.destroy(); // the worker is going away; the client will try again
    });
  }
}

type Route = ReturnType<typeof routeLink> | { kind: 'probe' } | { kind: 'late' };

/**
 * Stops every read of a socket we are about to hand on: unread bytes stay in
 * the kernel, and the worker reads them. Node's pause() stops only the
 * delivery: a paused Readable still calls _read to fill its buffer (which
 * starts the handle reading again), and the handle reads on until then.
 * Whatever it read after this would be lost: while the handle waits to be
 * sent (one at a time per worker), and once sent (child_process points its
 * onread at a no-op until the worker acknowledges it).
 */
function stopReading(socket: Socket): void {
  socket.pause();
  socket._read = () => {};
  const handle = (socket as unknown as { _handle?: { reading?: boolean; readStop?: () => number } })._handle;
  if (handle?.reading) {
    handle.reading = false;
    handle.readStop?.();
  }
}

function send(worker: Worker, message: ToWorker): void {
  if (worker.isConnected()) worker.send(message, undefined, () => {});
}

// ---- a worker ------------------------------------------------------------------------------

/** What a ReliableServer in a worker gives the listen it delegates to the primary. */
export interface RoutedServerHost {
  /** The listen reply came: sessions from now on name this owner. */
  listening(owner: SessionOwner): void;
  error(err: Error): void;
  /** A link the primary accepted, with the bytes it read and how long ago (ms) it was accepted. */
  link(socket: Socket, initial: Buffer, age: number): void;
  /** The primary is gone: close, as Node's cluster closes a worker's servers when it disconnects. */
  close(): void;
}

/** A worker's listen through the primary: the part of net.Server's surface a ReliableServer uses. */
export interface PrimaryListen {
  readonly listening: boolean;
  address(): AddressInfo | string | null;
  close(): void;
  ref(): void;
  unref(): void;
}

let warnedUnrouted = false;

/** True in a worker whose primary runs rocks, which would route its links (listenThroughPrimary). */
export function routedByPrimary(): boolean {
  return cluster.isWorker && process.env[PRIMARY_ENV] === String(process.ppid);
}
const workerListens = new Map<string, WorkerListen>();

/**
 * In a cluster worker, asks the primary to listen on the address in `args`
 * (the arguments of net.Server.listen) and route its links here. Returns
 * undefined when this server should listen itself: not a cluster worker, a
 * Unix socket, a handle, `exclusive: true`, or a primary without rocks.
 */
export function listenThroughPrimary(
  args: unknown[],
  options: SessionOptions & ServerLimitOptions & ServerRoutingOptions,
  host: RoutedServerHost,
): PrimaryListen | undefined {
  if (!cluster.isWorker) return undefined;
  const request = tcpListen(args);
  if (request === undefined) return undefined;
  if (process.env[PRIMARY_ENV] !== String(process.ppid)) {
    if (!warnedUnrouted) {
      warnedUnrouted = true;
      process.emitWarning(
        'the cluster primary does not run rocks, so each worker listens the plain Node way and a resume can reach the wrong worker: import rocks in the primary, or call setupPrimary() there before cluster.fork()',
        { code: 'ROCKS_CLUSTER_UNROUTED' },
      );
    }
    return undefined;
  }
  const listen = new WorkerListen(host);
  if (request.callback) listen.onListening = request.callback;
  const { signal } = request;
  if (signal?.aborted) {
    queueMicrotask(() => listen.close());
    return listen;
  }
  signal?.addEventListener('abort', () => listen.close(), { once: true });
  listen.start(request.address, {
    nodeId: resolveNodeId(options),
    detectTimeout: resolveServerLimits(options).detectTimeout,
    handshakeTimeout: resolveSessionConfig(options).handshakeTimeout,
  });
  return listen;
}

class WorkerListen implements PrimaryListen {
  readonly id = randomUUID();
  listening = false;
  onListening: (() => void) | undefined;
  private closed = false;
  private info: AddressInfo | string | null = null;
  /** Keeps the worker alive while it listens, as Node's cluster does for its shared handles. */
  private keepAlive: NodeJS.Timeout | undefined;
  private referenced = true;

  constructor(private readonly host: RoutedServerHost) {}

  start(address: AddressOptions, extra: { nodeId?: number; detectTimeout: number; handshakeTimeout: number }): void {
    installWorker();
    workerListens.set(this.id, this);
    this.setKeepAlive();
    sendToPrimary({ cmd: CMD, act: 'listen', id: this.id, address, ...extra });
  }

  onMessage(message: ToWorker, socket: Socket | undefined): void {
    switch (message.act) {
      case 'listening':
        if (this.closed) return;
        this.listening = true;
        this.info = message.address;
        this.host.listening(message.owner);
        this.onListening?.();
        break;
      case 'error':
        if (this.closed) return;
        this.forget();
        this.host.error(Object.assign(new Error(message.error.message), message.error));
        break;
      case 'link':
        if (socket === undefined) return;
        if (!this.listening) {
          socket.destroy(); // it crossed our close on the way
          return;
        }
        this.host.link(socket, Buffer.from(message.initial, 'base64'), message.age);
        break;
    }
  }

  address(): AddressInfo | string | null {
    return this.listening ? this.info : null;
  }

  primaryGone(): void {
    if (!this.closed) this.host.close();
  }

  close(): void {
    if (this.closed) return;
    sendToPrimary({ cmd: CMD, act: 'close', id: this.id });
    this.forget();
  }

  /** Listens no more; links still on their way are closed when they arrive (the entry stays for that). */
  private forget(): void {
    this.closed = true;
    this.listening = false;
    clearInterval(this.keepAlive);
    this.keepAlive = undefined;
  }

  ref(): void {
    this.referenced = true;
    this.setKeepAlive();
  }

  unref(): void {
    this.referenced = false;
    this.keepAlive?.unref();
  }

  private setKeepAlive(): void {
    if (this.closed) return;
    this.keepAlive ??= setInterval(() => {}, 2 ** 31 - 1);
    if (this.referenced) this.keepAlive.ref();
    else this.keepAlive.unref();
  }
}

let workerInstalled = false;

function installWorker(): void {
  if (workerInstalled) return;
  workerInstalled = true;
  (process as EventEmitter).on('internalMessage', (message: unknown, handle: unknown) => {
    if (!isOurs(message)) return;
    // Another copy of rocks in this process may own it: only the owner answers.
    workerListens.get(message.id)?.onMessage(message as ToWorker, handle as Socket | undefined);
  });
  process.once('disconnect', () => {
    for (const listen of workerListens.values()) listen.primaryGone();
  });
}

function sendToPrimary(message: ToPrimary): void {
  if (process.connected) process.send?.(message, undefined, undefined, () => {});
}

/** The TCP address and callback in net.Server.listen's arguments, or undefined for the forms we do not route. */
function tcpListen(args: unknown[]): { address: AddressOptions; callback?: () => void; signal?: AbortSignal } | undefined {
  const callback = typeof args[args.length - 1] === 'function' ? (args[args.length - 1] as () => void) : undefined;
  const rest = callback ? args.slice(0, -1) : args;
  const [first, second, third] = rest;
  if (first === undefined || first === null || typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) {
    const host = typeof second === 'string' ? second : undefined;
    const backlog = typeof second === 'number' ? second : typeof third === 'number' ? third : undefined;
    return { address: { port: checkPort(first ?? 0), host, backlog }, callback };
  }
  if (typeof first !== 'object') return undefined; // a pipe's path
  const o = first as { port?: unknown; host?: string; backlog?: number; ipv6Only?: boolean; exclusive?: boolean; signal?: AbortSignal };
  if (['path', 'handle', '_handle', 'fd'].some((k) => k in o) || o.exclusive === true) return undefined;
  return { address: { port: checkPort(o.port ?? 0), host: o.host, backlog: o.backlog, ipv6Only: o.ipv6Only }, callback, signal: o.signal };
}

/** A port as net.Server.listen accepts it, or the RangeError it throws. */
function checkPort(port: unknown): number {
  const n = typeof port === 'string' && /^\d+$/.test(port) ? Number(port) : port;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > 65535) {
    throw Object.assign(new RangeError(`options.port should be >= 0 and < 65536. Received ${String(port)}.`), { code: 'ERR_SOCKET_BAD_PORT' });
  }
  return n;
}

// Loading rocks in a primary is enough: its workers' servers are routed.
setupPrimary();
