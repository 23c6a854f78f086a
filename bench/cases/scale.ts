// Scale: N rocks connections (10,000; 1,000 in quick mode) from one client
// process to one server process, through FaultProxy instances in processes
// of their own (one per 2,500 connections). Per round, with fresh processes:
//
//   set-up      all N connected, opened 500 at a time;
//   idle CPU    process.cpuUsage() of the server and of the client over an
//               idle window (only heartbeats flow), as % of one core;
//   outage      the proxies black-hole every connection at once; each
//               connection writes 1 KiB (its own pattern) into the dead path;
//               once all N emitted 'suspend' the path heals, and we time the
//               heal to the last 'reconnect' and to the last echoed byte, then
//               check that every connection got back exactly its 1 KiB.
//
// A black-holed FaultProxy keeps old connections dead for good and accepts
// new ones only after heal(): every session resumes over a new connection.

import { readFileSync } from 'node:fs';
import { KERNEL_WATCH_DELAY_MS } from '../../src/node/kernel-liveness.js';
import { sleep } from '../../test/support/helpers.js';
import { Peer } from '../core/process.js';
import type { BenchCase, Context, Measure } from '../core/types.js';

type Cpu = { type: 'cpu'; user: number; system: number; ms: number; suspended?: number };

const PAYLOAD = 1024;
/**
 * Connections per proxy process: a FaultProxy holds about five descriptors
 * per connection across an outage (the dead pair, the attempts it swallowed,
 * the new pair), and the open-file limit may be as low as 20,000 (a
 * container's hard limit, which Peer falls back to).
 */
const PER_PROXY = 2500;
const BATCH = 500;
/** Open-file limit asked for the peers (Peer settles for the hard limit if lower). */
const NOFILE = 65_536;
/**
 * Session options. Full mode: the library's defaults (failureTimeout 5000 ms,
 * heartbeatInterval failureTimeout / 5). Quick mode: failureTimeout 2000 ms,
 * for a short outage, with the default heartbeat rate (1000 ms, which is also
 * the most a 2000 ms failureTimeout allows) so the idle CPU means the same.
 */
interface Config {
  options: { failureTimeout?: number; heartbeatInterval?: number; kernelLiveness?: boolean };
  failureTimeout: number;
  heartbeat: number;
  note: string;
}
// kernelLiveness off: a FaultProxy is a TCP-terminating middlebox, so the
// kernels would watch only the hops to it and its black hole would be found
// by the path check (90 s, PROTOCOL.md §5.1). The idle rounds below measure
// the kernel's watch on direct connections.
const FULL: Config = {
  options: { kernelLiveness: false },
  failureTimeout: 5000,
  heartbeat: 1000,
  note: 'library defaults (failureTimeout 5000 ms, heartbeatInterval 1000 ms) but kernelLiveness false',
};
const QUICK: Config = {
  options: { failureTimeout: 2000, heartbeatInterval: 1000, kernelLiveness: false },
  failureTimeout: 2000,
  heartbeat: 1000,
  note: 'quick mode: failureTimeout 2000 ms (default 5000) for a short outage, heartbeatInterval 1000 ms (the default rate), kernelLiveness false',
};

/**
 * Idle CPU with the library's defaults, kernelLiveness included, client
 * straight to server: the kernels watch the connections, and each session
 * sends a heartbeat every pathCheckInterval (30 s) instead of every second.
 */
async function kernelRound(n: number, idleMs: number): Promise<{ serverCpu: number; clientCpu: number; dropped: number; suspended: number }> {
  const peers: Peer[] = [];
  try {
    const server = new Peer('scale-server', ['--options', '{}', '--backlog', '4096'], { nofile: NOFILE });
    peers.push(server);
    const { port } = await server.next<{ type: 'ready'; port: number }>('ready', 30_000);
    const client = new Peer(
      'scale-client',
      ['--ports', String(port), '--count', String(n), '--batch', String(BATCH), '--options', '{}', '--deadline', '60000'],
      { nofile: NOFILE },
    );
    peers.push(client);
    await client.next('ready', 300_000);
    // The kernel watches a link a second after it carries its session (KERNEL_WATCH_DELAY_MS); the PACE
    // exchange and the heartbeats sent before it settle within a second or two after that.
    await sleep(KERNEL_WATCH_DELAY_MS + 3000);
    const droppedBefore = backlogDrops();
    for (const p of peers) p.send({ type: 'cpu', ms: idleMs });
    const [serverUse, clientUse] = await Promise.all(peers.map((p) => p.next<Cpu>('cpu', idleMs + 30_000)));
    return {
      serverCpu: percent(serverUse),
      clientCpu: percent(clientUse),
      dropped: backlogDrops() - droppedBefore,
      suspended: clientUse.suspended ?? 0,
    };
  } finally {
    for (const p of peers.reverse()) await p.stop();
  }
}

/**
 * Packets the kernel dropped because a CPU's receive backlog was full
 * (/proc/net/softnet_stat, second column, summed over CPUs): loopback
 * packets that arrive in a burst larger than net.core.netdev_max_backlog.
 */
function backlogDrops(): number {
  try {
    return readFileSync('/proc/net/softnet_stat', 'utf8')
      .trim()
      .split('\n')
      .reduce((sum, line) => sum + Number.parseInt(line.trim().split(/\s+/)[1], 16), 0);
  } catch {
    return Number.NaN;
  }
}

/** Connection requests the kernel dropped at a listener (TcpExt ListenDrops in /proc/net/netstat: full accept or SYN queue). */
function listenDrops(): number {
  try {
    // Two TcpExt lines: the names, then the values.
    const [names, values] = readFileSync('/proc/net/netstat', 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('TcpExt:'))
      .map((l) => l.split(/\s+/));
    return Number(values[names.indexOf('ListenDrops')]);
  } catch {
    return Number.NaN;
  }
}

const percent = (c: Cpu): number => ((c.user + c.system) / 1000 / c.ms) * 100;

interface Round {
  setup: number;
  serverCpu: number;
  clientCpu: number;
  proxyCpu: number;
  detect: number;
  resume: number;
  echoed: number;
  lost: number;
}

async function round(ctx: Context, n: number, idleMs: number, config: Config, index: number): Promise<Round> {
  const peers: Peer[] = [];
  try {
    const options = JSON.stringify(config.options);
    const server = new Peer('scale-server', ['--options', options, '--backlog', '4096'], { nofile: NOFILE });
    peers.push(server);
    const { port } = await server.next<{ type: 'ready'; port: number }>('ready', 30_000);
    // Each proxy process dials the server from 250 addresses of its own (see scale-proxy.ts), and each round from
    // new ones: the last round's connections from them wait out TIME_WAIT for a minute after it. Only Linux routes
    // all of 127/8 to loopback.
    const source = (i: number): string[] => (process.platform === 'linux' ? ['--source', `127.${10 + index}.${i}`] : []);
    const proxies = Array.from(
      { length: Math.ceil(n / PER_PROXY) },
      (_, i) => new Peer('scale-proxy', ['--port', String(port), '--proxies', '1', ...source(i)], { nofile: NOFILE }),
    );
    peers.push(...proxies);
    const ports = (await Promise.all(proxies.map((p) => p.next<{ type: 'ready'; ports: number[] }>('ready', 30_000)))).flatMap((r) => r.ports);
    const all = <T extends { type: string }>(type: string, ms: number): Promise<T[]> => Promise.all(proxies.map((p) => p.next<T>(type, ms)));
    const client = new Peer(
      'scale-client',
      ['--ports', ports.join(','), '--count', String(n), '--batch', String(BATCH), '--options', options, '--deadline', '60000'],
      { nofile: NOFILE },
    );
    peers.push(client);
    const { setup } = await client.next<{ type: 'ready'; setup: number }>('ready', 300_000);
    ctx.log(`    ${n} connections set up in ${setup.toFixed(0)} ms`);

    // Let the set-up's stragglers (handshakes, first acknowledgements) settle.
    await sleep(config.heartbeat);
    for (const p of peers) p.send({ type: 'cpu', ms: idleMs });
    const cpu = (await Promise.all(peers.map((p) => p.next<Cpu>('cpu', idleMs + 30_000)))).map(percent);
    const serverCpu = cpu[0];
    const clientCpu = cpu[cpu.length - 1];
    const proxyCpu = cpu.slice(1, -1).reduce((a, b) => a + b, 0);
    ctx.log(`    idle ${idleMs} ms: server ${serverCpu.toFixed(2)}%, client ${clientCpu.toFixed(2)}% of a core (proxy ${proxyCpu.toFixed(2)}%)`);

    for (const p of proxies) p.send({ type: 'blackhole' });
    // The outage counts from the last proxy's black hole and to the first proxy's heal (they are ms apart): the suspend time errs short, the resume time long.
    const brokenAt = Math.max(...(await all<{ type: 'blackholed'; at: number }>('blackholed', 10_000)).map((r) => r.at));
    client.send({ type: 'outage', payload: PAYLOAD });
    const suspended = await client.next<{ type: 'suspended'; first: number; last: number; failed: number }>('suspended', 120_000);
    const detect = suspended.last - brokenAt;
    ctx.log(`    all ${n} suspended ${(suspended.first - brokenAt).toFixed(0)}..${detect.toFixed(0)} ms after the black hole`);
    const dropsBefore = [backlogDrops(), listenDrops()];
    for (const p of proxies) p.send({ type: 'heal' });
    const healedAt = Math.min(...(await all<{ type: 'healed'; at: number }>('healed', 10_000)).map((r) => r.at));
    const r = await client.next<{
      type: 'recovered';
      resumed: number;
      lastResume: number;
      resumeAt: number[];
      lastData: number;
      lost: number;
      extra: number;
      corrupt: number;
      failed: number;
      timedOut: boolean;
      attempts: number;
    }>('recovered', 120_000);
    const resume = r.lastResume - healedAt;
    const echoed = r.lastData - healedAt;
    const [backlog, listen] = [backlogDrops() - dropsBefore[0], listenDrops() - dropsBefore[1]];
    ctx.log(
      `    heal: ${r.resumed}/${n} resumed, the last after ${resume.toFixed(0)} ms ` +
        `(25/50/75/90/99% after ${r.resumeAt.map((t) => (t - healedAt).toFixed(0)).join('/')} ms), last echoed byte after ${echoed.toFixed(0)} ms; ` +
        `lost ${r.lost} B, extra ${r.extra} B, corrupt ${r.corrupt}, failed ${r.failed}; ${r.attempts} reconnect attempts; ` +
        `the kernel dropped ${backlog} packets at a full receive backlog and ${listen} at a full accept queue`,
    );
    if (r.timedOut || r.failed > 0 || r.resumed < n || r.lost > 0 || r.extra > 0 || r.corrupt > 0) {
      throw new Error(
        `after the outage ${r.resumed}/${n} connections resumed, ${r.failed} failed; ` +
          `${r.lost} bytes lost, ${r.extra} extra, ${r.corrupt} connections received wrong bytes${r.timedOut ? ' (gave up 60 s after the suspend)' : ''}`,
      );
    }
    return { setup, serverCpu, clientCpu, proxyCpu, detect, resume, echoed, lost: r.lost };
  } finally {
    for (const p of peers.reverse()) await p.stop();
  }
}

/**
 * The floor: the same number of plain node:net connections, each beating one
 * byte each way at rocks' heartbeat rate, server and client CPU over the
 * same idle window. No proxies: their CPU is not counted for rocks either.
 */
async function floorRound(n: number, idleMs: number, config: Config): Promise<{ serverCpu: number; clientCpu: number }> {
  const peers: Peer[] = [];
  try {
    const beat = ['--beat', String(config.heartbeat)];
    const server = new Peer('scale-beat', ['--role', 'server', ...beat], { nofile: NOFILE });
    peers.push(server);
    const { port } = await server.next<{ type: 'ready'; port: number }>('ready', 30_000);
    const client = new Peer('scale-beat', ['--role', 'client', '--port', String(port), '--count', String(n), '--batch', String(BATCH), ...beat], {
      nofile: NOFILE,
    });
    peers.push(client);
    await client.next('ready', 120_000);
    await sleep(config.heartbeat * 2);
    for (const p of peers) p.send({ type: 'cpu', ms: idleMs });
    const [serverCpu, clientCpu] = (await Promise.all(peers.map((p) => p.next<Cpu>('cpu', idleMs + 30_000)))).map(percent);
    return { serverCpu, clientCpu };
  } finally {
    for (const p of peers.reverse()) await p.stop();
  }
}

export const scale: BenchCase = {
  id: 'scale',
  title: 'Scale: concurrent reliable connections to one server process',
  async run(ctx) {
    const n = ctx.quick ? 1000 : 10_000;
    const idleMs = ctx.quick ? 3000 : 10_000;
    const config = ctx.quick ? QUICK : FULL;
    // A round takes about 45 s with 10,000 connections (on 2 cores), about 10 s in quick mode: fewer rounds keep the case within ~3 minutes (~15 s quick).
    const rounds = ctx.quick ? 1 : Math.min(ctx.repeats, 3);
    const results: Round[] = [];
    for (let i = 0; i < rounds; i++) {
      ctx.log(`  scale: round ${i + 1}/${rounds}, ${n} connections`);
      results.push(await round(ctx, n, idleMs, config, i));
    }
    const floors: { serverCpu: number; clientCpu: number }[] = [];
    for (let i = 0; i < rounds; i++) {
      const f = await floorRound(n, idleMs, config);
      ctx.log(
        `  scale: floor round ${i + 1}/${rounds}: ${n} plain connections beating 1 B each way every ${config.heartbeat} ms: server ${f.serverCpu.toFixed(2)}%, client ${f.clientCpu.toFixed(2)}% of a core`,
      );
      floors.push(f);
    }
    const kernel: { serverCpu: number; clientCpu: number }[] = [];
    for (let i = 0; i < rounds; i++) {
      const k = await kernelRound(n, idleMs);
      ctx.log(
        `  scale: kernel round ${i + 1}/${rounds}: ${n} idle sessions, kernel liveness: server ${k.serverCpu.toFixed(2)}%, client ${k.clientCpu.toFixed(2)}% of a core; ${k.dropped} packets dropped at a full receive backlog, ${k.suspended} session(s) suspended`,
      );
      kernel.push(k);
    }
    const fewer = rounds < ctx.repeats ? `; ${rounds} round(s) of fresh processes, not ${ctx.repeats}: each is expensive` : '';
    const defaults = config.note;
    const path = `client, server and ${Math.ceil(n / PER_PROXY)} FaultProxy process(es) on loopback`;
    const m = (metric: string, unit: string, pick: (r: Round) => number, note: string): Measure => ({
      case: 'scale',
      metric,
      variant: 'rocks',
      unit,
      better: 'lower',
      samples: results.map(pick),
      note: `${note}${fewer}`,
    });
    const proxyCpu = results.map((r) => r.proxyCpu.toFixed(1)).join(', ');
    type Cpus = { serverCpu: number; clientCpu: number };
    /** Idle CPU of one side over rounds that measured no outage. */
    const idleCpu = (variant: string, rounds: Cpus[], side: 'server' | 'client', note: string): Measure => ({
      case: 'scale',
      metric: `heartbeat CPU, ${n} idle, ${side} process`,
      variant,
      unit: '% of a core',
      better: 'lower',
      samples: rounds.map((r) => (side === 'server' ? r.serverCpu : r.clientCpu)),
      note: `${note}${fewer}`,
    });
    const floorNote = `the floor: ${n} plain node:net connections, each writing a 1-byte heartbeat every ${config.heartbeat} ms both ways (what any per-connection liveness check at rocks' rate costs)`;
    const kernelNote = `library defaults (kernelLiveness on): client straight to server on loopback, kernel keepalive watches each connection and a heartbeat crosses every 30 s; process.cpuUsage() over ${idleMs / 1000} s idle; target < 2% for 10,000`;
    return [
      idleCpu('raw', floors, 'server', floorNote),
      idleCpu('raw', floors, 'client', floorNote),
      idleCpu('rocks (kernel liveness)', kernel, 'server', kernelNote),
      idleCpu('rocks (kernel liveness)', kernel, 'client', kernelNote),
      m(
        `set-up of ${n} connections`,
        'ms',
        (r) => r.setup,
        `${BATCH} at a time; EDP detection (probes until the verdict is cached); ${path}; ${defaults}`,
      ),
      m(
        `heartbeat CPU, ${n} idle, server process`,
        '% of a core',
        (r) => r.serverCpu,
        `process.cpuUsage() over ${idleMs / 1000} s idle; target < 5% for 10,000; ${defaults}`,
      ),
      m(
        `heartbeat CPU, ${n} idle, client process`,
        '% of a core',
        (r) => r.clientCpu,
        `process.cpuUsage() over ${idleMs / 1000} s idle; the proxy process(es) forwarding the heartbeats used ${proxyCpu}% in all (not counted); ${defaults}`,
      ),
      m(`black hole to all ${n} suspended`, 'ms', (r) => r.detect, `one outage of every connection at once; ${defaults}`),
      m(
        `heal to all ${n} resumed`,
        'ms',
        (r) => r.resume,
        `each session resumes over a new connection (sessions still in a dial into the black hole wait out its handshake timeout, ${config.failureTimeout} ms); target: all within 10 s; ${defaults}`,
      ),
      m(
        `heal to all ${n} outage writes echoed`,
        'ms',
        (r) => r.echoed,
        `each connection wrote ${PAYLOAD} B into the dead path; the echo server returned them after the resume`,
      ),
      m(`bytes lost in the outage (of ${n} x ${PAYLOAD} B)`, 'B', (r) => r.lost, 'counted and compared per connection; the case fails unless 0'),
    ];
  },
};
