// Session keys and resume proofs, all from node:crypto: X25519 agreement,
// HKDF-SHA256 to derive the session key, HMAC-SHA256 for the client's
// confirmation and for resume proofs.
// Private keys are built from bytes the caller draws, so a simulation with a
// seeded random source produces the same keys every run.

import { createHmac, createPrivateKey, createPublicKey, diffieHellman, hkdfSync, randomBytes, timingSafeEqual, type KeyObject } from 'node:crypto';
import { RocksError } from './errors.js';
import { KEY_SIZE, MAC_SIZE, SESSION_ID_SIZE } from './frames.js';
import { CHANNEL_FORMAT } from './routing.js';

/** DER prefix of a PKCS#8 X25519 private key; the 32 key bytes follow it. */
const PKCS8_X25519_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');

const KEY_INFO = Buffer.from('rocks session key', 'latin1');
const CLIENT_LABEL = Buffer.from('rocks client resume', 'latin1');
const SERVER_LABEL = Buffer.from('rocks server resume', 'latin1');
const CONFIRM_LABEL = Buffer.from('rocks client confirm', 'latin1');

export interface KeyPair {
  privateKey: KeyObject;
  /** Raw 32-byte public key, as sent on the wire. */
  publicKey: Buffer;
}

/**
 * An X25519 key pair whose private key is the 32 given random bytes.
 *
 * The private key is imported as a JWK from its raw bytes: a tenth of the
 * cost of a PKCS#8 import (OpenSSL's DER decoder), and as cheap as
 * generateKeyPairSync, which we must not use: in Node 20 the job object it
 * leaves behind can be collected while the key's lock is held (during an
 * export or an agreement that allocates), and its destructor then waits for
 * that lock forever. A process stopped at 0% CPU after 10^4 to 10^5 key
 * pairs here; from JWK, 4 x 10^5 ran through.
 */
export function keyPairFromSeed(seed: Buffer): KeyPair {
  if (seed.length !== KEY_SIZE) throw new RangeError('X25519 seed must be 32 bytes');
  let privateKey: KeyObject;
  try {
    // Node reads only `d` for a private OKP key; `x` must be a string, and ours is filled in below.
    privateKey = createPrivateKey({ key: { kty: 'OKP', crv: 'X25519', d: seed.toString('base64url'), x: '' }, format: 'jwk' });
  } catch {
    // A Node that checks `x` against `d`: the slower PKCS#8 import.
    privateKey = createPrivateKey({ key: Buffer.concat([PKCS8_X25519_PREFIX, seed]), format: 'der', type: 'pkcs8' });
  }
  const jwk = privateKey.export({ format: 'jwk' });
  return { privateKey, publicKey: Buffer.from(jwk.x as string, 'base64url') };
}

/** A fresh X25519 key pair from the system's CSPRNG. */
export function freshKeyPair(): KeyPair {
  return keyPairFromSeed(randomBytes(KEY_SIZE));
}

/**
 * The key both ends derive at establishment: HKDF-SHA256 over the X25519
 * shared secret, salted with the session id and bound to both public keys.
 */
export function deriveSessionKey(own: KeyPair, peerPublic: Buffer, sessionId: Buffer, clientPublic: Buffer, serverPublic: Buffer): Buffer {
  let shared: Buffer;
  try {
    const publicKey = createPublicKey({
      key: { kty: 'OKP', crv: 'X25519', x: peerPublic.toString('base64url') },
      format: 'jwk',
    });
    shared = diffieHellman({ privateKey: own.privateKey, publicKey });
  } catch {
    // OpenSSL refuses low-order points, whose shared secret would be all zeros.
    throw new RocksError('ERR_ROCKS_PROTOCOL', 'unusable X25519 public key');
  }
  const info = Buffer.concat([KEY_INFO, clientPublic, serverPublic]);
  return Buffer.from(hkdfSync('sha256', shared, sessionId, info, KEY_SIZE));
}

export interface ResumeTranscript {
  version: number;
  sessionId: Buffer;
  clientNonce: Buffer;
  serverNonce: Buffer;
  /** Stream offsets the proving side reports: what it received and what it had sent. */
  received: number;
  sent: number;
}

/** HMAC-SHA256 by which one side proves it holds the session key for this resume attempt. */
export function resumeMac(key: Buffer, by: 'client' | 'server', t: ResumeTranscript): Buffer {
  const offsets = Buffer.allocUnsafe(17);
  offsets[0] = t.version;
  offsets.writeUInt32BE(Math.floor(t.received / 0x1_0000_0000), 1);
  offsets.writeUInt32BE(t.received >>> 0, 5);
  offsets.writeUInt32BE(Math.floor(t.sent / 0x1_0000_0000), 9);
  offsets.writeUInt32BE(t.sent >>> 0, 13);
  return createHmac('sha256', key)
    .update(by === 'client' ? CLIENT_LABEL : SERVER_LABEL)
    .update(t.sessionId)
    .update(t.clientNonce)
    .update(t.serverNonce)
    .update(offsets)
    .digest();
}

export interface ConfirmTranscript {
  version: number;
  sessionId: Buffer;
  clientPublic: Buffer;
  serverPublic: Buffer;
}

/**
 * HMAC-SHA256 by which a client proves, in CONFIRM, that it derived the
 * session key of this establishment: only then does the server hold the
 * session. A client that merely echoes frames after WELCOME cannot make it.
 */
export function confirmMac(key: Buffer, t: ConfirmTranscript): Buffer {
  return createHmac('sha256', key)
    .update(CONFIRM_LABEL)
    .update(Buffer.of(t.version))
    .update(t.sessionId)
    .update(t.clientPublic)
    .update(t.serverPublic)
    .digest();
}

/** Bytes of keying material a channel (the TLS exporter) gives a session: its key, then its id. */
export const CHANNEL_MATERIAL_SIZE = KEY_SIZE + SESSION_ID_SIZE;

/**
 * The key and session id of a session started over a keying channel, from
 * the material both ends exported from it (§15.2). The id's first byte says
 * it came from a channel; the other 15 are the channel's, unguessable.
 */
export function channelKeys(material: Buffer): { key: Buffer; sessionId: Buffer } {
  if (material.length !== CHANNEL_MATERIAL_SIZE) throw new RangeError(`channel material of ${material.length} bytes`);
  const key = Buffer.from(material.subarray(0, KEY_SIZE));
  const sessionId = Buffer.from(material.subarray(KEY_SIZE));
  sessionId[0] = CHANNEL_FORMAT;
  return { key, sessionId };
}

/**
 * The bytes a session keeps all its life (its id, its key, the server's
 * instance), held as a latin1 string: one character per byte, so the round
 * trip is exact. 32 bytes cost 48 of heap that way, where a Buffer of their
 * own costs about 240 (the view, its ArrayBuffer, the backing store) and a
 * slice of Node's pool keeps a whole 8 KiB slab alive. They are made bytes
 * again only at a handshake.
 */
export type Held = string;

export function hold(bytes: Buffer): Held {
  return bytes.toString('latin1');
}

export function unhold(held: Held): Buffer {
  return Buffer.from(held, 'latin1');
}

export function macMatches(expected: Buffer, received: Buffer): boolean {
  return received.length === MAC_SIZE && timingSafeEqual(expected, received);
}
