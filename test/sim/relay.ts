// A node carries a resuming link to the node that holds its session, as
// src/node/server.ts (relay) and src/node/node-relay.ts do: look the owner
// up (the address known now, else one directory lookup), connect to it, write
// a PROXY v2 header naming the client and the bytes already read, then
// splice both ways. The owner's address refusing the connection means no
// process holds the session: the client hears relayRefusal (its session is
// gone); a connection that fails otherwise or does not connect within
// RELAY_CONNECT_TIMEOUT drops the client's link, and the client tries again.
// After the splice starts, a graceful close passes on as a graceful close, a
// reset as a reset. Bytes are not held back by the far side's buffer (Node's
// pipe would pause): the sessions' receive windows bound them anyway.

import { RELAY_CONNECT_TIMEOUT } from '../../src/node/node-relay.js';
import { encodeProxyHeader, type ProxyAddress } from '../../src/protocol/proxy-header.js';
import { relayRefusal } from '../../src/protocol/server-core.js';
import type { Clock, SimLink } from './network.js';

/** The relaying node accepted the client's link, and opens the one to the owner. */
const CLIENT_LINK_SIDE = 1;
const UPSTREAM_SIDE = 0;

export type RelayOutcome = 'relayed' | 'refused' | 'unreachable';

/** What a relay needs from the world around it. */
export interface RelayEnvironment<N> {
  clock: Clock;
  trace(line: string): void;
  /** directory.addressOf: the owner's address as known now. */
  addressOf(nodeId: number): N | undefined;
  /** directory.resolve after a miss. */
  resolve(nodeId: number, done: (node: N | undefined) => void): void;
  /** Opens a link from the relaying node to `node`; `opened` runs once it connected. */
  connect(node: N, opened: () => void): SimLink;
  /** How the relay went, once (for the run's figures). */
  outcome(kind: RelayOutcome): void;
}

export class SimRelay<N> {
  private upstream: SimLink | undefined;
  private connected = false;
  private over = false;
  /** Bytes the client sent after those the node had read: the socket is paused until the splice starts. */
  private readonly held: Buffer[] = [];
  private readonly name: string;

  constructor(
    private readonly env: RelayEnvironment<N>,
    private readonly client: SimLink,
    private readonly initial: Buffer,
    readonly nodeId: number,
    private readonly source: ProxyAddress,
    private readonly destination: ProxyAddress,
    private readonly ended: () => void,
  ) {
    this.name = `relay of link ${client.id} to node ${nodeId.toString(16).padStart(8, '0')}`;
    client.attach(CLIENT_LINK_SIDE, {
      onData: (chunk) => {
        if (this.connected) this.upstream!.send(UPSTREAM_SIDE, [chunk]);
        else this.held.push(chunk);
      },
      onClosed: (reason) => this.clientClosed(reason),
      onDrain: () => {},
    });
  }

  start(): void {
    const known = this.env.addressOf(this.nodeId);
    if (known !== undefined) this.connect(known);
    else
      this.env.resolve(this.nodeId, (node) => {
        if (this.over) return;
        if (node === undefined) this.refuse('is not in this deployment');
        else this.connect(node);
      });
  }

  /** The relaying node died: both links go with it. */
  kill(): void {
    this.finish();
    this.client.close(CLIENT_LINK_SIDE, false);
    this.upstream?.close(UPSTREAM_SIDE, false);
  }

  private connect(node: N): void {
    const upstream = this.env.connect(node, () => {
      if (this.over) return;
      this.connected = true;
      this.env.trace(`${this.name}: relayed over link ${upstream.id}`);
      this.env.outcome('relayed');
      const header = encodeProxyHeader({ source: this.source, destination: this.destination });
      upstream.send(UPSTREAM_SIDE, [header, this.initial, ...this.held.splice(0)]);
    });
    this.upstream = upstream;
    upstream.attach(UPSTREAM_SIDE, {
      onData: (chunk) => this.client.send(CLIENT_LINK_SIDE, [chunk]),
      onClosed: (reason) => this.upstreamClosed(reason),
      onDrain: () => {},
    });
    this.env.clock.after(RELAY_CONNECT_TIMEOUT, () => {
      if (!this.connected && !this.over) this.unreachable('ETIMEDOUT');
    });
  }

  private clientClosed(reason: string): void {
    if (this.over) return;
    this.finish();
    // Before the splice: the attempt is dropped. After: passed on as it came.
    this.upstream?.close(UPSTREAM_SIDE, this.connected && reason === 'closed by peer');
  }

  private upstreamClosed(reason: string): void {
    if (this.over) return;
    if (!this.connected) {
      if (reason === 'ECONNREFUSED') this.refuse('is gone');
      else this.unreachable(reason);
      return;
    }
    this.finish();
    this.client.close(CLIENT_LINK_SIDE, reason === 'closed by peer');
  }

  /** The owner is gone or unknown: tell the client its session is, at once. */
  private refuse(why: string): void {
    this.finish();
    this.env.trace(`${this.name}: refused, the node ${why}`);
    this.env.outcome('refused');
    if (!this.client.isOpen(CLIENT_LINK_SIDE)) return;
    this.client.send(CLIENT_LINK_SIDE, relayRefusal(`node ${this.nodeId.toString(16).padStart(8, '0')} ${why}`));
    this.client.close(CLIENT_LINK_SIDE, true);
  }

  /** The owner cannot be reached now: drop the client's link; it will try again. */
  private unreachable(reason: string): void {
    this.finish();
    this.env.trace(`${this.name}: owner unreachable (${reason}), link dropped`);
    this.env.outcome('unreachable');
    this.upstream?.close(UPSTREAM_SIDE, false);
    this.client.close(CLIENT_LINK_SIDE, false);
  }

  private finish(): void {
    this.over = true;
    this.ended();
  }
}
