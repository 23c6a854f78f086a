// What users suffer, on real kernels with real routing (test/bed): the
// client's address changes, the path black-holes for 30 s, the link goes
// down for 10 s, an outage outlives what plain TCP survives, and 200
// connections ride out one outage together. Each scenario streams random
// bytes both ways through rocks sockets (the agent) and, at the same time,
// through an unmodified socat carried by `rock forward` + `rock serve`; every
// byte is checked by SHA-256, and the detection and resume times are printed.
// Needs root; skipped with the reason otherwise.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { resolveSessionConfig } from '../../src/protocol/config.js';
import { netbedSkip } from '../bed/netbed.js';
import {
  agentClient,
  agentServer,
  type Agent,
  type AgentEvent,
  type CommandPath,
  type ScenarioOptions,
  type StreamingWorld,
  streamingScenario,
  strays,
} from '../bed/programs.js';
import { sleep, until } from '../support/helpers.js';

const skip = netbedSkip();

const FAILURE_TIMEOUT = 2000;
// These scenarios time failure detection: the network watcher, which moves
// sessions at once on a change it sees (test/netns/network-change.test.ts),
// is off, as it is where the system has none.
const options = { failureTimeout: FAILURE_TIMEOUT, reconnectDelayMax: 1000, watchNetwork: false };
/** The heartbeat both ends use: the library's default for this failureTimeout (failureTimeout / 5, PROTOCOL.md §12). */
const HEARTBEAT = resolveSessionConfig(options).heartbeatInterval;
/**
 * How late detection may come beyond failureTimeout + one heartbeat: the
 * fault's time is taken just before the command that applies it (an nft rule
 * or an ip command in the bed's namespaces: a few to tens of ms), and an
 * agent's timers share one event loop with up to 200 sessions.
 */
const SCHEDULING_MARGIN = 100;
const rockOptions = ['--failure-timeout', String(FAILURE_TIMEOUT), '--heartbeat', String(HEARTBEAT), '--no-watch-network'];
const AGENT_PORT = 7000;
const RATE = 256 * 1024; // bytes a second, each way, per stream

const ms = (values: number[]): string => values.map((v) => Math.round(v)).join(', ');
const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? NaN;

/** The scenarios' world: the library's streaming scenario at this file's failureTimeout. */
function scenario(name: string, body: (world: StreamingWorld) => Promise<void>, opts: ScenarioOptions = {}): Promise<void> {
  return streamingScenario(name, body, { options, rockOptions, ...opts });
}

/** Restores the path `ms` after `broken`; resolves with when it began to (the path may be back before the command returns). */
function restoreAfter(broken: number, ms: number, restore: () => void): () => Promise<number> {
  return async () => {
    await sleep(Math.max(0, ms - (Date.now() - broken)));
    const healed = Date.now();
    restore();
    return healed;
  };
}

/** The events of `type` after time `since`, one per connection and side. */
function firstAfter(agent: Agent, type: AgentEvent['type'], since: number): AgentEvent[] {
  const seen = new Set<string>();
  return agent.events.filter((e) => {
    if (e.type !== type || e.t < since || seen.has(`${e.side}${e.id}`)) return false;
    seen.add(`${e.side}${e.id}`);
    return true;
  });
}

/** Waits until every connection on both sides has resumed after `since`; returns the resume events. */
async function allResumed(
  client: Agent,
  server: Agent,
  count: number,
  since: number,
  ms: number,
): Promise<{ client: AgentEvent[]; server: AgentEvent[] }> {
  await client.waitFor((a) => firstAfter(a, 'resume', since).length === count, ms, `${count} client resumes`);
  await server.waitFor((a) => firstAfter(a, 'resume', since).length === count, ms, `${count} server resumes`);
  return { client: firstAfter(client, 'resume', since), server: firstAfter(server, 'resume', since) };
}

/** Waits until the command path's rocks connection resumed after `since`; returns [detection, resume] times from the forward's log. */
async function commandResumed(command: CommandPath, since: number): Promise<{ suspended: number; resumed: number }> {
  await until(
    () => command.outages().resumed.some((t) => t >= since),
    60_000,
    () => `rock forward to resume:\n${command.forward?.output}`,
  );
  const { suspended, resumed } = command.outages();
  return { suspended: suspended.find((t) => t >= since)!, resumed: resumed.find((t) => t >= since)! };
}

/**
 * A path fault from `broken` to `healed`: checks every connection suspended
 * (none failed) and resumed, prints detection (suspend − broken) and resume
 * (resume − healed) times for the agents and the command path.
 */
async function outage(
  label: string,
  world: { client: Agent; server: Agent; command: CommandPath },
  count: number,
  broken: number,
  heal: () => Promise<number>,
  timers = { failureTimeout: FAILURE_TIMEOUT, heartbeat: HEARTBEAT },
): Promise<void> {
  const { client, server, command } = world;
  // An end declares the link failed failureTimeout after the last byte it
  // heard (its kernel after the last answer to a probe), and that came no
  // later than the fault; one heartbeat interval covers what was already past
  // the router when the fault began.
  const bound = timers.failureTimeout + timers.heartbeat + SCHEDULING_MARGIN;
  // Waits longer than the bound, so that a late detection is reported with its time.
  await client.waitFor((a) => firstAfter(a, 'suspend', broken).length === count, 3 * timers.failureTimeout, `${count} suspensions`);
  const healed = await heal();
  const resumes = await allResumed(client, server, count, healed, 30_000);
  const cmd = await commandResumed(command, broken);
  await server.waitFor((a) => firstAfter(a, 'suspend', broken).length === count, 30_000, `${count} server suspensions`);
  const detection = [...firstAfter(client, 'suspend', broken), ...firstAfter(server, 'suspend', broken), { t: cmd.suspended }].map(
    (e) => e.t - broken,
  );
  const resumeTimes = [...resumes.client, ...resumes.server].map((e) => e.t - healed);
  const stray = strays(client, server);
  assert.deepEqual([...client.of('error'), ...server.of('error').filter((e) => !stray.has(e.id!))], [], 'no connection failed');
  assert.equal(detection.length, 2 * count + 1, `every end suspended (the agents' both ends and rock forward): ${ms(detection)}`);
  assert.ok(
    detection.every((d) => d <= bound),
    `detection within failureTimeout + heartbeat + ${SCHEDULING_MARGIN} ms (${bound} ms), the agents' ends then rock forward: ${ms(detection)}`,
  );
  console.log(
    `# ${label}: ${detection.length} ends suspended, ${resumeTimes.length} resumed; detection (ms) median ${Math.round(median(detection))}, max ${Math.round(Math.max(...detection))} (failureTimeout ${timers.failureTimeout}, heartbeat ${timers.heartbeat}); ` +
      `resumed (ms after the path was usable again) median ${Math.round(median(resumeTimes))}, max ${Math.round(Math.max(...resumeTimes))}; ` +
      `rock forward: detected after ${cmd.suspended - broken}, resumed ${cmd.resumed - healed} after; ` +
      `${stray.size} resume attempt(s) whose announcement was lost served plain on the server`,
  );
}

describe('network test bed scenarios (namespaces, veth, a router)', { skip }, () => {
  test("the client's address changes mid-transfer, once and then three times in a row", { timeout: 120_000 }, async () => {
    await scenario('address changes', async (world) => {
      const { bed, server } = world;
      for (const round of [1, 2, 3, 4]) {
        const old = bed.clientAddress;
        const moved = Date.now();
        const now = bed.moveClient();
        await outage(`move ${round} (${old} → ${now})`, world, 1, moved, async () => moved);
        const resumed = firstAfter(server, 'resume', moved);
        assert.deepEqual(
          resumed.map((e) => e.remote),
          [now],
          `the server took the session back from the new address; events since the move (${moved}): ${JSON.stringify([...world.client.events, ...server.events].filter((e) => e.t >= moved - 3000))}`,
        );
        if (round === 1) await sleep(1000); // a pause between the first move and the three in a row
      }
    });
  });

  test('the path is black-holed for 30 s, then restored', { timeout: 120_000 }, async () => {
    await scenario('black hole 30 s', async (world) => {
      const broken = Date.now();
      world.bed.blackhole();
      await outage(
        'black hole 30 s',
        world,
        1,
        broken,
        restoreAfter(broken, 30_000, () => world.bed.heal()),
      );
    });
  });

  test('kernel liveness at the defaults (failureTimeout 5000): idle sessions that send heartbeats only every 30 s find a black hole within failureTimeout + heartbeat', {
    timeout: 120_000,
  }, async () => {
    // The agents' connections write once a minute, so they are idle when the
    // path goes; only the kernel's probes can find it in time (the sessions'
    // own silence limit is 90 s, three path checks). The command path streams:
    // its data, unacknowledged, meets TCP_USER_TIMEOUT.
    const defaults = resolveSessionConfig({});
    const timers = { failureTimeout: defaults.failureTimeout, heartbeat: defaults.heartbeatInterval };
    await scenario(
      'kernel liveness',
      async (world) => {
        const broken = Date.now();
        world.bed.blackhole();
        await outage(
          'kernel liveness, black hole 10 s',
          world,
          1,
          broken,
          restoreAfter(broken, 10_000, () => world.bed.heal()),
          timers,
        );
        // The kernel said so (the connection timed out), not the sessions' own silence limit.
        const reasons = [...firstAfter(world.client, 'suspend', broken), ...firstAfter(world.server, 'suspend', broken)].map((e) => e.reason);
        assert.deepEqual(reasons, ['ETIMEDOUT', 'ETIMEDOUT']);
      },
      { options: { reconnectDelayMax: 1000, watchNetwork: false }, rockOptions: ['--no-watch-network'], tick: 60_000, rate: 1024, settle: 3000 },
    );
  });

  test('the link goes down for 10 s and comes back up', { timeout: 90_000 }, async () => {
    await scenario('link down 10 s', async (world) => {
      const broken = Date.now();
      world.bed.linkDown();
      await outage(
        'link down 10 s',
        world,
        1,
        broken,
        restoreAfter(broken, 10_000, () => world.bed.linkUp()),
      );
    });
  });

  test('an outage longer than plain TCP survives (tcp_retries2=5): the plain connection on the same path dies, rocks rides it out', {
    timeout: 180_000,
  }, async () => {
    await scenario(
      'past plain TCP',
      async (world) => {
        const { bed } = world;
        // Plain TCP on the same path, streaming like the others: the kernel gives up on it after tcp_retries2.
        const plainServer = await agentServer(bed, AGENT_PORT + 1, {}, RATE);
        const plain = await agentClient(bed, AGENT_PORT + 1, {}, RATE, 1, true);
        try {
          assert.equal(plain.of('connected')[0].reliable, false);
          const broken = Date.now();
          bed.blackhole();
          await plain.waitFor((a) => a.of('error').length > 0, 60_000, 'the plain connection to fail');
          const died = plain.of('error')[0];
          assert.equal(died.code, 'ETIMEDOUT', 'the kernel gave up retransmitting');
          const plainLife = died.t - broken;
          const OUTAGE = 45_000;
          assert.ok(OUTAGE >= 3 * plainLife, `the outage (${OUTAGE} ms) is several times what plain TCP survived (${plainLife} ms)`);
          await outage(
            `black hole ${OUTAGE / 1000} s, plain TCP died after ${(plainLife / 1000).toFixed(1)} s`,
            world,
            1,
            broken,
            restoreAfter(broken, OUTAGE, () => bed.heal()),
          );
          assert.equal(world.client.of('resume').length, 1);
        } finally {
          await plain.stop();
          await plainServer.stop();
        }
      },
      { sysctl: { 'net.ipv4.tcp_retries2': '5' } },
    );
  });

  test('200 rocks connections from one client host, all suspended by one outage and all resumed with every byte intact', {
    timeout: 180_000,
  }, async () => {
    const COUNT = 200;
    await scenario(
      '200 connections',
      async (world) => {
        const broken = Date.now();
        world.bed.blackhole();
        await outage(
          `black hole 10 s, ${COUNT} connections`,
          world,
          COUNT,
          broken,
          restoreAfter(broken, 10_000, () => world.bed.heal()),
        );
      },
      { count: COUNT, rate: 16 * 1024 },
    );
  });
});
