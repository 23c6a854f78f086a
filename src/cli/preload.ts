// `rock run`'s interposition, the counterpart of the paper's LD_PRELOAD
// library: loaded with `node --import <this file>` (NODE_OPTIONS, so child
// Node processes load it too), it patches the builtin node:net, node:tls and
// node:http objects so that the TCP connections an unmodified program opens
// or accepts are rocks sockets. EDP keeps this safe with ordinary peers: a
// rocks client to an ordinary server and an ordinary client to a rocks server
// both get plain TCP. Options come from ROCKS_OPTIONS (JSON); ROCKS_LOG=1
// prints one line per connection on stderr, otherwise nothing is printed.
//
// Rocks itself uses node:net through ESM named imports, which become our
// patched functions once syncBuiltinESMExports() runs; every patch therefore
// hands calls that come from rocks' own files to the original (fromRocks).

import { createRequire, syncBuiltinESMExports } from 'node:module';
import type * as Net from 'node:net';
import type * as Tls from 'node:tls';
import type * as Http from 'node:http';
import { ReliableServer, ReliableSocket, type ReliableConnectOptions } from '../index.js';
import { normalizeConnectArgs } from '../node/connect-args.js';
import { resolveServerLimits, resolveSessionConfig } from '../protocol/config.js';

const require = createRequire(import.meta.url);
// The shared builtin objects: require('net') and `import net from 'node:net'` are this same object.
const net = require('node:net') as typeof Net;
const tls = require('node:tls') as typeof Tls;
const http = require('node:http') as typeof Http;

const logging = process.env.ROCKS_LOG === '1';
const log = (line: string): void => {
  if (logging) process.stderr.write(`rocks[${process.pid}]: ${line}\n`);
};

const sessionOptions = readOptions();

function readOptions(): Record<string, unknown> {
  const text = process.env.ROCKS_OPTIONS;
  if (text === undefined || text.trim() === '') return {};
  const fail = (why: string): never => {
    process.stderr.write(`rocks: ROCKS_OPTIONS ${why}\n`);
    process.exit(2);
  };
  let options: unknown;
  try {
    options = JSON.parse(text);
  } catch (err) {
    return fail(`is not valid JSON (${(err as Error).message}): ${text}`);
  }
  if (typeof options !== 'object' || options === null || Array.isArray(options)) return fail(`must be a JSON object, got ${text}`);
  try {
    resolveSessionConfig(options);
    resolveServerLimits(options);
  } catch (err) {
    return fail(`has a bad option: ${(err as Error).message}`);
  }
  return options as Record<string, unknown>;
}

// ---- telling rocks' own calls apart ----------------------------------------------------

/** This build's dist/src/ directory (ESM stack frames name their file by URL). */
const rocksFiles = new URL('../', import.meta.url).href;

/** True when the function that called `fn` is in one of rocks' own files. */
function fromRocks(fn: (...args: never[]) => unknown): boolean {
  const { prepareStackTrace, stackTraceLimit } = Error;
  const holder: { stack?: NodeJS.CallSite[] } = {};
  try {
    Error.prepareStackTrace = (_err, frames) => frames;
    Error.stackTraceLimit = 1;
    Error.captureStackTrace(holder, fn);
    return holder.stack?.[0]?.getFileName()?.startsWith(rocksFiles) ?? false;
  } finally {
    Error.prepareStackTrace = prepareStackTrace;
    Error.stackTraceLimit = stackTraceLimit;
  }
}

// ---- clients -------------------------------------------------------------------------------

const original = {
  connect: net.connect,
  Socket: net.Socket,
  tlsConnect: tls.connect,
  listen: net.Server.prototype.listen,
  close: net.Server.prototype.close,
  address: net.Server.prototype.address,
  getConnections: net.Server.prototype.getConnections,
  ref: net.Server.prototype.ref,
  unref: net.Server.prototype.unref,
  listening: Object.getOwnPropertyDescriptor(net.Server.prototype, 'listening')!,
};

type AnyOptions = Record<string, unknown>;

/** Why rocks leaves these connect options to node:net, or undefined when it can carry them. */
function notForRocks(o: AnyOptions): string | undefined {
  if (o.path) return 'a Unix socket';
  if (o.fd !== undefined || o.handle !== undefined) return 'an existing handle';
  if (o.onread !== undefined) return 'onread';
  if (o.signal !== undefined) return 'an AbortSignal';
  if (o.localPort !== undefined) return 'a fixed localPort (every reconnection needs a new one)';
  return undefined;
}

/** Starts a rocks connection (options already normalized, TCP only). */
function rocksSocket(options: AnyOptions, listener?: () => void): ReliableSocket {
  const o: AnyOptions = { ...sessionOptions, ...options };
  delete o.path; // http passes path: null; rocks would take any path for a Unix socket
  const socket = new ReliableSocket(o);
  watch(socket, `${String(o.host ?? 'localhost')}:${String(o.port)}`);
  socket.connect(o as ReliableConnectOptions, listener);
  if (o.keepAlive === true) socket.setKeepAlive(true, Number(o.keepAliveInitialDelay ?? 0));
  return socket;
}

function watch(socket: ReliableSocket, destination: string): void {
  if (logging) socket.once('detect', ({ reliable, reason }) => log(`connect ${destination}: ${reliable ? 'reliable' : 'plain'} (${reason})`));
  track(socket);
}

/** The program's rocks sockets that are still open. */
const live = new Set<ReliableSocket>();

function track(socket: ReliableSocket): void {
  live.add(socket);
  socket.once('close', () => live.delete(socket));
}

// When a process exits, the kernel closes its TCP connections and their peers
// see it at once. A rocks peer would see a failure instead, and hold the
// session suspended (up to suspendLimit) for a resume that can never come:
// abort the reliable ones, which tells the peer now (ERR_ROCKS_PEER_ABORTED).
process.on('exit', () => {
  const exited = new Error('the program exited');
  for (const socket of live) {
    if (!socket.reliable) continue;
    socket.destroy(exited); // with an error: an abort, never a close left to finish in the background
  }
});

/** net.connect and net.createConnection. */
function connect(...args: unknown[]): Net.Socket {
  const call = (): Net.Socket => (original.connect as (...a: unknown[]) => Net.Socket)(...args);
  if (fromRocks(connect)) return call();
  let options: AnyOptions;
  let listener: (() => void) | undefined;
  try {
    [options, listener] = normalizeConnectArgs(args) as [AnyOptions, (() => void) | undefined];
  } catch {
    return call(); // node:net reports bad arguments its own way
  }
  const why = notForRocks(options);
  if (why !== undefined) {
    log(`connect ${String(options.path || `${String(options.host ?? 'localhost')}:${String(options.port)}`)}: ${why}, left to node:net`);
    return call();
  }
  // Not a net.Socket (see the note on net.Socket below), but it has its surface.
  return rocksSocket(options, listener) as unknown as Net.Socket;
}

/** The forms of tls.connect: (options), (port[, host][, options]), (path[, options]); options win. */
function tlsOptions(args: unknown[]): AnyOptions {
  const isObject = (a: unknown): a is AnyOptions => typeof a === 'object' && a !== null;
  if (isObject(args[0])) return { ...args[0] };
  const [dial] = normalizeConnectArgs(args.filter((a) => !isObject(a)));
  return { ...dial, ...args.find(isObject) };
}

/**
 * tls.connect without a socket of its own: TLS over a rocks connection. Over
 * a stream without a handle, node's TLSSocket runs through a JSStreamSocket,
 * and its handshake waits in the rocks socket's queue until it connects.
 */
function tlsConnect(...args: unknown[]): Tls.TLSSocket {
  const call = (a: unknown[]): Tls.TLSSocket => (original.tlsConnect as (...a: unknown[]) => Tls.TLSSocket)(...a);
  if (fromRocks(tlsConnect)) return call(args);
  const listener = typeof args[args.length - 1] === 'function' ? (args[args.length - 1] as () => void) : undefined;
  let options: AnyOptions;
  try {
    options = tlsOptions(listener ? args.slice(0, -1) : args);
  } catch {
    return call(args); // node:tls reports bad arguments its own way
  }
  if (options.socket) return call(args);
  const why = notForRocks(options) ?? (options.port === undefined ? 'no port' : undefined);
  if (why !== undefined) {
    log(`tls.connect: ${why}, left to node:tls`);
    return call(args);
  }
  // tls.connect only applies timeout to a socket it made itself: do the same.
  const { timeout, ...tlsOnly } = options;
  const { host, port, family, localAddress, lookup, noDelay, keepAlive, keepAliveInitialDelay } = options;
  // Half-open, as a TCP handle under node's TLS is: the TLSSocket ends it
  // after its close_notify. Ended on the peer's end by itself, it would
  // refuse that close_notify when both sides end at once (write after end).
  const socket = rocksSocket({ host, port, family, localAddress, lookup, noDelay, keepAlive, keepAliveInitialDelay, allowHalfOpen: true });
  const secure = call([{ ...tlsOnly, socket }, ...(listener ? [listener] : [])]);
  if (typeof timeout === 'number' && timeout > 0) secure.setTimeout(timeout);
  return secure;
}

/**
 * `new net.Socket()` then `.connect(port, host)` (pg does this). The class
 * becomes a Proxy whose construct trap returns a ReliableSocket for a direct
 * `new net.Socket(options)` without a handle or fd; everything else (node's
 * own stdio and child_process sockets with handles, calls without `new`,
 * subclasses such as TLSSocket and JSStreamSocket, whose `super()` arrives
 * with their own new.target) constructs the original class. `x instanceof
 * net.Socket` stays true for every real socket, and is deliberately false for
 * rocks sockets: node's TLSSocket treats an instance of net.Socket without a
 * _handle as one still connecting and waits for a 'connect' that an already
 * connected rocks socket never emits again (pg's SSL upgrade would hang).
 */
function construct(target: typeof Net.Socket, args: unknown[], newTarget: NewableFunction): object {
  const options = (args[0] ?? {}) as AnyOptions;
  if (
    newTarget !== SocketProxy ||
    typeof options !== 'object' ||
    options.fd !== undefined ||
    options.handle !== undefined ||
    options.onread !== undefined ||
    fromRocks(construct)
  ) {
    return Reflect.construct(target, args, newTarget === SocketProxy ? target : newTarget);
  }
  const socket = new ReliableSocket({ ...sessionOptions, allowHalfOpen: options.allowHalfOpen === true });
  const connectRocks = socket.connect;
  // Its connect() decides: a Unix socket path is carried plainly, without a probe (rocks sessions are for TCP).
  socket.connect = function (this: ReliableSocket, ...connectArgs: unknown[]) {
    const [o, listener] = normalizeConnectArgs(connectArgs) as [AnyOptions, (() => void) | undefined];
    if (o.path) log(`connect ${String(o.path)}: a Unix socket, plain`);
    else watch(this, `${String(o.host ?? 'localhost')}:${String(o.port)}`);
    const dial = { ...sessionOptions, ...o, ...(o.path ? { enhanced: false } : {}) } as ReliableConnectOptions;
    (connectRocks as (o: ReliableConnectOptions, l?: () => void) => ReliableSocket).call(this, dial, listener);
    if (o.keepAlive === true) this.setKeepAlive(true, Number(o.keepAliveInitialDelay ?? 0));
    return this;
  } as typeof socket.connect;
  return socket;
}

const SocketProxy: typeof Net.Socket = new Proxy(original.Socket, { construct });

// ---- servers -------------------------------------------------------------------------------

/** The rocks server that listens for a net.Server (http.Server, tls.Server...) of the program. */
const rocksServers = new WeakMap<Net.Server, ReliableServer>();

/** The arguments of a TCP listen without its callback, or undefined for pipes, handles and odd forms. */
function tcpListen(args: unknown[]): { rest: unknown[]; callback: (() => void) | undefined } | undefined {
  const callback = typeof args[args.length - 1] === 'function' ? (args[args.length - 1] as () => void) : undefined;
  const rest = callback ? args.slice(0, -1) : args;
  const first = rest[0];
  const tcp =
    first === undefined ||
    first === null ||
    typeof first === 'number' ||
    (typeof first === 'string' && /^\d+$/.test(first)) ||
    (typeof first === 'object' &&
      first !== null &&
      'port' in first &&
      !('path' in first) &&
      !('handle' in first) &&
      !('_handle' in first) &&
      !('fd' in first));
  return tcp ? { rest, callback } : undefined;
}

/**
 * A listen on a TCP port creates a ReliableServer on that address; its
 * sockets arrive as 'connection's of the program's server, so http's (or
 * tls's) own connection listener serves them: rocks clients get reliable
 * sessions, ordinary clients plain connections.
 */
function listen(this: Net.Server, ...args: unknown[]): Net.Server {
  const tcp = tcpListen(args);
  if (tcp === undefined || fromRocks(listen)) return original.listen.apply(this, args as never);
  if (rocksServers.get(this)?.listening) {
    throw Object.assign(new Error('Listen method has been called more than once without closing.'), { code: 'ERR_SERVER_ALREADY_LISTEN' });
  }
  const server = this as Net.Server & { allowHalfOpen?: boolean; pauseOnConnect?: boolean; _unref?: boolean };
  // Under a tls.Server (https too) half-open, as for tls.connect above.
  const halfOpen = server.allowHalfOpen === true || server instanceof tls.Server;
  const rocks = new ReliableServer({ ...sessionOptions, allowHalfOpen: halfOpen });
  // An AbortSignal in the options closes the program's server (and so ours), as with node:net.
  const [first, ...more] = tcp.rest;
  const { signal, ...listenOptions } = (typeof first === 'object' && first !== null ? first : {}) as { signal?: AbortSignal };
  rocks.listen(...((signal ? [listenOptions, ...more] : tcp.rest) as [number]));
  rocksServers.set(server, rocks);
  if (signal) {
    if (signal.aborted) queueMicrotask(() => server.close());
    else signal.addEventListener('abort', () => server.close(), { once: true });
  }
  if (server._unref) rocks.unref(); // unref() before listen()
  if (tcp.callback) server.once('listening', tcp.callback);
  rocks.on('listening', () => server.emit('listening'));
  rocks.on('error', (err) => {
    if (!rocks.listening && rocksServers.get(server) === rocks) rocksServers.delete(server); // so that it may listen again
    server.emit('error', err);
  });
  rocks.on('close', () => {
    if (rocksServers.get(server) === rocks) rocksServers.delete(server);
    server.emit('close');
  });
  rocks.on('connection', (socket: ReliableSocket) => {
    log(`accept ${socket.remoteAddress}:${socket.remotePort}: ${socket.reliable ? 'reliable' : 'plain'}`);
    track(socket);
    if (server.pauseOnConnect) socket.pause();
    server.emit('connection', socket);
  });
  return server;
}

/** Each of these goes to the rocks server when the program's server has one. */
function viaRocks<K extends 'close' | 'address' | 'getConnections' | 'ref' | 'unref'>(name: K): Net.Server[K] {
  const originalMethod = original[name] as (...a: unknown[]) => unknown;
  return function (this: Net.Server, ...args: unknown[]) {
    const rocks = rocksServers.get(this);
    if (rocks === undefined) return originalMethod.apply(this, args);
    const result = (rocks[name] as (...a: unknown[]) => unknown).apply(rocks, args);
    return result === rocks ? this : result;
  } as unknown as Net.Server[K];
}

// ---- install -------------------------------------------------------------------------------

net.connect = net.createConnection = connect as typeof net.connect;
Object.assign(net, { Socket: SocketProxy, Stream: SocketProxy });
tls.connect = tlsConnect as typeof tls.connect;
// http.Agent copied net.createConnection when node:http loaded; https.Agent has its own, which calls tls.connect.
http.Agent.prototype.createConnection = connect as unknown as typeof http.Agent.prototype.createConnection;
net.Server.prototype.listen = listen as typeof net.Server.prototype.listen;
for (const name of ['close', 'address', 'getConnections', 'ref', 'unref'] as const) {
  (net.Server.prototype as unknown as Record<string, unknown>)[name] = viaRocks(name);
}
Object.defineProperty(net.Server.prototype, 'listening', {
  ...original.listening,
  get(this: Net.Server) {
    return rocksServers.get(this)?.listening ?? original.listening.get!.call(this);
  },
});
// ESM named imports of builtins (import { connect } from 'node:net') see the patches only after this.
syncBuiltinESMExports();
