// docs/haproxy.cfg made runnable for a test, the same way for every test
// that runs it: the file as written, with only the frontend's address, each
// node's server address and the map's path replaced, and nodes.map written
// from the example in the file's own comment. So the tested recipe is the
// documented one. Also reads haproxy's log lines (the doc's log-format).
//
// No node:test here: the network bed (test/bed) uses it too.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { readRepoFile } from '../docs/markdown.js';

const DOC = 'docs/haproxy.cfg';

/** The example nodes.map in the doc's comment: each node id (decimal) and its backend. */
export function docNodeMap(): { nodeId: number; backend: string }[] {
  const map = [...readRepoFile(DOC).matchAll(/^#\s+(\d+) (rocks_node_\d+)$/gm)].map((m) => ({ nodeId: Number(m[1]), backend: m[2] }));
  if (map.length === 0) throw new Error(`${DOC} has no example nodes.map in its comment`);
  return map;
}

/** The node ids the doc's example is written for: a test's nodes must run with these. */
export const docNodeIds = (): number[] => docNodeMap().map((e) => e.nodeId);

export interface HaproxyConfigOptions {
  /** Where nodes.map is written. */
  dir: string;
  /** HOST:PORT the frontend binds (the doc's `bind :7000`). */
  bind: string;
  /** Each node's rocks server, HOST:PORT, by node id; every node the doc names must be here. */
  servers: ReadonlyMap<number, string>;
  /** false drops the use_backend rule (a control: resumes then go round robin like new sessions). */
  routed?: boolean;
}

/** docs/haproxy.cfg for a test bed (see the file's head comment); writes nodes.map into `dir`. */
export function haproxyConfig({ dir, bind, servers, routed = true }: HaproxyConfigOptions): string {
  const doc = readRepoFile(DOC);
  const ids = docNodeIds();
  const mapPath = join(dir, 'nodes.map');
  writeFileSync(
    mapPath,
    docNodeMap()
      .map((e) => `${e.nodeId} ${e.backend}\n`)
      .join(''),
  );
  let binds = 0;
  let serverLines = 0;
  let config = doc
    .replace(/^(\s*bind) :7000$/m, (_, head: string) => {
      binds++;
      return `${head} ${bind}`;
    })
    .replace(/^(\s*server node_(\d+)) \S+/gm, (_, head: string, id: string) => {
      serverLines++;
      const address = servers.get(Number(id));
      if (address === undefined)
        throw new Error(`${DOC} has a server for node ${id}, which the test does not run (it runs ${[...servers.keys()].join(', ')})`);
      return `${head} ${address}`;
    })
    .replaceAll('/etc/haproxy/nodes.map', mapPath);
  if (binds !== 1) throw new Error(`${DOC}: expected one 'bind :7000' line to replace, found ${binds}`);
  // rocks_any's, and in each node's backend the node and the others as backups.
  if (serverLines !== ids.length + ids.length ** 2) {
    throw new Error(`${DOC}: expected ${ids.length + ids.length ** 2} server lines for the ${ids.length} nodes of its map, found ${serverLines}`);
  }
  if (!routed) {
    const lines = config.split('\n');
    const kept = lines.filter((l) => !/^\s*use_backend /.test(l));
    if (lines.length - kept.length !== 1) throw new Error(`${DOC}: expected one use_backend rule to drop, found ${lines.length - kept.length}`);
    config = kept.join('\n');
  }
  return config;
}

/** Writes the config as `name` in `dir`; returns its path (for `haproxy -db -f PATH`). */
export function writeHaproxyConfig(name: string, options: HaproxyConfigOptions): string {
  const file = join(options.dir, name);
  writeFileSync(file, haproxyConfig(options));
  return file;
}

/** One line of haproxy's log (the doc's log-format): where a link went, and the node id its resume named. */
export interface Routed {
  backend: string;
  server: string;
  /** The node id a resuming rocks link named; undefined for new sessions, probes and ordinary clients. */
  resumeOf: number | undefined;
  /** How the link ended (%ts: '--' normally; 'CD' the client, 'SD' the server broke it during data; 'sC' a timeout connecting...). */
  ended: string;
}

/** haproxy's log as it comes (it logs a link when the link closes). */
export class HaproxyLog {
  /** The links logged so far. */
  readonly links: Routed[] = [];
  /** Its other lines (a health check's news, say). */
  readonly other: string[] = [];
  private partial = '';

  constructor(stdout: Readable) {
    stdout.on('data', (d: Buffer) => {
      const lines = (this.partial + d.toString()).split('\n');
      this.partial = lines.pop()!;
      for (const line of lines) {
        const m = /^\S+ \[[^\]]+\] rocks (\S+)\/(\S+) \S+ \S+ (\S+) rocks_node=(\S+)$/.exec(line);
        if (m) this.links.push({ backend: m[1], server: m[2], ended: m[3], resumeOf: m[4] === '-' ? undefined : Number(m[4]) });
        else this.other.push(line);
      }
    });
  }

  /** The resuming links logged so far. */
  resumes(): Routed[] {
    return this.links.filter((l) => l.resumeOf !== undefined);
  }

  /** Of the resuming links, those that went anywhere but the server of the node they named. */
  misrouted(): Routed[] {
    return this.resumes().filter((l) => l.backend !== `rocks_node_${l.resumeOf}` || l.server !== `node_${l.resumeOf}`);
  }
}
