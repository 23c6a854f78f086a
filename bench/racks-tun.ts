// How many packets a second racks' TUN reader and writer move (src/racks/tun.ts).
// Run as root: `node dist/bench/racks-tun.js [seconds] [payload bytes]`.
//
// It makes its own network namespace (never touching the root one) and runs
// itself inside it. There, a TUN device rack0 with 10.99.0.1/24 and
// ip_forward on makes a loop: the bench writes UDP packets from 10.99.0.3 to
// 10.99.0.2 into the device, the kernel receives them, forwards them back out
// of rack0 (10.99.0.2 is on its subnet), and the bench reads them. So one
// process does what a relay does, a write and a read per packet, with the
// kernel's forwarding in between; a window of packets is kept in flight.

import { execFileSync, spawnSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { TunDevice } from '../src/racks/tun.js';

const seconds = Number(process.argv[2] ?? 3);
const payloadSize = Number(process.argv[3] ?? 1400);
const WINDOW = 256;

function udpPacket(payload: number): Buffer {
  const total = 28 + payload;
  const buf = Buffer.alloc(total);
  buf[0] = 0x45;
  buf.writeUInt16BE(total, 2);
  buf[8] = 64;
  buf[9] = 17;
  Buffer.from([10, 99, 0, 3]).copy(buf, 12);
  Buffer.from([10, 99, 0, 2]).copy(buf, 16);
  let sum = 0;
  for (let i = 0; i < 20; i += 2) sum += buf.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  buf.writeUInt16BE(~sum & 0xffff, 10);
  buf.writeUInt16BE(40000, 20);
  buf.writeUInt16BE(9, 22);
  buf.writeUInt16BE(8 + payload, 24); // UDP checksum 0: none
  return buf;
}

async function inside(): Promise<void> {
  const tun = new TunDevice({ name: 'rack0' });
  for (const args of [
    ['addr', 'add', '10.99.0.1/24', 'dev', 'rack0'],
    ['link', 'set', 'rack0', 'up'],
  ])
    execFileSync('ip', args);
  execFileSync('sysctl', ['-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.rack0.disable_ipv6=1']);
  const packet = udpPacket(payloadSize);
  let received = 0;
  let bytes = 0;
  let counting = false;
  tun.on('packet', (p: Buffer) => {
    if (p[9] !== 17) return;
    if (counting) {
      received++;
      bytes += p.length;
    }
    tun.write(packet); // keep the window full
  });
  for (let i = 0; i < WINDOW; i++) tun.write(packet);
  await sleep(500); // warm up
  counting = true;
  const start = process.hrtime.bigint();
  const cpu0 = process.cpuUsage();
  await sleep(seconds * 1000);
  const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  counting = false;
  const result = {
    payload: payloadSize,
    packetSize: packet.length,
    packetsPerSecond: Math.round(received / elapsed),
    megabytesPerSecond: Number((bytes / elapsed / 1e6).toFixed(1)),
    processCpu: Number(((cpu.user + cpu.system) / 1e6 / elapsed).toFixed(2)),
    waits: tun.stats.waits,
    writeErrors: tun.stats.writeErrors,
  };
  await tun.close();
  console.log(JSON.stringify(result));
}

if (process.env.RACKS_TUN_BENCH_INSIDE) {
  await inside();
} else {
  if (process.getuid?.() !== 0) throw new Error('needs root (it makes a network namespace and a TUN device)');
  const ns = `rktunbench${process.pid}`;
  execFileSync('ip', ['netns', 'add', ns]);
  try {
    const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
      stdio: 'inherit',
      env: { ...process.env, RACKS_TUN_BENCH_INSIDE: '1' },
    });
    process.exitCode = r.status ?? 1;
  } finally {
    execFileSync('ip', ['netns', 'del', ns]);
  }
}
