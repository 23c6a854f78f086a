import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setImmediate as tick } from 'node:timers/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import fc from 'fast-check';
import { SendBuffer } from '../../src/protocol/send-buffer.js';

// A full garbage collection on demand, to see which blocks the buffer still holds.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

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

/** The views `read` hands out, one per block touched. */
function readViews(b: SendBuffer, max = Infinity): Buffer[] {
  const out: Buffer[] = [];
  b.read(max, out);
  return out;
}

test('send buffer: a fully acknowledged buffer starts over without reallocating', () => {
  const b = new SendBuffer();
  b.append(Buffer.from('first'));
  const [first] = readViews(b);
  b.trimTo(5);
  assert.equal(b.length, 0);
  b.append(Buffer.from('second'));
  const [second] = readViews(b);
  assert.equal(second.toString(), 'second');
  // The same block, refilled from its start.
  assert.equal(second.buffer, first.buffer);
  assert.equal(second.byteOffset, first.byteOffset);
  assert.equal(b.start, 5);
  assert.equal(b.end, 11);
  b.trimTo(11);
  b.freeIdleMemory();
  b.append(Buffer.from('third'));
  const [third] = readViews(b);
  assert.equal(third.toString(), 'third');
  // An idle buffer gave its block back: this is a new one.
  assert.notEqual(third.buffer, first.buffer);
});

test('send buffer: an acknowledged bulk block is reused for the next bulk write', () => {
  const b = new SendBuffer();
  const block = 64 * 1024;
  b.append(Buffer.alloc(block, 1));
  const [firstBlock] = readViews(b);
  b.append(Buffer.alloc(block, 2)); // a second block, so trimming the first does not empty the buffer
  b.trimTo(block);
  b.append(Buffer.alloc(block, 3));
  const views = readViews(b);
  assert.equal(views.length, 2);
  assert.equal(views[0][0], 2);
  assert.equal(views[1][0], 3);
  assert.equal(views[1].buffer, firstBlock.buffer, 'the third write went into the block the peer acknowledged');
});

test('send buffer: large writes and many blocks compact as they are acknowledged', async () => {
  const b = new SendBuffer();
  // Every block the buffer ever handed out, by the memory behind its views.
  const blocks = new Map<ArrayBufferLike, WeakRef<ArrayBufferLike>>();
  let total = 0;
  for (let i = 0; i < 2000; i++) {
    // Large writes fill recycled bulk blocks; small ones fill small blocks, which are not recycled.
    const chunk = Buffer.alloc(1 + ((i * 7919) % (i % 4 === 0 ? 40_000 : 3000)), i & 0xff);
    b.append(chunk);
    total += chunk.length;
    if (i % 3 === 0) {
      for (const v of readViews(b)) if (!blocks.has(v.buffer)) blocks.set(v.buffer, new WeakRef(v.buffer));
      b.trimTo(total - 100);
    }
  }
  b.rewind(b.start);
  const rest = readViews(b);
  assert.equal(
    rest.reduce((n, v) => n + v.length, 0),
    b.length,
  );
  assert.equal(b.length, total - b.start);
  const stillHeld = new Set(rest.map((v) => v.buffer));
  rest.length = 0;
  // Let go of our own references (a WeakRef keeps its target for the rest of the job), then collect.
  const refs = [...blocks.values()];
  blocks.clear();
  await tick();
  gc();
  const alive = refs.filter((r) => r.deref() !== undefined).length;
  assert.ok(refs.length > 80, `the writes used ${refs.length} blocks`);
  // Left: the blocks with unacknowledged bytes, plus at most 32 spare bulk blocks kept for reuse.
  assert.ok(alive <= stillHeld.size + 32, `${alive} of ${refs.length} blocks still held (${stillHeld.size} with unacknowledged bytes)`);
});

test('send buffer: any sequence of operations reads back exactly the bytes written (model check)', () => {
  type Op =
    | { kind: 'append'; n: number }
    | { kind: 'read'; max: number }
    | { kind: 'trim'; at: number }
    | { kind: 'edge'; pick: number; delta: number }
    | { kind: 'ack' }
    | { kind: 'rewind'; at: number }
    | { kind: 'idle' }
    | { kind: 'check' };
  const op: fc.Arbitrary<Op> = fc.oneof(
    // Block-sized writes fill blocks exactly, which puts the cursor on block boundaries.
    fc.record({
      kind: fc.constant('append' as const),
      n: fc.oneof(fc.integer({ min: 1, max: 100 }), fc.integer({ min: 1000, max: 70_000 }), fc.constantFrom(16_384, 65_536)),
    }),
    fc.record({ kind: fc.constant('read' as const), max: fc.oneof(fc.integer({ min: 1, max: 100 }), fc.integer({ min: 1000, max: 200_000 })) }),
    fc.record({ kind: fc.constant('trim' as const), at: fc.double({ min: 0, max: 1, noNaN: true }) }),
    // Acknowledgements next to a block's end, where off-by-one errors live.
    fc.record({ kind: fc.constant('edge' as const), pick: fc.double({ min: 0, max: 1, noNaN: true }), delta: fc.integer({ min: -1, max: 1 }) }),
    fc.record({ kind: fc.constant('rewind' as const), at: fc.double({ min: 0, max: 1, noNaN: true }) }),
    fc.constant({ kind: 'ack' as const }), // the peer acknowledges everything sent so far: the usual case
    fc.constant({ kind: 'idle' as const }),
    fc.constant({ kind: 'check' as const }), // everything held, read back from the start
  );
  /** Reads every byte still held and checks it is the model's, then puts the cursor back. */
  const checkHeld = (b: SendBuffer, model: Buffer) => {
    const next = b.next;
    b.rewind(b.start);
    const held = readAll(b);
    assert.ok(held.equals(model.subarray(b.start)), `bytes held from ${b.start} differ from what was written`);
    b.rewind(next);
  };
  fc.assert(
    fc.property(fc.array(op, { maxLength: 1000 }), (ops) => {
      const b = new SendBuffer();
      let model = Buffer.alloc(0); // every byte ever written, by offset
      let counter = 0;
      /** Offsets at which a read view ended at the end of its block. */
      const blockEnds: number[] = [];
      const trim = (at: number) => {
        const [before, next] = [b.start, b.next];
        assert.equal(b.trimTo(at), at - before, 'bytes freed');
        assert.equal(b.start, at);
        assert.equal(b.length, model.length - at);
        assert.equal(b.next, Math.max(next, at));
      };
      for (const o of ops) {
        if (o.kind === 'append') {
          const chunk = Buffer.alloc(o.n);
          for (let i = 0; i < o.n; i++) chunk[i] = (counter++ * 131) & 0xff;
          b.append(chunk);
          model = Buffer.concat([model, chunk]);
        } else if (o.kind === 'read') {
          const from = b.next;
          const views: Buffer[] = [];
          b.read(o.max, views);
          let offset = from;
          for (const v of views) {
            offset += v.length;
            if (v.byteOffset + v.length === v.buffer.byteLength) blockEnds.push(offset);
          }
          const got = Buffer.concat(views);
          assert.ok(got.equals(model.subarray(from, from + got.length)), `bytes read from ${from} differ`);
          assert.equal(got.length, Math.min(o.max, model.length - from));
        } else if (o.kind === 'trim') {
          // The peer can acknowledge up to what was sent (the cursor may have been rewound since).
          trim(b.start + Math.floor(o.at * (b.end - b.start)));
        } else if (o.kind === 'edge') {
          const ends = blockEnds.filter((e) => e + o.delta >= b.start && e + o.delta <= b.end);
          if (ends.length > 0) trim(ends[Math.floor(o.pick * ends.length)] + o.delta);
        } else if (o.kind === 'ack') {
          b.trimTo(b.next);
          assert.equal(b.start, b.next);
        } else if (o.kind === 'rewind') {
          b.rewind(b.start + Math.floor(o.at * (b.end - b.start)));
        } else if (o.kind === 'idle') {
          b.freeIdleMemory();
        } else {
          checkHeld(b, model);
        }
        assert.equal(b.end, model.length);
        assert.equal(b.length, b.end - b.start);
      }
      checkHeld(b, model);
    }),
    { numRuns: 1000 },
  );
});

test('send buffer: acknowledgements next to a block end keep exactly the bytes after them', () => {
  const data = Buffer.from(Array.from({ length: 3 * 65_536 }, (_, i) => (i * 7) & 0xff));
  for (const at of [65_535, 65_536, 65_537, 2 * 65_536 - 1]) {
    const b = new SendBuffer();
    for (let pos = 0; pos < data.length; pos += 65_536) b.append(data.subarray(pos, pos + 65_536));
    readAll(b);
    assert.equal(b.trimTo(at), at);
    assert.equal(b.start, at);
    b.rewind(at);
    assert.ok(readAll(b).equals(data.subarray(at)), `bytes held after trimTo(${at})`);
  }
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
