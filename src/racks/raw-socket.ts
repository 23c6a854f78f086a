// Sends a whole IPv4 packet out as the host's own, through the normal
// routing: how a rack daemon lets a packet go unmodified that its rules
// brought to it (the first SYN to a host without a rack daemon, a
// connection past the limits, a rocks connection that needs no carriage).
// A raw socket (IPPROTO_RAW: the packet carries its own IP header) opened
// with koffi, since Node has none; SO_MARK gives its packets the mark that
// racks' rules let pass, so they do not come back into the TUN.

import koffi from 'koffi';

const AF_INET = 2;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
const IPPROTO_RAW = 255;
const SOL_SOCKET = 1;
const SO_MARK = 36;

interface Libc {
  socket(domain: number, type: number, protocol: number): number;
  setsockopt(fd: number, level: number, name: number, value: Buffer, length: number): number;
  sendto(fd: number, buf: Buffer, length: number, flags: number, address: Buffer, addressLength: number): number;
  close(fd: number): number;
  strerror(errno: number): string;
}

let libc: Libc | undefined;
function load(): Libc {
  if (libc) return libc;
  const lib = koffi.load('libc.so.6');
  libc = {
    socket: lib.func('int socket(int domain, int type, int protocol)'),
    setsockopt: lib.func('int setsockopt(int fd, int level, int name, const void *value, unsigned int length)'),
    sendto: lib.func('long sendto(int fd, const void *buf, unsigned long length, int flags, const void *address, unsigned int addressLength)'),
    close: lib.func('int close(int fd)'),
    strerror: lib.func('const char *strerror(int errnum)'),
  } as Libc;
  return libc;
}

function failure(call: string): Error {
  const errno = koffi.errno();
  const code = Object.entries(koffi.os.errno).find(([, n]) => n === errno)?.[0] ?? `E${errno}`;
  return Object.assign(new Error(`${call}: ${code} (${load().strerror(errno)})`), { code, errno });
}

export class RawSender {
  private fd: number;
  private readonly address = Buffer.alloc(16);
  /** Packets the kernel refused (counted, never thrown: one bad packet must not stop the daemon). */
  errors = 0;

  /** Opens the socket; needs CAP_NET_RAW (root). */
  constructor(mark: number) {
    const c = load();
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
    if (load().sendto(this.fd, packet, packet.length, 0, this.address, 16) < 0) {
      this.errors++;
      return false;
    }
    return true;
  }

  close(): void {
    if (this.fd < 0) return;
    load().close(this.fd);
    this.fd = -1;
  }
}
