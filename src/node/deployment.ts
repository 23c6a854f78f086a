// A server's place in a deployment of several nodes: the options that name
// the other nodes (a static list, or a directory in Redis), checked, and the
// directory they make. Without them a server is a deployment of one: it
// relays nothing and answers every link itself.

import type { AddressInfo } from 'node:net';
import { RocksError } from '../protocol/errors.js';
import { type NodeAddress, type NodeDirectory, nodeAddressProblem, nodeIdProblem, type PeerEntry, StaticDirectory } from './directory.js';
import { RedisDirectory } from './redis-directory.js';

export interface DeploymentOptions {
  /**
   * The other nodes of the deployment (this one may be listed too): a resume
   * for a session one of them holds is relayed to it. Every node must be
   * able to reach every other at the address given, and relays are taken
   * only from these addresses.
   */
  peers?: readonly PeerEntry[];
  /**
   * Or: a Redis where the nodes find each other (redis://HOST:PORT). Each
   * node keeps one key with a lease there; no per-session writes. If Redis
   * goes away, links and local resumes go on, and relays use the addresses
   * last known.
   */
  directory?: string;
  /** With `directory`: where the other nodes reach this one (default: the listening address, if not a wildcard). */
  advertise?: NodeAddress;
}

/** The directory the options describe, or undefined for a server on its own. */
export function openDirectory(options: DeploymentOptions, nodeId: number): NodeDirectory | undefined {
  if (options.peers !== undefined && options.directory !== undefined) throw invalid('give peers or directory, not both');
  if (options.advertise !== undefined) {
    if (options.directory === undefined) throw invalid('advertise goes with directory');
    const problem = nodeAddressProblem(options.advertise);
    if (problem) throw invalid(`advertise: ${problem}`);
  }
  if (options.directory !== undefined) {
    if (typeof options.directory !== 'string' || !/^rediss?:\/\//.test(options.directory)) {
      throw invalid(`directory must be a redis:// or rediss:// URL, got ${JSON.stringify(options.directory)}`);
    }
    return new RedisDirectory({ url: options.directory, nodeId, advertise: options.advertise });
  }
  if (options.peers === undefined) return undefined;
  if (!Array.isArray(options.peers)) throw invalid('peers must be an array of { nodeId, host, port }');
  const seen = new Set<number>();
  for (const p of options.peers) {
    const problem = nodeIdProblem(p?.nodeId) ?? nodeAddressProblem(p);
    if (problem) throw invalid(`peers: ${problem}`);
    if (seen.has(p.nodeId)) throw invalid(`peers names node ${p.nodeId} twice`);
    seen.add(p.nodeId);
  }
  return new StaticDirectory(options.peers.filter((p) => p.nodeId !== nodeId));
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
