// One watcher of the host's network per process, shared by every client
// session (PROTOCOL.md §6.8). A session whose local address vanished, whose
// interface went down or whose default route changed moves to a new
// connection at once instead of waiting out failureTimeout; one whose
// process stalled (the machine slept, SIGSTOP) checks its connection at once.
//
// Linux reports address, route and link changes on rtnetlink; `ip -o
// monitor address route link` prints one line per message. We read that
// rather than a netlink socket through koffi: iproute2 already decodes every
// message of both address families and follows the namespace it runs in,
// a crash of the child costs us nothing, and the kernel's structures never
// reach our code. macOS reports them on a routing socket, and `route -n
// monitor` prints one block per message (route-monitor.ts). Elsewhere the
// watcher is off and sessions rely on failureTimeout alone.
//
// The child runs while client sessions subscribe (and LINGER_MS after), and blocks in the
// kernel between messages: an idle process pays nothing for it.

import { type ChildProcess, spawn } from 'node:child_process';
import { networkInterfaces } from 'node:os';
import { createInterface } from 'node:readline';
import { debuglog } from 'node:util';
import { RouteMonitorReader } from './route-monitor.js';

const debug = debuglog('rocks');

/** Changes that arrive within this many ms of each other are handled together (a move is a removal, an addition and a route). */
const SETTLE_MS = 25;
/** A monitor that exited is started again after this long, while sessions still subscribe. */
const RESTART_MS = 5000;
/**
 * The monitor runs on this long after the last session left: starting it
 * costs a fork of this process (about 6 ms of a blocked event loop), and a
 * program that opens one short connection after another would pay it each time.
 */
const LINGER_MS = 60_000;

/** One change the monitor reported (a line of `ip -o monitor address route link`), as far as a session cares. */
export type MonitorEvent =
  | { kind: 'address'; deleted: boolean; device: string; address: string }
  | { kind: 'route'; deleted: boolean; isDefault: boolean }
  | { kind: 'link'; device: string; up: boolean };

const ADDRESS_LINE = /^(Deleted )?\d+: ([^\s@:]+)(?:@\S+)?:?\s+inet6? ([0-9a-fA-F.:]+)\/\d+/;
const LINK_LINE = /^(Deleted )?\d+: ([^\s@:]+)(?:@[^\s:]+)?: <([A-Z0-9_,-]*)>/;
// A route: its destination (default, or a prefix with an optional type such as `local`), then `dev` or `via` somewhere after.
const ROUTE_LINE = /^(Deleted )?(?:(default)|(?:[a-z]+ )?(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9a-fA-F]*:[0-9a-fA-F:]+)(?:\/\d+)?)\s.*\b(?:dev|via)\s/;

/** Parses one line of `ip -o monitor address route link`; undefined for one it does not understand. */
export function parseIpMonitorLine(line: string): MonitorEvent | undefined {
  // With a timestamp option iproute2 prefixes "[ADDR]", "[ROUTE]", "[LINK]": never relied on, but harmless.
  const text = line.replace(/^\[[A-Z]+\]/, '').trim();
  let m = ADDRESS_LINE.exec(text);
  if (m) return { kind: 'address', deleted: m[1] !== undefined, device: m[2], address: m[3] };
  m = LINK_LINE.exec(text);
  if (m) {
    const flags = m[3].split(',');
    const up = m[1] === undefined && flags.includes('UP') && flags.includes('LOWER_UP') && !flags.includes('NO-CARRIER');
    return { kind: 'link', device: m[2], up };
  }
  m = ROUTE_LINE.exec(text);
  if (m) return { kind: 'route', deleted: m[1] !== undefined, isDefault: m[2] !== undefined };
  return undefined;
}

/** What changed on the host since the last report, for sessions to decide whether it touches their connection. */
export interface NetworkChange {
  /** Addresses taken off an interface ('' when the system does not say which). */
  removed: Set<string>;
  /** Addresses put on an interface. */
  added: Set<string>;
  /** Interfaces whose state changed, and whether they are up now ('' when the system does not say which). */
  links: Map<string, boolean>;
  /** A default route appeared, changed or went away. */
  defaultRoute: boolean;
  /** The process did not run for this many ms (the machine slept, SIGSTOP); 0 for a network change. */
  stalledMs: number;
  /**
   * The interface of each address of the host, as the watcher last knew it:
   * an interface that is down still holds its addresses, which getifaddrs
   * (os.networkInterfaces) no longer lists.
   */
  interfaces: ReadonlyMap<string, string>;
}

/** Gathers monitor events into one NetworkChange; `take` returns it and starts the next. */
export class ChangeAccumulator {
  private any = false;
  /** The last state seen of each interface: a link line that repeats it changes nothing. */
  private readonly linkState = new Map<string, boolean>();
  /** Each address's interface: learned when the monitor starts, kept by its address lines. */
  private readonly interfaces = new Map<string, string>();
  private change = emptyChange(this.interfaces);

  /** Learns the interfaces of the host's addresses (os.networkInterfaces(), which lists those that are up). */
  learn(byInterface: NodeJS.Dict<{ address: string }[]>): void {
    for (const [name, list] of Object.entries(byInterface)) for (const a of list ?? []) this.interfaces.set(a.address, name);
  }

  /** Adds one event; returns whether it is a change a session may care about. */
  add(ev: MonitorEvent): boolean {
    switch (ev.kind) {
      case 'address':
        if (ev.address !== '') {
          if (ev.deleted) this.interfaces.delete(ev.address);
          else this.interfaces.set(ev.address, ev.device);
        }
        if (isLinkLocal(ev.address)) return false;
        (ev.deleted ? this.change.removed : this.change.added).add(ev.address);
        break;
      case 'route':
        if (!ev.isDefault) return false;
        this.change.defaultRoute = true;
        break;
      case 'link':
        if (ev.device !== '' && this.linkState.get(ev.device) === ev.up) return false;
        if (ev.device !== '') this.linkState.set(ev.device, ev.up);
        this.change.links.set(ev.device, ev.up);
        break;
    }
    this.any = true;
    return true;
  }

  get pending(): boolean {
    return this.any;
  }

  take(): NetworkChange {
    const change = this.change;
    this.change = emptyChange(this.interfaces);
    this.any = false;
    return change;
  }
}

function emptyChange(interfaces: ReadonlyMap<string, string> = new Map()): NetworkChange {
  return { removed: new Set(), added: new Set(), links: new Map(), defaultRoute: false, stalledMs: 0, interfaces };
}

function isLinkLocal(address: string): boolean {
  return address.startsWith('fe80:') || address.startsWith('169.254.') || address.startsWith('127.') || address === '::1';
}

/** A one-line account of a change, for logs. */
export function describeChange(change: NetworkChange): string {
  if (change.stalledMs > 0) return `the process did not run for ${Math.round(change.stalledMs)} ms`;
  const parts: string[] = [];
  if (change.removed.size > 0) parts.push(`removed ${[...change.removed].join(', ') || 'an address'}`);
  if (change.added.size > 0) parts.push(`added ${[...change.added].join(', ') || 'an address'}`);
  for (const [device, up] of change.links) parts.push(`${device || 'an interface'} ${up ? 'up' : 'down'}`);
  if (change.defaultRoute) parts.push('default route changed');
  return parts.join('; ');
}

type Listener = (change: NetworkChange) => void;

/** Who hears of changes through watch(): an object, so that a session needs no closure to listen. */
export interface NetworkListener {
  onNetworkChange(change: NetworkChange): void;
}

type LineReader = (line: string) => MonitorEvent | undefined;

/**
 * The monitor of this platform and a maker of its line readers (one per
 * run: macOS's spans lines), or undefined where there is none. It must end
 * with us, however we end (SIGKILL included): on Linux the kernel sends it
 * SIGTERM when we die (setpriv --pdeathsig); elsewhere a shell starts it
 * and stops it once its standard input, our pipe, ends.
 * Exit code 127: no such command here.
 */
function monitorCommand(
  platform: NodeJS.Platform,
  setpriv: boolean,
): { file: string; args: string[]; stdin: 'ignore' | 'pipe'; reader: () => LineReader } | undefined {
  if (platform === 'linux') {
    const ip = ['ip', '-o', 'monitor', 'address', 'route', 'link'];
    const reader = () => parseIpMonitorLine;
    // Without setpriv (busybox systems) it ends with us on a normal exit, or at its first line after.
    if (!setpriv) return { file: ip[0], args: ip.slice(1), stdin: 'ignore', reader };
    return { file: 'setpriv', args: ['--pdeathsig', 'TERM', '--', ...ip], stdin: 'ignore', reader };
  }
  if (platform === 'darwin') {
    const script = `command -v route >/dev/null || exit 127; route -n monitor & trap 'kill $! 2>/dev/null' EXIT INT TERM; cat >/dev/null`;
    return {
      file: 'sh',
      args: ['-c', script],
      stdin: 'pipe',
      reader: () => {
        const reader = new RouteMonitorReader();
        return (line) => reader.line(line);
      },
    };
  }
  return undefined;
}

export class NetworkWatcher {
  private readonly listeners = new Set<NetworkListener>();
  private child: ChildProcess | undefined;
  private restart: NodeJS.Timeout | undefined;
  private settle: NodeJS.Timeout | undefined;
  private readonly changes = new ChangeAccumulator();
  private unavailable = false;
  private starting: NodeJS.Immediate | undefined;
  private linger: NodeJS.Timeout | undefined;
  private setpriv = true;
  private exitHooked = false;
  /** How many times the monitor was started (a diagnostic). */
  starts = 0;

  /** `platform` picks the monitor (tests run macOS's with a stand-in for route(8)). */
  constructor(private readonly platform: NodeJS.Platform = process.platform) {}

  /**
   * Tells `listener` of each change until unwatch(listener). The monitor
   * starts on the next turn of the event loop (not inside the caller's work)
   * and runs while anyone listens, and LINGER_MS after.
   */
  watch(listener: NetworkListener): void {
    this.listeners.add(listener);
    clearTimeout(this.linger);
    this.linger = undefined;
    if (this.child === undefined && this.starting === undefined) {
      this.starting = setImmediate(() => {
        this.starting = undefined;
        if (this.listeners.size > 0) this.start();
      }).unref();
    }
  }

  unwatch(listener: NetworkListener): void {
    if (!this.listeners.delete(listener) || this.listeners.size > 0) return;
    this.linger ??= setTimeout(() => {
      this.linger = undefined;
      if (this.listeners.size === 0) this.stop();
    }, LINGER_MS).unref();
  }

  /** Calls `listener` with each change until the returned function is called (see watch). */
  subscribe(listener: Listener): () => void {
    const watcher: NetworkListener = { onNetworkChange: listener };
    this.watch(watcher);
    return () => this.unwatch(watcher);
  }

  /** The scheduler saw the process stall for `ms` (a late timer, or wall time that moved on while monotonic time stood still). */
  reportStall(ms: number): void {
    if (this.listeners.size === 0) return;
    const change = { ...emptyChange(), stalledMs: ms };
    debug('network watch: %s', describeChange(change));
    this.deliver(change);
  }

  /** Feeds one monitor line (the child's output; tests call it directly). */
  onLine(line: string, parse: LineReader = parseIpMonitorLine): void {
    const ev = parse(line);
    if (ev === undefined || !this.changes.add(ev)) return;
    this.settle ??= setTimeout(() => {
      this.settle = undefined;
      // An interface that was not running at start (a veth still without carrier) has its addresses learned now.
      this.changes.learn(networkInterfaces());
      const change = this.changes.take();
      debug('network watch: %s', describeChange(change));
      this.deliver(change);
    }, SETTLE_MS).unref();
  }

  private deliver(change: NetworkChange): void {
    for (const listener of [...this.listeners]) listener.onNetworkChange(change);
  }

  private start(): void {
    const monitor = monitorCommand(this.platform, this.setpriv);
    if (monitor === undefined || this.unavailable || this.child !== undefined) return;
    this.starts++;
    this.changes.learn(networkInterfaces());
    const child = spawn(monitor.file, monitor.args, { stdio: [monitor.stdin, 'pipe', 'ignore'] });
    this.child = child;
    // Neither the child nor its pipes keep this process alive.
    child.unref();
    for (const pipe of [child.stdin, child.stdout]) (pipe as unknown as { unref?: () => void } | null)?.unref?.();
    const parse = monitor.reader();
    createInterface({ input: child.stdout! }).on('line', (line) => this.onLine(line, parse));
    child.on('error', (err) => {
      if (monitor.file === 'setpriv') {
        this.setpriv = false;
        return; // 'exit' follows, and a start without it
      }
      // No such command here: sessions rely on failureTimeout, as without a watcher.
      debug('network watch off: %s', err.message);
      this.unavailable = true;
    });
    child.on('exit', (code) => {
      if (this.child !== child) return;
      this.child = undefined;
      if (code === 127 || code === 1) {
        debug('network watch off: %s exited with %d', monitor.file, code);
        this.unavailable = true;
      }
      const again = monitor.file === 'setpriv' && !this.setpriv ? 0 : RESTART_MS;
      if (this.listeners.size > 0 && !this.unavailable) this.restart = setTimeout(() => this.start(), again).unref();
    });
    if (!this.exitHooked) {
      // Gone before we are: an exiting process then holds no handle of the child's.
      this.exitHooked = true;
      process.once('exit', () => this.stop());
    }
  }

  /** Stops the monitor and lets go of everything of it. */
  stop(): void {
    clearImmediate(this.starting);
    this.starting = undefined;
    clearTimeout(this.restart);
    clearTimeout(this.settle);
    this.settle = undefined;
    this.changes.take();
    const child = this.child;
    this.child = undefined;
    if (child === undefined) return;
    child.stdin?.destroy();
    child.stdout?.destroy();
    child.kill();
  }
}

/** The watcher every session of this process shares. */
export const networkWatcher = new NetworkWatcher();
