// `rock serve` and `rock forward`: a listener whose every connection is
// carried to a target. serve listens with rocks (EDP: ordinary clients are
// relayed too) and dials the target plainly; forward listens plainly and
// dials the target with rocks.

import { once } from 'node:events';
import { connect as netConnect, createServer as netCreateServer, type Server, type Socket } from 'node:net';
import type { ConnectionOptions, TlsOptions } from 'node:tls';
import { connect as rocksConnect, createServer as rocksCreateServer } from '../index.js';
import type { PeerEntry, RelayInfo, ReliableServer, ReliableSocket } from '../index.js';
import { type CommonOptions, type Endpoint, EXIT, ExitError } from './args.js';
import { bridge } from './bridge.js';
import { Monitor } from './monitor.js';
import { PinChecker } from './pin-check.js';
import type { ClientTls } from './tls-args.js';

export type RelayKind = 'serve' | 'forward';

export const show = (e: Endpoint): string => (e.host.includes(':') ? `[${e.host}]:${e.port}` : `${e.host}:${e.port}`);

/** Checks that something accepts connections at `to`, so a typo fails now and not at the first client. */
export async function reachable(to: Endpoint): Promise<void> {
  const socket = netConnect(to.port, to.host);
  try {
    await once(socket, 'connect');
  } catch (err) {
    throw new ExitError(`cannot reach --to ${show(to)}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, EXIT.FAILURE);
  } finally {
    socket.destroy();
  }
}

/** Listens on `listen`, or fails with exit code 3 (address in use, no permission). */
export async function listenOrExit(server: Server | ReliableServer, listen: Endpoint): Promise<void> {
  server.listen(listen.port, listen.host);
  try {
    await Promise.race([once(server, 'listening'), once(server, 'error').then(([err]) => Promise.reject(err))]);
  } catch (err) {
    throw new ExitError(`cannot listen on ${show(listen)}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, EXIT.LISTEN);
  }
}

/** Runs a relay until `stop` resolves (a signal); resolves once everything is closed. */
export async function relay(
  kind: RelayKind,
  listen: Endpoint,
  to: Endpoint,
  common: CommonOptions,
  stop: Promise<string>,
  deployment: { nodeId?: number; peers?: PeerEntry[]; directory?: string; advertise?: Endpoint } = {},
  tls: { server?: TlsOptions; client?: ClientTls } = {},
): Promise<void> {
  const monitor = new Monitor(common);
  const log = monitor.log;
  // With a pin alone, fetching and checking the server's certificate is the reachability check.
  const pins = tls.client?.pin === undefined ? undefined : new PinChecker(tls.client.pin, to, tls.client.options);
  if (pins) await pins.start();
  else await reachable(to);
  const clientTls = (): ConnectionOptions | undefined => pins?.options ?? tls.client?.options;
  const open = new Set<Socket | ReliableSocket>();
  const carry = (incoming: Socket | ReliableSocket, outgoing: Socket | ReliableSocket, rocks: ReliableSocket, peer: string): void => {
    open.add(incoming);
    open.add(outgoing);
    const track = () => monitor.track(rocks, peer);
    if (rocks === incoming) track();
    else rocks.once('connect', track);
    rocks.on('error', (err) => log.warn({ peer, err: err.message }, 'connection failed'));
    bridge(incoming, outgoing, () => {
      open.delete(incoming);
      open.delete(outgoing);
    });
  };

  let server: Server | ReliableServer;
  if (kind === 'serve') {
    server = rocksCreateServer({ ...common.session, allowHalfOpen: true, ...deployment, tls: tls.server }, (socket) => {
      const upstream = netConnect({ port: to.port, host: to.host, allowHalfOpen: true });
      upstream.on('error', (err) => log.warn({ to: show(to), err: err.message }, 'target refused a connection'));
      carry(socket, upstream, socket, `${socket.remoteAddress}:${socket.remotePort}`);
    });
  } else {
    server = netCreateServer({ allowHalfOpen: true }, (socket) => {
      const upstream = rocksConnect({
        ...common.session,
        enhanced: common.enhanced,
        port: to.port,
        host: to.host,
        allowHalfOpen: true,
        tls: clientTls(),
      });
      // A certificate refused: the pinned key may have changed (refused, said once per connection) or only its certificate (trusted from now on).
      if (pins) upstream.once('error', (err) => pins.recheck(err, log));
      carry(socket, upstream, upstream, `${socket.remoteAddress}:${socket.remotePort}`);
    });
  }
  await listenOrExit(server, listen);
  await monitor.start();
  if (kind === 'serve') {
    log.info(
      { listen: show(listen), to: show(to), nodeId: (server as ReliableServer).nodeId, tls: tls.server !== undefined },
      'serving rocks, relaying to the target',
    );
    (server as ReliableServer).on('directoryError', (err: Error) => log.warn({ err: err.message }, 'node directory'));
    (server as ReliableServer).on('relay', (r: RelayInfo) => {
      const fields = { nodeId: r.nodeId, client: `${r.remoteAddress}:${r.remotePort}`, outcome: r.outcome, reason: r.reason };
      if (r.outcome === 'relayed') log.info(fields, 'resume relayed to the node that holds the session');
      else log.warn(fields, 'resume not relayed');
    });
  } else log.info({ listen: show(listen), to: show(to), tls: tls.client !== undefined }, 'forwarding over rocks');

  const signal = await stop;
  log.info({ signal, open: open.size / 2 }, 'shutting down');
  server.close();
  for (const s of open) s.destroy();
  await monitor.close();
}
