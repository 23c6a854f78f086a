// How the nodes of a deployment find each other (issue 15, many hosts): a
// node that receives a resume for a session another node owns relays the
// link to that node's address, and a node accepts relayed links only from
// the deployment's members. A directory answers both from what it knows now,
// synchronously, so that routing a link never waits on a network round trip
// in the common case; resolve() may ask once more on a miss.
//
// StaticDirectory serves a fixed peer list (rock serve --peers); the Redis
// one (redis-directory.ts) a list that nodes keep themselves under leases.

import { lookup } from 'node:dns/promises';
import { EventEmitter } from 'node:events';
import { type AddressInfo, BlockList, isIP } from 'node:net';
import { MAX_NODE_ID } from '../protocol/routing.js';

/** Where a node accepts links, relayed ones included. `host` is an IP address or a DNS name. */
export interface NodeAddress {
  host: string;
  port: number;
}

export interface PeerEntry extends NodeAddress {
  nodeId: number;
}

export interface DirectoryEvents {
  /**
   * Something the directory survives and goes on without: a bad entry, a
   * lost Redis, a name that does not resolve. Emitted only while someone
   * listens (a directory never crashes a process over these), once per
   * cause rather than on every retry.
   */
  error: [err: Error];
  /** A node's address became known or changed (an address), or the node left (undefined). */
  change: [nodeId: number, address: NodeAddress | undefined];
  /** The directory's store was lost (false) or is back (true); StaticDirectory never emits it. */
  reachable: [reachable: boolean];
}

export interface NodeDirectory extends EventEmitter<DirectoryEvents> {
  /** The node's address from what is known now, or undefined. */
  addressOf(nodeId: number): NodeAddress | undefined;
  /** As addressOf, but on a miss may ask the directory's store (at most once per refresh for a given id). */
  resolve(nodeId: number): Promise<NodeAddress | undefined>;
  /** Is `ip` (a link's remoteAddress; IPv4-mapped IPv6 accepted) an address of one of the deployment's nodes? */
  isMember(ip: string): boolean;
  /** Whether what it says now is current: false while its store (Redis) is away and it answers from the last entries read. */
  readonly reachable: boolean;
  /**
   * Learns the members (and registers this node, for a directory that does);
   * rejects with a clear error if it cannot. `listening` is the server's
   * address once it listens (net.Server.address()): where this node is
   * reached, unless told otherwise.
   */
  start(listening?: AddressInfo | string | null): Promise<void>;
  /** Stops refreshing (and withdraws this node, for a directory that registers it). */
  close(): Promise<void>;
}

/** Why `nodeId` is not a node id, or undefined. */
export function nodeIdProblem(nodeId: unknown): string | undefined {
  if (typeof nodeId !== 'number' || !Number.isInteger(nodeId) || nodeId < 0 || nodeId > MAX_NODE_ID) {
    return `node id ${JSON.stringify(nodeId)} is not an integer 0-${MAX_NODE_ID}`;
  }
  return undefined;
}

// A DNS name: dot-separated labels of letters, digits, hyphens and underscores
// (RFC 1123, plus the underscores that Docker and Compose service names use).
const HOST_NAME = /^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$/;

/** Why `value` is not a NodeAddress (an IP or DNS name, and a port 1-65535), or undefined. */
export function nodeAddressProblem(value: unknown): string | undefined {
  if (typeof value !== 'object' || value === null) return `expected {host, port}, got ${JSON.stringify(value)}`;
  const { host, port } = value as { host?: unknown; port?: unknown };
  if (typeof host !== 'string' || (isIP(host) === 0 && !HOST_NAME.test(host)))
    return `host ${JSON.stringify(host)} is not an IP address or a DNS name`;
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) return `port ${JSON.stringify(port)} is not 1-65535`;
  return undefined;
}

const sameAddress = (a: NodeAddress | undefined, b: NodeAddress | undefined): boolean => a?.host === b?.host && a?.port === b?.port;

/**
 * The known nodes and their addresses, with the IP addresses they stand
 * for: names are resolved with dns.lookup (all addresses) when they first
 * appear and again on refreshNames(), so isMember stays synchronous.
 */
export class Membership {
  private readonly addresses = new Map<number, NodeAddress>();
  /** Each host in use and its IP addresses (an IP host stands for itself; a name for what it resolved to, empty until then). */
  private readonly ips = new Map<string, string[]>();
  private members = new BlockList();
  /** Hosts whose last lookup failed, so a failure is reported once and not on every retry. */
  private readonly failing = new Set<string>();

  constructor(
    private readonly onChange: (nodeId: number, address: NodeAddress | undefined) => void,
    private readonly onError: (err: Error) => void,
  ) {}

  get(nodeId: number): NodeAddress | undefined {
    return this.addresses.get(nodeId);
  }

  ids(): number[] {
    return [...this.addresses.keys()];
  }

  /** Records `nodeId` at `address`; a name is looked up in the background (the returned promise, which never rejects). */
  set(nodeId: number, address: NodeAddress): Promise<void> {
    if (sameAddress(this.addresses.get(nodeId), address)) return Promise.resolve();
    this.addresses.set(nodeId, { host: address.host, port: address.port });
    this.onChange(nodeId, address);
    this.forgetUnusedHosts();
    if (this.ips.has(address.host)) return Promise.resolve();
    if (isIP(address.host) !== 0) {
      this.ips.set(address.host, [address.host]);
      this.rebuild();
      return Promise.resolve();
    }
    this.ips.set(address.host, []);
    return this.lookUp(address.host);
  }

  delete(nodeId: number): void {
    if (!this.addresses.delete(nodeId)) return;
    this.onChange(nodeId, undefined);
    this.forgetUnusedHosts();
  }

  isMember(ip: string): boolean {
    const bare = ip.replace(/%.*$/, ''); // a link-local address's zone is not part of the node's address
    const family = isIP(bare);
    return family !== 0 && this.members.check(bare, family === 4 ? 'ipv4' : 'ipv6');
  }

  /** Looks every name up again (a node's name may move to another IP); never rejects. */
  async refreshNames(): Promise<void> {
    await Promise.all([...this.ips.keys()].filter((host) => isIP(host) === 0).map((host) => this.lookUp(host)));
  }

  private async lookUp(host: string): Promise<void> {
    let found: string[];
    try {
      found = (await lookup(host, { all: true })).map((a) => a.address);
    } catch (err) {
      if (!this.failing.has(host)) {
        this.failing.add(host);
        this.onError(
          new Error(`node directory: cannot resolve ${host}: ${(err as Error).message}; links from it are not accepted until it resolves`),
        );
      }
      return;
    }
    this.failing.delete(host);
    if (!this.ips.has(host)) return; // no node uses it any more
    this.ips.set(host, found);
    this.rebuild();
  }

  private forgetUnusedHosts(): void {
    const used = new Set([...this.addresses.values()].map((a) => a.host));
    let changed = false;
    for (const host of this.ips.keys()) {
      if (used.has(host)) continue;
      this.ips.delete(host);
      this.failing.delete(host);
      changed = true;
    }
    if (changed) this.rebuild();
  }

  // A BlockList cannot drop an address, so it is made anew on each change (a deployment has tens of nodes, not millions).
  private rebuild(): void {
    const members = new BlockList();
    for (const ip of new Set([...this.ips.values()].flat())) members.addAddress(ip, isIP(ip) === 4 ? 'ipv4' : 'ipv6');
    this.members = members;
  }
}

/** Reports an error only to listeners: a directory's troubles are never a reason to crash. */
export function emitIfHeard(emitter: EventEmitter<DirectoryEvents>, err: Error): void {
  if (emitter.listenerCount('error') > 0) emitter.emit('error', err);
}

export interface StaticDirectoryOptions {
  /** How often to look the peers' names up again (ms; 0: only at start). Default 30 s. */
  resolveEveryMs?: number;
}

/** A fixed list of peers (rock serve --peers ID=HOST:PORT,...). */
export class StaticDirectory extends EventEmitter<DirectoryEvents> implements NodeDirectory {
  private readonly membership: Membership;
  private readonly peers: readonly PeerEntry[];
  private readonly byId = new Map<number, NodeAddress>();
  private readonly resolveEveryMs: number;
  private timer: NodeJS.Timeout | undefined;
  /** A static list is always current. */
  readonly reachable = true;

  /** Throws RangeError on a bad node id, host or port, or a node id listed twice. */
  constructor(peers: readonly PeerEntry[], { resolveEveryMs = 30_000 }: StaticDirectoryOptions = {}) {
    super();
    const seen = new Set<number>();
    for (const peer of peers) {
      const problem = nodeIdProblem(peer.nodeId) ?? nodeAddressProblem(peer);
      if (problem !== undefined) throw new RangeError(`peer ${JSON.stringify(peer)}: ${problem}`);
      if (seen.has(peer.nodeId)) throw new RangeError(`node id ${peer.nodeId} is listed twice among the peers`);
      seen.add(peer.nodeId);
    }
    this.peers = peers.map((p) => ({ ...p }));
    for (const p of this.peers) this.byId.set(p.nodeId, { host: p.host, port: p.port });
    this.resolveEveryMs = resolveEveryMs;
    // Only for isMember: addressOf answers from the list itself, started or not.
    this.membership = new Membership(
      () => {},
      (err) => emitIfHeard(this, err),
    );
  }

  addressOf(nodeId: number): NodeAddress | undefined {
    return this.byId.get(nodeId);
  }

  resolve(nodeId: number): Promise<NodeAddress | undefined> {
    return Promise.resolve(this.addressOf(nodeId));
  }

  /** False for every address until start() has looked the names up. */
  isMember(ip: string): boolean {
    return this.membership.isMember(ip);
  }

  /** Resolves once every peer's name has been looked up; a name that does not resolve is an 'error' event, not a failure. */
  async start(): Promise<void> {
    await Promise.all(this.peers.map((p) => this.membership.set(p.nodeId, p)));
    if (this.resolveEveryMs > 0) {
      this.timer = setInterval(() => void this.membership.refreshNames(), this.resolveEveryMs);
      this.timer.unref();
    }
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
  }
}
