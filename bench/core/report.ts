// The benchmark's three outputs: a table for the terminal, a JSON file, and
// an SVG chart (each metric's variants as bars relative to raw node:net, and
// the bytes-delivered timeline around an outage).

import { cpus, release, totalmem } from 'node:os';
import { median, spread } from './stats.js';
import type { Measure, Timeline } from './types.js';

export interface Row extends Measure {
  median: number;
  spread: number;
  /** median / raw's median for the same metric (undefined without a raw row). */
  ratio: number | undefined;
}

export function rows(measures: Measure[]): Row[] {
  return measures.map((m) => {
    const raw = measures.find((r) => r.case === m.case && r.metric === m.metric && r.variant === 'raw');
    const med = median(m.samples);
    return { ...m, median: med, spread: spread(m.samples), ratio: raw && raw !== m ? med / median(raw.samples) : undefined };
  });
}

export function machine() {
  return {
    cpus: cpus().length,
    model: cpus()[0]?.model ?? 'unknown',
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    kernel: release(),
  };
}

const fmt = (v: number): string => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2));

/** A plain-text table: case, metric, variant, median ± spread, ratio to raw. */
export function table(all: Row[]): string {
  const lines = [['case', 'metric', 'variant', 'median', 'spread', 'vs raw', 'runs']];
  for (const r of all) {
    lines.push([
      r.case,
      r.metric,
      r.variant,
      `${fmt(r.median)} ${r.unit}`,
      `±${(r.spread * 100).toFixed(0)}%`,
      r.ratio === undefined ? '' : `${r.ratio.toFixed(2)}x`,
      String(r.samples.length),
    ]);
  }
  const widths = lines[0].map((_, i) => Math.max(...lines.map((l) => l[i].length)));
  return lines
    .map((l) =>
      l
        .map((cell, i) => (i >= 3 ? cell.padStart(widths[i]) : cell.padEnd(widths[i])))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

/** The same as a Markdown table, for the README. */
export function markdown(all: Row[]): string {
  const out = ['| case | metric | variant | median | spread | vs raw |', '|---|---|---|---:|---:|---:|'];
  for (const r of all)
    out.push(
      `| ${r.case} | ${r.metric} | ${r.variant} | ${fmt(r.median)} ${r.unit} | ±${(r.spread * 100).toFixed(0)}% | ${r.ratio === undefined ? '' : `${r.ratio.toFixed(2)}x`} |`,
    );
  return out.join('\n');
}

const escapeXml = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const COLORS: Record<string, string> = {
  raw: '#888',
  rocks: '#1f77b4',
  'rocks (probe)': '#6baed6',
  'rocks (cached)': '#1f77b4',
  'rocks (enhanced)': '#08519c',
  'rocks (direct)': '#1f77b4',
  'rocks (relayed)': '#9467bd',
  'raw (relayed)': '#bbb',
  'socket.io': '#d62728',
};
const color = (variant: string): string => COLORS[variant] ?? '#2ca02c';

/** One SVG: a bar per variant of every metric that has a raw row (relative to raw = 1), then the timelines. */
export function svg(all: Row[], timelines: Timeline[]): string {
  const groups = new Map<string, Row[]>();
  for (const r of all) {
    const key = `${r.case}: ${r.metric}`;
    groups.set(key, [...(groups.get(key) ?? []), r]);
  }
  const compared = [...groups.entries()].filter(([, rs]) => rs.some((r) => r.variant === 'raw') && rs.length > 1);
  const width = 900;
  const barH = 14;
  const parts: string[] = [];
  let y = 30;
  parts.push(
    `<text x="10" y="20" font-size="14" font-weight="bold">Relative to raw node:net (1.0 = raw; shorter is better for time and memory, longer for throughput)</text>`,
  );
  const scale = 250; // px per 1.0
  const left = 330;
  for (const [label, rs] of compared) {
    parts.push(`<text x="10" y="${y + barH}" font-size="11">${escapeXml(label)} (${escapeXml(rs[0].unit)})</text>`);
    for (const r of rs) {
      const ratio = r.variant === 'raw' ? 1 : (r.ratio ?? 1);
      const w = Math.min(ratio, 2.4) * scale;
      parts.push(`<rect x="${left}" y="${y}" width="${w.toFixed(1)}" height="${barH - 2}" fill="${color(r.variant)}"/>`);
      parts.push(
        `<text x="${left + w + 4}" y="${y + barH - 3}" font-size="10">${escapeXml(r.variant)} ${ratio.toFixed(2)}x (${fmt(r.median)} ${escapeXml(r.unit)})</text>`,
      );
      y += barH;
    }
    y += 8;
  }
  parts.push(`<line x1="${left + scale}" y1="30" x2="${left + scale}" y2="${y}" stroke="#000" stroke-dasharray="3,3"/>`);
  for (const t of timelines) {
    y += 30;
    const h = 200;
    const maxT = Math.max(...t.points.map((p) => p[0]), 1);
    const maxV = Math.max(...t.points.map((p) => p[1]), 1);
    const x = (ms: number) => 60 + (ms / maxT) * (width - 100);
    const yy = (v: number) => y + 20 + h - (v / maxV) * h;
    parts.push(`<text x="10" y="${y + 10}" font-size="13" font-weight="bold">${escapeXml(t.title)}</text>`);
    parts.push(
      `<polyline fill="none" stroke="${color(t.variant)}" stroke-width="2" points="${t.points.map((p) => `${x(p[0]).toFixed(1)},${yy(p[1]).toFixed(1)}`).join(' ')}"/>`,
    );
    parts.push(`<line x1="60" y1="${y + 20 + h}" x2="${width - 40}" y2="${y + 20 + h}" stroke="#000"/>`);
    parts.push(
      `<text x="60" y="${y + 36 + h}" font-size="10">0 s</text><text x="${width - 80}" y="${y + 36 + h}" font-size="10">${(maxT / 1000).toFixed(1)} s</text>`,
    );
    parts.push(`<text x="10" y="${y + 28}" font-size="10">${(maxV / 2 ** 20).toFixed(1)} MiB</text>`);
    for (const [ms, label] of t.marks) {
      parts.push(
        `<line x1="${x(ms).toFixed(1)}" y1="${y + 20}" x2="${x(ms).toFixed(1)}" y2="${y + 20 + h}" stroke="#d62728" stroke-dasharray="4,3"/>`,
      );
      parts.push(`<text x="${(x(ms) + 3).toFixed(1)}" y="${y + 32}" font-size="10" fill="#d62728">${escapeXml(label)}</text>`);
    }
    y += h + 40;
  }
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${y + 10}" font-family="sans-serif"><rect width="100%" height="100%" fill="#fff"/>${parts.join('')}</svg>\n`;
}
