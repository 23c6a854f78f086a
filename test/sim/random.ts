// The simulator's single source of randomness: one seeded generator draws
// every choice of a run, so the same seed replays the same run.

import { uniformFloat64 } from 'pure-rand/distribution/uniformFloat64';
import { uniformInt } from 'pure-rand/distribution/uniformInt';
import { xoroshiro128plus } from 'pure-rand/generator/xoroshiro128plus';
import type { RandomSource } from '../../src/protocol/random.js';

export class SimRandom implements RandomSource {
  private readonly gen;

  constructor(seed: number) {
    this.gen = xoroshiro128plus(seed);
  }

  /** An independent generator for a part of the run (a session, an application). */
  fork(): SimRandom {
    return new SimRandom(this.int(0, 0x7fff_ffff));
  }

  int(min: number, max: number): number {
    return uniformInt(this.gen, min, max);
  }

  fraction(): number {
    return uniformFloat64(this.gen);
  }

  chance(p: number): boolean {
    return this.fraction() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(0, items.length - 1)];
  }

  /** Log-uniform in [min, max]: small values as likely as large ones. */
  spread(min: number, max: number): number {
    return Math.round(Math.exp(Math.log(min) + this.fraction() * (Math.log(max) - Math.log(min))));
  }

  bytes(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) out[i] = this.int(0, 255);
    return out;
  }
}
