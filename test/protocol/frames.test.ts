import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { RocksError } from '../../src/protocol/errors.js';
import {
  encodeAck,
  encodeChallenge,
  encodeClose,
  encodeCloseAck,
  encodeDataHeader,
  encodeError,
  encodeFin,
  encodeHello,
  encodeProof,
  encodeResume,
  encodeWelcome,
  FrameParser,
  FrameType,
  MAX_DATA_PAYLOAD,
  type Frame,
} from '../../src/protocol/frames.js';

const key = Buffer.alloc(32, 7);
const id = Buffer.alloc(16, 3);
const nonce = Buffer.alloc(16, 9);
const mac = Buffer.alloc(32, 5);
const big = 2 ** 53 - 1;

function allFrames(): Buffer[] {
  const payload = Buffer.from('hello, reliable world');
  return [
    encodeHello(1, 1, key, 4 << 20),
    encodeWelcome(1, id, key, 65536, Buffer.alloc(8, 1)),
    encodeResume(1, id, nonce, Buffer.alloc(8, 2)),
    encodeChallenge(nonce, 12345, big, mac),
    encodeProof(big, 0, mac),
    Buffer.concat([encodeDataHeader(big - payload.length, payload.length), payload]),
    encodeAck(1000, big),
    encodeFin(77),
    encodeClose(),
    encodeCloseAck(),
    encodeError(6, 'aborted: ünïcode'),
    encodeAck(2 ** 32 - 1, 2 ** 32), // either side of the 32-bit halves
  ];
}

/** Parses a byte stream delivered in the given chunk sizes, merging DATA pieces. */
function parse(bytes: Buffer, sizes: (i: number) => number): Frame[] {
  const p = new FrameParser();
  const frames: Frame[] = [];
  for (let pos = 0, i = 0; pos < bytes.length; i++) {
    const n = Math.max(1, sizes(i));
    p.push(bytes.subarray(pos, pos + n));
    pos += n;
    for (let f = p.next(); f; f = p.next()) {
      const last = frames[frames.length - 1];
      if (f.type === FrameType.DATA && last?.type === FrameType.DATA && last.offset + last.data.length === f.offset) {
        frames[frames.length - 1] = { ...last, data: Buffer.concat([last.data, f.data]) };
      } else {
        frames.push(f);
      }
    }
  }
  assert.equal(p.bufferedBytes, 0);
  return frames;
}

describe('frames', () => {
  test('every frame type survives encode and parse, whatever the chunking', () => {
    const stream = Buffer.concat(allFrames());
    const whole = parse(stream, () => stream.length);
    assert.equal(whole.length, 12);
    for (const size of [1, 2, 3, 7, 13, 64]) {
      assert.deepEqual(
        parse(stream, () => size),
        whole,
        `chunks of ${size}`,
      );
    }
    assert.deepEqual(
      parse(stream, (i) => (i * 7919) % 23),
      whole,
      'irregular chunks',
    );
    const hello = whole[0];
    assert.equal(hello.type, FrameType.HELLO);
    if (hello.type === FrameType.HELLO) {
      assert.equal(hello.window, 4 << 20);
      assert.deepEqual(hello.publicKey, key);
    }
    const ch = whole[3];
    assert.ok(ch.type === FrameType.CHALLENGE && ch.received === 12345 && ch.sent === big);
    const err = whole[10];
    assert.ok(err.type === FrameType.ERROR && err.code === 6 && err.message === 'aborted: ünïcode');
    assert.deepEqual(whole[11], { type: FrameType.ACK, received: 2 ** 32 - 1, window: 2 ** 32 });
  });

  test('DATA is handed out as views of the chunks it arrived in, without copying', () => {
    const payload = Buffer.alloc(1000, 1);
    const chunk = Buffer.concat([encodeDataHeader(0, 1000), payload]);
    const p = new FrameParser();
    p.push(chunk.subarray(0, 500));
    p.push(chunk.subarray(500));
    const a = p.next();
    const b = p.next();
    assert.ok(a?.type === FrameType.DATA && b?.type === FrameType.DATA);
    assert.equal(a.data.buffer, chunk.buffer, 'first piece is a view');
    assert.equal(b.data.buffer, chunk.buffer, 'second piece is a view');
    assert.equal(a.data.length + b.data.length, 1000);
    assert.equal(b.offset, a.data.length);
  });

  test('a parser taken over mid-frame goes on where the other stopped; the other is left empty', () => {
    const payload = Buffer.alloc(1000, 1);
    const stream = Buffer.concat([encodeDataHeader(5000, 1000), payload, encodeAck(6000, 77)]);
    const ackAt = stream.length - encodeAck(0, 0).length;
    for (const cut of [600, ackAt + 3]) {
      const first = new FrameParser();
      first.push(stream.subarray(0, cut));
      const pieces: Frame[] = [];
      for (let f = first.next(); f !== undefined; f = first.next()) pieces.push(f);
      const second = new FrameParser();
      second.takeOver(first);
      assert.equal(first.bufferedBytes, 0);
      assert.deepEqual(first.drain(), [], 'the old parser keeps no chunk');
      second.push(stream.subarray(cut));
      for (let f = second.next(); f !== undefined; f = second.next()) pieces.push(f);
      const data = pieces.flatMap((f) => (f.type === FrameType.DATA ? [f] : []));
      assert.equal(data[0].offset, 5000);
      assert.equal(data[1]?.offset ?? 6000, 5000 + data[0].data.length, 'the DATA frame goes on where it stopped');
      assert.equal(Buffer.concat(data.map((f) => f.data)).length, 1000);
      assert.deepEqual(pieces.at(-1), { type: FrameType.ACK, received: 6000, window: 77 });
      assert.equal(second.bufferedBytes, 0);
    }
  });

  test('HELLO accepts extension bytes from later versions', () => {
    const hello = encodeHello(1, 3, key, 1024);
    const extended = Buffer.concat([hello, Buffer.alloc(10)]);
    extended.writeUInt32BE(hello.length - 5 + 10, 1);
    const f = new FrameParser();
    f.push(extended);
    const frame = f.next();
    assert.ok(frame?.type === FrameType.HELLO && frame.maxVersion === 3);
  });

  const bad: [string, Buffer][] = [
    ['unknown type', Buffer.from([0x7f, 0, 0, 0, 0])],
    ['empty DATA', encodeDataHeader(0, 0)],
    ['oversized DATA', encodeDataHeader(0, MAX_DATA_PAYLOAD + 1)],
    ['ACK of wrong size', Buffer.from([FrameType.ACK, 0, 0, 0, 15, ...Buffer.alloc(15)])],
    [
      'HELLO with bad magic',
      (() => {
        const h = encodeHello(1, 1, key, 1);
        h[5] = 0x41;
        return h;
      })(),
    ],
    [
      'offset beyond 2^53',
      (() => {
        const a = encodeAck(0, 0);
        a[5] = 0xff;
        return a;
      })(),
    ],
    ['ERROR longer than allowed', Buffer.from([FrameType.ERROR, 0, 0, 4, 0])],
  ];
  for (const [name, bytes] of bad) {
    test(`refuses ${name} with ERR_ROCKS_PROTOCOL`, () => {
      const p = new FrameParser();
      p.push(bytes);
      assert.throws(
        () => p.next(),
        (e: unknown) => e instanceof RocksError && e.code === 'ERR_ROCKS_PROTOCOL',
      );
    });
  }

  test('a declared length is refused before its bytes arrive', () => {
    const p = new FrameParser();
    p.push(Buffer.from([FrameType.HELLO, 0xff, 0xff, 0xff, 0xff]));
    assert.throws(() => p.next(), RocksError);
  });
});
