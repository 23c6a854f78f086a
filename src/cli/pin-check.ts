// --tls-pin for the commands that dial (rock forward, rock stdio): the
// server's certificate is fetched and its key checked before the first
// connection (pinnedConnectOptions), and checked again when a connection's
// certificate is refused later: a server whose key changed is refused with
// a line that says so; one that only renewed its certificate for the same
// key is trusted again.

import type { ConnectionOptions } from 'node:tls';
import { PinMismatchError, pinnedConnectOptions } from '../node/tls-pin.js';
import { type Endpoint, EXIT, ExitError } from './args.js';
import { show } from './relay.js';

/** What the user reads when the server's key is not the pinned one. */
export function mismatchMessage(err: PinMismatchError, to: Endpoint): string {
  return `server key does not match --tls-pin ${err.expected} (the server at ${show(to)} presents ${err.presented})`;
}

/** Errors of a certificate that was refused (node's verify codes and checkServerIdentity's). */
const CERTIFICATE_ERROR = /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|ERR_TLS_PIN_MISMATCH/;

export class PinChecker {
  /** Options for connect(), trusting the checked certificate; set by start(). */
  options: ConnectionOptions | undefined;
  private checking: Promise<void> | undefined;

  constructor(
    private readonly pin: string,
    private readonly to: Endpoint,
    private readonly base: ConnectionOptions,
  ) {}

  /** Fetches and checks the certificate; an ExitError (exit code 1) when the key differs or the server cannot be reached. */
  async start(): Promise<void> {
    try {
      this.options = await this.fetch();
    } catch (err) {
      if (err instanceof PinMismatchError) throw new ExitError(mismatchMessage(err, this.to), EXIT.FAILURE);
      const e = err as NodeJS.ErrnoException;
      throw new ExitError(`cannot reach --to ${show(this.to)}: ${e.code ?? e.message}`, EXIT.FAILURE);
    }
  }

  private fetch(): Promise<ConnectionOptions> {
    const { key, cert } = this.base;
    return pinnedConnectOptions(this.pin, { host: this.to.host, port: this.to.port, key, cert });
  }

  /** After a connection failed: if its certificate was refused, fetch again, and log what changed. */
  recheck(err: Error, log: { warn(o: object, m: string): void; error(o: object, m: string): void }): void {
    const code = (err as NodeJS.ErrnoException).code ?? '';
    if (!CERTIFICATE_ERROR.test(code) || this.checking) return;
    this.checking = this.fetch()
      .then((options) => {
        this.options = options;
        log.warn({ to: show(this.to) }, 'the server presents a new certificate for the pinned key: trusting it from now on');
      })
      .catch((e: Error) => {
        if (e instanceof PinMismatchError) log.error({ to: show(this.to) }, `connection refused: ${mismatchMessage(e, this.to)}`);
        else log.warn({ to: show(this.to), err: e.message }, 'could not check the server key again');
      })
      .finally(() => {
        this.checking = undefined;
      });
  }
}
