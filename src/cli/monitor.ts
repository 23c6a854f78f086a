// What `rock serve`/`forward`/`stdio` tell their user: log lines (pino; JSON
// with --json, readable text otherwise), Prometheus metrics (prom-client)
// with --metrics, and on a terminal a live status line per connection.

import cluster from 'node:cluster';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { once } from 'node:events';
import { clearScreenDown, moveCursor } from 'node:readline';
import { pino, type Logger } from 'pino';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { MigrateInfo, ReliableSocket, ReconnectInfo, SuspendInfo } from '../node/socket.js';
import type { CommonOptions } from './args.js';

interface Tracked {
  id: number;
  peer: string;
  socket: ReliableSocket;
  outages: number;
  suspendedSince: number | undefined;
}

const MiB = (n: number): string => (n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1024 / 1024).toFixed(1)} MiB`);

/** A pino line as text: "12:00:01.250 INFO  message key=value". */
export function textLines(line: string): string {
  const { level, time, msg, pid: _pid, hostname: _host, ...rest } = JSON.parse(line) as Record<string, unknown>;
  const fields = Object.entries(rest).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`);
  const when = new Date(time as number).toISOString().slice(11, 23);
  return `${when} ${String(pino.levels.labels[level as number] ?? level)
    .toUpperCase()
    .padEnd(5)} ${String(msg)}${fields.length ? ` ${fields.join(' ')}` : ''}\n`;
}

export class Monitor {
  readonly log: Logger;
  private readonly tracked = new Map<number, Tracked>();
  private nextId = 1;
  private readonly registry = new Registry();
  private readonly metrics;
  private metricsServer: HttpServer | undefined;
  /** Lines of the status block now on the terminal (0 when none is shown). */
  private statusLines = 0;
  private statusTimer: NodeJS.Timeout | undefined;
  private readonly live: boolean;

  constructor(private readonly common: CommonOptions) {
    // Workers of rock serve --workers share the terminal: only the primary may redraw it.
    this.live = !common.json && process.stderr.isTTY === true && !cluster.isWorker;
    const destination = {
      write: (line: string) => {
        this.clearStatus();
        process.stderr.write(common.json ? line : textLines(line));
        this.drawStatus();
      },
    };
    this.log = pino({ level: common.logLevel, base: cluster.isWorker ? { worker: process.pid } : undefined }, destination);
    const registers = [this.registry];
    this.metrics = {
      connections: new Gauge({
        name: 'rocks_connections',
        help: 'Connections now open, by state (established, suspended, plain)',
        labelNames: ['state'] as const,
        registers,
        collect: () => this.collectStates(),
      }),
      accepted: new Counter({ name: 'rocks_connections_total', help: 'Connections carried, by mode', labelNames: ['mode'] as const, registers }),
      resumes: new Counter({ name: 'rocks_resumes_total', help: 'Suspended connections resumed', registers }),
      outages: new Histogram({
        name: 'rocks_outage_seconds',
        help: 'How long connections stayed suspended before resuming',
        buckets: [0.1, 0.5, 1, 5, 10, 30, 60, 300, 3600],
        registers,
      }),
      replayed: new Counter({
        name: 'rocks_replayed_bytes_total',
        help: 'Bytes sent again after resumes, by direction',
        labelNames: ['direction'] as const,
        registers,
      }),
    };
  }

  /** Starts the metrics endpoint if --metrics was given. */
  async start(): Promise<void> {
    const at = this.common.metrics;
    if (at === undefined) return;
    const server = createHttpServer((req, res) => {
      if (req.url !== '/metrics') {
        res.writeHead(404).end('see /metrics\n');
        return;
      }
      this.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(text),
        (err: Error) => res.writeHead(500).end(err.message),
      );
    });
    server.listen(at.port, at.host);
    await once(server, 'listening');
    server.unref();
    this.metricsServer = server;
    this.log.info({ url: `http://${at.host.includes(':') ? `[${at.host}]` : at.host}:${at.port}/metrics` }, 'metrics');
  }

  /** Watches one carried connection until it closes. */
  track(socket: ReliableSocket, peer: string): number {
    const t: Tracked = { id: this.nextId++, peer, socket, outages: 0, suspendedSince: undefined };
    this.tracked.set(t.id, t);
    this.metrics.accepted.inc({ mode: socket.reliable ? 'reliable' : 'plain' });
    const log = this.log.child({ conn: t.id, peer });
    log.info({ mode: socket.reliable ? 'reliable' : 'plain' }, 'connection');
    socket.on('suspend', (info: SuspendInfo) => {
      t.suspendedSince = Date.now();
      log.warn({ reason: info.reason }, 'suspended');
      this.drawStatus();
    });
    socket.on('migrate', (info: MigrateInfo) => {
      log.info({ reason: info.reason, local: socket.localAddress, remote: socket.remoteAddress }, 'moved to a new connection');
    });
    socket.on('reconnect', (info: ReconnectInfo) => {
      t.suspendedSince = undefined;
      t.outages++;
      this.metrics.resumes.inc();
      this.metrics.outages.observe(info.outage / 1000);
      this.metrics.replayed.inc({ direction: 'out' }, info.replayedOut);
      this.metrics.replayed.inc({ direction: 'in' }, info.replayedIn);
      log.info(
        { outageMs: Math.round(info.outage), replayedOut: info.replayedOut, replayedIn: info.replayedIn, relayed: info.relayed || undefined },
        'resumed',
      );
    });
    socket.once('close', () => {
      this.tracked.delete(t.id);
      log.info({ bytesIn: socket.bytesRead, bytesOut: socket.bytesWritten, outages: t.outages }, 'closed');
    });
    if (this.live && this.statusTimer === undefined) {
      this.statusTimer = setInterval(() => {
        this.clearStatus();
        this.drawStatus();
      }, 1000);
      this.statusTimer.unref();
    }
    return t.id;
  }

  private collectStates(): void {
    const counts = { established: 0, suspended: 0, plain: 0 };
    for (const t of this.tracked.values()) {
      if (!t.socket.reliable) counts.plain++;
      else if (t.socket.suspended) counts.suspended++;
      else counts.established++;
    }
    for (const [state, n] of Object.entries(counts)) this.metrics.connections.set({ state }, n);
  }

  private statusText(): string[] {
    return [...this.tracked.values()].slice(0, 20).map((t) => {
      const state = !t.socket.reliable
        ? 'plain'
        : t.suspendedSince !== undefined
          ? `SUSPENDED ${Math.round((Date.now() - t.suspendedSince) / 1000)}s`
          : 'up';
      return `  #${t.id} ${t.peer}  ${state}  in ${MiB(t.socket.bytesRead)}  out ${MiB(t.socket.bytesWritten)}  outages ${t.outages}`;
    });
  }

  private clearStatus(): void {
    if (!this.live || this.statusLines === 0) return;
    moveCursor(process.stderr, 0, -this.statusLines);
    clearScreenDown(process.stderr);
    this.statusLines = 0;
  }

  private drawStatus(): void {
    if (!this.live || this.statusLines > 0) return;
    const lines = this.statusText();
    if (lines.length === 0) return;
    process.stderr.write(`${lines.join('\n')}\n`);
    this.statusLines = lines.length;
  }

  async close(): Promise<void> {
    if (this.statusTimer) clearInterval(this.statusTimer);
    this.clearStatus();
    if (this.metricsServer) {
      this.metricsServer.closeAllConnections();
      await new Promise((r) => this.metricsServer!.close(r));
    }
  }
}
