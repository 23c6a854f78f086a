// A real network on this kernel for tests: a client host and one or more
// server hosts, each a network namespace, joined by veth pairs through a
// router namespace that forwards between them, with its own nftables table
// for faults.
//
//   client (10.1.1.2/24) ── eth0 ═ to-client ── router ── to-server  ═ eth0 ── server  (10.2.2.2/24)
//          (10.3.1.2/24) ── eth1 ═ to-cell ───┘   (with a cellular uplink)
//                                                  ├───── to-server1 ═ eth0 ── server1 (10.2.3.2/24)
//                                                  └───── ...                  serverI (10.2.(I+2).2/24)
//
// With several servers (`new NetBed({ servers: 3 })`) the router is also a
// non-sticky L4 balancer, as kube-proxy makes one: new connections to the
// service address (10.9.9.9, any port) are spread round robin over the
// servers by DNAT (`numgen inc mod N`); conntrack keeps each connection on
// its server, nothing keeps a client on one across connections. Servers
// reach each other directly through the router.
//
// Faults act where they would in the world: a black hole or a reset is a
// rule on the router that matches the client's traffic (node-to-node
// traffic passes unless asked otherwise), a move removes the client's
// address and gives it one on another subnet, a link goes down on the
// client's side, a bandwidth limit is a tbf qdisc on the router. Everything
// a bed creates lives inside its namespaces, so deleting them removes every
// veth, route, address, qdisc and nftables table with them; a bed deletes
// them when destroyed, when its process exits or is interrupted, and the
// next bed deletes those of a process that was killed before it could.
//
// Needs root (CI runs as root); `netbedSkip()` says why not, for tests to skip.

import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { programs } from '../support/which.js';

const PREFIX = 'rkbed';
const NFT_TABLE = 'rkbed';

/** A host of the bed: the client, or a server ('server' is server 0, 'server1' server 1, ...). */
export type HostName = 'client' | 'server' | `server${number}`;

/** The name of server `index`'s host. */
export const serverHost = (index: number): HostName => (index === 0 ? 'server' : `server${index}`);

/** The virtual service address that the router balances over the servers. */
export const SERVICE_ADDRESS = '10.9.9.9';

/** Which traffic a fault rule matches: the client's (to or from it; the default), or everything the router forwards. */
export type FaultScope = 'client' | 'all';

export interface NetBedOptions {
  /** How many server hosts (default 1). */
  servers?: number;
  /**
   * How the balancer picks a server for a new connection: in turn (`numgen
   * inc`, the default) or at random (`numgen random`, as kube-proxy's
   * nftables mode). In turn, clients that reconnect in the order they first
   * connected tend to land where they were; at random two resumes in three
   * land elsewhere with three servers.
   */
  spread?: 'inc' | 'random';
  /**
   * A second uplink on the client, "cellular" (eth1, 10.3.1.2/24 via the
   * router's to-cell), beside its "wifi" (eth0). The default route stays on
   * wifi until useUplink('cellular'); the fault rules act on wifi only.
   */
  cellular?: boolean;
}

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
const CELLULAR: Subnet = { host: '10.3.1.2', gateway: '10.3.1.1' };
const serverSubnet = (index: number): Subnet => ({ host: `10.2.${index + 2}.2`, gateway: `10.2.${index + 2}.1` });
/** The router's side of server `index`'s link. */
const serverSide = (index: number): string => (index === 0 ? 'to-server' : `to-server${index}`);

export class NetBed {
  /** Namespace names: client, router, server (server 0), and server1... when there are more. */
  readonly ns: { client: string; server: string; router: string } & Record<string, string>;
  /** How many server hosts. */
  readonly servers: number;
  /** Each server's address, by index; they never change. */
  readonly serverAddresses: string[];
  /** Server 0's address. */
  readonly serverAddress: string;
  /** The address the router balances over every server, round robin per new connection. */
  readonly serviceAddress = SERVICE_ADDRESS;
  private client: Subnet = clientSubnet(1);
  private moves = 1;
  private destroyed = false;

  /** How the balancer picks a server (NetBedOptions.spread). */
  readonly spread: 'inc' | 'random';
  /** The client's cellular uplink (NetBedOptions.cellular), if it has one. */
  readonly cellular: Subnet | undefined;

  constructor({ servers = 1, spread = 'inc', cellular = false }: NetBedOptions = {}) {
    if (!Number.isInteger(servers) || servers < 1 || servers > 200) throw new RangeError(`servers must be an integer from 1 to 200, got ${servers}`);
    hookExit();
    sweepLeftovers();
    const id = `${PREFIX}${process.pid}-${++beds}`;
    this.servers = servers;
    this.spread = spread;
    this.cellular = cellular ? CELLULAR : undefined;
    this.serverAddresses = Array.from({ length: servers }, (_, i) => serverSubnet(i).host);
    this.serverAddress = this.serverAddresses[0];
    this.ns = { client: `${id}-c`, server: `${id}-s`, router: `${id}-r` };
    for (let i = 1; i < servers; i++) this.ns[serverHost(i)] = `${id}-s${i}`;
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

  /** The hosts' names: the client, then the servers in order. */
  get hosts(): HostName[] {
    return ['client', ...Array.from({ length: this.servers }, (_, i) => serverHost(i))];
  }

  /** The namespace of `host`; throws on a host this bed does not have. */
  private namespaceOf(host: HostName): string {
    const ns = this.ns[host];
    if (ns === undefined || (host as string) === 'router') throw new RangeError(`this bed has no host '${host}' (hosts: ${this.hosts.join(', ')})`);
    return ns;
  }

  private build(): void {
    const { client, router } = this.ns;
    for (const ns of Object.values(this.ns)) {
      run('ip', ['netns', 'add', ns]);
      this.ip(ns, 'link', 'set', 'lo', 'up');
    }
    this.sysctl(router, 'net.ipv4.ip_forward', '1');
    const links: [string, string, Subnet][] = [[client, 'to-client', this.client]];
    for (let i = 0; i < this.servers; i++) links.push([this.ns[serverHost(i)], serverSide(i), serverSubnet(i)]);
    for (const [host, side, subnet] of links) {
      // Made inside the router, the peer moved into the host: no name is ever taken in the root namespace.
      this.ip(router, 'link', 'add', side, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', host);
      this.ip(router, 'addr', 'add', `${subnet.gateway}/24`, 'dev', side);
      this.ip(router, 'link', 'set', side, 'up');
      this.ip(host, 'addr', 'add', `${subnet.host}/24`, 'dev', 'eth0');
      this.ip(host, 'link', 'set', 'eth0', 'up');
      this.ip(host, 'route', 'add', 'default', 'via', subnet.gateway);
    }
    if (this.cellular !== undefined) {
      this.ip(router, 'link', 'add', 'to-cell', 'type', 'veth', 'peer', 'name', 'eth1', 'netns', client);
      this.ip(router, 'addr', 'add', `${this.cellular.gateway}/24`, 'dev', 'to-cell');
      this.ip(router, 'link', 'set', 'to-cell', 'up');
      this.ip(client, 'addr', 'add', `${this.cellular.host}/24`, 'dev', 'eth1');
      this.ip(client, 'link', 'set', 'eth1', 'up');
    }
    this.nft(`add table inet ${NFT_TABLE}`);
    this.nft(`add chain inet ${NFT_TABLE} forward { type filter hook forward priority 0; policy accept; }`);
    // The balancer: NAT rules see only a connection's first packet, so each new connection
    // takes the next server and conntrack keeps the rest of it there (kube-proxy's nftables mode).
    const servers = this.serverAddresses.map((address, i) => `${i} : ${address}`).join(', ');
    this.nft(`add chain inet ${NFT_TABLE} prerouting { type nat hook prerouting priority dstnat; policy accept; }`);
    this.nft(
      `add rule inet ${NFT_TABLE} prerouting ip daddr ${SERVICE_ADDRESS} dnat ip to numgen ${this.spread} mod ${this.servers} map { ${servers} }`,
    );
  }

  ip(ns: string, ...args: string[]): string {
    return run('ip', ['-n', ns, ...args]);
  }

  sysctl(ns: string, key: string, value: string): void {
    run('ip', ['netns', 'exec', ns, 'sysctl', '-qw', `${key}=${value}`]);
  }

  /** Sets a sysctl on every host, the client and each server (tcp_retries2, for one). */
  hostSysctl(key: string, value: string): void {
    for (const host of this.hosts) this.sysctl(this.namespaceOf(host), key, value);
  }

  private nft(command: string): void {
    run('ip', ['netns', 'exec', this.ns.router, 'nft', command]);
  }

  /**
   * Starts `command` inside a host. `ip netns exec` execs it, so the child's
   * pid is the command's own: kill() reaches it, SIGKILL included.
   */
  spawn(host: HostName, command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
    return spawn('ip', ['netns', 'exec', this.namespaceOf(host), command, ...args], options);
  }

  /** Starts `command` on server `index` (0 is 'server'). */
  spawnOn(index: number, command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
    return this.spawn(serverHost(index), command, args, options);
  }

  /**
   * The host dies: SIGKILL to every process running in it (its sockets
   * close as the kernel closes a killed process's). Returns their pids.
   */
  killHost(host: HostName): number[] {
    const pids = run('ip', ['netns', 'pids', this.namespaceOf(host)])
      .split('\n')
      .filter(Boolean)
      .map(Number);
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {}
    }
    return pids;
  }

  // ---- faults --------------------------------------------------------------------------------

  /** Adds `verdict` to the forward chain for `scope`'s traffic, both ways. */
  private fault(scope: FaultScope, match: string, verdict: string, comment: string): void {
    if (scope === 'all') {
      this.nft(`add rule inet ${NFT_TABLE} forward ${match} counter ${verdict} comment "${comment}"`);
      return;
    }
    // The client's side of the router, whatever its address: it survives moves and spares node-to-node traffic.
    for (const dir of ['iifname', 'oifname']) {
      this.nft(`add rule inet ${NFT_TABLE} forward ${dir} "to-client" ${match} counter ${verdict} comment "${comment}"`);
    }
  }

  /** The router forwards nothing of `scope`'s traffic either way, and tells nobody: packets vanish. */
  blackhole(scope: FaultScope = 'client'): void {
    this.fault(scope, '', 'drop', 'blackhole');
  }

  /** The router answers every TCP segment of `scope`'s traffic with a reset (both ends get one when they next send). */
  reject(scope: FaultScope = 'client'): void {
    this.fault(scope, 'meta l4proto tcp', 'reject with tcp reset', 'reset');
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

  /**
   * The client's default route moves to `uplink` (needs NetBedOptions.cellular),
   * as a phone's does when Wi-Fi goes and comes back. Both keep their
   * addresses; new connections leave from the uplink's.
   */
  useUplink(uplink: 'wifi' | 'cellular'): string {
    if (this.cellular === undefined) throw new Error('this bed has no cellular uplink (new NetBed({ cellular: true }))');
    const [via, dev, address] =
      uplink === 'wifi' ? [this.client.gateway, 'eth0', this.client.host] : [this.cellular.gateway, 'eth1', this.cellular.host];
    this.ip(this.ns.client, 'route', 'replace', 'default', 'via', via, 'dev', dev);
    return address;
  }

  /** The client's interface goes down (cable out, Wi-Fi off): its routes go with it. */
  linkDown(): void {
    this.ip(this.ns.client, 'link', 'set', 'eth0', 'down');
  }

  /** The client's interface comes back, and with it its default route. */
  linkUp(): void {
    this.interfaceUp();
    this.restoreDefaultRoute();
  }

  /** The client's interface comes back without its default route (which went with it), as before a DHCP lease. */
  interfaceUp(): void {
    this.ip(this.ns.client, 'link', 'set', 'eth0', 'up');
  }

  /** The client's default route comes back through its gateway. */
  restoreDefaultRoute(): void {
    this.ip(this.ns.client, 'route', 'replace', 'default', 'via', this.client.gateway);
  }

  /** Limits what the router forwards to each host to `mbit` megabits per second (tbf; node-to-node traffic too). */
  shape(mbit: number): void {
    for (const side of ['to-client', ...Array.from({ length: this.servers }, (_, i) => serverSide(i))]) {
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
