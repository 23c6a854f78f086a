// An on-path attacker between two rack daemons (netns, root): the router
// redirects the client daemon's connections to the rack port to a tampering
// relay (tamper-relay.ts), which follows rocks' and the carriage's framing
// and flips one byte where it is told. A protected socat stream, echoed,
// runs through it: after a byte altered inside a carried packet and another
// in a carriage frame's length, the stream completes with the same SHA-256
// both ways. The counts and the time to resynchronize are printed.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { RackStatus } from '../../src/racks/daemon.js';
import { NetBed, netbedSkip, type HostName } from '../bed/netbed.js';
import { RockProcess, SocatStream, socatEcho } from '../bed/programs.js';
import { Program, readJsonLines, sleep, until } from '../support/helpers.js';

const skip = netbedSkip();
const RACK = fileURLToPath(new URL('../../src/cli/rack.js', import.meta.url));
const RELAY = fileURLToPath(new URL('./tamper-relay-helper.js', import.meta.url));
const ECHO = 5001;
const RACK_PORT = 7225;
const RELAY_PORT = 7300;
const FAILURE_TIMEOUT = 1000;
/** Bytes per second each way: over 10 s of streaming, a few MiB each way. */
const RATE = 1_000_000;

function status(bed: NetBed, host: HostName): RackStatus {
  return JSON.parse(
    execFileSync('ip', ['netns', 'exec', bed.ns[host], process.execPath, RACK, 'status', '--json'], { encoding: 'utf8' }),
  ) as RackStatus;
}

interface TamperEvent {
  event: string;
  kind?: string;
  frame?: number;
  number?: number;
  length?: [number, number];
  time?: number;
}

/** The tampering relay in the router's namespace, and the rule that puts it on the path. */
class Relay extends Program {
  readonly events: TamperEvent[] = [];

  constructor(bed: NetBed) {
    const upstream = { host: bed.serverAddress, port: RACK_PORT };
    super(
      spawn('ip', ['netns', 'exec', bed.ns.router, process.execPath, RELAY, JSON.stringify({ port: RELAY_PORT, upstream })], {
        stdio: ['pipe', 'pipe', 'pipe'],
      }),
      'tampering relay',
      { keep: ['stderr'] },
    );
    readJsonLines<TamperEvent>(this.child.stdout!, (e) => this.events.push(e), true);
    const nft = (command: string): string => execFileSync('ip', ['netns', 'exec', bed.ns.router, 'nft', command], { encoding: 'utf8' });
    nft('add table ip tamper');
    nft('add chain ip tamper pre { type nat hook prerouting priority dstnat - 1; policy accept; }');
    nft(`add rule ip tamper pre ip daddr ${bed.serverAddress} tcp dport ${RACK_PORT} redirect to :${RELAY_PORT}`);
  }

  tampered(kind: string): TamperEvent | undefined {
    return this.events.find((e) => e.event === 'tampered' && e.kind === kind);
  }

  arm(kind: 'payload' | 'length'): void {
    this.child.stdin!.write(`${kind}\n`);
  }

  async listening(): Promise<void> {
    await until(
      () => this.events.some((e) => e.event === 'listening') || this.exited !== undefined,
      10_000,
      () => `the relay to listen: ${this.output}`,
    );
    if (this.exited !== undefined) throw new Error(`the relay exited (${this.exited}): ${this.output}`);
  }
}

describe('rack carriage through an on-path tampering relay (netns)', { skip }, () => {
  test('a byte altered in a carried packet, then in a frame length: the protected stream completes intact', { timeout: 120_000 }, async () => {
    const bed = new NetBed();
    const processes: { stop(): Promise<void> }[] = [];
    try {
      bed.hostSysctl('net.ipv4.conf.all.rp_filter', '1');
      const relay = new Relay(bed);
      processes.push(relay);
      await relay.listening();
      const racks: RockProcess[] = [];
      for (const host of ['client', 'server'] as const) {
        const rack = new RockProcess(bed, host, ['up', '--protect', `tcp:${ECHO}`, '--failure-timeout', String(FAILURE_TIMEOUT)], RACK);
        processes.push(rack);
        await rack.ready('rack up');
        racks.push(rack);
      }
      const serverRack = racks[1];
      processes.push(socatEcho(bed, `0.0.0.0:${ECHO}`));
      const stream = new SocatStream(bed, 'through rack and the tampering relay');
      processes.push(stream);
      const logs = (): string => `${racks.map((r) => r.output).join('\n')}\nrelay: ${JSON.stringify(relay.events)} ${relay.output}`;
      await stream.start(`${bed.serverAddress}:${ECHO}`, RATE, logs);
      assert.equal(status(bed, 'client').hosts[0]?.verdict, 'rack', 'the stream is carried');

      /** Waits for the echo to move `bytes` more, and says how long it took. */
      const flows = async (label: string, bytes = RATE): Promise<number> => {
        const from = stream.gotBytes;
        const start = performance.now();
        await until(
          () => stream.gotBytes >= from + bytes,
          20_000,
          () => `the echo to flow ${label} (${stream.gotBytes - from} bytes)\n${logs()}`,
        );
        return performance.now() - start;
      };
      await flows('before any tampering');

      // One byte in the middle of a carried packet.
      relay.arm('payload');
      await until(
        () => relay.tampered('payload') !== undefined,
        10_000,
        () => `the relay to alter a packet\n${logs()}`,
      );
      const afterPayload = await flows('after a packet was altered');
      const forged = status(bed, 'server').counters.forged;
      assert.ok(forged >= 1, `the server daemon rejected the altered packet: ${JSON.stringify(status(bed, 'server').counters)}`);
      assert.equal(status(bed, 'server').counters.resyncs, 0, 'one altered packet does not break the framing');

      // One byte in a carriage frame's length: the framing after it is broken.
      relay.arm('length');
      await until(
        () => relay.tampered('length') !== undefined,
        10_000,
        () => `the relay to alter a length\n${logs()}`,
      );
      const tampered = relay.tampered('length')!;
      await until(
        () => serverRack.logs().some((l) => l.msg === 'carriage resynchronized'),
        20_000,
        () => `the server daemon to resynchronize\n${logs()}`,
      );
      const resync = serverRack.logs().find((l) => l.msg === 'carriage resynchronized')!;
      const broken = serverRack.logs().find((l) => l.msg.startsWith('carriage framing broken'))!;
      const afterLength = await flows('after a length was altered');
      const counters = status(bed, 'server').counters;
      assert.ok(counters.resyncs >= 1, JSON.stringify(counters));
      assert.ok(stream.alive, `socat died: ${stream.output}`);
      await sleep(500);
      const { bytes } = await stream.finishAndVerify();
      for (const rack of racks) assert.ok(!rack.logs().some((l) => l.msg === 'carriage closed'), `no carriage closed:\n${rack.output}`);
      console.log(
        `# ${(bytes / 1e6).toFixed(1)} MB echoed intact (SHA-256 both ways) through the tampering relay; ` +
          `packet ${relay.tampered('payload')!.number} altered: ${forged} rejected, the echo moved ${RATE} more bytes in ${Math.round(afterPayload)} ms; ` +
          `length ${tampered.length!.join(' → ')} altered: broken after ${broken.time - tampered.time!} ms (${broken.reason}), ` +
          `resynchronized ${resync.time - tampered.time!} ms after the tampering (${resync.discardedBytes} bytes discarded), ` +
          `${RATE} more bytes in ${Math.round(afterLength)} ms; server counters forged ${counters.forged}, resyncs ${counters.resyncs}; ` +
          `client counters ${JSON.stringify({ forged: status(bed, 'client').counters.forged, resyncs: status(bed, 'client').counters.resyncs })}`,
      );
    } finally {
      await Promise.all(processes.map((p) => p.stop()));
      bed.destroy();
    }
  });
});
