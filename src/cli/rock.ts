#!/usr/bin/env node
// The `rock` command: run programs over reliable sockets. Each subcommand
// parses its own arguments (node:util parseArgs); bad input is one line on
// standard error and exit code 2. Exit codes are listed in EXIT (args.ts).

import cluster from 'node:cluster';
import { resolveSessionConfig } from '../protocol/config.js';
import {
  COMMON_HELP,
  COMMON_OPTIONS,
  commonOptions,
  EXIT,
  parse,
  parseEndpoint,
  runMain,
  UsageError,
  type CommonOptions,
  type Endpoint,
} from './args.js';
import type { PeerEntry } from '../node/directory.js';
import { relay, type RelayKind } from './relay.js';
import { CLIENT_TLS_HELP, CLIENT_TLS_OPTIONS, clientTls, SERVER_TLS_HELP, SERVER_TLS_OPTIONS, serverTls } from './tls-args.js';

const USAGE = `Usage: rock COMMAND [options]

Reliable network connections: they survive resets, dead links, sleep and
address changes, and deliver every byte exactly once.

Commands:
  run [options] -- COMMAND [ARGS...]          run a program with its TCP connections reliable
  serve --listen HOST:PORT --to HOST:PORT     accept rocks connections and relay them to an ordinary server
  forward --listen HOST:PORT --to HOST:PORT   accept plain connections and carry them over rocks to a rock serve
  stdio HOST:PORT                             standard input and output over one reliable connection (ssh ProxyCommand)
  socks [--listen HOST:PORT]                  a SOCKS5 proxy whose outgoing connections are reliable
  keygen DIR                                  write a self-signed TLS key and certificate, print its pin
  demo                                        watch a transfer survive resets, a black hole and delays

Run 'rock COMMAND --help' for a command's options.
Exit codes: 0 done, 1 connection failed or target unreachable, 2 bad command line,
3 cannot listen; rock run exits with its program's code.`;

const HELP: Record<string, string> = {
  run: `Usage: rock run [options] -- COMMAND [ARGS...]

Runs an unmodified program so that its TCP connections are reliable. A
Node.js program: every connection it opens or accepts through node:net
(http, https, ioredis, pg, ...); child Node processes inherit it. Any other
dynamically linked program (psql, redis-cli, curl, ssh, python): every
connection it opens, through proxychains-ng (package proxychains4) and a
SOCKS5 proxy inside rock run; its DNS lookups go through that proxy too.
Peers that do not speak rocks get ordinary TCP (EDP). A statically linked
program (Go, for one) is refused: use racks or rock forward for it.

  --map HOST:PORT=HOST:PORT
                           not Node: dial the second for the first (repeatable),
                           for a rock serve on another port than the service
  --include-loopback       not Node: connections to 127.0.0.0/8 go through rocks
                           too (by default they stay direct)

${COMMON_HELP.replace(/\n {2}--metrics[^\n]*/, '')}`,
  serve: `Usage: rock serve --listen HOST:PORT --to HOST:PORT [--node-id N] [--peers LIST] [--workers N] [options]

Accepts reliable connections on --listen and relays each to the ordinary TCP
server at --to (the paper's rockd). Ordinary clients are relayed too.

  --node-id N              this node's id (0-4294967295) in every session id it
                           issues, for balancers that route resumes by it
                           (docs/PROTOCOL.md §3.6); random by default
  --peers ID=HOST:PORT,... the nodes of the deployment (this one may be listed):
                           a resume that reaches this node for a session another
                           holds is relayed there; relays are accepted only from
                           these hosts
  --directory redis://HOST:PORT
                           or: find the other nodes in Redis (one key per node,
                           with a lease); needs --node-id
  --advertise HOST:PORT    with --directory: where the other nodes reach this one
                           (default: --listen, if not a wildcard)
  --workers N              relay in N worker processes (1-255, Node cluster); the
                           primary sends each resume to the worker that holds
                           its session (not with --metrics or --tls-cert)

${SERVER_TLS_HELP}

${COMMON_HELP}`,
  forward: `Usage: rock forward --listen HOST:PORT --to HOST:PORT [options]

Accepts ordinary TCP connections on --listen (usually 127.0.0.1) and carries
each over a reliable connection to the rock serve (or other rocks server) at --to.

  --enhanced               the server is known to speak rocks: skip the EDP probe
                           (for a path that breaks probes, see docs/BALANCERS.md)

${CLIENT_TLS_HELP}

${COMMON_HELP}`,
  stdio: `Usage: rock stdio HOST:PORT [options]

Carries standard input and output over one reliable connection to a rock
serve at HOST:PORT; logs go to standard error. For ssh:
  ssh -o ProxyCommand='rock stdio %h:2222' user@host

  --enhanced               the server is known to speak rocks: skip the EDP probe
                           (for a path that breaks probes, see docs/BALANCERS.md)

${CLIENT_TLS_HELP}

${COMMON_HELP}`,
  keygen: `Usage: rock keygen DIR [--name HOST ...] [--days N] [--force]

Writes a self-signed ECDSA P-256 key and certificate for rock serve --tls-cert
and --tls-key: DIR/key.pem (mode 0600) and DIR/cert.pem, PEM as openssl
req -x509 writes them. Prints the certificate's pin (sha256:BASE64, the
SHA-256 of its public key) on standard output, for rock forward --tls-pin.

  --name HOST              a host name or IP address the certificate names
                           (repeat; default: this machine's hostname, localhost,
                           127.0.0.1 and ::1), for clients that use --tls-ca
  --days N                 valid for N days (default 3650)
  --force                  replace DIR/key.pem and DIR/cert.pem if they exist
  -h, --help               this help`,
  socks: `Usage: rock socks [--listen HOST:PORT] [--map HOST:PORT=HOST:PORT]... [options]

A SOCKS5 proxy (RFC 1928, CONNECT; IPv4, IPv6 and host names) whose every
outgoing connection is a rocks connection: a destination that speaks rocks
(a rock serve) gets a reliable session, any other plain TCP with exactly the
client's bytes. A host name is resolved again at each reconnection.
  curl --socks5-hostname 127.0.0.1:1080 ...   or   ALL_PROXY=socks5h://127.0.0.1:1080

  --listen HOST:PORT       where to accept SOCKS clients (default 127.0.0.1:1080)
  --map HOST:PORT=HOST:PORT
                           dial the second for the first (repeatable): a
                           rock serve on 5433 in front of PostgreSQL on 5432
  --user NAME --password PASS
                           require RFC 1929 username/password authentication

${COMMON_HELP}`,
  demo: `Usage: rock demo

Runs a rocks client and server on 127.0.0.1 with a fault proxy between them
that resets, black-holes and delays the connection while 48 MiB go each way,
then compares SHA-256 digests of everything sent and received.`,
};

/**
 * Resolves with the signal's name at the first SIGINT, SIGTERM or SIGHUP
 * (ssh hangs up its ProxyCommand, `rock stdio`, when it exits: without a
 * handler the session would die unannounced and stay suspended at the server).
 */
function stopSignal(): Promise<string> {
  return new Promise((resolve) => {
    for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(signal, () => resolve(signal));
  });
}

/** Options of the commands that dial a rocks server they name. */
const CLIENT_OPTIONS = { enhanced: { type: 'boolean' }, ...CLIENT_TLS_OPTIONS } as const;

/** Common options, with the session options checked as the library would check them. */
function common(values: Record<string, string | boolean | undefined>): CommonOptions {
  const options = commonOptions(values);
  try {
    resolveSessionConfig(options.session);
  } catch (err) {
    const flags: Record<string, string> = {
      failureTimeout: '--failure-timeout',
      heartbeatInterval: '--heartbeat',
      suspendLimit: '--suspend-limit',
      pathCheckInterval: '--path-check',
    };
    throw new UsageError((err as Error).message.replace(/^invalid option: (\w+)/, (_, name: string) => flags[name] ?? name));
  }
  return options;
}

async function relayCommand(kind: RelayKind, args: string[]): Promise<number> {
  const options = { ...COMMON_OPTIONS, listen: { type: 'string' }, to: { type: 'string' } } as const;
  const serveOptions = {
    'node-id': { type: 'string' },
    peers: { type: 'string' },
    directory: { type: 'string' },
    advertise: { type: 'string' },
    workers: { type: 'string' },
    ...SERVER_TLS_OPTIONS,
  } as const;
  const { values } = parse(args, kind === 'serve' ? { ...options, ...serveOptions } : { ...options, ...CLIENT_OPTIONS }, false);
  if (values.help) return help(kind);
  const listen = parseEndpoint(values.listen as string | undefined, '--listen', kind === 'forward' ? '127.0.0.1' : '0.0.0.0');
  const to = parseEndpoint(values.to as string | undefined, '--to');
  const nodeId = parseNodeId(values['node-id'] as string | undefined, '--node-id');
  const peers = parsePeers(values.peers as string | undefined);
  const directory = values.directory as string | undefined;
  const advertiseText = values.advertise as string | undefined;
  if (peers !== undefined && directory !== undefined) throw new UsageError('give --peers or --directory, not both');
  if (directory !== undefined && !/^rediss?:\/\/./.test(directory))
    throw new UsageError(`--directory: expected redis://HOST:PORT, got '${directory}'`);
  if (directory !== undefined && nodeId === undefined) throw new UsageError('--directory needs --node-id (each node of a deployment has its own)');
  if (advertiseText !== undefined && directory === undefined) throw new UsageError('--advertise goes with --directory');
  const advertise = advertiseText === undefined ? undefined : parseEndpoint(advertiseText, '--advertise');
  const workers = parseWorkers(values.workers as string | undefined);
  const tls = kind === 'serve' ? { server: serverTls(values) } : { client: clientTls(values) };
  if (workers !== undefined && tls.server !== undefined)
    throw new UsageError('--workers cannot be used with --tls-cert (the primary routes each link by its first bytes, which TLS hides)');
  if ((peers !== undefined || directory !== undefined) && tls.server !== undefined)
    throw new UsageError(
      `--${peers !== undefined ? 'peers' : 'directory'} cannot be used with --tls-cert (nodes relay links by their first bytes, which TLS hides)`,
    );
  const settings = common(values);
  if (workers !== undefined && settings.metrics !== undefined)
    throw new UsageError('--metrics cannot be used with --workers (each worker would count only its own connections)');
  // The workers run this same command line; each one relays.
  if (workers !== undefined && cluster.isPrimary) {
    const { serveWithWorkers } = await import('./workers.js');
    return serveWithWorkers(workers, listen, to, settings, stopSignal());
  }
  await relay(kind, listen, to, settings, stopSignal(), { nodeId, peers, directory, advertise }, tls);
  return EXIT.OK;
}

function parseWorkers(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = /^\d{1,3}$/.test(text) ? Number(text) : Number.NaN;
  if (!(n >= 1 && n <= 255)) throw new UsageError(`--workers must be a whole number from 1 to 255, got ${JSON.stringify(text)}`);
  return n;
}

/** --peers ID=HOST:PORT[,ID=HOST:PORT...] */
function parsePeers(text: string | undefined): PeerEntry[] | undefined {
  if (text === undefined) return undefined;
  const peers: PeerEntry[] = [];
  for (const item of text.split(',')) {
    const eq = item.indexOf('=');
    if (eq <= 0) throw new UsageError(`--peers: expected ID=HOST:PORT, got '${item}'`);
    const nodeId = parseNodeId(item.slice(0, eq), '--peers: a node id')!;
    if (peers.some((p) => p.nodeId === nodeId)) throw new UsageError(`--peers names node ${nodeId} twice`);
    peers.push({ nodeId, ...parseEndpoint(item.slice(eq + 1), `--peers (node ${nodeId})`) });
  }
  return peers;
}

function parseNodeId(text: string | undefined, what: string): number | undefined {
  if (text === undefined) return undefined;
  const n = /^\d{1,10}$/.test(text) ? Number(text) : Number.NaN;
  if (!(n <= 0xffff_ffff)) throw new UsageError(`${what} must be a whole number from 0 to 4294967295, got ${JSON.stringify(text)}`);
  return n;
}

async function stdioCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { ...COMMON_OPTIONS, ...CLIENT_OPTIONS });
  if (values.help) return help('stdio');
  if (positionals.length !== 1) throw new UsageError(`stdio takes one HOST:PORT, got ${positionals.length === 0 ? 'none' : positionals.join(' ')}`);
  const { stdio } = await import('./stdio.js');
  const tls = clientTls(values);
  return stdio(parseEndpoint(positionals[0], 'stdio'), common(values), stopSignal(), tls);
}

/** --map HOST:PORT=HOST:PORT, repeatable: destination (lower-case host:port) to where to dial. */
async function parseMaps(items: unknown): Promise<Map<string, Endpoint>> {
  const { mapKey } = await import('./socks.js');
  const maps = new Map<string, Endpoint>();
  for (const item of (items as string[] | undefined) ?? []) {
    const eq = item.indexOf('=');
    if (eq <= 0) throw new UsageError(`--map: expected HOST:PORT=HOST:PORT, got '${item}'`);
    const from = parseEndpoint(item.slice(0, eq), '--map (destination)');
    const key = mapKey(from.host, from.port);
    if (maps.has(key)) throw new UsageError(`--map names ${item.slice(0, eq)} twice`);
    maps.set(key, parseEndpoint(item.slice(eq + 1), '--map (where to dial)'));
  }
  return maps;
}

async function socksCommand(args: string[]): Promise<number> {
  const options = {
    ...COMMON_OPTIONS,
    listen: { type: 'string' },
    map: { type: 'string', multiple: true },
    user: { type: 'string' },
    password: { type: 'string' },
  } as const;
  const { values } = parse(args, options, false);
  if (values.help) return help('socks');
  const listen = parseEndpoint((values.listen as string | undefined) ?? '127.0.0.1:1080', '--listen', '127.0.0.1');
  const { socks } = await import('./socks.js');
  const maps = await parseMaps(values.map);
  const user = values.user as string | undefined;
  const password = values.password as string | undefined;
  if ((user === undefined) !== (password === undefined)) throw new UsageError('--user and --password go together');
  for (const [name, v] of [
    ['--user', user],
    ['--password', password],
  ] as const) {
    if (v !== undefined && (v.length === 0 || Buffer.byteLength(v) > 255)) throw new UsageError(`${name} must be 1 to 255 bytes`);
  }
  const credentials = user === undefined ? undefined : { user, password: password! };
  await socks(listen, common(values), stopSignal(), { maps, credentials });
  return EXIT.OK;
}

async function runCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, {
    ...COMMON_OPTIONS,
    map: { type: 'string', multiple: true },
    'include-loopback': { type: 'boolean' },
  });
  if (values.help) return help('run');
  const maps = await parseMaps(values.map);
  if (values.metrics !== undefined) throw new UsageError('--metrics is not available with rock run');
  if (positionals.length === 0) throw new UsageError('run needs a command: rock run [options] -- COMMAND [ARGS...]');
  const options = common(values);
  if (options.logLevel === 'debug') process.env.ROCKS_LOG = '1';
  const { runProgram } = await import('./run.js');
  try {
    return await runProgram(positionals, { ...options.session }, (line: string) => process.stderr.write(`rock run: ${line}\n`), {
      maps,
      includeLoopback: values['include-loopback'] === true,
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

async function keygenCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, {
    name: { type: 'string', multiple: true },
    days: { type: 'string' },
    force: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) return help('keygen');
  if (positionals.length !== 1) throw new UsageError(`keygen takes one DIR, got ${positionals.length === 0 ? 'none' : positionals.join(' ')}`);
  const daysText = (values.days as string | undefined) ?? '3650';
  const days = /^\d{1,6}$/.test(daysText) ? Number(daysText) : 0;
  if (days < 1) throw new UsageError(`--days must be a whole number of days from 1, got ${JSON.stringify(daysText)}`);
  const { keygen, defaultNames } = await import('./keygen.js');
  const names = (values.name as unknown as string[] | undefined) ?? defaultNames();
  for (const n of names) if (!/^[A-Za-z0-9.:*_-]{1,253}$/.test(n)) throw new UsageError(`--name: '${n}' is not a host name or IP address`);
  const { pin, keyPath, certPath } = await keygen(positionals[0], { names, days, force: values.force === true });
  process.stderr.write(`rock: wrote ${keyPath} (keep it private) and ${certPath} for ${names.join(', ')}\n`);
  process.stdout.write(`${pin}\n`);
  return EXIT.OK;
}

async function demoCommand(args: string[]): Promise<number> {
  const { values } = parse(args, { help: { type: 'boolean', short: 'h' } }, false);
  if (values.help) return help('demo');
  const { demo } = await import('./demo.js');
  return demo();
}

function help(command?: string): number {
  process.stdout.write(`${command === undefined ? USAGE : HELP[command]}\n`);
  return EXIT.OK;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      return help(rest[0] !== undefined && rest[0] in HELP ? rest[0] : undefined);
    case 'serve':
    case 'forward':
      return relayCommand(command, rest);
    case 'stdio':
      return stdioCommand(rest);
    case 'socks':
      return socksCommand(rest);
    case 'run':
      return runCommand(rest);
    case 'keygen':
      return keygenCommand(rest);
    case 'demo':
      return demoCommand(rest);
    default:
      throw new UsageError(`unknown command '${command}' (commands: run, serve, forward, stdio, socks, keygen, demo)`);
  }
}

runMain('rock', main);
