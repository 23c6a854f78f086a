// The rack daemon: packets of protected connections come out of the TUN
// (the kernel's rules put them there, src/racks/netfilter.ts), cross to the
// peer host's daemon in a carriage (src/racks/carriage.ts), and go back into
// the kernel through the TUN on the other side, unchanged: the applications'
// TCP connection stays end to end. The same daemon plays both roles:
//
//   client role  a local application connects to a protected port on a host.
//                The daemon asks that host's rack port (EDP for racks): a
//                rack daemon answers with a carriage; anything else (refused,
//                silent for probeTimeout, a plain TCP server) makes the host
//                plain, cached for a while, and its connections leave as
//                ordinary packets, the held SYN first.
//   server role  a client daemon's carriage arrives on the rack port; the
//                inner source addresses of its packets become "rack clients",
//                and the replies of local protected ports to them take the
//                carriage back.
//
// While a carriage is suspended the daemon holds the local side of each of
// its connections with zero-window ACKs (src/racks/flows.ts), taking custody
// of what the application sends; the carriage delivers all of it after the
// resume. When the client host's address changes, the carriage resumes from
// the new one (rocks does that) and the daemon keeps the old address on the
// TUN, so the applications' sockets, bound to it, can still send.

import { spawn, type ChildProcess } from 'node:child_process';
import { networkInterfaces } from 'node:os';
import { connect, createServer, type ReliableServer, type ReliableSocket } from '../index.js';
import { EDP_MAGIC } from '../edp/announcement.js';
import { Carriage } from './carriage.js';
import { DEFAULT_FLOW_LIMITS, FlowTable, segmentEnd, type Flow } from './flows.js';
import * as netfilter from './netfilter.js';
import { classify, fixChecksums, TcpFlags, type TcpPacket } from './packet.js';
import { RawSender } from './raw-socket.js';
import { PLAIN_VNET_HEADER, TunDevice, VNET_HEADER, VNET_NEEDS_CSUM } from './tun.js';

export interface RackLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

export interface RackOptions {
  specs: netfilter.ProtectSpec[];
  /** The rack port: where this daemon listens for carriages and asks other hosts for theirs. */
  port: number;
  failureTimeout: number;
  suspendLimit: number;
  /** Shared secret mixed into every carriage key: only daemons that hold it can talk. */
  secret?: Buffer;
  /** How long a new connection's SYN waits for the answer of EDP for racks. */
  probeTimeout: number;
  /** A host found plain is asked again after this long (ms). */
  plainTtl: number;
  maxFlows: number;
  /** Most bytes held in custody across all suspended carriages. */
  maxHeldBytes: number;
  kernel: netfilter.RackKernelConfig;
  log: RackLogger;
}

export const RACK_DEFAULTS = {
  port: 7225,
  failureTimeout: 5000,
  suspendLimit: 24 * 3600_000,
  probeTimeout: 500,
  plainTtl: 600_000,
  maxFlows: DEFAULT_FLOW_LIMITS.maxFlows,
  maxHeldBytes: 256 * 1024 * 1024,
};

/** Most SYNs held per host while its EDP answer is awaited. */
const MAX_HELD_SYNS = 64;

interface Host {
  address: string;
  verdict: 'probing' | 'rack' | 'plain';
  carriage?: Carriage;
  /** Until when a plain verdict stands. */
  until: number;
  syns: Buffer[];
}

export interface RackCounters {
  packetsCarried: number;
  packetsInjected: number;
  packetsPassed: number;
  /** From the TUN: not IPv4/TCP, or malformed. */
  malformedLocal: number;
  /** From a carriage: authenticated but not a packet this host may accept. */
  refusedRemote: number;
  /** Failed authentication on a carriage. */
  forged: number;
  /** Connections to the rack port that were not rack carriages. */
  strayConnections: number;
  holdAcks: number;
  /** Segments dropped at the held-bytes limit (their senders retransmit). */
  limitDrops: number;
  /** New connections past the connection limit, sent out unprotected. */
  unprotected: number;
  /** 64 KiB segments that could not go out through the raw socket (their senders retransmit). */
  unsendable: number;
  bypassed: number;
}

export interface RackStatus {
  pid: number;
  specs: string[];
  port: number;
  tun: string;
  counters: RackCounters;
  hosts: { address: string; verdict: string; state?: string }[];
  connections: {
    local: string;
    remote: string;
    state: 'open' | 'suspended' | 'ending';
    outageMs: number;
    heldBytes: number;
  }[];
}

export class RackDaemon {
  readonly counters: RackCounters = {
    packetsCarried: 0,
    packetsInjected: 0,
    packetsPassed: 0,
    malformedLocal: 0,
    refusedRemote: 0,
    forged: 0,
    strayConnections: 0,
    holdAcks: 0,
    limitDrops: 0,
    unprotected: 0,
    unsendable: 0,
    bypassed: 0,
  };
  private readonly flows: FlowTable;
  private readonly hosts = new Map<string, Host>();
  /** Server role: inner client address → the carriage that brought it. */
  private readonly clients = new Map<string, Carriage>();
  private readonly carriages = new Set<Carriage>();
  private readonly suspendedSince = new Map<Carriage, number>();
  /** Source addresses of local connections, which must stay on the host while they live. */
  private readonly kept = new Set<string>();
  private tun: TunDevice | undefined;
  private raw: RawSender | undefined;
  private server: ReliableServer | undefined;
  private monitor: ChildProcess | undefined;
  private sweeper: NodeJS.Timeout | undefined;
  private limitLogged = { flows: false, held: false };
  private stopped = false;

  constructor(private readonly options: RackOptions) {
    this.flows = new FlowTable({ maxFlows: options.maxFlows, endedLinger: 120_000 });
  }

  private get log(): RackLogger {
    return this.options.log;
  }

  async start(): Promise<void> {
    const o = this.options;
    netfilter.removeLeftovers(o.kernel);
    // Offload: whole 64 KiB TCP segments come out of (and go into) the TUN, so
    // the daemon handles a packet where 1500-byte ones would take forty. Every
    // packet, carried ones too, starts with its virtio_net_hdr (tun.ts).
    this.tun = new TunDevice({ name: o.kernel.tun, offload: true });
    this.tun.on('packet', (p: Buffer) => this.fromTun(p));
    this.tun.on('error', (err: Error) => this.log.warn({ err: err.message }, 'TUN read failed'));
    this.raw = new RawSender(netfilter.bypassMark(o.kernel));
    netfilter.install(o.specs, { ...o.kernel, port: o.port });
    this.server = createServer({ failureTimeout: o.failureTimeout, suspendLimit: o.suspendLimit }, (s) => this.accept(s));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(o.port, () => {
        this.server!.off('error', reject);
        resolve();
      });
    });
    this.server.on('error', (err: Error) => this.log.warn({ err: err.message }, 'rack port error'));
    this.watchAddresses();
    this.sweeper = setInterval(() => this.sweep(), 10_000);
    this.sweeper.unref();
    this.log.info({ specs: o.specs.map(netfilter.formatSpec), port: o.port, tun: o.kernel.tun }, 'rack up');
  }

  /** Stops carrying and removes everything this daemon put in the kernel. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.sweeper);
    this.monitor?.kill();
    for (const c of this.carriages) c.close('rack down');
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    this.raw?.close();
    try {
      netfilter.remove(this.options.kernel);
    } finally {
      await this.tun?.close();
    }
    this.log.info({}, 'rack down');
  }

  status(now = performance.now()): RackStatus {
    const o = this.options;
    return {
      pid: process.pid,
      specs: o.specs.map(netfilter.formatSpec),
      port: o.port,
      tun: o.kernel.tun,
      counters: { ...this.counters },
      hosts: [...this.hosts.values()].map((h) => ({
        address: h.address,
        verdict: h.verdict,
        ...(h.carriage ? { state: h.carriage.suspended ? 'suspended' : 'open' } : {}),
      })),
      connections: [...this.flows.values()].map((f) => {
        const c = this.carriageOf(f);
        const since = c ? this.suspendedSince.get(c) : undefined;
        return {
          local: `${f.local.address}:${f.local.port}`,
          remote: `${f.remote.address}:${f.remote.port}`,
          state: f.ending ? 'ending' : since !== undefined ? 'suspended' : 'open',
          outageMs: since !== undefined ? Math.round(now - since) : 0,
          heldBytes: f.heldBytes,
        };
      }),
    };
  }

  // ---- packets from local applications --------------------------------------------------------

  /** `buf`: a virtio_net_hdr, then the packet. */
  private fromTun(buf: Buffer): void {
    const c = classify(buf.subarray(VNET_HEADER));
    if ('error' in c) {
      this.counters.malformedLocal++;
      return;
    }
    // `buf` is a view of the TUN's read slab, which is reused: whatever keeps a packet past this call copies it.
    const p = c.tcp;
    const carriage = this.clients.get(p.dst) ?? this.routeToServer(p, buf);
    if (carriage === undefined) return;
    this.carry(carriage, p, buf);
  }

  /** Client role: the carriage for p's destination host, or undefined when the packet was dealt with otherwise. */
  private routeToServer(p: TcpPacket, packet: Buffer): Carriage | undefined {
    const now = performance.now();
    let host = this.hosts.get(p.dst);
    if (host?.verdict === 'plain' && now >= host.until) {
      this.hosts.delete(p.dst);
      host = undefined;
    }
    if (host?.verdict === 'rack' && host.carriage) return host.carriage;
    if (host?.verdict === 'plain') {
      this.pass(packet);
      return undefined;
    }
    const opening = (p.flags & (TcpFlags.SYN | TcpFlags.ACK)) === TcpFlags.SYN;
    if (!opening) {
      // Not a new connection and no carriage for it (one that began before the daemon, say): leave it alone, now and from now on.
      this.bypass(p.src, p.srcPort, p.dst, p.dstPort);
      this.pass(packet);
      return undefined;
    }
    if (host === undefined) {
      host = { address: p.dst, verdict: 'probing', until: 0, syns: [] };
      this.hosts.set(p.dst, host);
      this.probe(host);
    }
    if (host.syns.length < MAX_HELD_SYNS) host.syns.push(Buffer.from(packet));
    return undefined;
  }

  private carry(carriage: Carriage, p: TcpPacket, packet: Buffer): void {
    const now = performance.now();
    if (segmentEnd(p) !== p.seq && this.heldTotal() + p.payload.length > this.options.maxHeldBytes) {
      // No room to take this segment into custody (carried and not yet acknowledged by the peer
      // daemon, which grows while a failure is not yet detected): it is dropped before the flow
      // counts it, so no ACK ever covers it, and its sender sends it again later, as after any
      // loss. A held sender still gets the hold ACK for what is in custody, which keeps it waiting.
      if (!this.limitLogged.held) this.log.warn({ maxHeldBytes: this.options.maxHeldBytes }, 'held-bytes limit reached: packets beyond it are dropped (their senders will retransmit)');
      this.limitLogged.held = true;
      this.counters.limitDrops++;
      const flow = carriage.suspended ? this.flows.find('out', p) : undefined;
      const ack = flow ? this.flows.holdAck(flow) : undefined;
      if (ack) this.inject(ack, true);
      return;
    }
    const flow = this.flows.observe('out', p, now);
    if (flow === 'full') {
      if (!this.limitLogged.flows) this.log.warn({ maxFlows: this.options.maxFlows }, 'protected-connection limit reached: new connections go out unprotected');
      this.limitLogged.flows = true;
      this.counters.unprotected++;
      this.bypass(p.src, p.srcPort, p.dst, p.dstPort);
      this.pass(packet);
      return;
    }
    if (flow && !flow.sawPayload.out && p.payload.length > 0) {
      flow.sawPayload.out = true;
      if (startsWithEdp(p.payload)) this.bypassFlow(flow);
    }
    if (carriage.suspended && flow) {
      carriage.send(packet);
      this.counters.packetsCarried++;
      const ack = this.flows.holdAck(flow, p.payload.length);
      if (ack) this.inject(ack, true);
      return;
    }
    carriage.send(packet);
    this.counters.packetsCarried++;
  }

  // ---- packets from peer daemons --------------------------------------------------------------

  private fromCarriage(carriage: Carriage, role: 'client' | 'server', peerHost: string | undefined, packet: Buffer): void {
    const c = packet.length > VNET_HEADER ? classify(packet.subarray(VNET_HEADER)) : undefined;
    if (c === undefined) {
      this.counters.refusedRemote++;
      return;
    }
    if ('error' in c) {
      this.counters.refusedRemote++;
      return;
    }
    const p = c.tcp;
    if (!this.acceptable(carriage, role, peerHost, p)) {
      this.counters.refusedRemote++;
      return;
    }
    const flow = this.flows.observe('in', p, performance.now());
    if (flow && flow !== 'full' && !flow.sawPayload.in && p.payload.length > 0) {
      flow.sawPayload.in = true;
      if (startsWithEdp(p.payload)) this.bypassFlow(flow);
    }
    this.inject(packet, false);
  }

  /**
   * What a carriage may bring: to a client daemon, packets from the host it
   * dialed, from a protected port; to a server daemon, packets to a protected
   * port of this host, from an inner address no other carriage claimed.
   */
  private acceptable(carriage: Carriage, role: 'client' | 'server', peerHost: string | undefined, p: TcpPacket): boolean {
    if (role === 'client') return p.src === peerHost && this.protects(p.src, p.srcPort);
    if (!this.protects(p.dst, p.dstPort)) return false;
    const owner = this.clients.get(p.src);
    if (owner === carriage) return true;
    if (owner !== undefined && this.carriages.has(owner)) return false;
    this.clients.set(p.src, carriage);
    this.kernel('add a rack client', () => netfilter.addClient(this.options.kernel, p.src));
    this.log.info({ client: p.src }, 'rack client');
    return true;
  }

  private protects(address: string, port: number): boolean {
    return this.options.specs.some((s) => s.port === port && (!s.network || netfilter.inNetwork(address, s.network)));
  }

  // ---- carriages ------------------------------------------------------------------------------

  /** EDP for racks: does `host` run a rack daemon? A carriage if so. */
  private probe(host: Host): void {
    const o = this.options;
    const socket = connect({
      host: host.address,
      port: o.port,
      failureTimeout: o.failureTimeout,
      suspendLimit: o.suspendLimit,
      connectTimeout: o.probeTimeout,
      probeTimeout: o.probeTimeout,
    });
    const plain = (why: string): void => {
      if (host.verdict !== 'probing') return;
      socket.destroy();
      host.verdict = 'plain';
      host.until = performance.now() + o.plainTtl;
      this.kernel('mark a host plain', () => netfilter.addPlain(o.kernel, host.address, o.plainTtl));
      this.log.info({ host: host.address, why }, 'no rack daemon: its connections go out as they are');
      for (const syn of host.syns.splice(0)) this.pass(syn);
    };
    socket.once('error', (err: Error) => plain(err.message));
    socket.once('connect', () => {
      if (!socket.reliable) return plain('not a rack daemon');
      const carriage = this.adopt(socket, 'client', host.address);
      host.verdict = 'rack';
      host.carriage = carriage;
      this.log.info({ host: host.address }, 'rack daemon found: carrying its connections');
      carriage.once('close', () => {
        if (host.carriage === carriage) this.hosts.delete(host.address);
      });
      for (const syn of host.syns.splice(0)) {
        const c = classify(syn.subarray(VNET_HEADER));
        if (!('error' in c)) this.carry(carriage, c.tcp, syn);
      }
    });
  }

  private accept(socket: ReliableSocket): void {
    if (!socket.reliable) {
      // A port scanner or a plain client on the rack port: not ours to serve.
      this.counters.strayConnections++;
      socket.destroy();
      return;
    }
    this.adopt(socket, 'server', undefined);
  }

  private adopt(socket: ReliableSocket, role: 'client' | 'server', peerHost: string | undefined): Carriage {
    const carriage = new Carriage(socket, role, this.options.secret);
    this.carriages.add(carriage);
    carriage.on('packet', (p: Buffer) => this.fromCarriage(carriage, role, peerHost, p));
    carriage.on('rejected', () => this.counters.forged++);
    carriage.on('suspend', () => this.onSuspend(carriage));
    carriage.on('resume', () => this.onResume(carriage));
    carriage.once('close', (reason: string) => {
      // Its connections cannot continue: reset them locally rather than hold them forever.
      let reset = 0;
      for (const flow of [...this.flows.values()]) {
        if (this.carriageOf(flow) !== carriage) continue;
        const rst = flow.ending ? undefined : this.flows.resetPacket(flow);
        if (rst && this.tun?.write(Buffer.concat([PLAIN_VNET_HEADER, rst]))) reset++;
        this.flows.delete(flow);
      }
      if (reset > 0) this.log.warn({ peer: peerHost ?? socket.remoteAddress, reset }, 'carriage lost: its connections were reset');
      this.carriages.delete(carriage);
      this.suspendedSince.delete(carriage);
      for (const [address, c] of this.clients) if (c === carriage) this.clients.delete(address);
      this.log.info({ peer: peerHost ?? socket.remoteAddress, reason }, 'carriage closed');
    });
    return carriage;
  }

  private onSuspend(carriage: Carriage): void {
    this.suspendedSince.set(carriage, performance.now());
    this.log.info({ peer: carriage.socket.remoteAddress }, 'carriage suspended: holding its connections');
    // Senders waiting for acknowledgements are held at once, before their retransmissions run out.
    for (const flow of this.flows.unacknowledged()) {
      if (this.carriageOf(flow) !== carriage) continue;
      const ack = this.flows.holdAck(flow);
      if (ack) this.inject(ack, true);
    }
  }

  private onResume(carriage: Carriage): void {
    const since = this.suspendedSince.get(carriage);
    this.suspendedSince.delete(carriage);
    this.limitLogged.held = false;
    this.log.info({ peer: carriage.socket.remoteAddress, outageMs: since === undefined ? undefined : Math.round(performance.now() - since) }, 'carriage resumed');
    for (const flow of this.flows.values()) {
      if (this.carriageOf(flow) !== carriage) continue;
      const ack = this.flows.reopenAck(flow);
      if (ack) this.inject(ack, true);
    }
  }

  private carriageOf(flow: Flow): Carriage | undefined {
    return this.clients.get(flow.remote.address) ?? this.hosts.get(flow.remote.address)?.carriage;
  }

  /** Bytes in custody: carried and not yet acknowledged by a peer daemon, on every carriage. */
  private heldTotal(): number {
    let n = 0;
    for (const c of this.carriages) n += c.heldBytes;
    return n;
  }

  // ---- the kernel -----------------------------------------------------------------------------

  /** A change to the kernel's tables while running: a failure is logged, never fatal (the packet path still works, less directly). */
  private kernel(what: string, change: () => void): void {
    try {
      change();
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, `cannot ${what}`);
    }
  }

  /** Writes a packet into the kernel: carried ones have their virtio_net_hdr, forged ones get a plain one. */
  private inject(packet: Buffer, forged: boolean): void {
    if (!this.tun?.write(forged ? Buffer.concat([PLAIN_VNET_HEADER, packet]) : packet)) return;
    if (forged) this.counters.holdAcks++;
    else this.counters.packetsInjected++;
  }

  /**
   * Sends a packet from the TUN (virtio_net_hdr first) out as the host's own.
   * A raw socket cannot segment: a 64 KiB segment is dropped instead (its
   * sender retransmits, by then on the direct path); a checksum left to the
   * hardware is computed here.
   */
  private pass(buf: Buffer): void {
    const gsoType = buf[1];
    if (gsoType !== 0) {
      this.counters.unsendable++;
      return;
    }
    let packet = buf.subarray(VNET_HEADER);
    if (buf[0] & VNET_NEEDS_CSUM) packet = fixChecksums(Buffer.from(packet));
    if (this.raw?.send(packet)) this.counters.packetsPassed++;
  }

  /** A rocks connection needs no carriage: its packets go direct from now on, both ways (each daemon bypasses its own side). */
  private bypassFlow(flow: Flow): void {
    this.bypass(flow.local.address, flow.local.port, flow.remote.address, flow.remote.port);
    this.flows.delete(flow);
    this.counters.bypassed++;
    this.log.info({ local: `${flow.local.address}:${flow.local.port}`, remote: `${flow.remote.address}:${flow.remote.port}` }, 'a rocks connection: left to rocks');
  }

  private bypass(srcAddress: string, srcPort: number, dstAddress: string, dstPort: number): void {
    this.kernel('bypass a connection', () => netfilter.addBypass(this.options.kernel, srcAddress, srcPort, dstAddress, dstPort));
  }

  /**
   * Keeps the source address of every local connection on the host: when
   * the address goes from its interface (the client moved), it is put on
   * the TUN, so the connection's socket can still send from it.
   */
  private watchAddresses(): void {
    this.monitor = spawn('ip', ['-o', '-4', 'monitor', 'address'], { stdio: ['ignore', 'pipe', 'ignore'] });
    this.monitor.stdout!.on('data', () => this.keepAddresses());
    this.monitor.on('error', (err) => this.log.warn({ err: err.message }, 'cannot watch addresses'));
  }

  private keepAddresses(): void {
    if (this.stopped) return;
    const present = new Set<string>();
    for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) if (a.family === 'IPv4') present.add(a.address);
    for (const flow of this.flows.values()) {
      const address = flow.local.address;
      if (flow.ending || present.has(address) || this.kept.has(address)) continue;
      this.kept.add(address);
      this.kernel('keep an address', () => netfilter.keepAddress(this.options.kernel, address));
      this.log.info({ address }, 'local address gone: kept on the TUN for the connections that use it');
    }
  }

  private sweep(): void {
    this.flows.sweep(performance.now());
  }
}

function startsWithEdp(payload: Buffer): boolean {
  const n = Math.min(payload.length, EDP_MAGIC.length);
  return n >= 4 && payload.subarray(0, n).equals(EDP_MAGIC.subarray(0, n));
}
