// racks' data path on real kernels (test/bed): in the client and server
// namespaces a helper opens a TUN, installs racks' rules (netfilter.ts) and
// relays packets TUN ⇄ a plain TCP carriage to the other helper. Unmodified
// socat on the client then talks to socat on the server's protected port:
// the bytes arrive intact both ways, the server sees the client's own
// address, the packets went through both TUNs, and an unprotected port on
// the same hosts did not. Both hosts use strict reverse-path filtering
// (rp_filter=1, as many distributions do), which racks must work with.
// Then nothing of racks is left after a clean stop, nor after a SIGKILLed
// helper once removeLeftovers() ran.
// Needs root; skipped with the reason otherwise.

import assert from 'node:assert/strict';
import { execFileSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parseTcpPacket, verifyChecksums, buildTcpPacket } from '../../src/racks/packet.js';
import { NetBed, netbedSkip, type HostName } from '../bed/netbed.js';
import { readJsonLines, until } from '../support/helpers.js';

const skip = netbedSkip();
const RELAY = fileURLToPath(new URL('./relay-helper.js', import.meta.url));
const KERNEL = fileURLToPath(new URL('./kernel-helper.js', import.meta.url));
const PROTECTED = 5000;
const UNPROTECTED = 5001;
const CARRIAGE = 7225;
const MiB = 1024 * 1024;

interface HelperEvent {
  event: string;
  [key: string]: unknown;
}

/** A relay helper in one host, its JSON events in order. */
class Helper {
  readonly events: HelperEvent[] = [];
  readonly child: ChildProcess;
  stderr = '';

  constructor(bed: NetBed, host: HostName, config: object) {
    this.child = bed.spawn(host, process.execPath, [RELAY, JSON.stringify(config)], { stdio: ['pipe', 'pipe', 'pipe'] });
    readJsonLines<HelperEvent>(this.child.stdout!, (e) => this.events.push(e));
    this.child.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
  }

  async next(event: string, ms = 10_000): Promise<HelperEvent> {
    const seen = this.events.length;
    await until(
      () => this.events.slice(seen).some((e) => e.event === event) || this.child.exitCode !== null,
      ms,
      () => `helper event ${event}; stderr: ${this.stderr}`,
    );
    const found = this.events.slice(seen).find((e) => e.event === event);
    if (!found) throw new Error(`helper exited (${this.child.exitCode}) before ${event}: ${this.stderr}`);
    return found;
  }

  async waitFor(event: string, ms = 10_000): Promise<HelperEvent> {
    await until(
      () => this.events.some((e) => e.event === event) || this.child.exitCode !== null,
      ms,
      () => `helper event ${event}; stderr: ${this.stderr}`,
    );
    const found = this.events.find((e) => e.event === event);
    if (!found) throw new Error(`helper exited (${this.child.exitCode}) before ${event}: ${this.stderr}`);
    return found;
  }

  async stats(): Promise<Stats> {
    this.child.stdin!.write('stats\n');
    return (await this.next('stats')) as unknown as Stats;
  }

  async close(): Promise<void> {
    if (this.child.exitCode !== null) return;
    this.child.stdin!.write('close\n');
    await once(this.child, 'exit');
  }
}

interface Stats {
  counts: { fromTun: Record<string, number>; toTun: Record<string, number> };
  captured: string[];
  stats: { packetsIn: number; packetsOut: number; writeErrors: number };
}

/** Runs a program in a host to its end; resolves with its stderr, rejects on a non-zero exit. */
async function runToExit(child: ChildProcess, what: string): Promise<string> {
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const [code] = (await once(child, 'exit')) as [number | null];
  if (code !== 0) throw new Error(`${what} exited with ${code}: ${stderr}`);
  return stderr;
}

const sha256 = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

function waitListening(bed: NetBed, port: number): Promise<void> {
  return until(
    () => execFileSync('ip', ['netns', 'exec', bed.ns.server, 'ss', '-Hltn', `sport = :${port}`], { encoding: 'utf8' }).trim() !== '',
    5000,
    `socat listening on ${port}`,
  );
}

/**
 * Unmodified socat both ends: the client sends `up` while the server sends
 * `down`, at the same time. Returns what arrived, the client address the
 * server saw, and the time taken.
 */
async function exchange(
  bed: NetBed,
  dir: string,
  port: number,
  up: string,
  down: string,
): Promise<{ upHash: string; downHash: string; peer: string; ms: number }> {
  const gotUp = join(dir, `up-${port}`);
  const gotDown = join(dir, `down-${port}`);
  // socat's STDIO, with the files as its stdin and stdout: at the end of its stdin it shuts down the
  // sending half and goes on receiving. (Not EXEC/SYSTEM of a shell: socat 1.7's `pipes` keeps both
  // ends of the pipes open in socat itself, and with a socketpair the shell can't end one direction.)
  const files = (send: string, save: string): [number, number, 'pipe'] => [openSync(send, 'r'), openSync(save, 'w'), 'pipe'];
  const serverStdio = files(down, gotUp);
  const server = bed.spawn('server', 'socat', ['-d', '-d', '-t', '30', `TCP-LISTEN:${port},reuseaddr`, 'STDIO'], { stdio: serverStdio });
  const serverDone = runToExit(server, 'socat server');
  await waitListening(bed, port);
  const start = performance.now();
  const clientStdio = files(up, gotDown);
  const client = bed.spawn('client', 'socat', ['-t', '30', 'STDIO', `TCP:${bed.serverAddress}:${port}`], { stdio: clientStdio });
  for (const fd of [...serverStdio, ...clientStdio]) if (typeof fd === 'number') closeSync(fd);
  const [serverLog] = await Promise.all([serverDone, runToExit(client, 'socat client')]);
  const ms = performance.now() - start;
  const peer = /accepting connection from AF=2 ([\d.]+):\d+/.exec(serverLog)?.[1] ?? `(not in socat's log: ${serverLog})`;
  return { upHash: sha256(gotUp), downHash: sha256(gotDown), peer, ms };
}

/** One-way bulk transfer client → server with socat -u; returns MB/s. */
async function bulk(bed: NetBed, file: string, port: number): Promise<number> {
  const server = bed.spawn('server', 'socat', ['-u', `TCP-LISTEN:${port},reuseaddr`, 'OPEN:/dev/null'], { stdio: ['ignore', 'ignore', 'pipe'] });
  const serverDone = runToExit(server, 'socat bulk server');
  await waitListening(bed, port);
  const start = performance.now();
  await runToExit(
    bed.spawn('client', 'socat', ['-u', `OPEN:${file}`, `TCP:${bed.serverAddress}:${port}`], { stdio: ['ignore', 'ignore', 'pipe'] }),
    'socat bulk client',
  );
  await serverDone;
  const seconds = (performance.now() - start) / 1000;
  return readFileSync(file).length / seconds / 1e6;
}

/** netfilter.inspect() inside a host. */
async function inspectIn(bed: NetBed, host: HostName): Promise<{ table: boolean; rules: string[]; routes: string[]; tun: boolean }> {
  const child = bed.spawn(host, process.execPath, [KERNEL, 'inspect'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  await runToExit(child, 'inspect');
  return JSON.parse(out);
}

const nothing = { table: false, rules: [], routes: [], tun: false };

describe('racks data path through TUN devices (netns)', { skip }, () => {
  test('protected connections go through both TUNs end to end, unprotected ones do not', { timeout: 120_000 }, async (t: TestContext) => {
    const bed = new NetBed();
    const dir = mkdtempSync(join(tmpdir(), 'racks-datapath-'));
    const helpers: Helper[] = [];
    try {
      bed.hostSysctl('net.ipv4.conf.all.rp_filter', '1');
      bed.hostSysctl('net.ipv4.conf.default.rp_filter', '1');
      const specs = [`tcp:${PROTECTED}@${bed.serverAddress}`];
      const server = new Helper(bed, 'server', {
        role: 'listen',
        host: bed.serverAddress,
        port: CARRIAGE,
        tun: 'rack0',
        specs,
        capture: 40,
        clients: [bed.clientAddress],
      });
      helpers.push(server);
      await server.waitFor('installed');
      const client = new Helper(bed, 'client', { role: 'connect', host: bed.serverAddress, port: CARRIAGE, tun: 'rack0', specs, capture: 40 });
      helpers.push(client);
      await Promise.all([server.waitFor('ready'), client.waitFor('ready')]);

      const up = join(dir, 'up');
      const down = join(dir, 'down');
      writeFileSync(up, randomBytes(4 * MiB));
      writeFileSync(down, randomBytes(3 * MiB + 12345));

      // Through racks.
      const racked = await exchange(bed, dir, PROTECTED, up, down);
      assert.equal(racked.upHash, sha256(up), 'client → server bytes through racks');
      assert.equal(racked.downHash, sha256(down), 'server → client bytes through racks');
      assert.equal(racked.peer, bed.clientAddress, "the server sees the client's own address");
      const [c1, s1] = [await client.stats(), await server.stats()];
      // At least one packet per 1500 bytes sent (more: the MSS is 1448, and ACKs go the same way).
      assert.ok((c1.counts.fromTun[PROTECTED] ?? 0) > (4 * MiB) / 1500, `client TUN carried the upload: ${JSON.stringify(c1.counts)}`);
      assert.ok((s1.counts.fromTun[PROTECTED] ?? 0) > (3 * MiB) / 1500, `server TUN carried the download: ${JSON.stringify(s1.counts)}`);
      assert.equal(c1.counts.toTun[PROTECTED], s1.counts.fromTun[PROTECTED], 'every packet the server TUN gave was written into the client TUN');
      assert.equal(c1.stats.writeErrors + s1.stats.writeErrors, 0, 'the kernel took every packet written');

      // Plain, on the same hosts.
      const plain = await exchange(bed, dir, UNPROTECTED, up, down);
      assert.equal(plain.upHash, sha256(up));
      assert.equal(plain.downHash, sha256(down));
      assert.equal(plain.peer, bed.clientAddress);
      const [c2, s2] = [await client.stats(), await server.stats()];
      for (const [name, s] of [
        ['client', c2],
        ['server', s2],
      ] as const) {
        assert.equal(s.counts.fromTun[UNPROTECTED], undefined, `${name}: an unprotected port went through the TUN`);
        assert.equal(s.counts.toTun[UNPROTECTED], undefined, `${name}: an unprotected port came out of the TUN`);
      }

      // The kernel's own packets, read from the TUNs: checksums right, and rebuilt byte for byte by packet.ts.
      const kernelPackets = [...c2.captured, ...s2.captured].map((h) => Buffer.from(h, 'hex'));
      assert.ok(kernelPackets.length >= 40, `captured ${kernelPackets.length} packets`);
      for (const raw of kernelPackets) {
        assert.deepEqual(verifyChecksums(raw), { ip: true, tcp: true }, raw.toString('hex'));
        const p = parseTcpPacket(raw);
        const rebuilt = buildTcpPacket({ ...p, options: p.options.raw, payload: p.payload, dontFragment: p.dontFragment });
        assert.equal(rebuilt.toString('hex'), raw.toString('hex'));
      }

      // Throughput through the relay and without it, one way, same hosts.
      const big = join(dir, 'big');
      writeFileSync(big, randomBytes(32 * MiB));
      const viaRacks = await bulk(bed, big, PROTECTED);
      const direct = await bulk(bed, big, UNPROTECTED);
      t.diagnostic(`exchange 4 MiB up + 3 MiB down: through racks ${racked.ms.toFixed(0)} ms, plain ${plain.ms.toFixed(0)} ms`);
      t.diagnostic(`bulk 32 MiB one way: through racks ${viaRacks.toFixed(1)} MB/s, plain ${direct.toFixed(1)} MB/s`);
      const [c3, s3] = [await client.stats(), await server.stats()];
      t.diagnostic(
        `TUN packets: client read ${c3.stats.packetsIn} wrote ${c3.stats.packetsOut}; server read ${s3.stats.packetsIn} wrote ${s3.stats.packetsOut}`,
      );
      for (const h of helpers) await h.close();
      assert.deepEqual(await inspectIn(bed, 'client'), nothing);
      assert.deepEqual(await inspectIn(bed, 'server'), nothing);
    } finally {
      for (const h of helpers) h.child.kill('SIGKILL');
      bed.destroy();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('nothing is left after a clean stop, nor after a SIGKILLed daemon and removeLeftovers()', { timeout: 60_000 }, async () => {
    const bed = new NetBed();
    try {
      const config = { role: 'listen', host: bed.clientAddress, port: CARRIAGE, tun: 'rack0', specs: ['tcp:22', 'tcp:5432@10.0.0.0/24'] };
      // Clean stop.
      const first = new Helper(bed, 'client', config);
      await first.waitFor('installed');
      const installed = await inspectIn(bed, 'client');
      assert.equal(installed.table, true);
      assert.equal(installed.rules.length, 1, installed.rules.join('\n'));
      assert.match(installed.routes.join('\n'), /default dev rack0/);
      assert.equal(installed.tun, true);
      await first.close();
      assert.deepEqual(await inspectIn(bed, 'client'), nothing);

      // Killed: the TUN (not persistent) and its route go with the process; the table and rule stay until removeLeftovers().
      const second = new Helper(bed, 'client', config);
      await second.waitFor('installed');
      second.child.kill('SIGKILL');
      await once(second.child, 'exit');
      const left = await inspectIn(bed, 'client');
      assert.equal(left.table, true, 'the table outlives a killed daemon');
      assert.equal(left.rules.length, 1, 'the rule outlives a killed daemon');
      assert.equal(left.tun, false, 'a TUN that is not persistent goes with its process');
      assert.deepEqual(left.routes, [], 'routes through the TUN go with it');
      for (let i = 0; i < 2; i++) {
        await runToExit(
          bed.spawn('client', process.execPath, [KERNEL, 'remove-leftovers'], { stdio: ['ignore', 'ignore', 'pipe'] }),
          'removeLeftovers',
        );
        assert.deepEqual(await inspectIn(bed, 'client'), nothing, `after removeLeftovers() #${i + 1}`);
      }

      // A device that outlived its daemon (persistent) is deleted too.
      bed.ip(bed.ns.client, 'tuntap', 'add', 'dev', 'rack0', 'mode', 'tun');
      assert.equal((await inspectIn(bed, 'client')).tun, true);
      await runToExit(
        bed.spawn('client', process.execPath, [KERNEL, 'remove-leftovers'], { stdio: ['ignore', 'ignore', 'pipe'] }),
        'removeLeftovers',
      );
      assert.deepEqual(await inspectIn(bed, 'client'), nothing);
    } finally {
      bed.destroy();
    }
  });
});
