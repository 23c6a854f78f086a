// Reading macOS's `route -n monitor`: the routing socket's messages as
// route(8) prints them (print_rtmsg in Apple's network_cmds, route.c).
// Each message is a block of lines:
//
//   got message of size 176 on Thu Dec  3 10:12:30 2026
//   RTM_DELETE: Delete Route: len 176, pid: 0, seq 0, errno 0, flags:<UP,GATEWAY,DONE,STATIC,PRCLONING>
//   locks:  inits:
//   sockaddrs: <DST,GATEWAY,NETMASK>
//    default 192.168.1.1 default
//
// The header names the message; "sockaddrs:" names which addresses follow,
// in the order of their bits; the next line gives them, each behind one
// space. An address route(8) cannot name prints as "(family) word word ...",
// with spaces of its own; one it finds empty prints as nothing.

import { networkInterfaces } from 'node:os';
import type { MonitorEvent } from './network-watch.js';

const HEADER = /^(RTM_[A-Z]+): .*?: len \d+, (.*)$/;
const SOCKADDRS = /^sockaddrs: <([A-Z,]*)>/;

/** A message whose addresses are still to come; `names` once its "sockaddrs:" line came. */
type Pending = { type: string; flags: string[]; names?: string[] };

/**
 * Reads `route -n monitor` one line at a time; returns an event at the line
 * that completes one a session may care about. One reader per monitor: it
 * keeps the message whose addresses are still to come.
 */
export class RouteMonitorReader {
  private pending: Pending | undefined;

  /** `interfaceName` names an interface by its index (RTM_IFINFO gives only that). */
  constructor(private readonly interfaceName: (index: number) => string | undefined = nameOfIndex) {}

  line(raw: string): MonitorEvent | undefined {
    const text = raw.trim();
    const header = HEADER.exec(text);
    if (header !== null) {
      this.pending = undefined;
      const flags = /flags:<([A-Za-z0-9_,]*)>/.exec(header[2])?.[1].split(',') ?? [];
      if (header[1] === 'RTM_IFINFO') return this.linkEvent(header[2], flags);
      if (WITH_ADDRESSES.has(header[1])) this.pending = { type: header[1], flags };
      return undefined;
    }
    const message = this.pending;
    if (message === undefined) return undefined;
    const sockaddrs = SOCKADDRS.exec(text);
    if (sockaddrs !== null) {
      message.names = sockaddrs[1].split(',');
      return undefined;
    }
    // The addresses' line, the only one that starts with a space; anything else but "locks:" ends the message.
    if (raw.startsWith(' ') && message.names !== undefined) {
      this.pending = undefined;
      return messageEvent(message, addressesOf(message.names, raw.slice(1)));
    }
    if (!text.startsWith('locks:')) this.pending = undefined;
    return undefined;
  }

  private linkEvent(rest: string, flags: string[]): MonitorEvent | undefined {
    const index = /if# (\d+)/.exec(rest);
    if (index === null) return undefined;
    const device = this.interfaceName(Number(index[1])) ?? `if#${index[1]}`;
    // IFF_UP is the administrator's; IFF_RUNNING the driver's (the link is there).
    return { kind: 'link', device, up: flags.includes('UP') && flags.includes('RUNNING') };
  }
}

/** The messages whose addresses say what changed. */
const WITH_ADDRESSES = new Set(['RTM_NEWADDR', 'RTM_DELADDR', 'RTM_ADD', 'RTM_DELETE', 'RTM_CHANGE']);

function messageEvent(message: Pending, addresses: Map<string, string>): MonitorEvent | undefined {
  if (message.type === 'RTM_NEWADDR' || message.type === 'RTM_DELADDR') {
    const address = (addresses.get('IFA') ?? '').replace(/%.*$/, '');
    // The interface prints as its name, then its link-layer address behind a colon.
    const device = (addresses.get('IFP') ?? '').split(':')[0];
    return { kind: 'address', deleted: message.type === 'RTM_DELADDR', device, address };
  }
  // A route scoped to one interface (IFSCOPE) serves only sockets bound to it, which ours are not.
  if (message.flags.includes('HOST') || message.flags.includes('IFSCOPE')) return undefined;
  const destination = addresses.get('DST');
  const isDefault = destination === 'default' || destination === '0.0.0.0' || destination === '::';
  return isDefault ? { kind: 'route', deleted: message.type === 'RTM_DELETE', isDefault: true } : undefined;
}

/** Pairs each name of "sockaddrs: <...>" with its address on the line that follows. */
export function addressesOf(names: string[], line: string): Map<string, string> {
  const words = line.split(' ');
  const values: string[] = [];
  for (let i = 0; i < words.length; i++) {
    let value = words[i];
    // "(family)" and the hexadecimal words after it are one address.
    if (/^\(\d+\)$/.test(value)) while (i + 1 < words.length && /^[0-9a-f]{1,4}$/.test(words[i + 1])) value += ` ${words[++i]}`;
    values.push(value);
  }
  const byName = new Map<string, string>();
  names.forEach((name, i) => {
    if (i < values.length) byName.set(name, values[i]);
  });
  return byName;
}

/**
 * The interface with this index. getifaddrs gives no indexes, but an IPv6
 * link-local address's scope is its interface's index (KAME, and Linux).
 */
export function nameOfIndex(index: number): string | undefined {
  for (const [name, list] of Object.entries(networkInterfaces())) {
    if (list?.some((a) => a.family === 'IPv6' && a.scopeid === index && a.address.startsWith('fe80:'))) return name;
  }
  return undefined;
}
