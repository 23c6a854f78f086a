// Sends a whole IPv4 packet out as the host's own, through the normal
// routing: how a rack daemon lets a packet go unmodified that its rules
// brought to it (the first SYN to a host without a rack daemon, a
// connection past the limits, a rocks connection that needs no carriage).
// A raw socket (IPPROTO_RAW: the packet carries its own IP header) opened
// with koffi, since Node has none; SO_MARK gives its packets the mark that
// racks' rules let pass, so they do not come back into the TUN.

import { errno, libc, SystemCallError } from './libc.js';

const AF_INET = 2;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
const IPPROTO_RAW = 255;
const SOL_SOCKET = 1;
const SO_MARK = 36;

function failure(call: string): Error {
  return new SystemCallError(call, errno());
}

export class RawSender {
  private fd: number;
  private readonly address = Buffer.alloc(16);
  /** Packets the kernel refused (counted, never thrown: one bad packet must not stop the daemon). */
  errors = 0;

  /** Opens the socket; needs CAP_NET_RAW (root). */
  constructor(mark: number) {
    const c = libc();
    this.fd = c.socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
    if (this.fd < 0) throw failure('socket(AF_INET, SOCK_RAW)');
    const value = Buffer.alloc(4);
    value.writeUInt32LE(mark >>> 0);
    if (c.setsockopt(this.fd, SOL_SOCKET, SO_MARK, value, 4) < 0) {
      const err = failure('setsockopt(SO_MARK)');
      c.close(this.fd);
      throw err;
    }
    this.address.writeUInt16LE(AF_INET, 0);
  }

  /** Sends `packet` (IPv4, checksums already right) to its destination address. */
  send(packet: Buffer): boolean {
    if (this.fd < 0 || packet.length < 20) return false;
    packet.copy(this.address, 4, 16, 20);
    if (libc().sendto(this.fd, packet, packet.length, 0, this.address, 16) < 0) {
      this.errors++;
      return false;
    }
    return true;
  }

  close(): void {
    if (this.fd < 0) return;
    libc().close(this.fd);
    this.fd = -1;
  }
}
