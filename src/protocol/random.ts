// The session draws keys, nonces, session ids and backoff jitter from a
// RandomSource. Production uses the system's CSPRNG; the simulator passes a
// seeded one so that a run can be replayed exactly.

import { randomBytes } from 'node:crypto';

export interface RandomSource {
  bytes(n: number): Buffer;
  /** A number in [0, 1). */
  fraction(): number;
}

export const systemRandom: RandomSource = {
  bytes: (n) => randomBytes(n),
  fraction: () => Math.random(),
};
