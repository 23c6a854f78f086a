// The peer protocol's output (bench/core/process.ts): one JSON object per line
// on stdout; a failure is {"type":"fatal"} and exit code 1.

export function say(message: { type: string; [key: string]: unknown }): void {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

export function fatal(err: unknown): never {
  say({ type: 'fatal', message: err instanceof Error ? err.message : String(err) });
  process.exit(1);
}

process.on('uncaughtException', fatal);
