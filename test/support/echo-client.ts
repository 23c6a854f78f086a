// A rocks client that streams random data to an echo server at a steady
// pace and checks, by SHA-256, that what comes back is what it sent: the
// cluster tests run dozens of them at once through a fault proxy.

import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { connect, type ReliableConnectOptions, type ReliableSocket } from '../../src/index.js';
import type { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { sleep, until } from './helpers.js';

export class EchoClient {
  readonly socket: ReliableSocket;
  private readonly sentHash = createHash('sha256');
  private readonly receivedHash = createHash('sha256');
  sent = 0;
  received = 0;
  reconnects = 0;
  /** The error that ended the session, if one did, and when (performance.now()). */
  error: (Error & { code?: string }) | undefined;
  failedAt: number | undefined;
  private stopped = false;
  /** Resolves once the echo ended (or the session failed). */
  readonly done: Promise<void>;

  constructor(port: number, options: Partial<ReliableConnectOptions>, chunk = 8 * 1024, pause = 20) {
    const socket = connect({ ...options, port, host: '127.0.0.1', enhanced: true } as ReliableConnectOptions);
    this.socket = socket;
    this.socket.on('reconnect', () => this.reconnects++);
    this.socket.on('data', (d: Buffer) => {
      this.receivedHash.update(d);
      this.received += d.length;
    });
    const ended = new Promise<void>((resolve) => {
      this.socket.once('end', resolve);
      this.socket.once('close', resolve);
    });
    this.socket.on('error', (err) => {
      this.error ??= err;
      this.failedAt ??= performance.now();
    });
    const writing = (async () => {
      while (!this.stopped && this.error === undefined) {
        const data = randomBytes(chunk);
        this.sentHash.update(data);
        this.sent += data.length;
        if (!socket.write(data)) await Promise.race([once(socket, 'drain'), ended]);
        await sleep(pause);
      }
      if (this.error === undefined) socket.end();
    })();
    this.done = Promise.all([writing, ended]).then(() => {});
  }

  /** The session id (hex) and the worker byte in it. */
  get sessionId(): string | undefined {
    return this.socket.sessionId;
  }

  get workerByte(): number | undefined {
    return this.sessionId === undefined ? undefined : Buffer.from(this.sessionId, 'hex')[5];
  }

  /** Ends the stream; `done` resolves once the echo of everything has come back. */
  stop(): Promise<void> {
    this.stopped = true;
    return this.done;
  }

  /** True when everything sent came back, byte for byte. */
  get intact(): boolean {
    return this.error === undefined && this.received === this.sent && this.sentHash.copy().digest('hex') === this.receivedHash.copy().digest('hex');
  }

  destroy(): void {
    this.stopped = true;
    this.socket.destroy();
  }
}

/** Resolves once every client (but those whose session failed) has had more echoed back. */
export async function allFlowing(clients: EchoClient[]): Promise<void> {
  const before = clients.map((c) => c.received);
  await until(
    () => clients.every((c, i) => c.error !== undefined || c.received > before[i]),
    20_000,
    () => `every client to get an echo: ${clients.filter((c, i) => c.received <= before[i]).length} waiting`,
  );
}

/** Resolves once every client (but those whose session failed) has resumed `count` times. */
export async function allResumed(clients: EchoClient[], count: number): Promise<void> {
  await until(
    () => clients.every((c) => c.error !== undefined || c.reconnects >= count),
    20_000,
    () => `every client to resume ${count} times: ${clients.map((c) => c.reconnects).join(' ')}`,
  );
}

/**
 * Resets every link through `proxy` three times, then black-holes it for a
 * failure timeout and heals it; after each fault, waits until every client
 * has resumed and data flows again. Every client resumes 4 times.
 */
export async function resetsAndBlackHole(proxy: FaultProxy, clients: EchoClient[], failureTimeout: number): Promise<void> {
  await allFlowing(clients);
  for (let round = 1; round <= 3; round++) {
    proxy.reset();
    await allResumed(clients, round);
    await allFlowing(clients);
  }
  proxy.blackhole();
  await sleep(failureTimeout + 300); // silence: every client declares its link failed
  proxy.heal();
  await allResumed(clients, 4);
  await allFlowing(clients);
}

/** What went wrong with each client whose echo is not intact. */
export function lostSessions(clients: EchoClient[]): string[] {
  return clients
    .filter((c) => !c.intact)
    .map((c) => `${c.sessionId}: ${c.error?.code ?? ''} ${c.error?.message ?? `${c.received} of ${c.sent} bytes back`}`);
}
