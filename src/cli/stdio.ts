// `rock stdio HOST:PORT`: standard input and output over one reliable
// connection, for `ssh -o ProxyCommand='rock stdio %h:PORT'`. Logs go to
// standard error; standard output carries only the connection's bytes.

import { once } from 'node:events';
import { connect } from '../index.js';
import { EXIT, type CommonOptions, type Endpoint } from './args.js';
import { Monitor } from './monitor.js';
import { ExitError } from './args.js';

/** Resolves with the exit code once both directions ended, or the connection failed. */
export async function stdio(to: Endpoint, common: CommonOptions, stop: Promise<string>): Promise<number> {
  const monitor = new Monitor(common);
  const socket = connect({ ...common.session, enhanced: common.enhanced, port: to.port, host: to.host, allowHalfOpen: true });
  try {
    await Promise.race([once(socket, 'connect'), once(socket, 'error').then(([err]) => Promise.reject(err))]);
  } catch (err) {
    await monitor.close();
    throw new ExitError(`cannot connect to ${to.host}:${to.port}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, EXIT.FAILURE);
  }
  await monitor.start();
  monitor.track(socket, `${to.host}:${to.port}`);
  process.stdin.pipe(socket);
  socket.pipe(process.stdout);
  const done = new Promise<number>((resolve) => {
    socket.once('error', (err) => {
      monitor.log.error({ err: err.message }, 'connection failed');
      resolve(EXIT.FAILURE);
    });
    socket.once('close', () => resolve(EXIT.OK));
  });
  const code = await Promise.race([done, stop.then(() => EXIT.OK)]);
  socket.destroy();
  await monitor.close();
  return code;
}
