#!/usr/bin/env node
// The `rack` command: reliable packets for unmodified programs in any
// language (src/racks). `rack up` runs the daemon in the foreground; `rack
// status` and `rack down` talk to it over a control socket in the abstract
// namespace, which is private to the network namespace, so every namespace
// (every test host) has its own daemon. Bad input is one line on standard
// error and exit code 2, like rock.

import { readFileSync } from 'node:fs';
import { connect as connectUnix, createServer as createUnixServer, type Server } from 'node:net';
import { pino } from 'pino';
import { EXIT, ExitError, LOG_LEVELS, parse, parseDuration, runMain, UsageError } from './args.js';
import type { RackStatus } from '../racks/daemon.js';
import { textLines } from './monitor.js';
import { rackTls } from './tls-args.js';

const USAGE = `Usage: rack COMMAND [options]   (Linux, as root)

Reliable packets: the TCP connections of unmodified programs, in any
language, survive dead links, long outages and address changes, through the
kernel's packet filter. Run the same 'rack up' on both hosts.

Commands:
  up --protect SPEC [--protect SPEC ...] [options]   run the daemon (foreground)
  status [--json]                                    list protected connections
  down                                               stop the daemon; remove what it (or a killed one) installed

Run 'rack COMMAND --help' for a command's options.
Exit codes: 0 done, 1 failed (no daemon, not root, cannot install), 2 bad command line.`;

const UP_HELP = `Usage: rack up --protect SPEC [--protect SPEC ...] [options]

SPEC names the server end of the connections to protect: tcp:PORT,
tcp:PORT@HOST or tcp:PORT@NET/LEN (IPv4), e.g. tcp:22 or tcp:5432@10.0.0.0/24.
On a client host, connections to it are carried when the server host runs
rack too (asked once per host, on the rack port); on a server host, the
replies of those ports to rack clients are.

Options:
  --protect SPEC            a connection spec (repeat for more; at least one)
  --port PORT               the rack port, for carriages between daemons (default 7225)
  --failure-timeout MS      silence that declares the path failed (default 5000, min 200)
  --suspend-limit DURATION  how long connections may stay held (default 24h; e.g. 90s, 30m, 2d)
  --secret-file FILE        a shared secret: only daemons holding the same one talk
  --tls-cert FILE           carriages over TLS 1.3: this daemon's certificate (PEM;
                            see rock keygen), presented as server and as client
  --tls-key FILE            its private key (PEM)
  --tls-ca FILE             trust the daemons whose certificates this CA signed
                            (names are not checked: daemons dial addresses)
  --tls-pin sha256:BASE64   or: every daemon presents the same pair, whose pin
                            this is (rock keygen once, copy DIR to every host)
  --tls-client-ca FILE      check the certificates of daemons that dial this
                            one against this CA (default: --tls-ca, or the pin)
  --probe-timeout MS        how long a first SYN to a new host waits for its answer (default 500)
  --max-connections N       protected connections at most (default 10000)
  --max-held SIZE           bytes in custody (carried, not yet acknowledged by the peer daemon) at most (default 256MiB; e.g. 64MiB, 1GiB)
  --tun NAME                the TUN device (default rack0)
  --log-level LEVEL         error, warn, info (default) or debug
  --json                    log one JSON object per line
  -h, --help                this help`;

/** The control socket of the daemon of this network namespace (Linux abstract namespace). */
const controlPath = (tun: string): string => `\0rack-control-${tun}`;

function positiveInt(text: string | undefined, what: string, fallback: number, max = 2 ** 31): number {
  if (text === undefined) return fallback;
  if (!/^\d+$/.test(text) || Number(text) < 1 || Number(text) > max)
    throw new UsageError(`${what}: expected a whole number from 1 to ${max}, got '${text}'`);
  return Number(text);
}

function parseSize(text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const m = /^(\d+)\s*(B|KiB|MiB|GiB|K|M|G)?$/i.exec(text);
  if (!m) throw new UsageError(`--max-held: expected a size such as 64MiB or 1GiB, got '${text}'`);
  const unit = (m[2] ?? 'B').toUpperCase()[0];
  return Number(m[1]) * { B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[unit as 'B' | 'K' | 'M' | 'G'];
}

function checkTun(name: string): string {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(name)) throw new UsageError(`--tun: '${name}' is not an interface name (1-15 letters, digits, _ . -)`);
  return name;
}

function needRoot(): void {
  if (process.platform !== 'linux') throw new ExitError('racks need Linux', EXIT.FAILURE);
  if (process.getuid?.() !== 0) throw new ExitError('needs root (it installs nftables rules, routes and a TUN device)', EXIT.FAILURE);
}

async function up(args: string[]): Promise<number> {
  const { values } = parse(
    args,
    {
      protect: { type: 'string', multiple: true },
      port: { type: 'string' },
      'failure-timeout': { type: 'string' },
      'suspend-limit': { type: 'string' },
      'secret-file': { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'tls-ca': { type: 'string' },
      'tls-pin': { type: 'string' },
      'tls-client-ca': { type: 'string' },
      'probe-timeout': { type: 'string' },
      'max-connections': { type: 'string' },
      'max-held': { type: 'string' },
      tun: { type: 'string' },
      'log-level': { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    false,
  );
  if (values.help) return help(UP_HELP);
  // Loaded here, not at the top: the daemon loads koffi, which `status` and `--help` do without.
  const { parseSpec, SpecError } = await import('../racks/netfilter.js');
  const { RackDaemon, RACK_DEFAULTS } = await import('../racks/daemon.js');
  const { openSystemParts } = await import('../racks/system.js');
  const specTexts = (values.protect as unknown as string[] | undefined) ?? [];
  if (specTexts.length === 0) throw new UsageError('up needs at least one --protect SPEC (e.g. --protect tcp:22)');
  const specs = specTexts.map((t) => {
    try {
      return parseSpec(t);
    } catch (err) {
      throw err instanceof SpecError ? new UsageError(err.message) : err;
    }
  });
  const level = (values['log-level'] as string | undefined) ?? 'info';
  if (!(LOG_LEVELS as readonly string[]).includes(level))
    throw new UsageError(`--log-level: expected one of ${LOG_LEVELS.join(', ')}, got '${level}'`);
  const failureTimeout = positiveInt(values['failure-timeout'] as string | undefined, '--failure-timeout', RACK_DEFAULTS.failureTimeout, 86_400_000);
  if (failureTimeout < 200) throw new UsageError(`--failure-timeout: at least 200 ms, got ${failureTimeout}`);
  const suspendLimit =
    values['suspend-limit'] === undefined ? RACK_DEFAULTS.suspendLimit : parseDuration(values['suspend-limit'] as string, '--suspend-limit');
  let secret: Buffer | undefined;
  if (typeof values['secret-file'] === 'string') {
    try {
      secret = readFileSync(values['secret-file']);
    } catch (err) {
      throw new UsageError(`--secret-file: ${(err as Error).message}`);
    }
    if (secret.length < 16) throw new UsageError('--secret-file: the secret must be at least 16 bytes');
  }
  const tls = rackTls(values);
  const options = {
    specs,
    tls,
    port: positiveInt(values.port as string | undefined, '--port', RACK_DEFAULTS.port, 65535),
    failureTimeout,
    suspendLimit,
    secret,
    probeTimeout: positiveInt(values['probe-timeout'] as string | undefined, '--probe-timeout', RACK_DEFAULTS.probeTimeout, 60_000),
    plainTtl: RACK_DEFAULTS.plainTtl,
    maxFlows: positiveInt(values['max-connections'] as string | undefined, '--max-connections', RACK_DEFAULTS.maxFlows),
    maxHeldBytes: parseSize(values['max-held'] as string | undefined, RACK_DEFAULTS.maxHeldBytes),
  };
  const kernel = { tun: checkTun((values.tun as string | undefined) ?? 'rack0') };
  needRoot();

  const json = values.json === true;
  const log = pino({ level, base: undefined }, { write: (line: string) => process.stderr.write(json ? line : textLines(line)) });
  // The control socket first: a second daemon with the same TUN stops here, before it touches the kernel.
  const control = await listenControl(kernel.tun);
  let daemon: InstanceType<typeof RackDaemon> | undefined;
  const started = (async () => {
    daemon = new RackDaemon({ ...options, log }, openSystemParts({ ...options, log }, kernel));
    await daemon.start();
  })();
  let finished!: (why: string) => void;
  const done = new Promise<string>((resolve) => (finished = resolve));
  for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(s, () => finished(s));
  let stopping: Promise<void> | undefined;
  const stop = (why: string): Promise<void> => {
    stopping ??= (async () => {
      log.info({ why }, 'stopping');
      control.close();
      await started.catch(() => {});
      await daemon?.stop();
    })();
    return stopping;
  };
  control.on('connection', (c) => {
    c.setEncoding('utf8');
    c.on('error', () => {});
    c.once('data', (line: string) => {
      const command = line.trim();
      if (command === 'status') c.end(`${JSON.stringify(daemon ? daemon.status() : { error: 'the daemon is starting' })}\n`);
      else if (command === 'down') {
        void stop('rack down').then(() => {
          c.end('{"down":true}\n');
          finished('rack down');
        });
      } else c.end(`${JSON.stringify({ error: `unknown control command '${command}'` })}\n`);
    });
  });
  try {
    await started;
  } catch (err) {
    await stop('start failed');
    throw new ExitError(`cannot start: ${(err as Error).message}`, EXIT.FAILURE);
  }
  const signal = await done;
  await stop(signal);
  return EXIT.OK;
}

function listenControl(tun: string): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createUnixServer();
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(err.code === 'EADDRINUSE' ? new ExitError(`a rack daemon already runs here with --tun ${tun}`, EXIT.FAILURE) : err),
    );
    server.listen(controlPath(tun), () => resolve(server));
  });
}

/** Sends one control command to this namespace's daemon; undefined when none runs. */
function ask(tun: string, command: string): Promise<Record<string, unknown> | undefined> {
  return new Promise((resolve, reject) => {
    const c = connectUnix(controlPath(tun));
    let reply = '';
    c.setEncoding('utf8');
    c.on('data', (d: string) => (reply += d));
    c.on('end', () => {
      try {
        resolve(JSON.parse(reply) as Record<string, unknown>);
      } catch {
        reject(new Error(`the daemon's answer could not be read: '${reply.slice(0, 200)}'`));
      }
    });
    c.on('error', (err: NodeJS.ErrnoException) => (err.code === 'ECONNREFUSED' || err.code === 'ENOENT' ? resolve(undefined) : reject(err)));
    c.write(`${command}\n`);
  });
}

async function status(args: string[]): Promise<number> {
  const { values } = parse(args, { json: { type: 'boolean' }, tun: { type: 'string' }, help: { type: 'boolean', short: 'h' } }, false);
  if (values.help)
    return help(
      "Usage: rack status [--json] [--tun NAME]\n\nLists the protected connections of this host's rack daemon: peer, state, outage, bytes held.",
    );
  const s = (await ask(checkTun((values.tun as string | undefined) ?? 'rack0'), 'status')) as unknown as
    | (RackStatus & { error?: unknown })
    | undefined;
  if (s === undefined) throw new ExitError('no rack daemon runs here', EXIT.FAILURE);
  if ('error' in s) throw new ExitError(`the daemon says: ${String(s.error)}`, EXIT.FAILURE);
  if (values.json) {
    process.stdout.write(`${JSON.stringify(s)}\n`);
    return EXIT.OK;
  }
  const out = [`rack ${s.pid}: protecting ${s.specs.join(', ')} (rack port ${s.port}, ${s.tun})`];
  for (const h of s.hosts) out.push(`host ${h.address}: ${h.verdict}${h.state ? `, carriage ${h.state}` : ''}`);
  out.push(
    s.connections.length === 0
      ? 'no protected connections'
      : `${'LOCAL'.padEnd(22)} ${'REMOTE'.padEnd(22)} ${'STATE'.padEnd(10)} ${'OUTAGE'.padStart(8)} ${'HELD'.padStart(10)}`,
  );
  for (const c of s.connections) {
    out.push(
      `${c.local.padEnd(22)} ${c.remote.padEnd(22)} ${c.state.padEnd(10)} ${`${(c.outageMs / 1000).toFixed(1)} s`.padStart(8)} ${`${c.heldBytes} B`.padStart(10)}`,
    );
  }
  out.push(
    `counters: ${Object.entries(s.counters)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
  );
  process.stdout.write(`${out.join('\n')}\n`);
  return EXIT.OK;
}

async function down(args: string[]): Promise<number> {
  const { values } = parse(args, { tun: { type: 'string' }, help: { type: 'boolean', short: 'h' } }, false);
  if (values.help)
    return help(
      "Usage: rack down [--tun NAME]\n\nStops this host's rack daemon, which removes everything it installed. With no daemon\nrunning, removes what a killed one left (nftables table, rules, routes, TUN device).",
    );
  needRoot();
  const tun = checkTun((values.tun as string | undefined) ?? 'rack0');
  const answer = await ask(tun, 'down');
  if (answer === undefined) {
    const { removeLeftovers } = await import('../racks/netfilter.js');
    removeLeftovers({ tun });
    process.stderr.write('rack: no daemon was running; removed anything a previous one left\n');
  }
  return EXIT.OK;
}

function help(text: string): number {
  process.stdout.write(`${text}\n`);
  return EXIT.OK;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      return help(USAGE);
    case 'up':
      return up(rest);
    case 'status':
      return status(rest);
    case 'down':
      return down(rest);
    default:
      throw new UsageError(`unknown command '${command}' (commands: up, status, down)`);
  }
}

runMain('rack', main);
