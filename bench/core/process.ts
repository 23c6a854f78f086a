// Benchmark peers run in processes of their own, so that client and server
// never share an event loop (or a CPU's worth of it). A peer speaks JSON
// lines: it prints {"type":"ready",...} once listening or connected, then
// what it measured; it takes commands as JSON lines on stdin.

import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** Compiled peer programs, by name: dist/bench/peers/<name>.js. */
export const peerPath = (name: string): string => fileURLToPath(new URL(`../peers/${name}.js`, import.meta.url));

export type Message = { type: string; [key: string]: unknown };

export class Peer {
  private readonly child: ChildProcess;
  private readonly queue: Message[] = [];
  private waiters: (() => void)[] = [];
  private stderr = '';
  private exited: string | undefined;

  /**
   * Starts `node <peer>.js ARGS`. `nofile` raises the open-file limit first
   * (a shell's ulimit: Node cannot), for cases with thousands of sockets; to
   * the hard limit when `nofile` is beyond it.
   */
  constructor(readonly name: string, args: string[], { nofile, nodeArgs = [] }: { nofile?: number; nodeArgs?: string[] } = {}) {
    const argv = [...nodeArgs, peerPath(name), ...args];
    this.child = nofile
      ? spawn('sh', ['-c', `(ulimit -n ${nofile} 2>/dev/null && exec "$0" "$@"); ulimit -n "$(ulimit -Hn)" && exec "$0" "$@"`, process.execPath, ...argv], { stdio: ['pipe', 'pipe', 'pipe'] })
      : spawn(process.execPath, argv, { stdio: ['pipe', 'pipe', 'pipe'] });
    let partial = '';
    this.child.stdout!.on('data', (d: Buffer) => {
      const lines = (partial + d.toString()).split('\n');
      partial = lines.pop()!;
      for (const line of lines) if (line.trim()) this.queue.push(JSON.parse(line) as Message);
      this.wake();
    });
    this.child.stderr!.on('data', (d: Buffer) => (this.stderr = (this.stderr + d.toString()).slice(-4000)));
    this.child.on('exit', (code, signal) => {
      this.exited = signal ?? String(code);
      this.wake();
    });
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
      if (this.exited !== undefined) throw new Error(`${this.name} exited (${this.exited}) before sending '${type}':\n${this.stderr}`);
      if (Date.now() > deadline) throw new Error(`${this.name}: no '${type}' after ${ms} ms:\n${this.stderr}`);
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
    this.child.stdin!.write(`${JSON.stringify(message)}\n`);
  }

  async stop(): Promise<void> {
    if (this.exited !== undefined) return;
    const gone = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 3000);
    await gone;
    clearTimeout(timer);
  }
}

/** Runs a server peer and a client peer against it; resolves with the client's 'result'. */
export async function runPair<T extends Message>(server: [string, string[]], client: [string, string[]], options: { nofile?: number } = {}): Promise<T> {
  const s = new Peer(server[0], server[1], options);
  try {
    const { port } = await s.next<{ type: 'ready'; port: number }>('ready', 30_000);
    const c = new Peer(client[0], [...client[1], '--port', String(port)], options);
    try {
      return await c.next<T>('result');
    } finally {
      await c.stop();
    }
  } finally {
    await s.stop();
  }
}
