// The flow table (src/racks/flows.ts) on packets built as Linux sends them:
// what a daemon forges to hold a sender, and to reopen it again.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { FlowTable, seqAfter, segmentEnd, type Flow } from '../../src/racks/flows.js';
import { buildTcpPacket, parseTcpPacket, TcpFlags, verifyChecksums, type TcpPacket } from '../../src/racks/packet.js';

const CLIENT = { address: '10.1.1.2', port: 40_000 };
const SERVER = { address: '10.2.2.2', port: 22 };

function packet(
  from: typeof CLIENT,
  to: typeof CLIENT,
  seq: number,
  ack: number,
  flags: number,
  extra: { payload?: Buffer; window?: number; ts?: [number, number] } = {},
): TcpPacket {
  return parseTcpPacket(
    buildTcpPacket({
      src: from.address,
      dst: to.address,
      srcPort: from.port,
      dstPort: to.port,
      seq: seq >>> 0,
      ack: ack >>> 0,
      flags,
      window: extra.window ?? 502,
      payload: extra.payload,
      options: extra.ts ? { timestamp: { value: extra.ts[0], echo: extra.ts[1] } } : undefined,
    }),
  );
}

/** A handshake and 100 bytes from the client, as the client's daemon sees them (out = from the client). */
function established(table: FlowTable, clientIsn: number, serverIsn: number, ts = true): Flow {
  const t = (v: number, e: number): [number, number] | undefined => (ts ? [v, e] : undefined);
  table.observe('out', packet(CLIENT, SERVER, clientIsn, 0, TcpFlags.SYN, { ts: t(1000, 0) }), 0);
  table.observe('in', packet(SERVER, CLIENT, serverIsn, clientIsn + 1, TcpFlags.SYN | TcpFlags.ACK, { window: 65160, ts: t(5000, 1000) }), 1);
  table.observe('out', packet(CLIENT, SERVER, clientIsn + 1, serverIsn + 1, TcpFlags.ACK, { ts: t(1001, 5000) }), 2);
  const flow = table.observe(
    'out',
    packet(CLIENT, SERVER, clientIsn + 1, serverIsn + 1, TcpFlags.ACK | TcpFlags.PSH, { payload: Buffer.alloc(100, 7), ts: t(1002, 5000) }),
    3,
  );
  assert.ok(flow !== undefined && flow !== 'full');
  return flow;
}

describe('flow table', () => {
  test('the hold ACK acknowledges everything sent, from the peer, with a zero window and the timestamps echoed', () => {
    const table = new FlowTable();
    const flow = established(table, 1_000_000, 7_000_000);
    const ack = parseTcpPacket(table.holdAck(flow, 100)!);
    assert.deepEqual(verifyChecksums(table.holdAck(flow)!), { ip: true, tcp: true });
    assert.equal(ack.src, SERVER.address);
    assert.equal(ack.dst, CLIENT.address);
    assert.equal(ack.srcPort, SERVER.port);
    assert.equal(ack.dstPort, CLIENT.port);
    assert.equal(ack.seq, 7_000_001);
    assert.equal(ack.ack, 1_000_101);
    assert.equal(ack.flags, TcpFlags.ACK);
    assert.equal(ack.window, 0);
    assert.equal(ack.payload.length, 0);
    assert.deepEqual(ack.options.timestamp, { value: 5000, echo: 1002 });
    assert.equal(flow.held, true);
  });

  test('the reopening ACK reopens the window the peer last advertised, once', () => {
    const table = new FlowTable();
    const flow = established(table, 1, 2);
    assert.equal(table.reopenAck(flow), undefined, 'nothing to reopen before a hold');
    table.holdAck(flow);
    const reopen = parseTcpPacket(table.reopenAck(flow)!);
    assert.equal(reopen.window, 65160);
    assert.equal(reopen.ack, 1 + 1 + 100);
    assert.equal(table.reopenAck(flow), undefined);
  });

  test('no timestamps on the forged ACK when the connection did not negotiate them', () => {
    const table = new FlowTable();
    const flow = established(table, 10, 20, false);
    assert.equal(parseTcpPacket(table.holdAck(flow)!).options.timestamp, undefined);
  });

  test('sequence numbers wrap around 2^32', () => {
    const table = new FlowTable();
    const flow = established(table, 2 ** 32 - 50, 2 ** 32 - 1);
    assert.equal(flow.localNext, 51, 'SYN + 100 bytes past 2^32 - 50');
    assert.equal(flow.remoteNext, 0);
    assert.ok(seqAfter(5, 2 ** 32 - 5));
    assert.ok(!seqAfter(2 ** 32 - 5, 5));
    assert.equal(parseTcpPacket(table.holdAck(flow)!).ack, 51);
  });

  test('a sender with unacknowledged data is listed for holding; once acknowledged it is not', () => {
    const table = new FlowTable();
    const flow = established(table, 100, 200);
    assert.deepEqual([...table.unacknowledged()], [flow]);
    table.observe('in', packet(SERVER, CLIENT, 201, 201, TcpFlags.ACK, { ts: [5001, 1002] }), 4);
    assert.deepEqual([...table.unacknowledged()], []);
  });

  test('the hold ACK waits for a handshake to complete; a segment ends after its SYN, payload and FIN', () => {
    const table = new FlowTable();
    const syn = packet(CLIENT, SERVER, 5, 0, TcpFlags.SYN);
    const flow = table.observe('out', syn, 0) as Flow;
    assert.equal(table.holdAck(flow), undefined);
    assert.equal(segmentEnd(syn), 6);
    assert.equal(segmentEnd(packet(CLIENT, SERVER, 6, 1, TcpFlags.ACK | TcpFlags.FIN, { payload: Buffer.alloc(10) })), 17);
  });

  test('only a SYN starts a flow; past the limit new flows are refused; ended flows are swept', () => {
    const table = new FlowTable({ maxFlows: 1, endedLinger: 1000 });
    assert.equal(table.observe('out', packet(CLIENT, SERVER, 1, 1, TcpFlags.ACK), 0), undefined);
    const flow = established(table, 1, 2);
    assert.equal(table.observe('out', packet({ ...CLIENT, port: 40_001 }, SERVER, 1, 0, TcpFlags.SYN), 0), 'full');
    table.observe('in', packet(SERVER, CLIENT, 3, 102, TcpFlags.ACK | TcpFlags.FIN), 10);
    assert.equal(flow.ending, true);
    assert.equal(table.sweep(500), 0);
    assert.equal(table.sweep(1010), 1);
    assert.equal(table.size, 0);
    // At the limit, an ended flow gives its place to a new one.
    const again = established(table, 50, 60);
    table.observe('out', packet(CLIENT, SERVER, 151, 61, TcpFlags.ACK | TcpFlags.FIN), 20);
    assert.equal(again.ending, true);
    const next = table.observe('out', packet({ ...CLIENT, port: 40_002 }, SERVER, 1, 0, TcpFlags.SYN), 30);
    assert.ok(next !== undefined && next !== 'full');
    assert.equal(table.size, 1);
  });
});
