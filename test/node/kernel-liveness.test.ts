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
import { KERNEL_WATCH_DELAY_MS, kernelCanWatch } from '../../src/node/kernel-liveness.js';
import { socketCalls } from '../../src/node/socket-calls.js';
import { resolveSessionConfig } from '../../src/protocol/config.js';
import { sleep, until } from '../support/helpers.js';

const skip = kernelCanWatch(resolveSessionConfig({})) ? false : 'the kernel cannot watch connections here (Linux with koffi only)';
/** Idle time observed, after the PACE exchange and the heartbeats sent before it. */
const IDLE_MS = 4000;
/** The kernel watches a link KERNEL_WATCH_DELAY_MS after it carries the session; a heartbeat at the old rate may follow the PACEs. */
const SETTLE_MS = KERNEL_WATCH_DELAY_MS + 2000;
const SOL_SOCKET = 1;
const SO_KEEPALIVE = 9;

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

  test('a Unix socket: the kernel cannot watch it, so the session keeps beating every second', async () => {
    const unix = await idleBytes('unix', {});
    console.log(`# ${IDLE_MS} ms idle over Unix sockets, bytes up/down: ${unix.up}/${unix.down}`);
    assert.ok(unix.up >= 3 * 21 && unix.down >= 3 * 21, `heartbeats each way: ${JSON.stringify(unix)}`);
  });
});
