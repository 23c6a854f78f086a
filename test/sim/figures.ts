// What happened across the nodes of multi-node runs, summed over many seeds
// for the command line and the test's summary.

/** One run's figures (SimResult has them). */
export interface RunFigures {
  /** How many server nodes ran (1: a single server). */
  nodes: number;
  /** Resuming links carried to the node holding their session. */
  relayed: number;
  /** Relays refused: the owner was gone (its address refused) or unknown to the directory. */
  refused: number;
  /** Relays dropped because the owner could not be reached; the client tried again. */
  unreachable: number;
  deaths: number;
  restarts: number;
  directoryOutages: number;
  /** Clients whose session ended with its node. */
  lost: number;
  /** Runs whose links were keyed channels (as TLS). */
  keyed: number;
  /** Clients that sent data behind their HELLO, in keyed runs. */
  earlyData: number;
  /** Clients that failed in their first round trip (early data, HELLO lost), in keyed runs. */
  lostFirstTrip: number;
  /** Runs without keyed channels whose clients send data behind their HELLO (the earlyData option). */
  plainEarlyRuns: number;
  /** Clients of those runs that sent data behind their HELLO. */
  plainEarlyData: number;
  /** Clients of those runs that failed before a server confirmed their session. */
  plainLostFirstTrip: number;
  /** Runs in which the network changed under clients. */
  changing: number;
  /** Sessions moved to a new link while the old one was open. */
  migrations: number;
}

/** The figures summed over many runs, and how many of them had several nodes. */
export interface ClusterFigures extends Omit<RunFigures, 'nodes'> {
  multiNode: number;
}

export function noFigures(): ClusterFigures {
  return {
    multiNode: 0,
    relayed: 0,
    refused: 0,
    unreachable: 0,
    deaths: 0,
    restarts: 0,
    directoryOutages: 0,
    lost: 0,
    keyed: 0,
    earlyData: 0,
    lostFirstTrip: 0,
    plainEarlyRuns: 0,
    plainEarlyData: 0,
    plainLostFirstTrip: 0,
    changing: 0,
    migrations: 0,
  };
}

/** One run's figures, all zero (a run that failed before it had any). */
export function noRunFigures(): RunFigures {
  const { multiNode: _, ...rest } = noFigures();
  return { nodes: 0, ...rest };
}

/** Adds one run's figures (or another total's) to `totals`. */
export function addFigures(totals: ClusterFigures, r: RunFigures | ClusterFigures): void {
  totals.multiNode += 'nodes' in r ? (r.nodes > 1 ? 1 : 0) : r.multiNode;
  for (const k of [
    'relayed',
    'refused',
    'unreachable',
    'deaths',
    'restarts',
    'directoryOutages',
    'lost',
    'keyed',
    'earlyData',
    'lostFirstTrip',
    'plainEarlyRuns',
    'plainEarlyData',
    'plainLostFirstTrip',
    'changing',
    'migrations',
  ] as const)
    totals[k] += r[k];
}

export function describeFigures(t: ClusterFigures): string {
  return (
    `${t.multiNode} multi-node runs: ${t.relayed} links relayed, ${t.refused} relays refused (owner gone or unknown), ` +
    `${t.unreachable} dropped (owner unreachable), ${t.deaths} node deaths, ${t.restarts} restarts, ` +
    `${t.directoryOutages} directory outages, ${t.lost} sessions lost with their node; ` +
    `${t.keyed} keyed-channel runs: ${t.earlyData} clients sent data behind their HELLO, ${t.lostFirstTrip} failed in their first round trip; ` +
    `${t.plainEarlyRuns} runs with data behind plain HELLOs: ${t.plainEarlyData} clients sent some, ${t.plainLostFirstTrip} failed before their session was confirmed; ` +
    `${t.changing} runs with network changes: ${t.migrations} sessions moved to a new link while the old one was open`
  );
}
