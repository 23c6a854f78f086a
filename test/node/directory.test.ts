// Node directories (src/node/directory.ts, src/node/redis-directory.ts):
// how the nodes of a deployment find each other. The Redis one runs against
// a real redis-server on a free port, killed and restarted in the middle; a
// node that stops renewing is a real process killed with SIGKILL.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { type NodeAddress, type NodeDirectory, StaticDirectory } from '../../src/node/directory.js';
import { RedisDirectory, type RedisDirectoryOptions } from '../../src/node/redis-directory.js';
import { type Program, sleep, until } from '../support/helpers.js';
import { freePort, programs, start, waitForPort } from '../support/programs.js';

/** What a directory emitted, for asserting on later. */
function record(directory: NodeDirectory) {
  const log = { errors: [] as string[], changes: [] as [number, NodeAddress | undefined][], reachable: [] as boolean[] };
  directory.on('error', (err) => log.errors.push(err.message));
  directory.on('change', (nodeId, address) => log.changes.push([nodeId, address]));
  directory.on('reachable', (r) => log.reachable.push(r));
  return log;
}

// Nothing a directory does may end up as an exception nobody catches.
const escaped: unknown[] = [];
const onEscape = (err: unknown) => escaped.push(err);
before(() => {
  process.on('uncaughtException', onEscape);
  process.on('unhandledRejection', onEscape);
});
after(() => {
  process.off('uncaughtException', onEscape);
  process.off('unhandledRejection', onEscape);
  assert.deepEqual(escaped, [], 'no uncaught exception or unhandled rejection');
});

describe('StaticDirectory', () => {
  test('addresses from the list at once; isMember from the names resolved at start; a name that does not resolve is an error event, not a failure', async () => {
    const directory = new StaticDirectory(
      [
        { nodeId: 1, host: 'localhost', port: 7001 },
        { nodeId: 2, host: '127.0.0.2', port: 7002 },
        { nodeId: 3, host: '2001:db8::3', port: 7003 },
        { nodeId: 4, host: 'no-such-host.invalid', port: 7004 },
        { nodeId: 5, host: 'compose_service', port: 7005 }, // a name Docker gives, underscore and all
      ],
      { resolveEveryMs: 0 },
    );
    const log = record(directory);
    assert.deepEqual(directory.addressOf(1), { host: 'localhost', port: 7001 });
    assert.equal(directory.isMember('127.0.0.1'), false, 'names are not looked up before start');
    await directory.start();
    assert.deepEqual(await directory.resolve(4), { host: 'no-such-host.invalid', port: 7004 }, 'the address stays: connecting may resolve it later');
    assert.equal(await directory.resolve(6), undefined);
    for (const ip of ['127.0.0.1', '127.0.0.2', '::ffff:127.0.0.2', '2001:db8::3', '2001:DB8:0::3']) assert.equal(directory.isMember(ip), true, ip);
    for (const ip of ['127.0.0.3', '10.0.0.1', '::1', 'localhost', '', 'garbage', '2001:db8::4']) assert.equal(directory.isMember(ip), false, ip);
    assert.deepEqual(
      log.errors.map((e) => /cannot resolve (\S+):/.exec(e)?.[1]).sort(),
      ['compose_service', 'no-such-host.invalid'],
      log.errors.join('\n'),
    );
    await directory.close();
  });

  test('a bad peer list is refused at construction with a clear error', () => {
    const ok = { nodeId: 1, host: '10.0.0.1', port: 1 };
    assert.throws(() => new StaticDirectory([ok, { ...ok, host: '10.0.0.2' }]), /node id 1 is listed twice/);
    assert.throws(() => new StaticDirectory([{ ...ok, nodeId: -1 }]), /node id -1 is not an integer/);
    assert.throws(() => new StaticDirectory([{ ...ok, nodeId: 2 ** 32 }]), /not an integer 0-4294967295/);
    assert.throws(() => new StaticDirectory([{ ...ok, port: 0 }]), /port 0 is not 1-65535/);
    assert.throws(() => new StaticDirectory([{ ...ok, host: 'bad host' }]), /host "bad host" is not an IP address or a DNS name/);
    assert.throws(() => new StaticDirectory([{ ...ok, host: '' }]), /is not an IP address or a DNS name/);
  });
});

describe('RedisDirectory against a real redis-server', () => {
  const found = programs('redis-server');
  let redisPort = 0;
  let redis: Program | undefined;
  let client: Redis | undefined;
  const directories: RedisDirectory[] = [];

  let finished = false;
  const startRedis = async (): Promise<void> => {
    // A test that failed through an uncaught exception runs on after the hooks: it must not start a server nobody stops.
    if (finished) throw new Error('the suite has ended');
    redis = start(found.paths['redis-server'], ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']);
    await waitForPort(redisPort, '127.0.0.1', 10_000, redis);
  };

  before(async () => {
    if (found.skip) return;
    redisPort = await freePort();
    await startRedis();
    client = new Redis(redisPort, '127.0.0.1', { maxRetriesPerRequest: 1, retryStrategy: () => 100 });
    client.on('error', () => {}); // it lives through the restart below
  });
  after(
    async () => {
      finished = true;
      await Promise.all(directories.map((d) => d.close()));
      client?.disconnect();
      await redis?.stop();
    },
    { timeout: 10_000 },
  );

  /** A directory on the test's Redis, each test under its own prefix; closed at the end. */
  const directory = (prefix: string, nodeId: number, host: string, extra: Partial<RedisDirectoryOptions> = {}): RedisDirectory => {
    const d = new RedisDirectory({
      url: `redis://127.0.0.1:${redisPort}`,
      nodeId,
      advertise: { host, port: 7000 + nodeId },
      prefix,
      leaseMs: 1500,
      refreshMs: 50,
      ...extra,
    });
    directories.push(d);
    return d;
  };

  test('two nodes see each other: addresses, isMember, change events; a miss costs one GET', { skip: found.skip }, async () => {
    const a = directory('t1:', 1, '127.0.0.1');
    const b = directory('t1:', 2, '127.0.0.2');
    const aLog = record(a);
    await a.start();
    await b.start();
    assert.deepEqual(b.addressOf(1), { host: '127.0.0.1', port: 7001 }, 'b read a at start');
    assert.deepEqual(b.addressOf(2), { host: '127.0.0.2', port: 7002 }, 'a node knows itself');
    await until(() => a.addressOf(2) !== undefined, 5000, 'a to read b');
    assert.deepEqual(a.addressOf(2), { host: '127.0.0.2', port: 7002 });
    assert.deepEqual(aLog.changes, [
      [1, { host: '127.0.0.1', port: 7001 }],
      [2, { host: '127.0.0.2', port: 7002 }],
    ]);
    for (const ip of ['127.0.0.1', '127.0.0.2', '::ffff:127.0.0.2']) assert.equal(a.isMember(ip), true, ip);
    assert.equal(a.isMember('127.0.0.3'), false);
    assert.equal(await client!.get('t1:1'), '{"host":"127.0.0.1","port":7001}', 'one key per node, the address as JSON');
    const ttl = await client!.pttl('t1:1');
    assert.ok(ttl > 0 && ttl <= 1500, `the key has a lease: ${ttl} ms left`);

    // A node that reads rarely learns of a newcomer on its first resolve() for it, with one GET.
    const c = directory('t1:', 3, '127.0.0.3', { refreshMs: 60_000 });
    await c.start();
    const d = directory('t1:', 4, '127.0.0.4');
    await d.start();
    assert.equal(c.addressOf(4), undefined);
    const before = await commandCount('get');
    assert.deepEqual(await c.resolve(4), { host: '127.0.0.4', port: 7004 });
    assert.deepEqual(c.addressOf(4), { host: '127.0.0.4', port: 7004 }, 'kept');
    assert.equal(await c.resolve(99), undefined);
    assert.equal(await c.resolve(99), undefined, 'a miss is remembered until the next read');
    assert.equal((await commandCount('get')) - before, 2, 'one GET for the newcomer, one for the unknown id, none for the repeat');
    assert.deepEqual(aLog.errors, []);
  });

  /** How many times Redis ran `command` (INFO commandstats). */
  async function commandCount(command: string): Promise<number> {
    const stats = await client!.info('commandstats');
    return Number(new RegExp(`cmdstat_${command}:calls=(\\d+)`).exec(stats)?.[1] ?? 0);
  }

  /** A node in its own process (a real one to SIGKILL or SIGSTOP), with a RedisDirectory on the test's Redis. */
  async function nodeProcess(prefix: string, nodeId: number, host: string, leaseMs: number): Promise<Program> {
    const modulePath = fileURLToPath(new URL('../../src/node/redis-directory.js', import.meta.url));
    const options = { url: `redis://127.0.0.1:${redisPort}`, nodeId, advertise: { host, port: 7000 + nodeId }, prefix, leaseMs };
    const script = `
      import { RedisDirectory } from ${JSON.stringify(modulePath)};
      const d = new RedisDirectory(${JSON.stringify(options)});
      d.on('error', (err) => console.log(err.message));
      await d.start();
      console.log('started');
      setInterval(() => {}, 1000);`;
    const node = start(process.execPath, ['--input-type=module', '-e', script]);
    await node.waitForOutput(/started/);
    return node;
  }

  test('a node killed with SIGKILL drops out when its lease ends; one closed cleanly drops out at once', { skip: found.skip }, async () => {
    const a = directory('t2:', 1, '127.0.0.1', { leaseMs: 600 });
    const aLog = record(a);
    await a.start();
    const node = await nodeProcess('t2:', 2, '127.0.0.2', 600);
    try {
      await until(() => a.addressOf(2) !== undefined, 5000, 'a to see node 2');
      node.child.kill('SIGKILL');
      const killedAt = performance.now();
      await node.exit;
      await until(() => a.addressOf(2) === undefined, 5000, 'node 2 to drop out');
      console.log(`# node 2 dropped out ${Math.round(performance.now() - killedAt)} ms after SIGKILL (lease 600 ms)`);
      assert.equal(a.isMember('127.0.0.2'), false);
      assert.deepEqual(aLog.changes.at(-1), [2, undefined]);
    } finally {
      await node.stop();
    }

    const b = directory('t2:', 3, '127.0.0.3', { leaseMs: 60_000 });
    await b.start();
    await until(() => a.addressOf(3) !== undefined, 5000, 'a to see node 3');
    await b.close();
    assert.equal(await client!.exists('t2:3'), 0, 'close() deleted its key');
    await until(() => a.addressOf(3) === undefined, 5000, 'node 3 to drop out');
    assert.deepEqual(aLog.errors, []);
  });

  test('Redis killed mid-run: addresses still answer, nothing throws; restarted on the same port, the leases come back, a late node is kept meanwhile', {
    skip: found.skip,
    timeout: 20_000,
  }, async () => {
    // A longer lease: a keeps the late node for one lease after Redis is back, and a loaded machine must not make that too short.
    const a = directory('t3:', 1, '127.0.0.1', { leaseMs: 3000 });
    const b = directory('t3:', 2, '127.0.0.2', { leaseMs: 3000 }); // no 'error' listener: errors must still not crash anything
    const aLog = record(a);
    await a.start();
    await b.start();
    // Node 3 will be late to set its lease again: stopped (SIGSTOP) over the restart.
    const late = await nodeProcess('t3:', 3, '127.0.0.3', 1500);
    try {
      await until(() => a.addressOf(2) !== undefined && a.addressOf(3) !== undefined, 5000, 'a to see b and node 3');
      late.child.kill('SIGSTOP');

      redis!.child.kill('SIGKILL');
      await redis!.exit;
      const killedAt = performance.now();
      await until(() => !a.reachable && !b.reachable, 5000, 'both to notice');
      await sleep(300); // several renewals and reads fail meanwhile
      assert.deepEqual(a.addressOf(2), { host: '127.0.0.2', port: 7002 }, 'last known address');
      assert.deepEqual(b.addressOf(1), { host: '127.0.0.1', port: 7001 });
      assert.equal(a.isMember('127.0.0.2'), true);
      assert.equal(await a.resolve(42), undefined, 'a miss answers at once while Redis is away');
      assert.deepEqual(await a.resolve(2), { host: '127.0.0.2', port: 7002 });
      assert.equal(aLog.errors.length, 1, `one error for the outage, not one per retry:\n${aLog.errors.join('\n')}`);
      assert.match(aLog.errors[0], /lost Redis at redis:\/\/127\.0\.0\.1:\d+.*using the last known addresses/);

      await startRedis(); // empty: it saved nothing
      await until(async () => (await client!.exists('t3:1', 't3:2').catch(() => 0)) === 2, 10_000, 'both leases to be set again');
      console.log(`# leases back ${Math.round(performance.now() - killedAt)} ms after Redis was killed`);
      await until(() => a.reachable && b.reachable, 5000, 'both to be reachable');
      await sleep(300); // a reads several times while node 3's entry is missing
      assert.equal(await client!.exists('t3:3'), 0, 'node 3 has not set its lease again yet');
      assert.deepEqual(a.addressOf(3), { host: '127.0.0.3', port: 7003 }, 'kept for a lease after Redis came back');
      late.child.kill('SIGCONT');
      await until(async () => (await client!.exists('t3:3')) === 1, 5000, "node 3's lease to be set again");
      await sleep(200);
      assert.deepEqual(aLog.reachable, [false, true]);
      assert.deepEqual(
        aLog.changes.filter(([, address]) => address === undefined),
        [],
        'no node dropped out while the others set their leases again',
      );
      assert.deepEqual(a.addressOf(2), { host: '127.0.0.2', port: 7002 });
      assert.equal(aLog.errors.length, 1);
    } finally {
      late.child.kill('SIGCONT');
      await late.stop();
    }
  });

  test('bad entries are ignored for their node id only, each reported once; fixed, they count', { skip: found.skip }, async () => {
    const a = directory('t4:', 1, '127.0.0.1');
    const aLog = record(a);
    await a.start();
    const b = directory('t4:', 2, '127.0.0.2');
    await b.start();
    await client!.set('t4:7', 'not json');
    await client!.set('t4:8', '{"host":"10.0.0.8","port":70000}');
    await client!.set('t4:9', '{"host":"10.0.0.9","port":9}');
    await client!.set('t4:10', '{"host":"evil host\\n","port":1}');
    await client!.set('t4:abc', '{"host":"10.0.0.11","port":11}');
    await until(
      () => a.addressOf(9) !== undefined && aLog.errors.length >= 4,
      5000,
      () => `a to read them:\n${aLog.errors.join('\n')}`,
    );
    await sleep(200); // several more reads
    assert.deepEqual(aLog.errors.sort(), [
      'node directory: entry t4:10 ignored: host "evil host\\n" is not an IP address or a DNS name',
      'node directory: entry t4:7 ignored: not JSON (Unexpected token \'o\', "not json" is not valid JSON)',
      'node directory: entry t4:8 ignored: port 70000 is not 1-65535',
      "node directory: key t4:abc ignored: 'abc' after the prefix is not a node id",
    ]);
    assert.equal(a.addressOf(7), undefined);
    assert.equal(a.addressOf(8), undefined);
    assert.equal(a.addressOf(10), undefined);
    assert.deepEqual(a.addressOf(9), { host: '10.0.0.9', port: 9 });
    assert.deepEqual(a.addressOf(2), { host: '127.0.0.2', port: 7002 }, 'the others untouched');
    assert.equal(a.isMember('10.0.0.8'), false);

    await client!.set('t4:7', '{"host":"10.0.0.7","port":7}');
    await until(() => a.addressOf(7) !== undefined, 5000, 'the fixed entry');
    await client!.set('t4:9', '{"port":9}');
    await until(() => a.addressOf(9) === undefined, 5000, 'the broken entry to drop its node');
    assert.equal(aLog.errors.length, 5);
    assert.match(aLog.errors[4], /entry t4:9 ignored: host undefined/);
    assert.deepEqual(aLog.changes.at(-1), [9, undefined]);
    assert.equal(a.isMember('10.0.0.9'), false);

    // Found by resolve() on a node that reads rarely: ignored the same way.
    const c = directory('t4:', 3, '127.0.0.3', { refreshMs: 60_000 });
    const cLog = record(c);
    await c.start();
    cLog.errors.length = 0;
    await client!.set('t4:12', '{"host":"10.0.0.12"}');
    assert.equal(await c.resolve(12), undefined);
    assert.deepEqual(cLog.errors, ['node directory: entry t4:12 ignored: port undefined is not 1-65535']);
  });

  test('a node id held by a live node at another address is refused at start; the same address may take it again', { skip: found.skip }, async () => {
    const a = directory('t5:', 1, '127.0.0.1');
    await a.start();
    const twin = directory('t5:', 1, '127.0.0.9');
    await assert.rejects(
      twin.start(),
      /node id 1 is held by a live node at \{"host":"127.0.0.1","port":7001\} \(this node advertises \{"host":"127.0.0.9","port":7001\}\); give each node its own node id \(or wait \d+ ms/,
    );
    assert.equal(await client!.get('t5:1'), '{"host":"127.0.0.1","port":7001}', 'the holder keeps its key');
    const restarted = directory('t5:', 1, '127.0.0.1');
    await restarted.start();
    assert.deepEqual(a.addressOf(1), { host: '127.0.0.1', port: 7001 });
  });

  test('without advertise, a node advertises the address it listens on; a wildcard one is refused', { skip: found.skip }, async () => {
    const url = `redis://127.0.0.1:${redisPort}`;
    const d = new RedisDirectory({ url, nodeId: 1, prefix: 't6:', leaseMs: 1500 });
    directories.push(d);
    await d.start({ address: '127.0.0.5', family: 'IPv4', port: 7105 });
    assert.equal(await client!.get('t6:1'), '{"host":"127.0.0.5","port":7105}');
    for (const listening of [
      { address: '0.0.0.0', family: 'IPv4', port: 1 },
      { address: '::', family: 'IPv6', port: 1 },
      '/tmp/sock',
      null,
      undefined,
    ]) {
      const w = new RedisDirectory({ url, nodeId: 2, prefix: 't6:' });
      await assert.rejects(w.start(listening), /no address to advertise to the other nodes: give one \(rock serve --advertise HOST:PORT\)/);
    }
  });

  test('start() fails clearly when Redis cannot be reached, and leaves nothing running', async () => {
    const port = await freePort();
    const d = new RedisDirectory({ url: `redis://:secret@127.0.0.1:${port}`, nodeId: 1, advertise: { host: '127.0.0.1', port: 7001 } });
    await assert.rejects(d.start(), (err: Error) => {
      assert.match(err.message, new RegExp(`^node directory: cannot use Redis at redis://:\\*\\*\\*@127\\.0\\.0\\.1:${port}: connect ECONNREFUSED`));
      return true;
    });
    await d.close();
    assert.throws(() => new RedisDirectory({ url: 'redis://x', nodeId: 1.5, advertise: { host: 'h', port: 1 } }), /node id 1.5 is not an integer/);
    assert.throws(() => new RedisDirectory({ url: 'redis://x', nodeId: 1, advertise: { host: 'h', port: 0 } }), /port 0 is not 1-65535/);
    assert.throws(() => new RedisDirectory({ url: 'redis://x', nodeId: 1, advertise: { host: 'h', port: 1 }, leaseMs: 0 }), /leaseMs 0/);
  });
});
