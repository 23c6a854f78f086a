// The server side of a SOCKS5 handshake (RFC 1928, with RFC 1929
// username/password), as a state machine with no I/O: bytes in, bytes to
// send and the outcome out. Only CONNECT is served; BIND and UDP ASSOCIATE
// get "command not supported". Bytes a client sends after its request,
// before our reply (some pipeline), are handed on with the request.

import { isIPv4, isIPv6 } from 'node:net';
import { timingSafeEqual } from 'node:crypto';

/** Reply codes (RFC 1928 §6). */
export const REPLY = {
  SUCCEEDED: 0x00,
  GENERAL_FAILURE: 0x01,
  NOT_ALLOWED: 0x02,
  NETWORK_UNREACHABLE: 0x03,
  HOST_UNREACHABLE: 0x04,
  CONNECTION_REFUSED: 0x05,
  TTL_EXPIRED: 0x06,
  COMMAND_NOT_SUPPORTED: 0x07,
  ADDRESS_TYPE_NOT_SUPPORTED: 0x08,
} as const;

const VERSION = 5;
const NO_AUTH = 0x00;
const USER_PASSWORD = 0x02;
const NO_ACCEPTABLE = 0xff;
const CONNECT = 0x01;
const ATYP_IPV4 = 0x01;
const ATYP_DOMAIN = 0x03;
const ATYP_IPV6 = 0x04;

export interface Credentials {
  user: string;
  password: string;
}

export interface ConnectRequest {
  host: string;
  port: number;
  /** What the client sent after its request, to go to the target first. */
  early: Buffer;
}

export type HandshakeStep =
  | { type: 'more'; send?: Buffer }
  | { type: 'connect'; send?: Buffer; request: ConnectRequest }
  /** The handshake failed: send `send` if given (a reply the client can read), then close. */
  | { type: 'refuse'; send?: Buffer; reason: string };

type State = 'greeting' | 'auth' | 'request' | 'done';

export class Socks5Handshake {
  private state: State = 'greeting';
  private buffer: Buffer = Buffer.alloc(0);

  constructor(private readonly credentials?: Credentials) {}

  /** Feeds the client's bytes; says what to send and whether the handshake is over. */
  push(chunk: Buffer): HandshakeStep {
    if (this.state === 'done') throw new Error('the SOCKS handshake is over');
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    const sent: Buffer[] = [];
    for (;;) {
      const step = this.step();
      if (step === undefined) return { type: 'more', send: join(sent) };
      if (step.type !== 'more') {
        this.state = 'done';
        return { ...step, send: join(step.send ? [...sent, step.send] : sent) };
      }
      if (step.send) sent.push(step.send);
    }
  }

  /** One message, if complete: undefined when more bytes are needed. */
  private step(): HandshakeStep | undefined {
    const b = this.buffer;
    if (b.length === 0) return undefined;
    switch (this.state) {
      case 'greeting': {
        if (b[0] !== VERSION) return { type: 'refuse', reason: `not SOCKS5 (first byte 0x${b[0].toString(16).padStart(2, '0')})` };
        if (b.length < 2) return undefined;
        const n = b[1];
        if (n === 0) return { type: 'refuse', send: Buffer.from([VERSION, NO_ACCEPTABLE]), reason: 'greeting offers no method' };
        if (b.length < 2 + n) return undefined;
        const methods = b.subarray(2, 2 + n);
        this.buffer = b.subarray(2 + n);
        const wanted = this.credentials ? USER_PASSWORD : NO_AUTH;
        if (!methods.includes(wanted)) {
          const what = this.credentials ? 'username/password' : 'no authentication';
          return { type: 'refuse', send: Buffer.from([VERSION, NO_ACCEPTABLE]), reason: `client does not offer ${what}` };
        }
        this.state = this.credentials ? 'auth' : 'request';
        return { type: 'more', send: Buffer.from([VERSION, wanted]) };
      }
      case 'auth': {
        // RFC 1929: VER(1) ULEN(1) UNAME PLEN(1) PASSWD
        if (b[0] !== 1) return { type: 'refuse', send: Buffer.from([1, 1]), reason: 'bad username/password version' };
        if (b.length < 2) return undefined;
        const ulen = b[1];
        if (b.length < 3 + ulen) return undefined;
        const plen = b[2 + ulen];
        if (b.length < 3 + ulen + plen) return undefined;
        const user = b.subarray(2, 2 + ulen);
        const password = b.subarray(3 + ulen, 3 + ulen + plen);
        this.buffer = b.subarray(3 + ulen + plen);
        const ok = same(user, this.credentials!.user) && same(password, this.credentials!.password);
        if (!ok) return { type: 'refuse', send: Buffer.from([1, 1]), reason: `wrong username or password (user '${user.toString('latin1')}')` };
        this.state = 'request';
        return { type: 'more', send: Buffer.from([1, 0]) };
      }
      case 'request': {
        // VER CMD RSV ATYP DST.ADDR DST.PORT
        if (b[0] !== VERSION) return { type: 'refuse', reason: `request of version ${b[0]}` };
        if (b.length < 5) return undefined;
        const atyp = b[3];
        let addressEnd: number;
        if (atyp === ATYP_IPV4) addressEnd = 4 + 4;
        else if (atyp === ATYP_IPV6) addressEnd = 4 + 16;
        else if (atyp === ATYP_DOMAIN) addressEnd = 5 + b[4];
        else return { type: 'refuse', send: reply(REPLY.ADDRESS_TYPE_NOT_SUPPORTED), reason: `address type ${atyp}` };
        if (b.length < addressEnd + 2) return undefined;
        const command = b[1];
        if (command !== CONNECT) return { type: 'refuse', send: reply(REPLY.COMMAND_NOT_SUPPORTED), reason: `command ${command} (only CONNECT)` };
        let host: string;
        if (atyp === ATYP_IPV4) host = [...b.subarray(4, 8)].join('.');
        else if (atyp === ATYP_IPV6) host = ipv6(b.subarray(4, 20));
        else {
          host = b.toString('latin1', 5, addressEnd);
          if (!/^[A-Za-z0-9._-]{1,253}$/.test(host) && !isIPv6(host)) {
            return { type: 'refuse', send: reply(REPLY.HOST_UNREACHABLE), reason: `not a host name: ${JSON.stringify(host)}` };
          }
        }
        const port = b.readUInt16BE(addressEnd);
        if (port === 0) return { type: 'refuse', send: reply(REPLY.HOST_UNREACHABLE), reason: 'port 0' };
        const early = Buffer.from(b.subarray(addressEnd + 2));
        this.buffer = Buffer.alloc(0);
        return { type: 'connect', request: { host, port, early } };
      }
      default:
        return undefined;
    }
  }
}

/** A reply to a request: the code, and the IPv4 address the proxy connected from (zeros otherwise). */
export function reply(code: number, bound?: { address: string; port: number }): Buffer {
  if (bound !== undefined && isIPv4(bound.address)) {
    const out = Buffer.alloc(10);
    out.set([VERSION, code, 0, ATYP_IPV4]);
    bound.address.split('.').forEach((part, i) => {
      out[4 + i] = Number(part);
    });
    out.writeUInt16BE(bound.port, 8);
    return out;
  }
  // An IPv6 BND.ADDR would need the address as bytes, which Node does not give; clients ignore it for CONNECT.
  return Buffer.from([VERSION, code, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0]);
}

/** The reply code for an error connecting to the target. */
export function replyFor(err: NodeJS.ErrnoException): number {
  switch (err.code) {
    case 'ECONNREFUSED':
      return REPLY.CONNECTION_REFUSED;
    case 'ENETUNREACH':
    case 'ENETDOWN':
      return REPLY.NETWORK_UNREACHABLE;
    case 'EHOSTUNREACH':
    case 'EHOSTDOWN':
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EAI_NONAME':
      return REPLY.HOST_UNREACHABLE;
    case 'ETIMEDOUT':
    case 'ERR_ROCKS_CONNECT_TIMEOUT':
      return REPLY.TTL_EXPIRED;
    default:
      return REPLY.GENERAL_FAILURE;
  }
}

function join(parts: Buffer[]): Buffer | undefined {
  return parts.length === 0 ? undefined : parts.length === 1 ? parts[0] : Buffer.concat(parts);
}

function same(given: Buffer, expected: string): boolean {
  const want = Buffer.from(expected, 'utf8');
  return given.length === want.length && timingSafeEqual(given, want);
}

function ipv6(bytes: Buffer): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
  // Node accepts the full form; the shortest form is only for people.
  return groups.join(':');
}
