// The parts a rack daemon (src/racks/daemon.ts) is built from, as
// interfaces, in the manner of wireguard-go's NewDevice(tun.Device,
// conn.Bind, logger): the daemon decides, the parts do the I/O. The real
// parts (src/racks/system.ts: the TUN, a raw socket, nftables and ip, `ip
// monitor address`, rocks on the rack port, the system clock) need root and
// a kernel; the unit tests (test/racks/daemon.test.ts) give the same daemon
// in-memory ones, and real rocks connections over loopback for carriages.

import type { ReliableSocket } from '../node/socket.js';

/** The TUN (src/racks/tun.ts): whole IP packets, each with its virtio_net_hdr first. */
export interface PacketDevice {
  readonly name: string;
  /** A packet the kernel routed into the device: a view, valid only during the call. */
  on(event: 'packet', listener: (packet: Buffer) => void): this;
  on(event: 'error', listener: (err: Error) => void): this;
  /** Puts one packet into the kernel as if it arrived on the device; false when refused. */
  write(packet: Buffer): boolean;
  close(): Promise<void>;
}

/** Sends a packet out as the host's own, untouched (src/racks/raw-socket.ts). */
export interface PacketSender {
  /** `packet`: IPv4 with its checksums right, no virtio_net_hdr. False when refused. */
  send(packet: Buffer): boolean;
  close(): void;
}

/** What the daemon changes in the kernel's tables (src/racks/netfilter.ts); each call may throw. */
export interface KernelControl {
  /** Steers the protected connections' packets into the device. */
  install(): void;
  /** Takes out everything install and the calls below put in. */
  remove(): void;
  /** Into the set `plain` for `ttl` ms: the host's connections leave untouched. */
  addPlain(address: string, ttl: number): void;
  /** Into the set `clients`: replies to this inner address take the carriage. */
  addClient(address: string): void;
  /** Into the set `bypass`: one direction of a connection that needs no carriage. */
  addBypass(src: string, srcPort: number, dst: string, dstPort: number): void;
  /** Puts an address that left its interface on the device, for the sockets bound to it. */
  keepAddress(address: string): void;
}

/** The host's own IPv4 addresses, and word when they change (the network watcher, src/node/network-watch.ts). */
export interface AddressWatcher {
  /** Calls `onChange` whenever the addresses may have changed. */
  start(onChange: () => void): void;
  /** The IPv4 addresses on the host's interfaces now. */
  addresses(): Set<string>;
  close(): void;
}

/** Rocks connections on the rack port: carriages, and the questions of EDP for racks. */
export interface CarriageLinks {
  /** Listens on the rack port; each connection that arrives goes to `onSocket`. */
  listen(onSocket: (socket: ReliableSocket) => void): Promise<void>;
  /** Asks `address`'s rack port: 'connect' comes with `reliable` set when a rack daemon answered, 'error' otherwise. */
  dial(address: string): ReliableSocket;
  close(): Promise<void>;
}

/** Time as the daemon reads it (ms, monotonic), and its one periodic chore. */
export interface Clock {
  now(): number;
  /** Runs `fn` every `ms` until the returned function is called; never holds the process open. */
  every(ms: number, fn: () => void): () => void;
}

export interface RackParts {
  tun: PacketDevice;
  raw: PacketSender;
  kernel: KernelControl;
  addresses: AddressWatcher;
  links: CarriageLinks;
  clock: Clock;
}

export const systemClock: Clock = {
  now: () => performance.now(),
  every(ms, fn) {
    const timer = setInterval(fn, ms);
    timer.unref();
    return () => clearInterval(timer);
  },
};
