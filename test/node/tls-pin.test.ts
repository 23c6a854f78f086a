// Pinned server keys (src/node/tls-pin.ts), through the library: a rocks
// TLS server with a self-signed `rock keygen` pair is reached with
// pinnedConnectOptions and its pin; another pin is refused before any rocks
// frame is sent; checkServerIdentity alone is never asked about a
// self-signed certificate, which is why the fetch exists.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { PeerCertificate } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { keygen } from '../../src/cli/keygen.js';
import { connect, createServer, parsePin, PinMismatchError, pinnedConnectOptions, pinnedServerIdentity, spkiPin } from '../../src/index.js';

const dir = mkdtempSync(join(tmpdir(), 'rocks-pin-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('pinned server keys', () => {
  test("parsePin takes sha256:BASE64 (and curl's sha256//BASE64) and says what is wrong otherwise", () => {
    const pin = `sha256:${Buffer.alloc(32, 1).toString('base64')}`;
    assert.equal(parsePin(pin), pin);
    assert.equal(parsePin(pin.replace(':', '//')), pin);
    assert.throws(() => parsePin('md5:abc'), /a pin is sha256:BASE64/);
    assert.throws(() => parsePin('sha256:AAAA'), /44 characters of base64/);
  });

  test('a self-signed rocks server: the right pin connects reliably, another is refused with PinMismatchError', async () => {
    const { pin, certPath, keyPath } = await keygen(join(dir, 'server'), { names: ['localhost'], days: 1, force: false });
    assert.equal(spkiPin(readFileSync(certPath)), pin);
    const other = await keygen(join(dir, 'other'), { names: ['localhost'], days: 1, force: false });
    const server = createServer({ tls: { key: readFileSync(keyPath), cert: readFileSync(certPath) } }, (s) => {
      s.on('error', () => {}); // the client destroys its end
      s.pipe(s);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const where = { host: '127.0.0.1', port: (server.address() as AddressInfo).port };
    try {
      const tls = await pinnedConnectOptions(pin, where);
      const s = connect({ ...where, tls });
      await once(s, 'connect');
      assert.equal(s.reliable, true);
      s.write('ping');
      const [echo] = (await once(s, 'data')) as [Buffer];
      assert.equal(echo.toString(), 'ping');
      s.destroy();

      await assert.rejects(pinnedConnectOptions(other.pin, where), (err: Error) => {
        assert.ok(err instanceof PinMismatchError);
        assert.equal(err.presented, pin);
        assert.match(err.message, /server key does not match the pinned key/);
        return true;
      });
      // checkServerIdentity alone: node reports the self-signed chain and never asks it.
      let asked = false;
      const check = pinnedServerIdentity(pin);
      const checkServerIdentity = (host: string, cert: PeerCertificate): Error | undefined => {
        asked = true;
        return check(host, cert);
      };
      const bare = connect({ ...where, tls: { checkServerIdentity } });
      const [err] = (await once(bare, 'error')) as [NodeJS.ErrnoException];
      assert.equal(err.code, 'DEPTH_ZERO_SELF_SIGNED_CERT');
      assert.equal(asked, false);
    } finally {
      server.close();
    }
  });
});
