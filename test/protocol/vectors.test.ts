// docs/PROTOCOL.md Appendix A, recomputed with the real code. The vectors are
// read out of the document itself, so the spec and the code cannot drift
// apart: a changed byte on either side fails here.

import assert from 'node:assert/strict';
import { createPublicKey, diffieHellman } from 'node:crypto';
import { describe, test } from 'node:test';
import { encodeAnnouncement, parseAnnouncement, ROCKS } from '../../src/edp/announcement.js';
import {
  encodeAck,
  encodeChallenge,
  encodeClose,
  encodeCloseAck,
  encodeConfirm,
  encodeDataHeader,
  encodeError,
  encodeFin,
  encodeHello,
  encodePace,
  encodeProof,
  encodeResume,
  encodeWelcome,
  type Frame,
  FrameParser,
  FrameType,
} from '../../src/protocol/frames.js';
import { confirmMac, deriveSessionKey, keyPairFromSeed, resumeMac } from '../../src/protocol/keys.js';
import { codeBlocks, readRepoFile, section } from '../docs/markdown.js';

/**
 * Label -> bytes from one code block: either `label hex hex` on one line, or
 * a label line followed by an indented line of hex. Spaces between hex groups
 * only separate fields.
 */
function hexEntries(block: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const hex = /^[0-9a-f]+( [0-9a-f]+)*$/;
  let label: string | undefined;
  for (const line of block.split('\n')) {
    if (line.trim() === '') continue;
    const oneLine = /^(\S.*?)\s+([0-9a-f]+(?: [0-9a-f]+)*)$/.exec(line);
    if (oneLine !== null) {
      out.set(oneLine[1], Buffer.from(oneLine[2].replaceAll(' ', ''), 'hex'));
      label = undefined;
    } else if (/^\S/.test(line)) {
      label = line.trim();
    } else if (label !== undefined && hex.test(line.trim())) {
      out.set(label, Buffer.from(line.trim().replaceAll(' ', ''), 'hex'));
      label = undefined;
    } else {
      throw new Error(`Appendix A: cannot read ${JSON.stringify(line)}`);
    }
  }
  return out;
}

const appendix = section(readRepoFile('docs/PROTOCOL.md'), '## Appendix A');
const blocks = codeBlocks(appendix);
assert.equal(blocks.length, 3, 'Appendix A: values, frames, EDP announcement');
const values = hexEntries(blocks[0]);
const frames = hexEntries(blocks[1]);
const announcements = hexEntries(blocks[2]);

function value(label: string): Buffer {
  const v = values.get(label);
  assert.ok(v !== undefined, `Appendix A has no value "${label}"`);
  return v;
}

const client = keyPairFromSeed(value('client private'));
const server = keyPairFromSeed(value('server private'));
const id = value('session id');
const clientNonce = value('client nonce');
const serverNonce = value('server nonce');
const instance = value('server instance');
const MAC_S = 'MAC_S (server label, received=1000, sent=5000000000)';
const MAC_C = 'MAC_C (client label, received=5000000000, sent=1001)';
const MAC_F = 'MAC_F (confirm label, version 1)';

describe('docs/PROTOCOL.md Appendix A', () => {
  test('the public keys are those of the private keys (RFC 7748 §6.1)', () => {
    assert.equal(client.publicKey.toString('hex'), value('client public').toString('hex'));
    assert.equal(server.publicKey.toString('hex'), value('server public').toString('hex'));
  });

  test('the shared secret Z is the X25519 agreement of either side', () => {
    const publicKey = (raw: Buffer) => createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: raw.toString('base64url') }, format: 'jwk' });
    const z = value('shared Z').toString('hex');
    assert.equal(diffieHellman({ privateKey: client.privateKey, publicKey: publicKey(server.publicKey) }).toString('hex'), z);
    assert.equal(diffieHellman({ privateKey: server.privateKey, publicKey: publicKey(client.publicKey) }).toString('hex'), z);
  });

  test('both sides derive the session key K', () => {
    const k = value('session key K').toString('hex');
    assert.equal(deriveSessionKey(client, server.publicKey, id, client.publicKey, server.publicKey).toString('hex'), k);
    assert.equal(deriveSessionKey(server, client.publicKey, id, client.publicKey, server.publicKey).toString('hex'), k);
  });

  test('the resume MACs', () => {
    const key = value('session key K');
    const transcript = { version: 1, sessionId: id, clientNonce, serverNonce };
    assert.equal(resumeMac(key, 'server', { ...transcript, received: 1000, sent: 5_000_000_000 }).toString('hex'), value(MAC_S).toString('hex'));
    assert.equal(resumeMac(key, 'client', { ...transcript, received: 5_000_000_000, sent: 1001 }).toString('hex'), value(MAC_C).toString('hex'));
  });

  test('the confirmation MAC', () => {
    const mac = confirmMac(value('session key K'), { version: 1, sessionId: id, clientPublic: client.publicKey, serverPublic: server.publicKey });
    assert.equal(mac.toString('hex'), value(MAC_F).toString('hex'));
    assert.equal(values.size, 13, `every value is checked: ${[...values.keys()].join(', ')}`);
  });

  // Each frame of the appendix: how our encoder builds it, and what our parser reads from the appendix's bytes.
  const data = Buffer.from('abc');
  const expected: Record<string, { encode: () => Buffer; frame: Frame; follows?: Buffer }> = {
    'HELLO(1,1,client public,4194304)': {
      encode: () => encodeHello(1, 1, client.publicKey, 4194304),
      frame: { type: FrameType.HELLO, minVersion: 1, maxVersion: 1, publicKey: client.publicKey, window: 4194304, pace: false },
    },
    'HELLO(1,1,client public,4194304) taking PACE': {
      encode: () => encodeHello(1, 1, client.publicKey, 4194304, true),
      frame: { type: FrameType.HELLO, minVersion: 1, maxVersion: 1, publicKey: client.publicKey, window: 4194304, pace: true },
    },
    'WELCOME(1,id,server public,4194304,server instance)': {
      encode: () => encodeWelcome(1, id, server.publicKey, 4194304, instance),
      frame: { type: FrameType.WELCOME, version: 1, sessionId: id, publicKey: server.publicKey, window: 4194304, instance },
    },
    'RESUME(1,id,client nonce,server instance)': {
      encode: () => encodeResume(1, id, clientNonce, instance),
      frame: { type: FrameType.RESUME, version: 1, sessionId: id, nonce: clientNonce, instance },
    },
    'CHALLENGE(server nonce,1000,5000000000,MAC_S)': {
      encode: () => encodeChallenge(serverNonce, 1000, 5_000_000_000, value(MAC_S)),
      frame: { type: FrameType.CHALLENGE, nonce: serverNonce, received: 1000, sent: 5_000_000_000, mac: value(MAC_S) },
    },
    'PROOF(5000000000,1001,MAC_C)': {
      encode: () => encodeProof(5_000_000_000, 1001, value(MAC_C)),
      frame: { type: FrameType.PROOF, received: 5_000_000_000, sent: 1001, mac: value(MAC_C) },
    },
    'CONFIRM(MAC_F)': {
      encode: () => encodeConfirm(value(MAC_F)),
      frame: { type: FrameType.CONFIRM, mac: value(MAC_F) },
    },
    'DATA header (offset 1000, 3 data bytes follow)': {
      encode: () => encodeDataHeader(1000, 3),
      frame: { type: FrameType.DATA, offset: 1000, data },
      follows: data,
    },
    'ACK(1000, 4195304)': { encode: () => encodeAck(1000, 4195304), frame: { type: FrameType.ACK, received: 1000, window: 4195304 } },
    'FIN(1000)': { encode: () => encodeFin(1000), frame: { type: FrameType.FIN, offset: 1000 } },
    'PACE(30000)': { encode: () => encodePace(30000), frame: { type: FrameType.PACE, interval: 30000 } },
    CLOSE: { encode: () => encodeClose(), frame: { type: FrameType.CLOSE } },
    CLOSE_ACK: { encode: () => encodeCloseAck(), frame: { type: FrameType.CLOSE_ACK } },
    'ERROR(3,"gone")': { encode: () => encodeError(3, 'gone'), frame: { type: FrameType.ERROR, code: 3, message: 'gone' } },
    'ERROR(11,"")': { encode: () => encodeError(11, ''), frame: { type: FrameType.ERROR, code: 11, message: '' } },
    'ERROR(12,"")': { encode: () => encodeError(12, ''), frame: { type: FrameType.ERROR, code: 12, message: '' } },
  };

  test('the appendix lists exactly the frames checked here', () => {
    assert.deepEqual([...frames.keys()].sort(), Object.keys(expected).sort());
  });

  for (const [label, bytes] of frames) {
    test(`${label}: encoded and parsed`, () => {
      const want = expected[label];
      assert.ok(want !== undefined, `no check for the appendix's frame ${label}`);
      assert.equal(want.encode().toString('hex'), bytes.toString('hex'), 'our encoder');
      const parser = new FrameParser();
      parser.push(Buffer.concat([bytes, want.follows ?? Buffer.alloc(0)]));
      assert.deepEqual(parser.next(), want.frame, 'our parser');
      assert.equal(parser.next(), undefined, 'nothing left over');
      assert.equal(parser.bufferedBytes, 0);
    });
  }

  test('the EDP announcement', () => {
    assert.deepEqual([...announcements.keys()], ['EDP announcement(rocks 1-1)']);
    const bytes = announcements.get('EDP announcement(rocks 1-1)') as Buffer;
    assert.equal(encodeAnnouncement([ROCKS]).toString('hex'), bytes.toString('hex'));
    assert.deepEqual(parseAnnouncement(bytes), { kind: 'announcement', enhancements: [ROCKS], length: bytes.length });
  });

  test('every size the docs give the announcement is its real size', () => {
    const size = encodeAnnouncement([ROCKS]).length;
    const claims: string[] = [];
    for (const file of ['docs/PROTOCOL.md', 'README.md']) {
      const text = readRepoFile(file).replaceAll('\n', ' ');
      for (const m of text.matchAll(/(\d+)-byte announcement|`rocks 1-1` \((\d+) bytes in all\)|carries (\d+) bytes more each way/g)) {
        claims.push(`${file}: ${m[0]}`);
        assert.equal(Number(m[1] ?? m[2] ?? m[3]), size, `${file}: "${m[0]}"`);
      }
    }
    assert.ok(claims.length >= 5, `found the sizes in the docs: ${claims.join('; ')}`);
  });
});
