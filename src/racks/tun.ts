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
// - only when the queue is empty, one poll() on the fd and an eventfd runs
//   as a koffi async call, that is on one of libuv's threadpool threads
//   (UV_THREADPOOL_SIZE, 4 by default), and wakes the drain when packets
//   come. Under load the poll is rarely needed, so the threadpool hop is
//   paid per batch, not per packet.
// - close() writes the eventfd, so a pending poll returns at once, and only
//   then closes the fds. A blocking fs.read() on the fd could not be ended
//   that way: closing the fd does not wake a read blocked in another thread,
//   and the process then hangs even in process.exit() (seen on Linux 6.18).
// - the poll has a timeout (POLL_MS) and simply goes round again: a process
//   that dies without close() (an uncaught exception) waits at exit for the
//   threadpool's poll to return, and with an infinite poll it hung forever.
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
const EFD_NONBLOCK = O_NONBLOCK;
const EFD_CLOEXEC = O_CLOEXEC;
const POLLIN = 0x1;
const EAGAIN = 11;
const EINTR = 4;
/** Longest a poll() waits before going round again: how long a dying process can be held up by it. */
const POLL_MS = 250;

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
  /** poll() calls made on the threadpool (how often the queue ran dry). */
  polls: number;
}

const SLAB = 1 << 20;
/** Turns of the event loop that look for packets again before waiting in poll(). */
const SPIN_TURNS = 16;

/**
 * An open TUN device. Events: 'packet' (a view of one IP packet, valid for
 * as long as it is referenced), 'error' (a read failed; reading stops),
 * 'close'.
 */
export class TunDevice extends EventEmitter {
  readonly name: string;
  /** Bytes of virtio_net_hdr before each packet: VNET_HEADER with offload, else 0. */
  readonly headerLength: number;
  readonly stats: TunStats = { packetsIn: 0, bytesIn: 0, packetsOut: 0, bytesOut: 0, writeErrors: 0, polls: 0 };
  private readonly libc = libc();
  private fd: number;
  private wakeFd: number;
  private readonly maxPacket: number;
  private readonly batch: number;
  private slab = Buffer.allocUnsafe(SLAB);
  private slabOffset = 0;
  private readonly pollfds = Buffer.alloc(16);
  private polling = false;
  /** Turns of the event loop in a row that found the queue empty. */
  private emptyTurns = 0;
  private scheduled = false;
  private paused = false;
  private closing: Promise<void> | undefined;
  private completeClose: (() => void) | undefined;

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
    this.wakeFd = c.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (this.wakeFd < 0) {
      const errno = lastErrno();
      c.close(this.fd);
      throw new SystemCallError('eventfd', errno);
    }
    this.pollfds.writeInt32LE(this.fd, 0);
    this.pollfds.writeInt16LE(POLLIN, 4);
    this.pollfds.writeInt32LE(this.wakeFd, 8);
    this.pollfds.writeInt16LE(POLLIN, 12);
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
    this.closing = new Promise((resolve) => {
      this.completeClose = () => {
        this.libc.close(this.fd);
        this.libc.close(this.wakeFd);
        this.fd = -1;
        this.wakeFd = -1;
        resolve();
        this.emit('close');
      };
    });
    if (this.polling) {
      const one = Buffer.alloc(8);
      one.writeBigUInt64LE(1n);
      this.libc.write(this.wakeFd, one, 8); // the poll returns, and its callback completes the close
    } else {
      this.completeClose!();
    }
    return this.closing;
  }

  private schedule(): void {
    if (this.scheduled || this.polling || this.paused || this.closing) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.drain();
    });
  }

  /** Reads up to a batch of packets; then yields, or waits in poll() when the queue is empty. */
  private drain(): void {
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
          // Under load the next packet is microseconds away: look again on the next turns of
          // the loop before paying for a poll() on the threadpool and the wake-up after it.
          if (i > 0) this.emptyTurns = 0;
          if (++this.emptyTurns <= SPIN_TURNS) return this.schedule();
          this.emptyTurns = 0;
          return this.wait();
        }
        this.emit('error', new SystemCallError('read', errno, this.name));
        return;
      }
      const packet = this.slab.subarray(this.slabOffset, this.slabOffset + n);
      this.slabOffset += (n + 7) & ~7;
      this.stats.packetsIn++;
      this.stats.bytesIn += n;
      this.emit('packet', packet);
    }
    this.schedule();
  }

  private wait(): void {
    this.polling = true;
    this.stats.polls++;
    this.pollfds.writeInt16LE(0, 6);
    this.pollfds.writeInt16LE(0, 14);
    this.libc.poll.async(this.pollfds, 2, POLL_MS, () => {
      this.polling = false;
      if (this.closing) return this.completeClose!();
      this.schedule();
    });
  }
}
