// tun.ts on a real kernel, inside a test host's namespace: a packet written
// into the TUN is routed back out of it and read, and close() with a read
// waiting (a poll on the threadpool) lets the process end by itself, with no
// process.exit, and removes the interface; a process that dies without
// closing it exits too (an infinite poll() on the threadpool used to hold it).
// Needs root; skipped with the reason otherwise.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, test } from 'node:test';
import { NetBed, netbedSkip } from '../bed/netbed.js';

const skip = netbedSkip();
const TUN = new URL('../../src/racks/tun.js', import.meta.url).href;
const PACKET = new URL('../../src/racks/packet.js', import.meta.url).href;

describe('racks TUN device (netns)', { skip }, () => {
  test('write, read back, and close while a read waits: the process ends by itself', { timeout: 30_000 }, async () => {
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
        let seen = false;
        tun.on('packet', (p) => {
          if (p[9] !== 6 || seen) return; // not the ICMP redirect the kernel sends too
          seen = true;
          const t = parseTcpPacket(p);
          console.log(JSON.stringify({ name: tun.name, src: t.src, dst: t.dst, ttl: t.ttl, payload: t.payload.toString() }));
          setTimeout(async () => {            // let the reader go back to poll()
            const polls = tun.stats.polls;
            await tun.close();
            const links = execFileSync('ip', ['-o', 'link'], { encoding: 'utf8' });
            console.log(JSON.stringify({ closed: true, polls, stillThere: links.includes(tun.name) }));
          }, 200);
        });
        tun.write(buildTcpPacket({ src: '10.99.0.3', dst: '10.99.0.2', srcPort: 1, dstPort: 2, seq: 7, ack: 0, flags: 0x10, window: 0, payload: Buffer.from('round trip') }));`;
      const child = bed.spawn('client', process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      const started = Date.now();
      const [code] = (await once(child, 'exit')) as [number];
      assert.equal(code, 0, out);
      const [read, closed] = out
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l));
      assert.match(read.name, /^racktest\d+$/);
      assert.deepEqual([read.src, read.dst, read.ttl, read.payload], ['10.99.0.3', '10.99.0.2', 63, 'round trip']);
      assert.equal(closed.closed, true);
      assert.ok(closed.polls >= 1, 'the reader was waiting in poll() when closed');
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
        setTimeout(() => { throw new Error('boom (' + tun.stats.polls + ' polls)'); }, 300);`;
      const child = bed.spawn('client', process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      const started = Date.now();
      const [code] = (await once(child, 'exit')) as [number];
      assert.equal(code, 1);
      assert.match(err, /boom \([1-9]\d* polls\)/);
      assert.ok(Date.now() - started < 5000, `took ${Date.now() - started} ms to exit`);
    } finally {
      bed.destroy();
    }
  });
});
