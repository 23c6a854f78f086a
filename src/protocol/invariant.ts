// Invariants whose breach means rocks can no longer keep its promise (every
// byte exactly once, in order). As in TigerBeetle, a broken invariant stops
// the program instead of letting it carry on with corrupt state: a session
// that caught the error and failed politely could hide the bug that lost or
// duplicated a user's bytes. Bad input from a peer is never an invariant
// breach; it is a protocol error, checked before it can reach these.
//
// The session and the server core catch errors from frame handling to fail
// only the link or session concerned; they rethrow these.

import { AssertionError } from 'node:assert';

/** Stops the program when `condition` is false; `what` says which invariant broke. */
export function invariant(condition: boolean, what: () => string): asserts condition {
  if (!condition) throw new AssertionError({ message: `rocks invariant broken: ${what()}` });
}

/** Whether `err` is a broken invariant, which must not be caught and handled. */
export function isInvariantBreach(err: unknown): boolean {
  return err instanceof AssertionError;
}
