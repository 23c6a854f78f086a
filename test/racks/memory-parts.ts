// In-memory parts for a rack daemon (src/racks/parts.ts), as wireguard-go's
// tun/tuntest is for its device: a TUN the test writes the kernel's packets
// into and reads the daemon's from, a raw sender that keeps what it is given,
// the kernel's tables as sets, the host's addresses as a set, and a clock
// that moves when the test says. Carriages are real: rocks on loopback
// (src/racks/links.ts), each host's rack port behind a FaultProxy so a test
// can black-hole it. Nothing here needs root.

import { EventEmitter } from 'node:events';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { RackDaemon, RACK_DEFAULTS, type RackLogger, type RackOptions } from '../../src/racks/daemon.js';
import { RocksLinks } from '../../src/racks/links.js';
import { parseSpec } from '../../src/racks/netfilter.js';
import { buildTcpPacket, parseTcpPacket, type Endpoint, type TcpPacket } from '../../src/racks/packet.js';
import type { AddressWatcher, Clock, KernelControl, PacketDevice, PacketSender } from '../../src/racks/parts.js';
import { PLAIN_VNET_HEADER, VNET_HEADER } from '../../src/racks/tun.js';
import { FaultProxy } from '../../src/testbed/fault-proxy.js';

/** The TUN: `fromKernel` plays the kernel routing a packet in; `written` is what the daemon put into the kernel. */
export class MemoryTun extends EventEmitter implements PacketDevice {
  readonly name = 'mem0';
  readonly written: Buffer[] = [];
  closed = false;
  private readonly slab = Buffer.alloc(70_000);

  /**
   * The daemon reads `packet` (virtio_net_hdr first) as from the real TUN: a
   * view of a buffer that is reused, here scribbled over as soon as the read
   * returns, so a packet the daemon kept without copying shows up broken.
   */
  fromKernel(packet: Buffer): void {
    const view = this.slab.subarray(0, packet.copy(this.slab));
    this.emit('packet', view);
    view.fill(0xee);
  }

  write(packet: Buffer): boolean {
    if (this.closed) throw new Error('TUN mem0 is closed');
    this.written.push(Buffer.from(packet));
    return true;
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}

/** The raw socket: keeps a copy of every packet sent out. */
export class MemorySender implements PacketSender {
  readonly sent: Buffer[] = [];
  closed = false;

  send(packet: Buffer): boolean {
    if (this.closed) return false;
    this.sent.push(Buffer.from(packet));
    return true;
  }

  close(): void {
    this.closed = true;
  }
}

/** The kernel's tables: racks' sets, and whether its rules are installed. */
export class MemoryKernel implements KernelControl {
  installed = false;
  /** host → ttl (ms) */
  readonly plain = new Map<string, number>();
  readonly clients = new Set<string>();
  /** `src:port>dst:port` */
  readonly bypass = new Set<string>();
  /** Addresses put on the TUN, in order (a repeat would show twice). */
  readonly kept: string[] = [];

  install(): void {
    this.installed = true;
  }

  remove(): void {
    this.installed = false;
    this.plain.clear();
    this.clients.clear();
    this.bypass.clear();
  }

  addPlain(address: string, ttl: number): void {
    this.plain.set(address, ttl);
  }

  addClient(address: string): void {
    this.clients.add(address);
  }

  addBypass(src: string, srcPort: number, dst: string, dstPort: number): void {
    this.bypass.add(`${src}:${srcPort}>${dst}:${dstPort}`);
  }

  keepAddress(address: string): void {
    this.kept.push(address);
  }
}

/** The host's addresses: the test removes one as `ip monitor address` would report it. */
export class MemoryAddresses implements AddressWatcher {
  private onChange: (() => void) | undefined;
  closed = false;

  constructor(readonly present: Set<string>) {}

  start(onChange: () => void): void {
    this.onChange = onChange;
  }

  addresses(): Set<string> {
    return new Set(this.present);
  }

  remove(address: string): void {
    this.present.delete(address);
    this.onChange?.();
  }

  close(): void {
    this.closed = true;
  }
}

/** Time that moves only by `advance`, running the periodic chores that fall due on the way. */
export class ManualClock implements Clock {
  private t = 1_000_000;
  private readonly chores = new Set<{ ms: number; next: number; fn: () => void }>();

  now(): number {
    return this.t;
  }

  every(ms: number, fn: () => void): () => void {
    const chore = { ms, next: this.t + ms, fn };
    this.chores.add(chore);
    return () => this.chores.delete(chore);
  }

  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      let due: { ms: number; next: number; fn: () => void } | undefined;
      for (const c of this.chores) if (c.next <= end && (due === undefined || c.next < due.next)) due = c;
      if (due === undefined) break;
      this.t = due.next;
      due.next += due.ms;
      due.fn();
    }
    this.t = end;
  }
}

export interface LogEntry {
  level: 'info' | 'warn' | 'debug';
  msg: string;
  obj: object;
}

export class MemoryLog implements RackLogger {
  readonly entries: LogEntry[] = [];
  info(obj: object, msg: string): void {
    this.entries.push({ level: 'info', msg, obj });
  }
  warn(obj: object, msg: string): void {
    this.entries.push({ level: 'warn', msg, obj });
  }
  debug(obj: object, msg: string): void {
    this.entries.push({ level: 'debug', msg, obj });
  }
  count(prefix: string): number {
    return this.entries.filter((e) => e.msg.startsWith(prefix)).length;
  }
}

export interface MemoryHost {
  address: string;
  daemon: RackDaemon;
  tun: MemoryTun;
  raw: MemorySender;
  kernel: MemoryKernel;
  addresses: MemoryAddresses;
  clock: ManualClock;
  log: MemoryLog;
}

/**
 * Hosts joined by loopback: each host's rack port listens on 127.0.0.1, behind
 * a FaultProxy; a dial to an inner address no host has is refused (a closed
 * port), and `silent` makes one accept and never answer, as a plain server.
 */
export class LoopbackNet {
  readonly proxies = new Map<string, FaultProxy>();
  /** Inner addresses dialed (EDP for racks), in order. */
  readonly dialed: string[] = [];
  private readonly hosts: MemoryHost[] = [];
  private readonly servers: Server[] = [];
  private readonly silentPorts = new Map<string, number>();
  private readonly silentSockets = new Set<Socket>();
  /** Inner address → the port of the proxy in front of its rack port. */
  private readonly rackPorts = new Map<string, number>();
  private closedPort = 0;

  /** A port on 127.0.0.1 that nothing listens on (one the system handed out and took back). */
  async init(): Promise<void> {
    const s = createServer();
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    this.closedPort = (s.address() as AddressInfo).port;
    await new Promise<void>((r) => s.close(() => r()));
  }

  /** A plain TCP server at `address` that accepts and never says a word, not even a FIN after the probe's half-close. */
  async silent(address: string): Promise<void> {
    const s = createServer({ allowHalfOpen: true }, (c) => {
      this.silentSockets.add(c);
      c.on('error', () => {});
    });
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    this.servers.push(s);
    this.silentPorts.set(address, (s.address() as AddressInfo).port);
  }

  /** Starts a rack daemon for the host with inner address `address`, protecting tcp:22 unless told otherwise. */
  async host(address: string, options: Partial<RackOptions> = {}): Promise<MemoryHost> {
    const log = new MemoryLog();
    const o: RackOptions = {
      ...RACK_DEFAULTS,
      specs: [parseSpec('tcp:22')],
      failureTimeout: 300,
      probeTimeout: 300,
      log,
      ...options,
    };
    const links = new RocksLinks({ ...o, port: 0, host: '127.0.0.1', peer: (a) => this.peer(a) });
    const h: MemoryHost = {
      address,
      tun: new MemoryTun(),
      raw: new MemorySender(),
      kernel: new MemoryKernel(),
      addresses: new MemoryAddresses(new Set([address])),
      clock: new ManualClock(),
      log,
      daemon: undefined as unknown as RackDaemon,
    };
    h.daemon = new RackDaemon(o, { tun: h.tun, raw: h.raw, kernel: h.kernel, addresses: h.addresses, links, clock: h.clock });
    await h.daemon.start();
    const proxy = new FaultProxy(links.port);
    this.rackPorts.set(address, await proxy.listen());
    this.proxies.set(address, proxy);
    this.hosts.push(h);
    return h;
  }

  async close(): Promise<void> {
    for (const h of this.hosts) await h.daemon.stop();
    for (const p of this.proxies.values()) await p.close();
    for (const c of this.silentSockets) c.destroy();
    for (const s of this.servers) await new Promise<void>((r) => s.close(() => r()));
  }

  private peer(address: string): { host: string; port: number } {
    this.dialed.push(address);
    return { host: '127.0.0.1', port: this.rackPorts.get(address) ?? this.silentPorts.get(address) ?? this.closedPort };
  }
}

// ---- packets -----------------------------------------------------------------------------------

export interface Segment {
  seq: number;
  ack?: number;
  flags: number;
  payload?: Buffer;
  window?: number;
}

/** A TCP packet from `from` to `to` as it comes out of (or goes into) a TUN: virtio_net_hdr first. */
export function tunPacket(from: Endpoint, to: Endpoint, s: Segment): Buffer {
  const ip = buildTcpPacket({
    src: from.address,
    dst: to.address,
    srcPort: from.port,
    dstPort: to.port,
    seq: s.seq >>> 0,
    ack: (s.ack ?? 0) >>> 0,
    flags: s.flags,
    window: s.window ?? 502,
    payload: s.payload,
  });
  return Buffer.concat([PLAIN_VNET_HEADER, ip]);
}

/** The TCP packet in a TUN packet. */
export const tcpOf = (tunBytes: Buffer): TcpPacket => parseTcpPacket(tunBytes.subarray(VNET_HEADER));
