// The Enhancement Detection Protocol's announcement: how an enhanced end
// tells the other which enhancements (rocks, racks, ...) it speaks, and which
// versions of each. docs/PROTOCOL.md §14 specifies it.
//
//   magic     8 bytes  E5 45 44 50 0D 0A 00 1A   ("\xE5EDP\r\n\0\x1a")
//   version   u8       EDP format version, 1
//   count     u8       number of enhancements, 1..16
//   entries   count ×  nameLength u8 (1..32) | name (a-z, 0-9, '-') | minVersion u8 | maxVersion u8
//
// The magic starts with a byte no text protocol sends and holds CR, LF and
// NUL, so ordinary clients practically never begin with it.

export const EDP_MAGIC = Buffer.from([0xe5, 0x45, 0x44, 0x50, 0x0d, 0x0a, 0x00, 0x1a]);
export const EDP_VERSION = 1;
const MAX_ENTRIES = 16;
const MAX_NAME = 32;
/** The longest announcement this version can produce or accept. */
export const MAX_ANNOUNCEMENT = EDP_MAGIC.length + 2 + MAX_ENTRIES * (1 + MAX_NAME + 2);

export interface Enhancement {
  name: string;
  minVersion: number;
  maxVersion: number;
}

/** What this library speaks. A new enhancement adds itself here (see docs/PROTOCOL.md §14.7). */
export const ROCKS: Enhancement = { name: 'rocks', minVersion: 1, maxVersion: 1 };

export function encodeAnnouncement(enhancements: readonly Enhancement[]): Buffer {
  if (enhancements.length < 1 || enhancements.length > MAX_ENTRIES) throw new RangeError('1 to 16 enhancements');
  const parts = [EDP_MAGIC, Buffer.from([EDP_VERSION, enhancements.length])];
  for (const e of enhancements) {
    if (!/^[a-z0-9-]{1,32}$/.test(e.name)) throw new RangeError(`bad enhancement name ${JSON.stringify(e.name)}`);
    parts.push(Buffer.from([e.name.length]), Buffer.from(e.name, 'latin1'), Buffer.from([e.minVersion, e.maxVersion]));
  }
  return Buffer.concat(parts);
}

export type ParseResult =
  | { kind: 'announcement'; enhancements: Enhancement[]; length: number }
  /** The bytes so far could still begin an announcement. */
  | { kind: 'incomplete' }
  /** The bytes do not begin with the magic: not an announcement at all. */
  | { kind: 'other' }
  /** The magic is there but what follows is malformed. */
  | { kind: 'malformed'; reason: string };

/** Parses an announcement at the start of `bytes`. */
export function parseAnnouncement(bytes: Buffer): ParseResult {
  const head = Math.min(bytes.length, EDP_MAGIC.length);
  if (!bytes.subarray(0, head).equals(EDP_MAGIC.subarray(0, head))) return { kind: 'other' };
  let pos = EDP_MAGIC.length;
  if (bytes.length < pos + 2) return { kind: 'incomplete' };
  if (bytes[pos] !== EDP_VERSION) return { kind: 'malformed', reason: `EDP format version ${bytes[pos]}` };
  const count = bytes[pos + 1];
  if (count < 1 || count > MAX_ENTRIES) return { kind: 'malformed', reason: `${count} enhancements` };
  pos += 2;
  const enhancements: Enhancement[] = [];
  for (let i = 0; i < count; i++) {
    if (bytes.length < pos + 1) return { kind: 'incomplete' };
    const n = bytes[pos];
    if (n < 1 || n > MAX_NAME) return { kind: 'malformed', reason: `name of ${n} bytes` };
    if (bytes.length < pos + 1 + n + 2) return { kind: 'incomplete' };
    const name = bytes.toString('latin1', pos + 1, pos + 1 + n);
    if (!/^[a-z0-9-]+$/.test(name)) return { kind: 'malformed', reason: 'bad enhancement name' };
    const minVersion = bytes[pos + 1 + n];
    const maxVersion = bytes[pos + 2 + n];
    if (minVersion > maxVersion) return { kind: 'malformed', reason: `versions ${minVersion}-${maxVersion}` };
    // Twice the same name would leave the versions it speaks ambiguous.
    if (enhancements.some((e) => e.name === name)) return { kind: 'malformed', reason: `${name} announced twice` };
    enhancements.push({ name, minVersion, maxVersion });
    pos += 1 + n + 2;
  }
  return { kind: 'announcement', enhancements, length: pos };
}

/** The highest version of `ours` that `theirs` also speaks, or undefined. */
export function commonVersion(ours: Enhancement, theirs: readonly Enhancement[]): number | undefined {
  const peer = theirs.find((e) => e.name === ours.name);
  if (peer === undefined) return undefined;
  const v = Math.min(ours.maxVersion, peer.maxVersion);
  return v >= Math.max(ours.minVersion, peer.minVersion) ? v : undefined;
}

/** Finds the last announcement in `bytes` (a probe reads one at the end of whatever the server sent). */
export function findAnnouncement(bytes: Buffer): Enhancement[] | undefined {
  for (let at = bytes.lastIndexOf(EDP_MAGIC); at >= 0; at = at === 0 ? -1 : bytes.lastIndexOf(EDP_MAGIC, at - 1)) {
    const r = parseAnnouncement(bytes.subarray(at));
    if (r.kind === 'announcement') return r.enhancements;
  }
  return undefined;
}
