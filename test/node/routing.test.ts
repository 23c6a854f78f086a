// A balancer's view of real rocks links: a recording TCP hop between a rocks
// client and a ReliableServer with a node id reads each link's first bytes
// with routeLink, as a balancer or a cluster primary would.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, connect as netConnect, createServer as netCreateServer, type Socket } from 'node:net';
import { test } from 'node:test';
import { connect, createServer, RESUME_NODE_OFFSET, RocksError, routeLink } from '../../src/index.js';
import { until } from '../support/helpers.js';
import { closeServer, listen } from '../support/net.js';

/** A TCP hop that records the first bytes each connection sends and can cut a connection. */
async function recordingHop(to: number) {
  const links: { first: Buffer; client: Socket; upstream: Socket }[] = [];
  const server = netCreateServer((client) => {
    const upstream = netConnect(to, '127.0.0.1');
    const link = { first: Buffer.alloc(0), client, upstream };
    links.push(link);
    client.on('data', (chunk: Buffer) => {
      if (link.first.length < 64) link.first = Buffer.concat([link.first, chunk]).subarray(0, 64);
    });
    client.pipe(upstream).pipe(client);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { links, port: (server.address() as AddressInfo).port, close: () => server.close() };
}

test('a resuming link names the node that holds its session at the documented offsets', async () => {
  const { server, port } = await listen({ nodeId: 42 }, (s) => {
    s.on('error', () => {}); // the client aborts at the end
    s.pipe(s);
  });
  const hop = await recordingHop(port);
  const c = connect({ port: hop.port, host: '127.0.0.1', enhanced: true });
  try {
    assert.equal(server.nodeId, 42);
    c.write('a');
    await once(c, 'data');
    const sessionId = Buffer.from(c.sessionId!, 'hex');
    assert.equal(sessionId.readUInt32BE(1), 42);
    assert.equal(hop.links.length, 1);
    assert.deepEqual(routeLink(hop.links[0].first), { kind: 'new' });

    hop.links[0].client.destroy(); // cut the path: the client resumes through the hop
    const reconnected = once(c, 'reconnect');
    await until(() => hop.links.length === 2 && routeLink(hop.links[1].first).kind !== 'incomplete', 10_000, 'a resuming link');
    const route = routeLink(hop.links[1].first);
    assert.equal(route.kind, 'resume');
    if (route.kind !== 'resume') return;
    assert.deepEqual(route.owner, { nodeId: 42, workerId: 0 });
    assert.deepEqual(route.sessionId, sessionId);
    assert.equal(hop.links[1].first.readUInt32BE(RESUME_NODE_OFFSET), 42);
    await reconnected;
    c.write('b');
    const [echo] = (await once(c, 'data')) as [Buffer];
    assert.equal(echo.toString(), 'b');
  } finally {
    c.destroy();
    hop.close();
    await closeServer(server);
  }
});

test('nodeId must be an integer from 0 to 4294967295', () => {
  for (const nodeId of [-1, 1.5, 2 ** 32, Number.NaN]) {
    assert.throws(
      () => createServer({ nodeId }),
      (err: unknown) => err instanceof RocksError && err.code === 'ERR_ROCKS_INVALID_OPTION',
      String(nodeId),
    );
  }
  for (const nodeId of [0, 4294967295]) assert.equal(createServer({ nodeId }).nodeId, nodeId);
});
