// `rack up` on real hosts (test/bed): unmodified socat streams, checked by
// SHA-256 both ways, through the failures racks are for, with the daemon
// on both hosts, on one of them, or killed. Needs root; skipped with the
// reason otherwise. Detection and resume times are printed and held to
// bounds (DETECT_MIN/MAX, RESUME_MAX below).

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { keygen } from '../../src/cli/keygen.js';
import { resolveSessionConfig } from '../../src/protocol/config.js';
import type { RackStatus } from '../../src/racks/daemon.js';
import { NetBed, netbedSkip, type HostName } from '../bed/netbed.js';
import { agentClient, agentServer, finishAndVerify, RockProcess, SocatStream, socatEcho } from '../bed/programs.js';
import { sleep, until } from '../support/helpers.js';

const skip = netbedSkip();
const RACK = fileURLToPath(new URL('../../src/cli/rack.js', import.meta.url));
/** Protected: a socat echo, and an agent (rocks) server. Not protected: a second echo. */
const ECHO = 5001;
const PLAIN_ECHO = 5002;
const AGENT = 5003;
const FAILURE_TIMEOUT = 1000;
const RATE = 2_000_000;
// The carriage is a rocks connection with rack up's --failure-timeout and rocks' defaults otherwise.
const { heartbeatInterval: HEARTBEAT, reconnectDelayMax: RECONNECT_DELAY_MAX } = resolveSessionConfig({ failureTimeout: FAILURE_TIMEOUT });
/**
 * A failure is declared after failureTimeout of silence, counted from the
 * last frame heard, which came at most one heartbeat before the break (the
 * stream keeps data flowing as well).
 */
const DETECT_MIN = FAILURE_TIMEOUT - HEARTBEAT;
const DETECT_MAX = FAILURE_TIMEOUT + HEARTBEAT;
/**
 * A suspended client dials again at least every reconnectDelayMax, however
 * long the outage (session.ts nextDialTime), so a dial starts within that of
 * the path's return; its handshake (TCP, EDP, the resume) takes a few round
 * trips on the bed's 100 Mbit/s links, and the daemon then logs: 1 s for those.
 */
const RESUME_MAX = RECONNECT_DELAY_MAX + 1000;
/** An address change moves the carriage at once (PROTOCOL.md §6.8): the watcher's settling, a round trip and a resume. */
const MOVE_MAX = 300;

function rackUp(bed: NetBed, host: HostName, extra: string[] = []): Promise<RockProcess> {
  const rack = new RockProcess(
    bed,
    host,
    ['up', '--protect', `tcp:${ECHO}`, '--protect', `tcp:${AGENT}`, '--failure-timeout', String(FAILURE_TIMEOUT), ...extra],
    RACK,
  );
  return rack.ready('rack up').then(() => rack);
}

function rackCommand(bed: NetBed, host: HostName, args: string[]): string {
  return execFileSync('ip', ['netns', 'exec', bed.ns[host], process.execPath, RACK, ...args], { encoding: 'utf8' });
}

function status(bed: NetBed, host: HostName): RackStatus {
  return JSON.parse(rackCommand(bed, host, ['status', '--json'])) as RackStatus;
}

/** What of racks is in a host's kernel: nftables table, policy rule, route table, TUN device. */
function leftovers(bed: NetBed, host: HostName): string[] {
  const inNs = (cmd: string, ...args: string[]): string => execFileSync('ip', ['netns', 'exec', bed.ns[host], cmd, ...args], { encoding: 'utf8' });
  const found: string[] = [];
  if (/table inet rack\b/.test(inNs('nft', 'list', 'tables'))) found.push('nft table inet rack');
  for (const line of inNs('ip', 'rule', 'show').split('\n')) if (line.startsWith('7225:')) found.push(`rule ${line}`);
  const routes = inNs('ip', 'route', 'show', 'table', '7225').trim();
  if (routes) found.push(`routes ${routes}`);
  if (inNs('ip', '-o', 'link', 'show').includes('rack0')) found.push('link rack0');
  return found;
}

/** The peer addresses of a host's established connections on `port`. */
function peersOn(bed: NetBed, host: HostName, port: number): string[] {
  const out = execFileSync('ip', ['netns', 'exec', bed.ns[host], 'ss', '-Htn', 'state', 'established', `( sport = :${port} )`], { encoding: 'utf8' });
  return out
    .split('\n')
    .filter(Boolean)
    .map((l) => l.trim().split(/\s+/).pop()!.replace(/:\d+$/, ''));
}

/** Times (ms, wall clock) of a rack's log lines with message `msg`. */
const logTimes = (rack: RockProcess, msg: string): number[] =>
  rack
    .logs()
    .filter((l) => l.msg.startsWith(msg))
    .map((l) => l.time);

interface World {
  bed: NetBed;
  /** Stopped when the test ends, whatever happens. */
  processes: { stop(): Promise<void> }[];
}

async function withBed(run: (w: World) => Promise<void>): Promise<void> {
  const bed = new NetBed();
  const w: World = { bed, processes: [] };
  try {
    bed.shape(100);
    // Strict reverse-path filtering, as many distributions set it: packets racks injects must pass it.
    bed.hostSysctl('net.ipv4.conf.all.rp_filter', '1');
    await run(w);
  } finally {
    await Promise.all(w.processes.map((p) => p.stop()));
    bed.destroy();
  }
}

/** rack up on both hosts, a socat echo on the protected port, and a socat stream to it, flowing. */
async function carriedStream(w: World, extra: string[] = []): Promise<{ racks: RockProcess[]; stream: SocatStream }> {
  const { bed } = w;
  const racks = [await rackUp(bed, 'client', extra), await rackUp(bed, 'server', extra)];
  w.processes.push(...racks, socatEcho(bed, `0.0.0.0:${ECHO}`));
  const stream = new SocatStream(bed, 'through rack');
  w.processes.push(stream);
  await stream.start(`${bed.serverAddress}:${ECHO}`, RATE, () => racks.map((r) => r.output).join('\n'));
  return { racks, stream };
}

/**
 * Detection (suspend − broken) and resume (resume − healed) of the carriages
 * on both hosts, printed, then held to their bounds; a time that is missing
 * (no such log line after the event) fails. `resumeMax`: how long after
 * `healed` the carriages must be back.
 */
/** Takes the client's link down for `downMs` mid-transfer, brings it back, and checks the stream resumes intact. */
async function linkDownAndUp(w: World, racks: RockProcess[], stream: SocatStream, downMs: number, label: string): Promise<void> {
  await sleep(1000);
  const broken = Date.now();
  w.bed.linkDown();
  await sleep(downMs);
  const healed = Date.now();
  w.bed.linkUp();
  const before = stream.gotBytes;
  await until(
    () => stream.gotBytes > before + RATE,
    20_000,
    () => `the echo to flow again after link up\n${racks.map((r) => r.output).join('\n')}`,
  );
  checkTimes(label, racks, broken, healed);
  await stream.finishAndVerify();
}

function checkTimes(label: string, racks: RockProcess[], broken: number, healed: number, resumeMax = RESUME_MAX): void {
  const after = (r: RockProcess, msg: string, t0: number): number => (logTimes(r, msg).find((t) => t >= t0) ?? NaN) - t0;
  const detect = racks.map((r) => after(r, 'carriage suspended', broken));
  const resume = racks.map((r) => after(r, 'carriage resumed', healed));
  console.log(
    `# ${label}: carriage detection ${detect.join(' / ')} ms (failure timeout ${FAILURE_TIMEOUT}), resumed ${resume.join(' / ')} ms after the path was back (client / server)`,
  );
  const logs = (): string => racks.map((r) => r.output).join('\n');
  for (const [i, host] of ['client', 'server'].entries()) {
    assert.ok(
      detect[i] >= DETECT_MIN && detect[i] <= DETECT_MAX,
      `${label}: the ${host} daemon detected the failure after ${detect[i]} ms, expected ${DETECT_MIN}..${DETECT_MAX}\n${logs()}`,
    );
    assert.ok(
      resume[i] >= 0 && resume[i] <= resumeMax,
      `${label}: the ${host} daemon resumed ${resume[i]} ms after the path was back, expected at most ${resumeMax}\n${logs()}`,
    );
  }
}

describe('rack up on both hosts', { skip }, () => {
  test("a socat stream keeps going while the client's address changes; the server sees the client's original address", {
    timeout: 90_000,
  }, async () => {
    await withBed(async (w) => {
      const { bed } = w;
      const original = bed.clientAddress;
      const { racks, stream } = await carriedStream(w);
      assert.deepEqual(peersOn(bed, 'server', ECHO), [original], 'the server sees the client host itself');
      const s = status(bed, 'client');
      assert.equal(s.connections.length, 1, JSON.stringify(s));
      assert.equal(s.hosts[0]?.verdict, 'rack');
      await sleep(1000);
      const moved = Date.now();
      const now = bed.moveClient();
      // The carriage is a rocks client session: the network watcher moves it at
      // once (PROTOCOL.md §6.8), with a suspend/resume pair only if bytes were caught.
      const movedAfter = (r: RockProcess): number =>
        Math.min(...[...logTimes(r, 'carriage moved to a new connection'), ...logTimes(r, 'carriage resumed')].filter((t) => t >= moved)) - moved;
      await until(
        () => racks.every((r) => Number.isFinite(movedAfter(r))) && stream.gotBytes > 0,
        20_000,
        () => racks.map((r) => r.output).join('\n'),
      );
      const before = stream.gotBytes;
      await until(
        () => stream.gotBytes > before + RATE,
        10_000,
        () => `the echo to flow again after the move\n${racks.map((r) => r.output).join('\n')}`,
      );
      const times = racks.map(movedAfter);
      console.log(
        `# address change ${original} → ${now}: the carriage moved ${times.join(' / ')} ms after the move began (client / server; failure timeout ${FAILURE_TIMEOUT})`,
      );
      assert.ok(
        times.every((t) => t <= MOVE_MAX),
        `the carriage moved within ${MOVE_MAX} ms of the address change: ${times.join(' / ')}\n${racks.map((r) => r.output).join('\n')}`,
      );
      assert.ok(
        racks[0].logs().some((l) => l.msg.startsWith('local address gone') && l.address === original),
        `the client's daemon kept ${original} on the TUN:\n${racks[0].output}`,
      );
      assert.ok(stream.alive, `socat died: ${stream.output}`);
      assert.deepEqual(peersOn(bed, 'server', ECHO), [original], 'the server still sees the original address');
      const { bytes } = await stream.finishAndVerify();
      console.log(`# ${(bytes / 1e6).toFixed(1)} MB echoed intact across the move`);
    });
  });

  test('a black hole three times longer than plain TCP survives: the same stream without rack dies', { timeout: 120_000 }, async () => {
    await withBed(async (w) => {
      const { bed } = w;
      // With tcp_retries2=5 a plain connection gives up after about 6-13 s of unanswered retransmissions.
      bed.hostSysctl('net.ipv4.tcp_retries2', '5');
      const racks = [await rackUp(bed, 'client'), await rackUp(bed, 'server')];
      w.processes.push(...racks, socatEcho(bed, `0.0.0.0:${ECHO}`), socatEcho(bed, `0.0.0.0:${PLAIN_ECHO}`));
      const carried = new SocatStream(bed, 'through rack');
      const plain = new SocatStream(bed, 'without rack');
      w.processes.push(carried, plain);
      await carried.start(`${bed.serverAddress}:${ECHO}`, RATE, () => racks.map((r) => r.output).join('\n'));
      await plain.start(`${bed.serverAddress}:${PLAIN_ECHO}`, RATE);
      await sleep(1000);
      const broken = Date.now();
      bed.blackhole();
      await until(
        () => !plain.alive,
        30_000,
        () => 'the plain stream to die',
      );
      const died = Date.now() - broken;
      console.log(`# without rack: socat died ${died} ms into the black hole: ${plain.output.trim().split('\n').pop()}`);
      await sleep(Math.max(0, 3 * died - (Date.now() - broken)));
      assert.ok(carried.alive, `the carried socat died: ${carried.output}`);
      for (const host of ['client', 'server'] as const) {
        const held = status(bed, host);
        assert.equal(held.connections[0]?.state, 'suspended', JSON.stringify(held));
        assert.ok(held.connections[0].outageMs > 2 * died, JSON.stringify(held));
        // The client's socat kept writing into the dead path, so its daemon must have held it; the
        // server's echo may have had nothing in flight when the path broke, and then needed no holding.
        if (host === 'client')
          assert.ok(held.counters.holdAcks > 0, `the client's daemon held its sender with zero-window ACKs: ${JSON.stringify(held)}`);
      }
      const healed = Date.now();
      bed.heal();
      const before = carried.gotBytes;
      await until(
        () => carried.gotBytes > before + RATE,
        20_000,
        () => `the echo to flow again after the heal\n${racks.map((r) => r.output).join('\n')}`,
      );
      checkTimes(`black hole ${Math.round((healed - broken) / 1000)} s (tcp_retries2=5)`, racks, broken, healed);
      const { bytes } = await carried.finishAndVerify();
      console.log(`# ${(bytes / 1e6).toFixed(1)} MB echoed intact through the black hole`);
    });
  });

  test('the link goes down and comes back up during a transfer', { timeout: 90_000 }, async () => {
    await withBed(async (w) => {
      const { racks, stream } = await carriedStream(w);
      await linkDownAndUp(w, racks, stream, 8000, 'link down 8 s');
    });
  });

  test('carriages over TLS (one rock keygen pair on both hosts, --tls-pin): the link goes down and up, the stream intact', {
    timeout: 90_000,
  }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rack-tls-'));
    try {
      const { pin, certPath, keyPath } = await keygen(dir, { names: ['rack'], days: 1, force: false });
      await withBed(async (w) => {
        const { bed } = w;
        const { racks, stream } = await carriedStream(w, ['--tls-cert', certPath, '--tls-key', keyPath, '--tls-pin', pin]);
        assert.deepEqual(
          status(bed, 'client').hosts.map((h) => h.verdict),
          ['rack'],
        );
        await linkDownAndUp(w, racks, stream, 4000, 'over TLS, link down 4 s');
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a rocks connection between two rack hosts is left to rocks', { timeout: 60_000 }, async () => {
    await withBed(async (w) => {
      const { bed } = w;
      const racks = [await rackUp(bed, 'client'), await rackUp(bed, 'server')];
      w.processes.push(...racks);
      const options = { failureTimeout: 2000, heartbeatInterval: 400 };
      const server = await agentServer(bed, AGENT, options, 500_000);
      w.processes.push(server);
      const client = await agentClient(bed, AGENT, options, 500_000, 1);
      w.processes.push(client);
      await until(
        () => status(bed, 'client').counters.bypassed >= 1 && status(bed, 'server').counters.bypassed >= 1,
        10_000,
        () => racks.map((r) => r.output).join('\n'),
      );
      assert.equal(client.of('connected')[0]?.reliable, true, 'rocks still speaks rocks between rack hosts');
      await sleep(1000);
      const broken = Date.now();
      bed.blackhole();
      await client.waitFor((a) => a.of('suspend').length === 1, 10_000, 'rocks to suspend');
      bed.heal();
      await client.waitFor((a) => a.of('resume').length === 1, 20_000, 'rocks to resume');
      const detected = client.of('suspend')[0].t - broken;
      console.log(`# rocks inside racks: rocks detected the black hole in ${detected} ms and resumed by itself`);
      assert.ok(
        detected >= options.failureTimeout - options.heartbeatInterval && detected <= options.failureTimeout + options.heartbeatInterval,
        `rocks detected the black hole after ${detected} ms, expected its own failure timeout ${options.failureTimeout} ± one heartbeat ${options.heartbeatInterval}`,
      );
      await finishAndVerify(client, server, 1);
    });
  });

  test('garbage and plain clients on the rack port are turned away; carried connections are not disturbed', { timeout: 60_000 }, async () => {
    await withBed(async (w) => {
      const { bed } = w;
      const { stream } = await carriedStream(w);
      for (const junk of ['GET / HTTP/1.0\r\n\r\n', '\x00\x00\x00\x05\x01hello', 'RCKS'.repeat(300)]) {
        execFileSync('ip', ['netns', 'exec', bed.ns.client, 'socat', '-t', '1', '-', `TCP:${bed.serverAddress}:7225`], {
          input: junk,
          timeout: 10_000,
        });
      }
      await until(
        () => status(bed, 'server').counters.strayConnections >= 3,
        10_000,
        () => JSON.stringify(status(bed, 'server')),
      );
      await stream.finishAndVerify();
    });
  });
});

describe('rack up on one host only', { skip }, () => {
  for (const host of ['client', 'server'] as const) {
    test(`rack only on the ${host}: the connection works exactly as without rack`, { timeout: 60_000 }, async () => {
      await withBed(async (w) => {
        const { bed } = w;
        const rack = await rackUp(bed, host);
        w.processes.push(rack, socatEcho(bed, `0.0.0.0:${ECHO}`));
        // The server host counts what reaches it of the connection: one SYN, no packet more than plain TCP sends.
        const nft = (command: string): string => execFileSync('ip', ['netns', 'exec', bed.ns.server, 'nft', command], { encoding: 'utf8' });
        nft('add table inet count');
        nft(`add chain inet count input { type filter hook input priority -300; policy accept; }`);
        nft(`add rule inet count input tcp dport ${ECHO} tcp flags & (syn | ack) == syn counter`);
        const stream = new SocatStream(bed, `with rack only on the ${host}`);
        w.processes.push(stream);
        await stream.start(`${bed.serverAddress}:${ECHO}`, RATE, () => rack.output);
        await sleep(500);
        const s = status(bed, host);
        assert.equal(s.connections.length, 0, `nothing carried: ${JSON.stringify(s)}`);
        if (host === 'client')
          assert.deepEqual(
            s.hosts.map((h) => h.verdict),
            ['plain'],
            JSON.stringify(s),
          );
        assert.equal(s.counters.packetsCarried, 0, JSON.stringify(s));
        assert.deepEqual(peersOn(bed, 'server', ECHO), [bed.clientAddress]);
        assert.match(nft('list table inet count'), /counter packets 1 /, 'the server got exactly one SYN');
        await stream.finishAndVerify();
      });
    });
  }
});

describe('rack limits', { skip }, () => {
  test('past --max-connections a connection goes out unprotected; past --max-held packets wait for the resume; both are logged and nothing is lost', {
    timeout: 90_000,
  }, async () => {
    await withBed(async (w) => {
      const { bed } = w;
      const limits = ['--max-connections', '1', '--max-held', '64KiB'];
      const racks = [await rackUp(bed, 'client', limits), await rackUp(bed, 'server', limits)];
      w.processes.push(...racks, socatEcho(bed, `0.0.0.0:${ECHO}`));
      const first = new SocatStream(bed, 'the first connection');
      const second = new SocatStream(bed, 'the second connection');
      w.processes.push(first, second);
      await first.start(`${bed.serverAddress}:${ECHO}`, RATE);
      await second.start(`${bed.serverAddress}:${ECHO}`, RATE);
      const s = status(bed, 'client');
      assert.equal(s.connections.length, 1, `one connection protected: ${JSON.stringify(s)}`);
      assert.ok(
        racks[0].logs().some((l) => l.msg.startsWith('protected-connection limit reached')),
        racks[0].output,
      );
      assert.ok(s.counters.unprotected >= 1, JSON.stringify(s.counters));
      await first.finishAndVerify();
      await second.finishAndVerify();

      // A fresh protected stream through an outage: it writes far more than 64 KiB into the dead path.
      const held = new SocatStream(bed, 'through an outage past --max-held');
      w.processes.push(held);
      await until(() => status(bed, 'client').connections.every((c) => c.state === 'ending'), 10_000, 'the first streams to end');
      await held.start(`${bed.serverAddress}:${ECHO}`, RATE);
      await sleep(500);
      bed.blackhole();
      await until(
        () => racks[0].logs().some((l) => l.msg.startsWith('held-bytes limit reached')),
        15_000,
        () => racks[0].output,
      );
      assert.ok(status(bed, 'client').counters.limitDrops > 0);
      bed.heal();
      await held.finishAndVerify();
    });
  });
});

describe('what rack leaves behind', { skip }, () => {
  test('rack down, and a killed daemon followed by rack down, leave no table, rule, route or TUN device', { timeout: 60_000 }, async () => {
    await withBed(async (w) => {
      const { bed } = w;
      const rack = await rackUp(bed, 'client');
      w.processes.push(rack);
      assert.deepEqual(
        leftovers(bed, 'client').sort(),
        ['link rack0', 'nft table inet rack', 'routes default dev rack0 scope link', `rule 7225:\tfrom all fwmark 0x7225 lookup 7225`].sort(),
      );
      rackCommand(bed, 'client', ['down']);
      await rack.exit;
      assert.equal(rack.exited, 0, rack.output);
      assert.deepEqual(leftovers(bed, 'client'), []);

      const killed = await rackUp(bed, 'client');
      w.processes.push(killed);
      killed.child.kill('SIGKILL');
      await killed.exit;
      assert.ok(leftovers(bed, 'client').length > 0, 'a killed daemon cannot clean up');
      rackCommand(bed, 'client', ['down']);
      assert.deepEqual(leftovers(bed, 'client'), []);
      // And `rack up` itself starts by cleaning what a killed one left.
      const again = await rackUp(bed, 'client');
      again.child.kill('SIGKILL');
      await again.exit;
      const third = await rackUp(bed, 'client');
      w.processes.push(third);
      third.child.kill('SIGTERM');
      await third.exit;
      assert.deepEqual(leftovers(bed, 'client'), []);
    });
  });
});
