// racks: a protected connection against the same connection unprotected, on
// the network test bed (test/bed/netbed.ts: client and server namespaces
// joined through a router), with `rack up` on both hosts. Throughput is
// iperf3's (an unmodified program), round trips a plain node:net
// ping-pong's; unprotected and protected runs alternate, on ports 5201/5301
// (not protected) and 5202/5302 (protected). Needs root: elsewhere the case
// says so and measures nothing.

import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { NetBed, netbedSkip, type HostName } from '../../test/bed/netbed.js';
import { parseJsonLines, Program } from '../../test/support/helpers.js';
import type { BenchCase, Measure } from '../core/types.js';

const RACK = fileURLToPath(new URL('../../src/cli/rack.js', import.meta.url));
const PINGPONG = fileURLToPath(new URL('../peers/tcp-pingpong.js', import.meta.url));
const PORTS = { iperf: { raw: 5201, racks: 5202 }, pingpong: { raw: 5301, racks: 5302 } };

/** A process on a bed host, its output kept. */
function run(bed: NetBed, host: HostName, command: string, args: string[]): Program {
  return new Program(bed.spawn(host, command, args, { stdio: ['ignore', 'pipe', 'pipe'] }), `${command.split('/').pop()} on ${host}`, {
    limit: 20_000,
  });
}

/** iperf3 -c for `seconds`: received bits per second, as MB/s. */
function iperf(bed: NetBed, port: number, seconds: number): number {
  const r = spawnSync('ip', ['netns', 'exec', bed.ns.client, 'iperf3', '-c', bed.serverAddress, '-p', String(port), '-t', String(seconds), '-J'], {
    encoding: 'utf8',
    timeout: (seconds + 30) * 1000,
  });
  if (r.status !== 0) throw new Error(`iperf3 -p ${port} failed (${r.status ?? r.error?.message}): ${r.stdout.slice(-2000)} ${r.stderr}`);
  const result = JSON.parse(r.stdout) as { end: { sum_received: { bits_per_second: number } } };
  return result.end.sum_received.bits_per_second / 8 / 1e6;
}

async function pingpong(bed: NetBed, port: number, count: number): Promise<{ p50: number; p99: number }> {
  const client = run(bed, 'client', process.execPath, [
    PINGPONG,
    '--role',
    'client',
    '--host',
    bed.serverAddress,
    '--port',
    String(port),
    '--count',
    String(count),
  ]);
  await once(client.child, 'close'); // exited, and all it printed read
  const result = parseJsonLines<{ type: string; p50: number; p99: number }>(client.output).find((m) => m.type === 'result');
  if (!result) throw new Error(`ping-pong on port ${port} gave no result:\n${client.output}`);
  return result;
}

export const racks: BenchCase = {
  id: 'racks',
  title: 'racks: a protected connection against the same one unprotected (network test bed)',
  async run(ctx) {
    const skip = netbedSkip();
    if (skip) {
      ctx.log(`  racks: skipped: ${skip}`);
      return [];
    }
    const seconds = ctx.quick ? 2 : 3;
    const count = ctx.quick ? 500 : 5000;
    const bed = new NetBed();
    const procs: Program[] = [];
    try {
      const protect = ['--protect', `tcp:${PORTS.iperf.racks}`, '--protect', `tcp:${PORTS.pingpong.racks}`];
      for (const host of ['client', 'server'] as const) {
        const rack = run(bed, host, process.execPath, [RACK, 'up', ...protect, '--json']);
        procs.push(rack);
        await rack.waitForOutput(/"msg":"rack up"/, 15_000);
      }
      for (const variant of ['raw', 'racks'] as const) {
        const iperfServer = run(bed, 'server', 'iperf3', ['-s', '-p', String(PORTS.iperf[variant]), '--forceflush']);
        procs.push(iperfServer);
        await iperfServer.waitForOutput(/Server listening/, 15_000);
        const echo = run(bed, 'server', process.execPath, [PINGPONG, '--role', 'server', '--port', String(PORTS.pingpong[variant])]);
        procs.push(echo);
        await echo.waitForOutput(/"ready"/, 15_000);
      }
      const samples = {
        throughput: { raw: [] as number[], racks: [] as number[] },
        p50: { raw: [] as number[], racks: [] as number[] },
        p99: { raw: [] as number[], racks: [] as number[] },
      };
      for (let i = 0; i < ctx.repeats; i++) {
        for (const variant of ['raw', 'racks'] as const) {
          const mbps = iperf(bed, PORTS.iperf[variant], seconds);
          const rtt = await pingpong(bed, PORTS.pingpong[variant], count);
          samples.throughput[variant].push(mbps);
          samples.p50[variant].push(rtt.p50);
          samples.p99[variant].push(rtt.p99);
          ctx.log(
            `  racks ${i + 1}/${ctx.repeats} ${variant}: iperf3 ${mbps.toFixed(0)} MB/s, ping-pong p50 ${rtt.p50.toFixed(3)} ms, p99 ${rtt.p99.toFixed(3)} ms`,
          );
        }
      }
      // The same through a 1 Gbit/s link (tbf on the router), what a LAN gives: unshaped veth is
      // memory speed, which measures the daemon's CPU ceiling rather than what a user would see.
      bed.shape(1000);
      const shaped = { raw: [] as number[], racks: [] as number[] };
      for (let i = 0; i < ctx.repeats; i++) {
        for (const variant of ['raw', 'racks'] as const) {
          const mbps = iperf(bed, PORTS.iperf[variant], seconds);
          shaped[variant].push(mbps);
          ctx.log(`  racks ${i + 1}/${ctx.repeats} ${variant}, 1 Gbit/s link: iperf3 ${mbps.toFixed(0)} MB/s`);
        }
      }
      const note =
        'client and server namespaces through a router namespace (veth, no shaping); rack up on both hosts; raw = the same hosts, an unprotected port';
      const out: Measure[] = [];
      for (const variant of ['raw', 'racks'] as const) {
        out.push({
          case: 'racks',
          metric: `iperf3 -t ${seconds}, client to server`,
          variant,
          unit: 'MB/s',
          better: 'higher',
          samples: samples.throughput[variant],
          note,
        });
        out.push({
          case: 'racks',
          metric: `iperf3 -t ${seconds}, client to server, 1 Gbit/s link`,
          variant,
          unit: 'MB/s',
          better: 'higher',
          samples: shaped[variant],
          note: 'the same hosts with a tbf of 1 Gbit/s on both router links',
        });
        out.push({ case: 'racks', metric: '64 B ping-pong p50', variant, unit: 'ms', better: 'lower', samples: samples.p50[variant], note });
        out.push({ case: 'racks', metric: '64 B ping-pong p99', variant, unit: 'ms', better: 'lower', samples: samples.p99[variant], note });
      }
      return out;
    } finally {
      for (const p of procs.reverse()) await p.stop();
      bed.destroy();
    }
  },
};
