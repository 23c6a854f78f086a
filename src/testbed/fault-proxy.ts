// An in-process TCP proxy that breaks connections on command: reset them
// (RST both ways), black-hole them (forward nothing, close nothing) and delay
// them. Tests and the demo put it between a rocks client and server on loopback.

import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';

interface Pair {
  downstream: Socket;
  upstream: Socket;
  /** Black-holed pairs never forward again, even after the black hole lifts. */
  dead: boolean;
}

export class FaultProxy {
  private readonly server: Server;
  private readonly pairs = new Set<Pair>();
  /** Every socket still open, dead pairs' included, so close() can end them all. */
  private readonly sockets = new Set<Socket>();
  private blackholed = false;
  private delay = 0;
  /** Called for every chunk forwarded; `connection` counts from 1. Tests use it to watch the wire. */
  onChunk: ((direction: 'up' | 'down', chunk: Buffer, connection: number) => void) | undefined;
  /** Local address new upstream connections come from: set it to show the server a client that moved. */
  upstreamAddress: string | undefined;
  connections = 0;

  constructor(private readonly targetPort: number, private readonly targetHost = '127.0.0.1') {
    this.server = createServer((s) => this.accept(s));
  }

  async listen(host = '127.0.0.1'): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, host, resolve));
    return (this.server.address() as AddressInfo).port;
  }

  /** Resets every connection: both ends get ECONNRESET. */
  reset(): void {
    for (const p of this.pairs) {
      p.downstream.resetAndDestroy();
      p.upstream.resetAndDestroy();
    }
    this.pairs.clear();
  }

  /** Drops everything from now on, in both directions, on old and new connections; closes nothing. */
  blackhole(): void {
    this.blackholed = true;
    for (const p of this.pairs) p.dead = true;
  }

  /** Lets new connections through again; black-holed ones stay dead (their bytes were lost). */
  heal(): void {
    this.blackholed = false;
  }

  /** Adds `ms` of delay to every chunk forwarded (0 removes it). */
  setDelay(ms: number): void {
    this.delay = ms;
  }

  /** Closes the proxy and every connection through it. */
  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    this.pairs.clear();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(downstream: Socket): void {
    const connection = ++this.connections;
    const upstream = connect({ port: this.targetPort, host: this.targetHost, localAddress: this.upstreamAddress });
    const pair: Pair = { downstream, upstream, dead: this.blackholed };
    this.pairs.add(pair);
    for (const s of [downstream, upstream]) {
      this.sockets.add(s);
      s.once('close', () => this.sockets.delete(s));
    }
    const forward = (from: Socket, to: Socket, direction: 'up' | 'down'): void => {
      from.on('data', (chunk: Buffer) => {
        if (pair.dead) return;
        this.onChunk?.(direction, chunk, connection);
        if (this.delay > 0) {
          from.pause();
          setTimeout(() => {
            if (!pair.dead && !to.destroyed) to.write(chunk);
            from.resume();
          }, this.delay);
        } else if (!to.write(chunk)) {
          from.pause();
          to.once('drain', () => from.resume());
        }
      });
      // A black-holed connection propagates no close either.
      from.on('end', () => {
        if (!pair.dead) to.end();
      });
      from.on('close', () => {
        if (!pair.dead) to.destroy();
        this.pairs.delete(pair);
      });
      from.on('error', () => {});
    };
    forward(downstream, upstream, 'up');
    forward(upstream, downstream, 'down');
  }
}
