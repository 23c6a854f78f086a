// The session draws keys, nonces, session ids and backoff jitter from a
// RandomSource. Production uses the system's CSPRNG; the simulator passes a
// seeded one so that a run can be replayed exactly.

import { randomBytes } from 'node:crypto';
import { freshKeyPair, keyPairFromSeed, type KeyPair } from './keys.js';
import { KEY_SIZE } from './frames.js';

export interface RandomSource {
  bytes(n: number): Buffer;
  /** A number in [0, 1). */
  fraction(): number;
  /** An X25519 key pair; without it, one is built from `bytes` (reproducible from a seed). */
  keyPair?(): KeyPair;
}

export const systemRandom: RandomSource = {
  bytes: (n) => randomBytes(n),
  fraction: () => Math.random(),
  keyPair: freshKeyPair,
};

/** A key pair drawn from `random`. */
export function drawKeyPair(random: RandomSource): KeyPair {
  return random.keyPair?.() ?? keyPairFromSeed(random.bytes(KEY_SIZE));
}
