// A rocks client that streams random data to an echo server at a steady
// pace and checks, by SHA-256, that what comes back is what it sent: the
// cluster tests run dozens of them at once through a fault proxy.

import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { connect, type ReliableConnectOptions, type ReliableSocket } from '../../src/index.js';
import { sleep } from './helpers.js';

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
