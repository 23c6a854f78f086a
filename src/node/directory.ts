// How the nodes of a deployment find each other (placeholder for the merge
// with the directory branch: a static list only).

import { EventEmitter } from 'node:events';
import { lookup } from 'node:dns/promises';
import type { AddressInfo } from 'node:net';

export interface NodeAddress {
  host: string;
  port: number;
}

export interface NodeDirectory extends EventEmitter {
  addressOf(nodeId: number): NodeAddress | undefined;
  resolve(nodeId: number): Promise<NodeAddress | undefined>;
  isMember(ip: string): boolean;
  start(listening?: AddressInfo | string | null): Promise<void>;
  close(): Promise<void>;
}

export interface PeerEntry extends NodeAddress {
  nodeId: number;
}

export class StaticDirectory extends EventEmitter implements NodeDirectory {
  private readonly byId = new Map<number, NodeAddress>();
  private readonly members = new Set<string>();

  constructor(peers: readonly PeerEntry[]) {
    super();
    for (const p of peers) this.byId.set(p.nodeId, { host: p.host, port: p.port });
  }

  addressOf(nodeId: number): NodeAddress | undefined {
    return this.byId.get(nodeId);
  }

  async resolve(nodeId: number): Promise<NodeAddress | undefined> {
    return this.byId.get(nodeId);
  }

  isMember(ip: string): boolean {
    return this.members.has(ip.startsWith('::ffff:') ? ip.slice(7) : ip);
  }

  async start(): Promise<void> {
    for (const a of this.byId.values()) {
      for (const r of await lookup(a.host, { all: true })) this.members.add(r.address);
    }
  }

  async close(): Promise<void> {}
}
