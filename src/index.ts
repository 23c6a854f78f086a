// rocks: reliable sockets for Node.js. The node:net API, over connections
// that survive network failures with every byte delivered exactly once.

import { ReliableSocket, type ReliableConnectOptions } from './node/socket.js';

export { ReliableSocket } from './node/socket.js';
export type {
  ReliableConnectOptions,
  ReliableSocketOptions,
  ReconnectInfo,
  SuspendInfo,
  MigrateInfo,
  ReconnectAttemptInfo,
  DetectInfo,
} from './node/socket.js';
export { detectionCache, DetectionCache } from './node/detect.js';
export type { Verdict } from './node/detect.js';
export { ROCKS, EDP_VERSION, encodeAnnouncement, parseAnnouncement } from './edp/announcement.js';
export type { Enhancement } from './edp/announcement.js';
export { ReliableServer, createServer } from './node/server.js';
export { setupPrimary } from './node/cluster.js';
export {
  routeLink,
  ownerOf,
  FIRST_FRAME_TYPE_OFFSET,
  RESUME_SESSION_ID_OFFSET,
  RESUME_NODE_OFFSET,
  RESUME_WORKER_OFFSET,
} from './protocol/routing.js';
export type { LinkRoute, SessionOwner } from './protocol/routing.js';
export type { RelayInfo, ReliableServerOptions } from './node/server.js';
export type { DeploymentOptions } from './node/deployment.js';
export type { NodeAddress, PeerEntry } from './node/directory.js';
export { RocksError, ERROR_CODES } from './protocol/errors.js';
export type { RocksErrorCode } from './protocol/errors.js';
export type { SessionOptions, ServerLimitOptions, ServerRoutingOptions } from './protocol/config.js';
export { PROTOCOL_VERSION } from './protocol/session.js';

/** Opens a reliable connection, with the argument forms of net.connect. */
export function connect(options: ReliableConnectOptions, connectListener?: () => void): ReliableSocket;
export function connect(port: number, host?: string, connectListener?: () => void): ReliableSocket;
export function connect(port: number, connectListener?: () => void): ReliableSocket;
export function connect(path: string, connectListener?: () => void): ReliableSocket;
export function connect(...args: unknown[]): ReliableSocket {
  const [options] = args as [ReliableConnectOptions];
  const socket = new ReliableSocket(typeof options === 'object' && options !== null ? options : {});
  return (socket.connect as (...a: unknown[]) => ReliableSocket)(...args);
}

export const createConnection = connect;

export { spkiPin, parsePin, pinnedServerIdentity, fetchPinnedCertificate, pinnedConnectOptions, PinMismatchError } from './node/tls-pin.js';
export type { PinFetchOptions } from './node/tls-pin.js';
