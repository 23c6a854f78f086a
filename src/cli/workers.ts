// `rock serve --workers N`: the primary forks N workers that each run the
// serve relay (this same command line, in a cluster worker), and routes their
// links (node/cluster.ts): a resume reaches the worker that holds its session.
// It starts one worker first, so that an address it cannot listen on is told
// once; a worker that dies later is replaced (its sessions end, the others'
// go on), and a signal stops them all.

import cluster, { type Worker } from 'node:cluster';
import { setupPrimary } from '../node/cluster.js';
import { type CommonOptions, type Endpoint, EXIT, ExitError } from './args.js';
import { Monitor } from './monitor.js';
import { reachable, show } from './relay.js';

export async function serveWithWorkers(count: number, listen: Endpoint, to: Endpoint, common: CommonOptions, stop: Promise<string>): Promise<number> {
  const monitor = new Monitor(common);
  const log = monitor.log;
  await reachable(to);
  setupPrimary(); // loading rocks did it already; said here for the reader
  const workers = new Set<Worker>();
  const ready = new Set<Worker>();
  let stopping = false;
  /** One worker first; the others once it listens; then serving. */
  let phase: 'first' | 'rest' | 'serving' = 'first';

  const code = await new Promise<number>((resolve, reject) => {
    const fork = (): void => {
      workers.add(cluster.fork());
    };
    /** Stops every worker; resolves with `code` once they have all exited. */
    let exitCode: number = EXIT.OK;
    const stopAll = (code: number): void => {
      stopping = true;
      exitCode = code;
      for (const w of workers) w.process.kill('SIGTERM');
      if (workers.size === 0) resolve(exitCode);
    };
    cluster.on('listening', (worker) => {
      if (ready.has(worker)) return;
      ready.add(worker);
      if (phase === 'first') {
        phase = 'rest';
        for (let i = 1; i < count; i++) fork();
      }
      if (phase === 'rest' && ready.size === count) {
        phase = 'serving';
        log.info({ listen: show(listen), to: show(to), workers: count }, `serving rocks with ${count} workers, relaying to the target`);
      }
    });
    cluster.on('exit', (worker, code, signal) => {
      workers.delete(worker);
      const wasReady = ready.delete(worker);
      if (stopping) {
        if (workers.size === 0) resolve(exitCode);
        return;
      }
      if (!wasReady) {
        // It could not start (it said why on standard error): neither can the others.
        if (signal !== null) reject(new ExitError(`a worker was killed by ${signal} before it listened`, EXIT.FAILURE));
        stopAll(code || EXIT.FAILURE);
        return;
      }
      log.warn({ worker: worker.process.pid, code, signal }, 'a worker died, its connections with it; starting another');
      fork();
    });
    void stop.then((signal) => {
      log.info({ signal }, 'shutting down');
      stopAll(EXIT.OK);
    });
    fork();
  });
  await monitor.close();
  return code;
}
