// The demo: a rocks client and server exchange data both ways while a fault
// proxy between them resets the connection, black-holes it and delays it.
// The connection suspends and resumes; at the end both sides compare SHA-256
// digests of everything sent and received.
//
//   rock demo   or   npm run demo   (about 15 seconds)

import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { connect, createServer, type ReliableSocket } from '../index.js';
import { FaultProxy } from '../testbed/fault-proxy.js';

const EACH_WAY = 48 * 1024 * 1024;
// Each side ends its own direction when it has sent everything (allowHalfOpen),
// rather than as soon as the other side has finished.
const options = { failureTimeout: 1000, heartbeatInterval: 200, allowHalfOpen: true };
let started = performance.now();
const MiB = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MiB`;

function log(who: string, text: string): void {
  console.log(`[${((performance.now() - started) / 1000).toFixed(2).padStart(6)} s] ${who.padEnd(7)} ${text}`);
}

/** Sends EACH_WAY random bytes at about 4 MiB/s, so the faults land mid-transfer. */
async function send(socket: ReliableSocket): Promise<string> {
  const hash = createHash('sha256');
  for (let sent = 0; sent < EACH_WAY; sent += 64 * 1024) {
    const chunk = randomBytes(64 * 1024);
    hash.update(chunk);
    if (!socket.write(chunk)) await once(socket, 'drain');
    if (sent % (512 * 1024) === 0) await new Promise((r) => setTimeout(r, 120));
  }
  socket.end();
  return hash.digest('hex');
}

function receive(socket: ReliableSocket): Promise<{ digest: string; bytes: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  socket.on('data', (d: Buffer) => {
    hash.update(d);
    bytes += d.length;
  });
  return new Promise((resolve) => socket.once('end', () => resolve({ digest: hash.digest('hex'), bytes })));
}

function watch(who: string, socket: ReliableSocket): void {
  socket.on('suspend', (info) => log(who, `suspended: ${info.reason}`));
  socket.on('reconnect', (info) => {
    log(who, `resumed after ${info.outage.toFixed(0)} ms, replayed ${MiB(info.replayedOut)} out, ${MiB(info.replayedIn)} in`);
  });
  socket.on('error', (err) => log(who, `error: ${err.message}`));
}

/** Runs the demo; resolves with the exit code (0 when every byte arrived intact). */
export async function demo(): Promise<number> {
  started = performance.now();
  let serverResult: Promise<[string, { digest: string; bytes: number }]> | undefined;
  const server = createServer(options, (socket) => {
    if (!socket.reliable) {
      // EDP serves ordinary (non-rocks) clients as plain connections; this demo has none.
      log('server', `ordinary connection from ${socket.remoteAddress}:${socket.remotePort}, closed`);
      socket.destroy();
      return;
    }
    log('server', `rocks connection from ${socket.remoteAddress}:${socket.remotePort}`);
    watch('server', socket);
    serverResult = Promise.all([send(socket), receive(socket)]);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const proxy = new FaultProxy((server.address() as AddressInfo).port);
  const proxyPort = await proxy.listen();
  log('demo', `rocks server on 127.0.0.1:${(server.address() as AddressInfo).port}, fault proxy on 127.0.0.1:${proxyPort}`);

  const client = connect({ port: proxyPort, host: '127.0.0.1', ...options });
  watch('client', client);
  client.on('detect', (info) => log('client', `EDP: ${info.reliable ? 'reliable' : 'plain'} (${info.reason})`));
  client.on('reconnect-attempt', (info) => log('client', `reconnect attempt ${info.attempt} (after ${info.delay} ms)`));
  const clientResult = Promise.all([send(client), receive(client)]);
  await once(client, 'connect');
  log('client', `connected, session ${client.sessionId?.slice(0, 12)}…; sending ${MiB(EACH_WAY)} each way`);

  const faults: [number, string, () => void][] = [
    [1500, 'resets the connection', () => proxy.reset()],
    [3500, 'black-holes the path for 3 s (nothing arrives, nothing closes)', () => proxy.blackhole()],
    [6500, 'restores the path', () => proxy.heal()],
    [8000, 'resets the connection', () => proxy.reset()],
    [9500, 'delays every packet by 300 ms for 2 s', () => proxy.setDelay(300)],
    [11500, 'removes the delay', () => proxy.setDelay(0)],
  ];
  for (const [at, what, act] of faults) {
    setTimeout(() => {
      log('network', what);
      act();
    }, at);
  }

  const [clientSent, clientGot] = await clientResult;
  const [serverSent, serverGot] = await serverResult!;
  await new Promise((r) => (client.destroyed ? r(undefined) : client.once('close', r)));
  const upOk = clientSent === serverGot.digest && serverGot.bytes === EACH_WAY;
  const downOk = serverSent === clientGot.digest && clientGot.bytes === EACH_WAY;
  log('demo', `client → server: ${MiB(serverGot.bytes)}, SHA-256 ${upOk ? 'matches' : 'DIFFERS'} (${serverGot.digest.slice(0, 16)}…)`);
  log('demo', `server → client: ${MiB(clientGot.bytes)}, SHA-256 ${downOk ? 'matches' : 'DIFFERS'} (${clientGot.digest.slice(0, 16)}…)`);
  await proxy.close();
  server.close();
  if (!upOk || !downOk) {
    console.log('FAILED: the data did not survive intact');
    return 1;
  }
  console.log('OK: every byte arrived exactly once, in order, both ways, through every failure.');
  return 0;
}
