// racks: a protected connection against the same connection unprotected, on
// the network test bed (test/bed/netbed.ts: client and server namespaces
// joined through a router), with `rack up` on both hosts. Throughput is
// iperf3's (an unmodified program), round trips a plain node:net
// ping-pong's; unprotected and protected runs alternate, on ports 5201/5301
// (not protected) and 5202/5302 (protected). Needs root: elsewhere the case
// says so and measures nothing.

import { spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { NetBed, netbedSkip, type HostName } from '../../test/bed/netbed.js';
import type { BenchCase, Measure } from '../core/types.js';

const RACK = fileURLToPath(new URL('../../src/cli/rack.js', import.meta.url));
const PINGPONG = fileURLToPath(new URL('../peers/tcp-pingpong.js', import.meta.url));
const PORTS = { iperf: { raw: 5201, racks: 5202 }, pingpong: { raw: 5301, racks: 5302 } };

/** A process in a bed host, its output kept; resolves `ready` once a line matches. */
class HostRun {
  output = '';
  readonly exited: Promise<unknown>;

  constructor(readonly child: ChildProcess) {
    const keep = (d: Buffer): void => {
      this.output = (this.output + d.toString()).slice(-20_000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    this.exited = once(child, 'exit');
  }

  async ready(pattern: RegExp, ms = 15_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!pattern.test(this.output)) {
      if (this.child.exitCode !== null) throw new Error(`exited before it was ready:\n${this.output}`);
      if (Date.now() > deadline) throw new Error(`not ready after ${ms} ms:\n${this.output}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 3000);
    await this.exited;
    clearTimeout(timer);
  }
}

function run(bed: NetBed, host: HostName, command: string, args: string[]): HostRun {
  return new HostRun(bed.spawn(host, command, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
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
  const client = run(bed, 'client', process.execPath, [PINGPONG, '--role', 'client', '--host', bed.serverAddress, '--port', String(port), '--count', String(count)]);
  await client.exited;
  const line = client.output.split('\n').find((l) => l.includes('"result"'));
  if (!line) throw new Error(`ping-pong on port ${port} gave no result:\n${client.output}`);
  return JSON.parse(line) as { p50: number; p99: number };
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
    const procs: HostRun[] = [];
    try {
      const protect = ['--protect', `tcp:${PORTS.iperf.racks}`, '--protect', `tcp:${PORTS.pingpong.racks}`];
      for (const host of ['client', 'server'] as const) {
        const rack = run(bed, host, process.execPath, [RACK, 'up', ...protect, '--json']);
        procs.push(rack);
        await rack.ready(/"msg":"rack up"/);
      }
      for (const variant of ['raw', 'racks'] as const) {
        const iperfServer = run(bed, 'server', 'iperf3', ['-s', '-p', String(PORTS.iperf[variant]), '--forceflush']);
        procs.push(iperfServer);
        await iperfServer.ready(/Server listening/);
        const echo = run(bed, 'server', process.execPath, [PINGPONG, '--role', 'server', '--port', String(PORTS.pingpong[variant])]);
        procs.push(echo);
        await echo.ready(/"ready"/);
      }
      const samples = { throughput: { raw: [] as number[], racks: [] as number[] }, p50: { raw: [] as number[], racks: [] as number[] }, p99: { raw: [] as number[], racks: [] as number[] } };
      for (let i = 0; i < ctx.repeats; i++) {
        for (const variant of ['raw', 'racks'] as const) {
          const mbps = iperf(bed, PORTS.iperf[variant], seconds);
          const rtt = await pingpong(bed, PORTS.pingpong[variant], count);
          samples.throughput[variant].push(mbps);
          samples.p50[variant].push(rtt.p50);
          samples.p99[variant].push(rtt.p99);
          ctx.log(`  racks ${i + 1}/${ctx.repeats} ${variant}: iperf3 ${mbps.toFixed(0)} MB/s, ping-pong p50 ${rtt.p50.toFixed(3)} ms, p99 ${rtt.p99.toFixed(3)} ms`);
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
      const note = 'client and server namespaces through a router namespace (veth, no shaping); rack up on both hosts; raw = the same hosts, an unprotected port';
      const out: Measure[] = [];
      for (const variant of ['raw', 'racks'] as const) {
        out.push({ case: 'racks', metric: `iperf3 -t ${seconds}, client to server`, variant, unit: 'MB/s', better: 'higher', samples: samples.throughput[variant], note });
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
