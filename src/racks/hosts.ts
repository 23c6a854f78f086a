// What a rack daemon in the client role knows of each server host, and so
// where a packet to it goes (EDP for racks): into the carriage of a host
// that runs a rack daemon; out untouched to a host found plain, for plainTtl;
// held, for a new connection's SYN to a host being asked. Pure: the daemon
// passes the time in, and dials, carries and sends.

import type { Carriage } from './carriage.js';

/** Most SYNs held per host while its EDP answer is awaited. */
export const MAX_HELD_SYNS = 64;

export interface Host {
  readonly address: string;
  verdict: 'probing' | 'rack' | 'plain';
  carriage?: Carriage;
  /** Until when a plain verdict stands. */
  until: number;
  /** SYNs (copies) waiting for the answer. */
  syns: Buffer[];
}

export type Route =
  /** The host runs a rack daemon. */
  | { to: 'carriage'; carriage: Carriage }
  /** The host is plain: out untouched. */
  | { to: 'out' }
  /** No verdict, and not a new connection (one older than the daemon): out untouched, and left alone from now on. */
  | { to: 'unknown' }
  /** A SYN held until the answer; `probe` names the host when the question must be asked now. */
  | { to: 'held'; probe?: Host };

export class HostTable {
  private readonly hosts = new Map<string, Host>();

  constructor(private readonly plainTtl: number) {}

  values(): IterableIterator<Host> {
    return this.hosts.values();
  }

  carriageOf(address: string): Carriage | undefined {
    return this.hosts.get(address)?.carriage;
  }

  /** Where a packet to `address` goes at `now`; `opening`: it is a SYN without ACK, whose copy is held when it must wait. */
  route(address: string, opening: boolean, packet: Buffer, now: number): Route {
    let host = this.hosts.get(address);
    if (host?.verdict === 'plain' && now >= host.until) {
      this.hosts.delete(address);
      host = undefined;
    }
    if (host?.verdict === 'rack' && host.carriage) return { to: 'carriage', carriage: host.carriage };
    if (host?.verdict === 'plain') return { to: 'out' };
    if (!opening) return { to: 'unknown' };
    let probe: Host | undefined;
    if (host === undefined) {
      host = { address, verdict: 'probing', until: 0, syns: [] };
      this.hosts.set(address, host);
      probe = host;
    }
    // The packet is a view of a buffer its reader reuses.
    if (host.syns.length < MAX_HELD_SYNS) host.syns.push(Buffer.from(packet));
    return probe ? { to: 'held', probe } : { to: 'held' };
  }

  /** No rack daemon there: plain until `now` + plainTtl. Returns the held SYNs, to send out; undefined when already settled. */
  settlePlain(host: Host, now: number): Buffer[] | undefined {
    if (host.verdict !== 'probing') return undefined;
    host.verdict = 'plain';
    host.until = now + this.plainTtl;
    return host.syns.splice(0);
  }

  /** A rack daemon answered with `carriage`. Returns the held SYNs, to carry. */
  settleRack(host: Host, carriage: Carriage): Buffer[] {
    host.verdict = 'rack';
    host.carriage = carriage;
    return host.syns.splice(0);
  }

  /** The host's carriage closed: the next SYN asks again. */
  forget(host: Host, carriage: Carriage): void {
    if (host.carriage === carriage && this.hosts.get(host.address) === host) this.hosts.delete(host.address);
  }
}
