// A real network on this kernel for tests: a client host and a server host,
// each a network namespace, joined by veth pairs through a router namespace
// that forwards between them, with its own nftables table for faults.
//
//   client (10.1.1.2/24) ── eth0 ═ to-client ── router ── to-server ═ eth0 ── server (10.2.2.2/24)
//
// Faults act where they would in the world: a black hole or a reset is a
// rule on the router, a move removes the client's address and gives it one
// on another subnet, a link goes down on the client's side, a bandwidth
// limit is a tbf qdisc on the router. Everything a bed creates lives inside
// its three namespaces, so deleting them removes every veth, route, address,
// qdisc and nftables table with them; a bed deletes them when destroyed, when
// its process exits or is interrupted, and the next bed deletes those of a
// process that was killed before it could.
//
// Needs root (CI runs as root); `netbedSkip()` says why not, for tests to skip.

import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { programs } from '../support/which.js';

const PREFIX = 'rkbed';
const NFT_TABLE = 'rkbed';

export type HostName = 'client' | 'server';

/** Why network-namespace tests cannot run here, or undefined when they can. */
export function netbedSkip(): string | undefined {
  if (process.platform !== 'linux') return 'network namespaces need Linux';
  if (process.getuid?.() !== 0) return 'network namespaces need root (CI runs as root; run `sudo npm test` locally)';
  // As root npm test installs them; missing ones fail the test there rather than skip it.
  return programs('ip', 'tc', 'nft').skip;
}

function run(command: string, args: string[]): string {
  return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** The namespaces of beds, by the pid of the process that made them. */
function bedNamespaces(): { name: string; pid: number }[] {
  const out: { name: string; pid: number }[] = [];
  for (const line of run('ip', ['netns', 'list']).split('\n')) {
    const name = line.split(' ')[0];
    const m = new RegExp(`^${PREFIX}(\\d+)-`).exec(name);
    if (m) out.push({ name, pid: Number(m[1]) });
  }
  return out;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Kills what runs in `ns`, then deletes it (and with it its links, routes and nftables). */
function deleteNamespace(ns: string): void {
  try {
    for (const pid of run('ip', ['netns', 'pids', ns]).split('\n').filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {}
    }
    run('ip', ['netns', 'del', ns]);
  } catch {}
}

/** Deletes the namespaces of beds whose process is gone (a run that was killed). */
export function sweepLeftovers(): string[] {
  const swept = bedNamespaces().filter((n) => n.pid !== process.pid && !alive(n.pid));
  for (const n of swept) deleteNamespace(n.name);
  return swept.map((n) => n.name);
}

/** Every bed's namespaces this process still has, deleted at exit whatever happens. */
const live = new Set<NetBed>();
let hooked = false;
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const bed of live) bed.destroy();
  });
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      for (const bed of live) bed.destroy();
      process.kill(process.pid, signal);
    });
  }
}

let beds = 0;

/** An address on a subnet: the host's, its router's, and the prefix length. */
interface Subnet {
  host: string;
  gateway: string;
}

const clientSubnet = (n: number): Subnet => ({ host: `10.1.${n}.2`, gateway: `10.1.${n}.1` });
const SERVER: Subnet = { host: '10.2.2.2', gateway: '10.2.2.1' };

export class NetBed {
  /** Namespace names. */
  readonly ns: Record<HostName | 'router', string>;
  /** The server's address, which never changes. */
  readonly serverAddress = SERVER.host;
  private client: Subnet = clientSubnet(1);
  private moves = 1;
  private destroyed = false;

  constructor() {
    hookExit();
    sweepLeftovers();
    const id = `${PREFIX}${process.pid}-${++beds}`;
    this.ns = { client: `${id}-c`, server: `${id}-s`, router: `${id}-r` };
    live.add(this);
    try {
      this.build();
    } catch (err) {
      this.destroy();
      throw err;
    }
  }

  /** The client's current address. */
  get clientAddress(): string {
    return this.client.host;
  }

  private build(): void {
    const { client, server, router } = this.ns;
    for (const ns of [client, server, router]) {
      run('ip', ['netns', 'add', ns]);
      this.ip(ns, 'link', 'set', 'lo', 'up');
    }
    this.sysctl(router, 'net.ipv4.ip_forward', '1');
    // Made inside the router, the peer moved into the host: no name is ever taken in the root namespace.
    this.ip(router, 'link', 'add', 'to-client', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', client);
    this.ip(router, 'link', 'add', 'to-server', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', server);
    for (const [host, side, subnet] of [
      [client, 'to-client', this.client],
      [server, 'to-server', SERVER],
    ] as const) {
      this.ip(router, 'addr', 'add', `${subnet.gateway}/24`, 'dev', side);
      this.ip(router, 'link', 'set', side, 'up');
      this.ip(host, 'addr', 'add', `${subnet.host}/24`, 'dev', 'eth0');
      this.ip(host, 'link', 'set', 'eth0', 'up');
      this.ip(host, 'route', 'add', 'default', 'via', subnet.gateway);
    }
    this.nft(`add table inet ${NFT_TABLE}`);
    this.nft(`add chain inet ${NFT_TABLE} forward { type filter hook forward priority 0; policy accept; }`);
  }

  ip(ns: string, ...args: string[]): string {
    return run('ip', ['-n', ns, ...args]);
  }

  sysctl(ns: string, key: string, value: string): void {
    run('ip', ['netns', 'exec', ns, 'sysctl', '-qw', `${key}=${value}`]);
  }

  /** Sets a sysctl on both hosts (tcp_retries2, for one). */
  hostSysctl(key: string, value: string): void {
    this.sysctl(this.ns.client, key, value);
    this.sysctl(this.ns.server, key, value);
  }

  private nft(command: string): void {
    run('ip', ['netns', 'exec', this.ns.router, 'nft', command]);
  }

  /** Starts `command` inside a host. */
  spawn(host: HostName, command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
    return spawn('ip', ['netns', 'exec', this.ns[host], command, ...args], options);
  }

  // ---- faults --------------------------------------------------------------------------------

  /** The router forwards nothing either way, and tells nobody: packets vanish. */
  blackhole(): void {
    this.nft(`add rule inet ${NFT_TABLE} forward counter drop comment "blackhole"`);
  }

  /** The router answers every TCP segment it would forward with a reset (both ends get one when they next send). */
  reject(): void {
    this.nft(`add rule inet ${NFT_TABLE} forward meta l4proto tcp counter reject with tcp reset comment "reset"`);
  }

  /** Removes every fault rule: the path works again. */
  heal(): void {
    this.nft(`flush chain inet ${NFT_TABLE} forward`);
  }

  /** Packets the fault rules dropped or rejected so far. */
  faultCounter(): number {
    const listing = run('ip', ['netns', 'exec', this.ns.router, 'nft', 'list', 'chain', 'inet', NFT_TABLE, 'forward']);
    return [...listing.matchAll(/counter packets (\d+)/g)].reduce((sum, m) => sum + Number(m[1]), 0);
  }

  /**
   * The client moves: its address is removed and it gets one on a new
   * subnet (as when a laptop changes networks). Connections bound to the old
   * address can never send again. Returns the new address.
   */
  moveClient(): string {
    const old = this.client;
    const next = clientSubnet(++this.moves);
    this.ip(this.ns.router, 'addr', 'add', `${next.gateway}/24`, 'dev', 'to-client');
    this.ip(this.ns.client, 'addr', 'del', `${old.host}/24`, 'dev', 'eth0');
    this.ip(this.ns.client, 'addr', 'add', `${next.host}/24`, 'dev', 'eth0');
    this.ip(this.ns.client, 'route', 'replace', 'default', 'via', next.gateway);
    this.ip(this.ns.router, 'addr', 'del', `${old.gateway}/24`, 'dev', 'to-client');
    this.client = next;
    return next.host;
  }

  /** The client's interface goes down (cable out, Wi-Fi off): its routes go with it. */
  linkDown(): void {
    this.ip(this.ns.client, 'link', 'set', 'eth0', 'down');
  }

  /** The client's interface comes back, and with it its default route. */
  linkUp(): void {
    this.ip(this.ns.client, 'link', 'set', 'eth0', 'up');
    this.ip(this.ns.client, 'route', 'replace', 'default', 'via', this.client.gateway);
  }

  /** Limits what the router forwards to each host to `mbit` megabits per second (tbf). */
  shape(mbit: number): void {
    for (const side of ['to-client', 'to-server']) {
      run('tc', ['-n', this.ns.router, 'qdisc', 'replace', 'dev', side, 'root', 'tbf', 'rate', `${mbit}mbit`, 'burst', '64kb', 'latency', '100ms']);
    }
  }

  // ---- teardown ------------------------------------------------------------------------------

  /** Kills what runs in the bed and deletes its namespaces. Safe to call twice, and from an exit handler. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    live.delete(this);
    for (const ns of Object.values(this.ns)) deleteNamespace(ns);
  }

  /** What of this bed still exists (namespaces), for tests of the teardown. */
  leftovers(): string[] {
    const names = new Set(Object.values(this.ns));
    return bedNamespaces()
      .filter((n) => names.has(n.name))
      .map((n) => n.name);
  }
}
