// Reads the repository's Markdown so tests can hold the docs to the code:
// a section by its heading, its fenced code blocks, its table rows.

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The repository's root: this file runs as dist/test/docs/markdown.js. */
export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

export function readRepoFile(path: string): string {
  return readFileSync(new URL(path, `file://${ROOT}`), 'utf8');
}

/** The text under the heading that starts with `heading` (e.g. '## Appendix A'), up to the next heading of the same or a higher level. */
export function section(markdown: string, heading: string): string {
  const lines = markdown.split('\n');
  const start = lines.findIndex((l) => l.startsWith(heading));
  if (start < 0) throw new Error(`no heading ${JSON.stringify(heading)}`);
  const level = heading.indexOf(' ');
  const end = lines.findIndex((l, i) => i > start && /^#+ /.test(l) && l.indexOf(' ') <= level);
  return lines.slice(start + 1, end < 0 ? undefined : end).join('\n');
}

/** The contents of each fenced code block, in order. */
export function codeBlocks(markdown: string): string[] {
  return [...markdown.matchAll(/^```[^\n]*\n([\s\S]*?)^```$/gm)].map((m) => m[1]);
}

/** The cells of every table row (header and separator rows included), trimmed. */
export function tableRows(markdown: string): string[][] {
  return markdown
    .split('\n')
    .filter((l) => l.startsWith('|'))
    .map((l) =>
      l
        .slice(1, l.trimEnd().endsWith('|') ? l.trimEnd().length - 1 : undefined)
        .split('|')
        .map((c) => c.trim()),
    );
}
