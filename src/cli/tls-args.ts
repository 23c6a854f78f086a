// The --tls-* options of rock serve, rock forward, rock stdio and rack up:
// PEM files read and checked now, so a wrong path or a key that does not
// belong to its certificate is one clear line and exit code 2, not a failed
// handshake later.

import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { ConnectionOptions, TlsOptions } from 'node:tls';
import type { ParseArgsConfig } from 'node:util';
import { parsePin, pinnedServerIdentity, spkiPin } from '../node/tls-pin.js';
import { UsageError } from './args.js';

type Values = Record<string, string | boolean | undefined>;

/** rock serve: its certificate, and whose client certificates it requires. */
export const SERVER_TLS_OPTIONS = {
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'tls-client-ca': { type: 'string' },
} as const satisfies ParseArgsConfig['options'];

/** rock forward and rock stdio: TLS to the server, how it is trusted, and a client certificate. */
export const CLIENT_TLS_OPTIONS = {
  tls: { type: 'boolean' },
  'tls-ca': { type: 'string' },
  'tls-pin': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
} as const satisfies ParseArgsConfig['options'];

export const SERVER_TLS_HELP = `TLS (every link a TLS 1.3 connection; see rock keygen):
  --tls-cert FILE          this server's certificate (PEM)
  --tls-key FILE           its private key (PEM)
  --tls-client-ca FILE     require client certificates signed by this CA (PEM)`;

export const CLIENT_TLS_HELP = `TLS (every link a TLS 1.3 connection):
  --tls                    use TLS; the server's certificate is checked against
                           the system's CAs unless one of these is given:
  --tls-ca FILE            trust this CA, or this self-signed certificate (PEM);
                           the certificate must name the host dialed
  --tls-pin sha256:BASE64  trust the server whose public key has this pin (what
                           rock keygen prints); with --tls-ca, both must hold
  --tls-cert FILE          a client certificate (PEM), for --tls-client-ca servers
  --tls-key FILE           its private key (PEM)`;

/** A client's TLS settings; with `pin` and no CA, the server's certificate is fetched and checked before the first link. */
export interface ClientTls {
  options: ConnectionOptions;
  pin?: string;
}

function readFile(path: string, flag: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new UsageError(`${flag}: cannot read '${path}': ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** A PEM certificate file (the first certificate decides; a chain may follow). */
function readCertificate(path: string, flag: string): { pem: string; x509: X509Certificate } {
  const pem = readFile(path, flag);
  try {
    if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new Error('no PEM certificate');
    return { pem, x509: new X509Certificate(pem) };
  } catch {
    throw new UsageError(`${flag}: '${path}' is not a PEM certificate`);
  }
}

function readKey(path: string, flag: string): string {
  const pem = readFile(path, flag);
  try {
    createPrivateKey(pem);
    return pem;
  } catch {
    throw new UsageError(`${flag}: '${path}' is not a PEM private key (or it is encrypted)`);
  }
}

/** --tls-cert and --tls-key together, the key checked against the certificate. */
function readPair(values: Values): { cert: string; key: string; x509: X509Certificate } | undefined {
  const certPath = values['tls-cert'] as string | undefined;
  const keyPath = values['tls-key'] as string | undefined;
  if (certPath === undefined && keyPath === undefined) return undefined;
  if (certPath === undefined) throw new UsageError('--tls-key goes with --tls-cert');
  if (keyPath === undefined) throw new UsageError('--tls-cert goes with --tls-key');
  const cert = readCertificate(certPath, '--tls-cert');
  const key = readKey(keyPath, '--tls-key');
  if (!cert.x509.checkPrivateKey(createPrivateKey(key))) throw new UsageError(`--tls-key: '${keyPath}' is not the key of --tls-cert '${certPath}'`);
  return { cert: cert.pem, key, x509: cert.x509 };
}

function readPin(values: Values): string | undefined {
  const text = values['tls-pin'] as string | undefined;
  if (text === undefined) return undefined;
  try {
    return parsePin(text);
  } catch (err) {
    throw new UsageError(`--tls-pin: ${(err as Error).message}`);
  }
}

/** rock serve: node:tls server options, or undefined without --tls-cert. */
export function serverTls(values: Values): TlsOptions | undefined {
  const pair = readPair(values);
  const clientCa = values['tls-client-ca'] as string | undefined;
  if (pair === undefined) {
    if (clientCa !== undefined) throw new UsageError('--tls-client-ca goes with --tls-cert and --tls-key');
    return undefined;
  }
  const options: TlsOptions = { cert: pair.cert, key: pair.key };
  if (clientCa !== undefined)
    Object.assign(options, { ca: readCertificate(clientCa, '--tls-client-ca').pem, requestCert: true, rejectUnauthorized: true });
  return options;
}

/** rock forward and rock stdio: node:tls connect options, or undefined without --tls. */
export function clientTls(values: Values): ClientTls | undefined {
  if (values.tls !== true) {
    for (const flag of ['tls-ca', 'tls-pin', 'tls-cert', 'tls-key'])
      if (values[flag] !== undefined) throw new UsageError(`--${flag} goes with --tls`);
    return undefined;
  }
  const pin = readPin(values);
  const caPath = values['tls-ca'] as string | undefined;
  const pair = readPair(values);
  const options: ConnectionOptions = {};
  if (pair) Object.assign(options, { cert: pair.cert, key: pair.key });
  if (caPath !== undefined) options.ca = readCertificate(caPath, '--tls-ca').pem;
  // With a CA the chain and the name are checked as usual, and the pin too; a pin alone is handled by pinnedConnectOptions.
  if (pin !== undefined && caPath !== undefined) options.checkServerIdentity = pinnedServerIdentity(pin, true);
  return { options, pin: pin !== undefined && caPath === undefined ? pin : undefined };
}

/**
 * rack up: every daemon both serves carriages and dials them, so it needs
 * its own pair, and one trust for both directions: --tls-ca (any daemon
 * whose certificate it signed; names are not checked, daemons are dialed by
 * address) or --tls-pin (every daemon presents the same pair, the one of
 * --tls-cert). Client certificates are required, checked against
 * --tls-client-ca if given, else the same trust.
 */
export function rackTls(values: Values): { server: TlsOptions; client: ConnectionOptions } | undefined {
  const pair = readPair(values);
  const pin = readPin(values);
  const caPath = values['tls-ca'] as string | undefined;
  const clientCaPath = values['tls-client-ca'] as string | undefined;
  if (pair === undefined) {
    for (const flag of ['tls-ca', 'tls-pin', 'tls-client-ca'])
      if (values[flag] !== undefined) throw new UsageError(`--${flag} goes with --tls-cert and --tls-key`);
    return undefined;
  }
  if (pin === undefined && caPath === undefined) throw new UsageError('--tls-cert needs --tls-ca or --tls-pin: how this daemon trusts the others');
  if (pin !== undefined && caPath !== undefined) throw new UsageError('give --tls-ca or --tls-pin, not both');
  let trust: string;
  if (pin !== undefined) {
    if (spkiPin(pair.x509) !== pin)
      throw new UsageError('--tls-pin is not the pin of --tls-cert: with a pin every rack daemon presents the same pair (else use --tls-ca)');
    trust = pair.cert;
  } else trust = readCertificate(caPath!, '--tls-ca').pem;
  const clientCa = clientCaPath === undefined ? trust : readCertificate(clientCaPath, '--tls-client-ca').pem;
  return {
    server: { cert: pair.cert, key: pair.key, ca: clientCa, requestCert: true, rejectUnauthorized: true },
    client: {
      cert: pair.cert,
      key: pair.key,
      ca: trust,
      rejectUnauthorized: true,
      checkServerIdentity: pin !== undefined ? pinnedServerIdentity(pin) : () => undefined,
    },
  };
}
