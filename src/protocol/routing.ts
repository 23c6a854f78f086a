// Routable session ids (PROTOCOL.md §3.6): a session id names the node and
// the worker that hold the session, at fixed offsets, so that whatever
// receives a resuming link (a load balancer, a cluster primary, another
// node) can send it to the owner by reading its first bytes, with no shared
// state. The rest of the id is random: ids stay unguessable, and resume
// authentication (the MACs under the session key) is unchanged.
//
//   offset  size  field
//   0       1     format: 1 (routable, version 1)
//   1       4     node    u32, the issuing node's id
//   5       1     worker  u8, the worker within the node (0 without workers)
//   6       10    random

import { encodeAnnouncement, parseAnnouncement, ROCKS } from '../edp/announcement.js';
import { FrameType, HEADER_SIZE, SESSION_ID_SIZE } from './frames.js';
import type { RandomSource } from './random.js';

export const ROUTABLE_FORMAT = 1;
/** The first byte of a session id a keying channel gave (§15.2): not routable. */
export const CHANNEL_FORMAT = 2;
export const MAX_NODE_ID = 0xffff_ffff;
export const MAX_WORKER_ID = 0xff;
const RANDOM_SIZE = SESSION_ID_SIZE - 6;

export interface SessionOwner {
  nodeId: number;
  workerId: number;
}

/** A new session id for a session held by `owner`. */
export function makeSessionId(owner: SessionOwner, random: RandomSource): Buffer {
  const id = Buffer.allocUnsafe(SESSION_ID_SIZE); // from the shared pool: one small slice per session
  id[0] = ROUTABLE_FORMAT;
  id.writeUInt32BE(owner.nodeId, 1);
  id[5] = owner.workerId;
  random.bytes(RANDOM_SIZE).copy(id, 6);
  return id;
}

/** The node and worker a session id names, or undefined when it is not a routable id. */
export function ownerOf(sessionId: Buffer): SessionOwner | undefined {
  if (sessionId.length !== SESSION_ID_SIZE || sessionId[0] !== ROUTABLE_FORMAT) return undefined;
  return { nodeId: sessionId.readUInt32BE(1), workerId: sessionId[5] };
}

/**
 * A rocks client opens every link with this announcement (EDP, rocks only),
 * so on a resuming link the RESUME frame starts at a fixed offset.
 */
export const CLIENT_ANNOUNCEMENT_SIZE = encodeAnnouncement([ROCKS]).length;
/** Where, in the first bytes of a link, a balancer finds the frame type, 0x01 HELLO or 0x03 RESUME. */
export const FIRST_FRAME_TYPE_OFFSET = CLIENT_ANNOUNCEMENT_SIZE;
/** Where, in the first bytes of a resuming link, the session id starts (after type, length, magic and version). */
export const RESUME_SESSION_ID_OFFSET = CLIENT_ANNOUNCEMENT_SIZE + HEADER_SIZE + 4 + 1;
/** Where the node id (u32, big-endian) and the worker (u8) are on a resuming link. */
export const RESUME_NODE_OFFSET = RESUME_SESSION_ID_OFFSET + 1;
export const RESUME_WORKER_OFFSET = RESUME_SESSION_ID_OFFSET + 5;

export type LinkRoute =
  /** Too few bytes yet to tell. */
  | { kind: 'incomplete' }
  /** A new session (HELLO): any node may take it. */
  | { kind: 'new' }
  /** A resume of a session held by `owner`. */
  | { kind: 'resume'; owner: SessionOwner; sessionId: Buffer }
  /** A resume of a session whose id is not routable (another format): only a lookup can tell. */
  | { kind: 'resume-unroutable'; sessionId: Buffer }
  /** Not a rocks client's link as this version opens it (an ordinary client, a probe, garbage). */
  | { kind: 'other' };

/**
 * Where the first bytes of a link should go, read as a balancer or a cluster
 * primary would read them. It parses the announcement, so it also reads a
 * client that announces more than rocks (its RESUME starts further on).
 */
export function routeLink(first: Buffer): LinkRoute {
  const a = parseAnnouncement(first);
  if (a.kind === 'incomplete') return { kind: 'incomplete' };
  if (a.kind !== 'announcement' || !a.enhancements.some((e) => e.name === ROCKS.name)) return { kind: 'other' };
  if (first.length <= a.length) return { kind: 'incomplete' };
  const type = first[a.length];
  if (type === FrameType.HELLO) return { kind: 'new' };
  if (type !== FrameType.RESUME) return { kind: 'other' };
  const idAt = a.length + (RESUME_SESSION_ID_OFFSET - CLIENT_ANNOUNCEMENT_SIZE);
  if (first.length < idAt + SESSION_ID_SIZE) return { kind: 'incomplete' };
  const sessionId = first.subarray(idAt, idAt + SESSION_ID_SIZE);
  const owner = ownerOf(sessionId);
  return owner === undefined ? { kind: 'resume-unroutable', sessionId } : { kind: 'resume', owner, sessionId };
}
