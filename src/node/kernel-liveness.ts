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
import { monotonicNow } from './scheduler.js';
import { fdOf, IPPROTO_TCP, setIntOption, socketCalls } from './socket-calls.js';

const debug = debuglog('rocks');

export const SOL_SOCKET = 1;
export const SO_KEEPALIVE = 9;
export const TCP_KEEPIDLE = 4;
export const TCP_KEEPINTVL = 5;
export const TCP_KEEPCNT = 6;
export const TCP_USER_TIMEOUT = 18;

type Liveness = Pick<SessionConfig, 'kernelLiveness' | 'failureTimeout' | 'heartbeatInterval'>;

/** Whether the kernel can watch links at these settings: it counts keepalive time in whole seconds. */
export function kernelCanWatch(config: Liveness): boolean {
  return config.kernelLiveness && config.heartbeatInterval >= 1000 && socketCalls() !== null;
}

/**
 * The keepalive settings, in whole seconds: probes every heartbeatInterval
 * once the connection was silent for `idle`. TCP_USER_TIMEOUT
 * (failureTimeout) fails the connection at the first probe due once that
 * long passed unheard, so `idle` moves not the bound but only how often a
 * healthy silent connection is probed. It leaves two probes before the
 * verdict (one lost probe is no failure): at the defaults a probe every
 * 3 s, where one a second from 10,000 idle connections overflowed the
 * kernel's receive backlog (PROTOCOL.md §5.1).
 */
export function keepaliveSeconds(config: Liveness): { idle: number; interval: number; count: number } {
  const interval = Math.floor(config.heartbeatInterval / 1000);
  const idle = Math.max(interval, Math.floor((config.failureTimeout - 2 * interval * 1000) / 1000));
  // Without TCP_USER_TIMEOUT (it is set last) the count ends it instead.
  const count = Math.max(1, Math.ceil((config.failureTimeout - idle * 1000) / (interval * 1000)));
  return { idle, interval, count };
}

/**
 * Asks the kernel to watch `socket`'s connection (keepaliveSeconds): the
 * connection fails (ETIMEDOUT) once failureTimeout passed without an answer
 * to a probe or an acknowledgement of data sent. Returns whether it took
 * every option.
 */
export function watchInKernel(socket: Socket, config: Liveness): boolean {
  if (!kernelCanWatch(config)) return false;
  const c = socketCalls()!;
  const fd = fdOf(socket);
  if (fd === undefined) return false;
  const { idle, interval, count } = keepaliveSeconds(config);
  const ok =
    setIntOption(c, fd, SOL_SOCKET, SO_KEEPALIVE, 1) &&
    setIntOption(c, fd, IPPROTO_TCP, TCP_KEEPIDLE, idle) &&
    setIntOption(c, fd, IPPROTO_TCP, TCP_KEEPINTVL, interval) &&
    setIntOption(c, fd, IPPROTO_TCP, TCP_KEEPCNT, count) &&
    setIntOption(c, fd, IPPROTO_TCP, TCP_USER_TIMEOUT, config.failureTimeout);
  if (!ok) debug('the kernel cannot watch connection fd %d: heartbeats watch it', fd);
  return ok;
}

/**
 * How long a link carries its session before the kernel is asked to watch
 * it. The five setsockopt calls cost each end about 50 µs per connection on
 * the critical path of its first exchange (measured on the bench's VM),
 * which a connection closed within a second never needs: until then
 * heartbeats watch it, as they watch every link (PROTOCOL.md §5.1).
 */
export const KERNEL_WATCH_DELAY_MS = 1000;

/** Links waiting to be watched, oldest first. */
const waiting: { at: number; socket: Socket; config: Liveness; watched: () => void }[] = [];
let timerArmed = false;

/**
 * watchInKernel for `socket` KERNEL_WATCH_DELAY_MS from now, unless it is
 * destroyed by then; `watched` is called if the kernel took the options.
 * One timer for all links.
 */
export function watchInKernelSoon(socket: Socket, config: Liveness, watched: () => void): void {
  if (!kernelCanWatch(config)) return;
  waiting.push({ at: monotonicNow(), socket, config, watched });
  if (timerArmed) return;
  timerArmed = true;
  setTimeout(watchDue, KERNEL_WATCH_DELAY_MS).unref();
}

function watchDue(): void {
  timerArmed = false;
  const now = monotonicNow();
  let due = 0;
  while (due < waiting.length && now - waiting[due].at >= KERNEL_WATCH_DELAY_MS) due++;
  for (const w of waiting.splice(0, due)) if (!w.socket.destroyed && watchInKernel(w.socket, w.config)) w.watched();
  if (waiting.length === 0) return;
  timerArmed = true;
  setTimeout(watchDue, KERNEL_WATCH_DELAY_MS - (now - waiting[0].at)).unref();
}
