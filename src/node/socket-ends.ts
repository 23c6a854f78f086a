// A connection's two ends, as a ReliableSocket reports them and a server
// counts its links by. Node's getters (remoteAddress, address()) keep what
// they read on the socket: two objects and their strings, about 200 bytes
// an idle session pays for the life of its link. We ask the handle instead,
// as socket-calls.ts does for its descriptor, and keep one string for each
// address many connections share (a server's own, a balancer's, a busy
// client's). Sockets without such a handle (TLS) use Node's getters.

import { isIPv6, type Socket } from 'node:net';

export interface Ends {
  remoteAddress: string | undefined;
  remotePort: number | undefined;
  localAddress: string | undefined;
  localPort: number | undefined;
}

interface Name {
  address?: string;
  port?: number;
}
interface NameHandle {
  getpeername?(out: Name): number;
  getsockname?(out: Name): number;
}

/** Address strings recently seen, each kept once; bounded, so that a server that sees many clients keeps no more than this. */
const SHARED_ADDRESSES = 256;
const shared = new Map<string, string>();

function share(address: string | undefined): string | undefined {
  if (address === undefined) return undefined;
  const known = shared.get(address);
  if (known !== undefined) return known;
  if (shared.size >= SHARED_ADDRESSES) shared.delete(shared.keys().next().value as string);
  shared.set(address, address);
  return address;
}

function handleOf(s: Socket): NameHandle | undefined {
  const h = (s as unknown as { _handle?: NameHandle | null })._handle;
  return h != null && typeof h.getpeername === 'function' && typeof h.getsockname === 'function' ? h : undefined;
}

/** The peer's address, or undefined when the connection is already gone. */
export function remoteAddressOf(s: Socket): string | undefined {
  const h = handleOf(s);
  if (h === undefined) return share(s.remoteAddress);
  const out: Name = {};
  return h.getpeername!(out) === 0 ? share(out.address) : undefined;
}

/** Our own address on `s`, or undefined when the connection is already gone. */
export function localAddressOf(s: Socket): string | undefined {
  const h = handleOf(s);
  if (h === undefined) return share(s.localAddress);
  const out: Name = {};
  return h.getsockname!(out) === 0 ? share(out.address) : undefined;
}

/** Both ends of `s`; those Node cannot tell (the connection is gone) are undefined. */
export function endsOf(s: Socket): Ends {
  const h = handleOf(s);
  if (h === undefined) {
    return { remoteAddress: share(s.remoteAddress), remotePort: s.remotePort, localAddress: share(s.localAddress), localPort: s.localPort };
  }
  const peer: Name = {};
  const local: Name = {};
  const peerKnown = h.getpeername!(peer) === 0;
  const localKnown = h.getsockname!(local) === 0;
  return {
    remoteAddress: peerKnown ? share(peer.address) : undefined,
    remotePort: peerKnown ? peer.port : undefined,
    localAddress: localKnown ? share(local.address) : undefined,
    localPort: localKnown ? local.port : undefined,
  };
}

/** The family Node reports for an address. */
export function familyOf(address: string): 'IPv4' | 'IPv6' {
  return isIPv6(address) ? 'IPv6' : 'IPv4';
}
