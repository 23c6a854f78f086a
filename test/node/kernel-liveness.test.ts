// Liveness in the kernel (PROTOCOL.md §5.1) on real sockets: over TCP an
// idle session leaves the watching to the kernel's keepalive and sends
// nothing for seconds; over a Unix socket the kernel cannot watch, and the
// session keeps its heartbeats. A relay in the middle counts the bytes each
// way. A black hole found by the kernel is timed in
// test/netns/scenarios.test.ts (it needs root and a real path).

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { type AddressInfo, connect as netConnect, createServer as netCreateServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { connect, createServer, type ReliableServer, type ReliableSocket } from '../../src/index.js';
import {
  KERNEL_WATCH_DELAY_MS,
  keepaliveSeconds,
  kernelCanWatch,
  SO_KEEPALIVE,
  SOL_SOCKET,
  TCP_KEEPCNT,
  TCP_KEEPIDLE,
  TCP_KEEPINTVL,
  TCP_USER_TIMEOUT,
} from '../../src/node/kernel-liveness.js';
import { IPPROTO_TCP, socketCalls } from '../../src/node/socket-calls.js';
import { resolveSessionConfig } from '../../src/protocol/config.js';
import { sleep, until } from '../support/helpers.js';
import { intOption } from '../support/sockopt.js';

const skip = kernelCanWatch(resolveSessionConfig({})) ? false : 'the kernel cannot watch connections here (Linux with koffi only)';
/** Idle time observed, after the PACE exchange and the heartbeats sent before it. */
const IDLE_MS = 4000;
/** The kernel watches a link KERNEL_WATCH_DELAY_MS after it carries the session; a heartbeat at the old rate may follow the PACEs. */
const SETTLE_MS = KERNEL_WATCH_DELAY_MS + 2000;

/**
 * Linux's keepalive timer (tcp_keepalive_timer in net/ipv4/tcp_timer.c)
 * on a connection last heard at 0 whose path dies at `deathMs`: a probe
 * sent before then is answered at once. Returns when the connection
 * fails, with the probes left unanswered by then, and the probes sent.
 */
function keepaliveVerdict(
  s: { idle: number; interval: number },
  userTimeoutMs: number,
  deathMs: number,
): { at: number; unanswered: number; sent: number } {
  const [idle, interval] = [s.idle * 1000, s.interval * 1000];
  let [heard, unanswered, sent, tick] = [0, 0, 0, idle];
  for (;;) {
    const elapsed = tick - heard;
    if (elapsed < idle) {
      tick += idle - elapsed;
      continue;
    }
    if (unanswered > 0 && elapsed >= userTimeoutMs) return { at: tick, unanswered, sent };
    sent++;
    if (tick < deathMs) [heard, unanswered] = [tick, 0];
    else unanswered++;
    tick += interval;
  }
}

describe('kernel keepalive settings (keepaliveSeconds)', () => {
  test('the kernel fails a dead path within failureTimeout + heartbeatInterval, after two unanswered probes, and probes a healthy idle one rarely', () => {
    for (const [failureTimeout, heartbeatInterval] of [
      [5000, 1000],
      [2000, 1000],
      [5500, 1000],
      [30_000, 6000],
      [10_000, 5000],
    ]) {
      const settings = keepaliveSeconds({ kernelLiveness: true, failureTimeout, heartbeatInterval });
      const at = `failureTimeout ${failureTimeout}, heartbeatInterval ${heartbeatInterval}: ${JSON.stringify(settings)}`;
      // One lost probe is not a failure, where the bound leaves room for two.
      const tolerated = Math.min(2, Math.floor(failureTimeout / heartbeatInterval) - 1);
      for (let death = 0; death < 3 * failureTimeout; death += 100) {
        const verdict = keepaliveVerdict(settings, failureTimeout, death);
        assert.ok(verdict.at - death <= failureTimeout + heartbeatInterval, `${at}: dead at ${death} ms, failed at ${verdict.at} ms`);
        assert.ok(verdict.unanswered >= tolerated, `${at}: failed after ${verdict.unanswered} unanswered probe(s)`);
      }
      // Alive for a minute and a millisecond: the probe at 60 s is answered too.
      const healthy = keepaliveVerdict(settings, failureTimeout, 60_001);
      const probes = healthy.sent - healthy.unanswered;
      console.log(`# ${at}: ${probes} probes in a healthy idle minute`);
      if (failureTimeout === 5000 && heartbeatInterval === 1000) assert.equal(probes, 20, `${at}: one probe every 3 s at the defaults`);
    }
  });
});

/** A relay from `listenAt` to `target` that counts the bytes going each way. */
async function countingRelay(listenAt: number | string, target: { port: number } | { path: string }) {
  const counted = { up: 0, down: 0 };
  const sockets: Socket[] = [];
  const relay: Server = netCreateServer((inbound) => {
    const outbound = netConnect(target as { port: number });
    sockets.push(inbound, outbound);
    inbound.on('data', (d: Buffer) => {
      counted.up += d.length;
      outbound.write(d);
    });
    outbound.on('data', (d: Buffer) => {
      counted.down += d.length;
      inbound.write(d);
    });
    for (const s of [inbound, outbound]) s.on('error', () => {});
    inbound.on('close', () => outbound.destroy());
    outbound.on('close', () => inbound.destroy());
  });
  relay.listen(listenAt as number);
  await once(relay, 'listening');
  return {
    counted,
    address: relay.address(),
    close: () => {
      for (const s of sockets) s.destroy();
      relay.close();
    },
  };
}

/** Bytes the relay carried each way over IDLE_MS of an idle session, with `options` on both ends. */
async function idleBytes(transport: 'tcp' | 'unix', options: object): Promise<{ up: number; down: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'rocks-liveness-'));
  let server: ReliableServer | undefined;
  let client: ReliableSocket | undefined;
  let relay: Awaited<ReturnType<typeof countingRelay>> | undefined;
  const accepted: ReliableSocket[] = [];
  try {
    server = createServer({ ...options }, (s) => {
      accepted.push(s);
      s.on('error', () => {});
    });
    if (transport === 'tcp') server.listen(0, '127.0.0.1');
    else server.listen(join(dir, 'server.sock'));
    await once(server, 'listening');
    const target = transport === 'tcp' ? { port: (server.address() as AddressInfo).port, host: '127.0.0.1' } : { path: join(dir, 'server.sock') };
    relay = await countingRelay(transport === 'tcp' ? 0 : join(dir, 'relay.sock'), target);
    const to = transport === 'tcp' ? { port: (relay.address as AddressInfo).port, host: '127.0.0.1' } : { path: join(dir, 'relay.sock') };
    client = connect({ ...options, ...to, enhanced: true });
    client.on('error', () => {});
    await once(client, 'connect');
    await until(() => accepted.length === 1, 5000, 'the server to accept');
    await sleep(SETTLE_MS);
    const before = { ...relay.counted };
    await sleep(IDLE_MS);
    assert.equal(client.reliable, true);
    return { up: relay.counted.up - before.up, down: relay.counted.down - before.down };
  } finally {
    client?.destroy();
    for (const s of accepted) s.destroy();
    relay?.close();
    server?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('kernel liveness (PROTOCOL.md §5.1)', { skip }, () => {
  test('TCP: an idle session sends nothing for seconds, where without the kernel it beats every second', async () => {
    const watched = await idleBytes('tcp', {});
    const beating = await idleBytes('tcp', { kernelLiveness: false });
    console.log(`# ${IDLE_MS} ms idle, bytes up/down: kernel ${watched.up}/${watched.down}, heartbeats ${beating.up}/${beating.down}`);
    assert.deepEqual(watched, { up: 0, down: 0 }, 'the kernel watches: heartbeats only every 30 s');
    // An ACK frame is 21 bytes; one a second each way.
    assert.ok(beating.up >= 3 * 21 && beating.down >= 3 * 21, `heartbeats each way: ${JSON.stringify(beating)}`);
  });

  test('the kernel is asked only once a link carried its session for KERNEL_WATCH_DELAY_MS: a shorter connection makes no call', async (t) => {
    const c = socketCalls()!;
    const real = c.setsockopt;
    const keepalives: number[] = [];
    c.setsockopt = (fd, level, name, value, length) => {
      if (level === SOL_SOCKET && name === SO_KEEPALIVE) keepalives.push(fd);
      return real(fd, level, name, value, length);
    };
    const server = createServer({}, (s) => {
      s.on('error', () => {});
      s.on('data', (d) => s.write(d));
    });
    const sockets: ReliableSocket[] = [];
    t.after(() => {
      c.setsockopt = real;
      for (const s of sockets) s.destroy();
      server.close();
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as AddressInfo).port;
    const exchange = async (): Promise<ReliableSocket> => {
      const s = connect({ port, host: '127.0.0.1', enhanced: true });
      sockets.push(s);
      s.on('error', () => {});
      s.write('x');
      await once(s, 'data');
      return s;
    };
    for (let i = 0; i < 5; i++) (await exchange()).destroy();
    await sleep(KERNEL_WATCH_DELAY_MS + 500);
    assert.deepEqual(keepalives, [], 'five connections closed at once: no call');
    const kept = await exchange();
    await sleep(KERNEL_WATCH_DELAY_MS / 2);
    assert.deepEqual(keepalives, [], 'not yet');
    await until(() => keepalives.length === 2, KERNEL_WATCH_DELAY_MS + 1000, 'both ends to ask their kernels');
    kept.destroy();
  });

  test('the kernel holds the settings on both ends of a watched link: at the defaults, a probe after 3 s of silence, then every second, and failure after 5 s unheard', async (t) => {
    const accepted: ReliableSocket[] = [];
    const server = createServer({}, (s) => {
      accepted.push(s);
      s.on('error', () => {});
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const client = connect({ port: (server.address() as AddressInfo).port, host: '127.0.0.1', enhanced: true });
    client.on('error', () => {});
    t.after(() => {
      client.destroy();
      for (const s of accepted) s.destroy();
      server.close();
    });
    await once(client, 'connect');
    await until(() => accepted.length === 1, 5000, 'the server to accept');
    type WithDriver = { driver: { activeSocket(): Socket } };
    const links = [client, accepted[0]].map((s) => (s as unknown as WithDriver).driver.activeSocket());
    const held = (link: Socket) => [
      intOption(link, SOL_SOCKET, SO_KEEPALIVE),
      intOption(link, IPPROTO_TCP, TCP_KEEPIDLE),
      intOption(link, IPPROTO_TCP, TCP_KEEPINTVL),
      intOption(link, IPPROTO_TCP, TCP_KEEPCNT),
      intOption(link, IPPROTO_TCP, TCP_USER_TIMEOUT),
    ];
    await until(() => links.every((link) => held(link)[0] === 1), KERNEL_WATCH_DELAY_MS + 2000, 'both kernels to watch');
    for (const link of links) assert.deepEqual(held(link), [1, 3, 1, 2, 5000]);
  });

  test('a Unix socket: the kernel cannot watch it, so the session keeps beating every second', async () => {
    const unix = await idleBytes('unix', {});
    console.log(`# ${IDLE_MS} ms idle over Unix sockets, bytes up/down: ${unix.up}/${unix.down}`);
    assert.ok(unix.up >= 3 * 21 && unix.down >= 3 * 21, `heartbeats each way: ${JSON.stringify(unix)}`);
  });
});
