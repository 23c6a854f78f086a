// Pinned server keys for the `tls` option: a pin is the SHA-256 of the
// server certificate's DER SubjectPublicKeyInfo, base64, written
// `sha256:BASE64` (what curl's --pinnedpubkey takes and `rock keygen` prints).
//
// Node checks a certificate's chain before it calls checkServerIdentity, and
// not at all after a self-signed one fails, so a pin alone cannot admit a
// self-signed server. pinnedConnectOptions therefore fetches the server's
// certificate once, checks its pin, and returns options that trust exactly
// that certificate (as a trust anchor) and check the pin again on every link.

import { createHash, X509Certificate } from 'node:crypto';
import { checkServerIdentity as defaultCheckServerIdentity, connect as tlsConnect, type ConnectionOptions, type PeerCertificate } from 'node:tls';

/** The ALPN protocol of rocks links over TLS: a rocks server takes the fetch for a rocks link, and drops it unused. */
const ROCKS_ALPN = 'rocks/1';

/** A pin that does not match: `code` ERR_TLS_PIN_MISMATCH, and the pin the server presented. */
export class PinMismatchError extends Error {
  readonly code = 'ERR_TLS_PIN_MISMATCH';
  constructor(
    readonly expected: string,
    readonly presented: string,
  ) {
    super(`server key does not match the pinned key ${expected} (it presents ${presented})`);
  }
}

/** The pin of a certificate: `sha256:` and the base64 SHA-256 of its DER SubjectPublicKeyInfo. */
export function spkiPin(cert: X509Certificate | PeerCertificate | string | Buffer): string {
  const x509 =
    cert instanceof X509Certificate
      ? cert
      : typeof cert === 'string' || Buffer.isBuffer(cert)
        ? new X509Certificate(cert)
        : new X509Certificate((cert as PeerCertificate).raw);
  const spki = x509.publicKey.export({ type: 'spki', format: 'der' });
  return `sha256:${createHash('sha256').update(spki).digest('base64')}`;
}

/** Checks a pin's form (`sha256:` and 32 bytes in base64); returns it, or throws a TypeError that says what is wrong. */
export function parsePin(text: string): string {
  const m = /^sha256\/\/(.*)$|^sha256:(.*)$/.exec(text);
  const b64 = m ? (m[1] ?? m[2]) : undefined;
  if (b64 === undefined) throw new TypeError(`a pin is sha256:BASE64 (the SHA-256 of the server's public key), got '${text}'`);
  if (!/^[A-Za-z0-9+/]{43}=$/.test(b64) || Buffer.from(b64, 'base64').length !== 32)
    throw new TypeError(`a pin's SHA-256 is 44 characters of base64 (32 bytes), got '${b64}'`);
  return `sha256:${b64}`;
}

/**
 * A checkServerIdentity that accepts the server when its key matches `pin`.
 * With `checkName`, the certificate must also name the host (as node checks
 * by default); without it, the pin alone is the server's identity.
 */
export function pinnedServerIdentity(pin: string, checkName = false): (host: string, cert: PeerCertificate) => Error | undefined {
  const expected = parsePin(pin);
  return (host, cert) => {
    if (checkName) {
      const err = defaultCheckServerIdentity(host, cert);
      if (err) return err;
    }
    const presented = spkiPin(cert);
    return presented === expected ? undefined : new PinMismatchError(expected, presented);
  };
}

/** Where to fetch the certificate from, as for tls.connect. */
export interface PinFetchOptions {
  host: string;
  port: number;
  /** SNI; by default the host when it is a name. */
  servername?: string;
  /** Give up after this long (ms); default 10000. */
  timeout?: number;
  /** A client certificate, for servers that ask for one. */
  key?: ConnectionOptions['key'];
  cert?: ConnectionOptions['cert'];
}

/** Fetches the server's certificate with one TLS handshake and checks its pin; resolves with the certificate (PEM). */
export function fetchPinnedCertificate(pin: string, where: PinFetchOptions): Promise<string> {
  const expected = parsePin(pin);
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({
      host: where.host,
      port: where.port,
      servername: where.servername ?? (/^[\d.]+$|:/.test(where.host) ? undefined : where.host),
      key: where.key,
      cert: where.cert,
      ALPNProtocols: [ROCKS_ALPN],
      // Checked below, by the pin: the chain of a self-signed certificate cannot be.
      rejectUnauthorized: false,
    });
    const timeout = where.timeout ?? 10_000;
    const timer = setTimeout(() => socket.destroy(new Error(`no TLS handshake with ${where.host}:${where.port} within ${timeout} ms`)), timeout);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      const peer = socket.getPeerX509Certificate();
      socket.destroy();
      if (peer === undefined) return reject(new Error(`${where.host}:${where.port} presented no certificate`));
      const presented = spkiPin(peer);
      if (presented !== expected) return reject(new PinMismatchError(expected, presented));
      resolve(peer.toString());
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/**
 * tls options for connect() that admit only a server whose key matches
 * `pin`: its certificate, fetched now and checked, becomes the one trust
 * anchor, and every link checks the pin again. A server that later presents
 * another certificate (even for the same key) is refused until this is
 * called again.
 */
export async function pinnedConnectOptions(pin: string, where: PinFetchOptions): Promise<ConnectionOptions> {
  const cert = await fetchPinnedCertificate(pin, where);
  return {
    ca: [cert],
    // The pinned certificate may be a leaf signed by a CA we do not hold (node >= 20.18).
    allowPartialTrustChain: true,
    rejectUnauthorized: true,
    checkServerIdentity: pinnedServerIdentity(pin),
    key: where.key,
    cert: where.cert,
  } as ConnectionOptions;
}
