// Carries one connection's bytes both ways between two sockets, as a TCP
// relay should: each direction ends on its own (half-close passes through),
// and an abort on either side (error, reset) aborts the other.

import type { Duplex } from 'node:stream';

/**
 * Pipes `a` and `b` into each other. Both must be created with
 * allowHalfOpen, so one direction's end does not close the other.
 * `onClose` runs once both are closed, with the first error seen.
 */
export function bridge(a: Duplex, b: Duplex, onClose?: (error: Error | undefined) => void): void {
  let error: Error | undefined;
  let open = 2;
  const wire = (from: Duplex, to: Duplex): void => {
    from.pipe(to);
    from.on('error', (err: Error) => {
      error ??= err;
      to.destroy();
    });
    from.once('close', () => {
      // Closed before its data ended (aborted): the other side must not wait.
      if (!from.readableEnded) to.destroy();
      // Closed cleanly: nothing more can be written to it, so let the other
      // side's remaining bytes drain and its end arrive, or it never closes.
      else to.resume();
      if (--open === 0) onClose?.(error);
    });
  };
  wire(a, b);
  wire(b, a);
}
