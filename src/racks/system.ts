// The real parts of a rack daemon (src/racks/parts.ts), on Linux as root:
// the TUN device with offload, a raw socket whose packets the rules let
// pass, racks' nftables table and routes, `ip monitor address`, rocks on the
// rack port, the system clock. `rack up` (src/cli/rack.ts) opens them and
// builds the daemon from them.

import { spawn, type ChildProcess } from 'node:child_process';
import { networkInterfaces } from 'node:os';
import type { RackLogger, RackOptions } from './daemon.js';
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
    addresses: new IpMonitor(options.log),
    links: new RocksLinks(options),
    clock: systemClock,
  };
}

/** `ip -o -4 monitor address` says when, and node:os says what, the host's IPv4 addresses are. */
class IpMonitor implements AddressWatcher {
  private monitor: ChildProcess | undefined;

  constructor(private readonly log: RackLogger) {}

  start(onChange: () => void): void {
    this.monitor = spawn('ip', ['-o', '-4', 'monitor', 'address'], { stdio: ['ignore', 'pipe', 'ignore'] });
    this.monitor.stdout!.on('data', () => onChange());
    this.monitor.on('error', (err) => this.log.warn({ err: err.message }, 'cannot watch addresses'));
  }

  addresses(): Set<string> {
    const present = new Set<string>();
    for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) if (a.family === 'IPv4') present.add(a.address);
    return present;
  }

  close(): void {
    this.monitor?.kill();
  }
}
