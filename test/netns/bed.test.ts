// The network test bed itself: each fault does what it says on real
// connections, and nothing of a bed outlives it: not after destroy(), not
// after its process was interrupted, and a killed process's bed is swept by
// the next one. Needs root; skipped with the reason otherwise.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, test } from 'node:test';
import { NetBed, netbedSkip } from '../bed/netbed.js';
import { readJsonLines, until } from '../support/helpers.js';

const skip = netbedSkip();
const NETBED = new URL('../bed/netbed.js', import.meta.url).href;
const ECHO_PORT = 9000;

const namespaces = (): string[] =>
  execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0])
    .filter(Boolean);

/** What a new TCP connection from the client host to the server's echo gets: 'ok FROM-ADDRESS' or the error code. */
async function tryConnect(bed: NetBed, ms = 1500): Promise<string> {
  const script = `
    const s = require('node:net').connect(${ECHO_PORT}, '${bed.serverAddress}');
    const done = (r) => { console.log(r); process.exit(0); };
    s.setTimeout(${ms}, () => done('timeout'));
    s.on('connect', () => { s.write('x'); s.once('data', () => done('ok ' + s.localAddress)); });
    s.on('error', (e) => done(e.code));`;
  const child = bed.spawn('client', process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  await once(child, 'exit');
  return out.trim();
}

/** Runs a child process that makes a bed, prints its namespaces, then waits to be killed with `signal`. */
async function bedInChild(signal: NodeJS.Signals): Promise<string[]> {
  const script = `
    const { NetBed } = await import('${NETBED}');
    const bed = new NetBed();
    console.log(JSON.stringify(Object.values(bed.ns)));
    setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const names = await new Promise<string[]>((resolve) => readJsonLines(child.stdout!, resolve));
  assert.ok(
    names.every((n) => namespaces().includes(n)),
    'the child made its bed',
  );
  child.kill(signal);
  await once(child, 'exit');
  return names;
}

describe('network test bed', { skip }, () => {
  test('each fault acts on real connections: black hole, reset, move, link down, bandwidth', { timeout: 60_000 }, async () => {
    const bed = new NetBed();
    try {
      const echo = bed.spawn('server', 'socat', [`TCP-LISTEN:${ECHO_PORT},reuseaddr,fork`, 'EXEC:cat'], { stdio: 'ignore' });
      try {
        await until(async () => (await tryConnect(bed)).startsWith('ok'), 5000, 'the echo server on the server host', 100);
        assert.equal(await tryConnect(bed), `ok ${bed.clientAddress}`);

        bed.blackhole();
        assert.equal(await tryConnect(bed), 'timeout', 'a black hole answers nothing');
        assert.ok(bed.faultCounter() > 0, 'the router dropped packets');
        bed.heal();
        assert.equal(await tryConnect(bed), `ok ${bed.clientAddress}`);

        bed.reject();
        assert.match(await tryConnect(bed), /^(ECONNRESET|ECONNREFUSED)$/, 'a reset rule answers with RST');
        bed.heal();

        const before = bed.clientAddress;
        const after = bed.moveClient();
        assert.notEqual(after, before);
        assert.doesNotMatch(
          bed.ip(bed.ns.client, 'addr', 'show', 'dev', 'eth0'),
          new RegExp(`${before.replaceAll('.', '\\.')}/`),
          'the old address is gone',
        );
        assert.equal(await tryConnect(bed), `ok ${after}`, 'connections come from the new address');

        bed.linkDown();
        assert.match(await tryConnect(bed), /^(ENETUNREACH|EHOSTUNREACH)$/);
        bed.linkUp();
        assert.equal(await tryConnect(bed), `ok ${after}`);

        bed.shape(8);
        const qdiscs = execFileSync('tc', ['-n', bed.ns.router, 'qdisc', 'show'], { encoding: 'utf8' });
        assert.match(qdiscs, /tbf .* dev to-client root .*rate 8Mbit/);
        assert.match(qdiscs, /tbf .* dev to-server root .*rate 8Mbit/);
      } finally {
        echo.kill();
      }
    } finally {
      bed.destroy();
    }
    assert.deepEqual(bed.leftovers(), [], 'destroy() deleted the namespaces');
  });

  test('nothing is left behind: destroy(), an interrupted process, and a killed one (swept by the next bed)', { timeout: 60_000 }, async () => {
    const linksBefore = execFileSync('ip', ['-o', 'link'], { encoding: 'utf8' }).split('\n').length;

    const bed = new NetBed();
    bed.blackhole();
    bed.shape(10);
    bed.destroy();
    assert.deepEqual(bed.leftovers(), []);

    const interrupted = await bedInChild('SIGTERM');
    assert.deepEqual(
      interrupted.filter((n) => namespaces().includes(n)),
      [],
      'an interrupted process deletes its bed on the way out',
    );

    const killed = await bedInChild('SIGKILL');
    assert.deepEqual(
      killed.filter((n) => namespaces().includes(n)),
      killed,
      'SIGKILL leaves the bed behind...',
    );
    const next = new NetBed();
    next.destroy();
    assert.deepEqual(
      killed.filter((n) => namespaces().includes(n)),
      [],
      '...until the next bed sweeps it',
    );

    // The veths, addresses, routes, qdiscs and nftables tables all lived in those namespaces; none reached this one.
    assert.equal(execFileSync('ip', ['-o', 'link'], { encoding: 'utf8' }).split('\n').length, linksBefore, 'no link left in the root namespace');
    assert.doesNotMatch(execFileSync('nft', ['list', 'tables'], { encoding: 'utf8' }), /rkbed/, 'no nftables table in the root namespace');
  });
});
