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
//
// The daemon does no I/O of its own: it is built from its parts
// (src/racks/parts.ts), the TUN, a raw sender, the kernel's tables, an
// address watcher, rocks links on the rack port and a clock, which
// src/racks/system.ts opens for real and the unit tests give in memory.

import type { ConnectionOptions, TlsOptions } from 'node:tls';
import type { ReliableSocket } from '../node/socket.js';
import { EDP_MAGIC } from '../edp/announcement.js';
import { Carriage } from './carriage.js';
import { DEFAULT_FLOW_LIMITS, FlowTable, segmentEnd, type Flow } from './flows.js';
import { HostTable, type Host } from './hosts.js';
import { formatSpec, inNetwork, type ProtectSpec } from './netfilter.js';
import { classify, fixChecksums, TcpFlags, type TcpPacket } from './packet.js';
import type { RackParts } from './parts.js';
import { PLAIN_VNET_HEADER, VNET_HEADER, VNET_NEEDS_CSUM } from './tun.js';

export interface RackLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

export interface RackOptions {
  specs: ProtectSpec[];
  /** The rack port: where this daemon listens for carriages and asks other hosts for theirs. */
  port: number;
  failureTimeout: number;
  suspendLimit: number;
  /** Shared secret mixed into every carriage key: only daemons that hold it can talk. */
  secret?: Buffer;
  /** Carriages over TLS: the rack port's node:tls server options and the dial's connect options (src/cli/tls-args.ts rackTls). */
  tls?: RackTls;
  /** How long a new connection's SYN waits for the answer of EDP for racks. */
  probeTimeout: number;
  /** A host found plain is asked again after this long (ms). */
  plainTtl: number;
  maxFlows: number;
  /** Most bytes held in custody across all suspended carriages. */
  maxHeldBytes: number;
  log: RackLogger;
}

export interface RackTls {
  server: TlsOptions;
  client: ConnectionOptions;
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

/** How often ended flows are looked for, to be forgotten. */
const SWEEP_MS = 10_000;

export interface RackCounters {
  packetsCarried: number;
  packetsInjected: number;
  packetsPassed: number;
  /** From the TUN: not IPv4/TCP, or malformed. */
  malformedLocal: number;
  /** From a carriage: authenticated but not a packet this host may accept. */
  refusedRemote: number;
  /** Failed authentication on a carriage (altered, injected or replayed frames): dropped. */
  forged: number;
  /** Times a carriage's framing from its peer broke (altered length or type) and was found again by a SYNC. */
  resyncs: number;
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
    resyncs: 0,
    strayConnections: 0,
    holdAcks: 0,
    limitDrops: 0,
    unprotected: 0,
    unsendable: 0,
    bypassed: 0,
  };
  private readonly flows: FlowTable;
  private readonly hosts: HostTable;
  /** Server role: inner client address → the carriage that brought it. */
  private readonly clients = new Map<string, Carriage>();
  private readonly carriages = new Set<Carriage>();
  private readonly suspendedSince = new Map<Carriage, number>();
  /** Source addresses of local connections, which must stay on the host while they live. */
  private readonly kept = new Set<string>();
  private stopSweeping: (() => void) | undefined;
  private limitLogged = { flows: false, held: false };
  private stopped = false;

  constructor(
    private readonly options: RackOptions,
    private readonly parts: RackParts,
  ) {
    this.flows = new FlowTable({ maxFlows: options.maxFlows, endedLinger: 120_000 });
    this.hosts = new HostTable(options.plainTtl);
  }

  private get log(): RackLogger {
    return this.options.log;
  }

  private get clock(): RackParts['clock'] {
    return this.parts.clock;
  }

  async start(): Promise<void> {
    const { tun, kernel, links, addresses } = this.parts;
    tun.on('packet', (p: Buffer) => this.fromTun(p));
    tun.on('error', (err: Error) => this.log.warn({ err: err.message }, 'TUN read failed'));
    kernel.install();
    await links.listen((s) => this.accept(s));
    addresses.start(() => this.keepAddresses());
    this.stopSweeping = this.clock.every(SWEEP_MS, () => this.flows.sweep(this.clock.now()));
    this.log.info({ specs: this.options.specs.map(formatSpec), port: this.options.port, tun: tun.name }, 'rack up');
  }

  /** Stops carrying and removes everything this daemon put in the kernel. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const { tun, raw, kernel, links, addresses } = this.parts;
    this.stopSweeping?.();
    addresses.close();
    for (const c of this.carriages) c.close('rack down');
    await links.close();
    raw.close();
    try {
      kernel.remove();
    } finally {
      await tun.close();
    }
    this.log.info({}, 'rack down');
  }

  status(now = this.clock.now()): RackStatus {
    const o = this.options;
    return {
      pid: process.pid,
      specs: o.specs.map(formatSpec),
      port: o.port,
      tun: this.parts.tun.name,
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
    const opening = (p.flags & (TcpFlags.SYN | TcpFlags.ACK)) === TcpFlags.SYN;
    const route = this.hosts.route(p.dst, opening, packet, this.clock.now());
    switch (route.to) {
      case 'carriage':
        return route.carriage;
      case 'out':
        this.pass(packet);
        return undefined;
      case 'unknown':
        // Not a new connection and no carriage for it (one that began before the daemon, say): leave it alone, now and from now on.
        this.bypass(p.src, p.srcPort, p.dst, p.dstPort);
        this.pass(packet);
        return undefined;
      case 'held':
        if (route.probe) this.probe(route.probe);
        return undefined;
    }
  }

  private carry(carriage: Carriage, p: TcpPacket, packet: Buffer): void {
    if (segmentEnd(p) !== p.seq && this.heldTotal() + p.payload.length > this.options.maxHeldBytes) {
      // No room to take this segment into custody (carried and not yet acknowledged by the peer
      // daemon, which grows while a failure is not yet detected): it is dropped before the flow
      // counts it, so no ACK ever covers it, and its sender sends it again later, as after any
      // loss. A held sender still gets the hold ACK for what is in custody, which keeps it waiting.
      if (!this.limitLogged.held)
        this.log.warn(
          { maxHeldBytes: this.options.maxHeldBytes },
          'held-bytes limit reached: packets beyond it are dropped (their senders will retransmit)',
        );
      this.limitLogged.held = true;
      this.counters.limitDrops++;
      const flow = carriage.suspended ? this.flows.find('out', p) : undefined;
      const ack = flow ? this.flows.holdAck(flow) : undefined;
      if (ack) this.inject(ack, true);
      return;
    }
    const flow = this.flows.observe('out', p, this.clock.now());
    if (flow === 'full') {
      if (!this.limitLogged.flows)
        this.log.warn({ maxFlows: this.options.maxFlows }, 'protected-connection limit reached: new connections go out unprotected');
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
    carriage.send(packet);
    this.counters.packetsCarried++;
    if (carriage.suspended && flow) {
      const ack = this.flows.holdAck(flow, p.payload.length);
      if (ack) this.inject(ack, true);
    }
  }

  // ---- packets from peer daemons --------------------------------------------------------------

  private fromCarriage(carriage: Carriage, role: 'client' | 'server', peerHost: string | undefined, packet: Buffer): void {
    const c = packet.length > VNET_HEADER ? classify(packet.subarray(VNET_HEADER)) : undefined;
    if (c === undefined || 'error' in c) {
      this.counters.refusedRemote++;
      return;
    }
    const p = c.tcp;
    if (!this.acceptable(carriage, role, peerHost, p)) {
      this.counters.refusedRemote++;
      return;
    }
    const flow = this.flows.observe('in', p, this.clock.now());
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
    this.kernel('add a rack client', (k) => k.addClient(p.src));
    this.log.info({ client: p.src }, 'rack client');
    return true;
  }

  private protects(address: string, port: number): boolean {
    return this.options.specs.some((s) => s.port === port && (!s.network || inNetwork(address, s.network)));
  }

  // ---- carriages ------------------------------------------------------------------------------

  /** EDP for racks: does `host` run a rack daemon? A carriage if so. */
  private probe(host: Host): void {
    const socket = this.parts.links.dial(host.address);
    const plain = (why: string): void => {
      const syns = this.hosts.settlePlain(host, this.clock.now());
      if (syns === undefined) return;
      socket.destroy();
      this.kernel('mark a host plain', (k) => k.addPlain(host.address, this.options.plainTtl));
      this.log.info({ host: host.address, why }, 'no rack daemon: its connections go out as they are');
      for (const syn of syns) this.pass(syn);
    };
    socket.once('error', (err: Error) => plain(err.message));
    socket.once('connect', () => {
      if (!socket.reliable) return plain('not a rack daemon');
      const carriage = this.adopt(socket, 'client', host.address);
      const syns = this.hosts.settleRack(host, carriage);
      this.log.info({ host: host.address }, 'rack daemon found: carrying its connections');
      carriage.once('close', () => this.hosts.forget(host, carriage));
      for (const syn of syns) {
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
    // Longer than the failure timeout: a path that fails mid-frame is rocks' to detect, not a broken framing.
    const carriage = new Carriage(socket, role, { secret: this.options.secret, stallTimeout: 2 * this.options.failureTimeout });
    this.carriages.add(carriage);
    carriage.on('packet', (p: Buffer) => this.fromCarriage(carriage, role, peerHost, p));
    carriage.on('rejected', () => this.counters.forged++);
    carriage.on('resync', (reason: string) => {
      this.counters.resyncs++;
      this.log.warn({ peer: peerHost ?? socket.remoteAddress, reason }, 'carriage framing broken (altered in transit?): resynchronizing');
    });
    carriage.on('resynced', (info: { ms: number; discardedBytes: number }) =>
      this.log.info({ peer: peerHost ?? socket.remoteAddress, ...info }, 'carriage resynchronized'),
    );
    carriage.on('suspend', () => this.onSuspend(carriage));
    carriage.on('resume', () => this.onResume(carriage));
    carriage.on('move', (reason: string) =>
      this.log.info({ peer: carriage.socket.remoteAddress, local: carriage.socket.localAddress, reason }, 'carriage moved to a new connection'),
    );
    carriage.once('close', (reason: string) => {
      // Its connections cannot continue: reset them locally rather than hold them forever.
      let reset = 0;
      for (const flow of [...this.flows.values()]) {
        if (this.carriageOf(flow) !== carriage) continue;
        const rst = flow.ending ? undefined : this.flows.resetPacket(flow);
        if (rst && this.parts.tun.write(Buffer.concat([PLAIN_VNET_HEADER, rst]))) reset++;
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
    this.suspendedSince.set(carriage, this.clock.now());
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
    this.log.info(
      { peer: carriage.socket.remoteAddress, outageMs: since === undefined ? undefined : Math.round(this.clock.now() - since) },
      'carriage resumed',
    );
    for (const flow of this.flows.values()) {
      if (this.carriageOf(flow) !== carriage) continue;
      const ack = this.flows.reopenAck(flow);
      if (ack) this.inject(ack, true);
    }
  }

  private carriageOf(flow: Flow): Carriage | undefined {
    return this.clients.get(flow.remote.address) ?? this.hosts.carriageOf(flow.remote.address);
  }

  /** Bytes in custody: carried and not yet acknowledged by a peer daemon, on every carriage. */
  private heldTotal(): number {
    let n = 0;
    for (const c of this.carriages) n += c.heldBytes;
    return n;
  }

  // ---- the kernel -----------------------------------------------------------------------------

  /** A change to the kernel's tables while running: a failure is logged, never fatal (the packet path still works, less directly). */
  private kernel(what: string, change: (kernel: RackParts['kernel']) => void): void {
    try {
      change(this.parts.kernel);
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, `cannot ${what}`);
    }
  }

  /** Writes a packet into the kernel: carried ones have their virtio_net_hdr, forged ones get a plain one. */
  private inject(packet: Buffer, forged: boolean): void {
    if (!this.parts.tun.write(forged ? Buffer.concat([PLAIN_VNET_HEADER, packet]) : packet)) return;
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
    if (this.parts.raw.send(packet)) this.counters.packetsPassed++;
  }

  /** A rocks connection needs no carriage: its packets go direct from now on, both ways (each daemon bypasses its own side). */
  private bypassFlow(flow: Flow): void {
    this.bypass(flow.local.address, flow.local.port, flow.remote.address, flow.remote.port);
    this.flows.delete(flow);
    this.counters.bypassed++;
    this.log.info(
      { local: `${flow.local.address}:${flow.local.port}`, remote: `${flow.remote.address}:${flow.remote.port}` },
      'a rocks connection: left to rocks',
    );
  }

  private bypass(srcAddress: string, srcPort: number, dstAddress: string, dstPort: number): void {
    this.kernel('bypass a connection', (k) => k.addBypass(srcAddress, srcPort, dstAddress, dstPort));
  }

  /**
   * Keeps the source address of every local connection on the host: when
   * the address goes from its interface (the client moved), it is put on
   * the TUN, so the connection's socket can still send from it.
   */
  private keepAddresses(): void {
    if (this.stopped) return;
    const present = this.parts.addresses.addresses();
    for (const flow of this.flows.values()) {
      const address = flow.local.address;
      if (flow.ending || present.has(address) || this.kept.has(address)) continue;
      this.kept.add(address);
      this.kernel('keep an address', (k) => k.keepAddress(address));
      this.log.info({ address }, 'local address gone: kept on the TUN for the connections that use it');
    }
  }
}

function startsWithEdp(payload: Buffer): boolean {
  const n = Math.min(payload.length, EDP_MAGIC.length);
  return n >= 4 && payload.subarray(0, n).equals(EDP_MAGIC.subarray(0, n));
}
