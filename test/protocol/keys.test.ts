// Key pairs under garbage-collection pressure. In Node 20, X25519 pairs from
// generateKeyPairSync leave a job object whose destructor, run by the
// collector while the key's lock is held, waits for that lock forever: the
// fuzz and security tests stopped at 0% CPU now and then, and a server could
// too. With a 1 MiB young generation (collections all the time) the old code
// stopped within seconds in 5 runs of 5; keyPairFromSeed must run through.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';

const KEYS = new URL('../../src/protocol/keys.js', import.meta.url).href;
const PAIRS = 60_000;
/** Far above the few seconds the pairs take, even on a loaded machine. */
const DEADLINE_MS = 90_000;

test(`${PAIRS} key pairs and agreements with constant garbage collection: the process never stops`, async () => {
  const script = `
    import { deriveSessionKey, freshKeyPair } from ${JSON.stringify(KEYS)};
    const id = Buffer.alloc(16);
    let peer = freshKeyPair();
    for (let i = 0; i < ${PAIRS}; i++) {
      const own = freshKeyPair();
      if (i % 8 === 0) deriveSessionKey(own, peer.publicKey, id, own.publicKey, peer.publicKey);
      if (i % 64 === 0) peer = own;
    }
    console.log('done');
  `;
  const child = spawn(process.execPath, ['--max-semi-space-size=1', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const started = performance.now();
  const timer = setTimeout(() => child.kill('SIGKILL'), DEADLINE_MS);
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on('close', (c, s) => resolve([c, s])));
  clearTimeout(timer);
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  console.log(`# ${PAIRS} key pairs in ${seconds} s`);
  assert.equal(signal, null, `the key-pair loop stopped (killed after ${DEADLINE_MS / 1000} s): a deadlock`);
  assert.equal(code, 0);
  assert.equal(out.trim(), 'done');
});
