// A server's place in a deployment of several nodes: the options that name
// the other nodes (a static list, or a directory in Redis), checked, and the
// directory they make. Without them a server is a deployment of one: it
// relays nothing and answers every link itself.

import type { AddressInfo } from 'node:net';
import { RocksError } from '../protocol/errors.js';
import { MAX_NODE_ID } from '../protocol/routing.js';
import { type NodeAddress, type NodeDirectory, type PeerEntry, StaticDirectory } from './directory.js';

export interface DeploymentOptions {
  /**
   * The other nodes of the deployment (this one may be listed too): a resume
   * for a session one of them holds is relayed to it. Every node must be
   * able to reach every other at the address given.
   */
  peers?: readonly PeerEntry[];
}

/** The directory the options describe, or undefined for a server on its own. */
export function openDirectory(options: DeploymentOptions, nodeId: number): NodeDirectory | undefined {
  if (options.peers === undefined) return undefined;
  if (!Array.isArray(options.peers)) throw invalid('peers must be an array of { nodeId, host, port }');
  const seen = new Set<number>();
  for (const p of options.peers) {
    checkPeer(p);
    if (seen.has(p.nodeId)) throw invalid(`peers names node ${p.nodeId} twice`);
    seen.add(p.nodeId);
  }
  return new StaticDirectory(options.peers.filter((p) => p.nodeId !== nodeId));
}

function checkPeer(p: PeerEntry): void {
  if (typeof p !== 'object' || p === null) throw invalid(`a peer must be { nodeId, host, port }, got ${String(p)}`);
  if (!Number.isInteger(p.nodeId) || p.nodeId < 0 || p.nodeId > MAX_NODE_ID)
    throw invalid(`a peer's nodeId must be an integer from 0 to ${MAX_NODE_ID}, got ${String(p.nodeId)}`);
  if (typeof p.host !== 'string' || p.host === '') throw invalid(`peer ${p.nodeId} needs a host`);
  checkPort(p.port, `peer ${p.nodeId}'s port`);
}

function checkPort(port: unknown, what: string): void {
  if (!Number.isInteger(port) || (port as number) < 1 || (port as number) > 65535)
    throw invalid(`${what} must be an integer from 1 to 65535, got ${String(port)}`);
}

function invalid(message: string): RocksError {
  return new RocksError('ERR_ROCKS_INVALID_OPTION', message);
}

/** The address a listening server is reached at, when it names one (not a wildcard). */
export function reachableAt(address: AddressInfo | string | null): NodeAddress | undefined {
  if (address === null || typeof address === 'string') return undefined;
  if (address.address === '0.0.0.0' || address.address === '::') return undefined;
  return { host: address.address, port: address.port };
}
