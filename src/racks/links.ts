// The rack port in rocks (src/racks/parts.ts CarriageLinks): a rocks server
// that takes carriages, and the rocks connections that ask another host's
// rack port whether a rack daemon runs there (EDP for racks: the probe of
// rocks, within probeTimeout, says so). Real sockets, no root needed, so the
// unit tests run the daemon's carriages over loopback with these too.

import type { AddressInfo } from 'node:net';
import { connect, createServer, type ReliableServer, type ReliableSocket } from '../index.js';
import type { RackLogger, RackTls } from './daemon.js';
import type { CarriageLinks } from './parts.js';

export interface RocksLinkOptions {
  /** The rack port: listened on, and asked on other hosts. */
  port: number;
  failureTimeout: number;
  suspendLimit: number;
  /** How long a dial may take to learn whether a rack daemon answers. */
  probeTimeout: number;
  log: RackLogger;
  /** The address listened on; every address by default. */
  host?: string;
  /** Where the rack port of the host with inner address `address` is reached; by default that address and `port`. */
  peer?: (address: string) => { host: string; port: number };
  /** Carriages over TLS: every link of every carriage a TLS 1.3 connection, both ends authenticated. */
  tls?: RackTls;
}

export class RocksLinks implements CarriageLinks {
  private server: ReliableServer | undefined;

  constructor(private readonly options: RocksLinkOptions) {}

  /** The port listened on (the one the system chose when `port` was 0). */
  get port(): number {
    return (this.server?.address() as AddressInfo | null)?.port ?? this.options.port;
  }

  async listen(onSocket: (socket: ReliableSocket) => void): Promise<void> {
    const o = this.options;
    // quickAck off: the other daemon never waits for our ACK to send more, and carried round trips would pay a system call and a segment each.
    const server = createServer({ failureTimeout: o.failureTimeout, suspendLimit: o.suspendLimit, tls: o.tls?.server, quickAck: false }, onSocket);
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const listening = (): void => {
        server.off('error', reject);
        resolve();
      };
      if (o.host === undefined) server.listen(o.port, listening);
      else server.listen(o.port, o.host, listening);
    });
    server.on('error', (err: Error) => o.log.warn({ err: err.message }, 'rack port error'));
  }

  dial(address: string): ReliableSocket {
    const o = this.options;
    const { host, port } = o.peer ? o.peer(address) : { host: address, port: o.port };
    return connect({
      host,
      port,
      failureTimeout: o.failureTimeout,
      suspendLimit: o.suspendLimit,
      connectTimeout: o.probeTimeout,
      probeTimeout: o.probeTimeout,
      tls: o.tls?.client,
      quickAck: false,
    });
  }

  close(): Promise<void> {
    const server = this.server;
    return new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  }
}
