// The few libc calls racks needs that Node has no API for, through koffi
// (FFI): the TUN device (open, ioctl, fcntl, read, write) and the raw
// socket (socket, setsockopt, sendto). Loaded once, on first use.

import koffi from 'koffi';

export interface Libc {
  open(path: string, flags: number): number;
  close(fd: number): number;
  read(fd: number, buf: Buffer, count: number): number;
  write(fd: number, buf: Buffer, count: number): number;
  ioctl(fd: number, request: number, ...rest: unknown[]): number;
  fcntl(fd: number, command: number, ...rest: unknown[]): number;
  socket(domain: number, type: number, protocol: number): number;
  setsockopt(fd: number, level: number, name: number, value: Buffer, length: number): number;
  sendto(fd: number, buf: Buffer, length: number, flags: number, address: Buffer, addressLength: number): number;
  strerror(errnum: number): string;
}

let loaded: Libc | undefined;

export function libc(): Libc {
  if (loaded) return loaded;
  const lib = koffi.load('libc.so.6');
  loaded = {
    open: lib.func('int open(const char *path, int flags)'),
    close: lib.func('int close(int fd)'),
    read: lib.func('long read(int fd, void *buf, unsigned long count)'),
    write: lib.func('long write(int fd, const void *buf, unsigned long count)'),
    ioctl: lib.func('int ioctl(int fd, unsigned long request, ...)'),
    fcntl: lib.func('int fcntl(int fd, int command, ...)'),
    socket: lib.func('int socket(int domain, int type, int protocol)'),
    setsockopt: lib.func('int setsockopt(int fd, int level, int name, const void *value, unsigned int length)'),
    sendto: lib.func('long sendto(int fd, const void *buf, unsigned long length, int flags, const void *address, unsigned int addressLength)'),
    strerror: lib.func('const char *strerror(int errnum)'),
  } as Libc;
  return loaded;
}

/** The last call's errno. */
export const errno = (): number => koffi.errno();

/** A failed system call, with the errno's name where known (like Node's own errors). */
export class SystemCallError extends Error {
  readonly errno: number;
  readonly code: string;
  readonly syscall: string;

  constructor(syscall: string, errnum: number, detail = '') {
    const code = Object.entries(koffi.os.errno).find(([, n]) => n === errnum)?.[0] ?? `E${errnum}`;
    super(`${syscall}${detail ? ` ${detail}` : ''}: ${code} (${libc().strerror(errnum)})`);
    this.name = 'SystemCallError';
    this.errno = errnum;
    this.code = code;
    this.syscall = syscall;
  }
}
