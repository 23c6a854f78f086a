// The client's half of EDP: a probe, and a cache of what probes found.
//
// The probe opens a separate connection and half-closes it at once. An
// enhanced server answers with its announcement and closes; an ordinary one
// sees a connection that closed without data (harmless, like a port check)
// and at most sends its banner. A server that answers nothing within the
// probe timeout is taken for ordinary.

import { connect as netConnect, type NetConnectOpts } from 'node:net';
import { commonVersion, findAnnouncement, ROCKS, type Enhancement } from '../edp/announcement.js';

export interface Verdict {
  enhanced: boolean;
  /** Why, for logs and the 'detect' event. */
  reason: string;
  /** What the server announced, if anything. */
  announced?: Enhancement[];
}

/** Most bytes of a probe's answer we look at (an ordinary server may send a banner first). */
const PROBE_READ_LIMIT = 8192;

/**
 * Probes the server at `dial`. Rejects only when the connection itself fails
 * (refused, unreachable): that is the connection's own error, as net.connect
 * would give it.
 */
export function probe(dial: NetConnectOpts, timeout: number): Promise<Verdict> {
  return new Promise((resolve, reject) => {
    const socket = netConnect({ ...dial, allowHalfOpen: true } as NetConnectOpts);
    let received = Buffer.alloc(0);
    let connected = false;
    let timer: NodeJS.Timeout | undefined;
    const finish = (why: string): void => {
      if (timer) clearTimeout(timer);
      socket.destroy();
      const announced = findAnnouncement(received);
      if (announced === undefined) {
        resolve({ enhanced: false, reason: `ordinary server (probe: ${why})` });
      } else if (commonVersion(ROCKS, announced) === undefined) {
        const list = announced.map((e) => `${e.name} ${e.minVersion}-${e.maxVersion}`).join(', ');
        resolve({ enhanced: false, reason: `the server announces ${list}, no rocks version in common`, announced });
      } else {
        resolve({ enhanced: true, reason: 'the server announced rocks', announced });
      }
    };
    socket.once('connect', () => {
      connected = true;
      socket.end();
      timer = setTimeout(() => finish(`no answer within ${timeout} ms`), timeout);
    });
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length > PROBE_READ_LIMIT) received = received.subarray(received.length - PROBE_READ_LIMIT);
    });
    socket.once('end', () => finish('closed'));
    socket.once('error', (err) => {
      if (connected) finish(`error ${(err as NodeJS.ErrnoException).code ?? err.message}`);
      else {
        socket.destroy();
        reject(err);
      }
    });
  });
}

/** Verdicts per destination, for `ttl` ms each, so repeated connections skip the probe. */
export class DetectionCache {
  private readonly entries = new Map<string, { verdict: Verdict; expires: number }>();
  /** Probes under way, by destination. */
  private readonly probing = new Map<string, Promise<Verdict>>();

  /**
   * One probe per destination at a time: connections started together share
   * it. A thousand at once would otherwise each probe, and under that load
   * probes time out and a rocks server is taken for an ordinary one.
   */
  probeOnce(key: string, run: () => Promise<Verdict>): Promise<Verdict> {
    let p = this.probing.get(key);
    if (p === undefined) {
      p = run().finally(() => this.probing.delete(key));
      this.probing.set(key, p);
    }
    return p;
  }

  get(key: string, now = Date.now()): Verdict | undefined {
    const e = this.entries.get(key);
    if (e === undefined) return undefined;
    if (e.expires <= now) {
      this.entries.delete(key);
      return undefined;
    }
    return e.verdict;
  }

  set(key: string, verdict: Verdict, ttl: number, now = Date.now()): void {
    if (ttl <= 0) return;
    this.entries.delete(key); // keep insertion order = age
    this.entries.set(key, { verdict, expires: now + ttl });
    if (this.entries.size > 10_000) this.entries.delete(this.entries.keys().next().value as string);
  }

  invalidate(key: string): void {
    this.entries.delete(key);
  }

  clear(): void {
    this.entries.clear();
  }
}

/** The cache every socket in this process shares. */
export const detectionCache = new DetectionCache();

/** The cache key of a destination: what the application asked to connect to. */
export function destinationKey(dial: { host?: string; port?: number; path?: string }): string {
  if (dial.path !== undefined) return `unix:${dial.path}`;
  const host = dial.host ?? 'localhost';
  return host.includes(':') ? `[${host}]:${dial.port}` : `${host}:${dial.port}`;
}
