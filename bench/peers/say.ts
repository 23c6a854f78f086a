// The peer protocol's output (bench/core/process.ts): one JSON object per line
// on stdout; a failure is {"type":"fatal"} and exit code 1.

export function say(message: { type: string; [key: string]: unknown }): void {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

export function fatal(err: unknown): never {
  say({ type: 'fatal', message: err instanceof Error ? err.message : String(err) });
  process.exit(1);
}

/** CPU seconds (user and system) this process used since `start`, a process.cpuUsage(). */
export function cpuSince(start: NodeJS.CpuUsage): number {
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1e6;
}

process.on('uncaughtException', fatal);
