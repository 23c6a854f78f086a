// The rack command's command line: bad input is one line on standard error
// and exit code 2, before anything is installed; no daemon is exit code 1.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const RACK = fileURLToPath(new URL('../../src/cli/rack.js', import.meta.url));

function rack(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(process.execPath, [RACK, ...args], { encoding: 'utf8', timeout: 20_000 });
}

describe('rack command line', () => {
  for (const [args, message] of [
    [['up'], /at least one --protect SPEC/],
    [['up', '--protect', 'udp:53'], /only tcp is supported/],
    [['up', '--protect', 'tcp:99999'], /outside 1\.\.65535/],
    [['up', '--protect', 'tcp:22@10.0.0.1/24'], /host bits set; did you mean 10\.0\.0\.0\/24/],
    [['up', '--protect', 'tcp:22@db.example'], /not an IPv4 address/],
    [['up', '--protect', 'tcp:22', '--port', '0'], /--port: expected a whole number from 1 to 65535/],
    [['up', '--protect', 'tcp:22', '--failure-timeout', '50'], /--failure-timeout: at least 200 ms/],
    [['up', '--protect', 'tcp:22', '--suspend-limit', 'soon'], /--suspend-limit: expected a duration/],
    [['up', '--protect', 'tcp:22', '--max-held', 'lots'], /--max-held: expected a size/],
    [['up', '--protect', 'tcp:22', '--tun', 'a/b'], /--tun: 'a\/b' is not an interface name/],
    [['up', '--protect', 'tcp:22', '--secret-file', '/nonexistent/secret'], /--secret-file: ENOENT/],
    [['up', '--protect', 'tcp:22', '--log-level', 'loud'], /--log-level: expected one of/],
    [['up', '--protect', 'tcp:22', '--tls-pin', 'sha256:x'], /--tls-pin: a pin's SHA-256 is 44 characters/],
    [['up', '--protect', 'tcp:22', '--tls-ca', '/etc/hostname'], /--tls-ca goes with --tls-cert and --tls-key/],
    [
      ['up', '--protect', 'tcp:22', '--tls-cert', '/nonexistent/cert.pem', '--tls-key', '/nonexistent/key.pem'],
      /--tls-cert: cannot read '\/nonexistent\/cert.pem': ENOENT/,
    ],
    [['up', '--protect', 'tcp:22', '--bogus'], /Unknown option '--bogus'/],
    [['sideways'], /unknown command 'sideways'/],
  ] as const) {
    test(`rack ${args.join(' ')}: exit 2, one line`, () => {
      const r = rack(...args);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, message);
      assert.match(r.stderr, /^rack: [^\n]*\(see rack --help\)\n$/);
    });
  }

  test('help for the command and for up; status without a daemon is exit 1', () => {
    assert.equal(rack('--help').status, 0);
    assert.match(rack('--help').stdout, /Usage: rack COMMAND/);
    assert.match(rack('up', '--help').stdout, /--protect SPEC/);
    // A TUN name no daemon uses, in whatever namespace this runs.
    const r = rack('status', '--tun', 'racktest9');
    assert.equal(r.status, 1);
    assert.equal(r.stderr, 'rack: no rack daemon runs here\n');
  });

  test('up as an ordinary user says it needs root', { skip: process.getuid?.() === 0 ? 'running as root' : undefined }, () => {
    const r = rack('up', '--protect', 'tcp:22');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /needs root/);
  });
});
