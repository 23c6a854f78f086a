// What a benchmark case produces and what it is given. A case measures one
// thing for several variants (raw node:net, rocks, socket.io...) in the same
// run; the runner repeats nothing itself: a case returns every sample it
// took, and the report shows their median and spread, and each variant's
// ratio to raw node:net.

export type Better = 'higher' | 'lower';

/** One metric of one variant: all its samples (one per repetition). */
export interface Measure {
  /** The case's id, e.g. 'bulk'. */
  case: string;
  /** What was measured, e.g. '1 GiB one way, 64 KiB writes'. */
  metric: string;
  /** 'raw', 'rocks', 'rocks (probe)', 'rocks (cached)', 'rocks (enhanced)', 'socket.io', ... */
  variant: string;
  unit: string;
  better: Better;
  samples: number[];
  /** What the reader should know, e.g. the configured failure timeout. */
  note?: string;
}

/** A point of a timeline: ms since the start, and a value (bytes delivered so far). */
export type TimelinePoint = [number, number];

export interface Timeline {
  title: string;
  variant: string;
  points: TimelinePoint[];
  /** Marks on the time axis: [ms, label]. */
  marks: [number, string][];
}

export interface Context {
  quick: boolean;
  /** How many times each measurement is repeated. */
  repeats: number;
  log(line: string): void;
  /** Timelines the report draws. */
  timelines: Timeline[];
}

export interface BenchCase {
  id: string;
  title: string;
  run(ctx: Context): Promise<Measure[]>;
}
