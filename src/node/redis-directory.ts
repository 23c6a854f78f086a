// A node directory kept in Redis (rock serve --directory redis://HOST:PORT).
// Each node keeps one key, prefix + node id = its address as JSON, under a
// lease (SET PX) that it renews every leaseMs / 3: a node that dies drops
// out within one lease, and nothing is written per session. Every node reads
// all the keys at start and every refreshMs, and a miss in resolve() costs
// one GET.
//
// Redis is not on any link's path: while it is away, addressOf and isMember
// answer from the last entries read, ioredis reconnects by itself, and once
// Redis is back the lease is set again (a restarted Redis has lost it).

import { EventEmitter } from 'node:events';
import type { AddressInfo } from 'node:net';
import type { Redis } from 'ioredis';
import { reachableAt } from './deployment.js';
import {
  type DirectoryEvents,
  emitIfHeard,
  Membership,
  type NodeAddress,
  type NodeDirectory,
  nodeAddressProblem,
  nodeIdProblem,
} from './directory.js';

export interface RedisDirectoryOptions {
  /** redis://[[user]:password@]HOST:PORT[/db] (rediss:// for TLS), as ioredis takes it. */
  url: string;
  /** This node's id, unique within the deployment. */
  nodeId: number;
  /**
   * Where the other nodes reach this one. Default: the address the server
   * listens on (start()'s argument), which must then not be a wildcard.
   */
  advertise?: NodeAddress;
  /** How long an entry outlives its node's last renewal (ms). Default 10 s; renewed every leaseMs / 3. */
  leaseMs?: number;
  /** The keys' prefix; the node id (decimal) follows it. Default 'rocks:node:'. */
  prefix?: string;
  /** How often to read every entry (ms). Default 3 s, or leaseMs / 2 if that is less. */
  refreshMs?: number;
  /** How long one Redis command or connection attempt may take before it counts as failed (ms). Default 2 s. */
  timeoutMs?: number;
}

// Claims or renews a key for its holder: sets it (with the lease) if it is
// free or already holds this value; else answers who holds it and for how long.
const CLAIM = `
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return false
end
return {current, redis.call('PTTL', KEYS[1])}`;

// Deletes a key only if it still holds this node's value (never another node's claim on the id).
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

/** The URL without its password, for messages. */
function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== '') u.password = '***';
    return u.toString();
  } catch {
    return url;
  }
}

/** A key's pattern for SCAN MATCH: the prefix with glob characters escaped, then anything. */
function matchPattern(prefix: string): string {
  return `${prefix.replace(/[*?[\]\\]/g, '\\$&')}*`;
}

/** The address in an entry, or why it is not one. */
function parseEntry(raw: string): NodeAddress | string {
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch (err) {
    return `not JSON (${(err as Error).message})`;
  }
  const problem = nodeAddressProblem(value);
  if (problem !== undefined) return problem;
  const { host, port } = value as NodeAddress;
  return { host, port };
}

export class RedisDirectory extends EventEmitter<DirectoryEvents> implements NodeDirectory {
  readonly nodeId: number;
  private readonly url: string;
  private advertise: NodeAddress | undefined;
  private readonly leaseMs: number;
  private readonly prefix: string;
  private readonly refreshMs: number;
  private readonly timeoutMs: number;
  /** This node's entry, exactly as written (the claim compares it byte for byte); set by start(). */
  private entry = '';
  private readonly membership: Membership;
  private redis: Redis | undefined;
  private timers: NodeJS.Timeout[] = [];
  private started = false;
  private closed = false;
  private connected = false;
  /** The last error ioredis reported, to say why a connection failed. */
  private lastRedisError: Error | undefined;
  /** Ids that resolve() found absent, not asked again until the next full read. */
  private readonly misses = new Set<number>();
  private readonly lookups = new Map<number, Promise<NodeAddress | undefined>>();
  /** Bad entries already reported (key, then raw value), so each is reported once, not on every read. */
  private readonly reported = new Map<string, string>();
  /** Who holds this node's id instead of it, while someone does. */
  private heldBy: string | undefined;
  private renewing = false;
  private refreshing = false;
  /**
   * Until then (performance.now()), a read removes no one: after Redis comes
   * back (restarted, empty), the other nodes need up to one renewal period,
   * plus their own reconnection, to set their leases again.
   */
  private keepAllUntil = 0;

  /** Throws RangeError on a bad node id, advertised address or timing. */
  constructor(options: RedisDirectoryOptions) {
    super();
    const problem = nodeIdProblem(options.nodeId) ?? (options.advertise === undefined ? undefined : nodeAddressProblem(options.advertise));
    if (problem !== undefined) throw new RangeError(`node directory: ${problem}`);
    this.nodeId = options.nodeId;
    this.url = options.url;
    if (options.advertise !== undefined) this.advertise = { host: options.advertise.host, port: options.advertise.port };
    this.leaseMs = options.leaseMs ?? 10_000;
    this.prefix = options.prefix ?? 'rocks:node:';
    this.refreshMs = options.refreshMs ?? Math.min(3000, this.leaseMs / 2);
    this.timeoutMs = options.timeoutMs ?? 2000;
    for (const [name, ms] of [
      ['leaseMs', this.leaseMs],
      ['refreshMs', this.refreshMs],
      ['timeoutMs', this.timeoutMs],
    ] as const) {
      if (!Number.isFinite(ms) || ms < 30) throw new RangeError(`node directory: ${name} ${ms} is not a duration of at least 30 ms`);
    }
    if (this.prefix === '') throw new RangeError('node directory: the key prefix may not be empty');
    this.membership = new Membership(
      (nodeId, address) => this.emit('change', nodeId, address),
      (err) => emitIfHeard(this, err),
    );
  }

  addressOf(nodeId: number): NodeAddress | undefined {
    return this.membership.get(nodeId);
  }

  isMember(ip: string): boolean {
    return this.membership.isMember(ip);
  }

  /** Whether Redis answers now (false while it is away: the last known entries serve). */
  get reachable(): boolean {
    return this.connected;
  }

  resolve(nodeId: number): Promise<NodeAddress | undefined> {
    const known = this.addressOf(nodeId);
    if (known !== undefined || !this.started || this.closed || !this.connected || this.misses.has(nodeId) || nodeIdProblem(nodeId) !== undefined) {
      return Promise.resolve(known);
    }
    let pending = this.lookups.get(nodeId);
    if (pending === undefined) {
      pending = this.lookUp(nodeId).finally(() => this.lookups.delete(nodeId));
      this.lookups.set(nodeId, pending);
    }
    return pending;
  }

  /**
   * Connects, claims this node's id and reads every entry. Rejects (and
   * leaves nothing running) when Redis cannot be reached, another live node
   * holds this id at another address, or there is no address to advertise.
   */
  async start(listening?: AddressInfo | string | null): Promise<void> {
    if (this.started || this.redis !== undefined) throw new Error('node directory: start() called twice');
    this.advertise ??= reachableAt(listening ?? null);
    if (this.advertise === undefined) {
      throw new Error(
        'node directory: no address to advertise to the other nodes: give one (rock serve --advertise HOST:PORT), ' +
          'or listen on a specific address rather than a wildcard',
      );
    }
    const advertise = this.advertise;
    this.entry = JSON.stringify(advertise);
    // Loaded here: a program that uses rocks without a directory never loads ioredis.
    const { Redis: RedisClient } = await import('ioredis');
    const redis = new RedisClient(this.url, {
      lazyConnect: true,
      // Fail a command at once while disconnected rather than queue it: every
      // use here is periodic or has a fallback (the last known entries).
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      connectTimeout: this.timeoutMs,
      commandTimeout: this.timeoutMs,
      // Back off, but try at least as often as a lease is renewed.
      retryStrategy: (attempt) => Math.min(100 * attempt, 1000, this.leaseMs / 3),
    });
    this.redis = redis;
    // Handled on the next tick, outside ioredis' own handlers: a listener of ours that
    // throws must not leave the client half way through its reconnection logic.
    redis.on('error', (err) => {
      this.lastRedisError = err;
      process.nextTick(() => this.onRedisLost());
    });
    redis.on('close', () => process.nextTick(() => this.onRedisLost()));
    redis.on('ready', () => process.nextTick(() => this.onRedisReady()));
    try {
      await redis.connect();
      this.connected = true;
      const holder = await this.claim();
      if (holder !== undefined) {
        const [current, pttl] = holder;
        throw new Error(
          `node directory: node id ${this.nodeId} is held by a live node at ${current} (this node advertises ${this.entry}); ` +
            `give each node its own node id (or wait ${pttl} ms for that lease to end if that node is gone)`,
        );
      }
      await this.refresh();
    } catch (err) {
      this.closed = true;
      redis.disconnect();
      if ((err as Error).message.startsWith('node directory:')) throw err;
      const cause = this.lastRedisError ?? (err as Error);
      throw new Error(`node directory: cannot use Redis at ${redact(this.url)}: ${cause.message}`, { cause });
    }
    void this.membership.set(this.nodeId, advertise);
    this.started = true;
    this.timers = [
      setInterval(() => void this.renew(), this.leaseMs / 3),
      setInterval(() => void this.refresh().catch(() => {}), this.refreshMs),
      setInterval(() => void this.membership.refreshNames(), 30_000),
    ];
    for (const t of this.timers) t.unref();
  }

  /** Stops renewing and deletes this node's key (if it still holds it, and Redis answers), then disconnects. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    const redis = this.redis;
    if (redis === undefined) return;
    if (this.connected) {
      try {
        await redis.eval(RELEASE, 1, this.key(this.nodeId), this.entry);
        await redis.quit();
      } catch {
        // Redis went away meanwhile: the lease ends by itself.
      }
    }
    redis.disconnect();
    this.connected = false;
  }

  private key(nodeId: number): string {
    return `${this.prefix}${nodeId}`;
  }

  /** Sets or renews this node's lease; undefined when done, else who holds the id and its remaining lease (ms). */
  private async claim(): Promise<[string, number] | undefined> {
    const result = (await this.redis!.eval(CLAIM, 1, this.key(this.nodeId), this.entry, String(Math.ceil(this.leaseMs)))) as [string, number] | null;
    return result ?? undefined;
  }

  private async renew(): Promise<void> {
    if (this.renewing || this.closed || !this.connected) return;
    this.renewing = true;
    try {
      const holder = await this.claim();
      if (holder === undefined) {
        this.heldBy = undefined;
      } else if (this.heldBy !== holder[0]) {
        // Our lease lapsed (Redis was away from us) and another node took the id: say so once, and keep trying.
        this.heldBy = holder[0];
        emitIfHeard(
          this,
          new Error(
            `node directory: node id ${this.nodeId} is now held by another node at ${holder[0]}; this node is not advertised until that lease ends`,
          ),
        );
      }
    } catch {
      // Redis is away: onRedisLost reported it, and 'ready' renews.
    } finally {
      this.renewing = false;
    }
  }

  /** Reads every entry and makes the known members match (this node always stays). Rejects if Redis does not answer. */
  private async refresh(): Promise<void> {
    if (this.refreshing || this.closed) return;
    this.refreshing = true;
    try {
      const redis = this.redis!;
      const keys = new Set<string>();
      let cursor = '0';
      do {
        const [next, batch] = await redis.scan(cursor, 'MATCH', matchPattern(this.prefix), 'COUNT', 500);
        for (const k of batch) keys.add(k);
        cursor = next;
      } while (cursor !== '0');
      const list = [...keys];
      const values = list.length === 0 ? [] : await redis.mget(list);
      const seen = new Set<number>([this.nodeId]);
      for (const [i, key] of list.entries()) {
        const raw = values[i];
        if (raw === null) continue; // its lease ended between SCAN and MGET
        const nodeId = this.nodeIdOf(key);
        if (nodeId === undefined) continue;
        if (nodeId === this.nodeId) continue; // our own address is what we advertise; a rival shows up in renew()
        if (this.accept(nodeId, key, raw)) seen.add(nodeId);
      }
      if (performance.now() >= this.keepAllUntil) {
        for (const nodeId of this.membership.ids()) if (!seen.has(nodeId)) this.membership.delete(nodeId);
      }
      this.misses.clear();
    } finally {
      this.refreshing = false;
    }
  }

  /** GET one entry that is not known yet. */
  private async lookUp(nodeId: number): Promise<NodeAddress | undefined> {
    let raw: string | null;
    try {
      raw = await this.redis!.get(this.key(nodeId));
    } catch {
      return undefined; // Redis is away: no address we do not already know
    }
    if (raw === null || nodeId === this.nodeId) {
      this.misses.add(nodeId);
      return this.addressOf(nodeId);
    }
    this.accept(nodeId, this.key(nodeId), raw);
    return this.addressOf(nodeId);
  }

  /** Takes an entry if it is good (true); a bad one is reported once and its node dropped, nothing else touched. */
  private accept(nodeId: number, key: string, raw: string): boolean {
    const parsed = parseEntry(raw);
    if (typeof parsed !== 'string') {
      this.reported.delete(key);
      void this.membership.set(nodeId, parsed);
      return true;
    }
    this.report(key, raw, `node directory: entry ${key} ignored: ${parsed}`);
    this.membership.delete(nodeId);
    return false;
  }

  /** The node id a key names, or undefined (reported once) for a key that names none. */
  private nodeIdOf(key: string): number | undefined {
    const suffix = key.slice(this.prefix.length);
    const nodeId = Number(suffix);
    if (/^(0|[1-9]\d*)$/.test(suffix) && nodeIdProblem(nodeId) === undefined) return nodeId;
    this.report(key, '', `node directory: key ${key} ignored: '${suffix}' after the prefix is not a node id`);
    return undefined;
  }

  private report(key: string, raw: string, message: string): void {
    if (this.reported.get(key) === raw) return;
    this.reported.set(key, raw);
    emitIfHeard(this, new Error(message));
  }

  private onRedisLost(): void {
    if (!this.connected) return;
    this.connected = false;
    if (this.closed) return;
    const why = this.lastRedisError === undefined ? 'connection closed' : this.lastRedisError.message;
    emitIfHeard(
      this,
      new Error(`node directory: lost Redis at ${redact(this.url)} (${why}); using the last known addresses while ioredis reconnects`),
    );
    this.emit('reachable', false);
  }

  private onRedisReady(): void {
    this.connected = true;
    this.lastRedisError = undefined;
    if (!this.started || this.closed) return; // start() claims and reads itself
    this.keepAllUntil = performance.now() + this.leaseMs;
    this.emit('reachable', true);
    // A restarted Redis has lost our lease, and others may have come or gone meanwhile.
    void this.renew();
    void this.refresh().catch(() => {});
  }
}
