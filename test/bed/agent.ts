// The program the network tests run on a bed's hosts: a rocks (or plain TCP)
// server or client whose connections carry a paced stream of random bytes
// both ways, hashed on each side. It reports on stdout, one JSON object per
// line with a wall-clock time `t` (the test compares it with when it broke
// the network): connected (a client's with its session id and EDP verdict), suspend, resume, migrate, error, and at each connection's
// close a result with the bytes and SHA-256 of each direction.
//
//   node agent.js server --listen HOST:PORT [--rate B/s] [--tick MS] [--options JSON]
//   node agent.js client --to HOST:PORT [--count N] [--rate B/s] [--tick MS] [--plain] [--options JSON]
//
// A client's connections send until it reads `finish` on stdin, then end;
// the server sends until the client's end arrives, then ends too. The client
// prints {"type":"done"} and exits once all its connections are closed.

import { createHash, randomBytes } from 'node:crypto';
import { connect as netConnect, type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { connect, createServer, type DetectInfo, type ReconnectInfo, type ReliableSocket } from '../../src/index.js';

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    listen: { type: 'string' },
    to: { type: 'string' },
    count: { type: 'string', default: '1' },
    rate: { type: 'string', default: '262144' },
    tick: { type: 'string', default: '50' },
    plain: { type: 'boolean', default: false },
    options: { type: 'string', default: '{}' },
  },
});

const report = (event: Record<string, unknown>): void => {
  process.stdout.write(`${JSON.stringify({ t: Date.now(), ...event })}\n`);
};

const rate = Number(values.rate);
const sessionOptions = JSON.parse(values.options!) as Record<string, unknown>;
/** Each connection writes once per tick (ms): rate × tick / 1000 bytes. */
const TICK = Number(values.tick);
// Slices of one random pool at a per-connection offset: distinct streams without a randomBytes call per write.
const pool = randomBytes(4 * 1024 * 1024);

function endpoint(text: string | undefined): { host: string; port: number } {
  const m = /^(.+):(\d+)$/.exec(text ?? '');
  if (!m) throw new Error(`expected HOST:PORT, got ${text}`);
  return { host: m[1], port: Number(m[2]) };
}

type Conn = Socket | ReliableSocket;

/** Writes `rate` bytes a second to `socket` until stop(), waiting out backpressure; hashes them. */
class PacedWriter {
  private readonly hash = createHash('sha256');
  private at: number;
  sent = 0;
  private waiting = false;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly socket: Conn,
    id: number,
  ) {
    this.at = (id * 104_729) % pool.length;
    this.timer = setInterval(() => this.tick(), TICK);
    socket.on('drain', () => (this.waiting = false));
  }

  private tick(): void {
    if (this.waiting || this.socket.destroyed || this.socket.writableEnded) return;
    let n = Math.max(1, Math.round((rate * TICK) / 1000));
    while (n > 0) {
      const size = Math.min(n, pool.length - this.at);
      const chunk = pool.subarray(this.at, this.at + size);
      this.at = (this.at + size) % pool.length;
      n -= size;
      this.hash.update(chunk);
      this.sent += size;
      if (!this.socket.write(chunk)) this.waiting = true;
    }
  }

  /** Stops writing and ends the socket's sending side. */
  stop(): void {
    clearInterval(this.timer);
    if (!this.socket.destroyed) this.socket.end();
  }

  digest(): string {
    return this.hash.digest('hex');
  }
}

/** Hashes what arrives; reports suspensions, resumes, errors and, at close, the result. */
function watch(socket: Conn, id: number, side: 'client' | 'server', writer: PacedWriter, onClose?: () => void): void {
  const hash = createHash('sha256');
  let received = 0;
  let error: string | undefined;
  socket.on('data', (d: Buffer) => {
    hash.update(d);
    received += d.length;
  });
  socket.on('suspend', (info: { reason: string }) => report({ type: 'suspend', id, side, reason: info.reason }));
  socket.on('migrate', (info: { reason: string }) =>
    report({ type: 'migrate', id, side, reason: info.reason, remote: socket.remoteAddress, local: socket.localAddress }),
  );
  socket.on('reconnect', (info: ReconnectInfo) => {
    report({
      type: 'resume',
      id,
      side,
      outage: Math.round(info.outage),
      replayedOut: info.replayedOut,
      replayedIn: info.replayedIn,
      remote: socket.remoteAddress,
    });
  });
  socket.on('error', (err: NodeJS.ErrnoException) => {
    error = err.code ?? err.message;
    report({ type: 'error', id, side, code: error, message: err.message });
  });
  socket.on('close', () => {
    writer.stop();
    report({
      type: 'result',
      id,
      side,
      reliable: 'reliable' in socket ? socket.reliable : false,
      received,
      receivedSha: hash.digest('hex'),
      sent: writer.sent,
      sentSha: writer.digest(),
      error,
    });
    onClose?.();
  });
}

function serve(): void {
  const at = endpoint(values.listen);
  let next = 0;
  const server = createServer({ ...sessionOptions, allowHalfOpen: true }, (socket) => {
    const id = ++next;
    const writer = new PacedWriter(socket, 1000 + id);
    watch(socket, id, 'server', writer);
    socket.on('end', () => writer.stop());
    report({ type: 'connected', id, side: 'server', reliable: socket.reliable, remote: socket.remoteAddress });
  });
  server.on('error', (err) => {
    report({ type: 'fatal', message: err.message });
    process.exit(1);
  });
  server.listen(at.port, at.host, () => report({ type: 'listening' }));
  process.on('SIGTERM', () => process.exit(0));
}

function client(): void {
  const to = endpoint(values.to);
  const count = Number(values.count);
  const writers: PacedWriter[] = [];
  let open = count;
  for (let id = 1; id <= count; id++) {
    const socket: Conn = values.plain ? netConnect({ ...to, allowHalfOpen: true }) : connect({ ...sessionOptions, ...to, allowHalfOpen: true });
    const writer = new PacedWriter(socket, id);
    writers.push(writer);
    // EDP's verdict (it comes just before 'connect'): a fresh probe's, or the cache's.
    let verdict: DetectInfo | undefined;
    socket.once('detect', (info: DetectInfo) => (verdict = info));
    socket.once('connect', () =>
      report({
        type: 'connected',
        id,
        side: 'client',
        reliable: 'reliable' in socket ? socket.reliable : false,
        reason: verdict?.reason,
        cached: verdict?.cached,
        // Names the node that holds the session (PROTOCOL.md §3.6): where a balancer put it.
        session: 'sessionId' in socket ? socket.sessionId : undefined,
      }),
    );
    socket.on('end', () => socket.end());
    watch(socket, id, 'client', writer, () => {
      if (--open === 0) {
        report({ type: 'done' });
        process.exit(0);
      }
    });
  }
  createInterface({ input: process.stdin }).on('line', (line) => {
    if (line.trim() === 'finish') for (const w of writers) w.stop();
  });
}

if (positionals[0] === 'server') serve();
else if (positionals[0] === 'client') client();
else {
  process.stderr.write('usage: agent.js server|client ...\n');
  process.exit(2);
}
