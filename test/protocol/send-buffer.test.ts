import assert from 'node:assert/strict';
import { test } from 'node:test';
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
  b.releaseIdle();
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
