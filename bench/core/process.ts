// Benchmark peers run in processes of their own, so that client and server
// never share an event loop (or a CPU's worth of it). A peer speaks JSON
// lines: it prints {"type":"ready",...} once listening or connected, then
// what it measured; it takes commands as JSON lines on stdin.

import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Program, readJsonLines } from '../../test/support/helpers.js';

/** Compiled peer programs, by name: dist/bench/peers/<name>.js. */
export const peerPath = (name: string): string => fileURLToPath(new URL(`../peers/${name}.js`, import.meta.url));

export type Message = { type: string; [key: string]: unknown };

export class Peer {
  private readonly program: Program;
  private readonly queue: Message[] = [];
  private waiters: (() => void)[] = [];

  /**
   * Starts `node <peer>.js ARGS`. `nofile` raises the open-file limit first
   * (a shell's ulimit: Node cannot), for cases with thousands of sockets; to
   * the hard limit when `nofile` is beyond it.
   */
  constructor(
    readonly name: string,
    args: string[],
    { nofile, nodeArgs = [] }: { nofile?: number; nodeArgs?: string[] } = {},
  ) {
    const argv = [...nodeArgs, peerPath(name), ...args];
    const child = nofile
      ? spawn(
          'sh',
          ['-c', `(ulimit -n ${nofile} 2>/dev/null && exec "$0" "$@"); ulimit -n "$(ulimit -Hn)" && exec "$0" "$@"`, process.execPath, ...argv],
          { stdio: ['pipe', 'pipe', 'pipe'] },
        )
      : spawn(process.execPath, argv, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.program = new Program(child, name, { keep: ['stderr'], limit: 4000 });
    readJsonLines<Message>(child.stdout!, (m) => {
      this.queue.push(m);
      this.wake();
    });
    void this.program.exit.then(() => this.wake());
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  /** The next message of `type` (earlier ones of other types are dropped); fails if the peer exits first or after `ms`. */
  async next<T extends Message = Message>(type: string, ms = 600_000): Promise<T> {
    const deadline = Date.now() + ms;
    for (;;) {
      const at = this.queue.findIndex((m) => m.type === type || m.type === 'fatal');
      if (at >= 0) {
        const m = this.queue.splice(0, at + 1)[at];
        if (m.type === 'fatal') throw new Error(`${this.name}: ${String(m.message)}`);
        return m as T;
      }
      if (this.program.exited !== undefined)
        throw new Error(`${this.name} exited (${this.program.exited}) before sending '${type}':\n${this.program.output}`);
      if (Date.now() > deadline) throw new Error(`${this.name}: no '${type}' after ${ms} ms:\n${this.program.output}`);
      // Woken by the next message or the exit, or at the deadline.
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  send(message: Message): void {
    this.program.child.stdin!.write(`${JSON.stringify(message)}\n`);
  }

  stop(): Promise<void> {
    return this.program.stop();
  }
}

/**
 * Runs a server peer and a client peer against it; resolves with the
 * client's 'result'. With `hop`, the client reaches the server through that
 * peer (told the server's port with --to-port), a middlebox of its own.
 * With `serverReport`, the server's message of that type is awaited too and
 * comes as the result's `server`.
 */
export async function runPair<T extends Message>(
  server: [string, string[]],
  client: [string, string[]],
  options: { nofile?: number; hop?: [string, string[]]; serverReport?: string } = {},
): Promise<T> {
  const started: Peer[] = [];
  const start = async (name: string, args: string[]): Promise<number> => {
    const peer = new Peer(name, args, options);
    started.push(peer);
    return (await peer.next<{ type: 'ready'; port: number }>('ready', 30_000)).port;
  };
  try {
    let port = await start(...server);
    const serverPeer = started[0];
    if (options.hop) port = await start(options.hop[0], [...options.hop[1], '--to-port', String(port)]);
    const c = new Peer(client[0], [...client[1], '--port', String(port)], options);
    started.push(c);
    const result = await c.next<T>('result');
    if (options.serverReport === undefined) return result;
    return { ...result, server: await serverPeer.next(options.serverReport, 30_000) };
  } finally {
    for (const peer of started.reverse()) await peer.stop();
  }
}
