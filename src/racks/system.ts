// The real parts of a rack daemon (src/racks/parts.ts), on Linux as root:
// the TUN device with offload, a raw socket whose packets the rules let
// pass, racks' nftables table and routes, the network watcher, rocks on the
// rack port, the system clock. `rack up` (src/cli/rack.ts) opens them and
// builds the daemon from them.

import { networkInterfaces } from 'node:os';
import { networkWatcher } from '../node/network-watch.js';
import type { RackOptions } from './daemon.js';
import { RocksLinks } from './links.js';
import * as netfilter from './netfilter.js';
import { systemClock, type AddressWatcher, type RackParts } from './parts.js';
import { RawSender } from './raw-socket.js';
import { TunDevice } from './tun.js';

/**
 * Removes what a killed daemon left, then opens the TUN and the raw socket
 * (closing the TUN again when the socket fails). Nothing is installed until
 * the daemon starts.
 */
export function openSystemParts(options: RackOptions, kernel: netfilter.RackKernelConfig): RackParts {
  netfilter.removeLeftovers(kernel);
  // Offload: whole 64 KiB TCP segments come out of (and go into) the TUN, so
  // the daemon handles a packet where 1500-byte ones would take forty. Every
  // packet, carried ones too, starts with its virtio_net_hdr (tun.ts).
  const tun = new TunDevice({ name: kernel.tun, offload: true });
  let raw: RawSender;
  try {
    raw = new RawSender(netfilter.bypassMark(kernel));
  } catch (err) {
    void tun.close();
    throw err;
  }
  return {
    tun,
    raw,
    kernel: netfilter.kernelControl(options.specs, { ...kernel, port: options.port }),
    addresses: new IpMonitor(),
    links: new RocksLinks(options),
    clock: systemClock,
  };
}

/**
 * The process's network watcher (src/node/network-watch.ts, the one rocks
 * sessions use) says when, and node:os says what, the host's IPv4
 * addresses are.
 */
class IpMonitor implements AddressWatcher {
  private unsubscribe: (() => void) | undefined;

  start(onChange: () => void): void {
    this.unsubscribe = networkWatcher.subscribe((change) => {
      if (change.added.size > 0 || change.removed.size > 0) onChange();
    });
  }

  addresses(): Set<string> {
    const present = new Set<string>();
    for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) if (a.family === 'IPv4') present.add(a.address);
    return present;
  }

  close(): void {
    this.unsubscribe?.();
  }
}
