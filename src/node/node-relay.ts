// Carries a resuming link to the node of the deployment that holds its
// session: a new TCP connection to that node, a PROXY v2 header naming the
// client, the bytes this node already read, then the two sockets spliced
// both ways (half-closes included) until either side goes. The owner reads
// the header (only from a member) and serves the link as if the client had
// reached it directly. Nothing here reads the relayed bytes, so the relay
// works the same once links are encrypted end to end.

import { connect, type Socket } from 'node:net';
import { encodeProxyHeader } from '../protocol/proxy-header.js';
import type { NodeAddress } from './directory.js';

/** How long a node waits for another to accept a relayed link. */
export const RELAY_CONNECT_TIMEOUT = 5_000;

export type RelayOutcome =
  /** The owner accepted the link: bytes now flow both ways. */
  | { kind: 'relayed' }
  /**
   * The owner's address refused the connection: no process holds the
   * session any more. The caller tells the client its session is gone.
   */
  | { kind: 'refused'; reason: string }
  /** The owner could not be reached (yet): the link was dropped, and the client will try again. */
  | { kind: 'unreachable'; reason: string };

/**
 * Relays `client` (already paused, nothing of ours listening on it) to
 * `target`, writing `initial` first. `done` hears how it went, once.
 * `localAddress`: where the relay comes from, the address this node is
 * known by, so that the owner recognises a member.
 */
export function relayLink(
  client: Socket,
  initial: Buffer,
  target: NodeAddress,
  localAddress: string | undefined,
  done: (outcome: RelayOutcome) => void,
): void {
  // The client may reset while we connect: its error must not go unheard (and crash the process).
  client.on('error', () => client.destroy());
  const upstream = connect({ host: target.host, port: target.port, localAddress, allowHalfOpen: true });
  let connected = false;
  const fail = (err: Error) => {
    if (connected) return;
    connected = true; // once
    upstream.destroy();
    const code = (err as NodeJS.ErrnoException).code ?? err.message;
    if (code === 'ECONNREFUSED') done({ kind: 'refused', reason: `node at ${target.host}:${target.port} refused the connection` });
    else {
      client.destroy();
      done({ kind: 'unreachable', reason: `node at ${target.host}:${target.port}: ${code}` });
    }
  };
  upstream.setTimeout(RELAY_CONNECT_TIMEOUT, () => fail(new Error('ETIMEDOUT')));
  upstream.once('error', fail);
  client.once('close', () => {
    if (!connected) upstream.destroy();
  });
  upstream.once('connect', () => {
    if (connected) return;
    connected = true;
    upstream.setTimeout(0);
    upstream.removeListener('error', fail);
    upstream.setNoDelay(true);
    client.setNoDelay(true);
    const source = { address: client.remoteAddress ?? '0.0.0.0', port: client.remotePort ?? 0 };
    const destination = { address: client.localAddress ?? '0.0.0.0', port: client.localPort ?? 0 };
    upstream.write(encodeProxyHeader({ source, destination }));
    upstream.write(initial);
    splice(client, upstream);
    done({ kind: 'relayed' });
  });
}

/**
 * Bytes and half-closes both ways (pipe ends the other side when one ends);
 * a side that fails or goes before its peer finished resets the other, so
 * the client notices at once and resumes.
 */
function splice(a: Socket, b: Socket): void {
  a.pipe(b);
  b.pipe(a);
  for (const [from, to] of [
    [a, b],
    [b, a],
  ]) {
    from.on('error', () => to.destroy());
    from.on('close', (hadError) => {
      if (hadError || !from.readableEnded) to.destroy();
    });
  }
}
