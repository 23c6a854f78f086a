// TLS under rocks links, and EDP by ALPN.
//
// With the `tls` option every TCP link of a session is a TLS 1.3 connection
// that carries the rocks bytes unchanged. A rocks client offers the ALPN
// protocol `rocks/1` before the application's own; a rocks server selects it;
// the server's answer is the EDP verdict (no probe). An ordinary TLS server
// selects something else or nothing, and the client carries on as a plain
// TLS connection. The server reads the ClientHello's ALPN list before handing
// the connection to TLS: a client that offers `rocks/1` gets a rocks link, any
// other gets exactly what a node:tls server with the application's options
// would give it (Node's ALPN callback cannot answer "no protocol", which an
// application without ALPN protocols of its own must be able to give).

import type { Socket } from 'node:net';
import { TLSSocket, type ConnectionOptions } from 'node:tls';
import { CHANNEL_MATERIAL_SIZE, channelKeys } from '../protocol/keys.js';
import type { ChannelKeys } from '../protocol/session.js';

export const ROCKS_ALPN = 'rocks/1';

/** The ALPN protocols of the application's tls options as strings (Node takes strings, buffers or the wire format). */
export function alpnNames(list: ConnectionOptions['ALPNProtocols']): string[] {
  if (list === undefined) return [];
  if (Array.isArray(list)) return list.map((p) => (typeof p === 'string' ? p : Buffer.from(p).toString('latin1')));
  const wire = Buffer.from(list as Uint8Array);
  const names: string[] = [];
  for (let i = 0; i < wire.length; ) {
    const n = wire[i];
    names.push(wire.toString('latin1', i + 1, i + 1 + n));
    i += 1 + n;
  }
  return names;
}

/** What a rocks client offers: `rocks/1`, then the application's own protocols. */
export function clientAlpn(app: ConnectionOptions['ALPNProtocols']): string[] {
  return [ROCKS_ALPN, ...alpnNames(app).filter((p) => p !== ROCKS_ALPN)];
}

/** The TLS exporter label of a session's key (PROTOCOL.md §15.2). */
export const ROCKS_EXPORTER_LABEL = 'EXPORTER-rocks-session-key';

/**
 * The key and id a HELLO on this link gives its session: keying material
 * exported from the link's TLS 1.3 handshake (RFC 8446 §7.5), which only the
 * two ends of this TLS connection can compute. Undefined for a link that is
 * not TLS.
 */
export function linkChannel(socket: Socket): ChannelKeys | undefined {
  if (!(socket instanceof TLSSocket)) return undefined;
  return channelKeys(socket.exportKeyingMaterial(CHANNEL_MATERIAL_SIZE, ROCKS_EXPORTER_LABEL, NO_CONTEXT));
}
const NO_CONTEXT = Buffer.alloc(0);

/** True when this link negotiated rocks. */
export function isRocksLink(socket: TLSSocket): boolean {
  return socket.alpnProtocol === ROCKS_ALPN;
}

/**
 * Marks when a client TLS socket's handshake finished, before Node checks the
 * certificate ('secure' precedes the verification that ends in 'secureConnect'
 * or in an error). An error between the two is a verification failure of a
 * server that completed a genuine handshake, not a broken or tampered link.
 */
const verifying = new WeakSet<TLSSocket>();
export function watchHandshake(socket: TLSSocket): void {
  // Before Node's own 'secure' listener, which verifies and emits 'secureConnect' at once.
  socket.prependOnceListener('secure', () => verifying.add(socket));
  socket.once('secureConnect', () => verifying.delete(socket));
}
export function isVerificationFailure(socket: TLSSocket): boolean {
  return verifying.has(socket);
}

/** Links whose TLS handshake is already done when the session adopts them (a client's first link). */
const secured = new WeakSet<Socket>();
export function markSecured(socket: TLSSocket): void {
  secured.add(socket);
}

/**
 * Calls `open` once the link can carry rocks bytes: at 'connect' for TCP, at
 * 'secureConnect' for TLS, at once (next microtask) if that already happened.
 */
export function whenLinkReady(socket: Socket, open: () => void): void {
  if (secured.has(socket)) queueMicrotask(open);
  else if (socket instanceof TLSSocket) socket.once('secureConnect', open);
  else socket.once('connect', open);
}

// ---- the server's look at the ClientHello ------------------------------------------------

/** Most bytes read before the ClientHello is complete; beyond it the connection goes to TLS as it is. */
export const CLIENT_HELLO_LIMIT = 64 * 1024;

/**
 * The ALPN protocols a ClientHello offers: a list (empty without the
 * extension), 'incomplete' when more bytes are needed, or undefined when the
 * bytes are not a TLS ClientHello we can read (TLS itself then deals with it).
 */
export function offeredAlpn(bytes: Buffer): string[] | 'incomplete' | undefined {
  // The handshake message may span several records: join their payloads.
  const parts: Buffer[] = [];
  let have = 0;
  let need = -1;
  for (let at = 0; ; ) {
    if (bytes.length < at + 5) return bytes.length >= CLIENT_HELLO_LIMIT ? undefined : 'incomplete';
    if (bytes[at] !== 22 || bytes[at + 1] !== 3) return undefined; // not a handshake record
    const len = bytes.readUInt16BE(at + 3);
    if (bytes.length < at + 5 + len) return bytes.length >= CLIENT_HELLO_LIMIT ? undefined : 'incomplete';
    const part = bytes.subarray(at + 5, at + 5 + len);
    parts.push(part);
    have += part.length;
    at += 5 + len;
    if (need < 0 && have >= 4) {
      const head = Buffer.concat(parts);
      if (head[0] !== 1) return undefined; // not a ClientHello
      need = 4 + head.readUIntBE(1, 3);
      if (need > CLIENT_HELLO_LIMIT) return undefined;
    }
    if (need >= 0 && have >= need) return alpnOfHello(Buffer.concat(parts).subarray(4, need));
  }
}

function alpnOfHello(body: Buffer): string[] | undefined {
  try {
    let at = 2 + 32; // version, random
    at += 1 + body[at]; // session id
    at += 2 + body.readUInt16BE(at); // cipher suites
    at += 1 + body[at]; // compression methods
    if (at >= body.length) return [];
    const end = at + 2 + body.readUInt16BE(at);
    at += 2;
    while (at + 4 <= end) {
      const type = body.readUInt16BE(at);
      const len = body.readUInt16BE(at + 2);
      at += 4;
      if (type === 16) {
        const names: string[] = [];
        const listEnd = at + 2 + body.readUInt16BE(at);
        for (let i = at + 2; i < listEnd; ) {
          const n = body[i];
          names.push(body.toString('latin1', i + 1, i + 1 + n));
          i += 1 + n;
        }
        return names;
      }
      at += len;
    }
    return [];
  } catch {
    return undefined; // out of range: a broken ClientHello
  }
}
