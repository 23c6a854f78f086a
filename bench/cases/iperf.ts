// A real client: iperf3's TCP throughput, directly to `iperf3 -s` (raw) and
// carried by the rock command (rocks):
//
//   iperf3 -c -> rock forward --listen A --to B -> (rocks) -> rock serve --listen B --to S -> iperf3 -s -p S
//
// iperf3 opens a control connection and a data connection; both go through
// the relays, each over a rocks connection of its own. One iperf3 server and
// one pair of relays serve every run; raw and rocks take turns.

import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { freePort, Program, sleep } from '../../test/support/helpers.js';
import type { BenchCase, Measure } from '../core/types.js';

/** The compiled rock command: dist/src/cli/rock.js. */
const ROCK = fileURLToPath(new URL('../../src/cli/rock.js', import.meta.url));
const HOST = '127.0.0.1';

/** Starts a program and resolves once its output (stdout or stderr) matches `ready`; stops it if it is not ready in time. */
async function start(command: string, args: string[], ready: RegExp, ms = 10_000): Promise<Program> {
  const program = new Program(spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] }), `${command.split('/').pop()} ${args.join(' ')}`, {
    limit: 8000,
  });
  try {
    await program.waitForOutput(ready, ms);
  } catch (err) {
    await program.stop();
    throw err;
  }
  return program;
}

function checkIperf3(): string {
  const r = spawnSync('iperf3', ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    throw new Error(`iperf3 is not installed (${r.error?.message ?? `exit ${r.status}`}): apt-get install iperf3 (as root)`);
  }
  return r.stdout.split('\n')[0].trim();
}

/** iperf3 -s runs one test at a time, and says so when asked for another. */
const BUSY = /server is busy/;

/**
 * One iperf3 test against port `port`: MB/s (10^6 bytes) the receiving end
 * measured. The server may still be finishing the previous test (through
 * the relays its connections close a little after the client's): wait for it.
 */
async function runIperf(port: number, seconds: number, reverse: boolean, log?: (line: string) => void): Promise<number> {
  const start = Date.now();
  for (;;) {
    try {
      return await iperfOnce(port, seconds, reverse);
    } catch (err) {
      if (!BUSY.test((err as Error).message) || Date.now() - start > 30_000) throw err;
      await sleep(100);
      log?.(`  iperf: the iperf3 server is still busy ${Date.now() - start} ms after the previous test; trying again`);
    }
  }
}

async function iperfOnce(port: number, seconds: number, reverse: boolean): Promise<number> {
  const args = ['-c', HOST, '-p', String(port), '-t', String(seconds), '-J', ...(reverse ? ['-R'] : [])];
  const child = spawn('iperf3', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), (seconds + 30) * 1000);
  const [code] = (await once(child, 'close')) as [number | null]; // exited, and all it printed read
  clearTimeout(timer);
  let result: { error?: string; end?: { sum_received?: { bits_per_second?: number } } };
  try {
    result = JSON.parse(out) as typeof result;
  } catch {
    throw new Error(`iperf3 ${args.join(' ')} (exit ${code}) printed no JSON:\n${out.slice(-2000)}${err.slice(-2000)}`);
  }
  const bps = result.end?.sum_received?.bits_per_second;
  if (result.error || typeof bps !== 'number')
    throw new Error(`iperf3 ${args.join(' ')} failed (exit ${code}): ${result.error ?? 'no end.sum_received'}\n${err.slice(-2000)}`);
  return bps / 8 / 1e6;
}

export const iperf: BenchCase = {
  id: 'iperf',
  title: 'A real client: iperf3 direct and through rock forward + rock serve',
  async run(ctx) {
    const version = checkIperf3();
    const seconds = ctx.quick ? 2 : 5;
    const programs: Program[] = [];
    try {
      const target = await freePort(HOST);
      programs.push(await start('iperf3', ['-s', '-B', HOST, '-p', String(target), '--forceflush'], /Server listening/));
      // rock serve checks at start that the target accepts connections: the
      // iperf3 server sees a connection that never sends a test, logs an
      // error and keeps serving.
      const serve = await freePort(HOST);
      programs.push(
        await start(
          process.execPath,
          [ROCK, 'serve', '--listen', `${HOST}:${serve}`, '--to', `${HOST}:${target}`],
          /serving rocks, relaying to the target/,
        ),
      );
      const forward = await freePort(HOST);
      programs.push(
        await start(process.execPath, [ROCK, 'forward', '--listen', `${HOST}:${forward}`, '--to', `${HOST}:${serve}`], /forwarding over rocks/),
      );

      const ports = { raw: target, rocks: forward };
      // One unrecorded second through the relays first: their code is compiled while it runs.
      await runIperf(forward, 1, false);
      const samples: Record<string, number[]> = {};
      const directions = [
        { reverse: false, metric: `iperf3 -t ${seconds}: client to server` },
        { reverse: true, metric: `iperf3 -t ${seconds} -R: server to client` },
      ];
      for (let i = 0; i < (ctx.quick ? 1 : ctx.repeats); i++) {
        for (const { reverse, metric } of directions) {
          for (const variant of ['raw', 'rocks'] as const) {
            const mbps = await runIperf(ports[variant], seconds, reverse, ctx.log);
            const key = `${metric}|${variant}`;
            samples[key] ??= [];
            samples[key].push(mbps);
            ctx.log(`  iperf: ${metric}, ${variant}: ${mbps.toFixed(0)} MB/s`);
          }
        }
      }
      const note =
        `${version}, one TCP stream (plus the control connection), end.sum_received; MB = 10^6 bytes. ` +
        'rocks: iperf3 -c -> rock forward -> rock serve -> iperf3 -s, each a process of its own, all on loopback (raw: iperf3 -c -> iperf3 -s)';
      return directions.flatMap(({ metric }) =>
        (['raw', 'rocks'] as const).map(
          (variant): Measure => ({ case: 'iperf', metric, variant, unit: 'MB/s', better: 'higher', samples: samples[`${metric}|${variant}`], note }),
        ),
      );
    } finally {
      for (const p of programs.reverse()) await p.stop();
    }
  },
};
