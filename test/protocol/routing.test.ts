// Routable session ids (PROTOCOL.md §3.6) and reading a link's first bytes
// as a balancer or a cluster primary would.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { encodeAnnouncement, ROCKS } from '../../src/edp/announcement.js';
import { resolveServerLimits, resolveSessionConfig } from '../../src/protocol/config.js';
import { encodeHello, encodeResume, FrameType, INSTANCE_SIZE, NONCE_SIZE, SESSION_ID_SIZE } from '../../src/protocol/frames.js';
import {
  CLIENT_ANNOUNCEMENT_SIZE,
  FIRST_FRAME_TYPE_OFFSET,
  makeSessionId,
  ownerOf,
  RESUME_NODE_OFFSET,
  RESUME_SESSION_ID_OFFSET,
  RESUME_WORKER_OFFSET,
  routeLink,
} from '../../src/protocol/routing.js';
import { encodeProxyHeader } from '../../src/protocol/proxy-header.js';
import { ServerCore } from '../../src/protocol/server-core.js';
import { SimRandom } from '../sim/random.js';

const announcement = encodeAnnouncement([ROCKS]);
const nonce = Buffer.alloc(NONCE_SIZE, 7);
const instance = Buffer.alloc(INSTANCE_SIZE, 9);

/** What a rocks client sends first on a link that resumes `sessionId`. */
function resumingLink(sessionId: Buffer, first = announcement): Buffer {
  return Buffer.concat([first, encodeResume(1, sessionId, nonce, instance)]);
}

/** Lets `core` accept one HELLO and returns the id of the session it created. */
function issueSessionId(core: ServerCore, link: number): Buffer {
  core.handleLinkOpen(link, 0);
  core.handleLinkData(link, Buffer.concat([announcement, encodeHello(1, 1, Buffer.alloc(32, 1), 65536)]), 0);
  for (let ev = core.pollEvent(); ev !== undefined; ev = core.pollEvent()) {
    if (ev.type === 'session') return ev.session.sessionId!;
  }
  throw new Error('no session created');
}

describe('routable session ids', () => {
  test('the documented offsets: a v1 client announcement is 18 bytes, RESUME type at 18, session id at 28, node at 29, worker at 33', () => {
    assert.equal(CLIENT_ANNOUNCEMENT_SIZE, 18);
    assert.equal(FIRST_FRAME_TYPE_OFFSET, 18);
    assert.equal(RESUME_SESSION_ID_OFFSET, 28);
    assert.equal(RESUME_NODE_OFFSET, 29);
    assert.equal(RESUME_WORKER_OFFSET, 33);
    const id = makeSessionId({ nodeId: 0x0a0b0c0d, workerId: 5 }, new SimRandom(1));
    const first = resumingLink(id);
    assert.equal(first[FIRST_FRAME_TYPE_OFFSET], FrameType.RESUME);
    assert.deepEqual(first.subarray(RESUME_SESSION_ID_OFFSET, RESUME_SESSION_ID_OFFSET + SESSION_ID_SIZE), id);
    assert.equal(first.readUInt32BE(RESUME_NODE_OFFSET), 0x0a0b0c0d);
    assert.equal(first[RESUME_WORKER_OFFSET], 5);
  });

  test('a server writes its node id into every session id it issues; the random rest differs', () => {
    const core = new ServerCore(resolveSessionConfig(), resolveServerLimits(), new SimRandom(2), { owner: { nodeId: 0xdeadbeef } });
    assert.equal(core.nodeId, 0xdeadbeef);
    const tails = new Set<string>();
    for (let link = 1; link <= 200; link++) {
      const id = issueSessionId(core, link);
      assert.equal(id.length, SESSION_ID_SIZE);
      assert.equal(id[0], 1, 'format 1');
      assert.deepEqual(ownerOf(id), { nodeId: 0xdeadbeef, workerId: 0 });
      tails.add(id.subarray(6).toString('hex'));
    }
    assert.equal(tails.size, 200, 'every session id has its own random part');
  });

  test('without a node id a server draws one, and keeps it for all its sessions', () => {
    const a = new ServerCore(resolveSessionConfig(), resolveServerLimits(), new SimRandom(3));
    const b = new ServerCore(resolveSessionConfig(), resolveServerLimits(), new SimRandom(4));
    assert.notEqual(a.nodeId, b.nodeId);
    assert.equal(ownerOf(issueSessionId(a, 1))?.nodeId, a.nodeId);
    assert.equal(ownerOf(issueSessionId(a, 2))?.nodeId, a.nodeId);
  });

  test('node id 0 and 4294967295 are both routable', () => {
    for (const nodeId of [0, 0xffff_ffff]) {
      const route = routeLink(resumingLink(makeSessionId({ nodeId, workerId: 255 }, new SimRandom(5))));
      assert.equal(route.kind, 'resume');
      assert.deepEqual(route.kind === 'resume' && route.owner, { nodeId, workerId: 255 });
    }
  });
});

describe('routeLink reads the first bytes of a link', () => {
  const id = makeSessionId({ nodeId: 77, workerId: 3 }, new SimRandom(6));

  test('a resume names its owner and its session id', () => {
    const route = routeLink(resumingLink(id));
    assert.equal(route.kind, 'resume');
    if (route.kind !== 'resume') return;
    assert.deepEqual(route.owner, { nodeId: 77, workerId: 3 });
    assert.deepEqual(route.sessionId, id);
  });

  test('a HELLO is a new session, as soon as its type byte is there', () => {
    const hello = Buffer.concat([announcement, encodeHello(1, 1, Buffer.alloc(32), 1024)]);
    assert.deepEqual(routeLink(hello.subarray(0, FIRST_FRAME_TYPE_OFFSET + 1)), { kind: 'new' });
    assert.deepEqual(routeLink(hello), { kind: 'new' });
  });

  test('every prefix too short to decide is incomplete, and the first long enough decides', () => {
    const first = resumingLink(id);
    const decided = RESUME_SESSION_ID_OFFSET + SESSION_ID_SIZE;
    for (let n = 0; n < decided; n++) assert.deepEqual(routeLink(first.subarray(0, n)), { kind: 'incomplete' }, `${n} bytes`);
    assert.equal(routeLink(first.subarray(0, decided)).kind, 'resume');
  });

  test('ordinary clients, probes and garbage are other', () => {
    assert.deepEqual(routeLink(Buffer.from('GET / HTTP/1.1\r\n\r\n')), { kind: 'other' });
    assert.deepEqual(routeLink(Buffer.from('SSH-2.0-OpenSSH_9.2\r\n')), { kind: 'other' });
    const notAFrame = Buffer.concat([announcement, Buffer.from([0x10, 0, 0, 0, 8])]);
    assert.deepEqual(routeLink(notAFrame), { kind: 'other' }, 'DATA cannot open a link');
    const broken = Buffer.from(announcement);
    broken[8] = 9; // EDP format version 9
    assert.deepEqual(routeLink(Buffer.concat([broken, encodeResume(1, id, nonce, instance)])), { kind: 'other' });
    assert.deepEqual(
      routeLink(resumingLink(id, encodeAnnouncement([{ name: 'racks', minVersion: 1, maxVersion: 1 }]))),
      { kind: 'other' },
      'no rocks',
    );
  });

  test('a client that announces more than rocks: its RESUME starts further on and is still read', () => {
    const longer = encodeAnnouncement([ROCKS, { name: 'racks', minVersion: 1, maxVersion: 2 }]);
    assert.ok(longer.length > CLIENT_ANNOUNCEMENT_SIZE);
    const route = routeLink(resumingLink(id, longer));
    assert.equal(route.kind, 'resume');
    assert.deepEqual(route.kind === 'resume' && route.owner, { nodeId: 77, workerId: 3 });
  });

  test('a session id of another format is a resume that only a lookup can route', () => {
    const old = Buffer.alloc(SESSION_ID_SIZE, 0x42);
    assert.equal(ownerOf(old), undefined);
    assert.deepEqual(routeLink(resumingLink(old)), { kind: 'resume-unroutable', sessionId: old });
  });
});

describe('the endpoint of a node with relays', () => {
  const config = resolveSessionConfig();
  const limits = resolveServerLimits();
  const events = (core: ServerCore) => {
    const out: string[] = [];
    for (let ev = core.pollEvent(); ev !== undefined; ev = core.pollEvent()) {
      if (ev.type === 'rejected') out.push(`rejected ${ev.error.code}`);
      else if (ev.type === 'relay') out.push(`relay ${ev.nodeId} ${ev.initial.length}`);
      else out.push(ev.type);
    }
    return out;
  };

  test('a resume for another node is handed back to be relayed, with every byte read and before we say a word', () => {
    const core = new ServerCore(config, limits, new SimRandom(5), { owner: { nodeId: 1 }, relays: true });
    const first = resumingLink(makeSessionId({ nodeId: 2, workerId: 0 }, new SimRandom(6)));
    core.handleLinkOpen(1, 0);
    core.handleLinkData(1, first.subarray(0, 30), 0);
    assert.deepEqual(events(core), [], 'waits for the session id, says nothing');
    core.handleLinkData(1, first.subarray(30), 0);
    assert.deepEqual(events(core), [`relay 2 ${first.length}`]);
  });

  test("a member's link that stalls inside its PROXY header is refused, never served as an ordinary client", () => {
    const core = new ServerCore(config, limits, new SimRandom(7), { owner: { nodeId: 1 }, relays: true });
    const header = encodeProxyHeader({ source: { address: '10.0.0.9', port: 4000 }, destination: { address: '10.0.0.1', port: 7000 } });
    core.handleLinkOpen(1, 0, true);
    core.handleLinkData(1, header.subarray(0, 20), 0);
    core.handleTimeout(limits.detectTimeout + 1);
    assert.deepEqual(events(core), []);
    core.handleTimeout(config.handshakeTimeout + 1);
    assert.deepEqual(events(core), ['rejected ERR_ROCKS_HANDSHAKE_TIMEOUT', 'close-link']);
    // A stranger's link that starts the same way is an ordinary client after detectTimeout.
    core.handleLinkOpen(2, 0, false);
    core.handleLinkData(2, header.subarray(0, 20), 0);
    core.handleTimeout(limits.detectTimeout + 1);
    assert.deepEqual(events(core), ['plain']);
  });
});
