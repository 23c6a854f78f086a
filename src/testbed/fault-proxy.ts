// An in-process TCP proxy that breaks connections on command: reset them
// (RST both ways), black-hole them (forward nothing, close nothing) and delay
// them, and flip bits in transit (an on-path attacker altering bytes, seeded
// so a run can be repeated). Tests and the demo put it between a rocks client
// and server on loopback.
// Given several targets it is also a non-sticky L4 balancer: each new
// connection goes to the next target in turn, whoever the client is.

import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';

interface Pair {
  downstream: Socket;
  upstream: Socket;
  /** Black-holed pairs never forward again, even after the black hole lifts. */
  dead: boolean;
}

/**
 * Resets a connection (RST), or closes it where Node cannot reset it. While
 * an end() is still shutting the socket down, libuv refuses the reset
 * (EINVAL) and Node 20 marks the handle closing all the same: it is never
 * closed, and the process spins at exit forever (found behind the hangs of
 * relay.test.js and cluster.test.js). That socket has sent its FIN already.
 */
export function resetSocket(socket: Socket): void {
  if (socket.writableEnded && !socket.writableFinished) socket.destroy();
  else socket.resetAndDestroy();
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
  /**
   * Local address new upstream connections come from: set it to show the
   * server a client that moved. Several: each new connection takes the next
   * in turn (many connections bound to one address make bind() slow once
   * its ports are held in TIME_WAIT; see bench/peers/scale-proxy.ts).
   */
  upstreamAddress: string | readonly string[] | undefined;
  connections = 0;
  private readonly targets: { port: number; host: string }[];
  private pick: 'round-robin' | 'random' = 'round-robin';
  private tampering: { chance: number; next: () => number } | undefined;
  /** Bits flipped so far (one per tampered chunk). */
  tamperings = 0;

  constructor(targetPort: number, targetHost = '127.0.0.1') {
    this.targets = [{ port: targetPort, host: targetHost }];
    // Half-open both ways, like a NAT: a client's half-close (an EDP probe)
    // reaches the server, and the server's answer still comes back.
    this.server = createServer({ allowHalfOpen: true }, (s) => this.accept(s));
  }

  /** Listens on `host`, on `port` if given (a port in use rejects), else on a free one; resolves with the port. */
  async listen(host = '127.0.0.1', port = 0): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    return (this.server.address() as AddressInfo).port;
  }

  /** Resets every connection: both ends get ECONNRESET. */
  reset(): void {
    for (const p of this.pairs) {
      resetSocket(p.downstream);
      resetSocket(p.upstream);
    }
    this.pairs.clear();
  }

  /** Drops everything from now on, in both directions, on old connections; new ones reach nothing. Closes nothing. */
  blackhole(): void {
    this.blackholed = true;
    for (const p of this.pairs) p.dead = true;
  }

  /** Lets new connections through again; black-holed ones stay dead (their bytes were lost). */
  heal(): void {
    this.blackholed = false;
  }

  /**
   * Spreads new connections over `targets` from now on, a balancer with no
   * stickiness: in turn, or each to a target drawn at random (then clients
   * that reconnect in the order they first connected do not land where they
   * were by chance).
   */
  spread(targets: { port: number; host?: string }[], how: 'round-robin' | 'random' = 'round-robin'): void {
    this.pick = how;
    this.targets.length = 0;
    for (const t of targets) this.targets.push({ port: t.port, host: t.host ?? '127.0.0.1' });
  }

  /**
   * Flips one bit in a forwarded chunk with probability `chance` per chunk
   * (0 stops it), at a position drawn from a generator seeded with `seed`
   * (the same seed draws the same choices; where chunks split still depends
   * on timing).
   */
  tamper(chance: number, seed = 1): void {
    this.tampering = chance > 0 ? { chance, next: seededRandom(seed) } : undefined;
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
    this.sockets.add(downstream);
    downstream.once('close', () => this.sockets.delete(downstream));
    downstream.on('error', () => {});
    if (this.blackholed) {
      // As on a real black-holed path, the server never hears of it: the
      // client's connection (accepted here by our kernel) leads nowhere.
      return;
    }
    const n = this.targets.length;
    const target = this.targets[this.pick === 'random' ? Math.floor(Math.random() * n) : (connection - 1) % n];
    const from = this.upstreamAddress;
    const localAddress = typeof from === 'object' ? from[(connection - 1) % from.length] : from;
    const upstream = connect({ port: target.port, host: target.host, localAddress, allowHalfOpen: true });
    const pair: Pair = { downstream, upstream, dead: false };
    this.pairs.add(pair);
    this.sockets.add(upstream);
    upstream.once('close', () => this.sockets.delete(upstream));
    const forward = (from: Socket, to: Socket, direction: 'up' | 'down'): void => {
      // A delayed chunk still on its way; the end must wait behind it.
      let delayed: Promise<void> = Promise.resolve();
      from.on('data', (chunk: Buffer) => {
        if (pair.dead) return;
        const t = this.tampering;
        if (t !== undefined && t.next() < t.chance) {
          const at = Math.floor(t.next() * chunk.length);
          chunk = Buffer.from(chunk); // a copy: the sender's buffer is not ours to change
          chunk[at] ^= 1 << Math.floor(t.next() * 8);
          this.tamperings++;
        }
        this.onChunk?.(direction, chunk, connection);
        if (this.delay > 0) {
          from.pause();
          const ms = this.delay;
          delayed = new Promise((resolve) =>
            setTimeout(() => {
              if (!pair.dead && !to.destroyed) to.write(chunk);
              from.resume();
              resolve();
            }, ms),
          );
        } else if (!to.write(chunk)) {
          from.pause();
          to.once('drain', () => from.resume());
        }
      });
      // A black-holed connection propagates no close either.
      from.on('end', () => {
        void delayed.then(() => {
          if (!pair.dead) to.end();
        });
      });
      // A failed side fails the other; a clean close already passed its end on.
      from.on('close', (hadError) => {
        if (!pair.dead && hadError) to.destroy();
        this.pairs.delete(pair);
      });
      from.on('error', () => {});
    };
    forward(downstream, upstream, 'up');
    forward(upstream, downstream, 'down');
  }
}

/** mulberry32: a small seeded generator of numbers in [0, 1), enough to repeat a test's choices. */
function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
