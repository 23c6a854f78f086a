// The client of the scale case (bench/cases/scale.ts): opens --count rocks
// connections to the scale server through the scale proxies (--ports,
// round robin), --batch at a time, and says {"type":"ready","setup":MS}
// once every one of them is connected. Then, on stdin:
//
//   {"type":"cpu","ms":M}          -> {"type":"cpu","user","system","ms","suspended"}
//        suspended: the connections that suspended outside an outage so far
//        (a healthy idle one never should)
//   {"type":"outage","payload":B}  (sent right after the proxies black-holed the path)
//        every connection writes B bytes of its own pattern, which the echo
//        server returns once the path is back;
//        -> {"type":"suspended","first","last"}   when all have emitted 'suspend'
//        -> {"type":"recovered","resumed","lastResume","lastData","lost","extra","corrupt","failed","timedOut","attempts","errors"}
//           when all have emitted 'reconnect' and received their B bytes back,
//           or --deadline ms after they all suspended (instants: the scale clock)
//
// For diagnosis it also prints {"type":"batch"} while connecting and
// {"type":"progress"} every second of an outage (Peer.next skips them).

import { once } from 'node:events';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { connect, type ReliableSocket } from '../../src/index.js';
import { clock, cpuOver } from './scale-common.js';
import { fatal, say } from './transport.js';
import { readJsonLines } from '../../test/support/helpers.js';

const args = parseArgs({
  options: {
    ports: { type: 'string' },
    count: { type: 'string', default: '1000' },
    batch: { type: 'string', default: '500' },
    options: { type: 'string', default: '{}' },
    deadline: { type: 'string', default: '60000' },
  },
}).values;
const ports = args.ports!.split(',').map(Number);
const count = Number(args.count);
const batchSize = Number(args.batch);
const options = JSON.parse(args.options!) as object;

interface Conn {
  s: ReliableSocket;
  index: number;
  chunks: Buffer[];
  received: number;
  /** In the outage: 'suspend' seen, 'reconnect' seen. */
  suspended: boolean;
  resumed: boolean;
  failed: boolean;
}

const conns: Conn[] = [];
/** Diagnostics: reconnect attempts since the outage began, and the first few errors. */
let attempts = 0;
const errors: string[] = [];
/** 'suspend' events outside an outage: healthy idle connections the kernel (or a heartbeat) took for dead. */
let idleSuspends = 0;
/** Set while an outage is measured. */
let outage:
  | {
      payload: number;
      suspended: number;
      resumed: number;
      complete: number;
      failed: number;
      firstSuspend: number;
      lastSuspend: number;
      lastResume: number;
      lastData: number;
      /** When each session resumed (the scale clock). */
      resumes: number[];
      check(): void;
    }
  | undefined;

/** Connection `index`'s bytes: its index in the first 4 bytes, then a pattern that depends on it. */
function pattern(index: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let j = 0; j < length; j++) b[j] = (index * 31 + j * 7) & 0xff;
  if (length >= 4) b.writeUInt32BE(index, 0);
  return b;
}

function open(index: number): Conn {
  const s = connect({ ...options, port: ports[index % ports.length], host: '127.0.0.1', allowHalfOpen: true });
  s.setNoDelay(true);
  const c: Conn = { s, index, chunks: [], received: 0, suspended: false, resumed: false, failed: false };
  s.on('data', (d: Buffer) => {
    c.chunks.push(d);
    c.received += d.length;
    if (outage) {
      outage.lastData = clock();
      if (c.received === outage.payload) outage.complete++;
      outage.check();
    }
  });
  s.on('suspend', () => {
    if (!outage) {
      idleSuspends++;
      return;
    }
    if (c.suspended) return;
    c.suspended = true;
    const now = clock();
    if (outage.suspended++ === 0) outage.firstSuspend = now;
    outage.lastSuspend = now;
    outage.check();
  });
  s.on('reconnect', () => {
    if (!outage || !c.suspended || c.resumed) return;
    c.resumed = true;
    outage.resumed++;
    outage.lastResume = clock();
    outage.resumes.push(outage.lastResume);
    outage.check();
  });
  const fail = (): void => {
    if (c.failed) return;
    c.failed = true;
    if (outage) {
      outage.failed++;
      outage.check();
    }
  };
  s.on('reconnect-attempt', () => attempts++);
  s.on('error', (err: Error) => {
    if (errors.length < 5) errors.push(`connection ${index}: ${err.message}`);
    fail();
  });
  s.on('close', fail);
  return c;
}

async function measureOutage(payload: number): Promise<void> {
  let allSuspended!: () => void;
  let allBack!: () => void;
  const suspended = new Promise<void>((r) => (allSuspended = r));
  const back = new Promise<void>((r) => (allBack = r));
  outage = {
    payload,
    suspended: 0,
    resumed: 0,
    complete: 0,
    failed: 0,
    firstSuspend: 0,
    lastSuspend: 0,
    lastResume: 0,
    lastData: 0,
    resumes: [],
    check() {
      // A connection that failed for good will never suspend or resume: it counts as done (and as failed).
      if (this.suspended + this.failed >= count) allSuspended();
      if (this.resumed + this.failed >= count && this.complete + this.failed >= count) allBack();
    },
  };
  attempts = 0;
  const o = outage;
  // Progress for whoever reads the peer's output when something stalls (the case waits for other types).
  const progress = setInterval(
    () => say({ type: 'progress', suspended: o.suspended, resumed: o.resumed, complete: o.complete, failed: o.failed, attempts }),
    1000,
  );
  for (const c of conns) c.s.write(pattern(c.index, payload));
  await suspended;
  say({ type: 'suspended', first: outage.firstSuspend, last: outage.lastSuspend, failed: outage.failed });
  let timedOut = false;
  const deadline = Number(args.deadline);
  const timeout = new Promise<void>((r) =>
    setTimeout(() => {
      timedOut = true;
      r();
    }, deadline),
  );
  await Promise.race([back, timeout]);
  clearInterval(progress);
  let lost = 0;
  let extra = 0;
  let corrupt = 0;
  for (const c of conns) {
    const got = Buffer.concat(c.chunks);
    const want = pattern(c.index, payload);
    lost += Math.max(0, payload - got.length);
    extra += Math.max(0, got.length - payload);
    if (!got.subarray(0, payload).equals(want.subarray(0, got.length))) corrupt++;
  }
  say({
    type: 'recovered',
    resumed: outage.resumed,
    lastResume: outage.lastResume,
    // Quartiles and the tail of the resume times: how the heal's load spread.
    resumeAt: [0.25, 0.5, 0.75, 0.9, 0.99].map(
      (q) => outage!.resumes[Math.min(outage!.resumes.length - 1, Math.floor(q * outage!.resumes.length))] ?? 0,
    ),
    lastData: outage.lastData,
    lost,
    extra,
    corrupt,
    failed: outage.failed,
    timedOut,
    attempts,
    errors,
  });
}

const start = performance.now();
// Batches, so that no listen backlog is the limit.
for (let i = 0; i < count; i += batchSize) {
  const batch = Array.from({ length: Math.min(batchSize, count - i) }, (_, k) => open(i + k));
  // once() rejects if the socket emits 'error' first.
  await Promise.all(batch.map((c) => once(c.s, 'connect').catch((err: Error) => fatal(new Error(`connection ${c.index}: ${err.message}`)))));
  conns.push(...batch);
  say({ type: 'batch', connected: conns.length, ms: performance.now() - start });
}
say({ type: 'ready', setup: performance.now() - start, count });

readJsonLines<{ type: string; ms?: number; payload?: number }>(process.stdin, (command) => {
  if (command.type === 'cpu') void cpuOver(command.ms ?? 1000).then((c) => say({ type: 'cpu', ...c, suspended: idleSuspends }));
  else if (command.type === 'outage') measureOutage(command.payload ?? 1024).catch(fatal);
});
process.on('SIGTERM', () => process.exit(0));
