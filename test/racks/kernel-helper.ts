// Runs one of netfilter.ts's kernel operations inside a test host's
// namespace (started with `bed.spawn`) and prints its result as JSON:
// `node kernel-helper.js inspect|remove-leftovers [tun]`.

import { inspect, removeLeftovers } from '../../src/racks/netfilter.js';

const [command, tun = 'rack0'] = process.argv.slice(2);
if (command === 'inspect') console.log(JSON.stringify(inspect({ tun })));
else if (command === 'remove-leftovers') {
  removeLeftovers({ tun });
  console.log(JSON.stringify({ ok: true }));
} else throw new Error(`unknown command ${command}`);
