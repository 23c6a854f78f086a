// Many nodes: a session whose link is relayed by another node of the
// deployment, against the same session carried straight to the node that
// holds it. Node A (127.0.0.2) and node B (127.0.0.3) are rocks servers in
// processes of their own that list each other as peers; the session is
// always A's. bench/peers/relay-client.ts has the client's side.
//
//   throughput  bulk one way and both ways once the session resumed after
//               one cut: over a link straight to A (direct) or to B, which
//               relays it to A (relayed); raw node:net in the same run,
//               direct and through a plain TCP relay process (what relaying
//               costs any connection). The relayed run must reach 0.8x the
//               direct one (the target row).
//   resume      a path cut (reset) again and again: ms from the cut to the
//               client's 'reconnect', when each resume reaches A (direct) or
//               lands on B and is relayed to A (relayed); p50 and p90.

import { createServer } from 'node:net';
import { freePort, until } from '../../test/support/helpers.js';
import { type Message, Peer, runPair } from '../core/process.js';
import { median } from '../core/stats.js';
import type { BenchCase, Context, Measure } from '../core/types.js';
import { MIB, measure } from './common.js';

const A = { host: '127.0.0.2', nodeId: 0xa };
const B = { host: '127.0.0.3', nodeId: 0xb };
/** Where the bulk run's first link enters, through a fault proxy to A. */
const FRONT = '127.0.0.4';
const ROUTES = ['direct', 'relayed'] as const;
type Route = (typeof ROUTES)[number];
const variant = (route: Route): string => `rocks (${route})`;
/** The throughput a relayed session must reach, as a share of the direct one's. */
const TARGET = 0.8;

/** A port free on every one of `hosts` (the bulk run's lookup can change a link's address, not its port). */
async function commonPort(hosts: string[]): Promise<number> {
  const freeOn = (host: string, port: number) =>
    new Promise<boolean>((resolve) => {
      const s = createServer();
      s.once('error', () => resolve(false));
      s.listen(port, host, () => s.close(() => resolve(true)));
    });
  for (let i = 0; i < 50; i++) {
    const port = await freePort(hosts[0]);
    if ((await Promise.all(hosts.slice(1).map((h) => freeOn(h, port)))).every(Boolean)) return port;
  }
  throw new Error(`no port free on all of ${hosts.join(', ')}`);
}

type Stats = { type: 'stats'; connections: number; resumes: number; relayedResumes: number; cpu: number };

async function stats<T = Stats>(node: Peer): Promise<T> {
  node.send({ type: 'stats' });
  return node.next<Message & T>('stats', 10_000);
}

/**
 * Nodes A and B on one port (`serverArgs`: the server peer's job), the
 * client peer with `clientArgs` against them; `drive` runs the client.
 * Checks afterwards that A served `resumes` resumes, every one relayed by B
 * or none, as `route` says.
 */
async function withNodes<T>(
  route: Route,
  serverArgs: string[],
  clientArgs: string[],
  resumes: number,
  drive: (client: Peer, a: Peer, b: Peer) => Promise<T>,
): Promise<T> {
  const port = await commonPort([A.host, B.host, FRONT]);
  const peers = [A, B].map((n) => ({ nodeId: n.nodeId, host: n.host, port }));
  const [a, b] = [A, B].map(
    (n) =>
      new Peer('server', [
        '--transport',
        'rocks',
        '--options',
        JSON.stringify({ nodeId: n.nodeId, peers }),
        '--host',
        n.host,
        '--listen-port',
        String(port),
        ...serverArgs,
      ]),
  );
  try {
    await Promise.all([a.next('ready', 30_000), b.next('ready', 30_000)]);
    const client = new Peer('relay-client', [...clientArgs, '--route', route, '--port', String(port), '--front', FRONT]);
    try {
      const result = await drive(client, a, b);
      const seen = await stats(a);
      const relayed = route === 'relayed' ? resumes : 0;
      if (seen.resumes !== resumes || seen.relayedResumes !== relayed)
        throw new Error(
          `relay ${route}: node A served ${seen.resumes} resumes, ${seen.relayedResumes} relayed; expected ${resumes}, ${relayed} relayed`,
        );
      return result;
    } finally {
      await client.stop();
    }
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
}

type BulkResult = { type: 'result'; seconds: number; bytes: number; cpu: number };

/** One bulk run over a session carried by `route`: MB/s, and the CPU seconds each process used per GiB moved. */
async function relayBulk(route: Route, job: string[]): Promise<{ mbps: number; cpu: { client: number; a: number; b: number } }> {
  return withNodes(route, job, job, 1, async (client, a, b) => {
    await client.next('connected', 30_000);
    // The cut waits until A handed the session to its application, which then hears of the resume.
    await until(async () => (await stats(a)).connections === 1, 10_000, 'node A has the session', 20);
    client.send({ type: 'cut' });
    await client.next('resumed', 30_000);
    const before = await Promise.all([stats(a), stats(b)]);
    client.send({ type: 'go' });
    const r = await client.next<BulkResult>('result');
    const after = await Promise.all([stats(a), stats(b)]);
    const perGiB = (cpu: number) => cpu / (r.bytes / 2 ** 30);
    return {
      mbps: r.bytes / r.seconds / 1e6,
      cpu: { client: perGiB(r.cpu), a: perGiB(after[0].cpu - before[0].cpu), b: perGiB(after[1].cpu - before[1].cpu) },
    };
  });
}

async function rawBulk(job: string[]): Promise<number> {
  const r = await runPair<Message & { seconds: number; bytes: number }>(
    ['server', ['--transport', 'raw', ...job]],
    ['client', ['--transport', 'raw', ...job]],
  );
  return r.bytes / r.seconds / 1e6;
}

/** Every run starts three processes: quick mode (a smoke test) makes one run of each variant. */
const runs = (ctx: Context): number => (ctx.quick ? 1 : ctx.repeats);

/**
 * The same bulk run for raw node:net through a plain TCP relay process
 * (bench/peers/pipe.ts): what relaying costs a connection that is not rocks.
 * MB/s, and the relay's CPU seconds per GiB moved.
 */
async function rawRelayedBulk(job: string[]): Promise<{ mbps: number; relayCpu: number }> {
  const server = new Peer('server', ['--transport', 'raw', ...job]);
  try {
    const { port } = await server.next<Message & { port: number }>('ready', 30_000);
    const pipe = new Peer('pipe', ['--to-port', String(port)]);
    try {
      const relayPort = (await pipe.next<Message & { port: number }>('ready', 30_000)).port;
      const before = await stats(pipe);
      const client = new Peer('client', ['--transport', 'raw', ...job, '--port', String(relayPort)]);
      try {
        const r = await client.next<BulkResult>('result');
        const after = await stats(pipe);
        return { mbps: r.bytes / r.seconds / 1e6, relayCpu: (after.cpu - before.cpu) / (r.bytes / 2 ** 30) };
      } finally {
        await client.stop();
      }
    } finally {
      await pipe.stop();
    }
  } finally {
    await server.stop();
  }
}

const ratios = (over: number[], under: number[]): number[] => over.map((v, i) => v / under[i]);

async function throughput(ctx: Context): Promise<Measure[]> {
  const bytes = ctx.quick ? 64 * MIB : 1024 * MIB;
  const size = ctx.quick ? '64 MiB' : '1 GiB';
  const note =
    'after one cut: the session (node A, 127.0.0.2) resumed straight to A (direct) or to node B (127.0.0.3), which relays it to A (relayed); client, A and B each a process of its own, on loopback; raw: node:net, one process each side';
  const out: Measure[] = [];
  for (const [metric, both] of [
    [`${size} one way, 64 KiB writes`, false],
    [`${size} both ways at once, 64 KiB writes`, true],
  ] as const) {
    const job = ['--job', 'bulk', '--bytes', String(bytes), '--write-size', '65536', ...(both ? ['--both'] : [])];
    const samples: Record<string, number[]> = { raw: [], 'raw (relayed)': [], direct: [], relayed: [] };
    const cpu: Record<string, string[]> = { 'raw (relayed)': [], direct: [], relayed: [] };
    // Variants take turns, so that a slower spell of the machine touches all of them.
    for (let i = 0; i < runs(ctx); i++) {
      samples.raw.push(await rawBulk(job));
      const piped = await rawRelayedBulk(job);
      samples['raw (relayed)'].push(piped.mbps);
      cpu['raw (relayed)'].push(`relay ${piped.relayCpu.toFixed(2)}`);
      for (const route of ROUTES) {
        const r = await relayBulk(route, job);
        samples[route].push(r.mbps);
        cpu[route].push(`client ${r.cpu.client.toFixed(2)}, A ${r.cpu.a.toFixed(2)}, B ${r.cpu.b.toFixed(2)}`);
      }
    }
    for (const v of Object.keys(samples)) ctx.log(`relay ${metric} ${v}: ${samples[v].map((s) => s.toFixed(0)).join(', ')} MB/s`);
    for (const v of Object.keys(cpu)) ctx.log(`relay ${metric} ${v}: CPU s per GiB moved: ${cpu[v].join('; ')}`);
    out.push(measure({ case: 'relay', metric, variant: 'raw', unit: 'MB/s', better: 'higher' }, samples.raw));
    out.push(
      measure(
        {
          case: 'relay',
          metric,
          variant: 'raw (relayed)',
          unit: 'MB/s',
          better: 'higher',
          note: 'raw node:net through a plain TCP relay process (pipe() both ways, as a rocks node relays): what relaying costs any connection here',
        },
        samples['raw (relayed)'],
      ),
    );
    for (const route of ROUTES)
      out.push(measure({ case: 'relay', metric, variant: variant(route), unit: 'MB/s', better: 'higher', note }, samples[route]));
    out.push(
      measure(
        {
          case: 'relay',
          metric: `${metric}: relayed / direct`,
          variant: variant('relayed'),
          unit: 'x direct',
          better: 'higher',
          note: `target: at least ${TARGET}x direct; each run's relayed MB/s over the direct run next to it`,
        },
        ratios(samples.relayed, samples.direct),
      ),
    );
  }
  return out;
}

type ResumeResult = { type: 'result'; times: number[]; p50: number; p90: number };

async function resumeTimes(ctx: Context): Promise<Measure[]> {
  const cuts = ctx.quick ? 10 : 50;
  const results: Record<Route, ResumeResult[]> = { direct: [], relayed: [] };
  for (let i = 0; i < runs(ctx); i++) {
    for (const route of ROUTES) {
      const r = await withNodes(route, ['--job', 'echo'], ['--job', 'resume', '--cuts', String(cuts)], cuts, (client) =>
        client.next<ResumeResult>('result'),
      );
      results[route].push(r);
    }
  }
  for (const route of ROUTES)
    ctx.log(
      `relay resume ${route}: p50 ${results[route].map((r) => r.p50.toFixed(2)).join(', ')} ms, p90 ${results[route].map((r) => r.p90.toFixed(2)).join(', ')} ms (${cuts} cuts a run)`,
    );
  const note = `${cuts} cuts a run, each a reset of every connection through a fault proxy in the client's process; each resume reaches node A (direct) or lands on node B, which relays it to A (relayed); one sample per run`;
  const out: Measure[] = [];
  for (const q of ['p50', 'p90'] as const) {
    const metric = `cut to 'reconnect', ${q}`;
    for (const route of ROUTES)
      out.push(
        measure(
          { case: 'relay', metric, variant: variant(route), unit: 'ms', better: 'lower', note },
          results[route].map((r) => r[q]),
        ),
      );
    out.push(
      measure(
        {
          case: 'relay',
          metric: `${metric}: relayed / direct`,
          variant: variant('relayed'),
          unit: 'x direct',
          better: 'lower',
          note: "each run's relayed time over the direct run next to it",
        },
        ratios(
          results.relayed.map((r) => r[q]),
          results.direct.map((r) => r[q]),
        ),
      ),
    );
  }
  return out;
}

export const relay: BenchCase = {
  id: 'relay',
  title: 'Many nodes: a session relayed by another node against one carried directly',
  async run(ctx) {
    const out = [...(await throughput(ctx)), ...(await resumeTimes(ctx))];
    for (const m of out.filter((m) => m.metric.endsWith('relayed / direct') && m.better === 'higher')) {
      const ratio = median(m.samples);
      ctx.log(`relay ${m.metric}: ${ratio.toFixed(2)}x (target ${TARGET}x: ${ratio >= TARGET ? 'met' : 'NOT met'})`);
    }
    return out;
  },
};
