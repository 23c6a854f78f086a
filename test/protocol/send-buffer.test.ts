import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { SendBuffer } from '../../src/protocol/send-buffer.js';

function readAll(b: SendBuffer, max = Infinity): Buffer {
  const out: Buffer[] = [];
  b.read(max, out);
  return Buffer.concat(out);
}

test('send buffer: append, read, trim and rewind keep the byte stream intact', () => {
  const b = new SendBuffer();
  const data = Buffer.from(Array.from({ length: 100_000 }, (_, i) => (i * 31) & 0xff));
  for (let pos = 0; pos < data.length; pos += 777) b.append(data.subarray(pos, pos + 777));
  assert.equal(b.end, data.length);
  assert.deepEqual(readAll(b, 5000), data.subarray(0, 5000));
  assert.deepEqual(readAll(b, 40_000), data.subarray(5000, 45_000));
  assert.equal(b.trimTo(30_000), 30_000);
  assert.equal(b.length, data.length - 30_000);
  b.rewind(31_000);
  assert.deepEqual(readAll(b), data.subarray(31_000));
  assert.equal(b.next, data.length);
  b.rewind(30_000);
  assert.deepEqual(readAll(b, 10), data.subarray(30_000, 30_010));
});

test('send buffer copies what it is given: the caller may reuse its buffer', () => {
  const b = new SendBuffer();
  const chunk = Buffer.from('abcdef');
  b.append(chunk);
  chunk.fill(0);
  assert.equal(readAll(b).toString(), 'abcdef');
});

test('send buffer: a fully acknowledged buffer starts over without reallocating', () => {
  const b = new SendBuffer();
  b.append(Buffer.from('first'));
  readAll(b);
  b.trimTo(5);
  assert.equal(b.length, 0);
  b.append(Buffer.from('second'));
  assert.equal(readAll(b).toString(), 'second');
  assert.equal(b.start, 5);
  assert.equal(b.end, 11);
  b.trimTo(11);
  b.freeIdleMemory();
  b.append(Buffer.from('third'));
  assert.equal(readAll(b).toString(), 'third');
});

test('send buffer: large writes and many blocks compact as they are acknowledged', () => {
  const b = new SendBuffer();
  let total = 0;
  for (let i = 0; i < 500; i++) {
    const chunk = Buffer.alloc(1 + ((i * 7919) % 40_000), i & 0xff);
    b.append(chunk);
    total += chunk.length;
    if (i % 3 === 0) {
      readAll(b);
      b.trimTo(total - 100);
    }
  }
  b.rewind(b.start);
  assert.equal(readAll(b).length, b.length);
});

test('send buffer: any sequence of operations reads back exactly the bytes written (model check)', () => {
  type Op =
    | { kind: 'append'; n: number } | { kind: 'read'; max: number } | { kind: 'trim'; at: number }
    | { kind: 'ack' } | { kind: 'rewind'; at: number } | { kind: 'idle' };
  const op: fc.Arbitrary<Op> = fc.oneof(
    // Block-sized writes fill blocks exactly, which puts the cursor on block boundaries.
    fc.record({ kind: fc.constant('append' as const), n: fc.oneof(fc.integer({ min: 1, max: 100 }), fc.integer({ min: 1000, max: 70_000 }), fc.constantFrom(16_384, 65_536)) }),
    fc.record({ kind: fc.constant('read' as const), max: fc.oneof(fc.integer({ min: 1, max: 100 }), fc.integer({ min: 1000, max: 200_000 })) }),
    fc.record({ kind: fc.constant('trim' as const), at: fc.double({ min: 0, max: 1, noNaN: true }) }),
    fc.record({ kind: fc.constant('rewind' as const), at: fc.double({ min: 0, max: 1, noNaN: true }) }),
    fc.constant({ kind: 'ack' as const }), // the peer acknowledges everything sent so far: the usual case
    fc.constant({ kind: 'idle' as const }),
  );
  fc.assert(
    fc.property(fc.array(op, { maxLength: 1000 }), (ops) => {
      const b = new SendBuffer();
      let model = Buffer.alloc(0); // every byte ever written, by offset
      let counter = 0;
      for (const o of ops) {
        if (o.kind === 'append') {
          const chunk = Buffer.alloc(o.n);
          for (let i = 0; i < o.n; i++) chunk[i] = (counter++ * 131) & 0xff;
          b.append(chunk);
          model = Buffer.concat([model, chunk]);
        } else if (o.kind === 'read') {
          const from = b.next;
          const got = readAll(b, o.max);
          assert.ok(got.equals(model.subarray(from, from + got.length)), `bytes read from ${from} differ`);
          assert.equal(got.length, Math.min(o.max, model.length - from));
        } else if (o.kind === 'trim') {
          // The peer can acknowledge up to what was sent (the cursor may have been rewound since).
          const at = b.start + Math.floor(o.at * (b.end - b.start));
          b.trimTo(at);
          assert.equal(b.start, Math.max(at, b.start));
          assert.ok(b.next >= b.start);
        } else if (o.kind === 'ack') {
          b.trimTo(b.next);
          assert.equal(b.start, b.next);
        } else if (o.kind === 'rewind') {
          b.rewind(b.start + Math.floor(o.at * (b.end - b.start)));
        } else {
          b.freeIdleMemory();
        }
        assert.equal(b.end, model.length);
        assert.equal(b.length, b.end - b.start);
      }
    }),
    { numRuns: 300 },
  );
});

test('send buffer: a cursor left on a block boundary survives compaction (regression)', () => {
  // As in a bulk transfer: 64 KiB writes, each sent as one frame while the
  // next is queued, and acknowledgements of exactly what was sent. The cursor
  // sits at the end of blocks that the acknowledgements free.
  const b = new SendBuffer();
  const chunk = (i: number) => Buffer.alloc(65_536, i & 0xff);
  b.append(chunk(0));
  for (let i = 1; i < 300; i++) {
    const from = b.next;
    const got = readAll(b, 65_536);
    assert.equal(got.length, 65_536);
    assert.ok(got[0] === ((from / 65_536) & 0xff) && got[65_535] === got[0], `block ${i} read back wrong`);
    b.append(chunk(i));
    b.trimTo(b.next);
  }
});
