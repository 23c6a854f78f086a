// `rock keygen DIR`: a self-signed ECDSA P-256 key and certificate, as
// `openssl req -x509` writes them (DIR/key.pem PKCS#8, mode 0600, and
// DIR/cert.pem), and the pin a client gives to --tls-pin. The certificate is
// built by @peculiar/x509 on node's webcrypto, so no openssl is needed.

import 'reflect-metadata'; // @peculiar/x509's dependency injection needs it loaded first
import { webcrypto } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { isIP } from 'node:net';
import * as x509 from '@peculiar/x509';
import { spkiPin } from '../node/tls-pin.js';
import { EXIT, ExitError } from './args.js';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };

export interface KeygenOptions {
  /** Host names and IP addresses the certificate is for (subjectAltName). */
  names: string[];
  /** Valid for this many days. */
  days: number;
  force: boolean;
}

/** The default names: this machine's hostname, localhost and the loopback addresses. */
export function defaultNames(): string[] {
  return [...new Set([hostname(), 'localhost', '127.0.0.1', '::1'])];
}

/** Writes DIR/key.pem and DIR/cert.pem; resolves with the certificate's pin. */
export async function keygen(dir: string, options: KeygenOptions): Promise<{ pin: string; keyPath: string; certPath: string }> {
  const keys = (await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(16)))
      .toString('hex')
      .replace(/^[89a-f]/, '1'),
    name: `CN=${x509Name(options.names[0])}`,
    // An hour back, for clocks a little behind.
    notBefore: new Date(now - 3600_000),
    notAfter: new Date(now + options.days * 86_400_000),
    signingAlgorithm: ALGORITHM,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      // Server and client: the same pair may serve `rock serve` and a --tls-cert client.
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      new x509.SubjectAlternativeNameExtension(options.names.map((n) => (isIP(n) ? { type: 'ip', value: n } : { type: 'dns', value: n }))),
    ],
  });
  const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
  const keyPem = `${x509.PemConverter.encode(pkcs8, 'PRIVATE KEY')}\n`;
  const certPem = `${cert.toString('pem')}\n`;

  const keyPath = join(dir, 'key.pem');
  const certPath = join(dir, 'cert.pem');
  if (!options.force) {
    for (const path of [keyPath, certPath]) if (existsSync(path)) throw new ExitError(`${path} exists; give --force to replace it`, EXIT.FAILURE);
  }
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    // 'wx' refuses a file that appeared meanwhile: nothing is overwritten without --force.
    const flag = options.force ? 'w' : 'wx';
    writeFileSync(keyPath, keyPem, { mode: 0o600, flag });
    chmodSync(keyPath, 0o600); // a replaced file keeps its old mode otherwise
    writeFileSync(certPath, certPem, { mode: 0o644, flag });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'EEXIST') throw new ExitError(`${e.path} exists; give --force to replace it`, EXIT.FAILURE);
    throw new ExitError(`cannot write ${e.path ?? dir}: ${e.code ?? e.message}`, EXIT.FAILURE);
  }
  return { pin: spkiPin(certPem), keyPath, certPath };
}

/** A name safe inside an X.500 CN (no separators). */
function x509Name(name: string): string {
  return name.replace(/[,+="<>#;\\]/g, '_');
}
