// Every error rocks reports carries a stable string `code`. Codes that can
// cross the wire also have a number, sent in ERROR frames (docs/PROTOCOL.md).

export type RocksErrorCode =
  | 'ERR_ROCKS_PROTOCOL'
  | 'ERR_ROCKS_VERSION'
  | 'ERR_ROCKS_UNKNOWN_SESSION'
  | 'ERR_ROCKS_AUTH_FAILED'
  | 'ERR_ROCKS_SERVER_BUSY'
  | 'ERR_ROCKS_PEER_ABORTED'
  | 'ERR_ROCKS_SUSPEND_TIMEOUT'
  | 'ERR_ROCKS_FLOW_CONTROL'
  | 'ERR_ROCKS_HANDSHAKE_TIMEOUT'
  | 'ERR_ROCKS_EVICTED'
  | 'ERR_ROCKS_UNCONFIRMED_SESSION'
  | 'ERR_ROCKS_SESSION_CLOSED'
  | 'ERR_ROCKS_CONNECT_TIMEOUT'
  | 'ERR_ROCKS_CONNECT_FAILED'
  | 'ERR_ROCKS_NOT_ENHANCED'
  | 'ERR_ROCKS_INVALID_OPTION'
  | 'ERR_ROCKS_INTERNAL';

interface CodeInfo {
  /** Number sent in an ERROR frame, or 0 for codes that never cross the wire. */
  wire: number;
  message: string;
}

export const ERROR_CODES: Readonly<Record<RocksErrorCode, CodeInfo>> = {
  ERR_ROCKS_PROTOCOL: { wire: 1, message: 'peer broke the rocks protocol' },
  ERR_ROCKS_VERSION: { wire: 2, message: 'no protocol version in common with the peer' },
  ERR_ROCKS_UNKNOWN_SESSION: { wire: 3, message: 'the server no longer knows this session' },
  ERR_ROCKS_AUTH_FAILED: { wire: 4, message: 'resume authentication failed' },
  ERR_ROCKS_SERVER_BUSY: { wire: 5, message: 'the server is at one of its limits' },
  ERR_ROCKS_PEER_ABORTED: { wire: 6, message: 'the peer aborted the connection' },
  ERR_ROCKS_SUSPEND_TIMEOUT: { wire: 7, message: 'the connection stayed suspended longer than suspendLimit' },
  ERR_ROCKS_FLOW_CONTROL: { wire: 8, message: 'peer sent more data than its window allowed' },
  ERR_ROCKS_HANDSHAKE_TIMEOUT: { wire: 9, message: 'the handshake did not complete in time' },
  ERR_ROCKS_EVICTED: { wire: 10, message: 'the server evicted this suspended session to stay within its limits' },
  ERR_ROCKS_UNCONFIRMED_SESSION: { wire: 11, message: 'the server never confirmed this session; a new one must be started' },
  ERR_ROCKS_SESSION_CLOSED: { wire: 12, message: 'the server already closed this session cleanly' },
  ERR_ROCKS_CONNECT_TIMEOUT: { wire: 0, message: 'could not establish the connection within connectTimeout' },
  ERR_ROCKS_CONNECT_FAILED: { wire: 0, message: 'the connection closed before it was established' },
  ERR_ROCKS_NOT_ENHANCED: { wire: 0, message: 'the server does not speak rocks' },
  ERR_ROCKS_INVALID_OPTION: { wire: 0, message: 'invalid option' },
  ERR_ROCKS_INTERNAL: { wire: 0, message: 'internal error in rocks (please report it)' },
};

const BY_WIRE = new Map<number, RocksErrorCode>();
for (const [code, info] of Object.entries(ERROR_CODES) as [RocksErrorCode, CodeInfo][]) {
  if (info.wire !== 0) BY_WIRE.set(info.wire, code);
}

export class RocksError extends Error {
  readonly code: RocksErrorCode;

  constructor(code: RocksErrorCode, detail?: string) {
    const base = ERROR_CODES[code].message;
    super(detail ? `${base}: ${detail}` : base);
    this.name = 'RocksError';
    this.code = code;
  }

  /**
   * An error the peer reported (its ERROR frame): a stack would only point
   * at our frame parser, and Node formats it whenever a stream is destroyed
   * with the error (about 0.1 ms each), so it has none.
   */
  static fromPeer(code: RocksErrorCode, detail: string): RocksError {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      return new RocksError(code, detail);
    } finally {
      Error.stackTraceLimit = limit;
    }
  }

  get wireCode(): number {
    return ERROR_CODES[this.code].wire;
  }
}

/** Maps a wire error number to its code; unknown numbers count as protocol errors. */
export function codeFromWire(wire: number): RocksErrorCode {
  return BY_WIRE.get(wire) ?? 'ERR_ROCKS_PROTOCOL';
}
