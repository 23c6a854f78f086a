// Liveness in the kernel (PROTOCOL.md §5.1): a link's TCP connection gets
// keepalive probes and TCP_USER_TIMEOUT, so its kernel finds a dead path
// within failureTimeout plus one heartbeatInterval without waking the
// process, and the session asks its peer (PACE) for heartbeats only every
// pathCheckInterval. Linux, through koffi: Node's setKeepAlive sets neither
// the probe interval nor the user timeout. Elsewhere, or for a link that is
// not TCP (a Unix socket), the session keeps its heartbeats.

import type { Socket } from 'node:net';
import { debuglog } from 'node:util';
import type { SessionConfig } from '../protocol/config.js';
import { fdOf, IPPROTO_TCP, setIntOption, socketCalls } from './socket-calls.js';

const debug = debuglog('rocks');

const SOL_SOCKET = 1;
const SO_KEEPALIVE = 9;
const TCP_KEEPIDLE = 4;
const TCP_KEEPINTVL = 5;
const TCP_KEEPCNT = 6;
const TCP_USER_TIMEOUT = 18;

type Liveness = Pick<SessionConfig, 'kernelLiveness' | 'failureTimeout' | 'heartbeatInterval'>;

/** Whether the kernel can watch links at these settings: it counts keepalive time in whole seconds. */
export function kernelCanWatch(config: Liveness): boolean {
  return config.kernelLiveness && config.heartbeatInterval >= 1000 && socketCalls() !== null;
}

/**
 * Asks the kernel to watch `socket`'s connection: probes after
 * heartbeatInterval of silence and every heartbeatInterval after, and the
 * connection fails (ETIMEDOUT) once failureTimeout passed without an answer
 * or an acknowledgement of data sent. Returns whether it took every option.
 */
export function watchInKernel(socket: Socket, config: Liveness): boolean {
  if (!kernelCanWatch(config)) return false;
  const c = socketCalls()!;
  const fd = fdOf(socket);
  if (fd === undefined) return false;
  const seconds = Math.floor(config.heartbeatInterval / 1000);
  const ok =
    setIntOption(c, fd, SOL_SOCKET, SO_KEEPALIVE, 1) &&
    setIntOption(c, fd, IPPROTO_TCP, TCP_KEEPIDLE, seconds) &&
    setIntOption(c, fd, IPPROTO_TCP, TCP_KEEPINTVL, seconds) &&
    setIntOption(c, fd, IPPROTO_TCP, TCP_KEEPCNT, Math.ceil(config.failureTimeout / (seconds * 1000))) &&
    setIntOption(c, fd, IPPROTO_TCP, TCP_USER_TIMEOUT, config.failureTimeout);
  if (!ok) debug('the kernel cannot watch connection fd %d: heartbeats watch it', fd);
  return ok;
}
