// The network watcher's reading of `ip -o monitor address route link` (and
// of macOS's `route -n monitor`), against output recorded on this kernel:
// which lines are changes a session may care about, and which are not.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { describe, test } from 'node:test';
import {
  ChangeAccumulator,
  describeChange,
  type NetworkChange,
  NetworkWatcher,
  parseIpMonitorLine,
  parseRouteMonitorLine,
} from '../../src/node/network-watch.js';
import { monotonicNow, Scheduler } from '../../src/node/scheduler.js';
import { sleep } from '../support/helpers.js';

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

describe('reading route -n monitor (macOS)', () => {
  test('address and interface messages are changes; the rest are not', () => {
    assert.deepEqual(parseRouteMonitorLine('RTM_DELADDR: address being removed from iface: len 124, metric 0, flags:<UP>'), {
      kind: 'address',
      deleted: true,
      device: '',
      address: '',
    });
    assert.equal(parseRouteMonitorLine('RTM_NEWADDR: address being added to iface: len 124')?.kind, 'address');
    assert.deepEqual(parseRouteMonitorLine('RTM_IFINFO: iface status change: len 112, if# 6, flags:<BROADCAST,SIMPLEX,MULTICAST,DOWN>'), {
      kind: 'link',
      device: '',
      up: false,
    });
    for (const line of ['got message of size 124 on Tue Dec  1 12:00:00 2026', 'RTM_ADD: Add Route: len 132', 'sockaddrs: <DST,GATEWAY>', '']) {
      assert.equal(parseRouteMonitorLine(line), undefined, line);
    }
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
