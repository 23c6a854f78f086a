// `rock socks`: a SOCKS5 proxy whose every outgoing connection is a rocks
// connection with EDP. A destination that speaks rocks (a rock serve, a rocks
// server) gets a reliable session; any other gets plain TCP carrying exactly
// the client's bytes. A host name is resolved again at each reconnection, so
// a server that moves is found. --map sends a destination elsewhere (the
// rock serve in front of a service, on another port). `rock run` embeds the
// same proxy for programs that are not Node (run.ts).

import { createServer as netCreateServer, type Server, type Socket } from 'node:net';
import { connect as rocksConnect, type ReliableSocket } from '../index.js';
import type { SessionOptions } from '../protocol/config.js';
import type { CommonOptions, Endpoint } from './args.js';
import { bridge } from './bridge.js';
import { Monitor } from './monitor.js';
import { listenOrExit, show } from './relay.js';
import { type Credentials, REPLY, reply, replyFor, Socks5Handshake } from './socks5.js';

/** A client must finish its SOCKS handshake within this. */
const HANDSHAKE_TIMEOUT = 10_000;

export interface SocksOptions {
  /** Destination (lower-case host:port) to where to dial instead. */
  maps: Map<string, Endpoint>;
  credentials?: Credentials;
}

/** The part of a pino logger the proxy uses. */
export interface SocksLog {
  debug(fields: object, message: string): void;
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
}

export const mapKey = (host: string, port: number): string => `${host.toLowerCase()}:${port}`;

/** A SOCKS5 proxy server (not yet listening); `open` holds every socket it carries, to close at shutdown. */
export function createSocksServer(
  session: SessionOptions,
  options: SocksOptions,
  log: SocksLog,
  onConnected?: (upstream: ReliableSocket, destination: string) => void,
): { server: Server; open: Set<Socket | ReliableSocket> } {
  const open = new Set<Socket | ReliableSocket>();
  const accept = (client: Socket): void => {
    const peer = `${client.remoteAddress}:${client.remotePort}`;
    open.add(client);
    client.once('close', () => open.delete(client));
    client.on('error', (err) => log.debug({ peer, err: err.message }, 'SOCKS client error'));
    const handshake = new Socks5Handshake(options.credentials);
    const timer = setTimeout(() => {
      log.debug({ peer }, 'SOCKS handshake timed out');
      client.destroy();
    }, HANDSHAKE_TIMEOUT);
    client.once('close', () => clearTimeout(timer));
    const onData = (chunk: Buffer): void => {
      const step = handshake.push(chunk);
      if (step.send) client.write(step.send);
      if (step.type === 'more') return;
      client.removeListener('data', onData);
      clearTimeout(timer);
      if (step.type === 'refuse') {
        log.info({ peer, reason: step.reason }, 'SOCKS request refused');
        if (step.send) client.end();
        else client.destroy();
        return;
      }
      client.pause();
      const { host, port, early } = step.request;
      const target = options.maps.get(mapKey(host, port)) ?? { host, port };
      const destination = show({ host, port });
      const upstream = rocksConnect({ ...session, host: target.host, port: target.port, allowHalfOpen: true });
      open.add(upstream);
      upstream.once('close', () => open.delete(upstream));
      const failed = (err: NodeJS.ErrnoException): void => {
        log.info({ peer, destination, err: err.code ?? err.message }, 'destination unreachable');
        if (!client.destroyed) client.end(reply(replyFor(err)));
      };
      upstream.once('error', failed);
      upstream.once('connect', () => {
        upstream.removeListener('error', failed);
        if (client.destroyed) {
          upstream.destroy();
          return;
        }
        const local = upstream.localAddress === undefined ? undefined : { address: upstream.localAddress, port: upstream.localPort ?? 0 };
        client.write(reply(REPLY.SUCCEEDED, local));
        if (early.length > 0) upstream.write(early);
        onConnected?.(upstream, destination);
        log.debug({ peer, destination, reliable: upstream.reliable }, 'connected');
        upstream.on('error', (err) => log.warn({ peer, destination, err: err.message }, 'connection failed'));
        bridge(client, upstream);
      });
    };
    client.on('data', onData);
  };
  return { server: netCreateServer({ allowHalfOpen: true }, accept), open };
}

/** Runs the proxy until `stop` resolves (a signal); resolves once everything is closed. */
export async function socks(listen: Endpoint, common: CommonOptions, stop: Promise<string>, options: SocksOptions): Promise<void> {
  const monitor = new Monitor(common);
  const log = monitor.log;
  const { server, open } = createSocksServer(common.session, options, log, (upstream, destination) => monitor.track(upstream, destination));
  await listenOrExit(server, listen);
  await monitor.start();
  const maps = [...options.maps].map(([from, to]) => `${from}=${show(to)}`);
  log.info({ listen: show(listen), maps, auth: options.credentials ? 'username/password' : 'none' }, 'SOCKS5 proxy over rocks');

  const signal = await stop;
  log.info({ signal, open: open.size }, 'shutting down');
  server.close();
  for (const s of open) s.destroy();
  await monitor.close();
}
