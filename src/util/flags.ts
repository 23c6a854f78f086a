// Yes/no state packed into one small integer field. As Node builds V8 (no
// pointer compression) every field costs each object 8 bytes, a boolean
// too: nine booleans cost a session 72 bytes, one integer 8. Node's own
// streams keep their state the same way. Each owner names its bits in a
// `Flag` table of its own.

/** `flags` with `flag` set or cleared. */
export function withFlag(flags: number, flag: number, on: boolean): number {
  return on ? flags | flag : flags & ~flag;
}
