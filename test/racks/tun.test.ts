// tun.ts on a real kernel, inside a test host's namespace: a packet written
// into the TUN is routed back out of it and read; a packet that comes while
// the reader waits (the queue ran dry) wakes it by SIGIO; close() while it
// waits lets the process end by itself, with no process.exit, and removes
// the interface; a process that dies without closing it exits too (an
// infinite poll() on the threadpool, the reader before signals, held it).
// Needs root; skipped with the reason otherwise.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, test } from 'node:test';
import { NetBed, netbedSkip } from '../bed/netbed.js';

const skip = netbedSkip();
const TUN = new URL('../../src/racks/tun.js', import.meta.url).href;
const PACKET = new URL('../../src/racks/packet.js', import.meta.url).href;

describe('racks TUN device (netns)', { skip }, () => {
  test('write, read back, a packet that wakes the waiting reader, and close while it waits: the process ends by itself', {
    timeout: 30_000,
  }, async () => {
    const bed = new NetBed();
    try {
      // 10.99.0.3 → 10.99.0.2, both on rack0's subnet: the kernel forwards it back out of rack0.
      const script = `
        import { execFileSync } from 'node:child_process';
        const { TunDevice } = await import('${TUN}');
        const { buildTcpPacket, parseTcpPacket } = await import('${PACKET}');
        const tun = new TunDevice({ name: 'racktest%d' });
        for (const a of [['addr', 'add', '10.99.0.1/24', 'dev', tun.name], ['link', 'set', tun.name, 'up']]) execFileSync('ip', a);
        execFileSync('sysctl', ['-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.' + tun.name + '.disable_ipv6=1']);
        const send = (text) => tun.write(buildTcpPacket({ src: '10.99.0.3', dst: '10.99.0.2', srcPort: 1, dstPort: 2, seq: 7, ack: 0, flags: 0x10, window: 0, payload: Buffer.from(text) }));
        let seen = 0;
        tun.on('packet', (p) => {
          if (p[9] !== 6) return; // not the ICMP redirect the kernel sends too
          const t = parseTcpPacket(p);
          console.log(JSON.stringify({ name: tun.name, src: t.src, dst: t.dst, ttl: t.ttl, payload: t.payload.toString(), waitsBefore: tun.stats.waits }));
          if (++seen === 1) {
            // The reader runs dry and waits for SIGIO; the next packet must wake it.
            setTimeout(() => send('woken'), 200);
            return;
          }
          setTimeout(async () => {            // let the reader go back to waiting
            const waits = tun.stats.waits;
            await tun.close();
            const links = execFileSync('ip', ['-o', 'link'], { encoding: 'utf8' });
            console.log(JSON.stringify({ closed: true, waits, stillThere: links.includes(tun.name) }));
          }, 200);
        });
        send('round trip');`;
      const child = bed.spawn('client', process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      const started = Date.now();
      const [code] = (await once(child, 'exit')) as [number];
      assert.equal(code, 0, out);
      const [read, woken, closed] = out
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l));
      assert.match(read.name, /^racktest\d+$/);
      assert.deepEqual([read.src, read.dst, read.ttl, read.payload], ['10.99.0.3', '10.99.0.2', 63, 'round trip']);
      assert.equal(woken.payload, 'woken');
      assert.ok(woken.waitsBefore > read.waitsBefore, 'the second packet came while the reader waited');
      assert.equal(closed.closed, true);
      assert.ok(closed.waits > woken.waitsBefore, 'the reader was waiting when closed');
      assert.equal(closed.stillThere, false, 'the interface is gone after close');
      assert.ok(Date.now() - started < 10_000);
    } finally {
      bed.destroy();
    }
  });

  test('a process that dies of an uncaught exception while a read waits still exits', { timeout: 30_000 }, async () => {
    const bed = new NetBed();
    try {
      const script = `
        const { TunDevice } = await import('${TUN}');
        const tun = new TunDevice({ name: 'racktest%d' });
        setTimeout(() => { throw new Error('boom (' + tun.stats.waits + ' waits)'); }, 300);`;
      const child = bed.spawn('client', process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      const started = Date.now();
      const [code] = (await once(child, 'exit')) as [number];
      assert.equal(code, 1);
      assert.match(err, /boom \([1-9]\d* waits\)/);
      assert.ok(Date.now() - started < 5000, `took ${Date.now() - started} ms to exit`);
    } finally {
      bed.destroy();
    }
  });
});
