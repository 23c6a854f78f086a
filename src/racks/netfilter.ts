// Everything racks puts in the kernel to steer the packets of protected
// connections into its TUN device, and takes out again: one nftables table,
// one policy-routing rule, one route table, a few per-device sysctls.
//
// A protect spec names the server end of connections: `tcp:PORT`,
// `tcp:PORT@HOST` or `tcp:PORT@NET/LEN` (IPv4 only for now). Both hosts
// install the same specs, and each marks, in a `type route` output chain,
//   - locally generated packets TO the spec (daddr/dport): a client's, and
//   - locally generated packets FROM the spec (saddr/sport): a server's replies.
// A mark set in a `type route` chain makes the kernel route the packet again
// (ip_route_me_harder), and `ip rule fwmark MARK lookup TABLE` sends it to
// the TUN. The addresses stay the hosts' real ones: the socket chose its
// source address before the packet was marked.
//
// Packets that racks writes into the TUN arrive "on" the TUN with a source
// address that the main table routes elsewhere, so strict reverse-path
// filtering would drop them. Rather than turn rp_filter off for the whole
// host (net.ipv4.conf.all.rp_filter counts as well as the device's), they
// are marked in a prerouting chain and the TUN gets src_valid_mark=1: the
// reverse-path lookup then uses the mark, finds the route through the TUN,
// and passes even in strict mode. The TUN's own rp_filter is 0 besides, and
// IPv6 is disabled on it (no router solicitations in the TUN).
//
// The ruleset is loaded with one `nft -f -` transaction (replacing any
// previous one atomically). removeLeftovers() undoes all of it, and deletes a
// TUN device that outlived its daemon; it is idempotent.

import { execFileSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import type { KernelControl } from './parts.js';

export class SpecError extends Error {
  readonly code = 'ERR_RACKS_BAD_SPEC';

  constructor(spec: string, why: string) {
    super(
      `bad protect spec ${JSON.stringify(spec)}: ${why} (expected tcp:PORT, tcp:PORT@HOST or tcp:PORT@NET/LEN, e.g. tcp:22 or tcp:5432@10.0.0.0/24)`,
    );
    this.name = 'SpecError';
  }
}

export interface ProtectSpec {
  protocol: 'tcp';
  port: number;
  /** The server's IPv4 address or network; undefined means any. */
  network?: { address: string; prefix: number };
}

/** Where racks puts things in the kernel. Every field has a default, so two daemons in one namespace need distinct ones. */
export interface RackKernelConfig {
  /** The TUN interface's name. */
  tun: string;
  /** nftables table (family inet). */
  table?: string;
  /** The fwmark given to protected packets. */
  mark?: number;
  /** Policy-routing table number. */
  routeTable?: number;
  /** Priority of the `ip rule`, before main (32766). */
  rulePriority?: number;
  /** The rack port: the daemons' own carriages, never marked. */
  port?: number;
}

// 7225 spells "rack" on a phone keypad.
export const DEFAULTS = { tun: 'rack0', table: 'rack', mark: 0x7225, routeTable: 7225, rulePriority: 7225, port: 7225 } as const;

/** The mark of packets the daemon sends out itself (raw socket): the rules let them pass. */
/** The TUN's MTU; an IPv4 packet is at most 65,535 bytes. */
export const TUN_MTU = 65_535;

export const bypassMark = (config: Partial<RackKernelConfig> = {}): number => resolve(config).mark + 1;

type Resolved = Required<RackKernelConfig>;
const resolve = (config: Partial<RackKernelConfig>): Resolved => ({ ...DEFAULTS, ...config });

// ---- specs -------------------------------------------------------------------------------------

function ipv4ToNumber(spec: string, text: string): number {
  const parts = text.split('.');
  if (parts.length !== 4 || !parts.every((p) => /^(0|[1-9]\d{0,2})$/.test(p) && Number(p) <= 255)) {
    const why = text.includes(':')
      ? `${JSON.stringify(text)} looks like IPv6, which racks does not handle yet`
      : `${JSON.stringify(text)} is not an IPv4 address (host names are not resolved)`;
    throw new SpecError(spec, why);
  }
  return parts.reduce((n, p) => n * 256 + Number(p), 0);
}

const numberToIPv4 = (n: number): string => [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');

/** Parses `tcp:PORT[@HOST|@NET/LEN]`; throws SpecError saying what is wrong. */
export function parseSpec(text: string): ProtectSpec {
  const m = /^([a-z0-9]+):([^@]*)(?:@(.*))?$/i.exec(text.trim());
  if (!m) throw new SpecError(text, 'no protocol before ":"');
  const [, protocol, portText, where] = m;
  if (protocol.toLowerCase() !== 'tcp') throw new SpecError(text, `protocol ${JSON.stringify(protocol)}: only tcp is supported`);
  if (!/^\d{1,5}$/.test(portText)) throw new SpecError(text, `port ${JSON.stringify(portText)} is not a number`);
  const port = Number(portText);
  if (port < 1 || port > 65535) throw new SpecError(text, `port ${port} is outside 1..65535`);
  const spec: ProtectSpec = { protocol: 'tcp', port };
  if (where === undefined) return spec;
  if (where === '') throw new SpecError(text, 'nothing after "@"');
  const [addressText, prefixText, ...extra] = where.split('/');
  if (extra.length > 0) throw new SpecError(text, `${JSON.stringify(where)} has more than one "/"`);
  const address = ipv4ToNumber(text, addressText);
  let prefix = 32;
  if (prefixText !== undefined) {
    if (!/^\d{1,2}$/.test(prefixText) || Number(prefixText) > 32)
      throw new SpecError(text, `prefix length ${JSON.stringify(prefixText)} is not in 0..32`);
    prefix = Number(prefixText);
  }
  const hostBits = 2 ** (32 - prefix);
  if (address % hostBits !== 0) {
    throw new SpecError(text, `${where} has host bits set; did you mean ${numberToIPv4(address - (address % hostBits))}/${prefix}?`);
  }
  spec.network = { address: addressText, prefix };
  return spec;
}

export function formatSpec(spec: ProtectSpec): string {
  if (!spec.network) return `${spec.protocol}:${spec.port}`;
  const { address, prefix } = spec.network;
  return `${spec.protocol}:${spec.port}@${address}${prefix === 32 ? '' : `/${prefix}`}`;
}

// ---- the ruleset -------------------------------------------------------------------------------

const hex = (n: number): string => `0x${n.toString(16).padStart(8, '0')}`;

/**
 * The nftables script that (re)creates racks' table for these specs; pure,
 * for tests and `--dry-run`s. Three sets, filled by the daemon as it learns:
 *   plain   hosts without a rack daemon (EDP for racks said so): their
 *           connections never come near the TUN;
 *   clients inner addresses of rack clients (server role): replies to them
 *           take the carriage;
 *   bypass  connections that need no carriage (rocks connections, which
 *           recover by themselves; connections past the limit).
 * Client side, a packet to a protected port goes to the TUN unless its host
 * is plain, which brings the first SYN to a new host to the daemon, to hold
 * while it asks.
 */
export function ruleset(specs: ProtectSpec[], config: Partial<RackKernelConfig> = {}): string {
  const c = resolve(config);
  checkName('tun', c.tun);
  checkName('table', c.table);
  const mark = hex(c.mark);
  const lines: string[] = [];
  for (const spec of specs) {
    const net = spec.network ? `${spec.network.address}${spec.network.prefix === 32 ? '' : `/${spec.network.prefix}`}` : undefined;
    const to = net ? `ip daddr ${net} ` : '';
    const from = net ? `ip saddr ${net} ` : '';
    const name = formatSpec(spec);
    lines.push(`    meta nfproto ipv4 ${to}tcp dport ${spec.port} ip daddr != @plain meta mark set ${mark} comment "${name} client side"`);
    lines.push(`    meta nfproto ipv4 ${from}tcp sport ${spec.port} ip daddr @clients meta mark set ${mark} comment "${name} server side"`);
  }
  return [
    // Creating then deleting makes the delete succeed whether or not the table existed; all one transaction.
    `add table inet ${c.table}`,
    `delete table inet ${c.table}`,
    `table inet ${c.table} {`,
    `  set plain { type ipv4_addr; flags timeout; }`,
    `  set clients { type ipv4_addr; }`,
    `  set bypass { type ipv4_addr . inet_service . ipv4_addr . inet_service; flags timeout; }`,
    `  chain output {`,
    `    type route hook output priority mangle; policy accept;`,
    `    oifname "lo" return`,
    `    meta mark ${hex(bypassMark(c))} return comment "sent by the daemon itself"`,
    `    tcp dport ${c.port} return comment "carriages"`,
    `    tcp sport ${c.port} return comment "carriages"`,
    `    meta nfproto ipv4 ip saddr . tcp sport . ip daddr . tcp dport @bypass return`,
    ...lines,
    `  }`,
    `  chain prerouting {`,
    `    type filter hook prerouting priority mangle; policy accept;`,
    `    iifname "${c.tun}" meta mark set ${mark}`,
    `  }`,
    `}`,
    '',
  ].join('\n');
}

// ---- what the daemon learns ---------------------------------------------------------------------

/** A host without a rack daemon: its connections go out untouched for `ttl` ms. */
export function addPlain(config: Partial<RackKernelConfig>, address: string, ttl: number): void {
  const c = resolve(config);
  run('nft', ['add', 'element', 'inet', c.table, 'plain', `{ ${checkAddress(address)} timeout ${Math.max(1, Math.round(ttl / 1000))}s }`]);
}

/** Server role: replies to this inner address take the carriage. */
export function addClient(config: Partial<RackKernelConfig>, address: string): void {
  const c = resolve(config);
  run('nft', ['add', 'element', 'inet', c.table, 'clients', `{ ${checkAddress(address)} }`]);
}

/** One direction of a connection that leaves the TUN alone from now on (for a day). */
export function addBypass(config: Partial<RackKernelConfig>, src: string, srcPort: number, dst: string, dstPort: number): void {
  const c = resolve(config);
  run('nft', ['add', 'element', 'inet', c.table, 'bypass', `{ ${checkAddress(src)} . ${srcPort} . ${checkAddress(dst)} . ${dstPort} timeout 1d }`]);
}

/** Puts an address that left its interface on the TUN, so sockets bound to it can still send. */
export function keepAddress(config: Partial<RackKernelConfig>, address: string): void {
  const c = resolve(config);
  attempt('ip', ['addr', 'add', `${checkAddress(address)}/32`, 'dev', c.tun, 'noprefixroute']);
}

/** The daemon's hold on the kernel's tables (src/racks/parts.ts): `config` with its rack port, for these specs. */
export function kernelControl(specs: ProtectSpec[], config: RackKernelConfig): KernelControl {
  return {
    install: () => install(specs, config),
    remove: () => remove(config),
    addPlain: (address, ttl) => addPlain(config, address, ttl),
    addClient: (address) => addClient(config, address),
    addBypass: (src, srcPort, dst, dstPort) => addBypass(config, src, srcPort, dst, dstPort),
    keepAddress: (address) => keepAddress(config, address),
  };
}

/** Whether IPv4 `address` lies in `network`. */
export function inNetwork(address: string, network: { address: string; prefix: number }): boolean {
  const a = ipv4ToNumber(address, address);
  const n = ipv4ToNumber(network.address, network.address);
  const size = 2 ** (32 - network.prefix);
  return Math.floor(a / size) === Math.floor(n / size);
}

function checkAddress(address: string): string {
  ipv4ToNumber(address, address);
  return address;
}

function checkName(what: string, name: string): void {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(name))
    throw new RangeError(`${what} name ${JSON.stringify(name)} must be 1..15 letters, digits, '_', '.' or '-'`);
}

// ---- install / remove --------------------------------------------------------------------------

function run(command: string, args: string[], input?: string): string {
  try {
    return execFileSync(command, args, { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`${command} ${args.join(' ')} failed: ${(e.stderr ?? '').trim() || e.message}`);
  }
}

/** Like run, but a failure is expected (deleting what may not exist): says whether it worked. */
function attempt(command: string, args: string[], input?: string): boolean {
  try {
    execFileSync(command, args, { input, stdio: ['pipe', 'ignore', 'ignore'] });
    return true;
  } catch {
    return false;
  }
}

function sysctl(path: string, value: string, optional = false): void {
  const file = `/proc/sys/${path.replaceAll('.', '/')}`;
  if (optional && !existsSync(file)) return;
  writeFileSync(file, value);
}

/**
 * Steers the specs' packets through the TUN device `config.tun`, which must
 * exist (open it first). Replaces what a previous install put there.
 */
export function install(specs: ProtectSpec[], config: RackKernelConfig): void {
  const c = resolve(config);
  const script = ruleset(specs, c);
  const tun = c.tun;
  sysctl(`net.ipv6.conf.${tun}.disable_ipv6`, '1', true);
  sysctl(`net.ipv4.conf.${tun}.rp_filter`, '0');
  sysctl(`net.ipv4.conf.${tun}.src_valid_mark`, '1');
  // A large MTU: protected connections then send segments of up to 64 KiB into the TUN, so the
  // daemon handles one packet where 1500 bytes would take forty (the carriage segments them anyway).
  // A long queue: a burst that arrives while the daemon is busy waits instead of being dropped (a loss the senders would take for congestion).
  run('ip', ['link', 'set', 'dev', tun, 'mtu', String(TUN_MTU), 'txqueuelen', '10000', 'up']);
  run('ip', ['route', 'replace', 'default', 'dev', tun, 'table', String(c.routeTable)]);
  removeRules(c);
  run('ip', ['rule', 'add', 'priority', String(c.rulePriority), 'fwmark', hex(c.mark), 'lookup', String(c.routeTable)]);
  run('nft', ['-f', '-'], script);
}

function removeRules(c: Resolved): void {
  for (let i = 0; i < 100 && attempt('ip', ['rule', 'del', 'priority', String(c.rulePriority)]); i++);
}

/** Takes out the table, rule and routes (not the TUN device). Idempotent. */
export function remove(config: Partial<RackKernelConfig> = {}): void {
  const c = resolve(config);
  checkName('table', c.table);
  run('nft', ['-f', '-'], `add table inet ${c.table}\ndelete table inet ${c.table}\n`);
  removeRules(c);
  attempt('ip', ['route', 'flush', 'table', String(c.routeTable)]);
}

/**
 * Undoes everything a daemon that was killed may have left: table, rule,
 * routes, and its TUN device if it still exists. Idempotent.
 */
export function removeLeftovers(config: Partial<RackKernelConfig> = {}): void {
  const c = resolve(config);
  remove(c);
  checkName('tun', c.tun);
  if (linkExists(c.tun)) attempt('ip', ['link', 'del', 'dev', c.tun]);
}

// `ip link show` rather than /sys/class/net: /sys shows the namespace it was mounted in, not always ours.
const linkExists = (name: string): boolean => attempt('ip', ['link', 'show', 'dev', name]);

/** What of racks is in the kernel now, for tests and diagnostics. */
export function inspect(config: Partial<RackKernelConfig> = {}): { table: boolean; rules: string[]; routes: string[]; tun: boolean } {
  const c = resolve(config);
  const tables = run('nft', ['list', 'tables']);
  const rules = run('ip', ['rule', 'show'])
    .split('\n')
    .filter((l) => l.startsWith(`${c.rulePriority}:`));
  const routes = run('ip', ['route', 'show', 'table', String(c.routeTable)])
    .split('\n')
    .filter(Boolean);
  return {
    table: tables.split('\n').some((l) => l.trim() === `table inet ${c.table}`),
    rules,
    routes,
    tun: linkExists(c.tun),
  };
}
