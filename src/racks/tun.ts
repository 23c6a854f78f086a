// A TUN device for racks: the kernel routes the packets of protected
// connections into it, and racks writes the peer's packets back into it, one
// whole IPv4 packet per read or write (IFF_TUN | IFF_NO_PI).
//
// Node cannot ioctl, so the device is opened with koffi (FFI to libc):
// open("/dev/net/tun") and ioctl(TUNSETIFF, struct ifreq). The device
// belongs to the network namespace of the process that opens it, and goes
// away when its last descriptor closes (it is not made persistent).
//
// Reading without blocking the event loop. libuv cannot watch a character
// device (net.Socket refuses the fd), so:
// - the fd is non-blocking, and packets are drained with plain read() calls
//   on the main thread until EAGAIN (a batch at a time, then the loop gets
//   a turn);
// - when the queue runs dry the fd turns signal-driven (O_ASYNC, owned by
//   this process): the kernel sends SIGIO when a packet is queued, and the
//   process's SIGIO listener, which libuv runs on the event loop, starts a
//   drain. Waiting costs no thread, and a packet wakes the event loop
//   directly. Signals go off once a turn reads a second packet, as traffic
//   flows: left on, one per packet halved what the reader moved (the TUN
//   bench: 78,000 packets a second against 153,000). One packet at a time
//   (a round trip) keeps them on: a wait and a wake then cost no fcntl().
//   A poll() on libuv's threadpool did this before: a thread's wake-up and
//   a hop to the main thread for each packet of sparse traffic (a racks
//   round trip waits for two TUN reads), and it held a dying process at
//   exit until the poll timed out.
// - the listener is installed before the first device turns O_ASYNC on and
//   is never removed: without one, SIGIO's default action ends the process,
//   and a signal already on its way when a device closes would do that.
// - Node's signal listeners do not keep a process alive, so an open device
//   holds a timer that never fires, as an open socket holds its handle.
// Writes are synchronous non-blocking write() calls: a TUN write never waits,
// the kernel takes the packet or drops it and says so.
//
// The constants are those of Linux on x86-64 and arm64 (the generic ABI).

import { EventEmitter } from 'node:events';
import { errno as lastErrno, libc, SystemCallError } from './libc.js';

const O_RDWR = 0o2;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const IFF_TUN = 0x0001;
const IFF_NO_PI = 0x1000;
const IFF_VNET_HDR = 0x4000;
const TUNSETIFF = 0x400454ca; // _IOW('T', 202, int)
const TUNSETOFFLOAD = 0x400454d0; // _IOW('T', 208, unsigned int)
const TUN_F_CSUM = 0x01;
const TUN_F_TSO4 = 0x02;
const TUN_F_TSO6 = 0x04;
const TUN_F_TSO_ECN = 0x08;

/**
 * With `offload`, every packet read or written starts with this many bytes of
 * struct virtio_net_hdr (flags, gso_type, hdr_len, gso_size, csum_start,
 * csum_offset; little-endian): the kernel hands over whole TCP segments of up
 * to 64 KiB (GSO) with their checksum left to do, and takes them back alike.
 */
export const VNET_HEADER = 10;
/** virtio_net_hdr.flags: the TCP checksum is still to be computed (csum_start/csum_offset). */
export const VNET_NEEDS_CSUM = 1;
/** A virtio_net_hdr that says: an ordinary packet, checksums done. */
export const PLAIN_VNET_HEADER: Buffer = Buffer.alloc(VNET_HEADER);
const IFNAMSIZ = 16;
const IFREQ_SIZE = 40;
const F_GETFL = 3;
const F_SETFL = 4;
const F_SETOWN = 8;
const O_ASYNC = 0o20000;
const EAGAIN = 11;
const EINTR = 4;

/** A failed system call on the device (the errno's name in `code`). */
export { SystemCallError as TunError };

export interface TunOptions {
  /** Interface name, at most 15 bytes; a `%d` lets the kernel pick a number. Default 'rack%d'. */
  name?: string;
  /** Largest packet read (the buffer given to read()); bigger ones are cut by the kernel. Default 65535. */
  maxPacket?: number;
  /** Packets read in one turn of the event loop before yielding to other work. Default 64. */
  batch?: number;
  /**
   * Segmentation and checksum offload (IFF_VNET_HDR, TUNSETOFFLOAD): packets
   * carry a VNET_HEADER-byte header and may be TCP segments of up to 64 KiB,
   * one read where 1500-byte packets would take forty. Default false.
   */
  offload?: boolean;
}

export interface TunStats {
  packetsIn: number;
  bytesIn: number;
  packetsOut: number;
  bytesOut: number;
  /** Writes the kernel refused (a malformed packet, the device down). */
  writeErrors: number;
  /** Times the queue ran dry and reading waited for the kernel's SIGIO. */
  waits: number;
}

const SLAB = 1 << 20;

/** The open devices, woken by the process's one SIGIO listener. */
const devices = new Set<TunDevice>();
let listening = false;
function onSigio(): void {
  for (const tun of devices) tun.readable();
}

/**
 * An open TUN device. Events: 'packet' (a view of one IP packet, valid for
 * as long as it is referenced), 'error' (a read failed; reading stops),
 * 'close'.
 */
export class TunDevice extends EventEmitter {
  readonly name: string;
  /** Bytes of virtio_net_hdr before each packet: VNET_HEADER with offload, else 0. */
  readonly headerLength: number;
  readonly stats: TunStats = { packetsIn: 0, bytesIn: 0, packetsOut: 0, bytesOut: 0, writeErrors: 0, waits: 0 };
  private readonly libc = libc();
  private fd: number;
  private readonly maxPacket: number;
  private readonly batch: number;
  private slab = Buffer.allocUnsafe(SLAB);
  private slabOffset = 0;
  /** The queue ran dry: reading waits for SIGIO. */
  private waiting = false;
  /** O_ASYNC is on: the kernel signals each packet it queues. */
  private signalled = false;
  /** The fd's file status flags, without O_ASYNC. */
  private readonly flags: number;
  private scheduled = false;
  private paused = false;
  private closing: Promise<void> | undefined;
  /** Keeps the process alive while the device is open (see above). */
  private readonly keepAlive: NodeJS.Timeout;

  /** Creates (or attaches to) the TUN interface; it is down and has no address until configured. */
  constructor(options: TunOptions = {}) {
    super();
    const name = options.name ?? 'rack%d';
    if (Buffer.byteLength(name) >= IFNAMSIZ || name.length === 0 || /[\s/:]/.test(name)) {
      throw new RangeError(`TUN name must be 1..15 bytes without spaces, '/' or ':', got ${JSON.stringify(name)}`);
    }
    this.maxPacket = (options.maxPacket ?? 65535) + (options.offload ? VNET_HEADER : 0);
    this.batch = options.batch ?? 64;
    const c = this.libc;
    this.fd = c.open('/dev/net/tun', O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (this.fd < 0) throw new SystemCallError('open', lastErrno(), '/dev/net/tun');
    const ifr = Buffer.alloc(IFREQ_SIZE);
    ifr.write(name, 0, IFNAMSIZ - 1, 'utf8');
    ifr.writeUInt16LE(IFF_TUN | IFF_NO_PI | (options.offload ? IFF_VNET_HDR : 0), IFNAMSIZ);
    if (c.ioctl(this.fd, TUNSETIFF, 'void *', ifr) < 0) {
      const errno = lastErrno();
      c.close(this.fd);
      throw new SystemCallError('ioctl', errno, `TUNSETIFF ${name}`);
    }
    if (options.offload && c.ioctl(this.fd, TUNSETOFFLOAD, 'unsigned long', TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN) < 0) {
      const errno = lastErrno();
      c.close(this.fd);
      throw new SystemCallError('ioctl', errno, `TUNSETOFFLOAD ${name}`);
    }
    this.headerLength = options.offload ? VNET_HEADER : 0;
    this.name = ifr.toString('utf8', 0, ifr.indexOf(0) === -1 || ifr.indexOf(0) > IFNAMSIZ ? IFNAMSIZ : ifr.indexOf(0));
    if (!listening) {
      process.on('SIGIO', onSigio);
      listening = true;
    }
    this.flags = c.fcntl(this.fd, F_GETFL);
    if (this.flags < 0 || c.fcntl(this.fd, F_SETOWN, 'int', process.pid) < 0) {
      const errno = lastErrno();
      c.close(this.fd);
      throw new SystemCallError('fcntl', errno, `F_SETOWN on ${this.name}`);
    }
    devices.add(this);
    this.keepAlive = setInterval(() => {}, 2 ** 31 - 1);
    this.schedule();
  }

  get closed(): boolean {
    return this.closing !== undefined;
  }

  /**
   * Writes one whole IP packet into the kernel, as if it arrived on this
   * interface. Returns false (and counts a write error) when the kernel
   * refuses it; throws only when the device is closed.
   */
  write(packet: Buffer): boolean {
    if (this.closing) throw new Error(`TUN ${this.name} is closed`);
    const n = this.libc.write(this.fd, packet, packet.length);
    if (n !== packet.length) {
      this.stats.writeErrors++;
      return false;
    }
    this.stats.packetsOut++;
    this.stats.bytesOut += n;
    return true;
  }

  /** Stops reading: packets wait in the kernel's queue (txqueuelen), then the kernel drops them. */
  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.schedule();
  }

  /** Stops reading and closes the device (which removes the interface). Safe to call twice. */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    devices.delete(this);
    clearInterval(this.keepAlive);
    this.libc.close(this.fd);
    this.fd = -1;
    this.closing = Promise.resolve();
    process.nextTick(() => this.emit('close'));
    return this.closing;
  }

  /** The process got SIGIO: this device may have packets (the signal does not say whose). */
  readable(): void {
    if (!this.waiting || this.closing) return;
    this.waiting = false;
    // Now, not in a setImmediate: the signal's turn of the loop is the packet's.
    if (this.paused) this.schedule();
    else this.drain();
  }

  /** Turns the kernel's SIGIO for this device on or off. */
  private signal(on: boolean): void {
    if (this.libc.fcntl(this.fd, F_SETFL, 'int', on ? this.flags | O_ASYNC : this.flags) < 0) {
      this.emit('error', new SystemCallError('fcntl', lastErrno(), `O_ASYNC on ${this.name}`));
      return;
    }
    this.signalled = on;
  }

  private schedule(): void {
    if (this.scheduled || this.waiting || this.paused || this.closing) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.drain();
    });
  }

  /** Reads up to a batch of packets; then yields, or waits for SIGIO when the queue is empty. */
  private drain(): void {
    let read = 0;
    for (let i = 0; i < this.batch; i++) {
      if (this.paused || this.closing) return;
      if (SLAB - this.slabOffset < this.maxPacket) {
        this.slab = Buffer.allocUnsafe(SLAB);
        this.slabOffset = 0;
      }
      const n = this.libc.read(this.fd, this.slab.subarray(this.slabOffset, this.slabOffset + this.maxPacket), this.maxPacket);
      if (n < 0) {
        const errno = lastErrno();
        if (errno === EINTR) continue;
        if (errno === EAGAIN) {
          if (!this.signalled) {
            // Signals on, then one more look: a packet queued since the read just made raised none.
            this.signal(true);
            if (this.signalled) continue;
            return; // the error is out
          }
          // From now on a packet raises SIGIO, and readable() drains again.
          this.waiting = true;
          this.stats.waits++;
          return;
        }
        this.emit('error', new SystemCallError('read', errno, this.name));
        return;
      }
      if (++read > 1 && this.signalled) this.signal(false); // packets flow
      const packet = this.slab.subarray(this.slabOffset, this.slabOffset + n);
      this.slabOffset += (n + 7) & ~7;
      this.stats.packetsIn++;
      this.stats.bytesIn += n;
      this.emit('packet', packet);
    }
    this.schedule();
  }
}
