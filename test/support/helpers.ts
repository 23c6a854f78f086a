// What tests and benchmarks share for waiting and for child processes:
// sleeping, polling a condition against a deadline, a free port, a child
// process whose output is kept and which is stopped with SIGTERM then
// SIGKILL, and JSON lines read from a child.
//
// It must not load node:test (nor import a module that does): the
// benchmarks (bench/) use it outside the test runner, and node:test's hooks
// would make a benchmark report itself as a test file.

import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type AddressInfo } from 'node:net';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';

/** `await sleep(ms)`: node:timers/promises' setTimeout. */
export { sleep };

/**
 * Resolves once `condition` holds, checking every `every` ms; rejects after
 * `ms` saying what it waited for. `what` may be a function, called only on
 * failure, to describe the state at that time. An exception thrown by
 * `condition` (a process that exited, say) ends the wait at once.
 */
export async function until(
  condition: () => boolean | Promise<boolean>,
  ms = 10_000,
  what: string | (() => string) = 'condition',
  every = 5,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${typeof what === 'string' ? what : what()}`);
    await sleep(every);
  }
}

/** A port nothing listens on right now. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const s = createServer();
  s.listen(0, host);
  await once(s, 'listening');
  const { port } = s.address() as AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

/**
 * Calls `onValue` with each line of `stream` parsed as JSON (blank lines
 * skipped). `onlyObjects`: lines that are not a JSON object (a crash's trace
 * in a log) are skipped too, instead of throwing.
 */
export function readJsonLines<T>(stream: Readable, onValue: (value: T) => void, onlyObjects = false): void {
  createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => {
    if (onlyObjects ? line.startsWith('{') : line.trim() !== '') onValue(JSON.parse(line) as T);
  });
}

/** The JSON objects among the lines of `text` (a program's log); other lines are skipped. */
export function parseJsonLines<T>(text: string): T[] {
  return text
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as T);
}

export interface ProgramOptions {
  /** Which of its piped streams to keep in `output` (the others are left to the caller). Default both. */
  keep?: ('stdout' | 'stderr')[];
  /** How many characters of output to keep (the tail). */
  limit?: number;
}

/**
 * A child process, however it was spawned: what it printed (the tail, for
 * failure messages; kept streams are always read, so a full pipe cannot
 * stall it), how it exited, and stop().
 */
export class Program {
  private tail = '';
  /** Its exit code, or the signal that ended it, or why it never ran; undefined while it runs. */
  exited: number | string | undefined;
  /** Resolves once it has exited (or failed to start). */
  readonly exit: Promise<void>;

  constructor(
    readonly child: ChildProcess,
    readonly name: string,
    { keep = ['stdout', 'stderr'], limit = 64_000 }: ProgramOptions = {},
  ) {
    for (const stream of keep) {
      child[stream]?.on('data', (d: Buffer) => (this.tail = (this.tail + d.toString()).slice(-limit)));
    }
    this.exit = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exited = signal ?? code ?? undefined;
        resolve();
      });
      // A program that cannot start emits 'error' and no 'exit'. (Other errors, of kill() say, change nothing here.)
      child.on('error', (err) => {
        if (child.pid !== undefined) return;
        this.exited = `not started: ${err.message}`;
        resolve();
      });
    });
  }

  /** What it printed on the kept streams (the last `limit` characters). */
  get output(): string {
    return this.tail;
  }

  /** Resolves once its output matches `pattern`; rejects if it exits first or after `ms`. */
  async waitForOutput(pattern: RegExp, ms = 10_000): Promise<void> {
    await until(
      () => {
        if (pattern.test(this.tail)) return true;
        if (this.exited !== undefined) throw new Error(`${this.name} exited (${this.exited}) before printing ${pattern}:\n${this.tail}`);
        return false;
      },
      ms,
      () => `${this.name} to print ${pattern}:\n${this.tail}`,
      20,
    );
  }

  /** Ends it: SIGTERM, then SIGKILL if it is still there `grace` ms later; resolves once it has exited. */
  async stop(grace = 3000): Promise<void> {
    if (this.exited !== undefined) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), grace);
    await this.exit;
    clearTimeout(timer);
  }
}
