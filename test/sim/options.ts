// Every probability and range a simulation run draws from, in one record
// (TigerBeetle keeps its simulator's odds the same way). A run draws its own
// values from these with its seed; runSeed reports what it drew, and a
// failing run prints them first.
//
// A range [a, b] is drawn log-uniformly (SimRandom.spread) unless it says
// otherwise; a chance is the probability of the case named.

export const SIM_OPTIONS = {
  timing: {
    /** failureTimeout is one of these (ms). */
    failureTimeouts: [300, 1000, 3000],
    /** Chance that heartbeatInterval keeps its default (failureTimeout / 5). */
    defaultHeartbeat: 0.5,
    /** Otherwise it is failureTimeout divided by one of these. */
    heartbeatDivisors: [3, 4, 8],
    reconnectDelays: [10, 100, 300],
    reconnectDelayMaxes: [500, 2000],
    /** Receive window and in-flight limit (bytes). */
    receiveWindow: [1024, 1 << 20],
    maxInflight: [1024, 8 << 20],
  },
  network: {
    /** One-way latency (ms); each link varies it by a factor of 0.5 to 1.5. */
    latency: [1, 150],
    /** Bytes per ms. */
    bandwidth: [20, 50_000],
    /** A link's send buffer (bytes). */
    sendBuffer: [2048, 256 * 1024],
    /** Chance that an abortive close reaches the peer after the bytes already sent (else after the latency). */
    resetAfterData: 0.5,
  },
  faults: {
    /** Faults stop at a time drawn from this range (ms); then the network heals. */
    faultEnd: [500, 30_000],
    /** Mean time between fault rolls (ms); the gaps are exponential. */
    meanGap: [30, 5000],
    /** Share of rolls that start an outage of every live link. */
    outage: 0.15,
    /** Share of rolls, up to this, that injure one live link (the rest do nothing). */
    singleLink: 0.9,
    /** How long an outage refuses or hangs new connections (ms). */
    outageDuration: [50, 20_000],
    /** Chance that a connection attempt during an outage is refused (else its SYN vanishes). */
    outageRefuses: 0.5,
    /** Chance that an outage black-holes a live link (else resets it). */
    outageStall: 0.8,
    /** Chance that a single-link fault is a reset (else a black hole). */
    singleReset: 0.6,
    /** Chance that a new connection is injured within 4 latencies of its start (handshakes, resumes). */
    handshake: 0.15,
    /** Chance that such an early fault is a reset (else a black hole). */
    handshakeReset: 0.7,
    /** A reset tells each end with one of these probabilities. */
    resetNotify: [0, 0.5, 1],
  },
  app: {
    /** 1 to this many clients. */
    maxClients: 3,
    /** Chance that a direction carries no data at all. */
    emptyStream: 0.1,
    /** Bytes per direction. */
    streamBytes: [1, 2_000_000],
    /** Largest write (bytes). */
    maxWrite: [1, 128 * 1024],
    /** Mean pause between writes (ms). */
    writePause: [1, 300],
    /** Chance that an end reads at once (else at a mean pause drawn from readPause). */
    readsAtOnce: 0.5,
    readPause: [1, 500],
    /** Chance that a write follows the previous one at once. */
    writeAtOnce: 0.3,
    /** Chance that a read takes everything unread (else a random part of it). */
    readAll: 0.7,
  },
  tls: {
    /**
     * Share of single-server seeds whose links are keyed channels, as rocks
     * over TLS: a HELLO needs no key agreement and data follows it at once
     * (PROTOCOL.md §15.2). Drawn from a generator of its own.
     */
    keyedChannel: 0.35,
  },
  /**
   * Share of seeds whose clients send data behind a HELLO without TLS (the
   * earlyData option, PROTOCOL.md §3.8). Drawn from a generator of its own.
   */
  earlyData: 0.5,
  /**
   * Share of seeds whose kernels watch the links (PROTOCOL.md §5.1): PACE
   * frames cross them, heartbeats come only every pathCheckInterval (drawn
   * as this many failure timeouts), and a black hole is reported to each
   * watching end. Drawn from a generator of its own.
   */
  kernelLiveness: { share: 0.5, pathChecks: [2, 4, 10] },
  changes: {
    /**
     * Share of seeds in which the network changes under clients (src/node/
     * network-watch.ts): a client moves its open session to a new link
     * while the old one may still carry data and acknowledgements, or
     * redials at once while suspended. Drawn from a generator of its own.
     */
    changing: 0.4,
    /** Mean ms between two changes (each at one client), drawn per seed. */
    meanGap: [50, 2000],
    /** Chance that a change also black-holes the client's current link (its address vanished). */
    oldLinkGone: 0.4,
    /** Chance that a change asks for a move even along the same path (after a stall). */
    verify: 0.5,
  },
  cluster: {
    /**
     * Share of seeds that run several server nodes behind a balancer, with
     * relays, node deaths and directory outages; the rest run one server as
     * before (those draw nothing from here, so their runs stay as they were).
     */
    multiNode: 0.5,
    /** 2 to this many nodes. */
    maxNodes: 4,
    /** One-way latency between two nodes (ms), for relayed links. */
    nodeLatency: [0.05, 5],
    /** Bytes per ms between two nodes. */
    nodeBandwidth: [1000, 100_000],
    /** Chance that a node dies during the run (one node, drawn, never dies). */
    death: 0.35,
    /** When a node dies (ms). */
    deathAt: [5, 40_000],
    /** Chance that a dead node restarts: same node id and address, a new instance. */
    restart: 0.5,
    /** How long a dead node stays down before it restarts (ms); it restarts only while the directory answers. */
    downtime: [5, 10_000],
    /**
     * Chance that the balancer never sends a resume to the node holding its
     * session while another node is up: every resume then needs a relay, so
     * a relay that does not work loses sessions instead of being hidden by
     * the resumes that reach their owner by chance.
     */
    avoidOwner: 0.3,
    /** How long the balancer goes on sending new links to a dead node, which refuses them (its health check's lag, ms). */
    balancerLag: [1, 3000],
    /** How long a dead node's directory entry outlives it (its lease, ms). */
    lease: [50, 10_000],
    /** Chance that the directory has outages during the run. */
    directoryOutage: 0.6,
    /** Up to this many outages, each starting at a time drawn from deathAt. */
    directoryOutages: 3,
    /** How long an outage lasts (ms). */
    directoryOutageDuration: [10, 20_000],
    /** Round trip of a directory lookup for a node a relaying node does not know (ms). */
    lookupDelay: [0.1, 5],
  },
} as const;

export type Range = readonly [number, number];
