// Command-line parsing for `rock`: node:util parseArgs per subcommand, the
// options every subcommand shares, and the checks that turn bad input into
// one clear line and exit code 2.

import { parseArgs, type ParseArgsConfig } from 'node:util';
import ms from 'ms';
import type { SessionOptions } from '../protocol/config.js';

/** Exit codes, documented in the README. */
export const EXIT = {
  OK: 0,
  /** A connection failed or the target could not be reached. */
  FAILURE: 1,
  /** Bad command line. */
  USAGE: 2,
  /** Could not listen (address in use, no permission). */
  LISTEN: 3,
} as const;

/** Bad input from the user: printed as one line, exit code 2. */
export class UsageError extends Error {}

/** A failure with its own exit code (anything else that escapes is EXIT.FAILURE). */
export class ExitError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

/**
 * Runs a command's main with its arguments and exits with what it returns;
 * an error is one line on standard error (`name: message`) and its exit code.
 */
export function runMain(name: string, main: (argv: string[]) => Promise<number>): void {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: Error) => {
      const code = err instanceof UsageError ? EXIT.USAGE : err instanceof ExitError ? err.exitCode : EXIT.FAILURE;
      process.stderr.write(`${name}: ${err.message}${code === EXIT.USAGE ? ` (see ${name} --help)` : ''}\n`);
      process.exit(code);
    },
  );
}

export interface Endpoint {
  host: string;
  port: number;
}

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface CommonOptions {
  /** What every rocks socket of the command gets (the session's options, and whether it follows network changes). */
  session: SessionOptions & { watchNetwork?: boolean };
  logLevel: LogLevel;
  json: boolean;
  metrics: Endpoint | undefined;
  /** forward and stdio: the server speaks rocks, so no EDP probe (--enhanced). */
  enhanced?: boolean;
}

export const COMMON_OPTIONS = {
  'failure-timeout': { type: 'string' },
  heartbeat: { type: 'string' },
  'suspend-limit': { type: 'string' },
  'no-watch-network': { type: 'boolean' },
  'no-kernel-liveness': { type: 'boolean' },
  'path-check': { type: 'string' },
  'log-level': { type: 'string' },
  json: { type: 'boolean' },
  metrics: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];

export const COMMON_HELP = `Common options:
  --failure-timeout MS     silence that declares a connection failed (default 5000, min 200)
  --heartbeat MS           keepalive interval (default failure-timeout / 5)
  --suspend-limit DURATION how long a connection may stay suspended (default 72h; e.g. 90s, 30m, 2d)
  --no-watch-network       clients: wait out the failure timeout instead of moving to a new
                           connection at once when addresses, routes or interfaces change
  --no-kernel-liveness     heartbeats every --heartbeat instead of the kernel's keepalive probes
                           (behind a TCP-terminating middlebox: find failures past it sooner)
  --path-check MS          with kernel liveness, an end-to-end heartbeat this often (default 30000)
  --log-level LEVEL        error, warn, info (default) or debug
  --json                   log one JSON object per line
  --metrics HOST:PORT      serve Prometheus metrics at http://HOST:PORT/metrics
  -h, --help               this help`;

/** Parses `args` with node:util parseArgs; any mistake becomes a UsageError. */
export function parse(
  args: string[],
  options: NonNullable<ParseArgsConfig['options']>,
  allowPositionals = true,
): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args, options, allowPositionals, strict: true });
    return { values: values as Record<string, string | boolean | undefined>, positionals };
  } catch (err) {
    // parseArgs says e.g. "Unknown option '--x'. To specify a positional ...": keep the first sentence.
    // A value that starts with a dash ("--node-id -1") gets three lines: say it in one.
    const message = (err as Error).message;
    if (/argument is ambiguous/.test(message)) {
      const option = /'(--[^']+)'/.exec(message)?.[1] ?? 'the option';
      throw new UsageError(`${option} takes a value; for one that starts with a dash write ${option}=VALUE`);
    }
    throw new UsageError(message.split('. ')[0].replace(/\.$/, ''));
  }
}

/** HOST:PORT, [IPv6]:PORT, or PORT alone (host defaults to `defaultHost`). */
export function parseEndpoint(text: string | undefined, what: string, defaultHost?: string): Endpoint {
  if (text === undefined || text === '') throw new UsageError(`${what} needs HOST:PORT`);
  let host: string | undefined;
  let portText: string;
  const v6 = /^\[([^\]]+)\]:(.*)$/.exec(text);
  if (v6) [, host, portText] = v6;
  else if (/^\d+$/.test(text)) portText = text;
  else {
    const at = text.lastIndexOf(':');
    if (at <= 0 || text.indexOf(':') !== at) throw new UsageError(`${what}: expected HOST:PORT (or [IPv6]:PORT), got '${text}'`);
    host = text.slice(0, at);
    portText = text.slice(at + 1);
  }
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port < 1 || port > 65535) throw new UsageError(`${what}: bad port '${portText}' in '${text}' (1-65535)`);
  host ??= defaultHost;
  if (host === undefined) throw new UsageError(`${what}: expected HOST:PORT, got '${text}'`);
  return { host, port };
}

function parseMs(text: string, what: string): number {
  if (!/^\d+(\.\d+)?$/.test(text)) throw new UsageError(`${what}: expected milliseconds, got '${text}'`);
  return Number(text);
}

/** A duration such as 72h, 30m, 90s, 500ms, 2d; a bare number is milliseconds. */
export function parseDuration(text: string, what: string): number {
  const value = /^\d+(\.\d+)?$/.test(text) ? Number(text) : ms(text as ms.StringValue);
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new UsageError(`${what}: expected a duration such as 90s, 30m, 72h or 2d, got '${text}'`);
  }
  return value;
}

export function commonOptions(values: Record<string, string | boolean | undefined>): CommonOptions {
  const session: CommonOptions['session'] = {};
  if (values['no-watch-network'] === true) session.watchNetwork = false;
  if (values['no-kernel-liveness'] === true) session.kernelLiveness = false;
  if (typeof values['path-check'] === 'string') session.pathCheckInterval = parseMs(values['path-check'], '--path-check');
  if (typeof values['failure-timeout'] === 'string') session.failureTimeout = parseMs(values['failure-timeout'], '--failure-timeout');
  if (typeof values.heartbeat === 'string') session.heartbeatInterval = parseMs(values.heartbeat, '--heartbeat');
  if (typeof values['suspend-limit'] === 'string') session.suspendLimit = parseDuration(values['suspend-limit'], '--suspend-limit');
  const level = (values['log-level'] as string | undefined) ?? 'info';
  if (!(LOG_LEVELS as readonly string[]).includes(level))
    throw new UsageError(`--log-level: expected one of ${LOG_LEVELS.join(', ')}, got '${level}'`);
  const metrics = typeof values.metrics === 'string' ? parseEndpoint(values.metrics, '--metrics', '127.0.0.1') : undefined;
  return { session, logLevel: level as LogLevel, json: values.json === true, metrics, enhanced: values.enhanced === true || undefined };
}
