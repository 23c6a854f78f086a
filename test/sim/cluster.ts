// A multi-node world drawn from SIM_OPTIONS.cluster: the nodes and their
// ids, which die when and whether they restart, the directory and its
// outages, and faults aimed at the links between nodes.

import type { ProxyAddress } from '../../src/protocol/proxy-header.js';
import { SimDirectory } from './directory.js';
import { SIM_OPTIONS, type Range } from './options.js';
import type { SimRandom } from './random.js';
import { type ServerEndpoint, SimNode, type World } from './world.js';

/** Where node `index` listens. */
export function nodeAddress(index: number): ProxyAddress {
  return { address: `10.1.0.${index + 1}`, port: 7000 };
}

/** Log-uniform in [min, max], not rounded (SimRandom.spread rounds). */
function spreadFraction(random: SimRandom, [min, max]: Range): number {
  return Math.exp(Math.log(min) + random.fraction() * (Math.log(max) - Math.log(min)));
}

/**
 * Several nodes behind the balancer, drawn from SIM_OPTIONS.cluster: their
 * ids, deaths and restarts, the directory and its outages. `random` is the
 * run's generator, for faults aimed at links between nodes. Returns when the
 * last of it is over (deaths noticed, restarts done, the directory back).
 */
export function buildCluster(
  world: World,
  clusterRandom: SimRandom,
  random: SimRandom,
  drawn: Record<string, unknown>,
  faultEnd: number,
  makeEndpoint: (node: SimNode) => ServerEndpoint,
): number {
  const c = SIM_OPTIONS.cluster;
  const count = clusterRandom.int(2, c.maxNodes);
  const ids = new Set<number>();
  while (ids.size < count) ids.add(clusterRandom.int(0, 0xffff_ffff));
  const nodeLatency = spreadFraction(clusterRandom, c.nodeLatency);
  const balancerLag = clusterRandom.spread(c.balancerLag[0], c.balancerLag[1]);
  const lease = clusterRandom.spread(c.lease[0], c.lease[1]);
  const lookupDelay = spreadFraction(clusterRandom, c.lookupDelay);
  const avoidOwner = clusterRandom.chance(c.avoidOwner);
  const directory = new SimDirectory<SimNode>(world.clock, lookupDelay);
  world.cluster = {
    nodeShape: () => ({
      latency: nodeLatency * (0.5 + world.random.fraction()),
      bandwidth: world.random.spread(c.nodeBandwidth[0], c.nodeBandwidth[1]),
      sendBuffer: world.random.spread(SIM_OPTIONS.network.sendBuffer[0], SIM_OPTIONS.network.sendBuffer[1]),
    }),
    balancerLag,
    avoidOwner,
    lease,
    directory,
  };
  world.makeEndpoint = makeEndpoint;
  for (const [i, id] of [...ids].entries()) {
    const node = new SimNode(i, id, nodeAddress(i));
    world.nodes.push(node);
    world.startNode(node);
  }

  let quietAt = 0;
  const outages: [number, number][] = [];
  if (clusterRandom.chance(c.directoryOutage)) {
    for (let i = clusterRandom.int(1, c.directoryOutages); i > 0; i--) {
      const at = clusterRandom.spread(c.deathAt[0], c.deathAt[1]);
      const duration = clusterRandom.spread(c.directoryOutageDuration[0], c.directoryOutageDuration[1]);
      outages.push([at, duration]);
      directory.scheduleOutage(at, duration, (line) => world.trace(line));
      quietAt = Math.max(quietAt, at + duration);
    }
  }
  const directoryBackBy = quietAt;
  // One node, drawn, never dies: new sessions always have somewhere to go.
  const survivor = clusterRandom.int(0, count - 1);
  const deaths: { node: number; at: number; restartAfter?: number }[] = [];
  for (const node of world.nodes) {
    if (node.index === survivor || !clusterRandom.chance(c.death)) continue;
    const at = clusterRandom.spread(c.deathAt[0], c.deathAt[1]);
    node.deathAt = at;
    world.clock.at(at, () => world.killNode(node));
    quietAt = Math.max(quietAt, at + balancerLag, at + lease);
    if (clusterRandom.chance(c.restart)) {
      const downtime = clusterRandom.spread(c.downtime[0], c.downtime[1]);
      world.clock.at(at + downtime, () => world.restartNode(node));
      quietAt = Math.max(quietAt, at + downtime, directoryBackBy);
      deaths.push({ node: node.index, at, restartAfter: downtime });
    } else {
      deaths.push({ node: node.index, at });
    }
  }

  // Aim some faults at links between nodes too, as at clients' new links.
  const odds = SIM_OPTIONS.faults;
  world.onNodeLink = (link) => {
    if (world.clock.now >= faultEnd || !random.chance(odds.handshake)) return;
    world.clock.after(random.int(0, Math.ceil(4 * link.shape.latency)), () => {
      if (link.stalled) return;
      if (random.chance(odds.handshakeReset)) {
        world.trace(`FAULT reset node link ${link.id}`);
        link.reset(random.pick(odds.resetNotify));
      } else {
        world.trace(`FAULT black-hole node link ${link.id}`);
        link.stall();
      }
      world.links.delete(link);
    });
  };

  drawn.cluster = {
    nodes: [...ids].map((id) => id.toString(16).padStart(8, '0')),
    nodeLatency,
    balancerLag,
    avoidOwner,
    lease,
    lookupDelay,
    deaths,
    directoryOutages: outages,
  };
  return quietAt;
}
