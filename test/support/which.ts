// Finds the real programs tests need (npm test installs them with apt-get
// when root). Apart from programs.ts because it must not load node:test:
// the benchmarks use the network test bed, which needs it.

// The same lookup scripts/ensure.mjs installs by (a script outside the TypeScript tree).
const ensure = (await import(new URL('../../../scripts/ensure.mjs', import.meta.url).href)) as {
  findProgram(name: string): string | undefined;
  PROGRAMS: Record<string, string>;
};

export interface Found {
  /** The programs' paths, by name, when all were found. */
  paths: Record<string, string>;
  /** Why the test must be skipped, or undefined. */
  skip: string | undefined;
}

/**
 * Looks up `names`. A missing program skips the test when not root (nobody
 * could install it); as root `npm test` installs them, so a missing one there
 * is a failure of the setup and the test fails rather than pass unseen.
 */
export function programs(...names: string[]): Found {
  const paths: Record<string, string> = {};
  const missing: string[] = [];
  for (const name of names) {
    const path = ensure.findProgram(name);
    if (path === undefined) missing.push(name);
    else paths[name] = path;
  }
  if (missing.length === 0) return { paths, skip: undefined };
  const packages = [...new Set(missing.map((m) => ensure.PROGRAMS[m] ?? m))].join(' ');
  if (process.getuid?.() === 0) {
    throw new Error(`${missing.join(', ')} missing although running as root: npm test installs them (apt-get install ${packages}); did that fail?`);
  }
  return { paths, skip: `needs ${missing.join(', ')} (apt-get install ${packages}, as root)` };
}
