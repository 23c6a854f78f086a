// What runs on a bed's hosts, seen from the test: the agent (rocks or plain
// TCP streams, test/bed/agent.ts) and the command path (an unmodified socat
// stream carried by `rock forward` on the client and `rock serve` on the
// server to a socat echo), with their reports collected as they come.

import type { ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { parseJsonLines, Program, readJsonLines, sleep, until } from '../support/helpers.js';
import { ROCK } from '../support/rock.js';
import { type HostName, NetBed, type NetBedOptions } from './netbed.js';

const AGENT = fileURLToPath(new URL('./agent.js', import.meta.url));

export interface AgentEvent {
  t: number;
  type: 'listening' | 'connected' | 'suspend' | 'resume' | 'migrate' | 'error' | 'result' | 'done' | 'fatal';
  id?: number;
  side?: 'client' | 'server';
  reliable?: boolean;
  /** Why: a suspension's reason; on a client's connected, EDP's verdict ('the server announced rocks', say). */
  reason?: string;
  /** On a client's connected: whether EDP's verdict came from the cache rather than a probe of its own. */
  cached?: boolean;
  outage?: number;
  replayedOut?: number;
  replayedIn?: number;
  /** The peer's address (on a resume or a migrate: where the session came back from). */
  remote?: string;
  /** On a migrate: the local address of the new connection. */
  local?: string;
  /** A client's session id (hex), on connected. */
  session?: string;
  code?: string;
  received?: number;
  receivedSha?: string;
  sent?: number;
  sentSha?: string;
  error?: string;
}

/** A process on a host of the bed, its standard error kept, stopped at the end whatever happens. */
export class HostProcess extends Program {
  constructor(
    child: ChildProcess,
    readonly label: string,
  ) {
    super(child, label, { keep: ['stderr'], limit: 20_000 });
  }
}

/** The agent on one host. */
export class Agent extends HostProcess {
  readonly events: AgentEvent[] = [];

  constructor(bed: NetBed, host: HostName, args: string[]) {
    super(bed.spawn(host, process.execPath, [AGENT, ...args], { stdio: ['pipe', 'pipe', 'pipe'] }), `agent ${host}`);
    readJsonLines<AgentEvent>(this.child.stdout!, (e) => this.events.push(e));
  }

  of(type: AgentEvent['type']): AgentEvent[] {
    return this.events.filter((e) => e.type === type);
  }

  async waitFor(test: (a: Agent) => boolean, ms: number, what: string | (() => string)): Promise<void> {
    await until(
      () => test(this),
      ms,
      () =>
        `${this.label}: ${typeof what === 'string' ? what : what()} (exit ${this.exited}); last events ${JSON.stringify(this.events.slice(-5))}\n${this.output}`,
    );
  }

  /** Tells a client to end its streams. */
  finish(): void {
    this.child.stdin!.write('finish\n');
  }
}

/** An agent server listening on the server host, once it says so. */
export async function agentServer(bed: NetBed, port: number, options: object, rate: number, tick = TICK): Promise<Agent> {
  const args = ['server', '--listen', `0.0.0.0:${port}`, '--rate', String(rate), '--tick', String(tick), '--options', JSON.stringify(options)];
  const agent = new Agent(bed, 'server', args);
  await agent.waitFor((a) => a.of('listening').length === 1, 10_000, 'listening');
  return agent;
}

/** `count` agent connections from the client host to `to` (server 0 by default), once all are connected. */
export async function agentClient(
  bed: NetBed,
  port: number,
  options: object,
  rate: number,
  count = 1,
  plain = false,
  to = bed.serverAddress,
  tick = TICK,
): Promise<Agent> {
  const args = ['client', '--to', `${to}:${port}`, '--count', String(count), '--rate', String(rate), '--tick', String(tick)];
  args.push('--options', JSON.stringify(options));
  const agent = new Agent(bed, 'client', plain ? [...args, '--plain'] : args);
  await agent.waitFor((a) => a.of('connected').length === count, 30_000, `${count} connections`);
  return agent;
}

/**
 * Server connections no client connection stands for, when every client
 * connection is reliable: a resume attempt whose announcement was lost (its
 * TCP handshake completed as a black hole lifted, after the client had
 * given up on it) is, after detectTimeout, rightly served as a silent plain
 * client, which then fails or ends with nothing (rocksOnly in
 * test/support/net.ts sets the same aside).
 */
export function strays(client: Agent, server: Agent): Set<number> {
  if (!client.of('connected').every((e) => e.reliable)) return new Set();
  return new Set(
    server
      .of('connected')
      .filter((e) => !e.reliable)
      .map((e) => e.id!),
  );
}

/**
 * Ends the client's streams and checks every one arrived whole both ways:
 * each client connection's bytes and SHA-256 match one server connection's,
 * in each direction, and no connection failed.
 */
export async function finishAndVerify(client: Agent, server: Agent, count: number): Promise<{ bytes: number }> {
  client.finish();
  await client.waitFor((a) => a.of('done').length === 1, 60_000, 'every connection to close');
  const results = (): AgentEvent[] => server.of('result').filter((r) => !strays(client, server).has(r.id!));
  await server.waitFor(() => results().length >= count, 30_000, `${count} results on the server`);
  const serverBySha = new Map(results().map((r) => [r.receivedSha, r]));
  let bytes = 0;
  for (const c of client.of('result')) {
    if (c.error !== undefined) throw new Error(`client connection ${c.id} failed: ${c.error}`);
    const s = serverBySha.get(c.sentSha);
    if (s === undefined) throw new Error(`client connection ${c.id}: no server connection received its ${c.sent} bytes (SHA-256 ${c.sentSha})`);
    if (s.error !== undefined) throw new Error(`server connection ${s.id} failed: ${s.error}`);
    if (s.received !== c.sent) throw new Error(`client ${c.id} sent ${c.sent}, server received ${s.received}`);
    if (c.received !== s.sent || c.receivedSha !== s.sentSha) {
      throw new Error(`server ${s.id} sent ${s.sent} bytes (${s.sentSha}), client ${c.id} received ${c.received} (${c.receivedSha})`);
    }
    bytes += c.sent! + s.sent!;
  }
  return { bytes };
}

// ---- the command path ------------------------------------------------------------------------

/** A `rock` (or, given its path, `rack`) command on a host, ready once its JSON log says so. */
export class RockProcess extends HostProcess {
  /** How many log lines of each message it wrote in all (the kept output is only the tail). */
  readonly counts = new Map<string, number>();
  /** Its warnings and errors in all, by message and error: what went wrong on the node when a session is lost. */
  readonly warnings = new Map<string, number>();

  constructor(bed: NetBed, host: HostName, args: string[], command = ROCK) {
    super(
      bed.spawn(host, process.execPath, [command, ...args, '--json'], { stdio: ['ignore', 'ignore', 'pipe'] }),
      `${command === ROCK ? 'rock' : 'rack'} ${args[0]} on ${host}`,
    );
    readJsonLines<{ msg: string; level: number; relayed?: boolean; err?: string; reason?: string }>(
      this.child.stderr!,
      (l) => {
        const key = l.relayed ? `${l.msg} (relayed)` : l.msg;
        this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
        // pino's levels: 40 is warn, 50 error.
        if (l.level < 40 || l.msg === 'suspended') return; // a suspension is what the faults are for
        const warning = [l.msg, l.err ?? l.reason].filter(Boolean).join(': ');
        this.warnings.set(warning, (this.warnings.get(warning) ?? 0) + 1);
      },
      true,
    );
  }

  /** Its log lines, parsed. */
  logs(): { msg: string; time: number; [key: string]: unknown }[] {
    return parseJsonLines(this.output);
  }

  async ready(message: string): Promise<void> {
    await until(
      () => {
        if (this.logs().some((l) => l.msg === message)) return true;
        if (this.exited !== undefined) throw new Error(`${this.label} exited (${this.exited}) before logging '${message}':\n${this.output}`);
        return false;
      },
      10_000,
      () => `${this.label} to log '${message}' (exit ${this.exited}):\n${this.output}`,
    );
  }
}

/** `socat ... EXEC:cat` on a server host (server 0 by default), listening on `listen` (HOST:PORT). */
export function socatEcho(bed: NetBed, listen: string, host: HostName = 'server'): HostProcess {
  const [address, port] = [listen.slice(0, listen.lastIndexOf(':')), listen.slice(listen.lastIndexOf(':') + 1)];
  // -t: once the client's end arrives, wait for cat to echo the rest instead of socat's 0.5 s,
  // after which socat would end the connection with the tail of the echo still in cat's pipe.
  // backlog: socat's default of 5 makes a burst of connections (a node's share of 150 new
  // sessions) wait seconds for SYN retransmissions.
  return new HostProcess(
    bed.spawn(host, 'socat', ['-t', '60', `TCP-LISTEN:${port},bind=${address},reuseaddr,fork,backlog=1024`, 'EXEC:cat'], { stdio: 'ignore' }),
    `socat echo on ${host}`,
  );
}

/**
 * An unmodified socat on the client host connected to `target`, an echo:
 * the test writes a paced random stream into it and reads the echo back, so
 * the same bytes cross the failing path in both directions.
 */
export class SocatStream {
  private socat: HostProcess | undefined;
  private readonly sent = createHash('sha256');
  private readonly got = createHash('sha256');
  sentBytes = 0;
  gotBytes = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly bed: NetBed,
    private readonly label: string,
  ) {}

  /** Starts writing `rate` bytes/s; resolves at the first echoed byte. */
  async start(target: string, rate: number, context: () => string = () => ''): Promise<void> {
    // -t: after our end, wait for the echo to finish instead of socat's 0.5 s.
    const socat = new HostProcess(
      this.bed.spawn('client', 'socat', ['-t', '120', 'STDIO', `TCP:${target}`], { stdio: ['pipe', 'pipe', 'pipe'] }),
      'socat client',
    );
    this.socat = socat;
    socat.child.stdout!.on('data', (d: Buffer) => {
      this.got.update(d);
      this.gotBytes += d.length;
    });
    const stdin = socat.child.stdin!;
    let waiting = false;
    stdin.on('drain', () => (waiting = false));
    stdin.on('error', () => {});
    this.timer = setInterval(() => {
      if (waiting) return;
      const chunk = randomBytes(Math.round(rate / 20));
      this.sent.update(chunk);
      this.sentBytes += chunk.length;
      if (!stdin.write(chunk)) waiting = true;
    }, 50);
    await until(
      () => this.gotBytes > 0,
      10_000,
      () => `the first echoed bytes ${this.label} (socat: ${socat.exited ?? 'running'} ${socat.output})\n${context()}`,
    );
  }

  /** Whether socat is still running (it exits when its connection fails). */
  get alive(): boolean {
    return this.socat !== undefined && this.socat.exited === undefined;
  }

  get output(): string {
    return this.socat?.output ?? '';
  }

  /** Ends the stream and checks that the echo came back whole. */
  async finishAndVerify(): Promise<{ bytes: number }> {
    clearInterval(this.timer);
    this.socat!.child.stdin!.end();
    await until(
      () => this.socat!.exited !== undefined,
      60_000,
      () => `socat ${this.label} to exit once its input ended: ${this.socat!.output}`,
      50,
    );
    if (this.socat!.exited !== 0) throw new Error(`socat exited ${this.socat!.exited}: ${this.socat!.output}`);
    if (this.gotBytes !== this.sentBytes) throw new Error(`socat sent ${this.sentBytes} bytes ${this.label}, got ${this.gotBytes} back`);
    if (this.got.digest('hex') !== this.sent.digest('hex')) throw new Error(`the echo ${this.label} differs from what was sent`);
    return { bytes: 2 * this.sentBytes };
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.socat?.stop();
  }
}

/**
 * socat on the client, through `rock forward` (client) and `rock serve`
 * (server), to `socat ... EXEC:cat` on the server.
 */
export class CommandPath {
  private readonly processes: HostProcess[] = [];
  private readonly stream: SocatStream;
  forward: RockProcess | undefined;
  serve: RockProcess | undefined;

  constructor(private readonly bed: NetBed) {
    this.stream = new SocatStream(bed, 'through rock forward + serve');
  }

  async start(port: number, rockOptions: string[], rate: number): Promise<void> {
    const echoPort = port + 1;
    this.processes.push(socatEcho(this.bed, `127.0.0.1:${echoPort}`));
    this.serve = new RockProcess(this.bed, 'server', ['serve', '--listen', `0.0.0.0:${port}`, '--to', `127.0.0.1:${echoPort}`, ...rockOptions]);
    this.processes.push(this.serve);
    await this.serve.ready('serving rocks, relaying to the target');
    this.forward = new RockProcess(this.bed, 'client', [
      'forward',
      '--listen',
      `127.0.0.1:${port}`,
      '--to',
      `${this.bed.serverAddress}:${port}`,
      ...rockOptions,
    ]);
    this.processes.push(this.forward);
    await this.forward.ready('forwarding over rocks');
    await this.stream.start(`127.0.0.1:${port}`, rate, () => `${this.forward!.output}\n${this.serve!.output}`);
  }

  finishAndVerify(): Promise<{ bytes: number }> {
    return this.stream.finishAndVerify();
  }

  /** Times of the forward's 'suspended' and 'resumed' log lines (its rocks connection). */
  outages(): { suspended: number[]; resumed: number[] } {
    const logs = this.forward?.logs() ?? [];
    return {
      suspended: logs.filter((l) => l.msg === 'suspended').map((l) => l.time),
      resumed: logs.filter((l) => l.msg === 'resumed').map((l) => l.time),
    };
  }

  /** Times of the forward's 'moved to a new connection' log lines, with the new connection's local address. */
  moves(): { time: number; local: string }[] {
    return (this.forward?.logs() ?? []).filter((l) => l.msg === 'moved to a new connection').map((l) => ({ time: l.time, local: String(l.local) }));
  }

  async stop(): Promise<void> {
    await Promise.all([this.stream.stop(), ...this.processes.map((p) => p.stop())]);
  }
}

/** What a streaming scenario gives its body: the bed, both agents and the command path, all streaming. */
export interface StreamingWorld {
  bed: NetBed;
  client: Agent;
  server: Agent;
  command: CommandPath;
}

export interface ScenarioOptions {
  /** Agent connections (default 1) and what each sends a second, each way (default 256 KiB). */
  count?: number;
  rate?: number;
  /** How often each connection writes (ms, default 50). */
  tick?: number;
  /** The bed's bandwidth limit (default 100 Mbit/s), sysctls on every host, and options of the bed itself. */
  mbit?: number;
  sysctl?: Record<string, string>;
  bed?: NetBedOptions;
  /** Session options of both agents, and the command line options of rock serve and forward (default: the library's). */
  options?: object;
  rockOptions?: string[];
  /** How long everything streams before and after the body (ms, default 1000). */
  settle?: number;
}

const RATE = 256 * 1024;
const TICK = 50;
const AGENT_PORT = 7000;
const ROCK_PORT = 7100;

/**
 * A bed with a server agent, a client agent and the command path, all
 * streaming, around `body`; then every byte of the agents and of socat is
 * checked by SHA-256 and the amounts printed. Torn down whatever happens.
 */
export async function streamingScenario(name: string, body: (world: StreamingWorld) => Promise<void>, opts: ScenarioOptions = {}): Promise<void> {
  const { count = 1, rate = RATE, tick = TICK, mbit = 100, sysctl = {}, options = {}, rockOptions = [], settle = 1000 } = opts;
  const bed = new NetBed(opts.bed);
  const command = new CommandPath(bed);
  let server: Agent | undefined;
  let client: Agent | undefined;
  try {
    bed.shape(mbit);
    for (const [key, value] of Object.entries(sysctl)) bed.hostSysctl(key, value);
    server = await agentServer(bed, AGENT_PORT, options, rate, tick);
    client = await agentClient(bed, AGENT_PORT, options, rate, count, false, bed.serverAddress, tick);
    await command.start(ROCK_PORT, rockOptions, RATE);
    if (!client.of('connected').every((e) => e.reliable)) throw new Error('the agent connections are not all reliable');
    await sleep(settle); // streaming before the body
    await body({ bed, client, server, command });
    await sleep(settle); // and after it
    const agents = await finishAndVerify(client, server, count);
    const socat = await command.finishAndVerify();
    console.log(
      `# ${name}: ${count} rocks connection(s) carried ${(agents.bytes / 2 ** 20).toFixed(1)} MiB, socat through rock forward + serve ${(socat.bytes / 2 ** 20).toFixed(1)} MiB; every byte intact both ways`,
    );
  } finally {
    await command.stop();
    await client?.stop();
    await server?.stop();
    bed.destroy();
  }
}
