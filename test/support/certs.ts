// Self-signed test certificates, written by the real `openssl req -x509` (as
// a user would make them), for localhost and 127.0.0.1.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { programs } from './which.js';

export interface TestCert {
  key: Buffer;
  cert: Buffer;
  keyFile: string;
  certFile: string;
}

export interface TestCerts {
  /** Why tests that need certificates must be skipped, or undefined. */
  skip: string | undefined;
  /** The server's pair, and another with the same names (an impostor a client must refuse). */
  server: TestCert;
  other: TestCert;
  /** A client's pair, for client certificates. */
  client: TestCert;
  dir: string;
  cleanup(): void;
}

export function makeCerts(): TestCerts {
  const found = programs('openssl');
  const dir = mkdtempSync(join(tmpdir(), 'rocks-tls-'));
  const empty = { key: Buffer.alloc(0), cert: Buffer.alloc(0), keyFile: '', certFile: '' };
  const cleanup = () => rmSync(dir, { recursive: true, force: true });
  if (found.skip) return { skip: found.skip, server: empty, other: empty, client: empty, dir, cleanup };
  const pair = (name: string, cn: string): TestCert => {
    const keyFile = join(dir, `${name}.key`);
    const certFile = join(dir, `${name}.crt`);
    execFileSync(
      found.paths.openssl,
      ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', `/CN=${cn}`].concat([
        '-addext',
        'subjectAltName=DNS:localhost,IP:127.0.0.1',
        '-keyout',
        keyFile,
        '-out',
        certFile,
      ]),
      { stdio: 'ignore' },
    );
    return { key: readFileSync(keyFile), cert: readFileSync(certFile), keyFile, certFile };
  };
  return {
    skip: undefined,
    server: pair('server', 'localhost'),
    other: pair('other', 'localhost'),
    client: pair('client', 'rocks test client'),
    dir,
    cleanup,
  };
}
