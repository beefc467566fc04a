'use strict';
// amqplib over TLS (amqps://): a custom CA, password login, a client certificate with the
// EXTERNAL mechanism, and an untrusted certificate. Starts its own broker ($WARREN_BIN) with the
// certificates in $WARREN_TEST_CERTS (made at run time by examples/test_certs.rs, see
// scripts/test); skipped when either is unset.

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const amqp = require('amqplib');

const BIN = process.env.WARREN_BIN;
const CERTS = process.env.WARREN_TEST_CERTS;
const skip = !BIN || !CERTS;
const T = { timeout: 30000 };

describe('amqplib over TLS', { skip }, () => {
  let proc;
  let port;
  let dir;
  const read = (f) => fs.readFileSync(path.join(CERTS, f));

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'warren-node-tls-'));
    const config = path.join(dir, 'broker.toml');
    fs.writeFileSync(config, `
[amqps]
enabled = true
bind = "127.0.0.1"
port = 0

[tls]
cert_file = "${CERTS}/server.pem"
key_file = "${CERTS}/server.key"
ca_file = "${CERTS}/ca.pem"
verify_peer = true

[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]

[[users]]
name = "tls-user"
vhosts = ["*"]
`);
    proc = spawn(BIN, ['--config', config, '--bind', '127.0.0.1', '--port', '0',
      '--data-dir', path.join(dir, 'data')], { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    port = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`warren did not start:\n${log}`)), 30000);
      const onData = (chunk) => {
        log += chunk;
        const m = log.match(/AMQPS \(AMQP 0-9-1 over TLS\) connections on [0-9.]+:(\d+)/);
        if (m) { clearTimeout(timer); resolve(Number(m[1])); }
      };
      proc.stdout.on('data', onData);
      proc.stderr.on('data', onData);
      proc.on('exit', () => reject(new Error(`warren exited:\n${log}`)));
    });
  });

  after(() => {
    if (proc) proc.kill('SIGTERM');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function roundTrip(conn, userId) {
    const ch = await conn.createChannel();
    const { queue } = await ch.assertQueue('', { exclusive: true });
    ch.sendToQueue(queue, Buffer.from('over tls'), userId ? { userId } : {});
    for (let i = 0; i < 200; i++) {
      const m = await ch.get(queue, { noAck: true });
      if (m) { assert.equal(m.content.toString(), 'over tls'); return m; }
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error('message not delivered');
  }

  test('password login with a custom CA', T, async () => {
    const conn = await amqp.connect(`amqps://guest:guest@localhost:${port}`, { ca: [read('ca.pem')] });
    await roundTrip(conn);
    await conn.close();
  });

  test('EXTERNAL with a client certificate logs in as its common name', T, async () => {
    const conn = await amqp.connect(`amqps://localhost:${port}`, {
      ca: [read('ca.pem')], cert: read('client.pem'), key: read('client.key'),
      credentials: amqp.credentials.external(),
    });
    const m = await roundTrip(conn, 'tls-user');
    assert.equal(m.properties.userId, 'tls-user');
    await conn.close();
  });

  test('an untrusted client certificate is refused', T, async () => {
    await assert.rejects(amqp.connect(`amqps://guest:guest@localhost:${port}`, {
      ca: [read('ca.pem')], cert: read('untrusted.pem'), key: read('untrusted.key'),
    }));
  });
});
