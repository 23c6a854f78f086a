// The network watcher's reading of `ip -o monitor address route link` (and
// of macOS's `route -n monitor`), against output recorded on this kernel:
// which lines are changes a session may care about, and which are not.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, test } from 'node:test';
import { ChangeAccumulator, describeChange, type NetworkChange, NetworkWatcher, parseIpMonitorLine } from '../../src/node/network-watch.js';
import { addressesOf, nameOfIndex, RouteMonitorReader } from '../../src/node/route-monitor.js';
import { monotonicNow, Scheduler } from '../../src/node/scheduler.js';
import { sleep, until } from '../support/helpers.js';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

// Recorded from `ip -o monitor address route link` in a namespace while a veth
// came up, took 10.5.0.2 then 10.6.0.2, switched its default route, lost
// 10.5.0.2, and went down and up again (iproute2 6.1, Linux 6.1).
const RECORDED =
  String.raw`2: v1@if2: <NO-CARRIER,BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state DOWN group default \    link/ether b2:46:7e:52:72:f4 brd ff:ff:ff:ff:ff:ff link-netns rkt2
multicast ff00::/8 dev v1 table local proto kernel metric 256 pref medium
fe80::/64 dev v1 proto kernel metric 256 pref medium
2: v1@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP group default \    link/ether b2:46:7e:52:72:f4 brd ff:ff:ff:ff:ff:ff link-netns rkt2
2: v1    inet 10.5.0.2/24 scope global v1\       valid_lft forever preferred_lft forever
local 10.5.0.2 dev v1 table local proto kernel scope host src 10.5.0.2 
10.5.0.0/24 dev v1 proto kernel scope link src 10.5.0.2 
broadcast 10.5.0.255 dev v1 table local proto kernel scope link src 10.5.0.2 
default via 10.5.0.1 dev v1 
fd00::/64 dev v1 proto kernel metric 256 pref medium
2: v1    inet6 fd00::2/64 scope global nodad \       valid_lft forever preferred_lft forever
local fd00::2 dev v1 table local proto kernel metric 0 pref medium
2: v1    inet 10.6.0.2/24 scope global v1\       valid_lft forever preferred_lft forever
default via 10.6.0.1 dev v1 
Deleted 2: v1    inet 10.5.0.2/24 scope global v1\       valid_lft forever preferred_lft forever
Deleted 10.5.0.0/24 dev v1 proto kernel scope link src 10.5.0.2 
Deleted local 10.5.0.2 dev v1 table local proto kernel scope host src 10.5.0.2 
2: v1@if2: <BROADCAST,MULTICAST> mtu 1500 qdisc noqueue state DOWN group default \    link/ether b2:46:7e:52:72:f4 brd ff:ff:ff:ff:ff:ff link-netns rkt2
Deleted fe80::/64 dev v1 proto kernel metric 256 pref medium
Deleted 2: v1    inet6 fe80::b046:7eff:fe52:72f4/64 scope link tentative \       valid_lft forever preferred_lft forever
2: v1@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP group default \    link/ether b2:46:7e:52:72:f4 brd ff:ff:ff:ff:ff:ff link-netns rkt2
Deleted default via fe80::1 dev wlan0 proto ra metric 1024 expires 1790sec hoplimit 64 pref medium`.split('\n');

describe('reading ip -o monitor', () => {
  test('every recorded line: addresses, default routes and link states', () => {
    const events = RECORDED.map(parseIpMonitorLine);
    assert.ok(
      events.every((e) => e !== undefined),
      `every recorded line is understood: ${RECORDED.filter((_, i) => events[i] === undefined).join(' | ')}`,
    );
    const addresses = events.filter((e) => e?.kind === 'address');
    assert.deepEqual(addresses, [
      { kind: 'address', deleted: false, device: 'v1', address: '10.5.0.2' },
      { kind: 'address', deleted: false, device: 'v1', address: 'fd00::2' },
      { kind: 'address', deleted: false, device: 'v1', address: '10.6.0.2' },
      { kind: 'address', deleted: true, device: 'v1', address: '10.5.0.2' },
      { kind: 'address', deleted: true, device: 'v1', address: 'fe80::b046:7eff:fe52:72f4' },
    ]);
    assert.deepEqual(
      events.filter((e) => e?.kind === 'link').map((e) => e?.kind === 'link' && e.up),
      [false, true, false, true],
      'NO-CARRIER and a missing LOWER_UP are down',
    );
    assert.deepEqual(
      events.filter((e) => e?.kind === 'route' && e.isDefault).map((e) => e?.kind === 'route' && e.deleted),
      [false, false, true],
    );
    assert.equal(events.filter((e) => e?.kind === 'route' && !e.isDefault).length, 10);
  });

  test('lines it does not understand are left alone, whatever they hold', () => {
    for (const line of [
      '',
      'garbage',
      '2:',
      '2: v1',
      'Deleted',
      'Timestamp: Tue Dec  1 23:00:00 2026 123456 usec',
      '2: v1    inet notanaddress/24',
      'x'.repeat(100_000),
      '\u0000\u0001\u0002 dev via',
      'default', // no dev, no via
    ]) {
      assert.equal(parseIpMonitorLine(line), undefined, JSON.stringify(line.slice(0, 40)));
    }
  });

  test('the accumulator keeps what a session may care about and drops the rest', () => {
    const acc = new ChangeAccumulator();
    const kept = RECORDED.map((line) => acc.add(parseIpMonitorLine(line)!));
    const change = acc.take();
    assert.deepEqual([...change.added], ['10.5.0.2', 'fd00::2', '10.6.0.2']);
    assert.deepEqual([...change.removed], ['10.5.0.2'], 'a link-local address is nobody’s path');
    assert.equal(change.defaultRoute, true);
    assert.deepEqual([...change.links], [['v1', true]], 'the last state of each interface');
    assert.equal(kept.filter(Boolean).length, 11);
    assert.equal(acc.pending, false);
    // The same link state again is no change.
    assert.equal(acc.add({ kind: 'link', device: 'v1', up: true }), false);
    assert.equal(acc.add({ kind: 'link', device: 'v1', up: false }), true);
    assert.equal(describeChange(acc.take()), 'v1 down');
  });

  test('the interface of each address: learned at start, kept by address lines, still known while its interface is down', () => {
    const acc = new ChangeAccumulator();
    acc.learn({ lo: [{ address: '127.0.0.1' }], eth0: [{ address: '10.1.1.2' }, { address: 'fd00::2' }] });
    acc.add(parseIpMonitorLine('2: eth0: <BROADCAST,MULTICAST> mtu 1500 qdisc noqueue state DOWN group default')!);
    assert.equal(acc.take().interfaces.get('10.1.1.2'), 'eth0', 'an interface that went down keeps its addresses');
    acc.add(parseIpMonitorLine('3: wlan0    inet 10.7.0.2/24 scope global wlan0\\       valid_lft forever preferred_lft forever')!);
    acc.add(parseIpMonitorLine('Deleted 2: eth0    inet 10.1.1.2/24 scope global eth0\\       valid_lft forever preferred_lft forever')!);
    const change = acc.take();
    assert.equal(change.interfaces.get('10.7.0.2'), 'wlan0');
    assert.equal(change.interfaces.get('10.1.1.2'), undefined);
    assert.equal(change.interfaces.get('fd00::2'), 'eth0');
  });
});

// `route -n monitor` on macOS. The first blocks are its output as quoted in
// a vendor's support article (a VPN coming up, then `route -n flush -inet6`,
// macOS 14); the rest are written to the printf formats of print_rtmsg and
// pmsg_addrs in Apple's network_cmds route.c, with the addresses of a laptop
// whose Wi-Fi (en0, index 4) gives way to Ethernet (en7). No Mac runs here.
const ROUTE_MONITOR = `
got message of size 96 on Fri Apr  5 19:12:30 2024
RTM_NEWADDR: address being added to iface: len 96, metric 0, flags:<CLONING>
sockaddrs: <NETMASK,IFP,IFA,BRD>
 ffff:ffff:ffff:ffff:: ipsec0 fd54:20a4:d33b:b10c:8a6:0:1:1a00 default

got message of size 140 on Fri Apr  5 19:12:30 2024
RTM_ADD: Add Route: len 140, pid: 0, seq 0, errno 0, flags:<UP,HOST,LLINFO,LOCAL>
locks:  inits: 
sockaddrs: <DST,GATEWAY>
 fd54:20a4:d33b:b10c:8a6:0:1:1a00 

got message of size 200 on Fri Apr  5 19:21:22 2024
RTM_DELETE: Delete Route: len 200, pid: 4334, seq 0, errno 0, flags:<GATEWAY,DONE,PRCLONING,CONDEMNED,GLOBAL>
locks:  inits: 
sockaddrs: <DST,GATEWAY,NETMASK,IFP,IFA>
 :: fd54:20a4:d33b:b10c:: default ipsec0 fe80::aede:48ff:fe00:1122%ipsec0

got message of size 224 on Fri Apr  5 19:21:22 2024
RTM_DELETE: Delete Route: len 224, pid: 4334, seq 1, errno 0, ifscope 13, flags:<GATEWAY,DONE,PRCLONING,IFSCOPE,CONDEMNED,GLOBAL>
locks:  inits: 
sockaddrs: <DST,GATEWAY,NETMASK,IFP,IFA>
 :: fe80::%utun0 (255) ffff ffff ffff 0 0 0 0 0 0 0 0 0 0 utun0 fe80::d4fa:100c:1905:b9d8%utun0

got message of size 176 on Fri Apr  5 19:21:22 2024
RTM_DELETE: Delete Route: len 176, pid: 4334, seq 4, errno 3, ifscope 16, flags:<UP,GATEWAY,HOST,WASCLONED,PROTO3,IFSCOPE,GLOBAL>
locks:  inits: 
sockaddrs: <DST,GATEWAY,IFA>
 2001:4860:4860::8888 fd54:20a4:d33b:b10c:: fe80::aede:48ff:fe00:1122%ipsec0

got message of size 112 on Thu Dec  3 10:00:00 2026
RTM_IFINFO: iface status change: len 112, if# 4, flags:<UP,BROADCAST,b6,SIMPLEX,MULTICAST>

got message of size 64 on Thu Dec  3 10:00:00 2026
RTM_DELADDR: address being removed from iface: len 64, metric 0, flags:<UP>
sockaddrs: <NETMASK,IFP,IFA,BRD>
 255.255.255.0 en0:a4.83.e7.12.34.56 192.168.1.23 192.168.1.255

got message of size 92 on Thu Dec  3 10:00:00 2026
RTM_DELETE: Delete Route: len 92, pid: 0, seq 0, errno 0, flags:<UP,GATEWAY,DONE,STATIC,PRCLONING>
locks:  inits: 
sockaddrs: <DST,GATEWAY,NETMASK>
 default 192.168.1.1 default

got message of size 112 on Thu Dec  3 10:00:01 2026
RTM_IFINFO: iface status change: len 112, if# 9, flags:<UP,BROADCAST,b6,RUNNING,SIMPLEX,MULTICAST>

got message of size 64 on Thu Dec  3 10:00:01 2026
RTM_NEWADDR: address being added to iface: len 64, metric 0, flags:<UP>
sockaddrs: <NETMASK,IFP,IFA,BRD>
 255.255.255.0 en7:0.e0.4c.68.1.2 10.0.0.42 10.0.0.255

got message of size 108 on Thu Dec  3 10:00:01 2026
RTM_ADD: Add Route: len 108, pid: 112, seq 31, errno 0, flags:<UP,GATEWAY,DONE,STATIC,PRCLONING>
locks:  inits: 
sockaddrs: <DST,GATEWAY,NETMASK>
 default 10.0.0.1 default

got message of size 140 on Thu Dec  3 10:00:02 2026
RTM_ADD: Add Route: len 140, pid: 0, seq 0, errno 0, ifscope 9, flags:<UP,GATEWAY,DONE,STATIC,PRCLONING,IFSCOPE>
locks:  inits: 
sockaddrs: <DST,GATEWAY,NETMASK>
 default 10.0.0.1 default
`.split('\n');

const EN0_EN7 = (index: number) => ({ 4: 'en0', 9: 'en7' })[index];

describe('reading route -n monitor (macOS)', () => {
  test('addresses with their interface, unscoped default routes and link states; host and scoped routes are no change', () => {
    const reader = new RouteMonitorReader(EN0_EN7);
    const events = ROUTE_MONITOR.map((line) => reader.line(line)).filter((e) => e !== undefined);
    assert.deepEqual(events, [
      { kind: 'address', deleted: false, device: 'ipsec0', address: 'fd54:20a4:d33b:b10c:8a6:0:1:1a00' },
      { kind: 'route', deleted: true, isDefault: true }, // the IPv6 default through the VPN
      { kind: 'link', device: 'en0', up: false }, // UP without RUNNING: the Wi-Fi left
      { kind: 'address', deleted: true, device: 'en0', address: '192.168.1.23' },
      { kind: 'route', deleted: true, isDefault: true },
      { kind: 'link', device: 'en7', up: true },
      { kind: 'address', deleted: false, device: 'en7', address: '10.0.0.42' },
      { kind: 'route', deleted: false, isDefault: true },
    ]);
    const acc = new ChangeAccumulator();
    for (const e of events) acc.add(e);
    assert.equal(
      describeChange(acc.take()),
      'removed 192.168.1.23; added fd54:20a4:d33b:b10c:8a6:0:1:1a00, 10.0.0.42; en0 down; en7 up; default route changed',
    );
  });

  test('an interface the host cannot name is named by its index; an address route(8) could not print is an empty word', () => {
    const reader = new RouteMonitorReader(() => undefined);
    assert.deepEqual(reader.line('RTM_IFINFO: iface status change: len 112, if# 31, flags:'), { kind: 'link', device: 'if#31', up: false });
    assert.deepEqual(
      addressesOf(['DST', 'GATEWAY', 'NETMASK'], ':: fe80::%utun0 (255) ffff ffff 0 0'),
      new Map([
        ['DST', '::'],
        ['GATEWAY', 'fe80::%utun0'],
        ['NETMASK', '(255) ffff ffff 0 0'],
      ]),
    );
    assert.deepEqual(
      addressesOf(['DST', 'GATEWAY', 'IFA'], ' 10.0.0.1 10.0.0.42'),
      new Map([
        ['DST', ''],
        ['GATEWAY', '10.0.0.1'],
        ['IFA', '10.0.0.42'],
      ]),
    );
  });

  test('what it does not understand is left alone: other messages, broken blocks, garbage', () => {
    const reader = new RouteMonitorReader(EN0_EN7);
    for (const line of [
      '',
      'garbage',
      'got message of size 124 on Tue Dec  1 12:00:00 2026',
      'RTM_GET: Report Metrics: len 164, pid: 9588, seq 1, errno 0, flags:<UP,GATEWAY>',
      'RTM_MISS: Lookup failed on this address: len 92, pid: 0, seq 0, errno 0, flags:<>',
      'RTM_NEWMADDR: new multicast group membership on iface: len 48',
      ' 1.2.3.4 5.6.7.8', // addresses without a message
      'routing message version 3 not understood',
      'RTM_IFINFO: iface status change: len 112, flags:<UP,RUNNING>', // no index
      // A message cut off before its addresses, then garbage where they would be.
      'RTM_DELADDR: address being removed from iface: len 64, metric 0, flags:<UP>',
      'sockaddrs: <NETMASK,IFP,IFA,BRD>',
      'got message of size 64 on Thu Dec  3 10:00:00 2026',
      ' 255.255.255.0 en0 192.168.1.23 192.168.1.255',
      'RTM_ADD: Add Route: len 92, pid: 0, seq 0, errno 0, flags:<UP,GATEWAY,STATIC>',
      'locks:  inits: ',
      'sockaddrs: <DST,GATEWAY,NETMASK>',
      ' 10.9.0.0 10.0.0.1 255.255.0.0', // not a default route
      'x'.repeat(100_000),
      '\u0000RTM_DELADDR: \u0001',
    ]) {
      assert.equal(reader.line(line), undefined, JSON.stringify(line.slice(0, 60)));
    }
  });

  test('an interface index is found through its IPv6 link-local address, as `ip link` numbers it', {
    skip: process.platform !== 'linux' && 'reads ip link',
  }, () => {
    const withLinkLocal = Object.entries(networkInterfaces()).flatMap(([name, list]) =>
      (list ?? []).filter((a) => a.family === 'IPv6' && a.address.startsWith('fe80:')).map((a) => [name, a.scopeid] as const),
    );
    if (withLinkLocal.length === 0) return void assert.equal(nameOfIndex(1), undefined);
    for (const [name, index] of withLinkLocal) {
      assert.equal(nameOfIndex(index!), name);
      const link = execFileSync('ip', ['-o', 'link', 'show', 'dev', name], { encoding: 'utf8' });
      assert.equal(Number(link.split(':')[0]), index, `ip link numbers ${name} ${index}`);
    }
    assert.equal(nameOfIndex(1_000_000), undefined);
  });
});

describe('the watcher', () => {
  test('a burst of lines reaches every subscriber as one change; a stall at once', async () => {
    const watcher = new NetworkWatcher();
    const seen: NetworkChange[][] = [[], []];
    // The test feeds lines itself: subscribing where `ip` exists would also start the real monitor, which sees nothing here.
    const off = [watcher.subscribe((c) => seen[0].push(c)), watcher.subscribe((c) => seen[1].push(c))];
    try {
      watcher.onLine('Deleted 2: eth0    inet 10.1.1.2/24 scope global eth0');
      watcher.onLine('2: eth0    inet 10.1.2.2/24 scope global eth0');
      watcher.onLine('default via 10.1.2.1 dev eth0');
      watcher.onLine('10.1.2.0/24 dev eth0 proto kernel scope link src 10.1.2.2'); // not a change anyone acts on
      assert.equal(seen[0].length, 0, 'held until the burst settles');
      await sleep(100);
      for (const list of seen) {
        assert.equal(list.length, 1);
        assert.equal(describeChange(list[0]), 'removed 10.1.1.2; added 10.1.2.2; default route changed');
      }
      watcher.reportStall(30_000);
      assert.equal(seen[0].length, 2);
      assert.equal(seen[0][1].stalledMs, 30_000);
      off[0]();
      watcher.reportStall(5000);
      assert.deepEqual([seen[0].length, seen[1].length], [2, 3], 'an unsubscribed listener hears nothing more');
    } finally {
      for (const f of off) f();
    }
  });

  test('one connection after another: the monitor starts once, after the caller is done, and outlives each of them', {
    skip: process.platform !== 'linux' && 'the monitor command is Linux and macOS only',
  }, async () => {
    const watcher = new NetworkWatcher();
    for (let i = 0; i < 5; i++) {
      const off = watcher.subscribe(() => {});
      assert.equal(watcher.starts, i === 0 ? 0 : 1, 'not started inside subscribe');
      await new Promise((resolve) => setImmediate(resolve));
      off();
    }
    assert.equal(watcher.starts, 1);
  });
  test('macOS: route -n monitor runs under a shell that stops it when we let go; its blocks arrive as one change', {
    skip: process.platform === 'win32' && 'needs sh',
  }, async () => {
    // A stand-in for route(8), which is macOS's: it prints the blocks above, then waits as route does.
    const dir = mkdtempSync(join(tmpdir(), 'rocks-route-'));
    const pidFile = join(dir, 'pid');
    writeFileSync(join(dir, 'blocks'), ROUTE_MONITOR.join('\n'));
    writeFileSync(
      join(dir, 'route'),
      `#!/bin/sh\n[ "$*" = "-n monitor" ] || exit 64\necho $$ > ${pidFile}\ncat ${join(dir, 'blocks')}\nexec sleep 600\n`,
      { mode: 0o755 },
    );
    const path = process.env.PATH;
    process.env.PATH = `${dir}:${path}`;
    const watcher = new NetworkWatcher('darwin');
    const seen: NetworkChange[] = [];
    const off = watcher.subscribe((c) => seen.push(c));
    try {
      await until(() => seen.length > 0 && existsSync(pidFile), 5000, 'a change from the stand-in route');
      process.env.PATH = path;
      await sleep(100);
      assert.equal(seen.length, 1, 'one burst, one change');
      const change = seen[0];
      assert.deepEqual([...change.removed], ['192.168.1.23']);
      assert.deepEqual([...change.added].sort(), ['10.0.0.42', 'fd54:20a4:d33b:b10c:8a6:0:1:1a00']);
      assert.equal(change.defaultRoute, true);
      // The interfaces are this host's with those indexes, if it has them, else named by number.
      assert.deepEqual(
        [...change.links],
        [
          [nameOfIndex(4) ?? 'if#4', false],
          [nameOfIndex(9) ?? 'if#9', true],
        ],
      );
      assert.equal(change.interfaces.get('10.0.0.42'), 'en7');
      const pid = Number(readFileSync(pidFile, 'utf8'));
      assert.ok(alive(pid), 'route runs while sessions listen');
      off();
      watcher.stop();
      await until(() => !alive(pid), 5000, 'route to end with the watcher');
    } finally {
      process.env.PATH = path;
      off();
      watcher.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the scheduler', () => {
  test('a target wakes at its deadline or just after, never before; its scheduledAt is whole milliseconds', async () => {
    const scheduler = new Scheduler();
    scheduler.ref();
    const at = monotonicNow() + 20.4;
    let wake: (now: number) => void = () => {};
    const woke = new Promise<number>((resolve) => {
      wake = resolve;
    });
    const target = { scheduledAt: undefined as number | undefined, onTimer: (now: number) => wake(now) };
    scheduler.schedule(target, at);
    // A small integer, where a fraction would be a boxed number on every session.
    assert.equal(target.scheduledAt, Math.ceil(at));
    const now = await woke;
    scheduler.unref();
    assert.ok(now >= at, `woke ${(at - now).toFixed(2)} ms early`);
  });
});

describe('stall detection (the scheduler)', () => {
  test('a timer made late by a busy event loop is not a stall', async () => {
    const scheduler = new Scheduler();
    const stalls: number[] = [];
    scheduler.onStall = (ms) => stalls.push(ms);
    scheduler.ref();
    const fired = new Promise<void>((resolve) => scheduler.schedule({ scheduledAt: undefined, onTimer: () => resolve() }, monotonicNow() + 10));
    // 1.5 s of work in one callback (thousands of sessions resuming at once): the timer fires that late.
    const until = Date.now() + 1500;
    while (Date.now() < until);
    await fired;
    scheduler.unref();
    assert.deepEqual(stalls, []);
  });

  test('a process stopped while it waited (SIGSTOP) reports the stall', { skip: process.platform === 'win32' && 'no SIGSTOP' }, async () => {
    const scheduler = new URL('../../src/node/scheduler.js', import.meta.url).href;
    const child = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `import { Scheduler, monotonicNow } from ${JSON.stringify(scheduler)};
         const s = new Scheduler();
         s.ref();
         let stalled = 0;
         s.onStall = (ms) => (stalled = ms);
         s.schedule({ scheduledAt: undefined, onTimer: () => console.log(JSON.stringify({ stalled })) }, monotonicNow() + 500);
         console.log('armed');`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    assert.equal((await lines.next()).value, 'armed');
    await sleep(100);
    child.kill('SIGSTOP');
    await sleep(2000);
    child.kill('SIGCONT');
    const { stalled } = JSON.parse((await lines.next()).value as string) as { stalled: number };
    assert.ok(stalled >= 1200, `stall reported: ${stalled} ms`);
    await once(child, 'exit');
  });
});
