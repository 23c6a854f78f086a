// What a rack daemon knows about each protected TCP connection, enough to
// stand in for the peer while the path between the daemons is down. Pure:
// packets in, packets to write into the TUN out; no I/O, no clock of its own.
//
// While the path is up the daemon only watches: every packet of a protected
// connection goes through the carriage (src/racks/carriage.ts), which
// delivers each one exactly once, in order, after any failure. So everything
// the local application sent is in the daemon's custody. When the path goes
// down, the daemon says so to the application's TCP in the only way that
// keeps it waiting forever: an ACK "from the peer" for everything in custody,
// with a zero window. The sender's retransmission count resets (the ACK
// acknowledges new data), and it enters persist mode, where it stays as long
// as its window probes are answered, which the daemon does with the same ACK.
// When the path returns, an ACK with the peer's last window reopens the
// flow. The peer's real ACKs for the data in custody arrive later and are
// old news to the sender's TCP, which ignores them.
//
// Sequence numbers are compared modulo 2^32 (RFC 1982 serial arithmetic).

import { buildTcpPacket, TcpFlags, type Endpoint, type TcpPacket } from './packet.js';

/** Which way a packet goes: `out` from a local application (read from the TUN), `in` from the peer daemon. */
export type Direction = 'out' | 'in';

export interface Flow {
  readonly key: string;
  readonly local: Endpoint;
  readonly remote: Endpoint;
  /** Sequence number just past the last byte (SYN and FIN count) the local side sent. */
  localNext: number | undefined;
  /** Latest timestamp value the local side sent (RFC 7323), for echoing. */
  localTs: number | undefined;
  /** Sequence number just past the last byte the remote side sent. */
  remoteNext: number | undefined;
  /** The remote's last acknowledgement number (what it has of ours). */
  remoteAck: number | undefined;
  /** The raw window field the remote last advertised. */
  remoteWindow: number;
  remoteTs: number | undefined;
  /** Both SYNs carried timestamps: every segment must. */
  timestamps: boolean;
  /** A zero window was forged and not yet reopened. */
  held: boolean;
  /** Bytes of payload taken into custody while held. */
  heldBytes: number;
  /** FIN or RST seen: the flow can be forgotten once quiet. */
  ending: boolean;
  /** The first payload of each direction has been seen (EDP detection looks at it). */
  sawPayload: { out: boolean; in: boolean };
  lastSeen: number;
}

/** `local addr:port > remote addr:port`. */
export function flowKey(local: Endpoint, remote: Endpoint): string {
  return `${local.address}:${local.port}>${remote.address}:${remote.port}`;
}

/** a is after b, modulo 2^32. */
export function seqAfter(a: number, b: number): boolean {
  return ((a - b) | 0) > 0;
}

const mod32 = (n: number): number => n >>> 0;

/** The sequence number just past `p`: payload, SYN and FIN each take room. */
export function segmentEnd(p: TcpPacket): number {
  return mod32(p.seq + p.payload.length + (p.flags & TcpFlags.SYN ? 1 : 0) + (p.flags & TcpFlags.FIN ? 1 : 0));
}

export interface FlowLimits {
  /** Most flows tracked at once; beyond it new connections are not protected. */
  maxFlows: number;
  /** A quiet flow that saw FIN or RST is forgotten after this long (ms). */
  endedLinger: number;
}

export const DEFAULT_FLOW_LIMITS: FlowLimits = { maxFlows: 10_000, endedLinger: 120_000 };

export class FlowTable {
  private readonly flows = new Map<string, Flow>();

  constructor(private readonly limits: FlowLimits = DEFAULT_FLOW_LIMITS) {}

  get size(): number {
    return this.flows.size;
  }

  values(): IterableIterator<Flow> {
    return this.flows.values();
  }

  /** The flow `p` belongs to, if known, without recording anything. */
  find(direction: Direction, p: TcpPacket): Flow | undefined {
    return this.flows.get(
      direction === 'out'
        ? flowKey({ address: p.src, port: p.srcPort }, { address: p.dst, port: p.dstPort })
        : flowKey({ address: p.dst, port: p.dstPort }, { address: p.src, port: p.srcPort }),
    );
  }

  /**
   * Records what `p` says about its connection. A SYN without ACK from either
   * side starts a flow (when there is room: 'full' otherwise); other packets
   * update a known flow. Returns the flow, 'full', or undefined for a packet
   * of a connection this table does not know (one that began before the
   * daemon, or past the limit).
   */
  observe(direction: Direction, p: TcpPacket, now: number): Flow | 'full' | undefined {
    const local = direction === 'out' ? { address: p.src, port: p.srcPort } : { address: p.dst, port: p.dstPort };
    const remote = direction === 'out' ? { address: p.dst, port: p.dstPort } : { address: p.src, port: p.srcPort };
    const key = flowKey(local, remote);
    let flow = this.flows.get(key);
    const opening = (p.flags & (TcpFlags.SYN | TcpFlags.ACK)) === TcpFlags.SYN;
    if (flow === undefined || (opening && flow.ending)) {
      if (!opening) return undefined;
      if (flow === undefined && this.flows.size >= this.limits.maxFlows && !this.evictEnded()) return 'full';
      flow = {
        key,
        local,
        remote,
        localNext: undefined,
        localTs: undefined,
        remoteNext: undefined,
        remoteAck: undefined,
        remoteWindow: 0,
        remoteTs: undefined,
        timestamps: p.options.timestamp !== undefined,
        held: false,
        heldBytes: 0,
        ending: false,
        sawPayload: { out: false, in: false },
        lastSeen: now,
      };
      this.flows.set(key, flow);
    }
    flow.lastSeen = now;
    const end = segmentEnd(p);
    if (p.flags & TcpFlags.SYN && p.flags & TcpFlags.ACK) flow.timestamps = flow.timestamps && p.options.timestamp !== undefined;
    if (p.flags & (TcpFlags.FIN | TcpFlags.RST)) flow.ending = true;
    if (direction === 'out') {
      if (flow.localNext === undefined || seqAfter(end, flow.localNext)) flow.localNext = end;
      if (p.options.timestamp) flow.localTs = p.options.timestamp.value;
    } else {
      if (flow.remoteNext === undefined || seqAfter(end, flow.remoteNext)) flow.remoteNext = end;
      if (p.flags & TcpFlags.ACK && (flow.remoteAck === undefined || seqAfter(p.ack, flow.remoteAck))) flow.remoteAck = p.ack;
      if (p.flags & TcpFlags.ACK) flow.remoteWindow = p.window;
      if (p.options.timestamp) flow.remoteTs = p.options.timestamp.value;
    }
    return flow;
  }

  /**
   * The path is down: the ACK that holds the local sender, for everything it
   * sent, with a zero window. Undefined while the handshake is incomplete
   * (nothing can be acknowledged "from" a peer whose sequence we do not know).
   */
  holdAck(flow: Flow, bytes = 0): Buffer | undefined {
    if (flow.localNext === undefined || flow.remoteNext === undefined) return undefined;
    flow.held = true;
    flow.heldBytes += bytes;
    return this.ack(flow, flow.localNext, 0);
  }

  /**
   * The path is back: reopen the window at what the peer last advertised.
   * The acknowledgement stays at what the daemon has in custody.
   */
  reopenAck(flow: Flow): Buffer | undefined {
    if (!flow.held || flow.localNext === undefined || flow.remoteNext === undefined) return undefined;
    flow.held = false;
    flow.heldBytes = 0;
    return this.ack(flow, flow.localNext, flow.remoteWindow);
  }

  /**
   * The carriage is gone for good (its suspend limit passed, or the peer
   * daemon went away): a reset "from the peer", so the local application
   * learns at once instead of waiting on a zero window forever.
   */
  resetPacket(flow: Flow): Buffer | undefined {
    if (flow.remoteNext === undefined) return undefined;
    return buildTcpPacket({
      src: flow.remote.address,
      dst: flow.local.address,
      srcPort: flow.remote.port,
      dstPort: flow.local.port,
      seq: flow.remoteNext,
      ack: flow.localNext ?? 0,
      flags: TcpFlags.RST | TcpFlags.ACK,
      window: 0,
    });
  }

  /** Flows whose local side has data the remote has not acknowledged: they need holding at once. */
  *unacknowledged(): IterableIterator<Flow> {
    for (const f of this.flows.values()) {
      if (f.localNext !== undefined && f.remoteAck !== undefined && seqAfter(f.localNext, f.remoteAck)) yield f;
    }
  }

  /** Forgets ended flows that have been quiet for `endedLinger`. Returns how many. */
  sweep(now: number): number {
    let n = 0;
    for (const [key, f] of this.flows) {
      if (f.ending && now - f.lastSeen >= this.limits.endedLinger) {
        this.flows.delete(key);
        n++;
      }
    }
    return n;
  }

  /** Makes room by forgetting the quietest flow that has ended (its late packets are carried untracked). */
  private evictEnded(): boolean {
    let oldest: Flow | undefined;
    for (const f of this.flows.values()) if (f.ending && (oldest === undefined || f.lastSeen < oldest.lastSeen)) oldest = f;
    if (oldest === undefined) return false;
    this.flows.delete(oldest.key);
    return true;
  }

  delete(flow: Flow): void {
    this.flows.delete(flow.key);
  }

  private ack(flow: Flow, ack: number, window: number): Buffer {
    const timestamp =
      flow.timestamps && flow.remoteTs !== undefined && flow.localTs !== undefined ? { value: flow.remoteTs, echo: flow.localTs } : undefined;
    return buildTcpPacket({
      src: flow.remote.address,
      dst: flow.local.address,
      srcPort: flow.remote.port,
      dstPort: flow.local.port,
      seq: flow.remoteNext!,
      ack,
      flags: TcpFlags.ACK,
      window,
      // NOP NOP TIMESTAMP, as Linux lays it out on an ACK.
      ...(timestamp ? { options: timestampOption(timestamp.value, timestamp.echo) } : {}),
    });
  }
}

function timestampOption(value: number, echo: number): Buffer {
  const b = Buffer.alloc(12);
  b[0] = 1;
  b[1] = 1;
  b[2] = 8;
  b[3] = 10;
  b.writeUInt32BE(value >>> 0, 4);
  b.writeUInt32BE(echo >>> 0, 8);
  return b;
}
