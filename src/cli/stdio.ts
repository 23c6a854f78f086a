// `rock stdio HOST:PORT`: standard input and output over one reliable
// connection, for `ssh -o ProxyCommand='rock stdio %h:PORT'`. Logs go to
// standard error; standard output carries only the connection's bytes.

import { once } from 'node:events';
import { connect } from '../index.js';
import { EXIT, type CommonOptions, type Endpoint } from './args.js';
import { Monitor } from './monitor.js';
import { ExitError } from './args.js';
import { mismatchMessage, PinChecker } from './pin-check.js';
import { PinMismatchError } from '../node/tls-pin.js';
import type { ClientTls } from './tls-args.js';

/** Resolves with the exit code once both directions ended, or the connection failed. */
export async function stdio(to: Endpoint, common: CommonOptions, stop: Promise<string>, tls?: ClientTls): Promise<number> {
  const monitor = new Monitor(common);
  let tlsOptions = tls?.options;
  if (tls?.pin !== undefined) {
    // The server's key checked before anything is sent: a wrong one exits 1 with a line that says so.
    const pins = new PinChecker(tls.pin, to, tls.options);
    try {
      await pins.start();
    } catch (err) {
      await monitor.close();
      throw err;
    }
    tlsOptions = pins.options;
  }
  const socket = connect({ ...common.session, enhanced: common.enhanced, port: to.port, host: to.host, allowHalfOpen: true, tls: tlsOptions });
  try {
    await Promise.race([once(socket, 'connect'), once(socket, 'error').then(([err]) => Promise.reject(err))]);
  } catch (err) {
    await monitor.close();
    if (err instanceof PinMismatchError) throw new ExitError(mismatchMessage(err, to), EXIT.FAILURE);
    throw new ExitError(`cannot connect to ${to.host}:${to.port}: ${describe(err as NodeJS.ErrnoException)}`, EXIT.FAILURE);
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
  // process.exit() drops what standard output still queues (a pipe whose reader is slower): let it drain first.
  await new Promise<void>((resolve) => process.stdout.write('', () => resolve()));
  await monitor.close();
  return code;
}

/** A system error by its code (ECONNREFUSED); a TLS refusal by its message, which says more than its code. */
function describe(err: NodeJS.ErrnoException): string {
  if (err.code !== undefined && /^E[A-Z]+$/.test(err.code)) return err.code;
  return err.code !== undefined && !err.message.includes(err.code) ? `${err.message} (${err.code})` : err.message;
}
