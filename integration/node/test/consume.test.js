'use strict';
// amqplib (0.10.x) consume / ack / nack / prefetch / redelivery / confirm-channel suite.
//
// Runs against the broker on 127.0.0.1:$WARREN_PORT (every test is skipped when WARREN_PORT is
// unset). Behaviour was first checked against RabbitMQ 3.10.8 (WARREN_PORT=5680); reply codes
// and texts in the asserts are RabbitMQ's.
//
//   cd integration/node && npm ci && WARREN_PORT=5680 npm test
//
// Every wait is bounded (waitFor polls with a deadline; every test has a timeout). Queues and
// exchanges are uuid-named and deleted afterwards.

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const amqp = require('amqplib');

const PORT = process.env.WARREN_PORT;
const URL = `amqp://guest:guest@127.0.0.1:${PORT}`;
const T = { timeout: 30000 };

function uniq(prefix) {
  return `${prefix}-${crypto.randomUUID().slice(0, 12)}`;
}

async function waitFor(cond, what, ms = 10000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms}ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

// Keep polling for a while to show nothing else arrives.
async function settle(ms) {
  await new Promise((r) => setTimeout(r, ms));
}

// Ready-message count, polled (bounded) until it equals `expect`: requeues are asynchronous.
async function readyCount(conn, queue, expect, ms = 5000) {
  const ch = await conn.createChannel();
  try {
    const deadline = Date.now() + ms;
    for (;;) {
      const { messageCount } = await ch.checkQueue(queue);
      if (expect === undefined || messageCount === expect || Date.now() > deadline) return messageCount;
      await new Promise((r) => setTimeout(r, 20));
    }
  } finally {
    await ch.close();
  }
}

async function publishConfirmed(conn, queue, bodies) {
  const ch = await conn.createConfirmChannel();
  for (const b of bodies) ch.sendToQueue(queue, Buffer.from(String(b)));
  await ch.waitForConfirms();
  await ch.close();
}

describe('amqplib consume', { skip: PORT ? false : 'WARREN_PORT not set' }, () => {
  let conn;
  const queues = [];
  const exchanges = [];
  const extraConns = []; // closed in after() even when a test fails

  async function freshQueue(prefix, opts = {}) {
    const name = uniq(prefix);
    const ch = await conn.createChannel();
    await ch.assertQueue(name, { durable: false, ...opts });
    await ch.close();
    queues.push(name);
    return name;
  }

  before(async () => {
    conn = await amqp.connect(URL);
    conn.on('error', () => {});
  });

  after(async () => {
    for (const c of extraConns) await c.close().catch(() => {});
    if (!conn) return;
    const ch = await conn.createChannel();
    for (const q of queues) await ch.deleteQueue(q);
    for (const x of exchanges) await ch.deleteExchange(x);
    await ch.close();
    await conn.close();
  });

  test('consume + ack delivers every message once, in order', T, async () => {
    const q = await freshQueue('consume');
    await publishConfirmed(conn, q, Array.from({ length: 50 }, (_, i) => i));
    const ch = await conn.createChannel();
    const got = [];
    await ch.consume(q, (m) => {
      got.push([Number(m.content.toString()), m.fields.redelivered, m.fields.deliveryTag]);
      ch.ack(m);
    });
    await waitFor(() => got.length >= 50, '50 deliveries');
    await settle(100);
    assert.deepEqual(got.map((g) => g[0]), Array.from({ length: 50 }, (_, i) => i));
    assert.ok(got.every((g) => g[1] === false));
    assert.deepEqual(got.map((g) => g[2]), Array.from({ length: 50 }, (_, i) => i + 1));
    assert.equal(await readyCount(conn, q, 0), 0);
    await ch.close();
  });

  test('message properties and routing fields survive the trip', T, async () => {
    const q = await freshQueue('props');
    const ch = await conn.createConfirmChannel();
    ch.sendToQueue(q, Buffer.from('hello'), {
      contentType: 'text/plain', headers: { a: 1, b: 'x' }, correlationId: 'c1',
      messageId: 'm1', priority: 4, deliveryMode: 2, replyTo: 'r', type: 't', appId: 'app',
    });
    await ch.waitForConfirms();
    const got = [];
    await ch.consume(q, (m) => { got.push(m); ch.ack(m); });
    await waitFor(() => got.length >= 1, 'delivery');
    const m = got[0];
    assert.equal(m.content.toString(), 'hello');
    assert.equal(m.fields.exchange, '');
    assert.equal(m.fields.routingKey, q);
    assert.equal(m.properties.contentType, 'text/plain');
    assert.deepEqual(m.properties.headers, { a: 1, b: 'x' });
    assert.equal(m.properties.correlationId, 'c1');
    assert.equal(m.properties.messageId, 'm1');
    assert.equal(m.properties.priority, 4);
    assert.equal(m.properties.deliveryMode, 2);
    assert.equal(m.properties.replyTo, 'r');
    assert.equal(m.properties.type, 't');
    assert.equal(m.properties.appId, 'app');
    await ch.close();
  });

  test('prefetch limit is never exceeded', T, async () => {
    const q = await freshQueue('prefetch');
    const n = 60;
    await publishConfirmed(conn, q, Array.from({ length: n }, (_, i) => i));
    const ch = await conn.createChannel();
    await ch.prefetch(3);
    const outstanding = [];
    const got = [];
    let max = 0;
    let violations = 0;
    await ch.consume(q, (m) => {
      outstanding.push(m);
      got.push(Number(m.content.toString()));
      max = Math.max(max, outstanding.length);
      if (outstanding.length > 3) violations += 1;
    });
    const deadline = Date.now() + 20000;
    while (got.length < n) {
      assert.ok(Date.now() < deadline, `only ${got.length} of ${n} delivered`);
      await new Promise((r) => setTimeout(r, 2));
      // hold until the window is full (or the tail is reached), then ack the oldest
      if (outstanding.length >= 3 || (outstanding.length && got.length >= n - 3)) {
        ch.ack(outstanding.shift());
      }
    }
    while (outstanding.length) ch.ack(outstanding.shift());
    await settle(100);
    assert.equal(violations, 0);
    assert.equal(max, 3);
    assert.deepEqual(got, Array.from({ length: n }, (_, i) => i));
    await ch.close();
  });

  test('nack / reject with requeue come back first, redelivered, in order', T, async () => {
    const q = await freshQueue('nack');
    await publishConfirmed(conn, q, [0, 1, 2, 3, 4, 5]);
    const ch = await conn.createChannel();
    await ch.prefetch(4);
    const got = [];
    const { consumerTag } = await ch.consume(q, (m) => got.push(m));
    await waitFor(() => got.length >= 4, '4 deliveries');
    await settle(100);
    assert.deepEqual(got.map((m) => m.content.toString()), ['0', '1', '2', '3']);
    // park the consumer so requeues cannot race new deliveries
    await ch.cancel(consumerTag);
    ch.ack(got[0]);
    ch.reject(got[3], true); // requeue 3
    ch.nack(got[1], false, true); // requeue 1
    ch.reject(got[2], false); // drop 2
    await ch.checkQueue(q); // round trip
    const again = [];
    await ch.consume(q, (m) => { again.push(m); ch.ack(m); });
    await waitFor(() => again.length >= 4, 'redeliveries');
    await settle(100);
    assert.deepEqual(again.map((m) => [m.content.toString(), m.fields.redelivered]),
      [['1', true], ['3', true], ['4', false], ['5', false]]);
    assert.equal(await readyCount(conn, q, 0), 0);
    await ch.close();
  });

  test('nack allUpTo requeues everything outstanding; nackAll(false) drops', T, async () => {
    const q = await freshQueue('nackall');
    await publishConfirmed(conn, q, [0, 1, 2, 3]);
    const ch = await conn.createChannel();
    const first = [];
    for (let i = 0; i < 3; i++) first.push(await ch.get(q));
    assert.deepEqual(first.map((m) => [m.content.toString(), m.fields.messageCount]),
      [['0', 3], ['1', 2], ['2', 1]]);
    ch.nack(first[1], true, true); // 0 and 1 requeued, 2 still held
    const m0 = await ch.get(q);
    assert.deepEqual([m0.content.toString(), m0.fields.redelivered], ['0', true]);
    ch.nackAll(false); // drops 2 and the redelivered 0
    const rest = [];
    for (;;) {
      const m = await ch.get(q, { noAck: true });
      if (m === false) break;
      rest.push([m.content.toString(), m.fields.redelivered]);
    }
    assert.deepEqual(rest, [['1', true], ['3', false]]);
    await ch.close();
  });

  test('unacked messages are redelivered after the channel closes', T, async () => {
    const q = await freshQueue('chclose');
    await publishConfirmed(conn, q, [0, 1, 2, 3, 4, 5]);
    const ch1 = await conn.createChannel();
    await ch1.prefetch(4);
    const got1 = [];
    await ch1.consume(q, (m) => got1.push(m));
    await waitFor(() => got1.length >= 4, '4 deliveries on ch1');
    // a survivor on its own connection is already consuming
    const conn2 = await amqp.connect(URL);
    extraConns.push(conn2);
    const ch2 = await conn2.createChannel();
    const got2 = [];
    await ch2.consume(q, (m) => { got2.push([m.content.toString(), m.fields.redelivered]); ch2.ack(m); });
    await waitFor(() => got2.length >= 2, 'the two messages ch1 could not take');
    await ch1.close(); // 0..3 go back to the queue
    await waitFor(() => got2.length >= 6, 'redelivery to the survivor');
    await settle(100);
    assert.deepEqual(got2, [['4', false], ['5', false],
      ['0', true], ['1', true], ['2', true], ['3', true]]);
  });

  test('connection close also requeues; redelivered to the next consumer', T, async () => {
    const q = await freshQueue('connclose');
    await publishConfirmed(conn, q, [0, 1, 2]);
    const c = await amqp.connect(URL);
    extraConns.push(c);
    const ch = await c.createChannel();
    const got = [];
    await ch.consume(q, (m) => got.push(m));
    await waitFor(() => got.length >= 3, '3 deliveries');
    ch.ack(got[1]);
    await ch.checkQueue(q); // round trip: amqplib may let connection.close overtake the ack
    await c.close();
    const ch2 = await conn.createChannel();
    const rest = [];
    const deadline = Date.now() + 5000;
    while (rest.length < 2 && Date.now() < deadline) {
      const m = await ch2.get(q, { noAck: true });
      if (m === false) { await settle(10); continue; }
      rest.push([m.content.toString(), m.fields.redelivered]);
    }
    const extra = await ch2.get(q);
    assert.deepEqual(rest, [['0', true], ['2', true]]);
    assert.equal(extra, false);
    await ch2.close();
  });

  test('ack of an unknown delivery tag closes the channel with 406', T, async () => {
    const ch = await conn.createChannel();
    const errors = [];
    ch.on('error', (e) => errors.push(e));
    const closed = new Promise((resolve) => ch.on('close', resolve));
    ch.ack({ fields: { deliveryTag: 99 } });
    await closed;
    assert.equal(errors.length, 1);
    assert.equal(errors[0].code, 406);
    assert.match(errors[0].message, /PRECONDITION_FAILED - unknown delivery tag 99/);
  });

  test('server-side consumer cancel when the queue is deleted', T, async () => {
    const q = uniq('cancel');
    const ch = await conn.createChannel();
    await ch.assertQueue(q);
    const got = [];
    await ch.consume(q, (m) => got.push(m));
    const ch2 = await conn.createChannel();
    await ch2.deleteQueue(q);
    await waitFor(() => got.length >= 1, 'cancel notification');
    assert.equal(got[0], null, 'amqplib passes null on basic.cancel from the server');
    await ch.prefetch(1); // the channel survives the cancel
    await ch2.close();
  });

  test('confirm channel: 2000 publishes all acked, then counted', T, async () => {
    const q = await freshQueue('confirm');
    const ch = await conn.createConfirmChannel();
    let acked = 0;
    let nacked = 0;
    for (let i = 0; i < 2000; i++) {
      ch.sendToQueue(q, Buffer.from(String(i)), {}, (err) => { if (err) nacked += 1; else acked += 1; });
    }
    await ch.waitForConfirms();
    assert.equal(acked, 2000);
    assert.equal(nacked, 0);
    assert.equal(await readyCount(conn, q, 2000), 2000);
    await ch.close();
  });

  test('confirm channel: mandatory unroutable is returned, then acked', T, async () => {
    const ex = uniq('ex');
    const ch = await conn.createConfirmChannel();
    await ch.assertExchange(ex, 'direct', { durable: false });
    exchanges.push(ex);
    const events = [];
    ch.on('return', (m) => events.push(['return', m.fields.replyCode, m.fields.replyText,
      m.fields.exchange === ex, m.fields.routingKey, m.content.toString()]));
    await new Promise((resolve, reject) => {
      ch.publish(ex, 'nowhere', Buffer.from('lost'), { mandatory: true }, (err) => {
        events.push(['confirm', err ? 'nack' : 'ack']);
        if (err) reject(err); else resolve();
      });
    });
    assert.deepEqual(events, [['return', 312, 'NO_ROUTE', true, 'nowhere', 'lost'], ['confirm', 'ack']]);
    await ch.close();
  });

  test('confirm channel: publish to a missing exchange fails with 404', T, async () => {
    const ch = await conn.createConfirmChannel();
    const errors = [];
    ch.on('error', (e) => errors.push(e));
    const missing = uniq('missing');
    const result = await new Promise((resolve) => {
      ch.publish(missing, 'k', Buffer.from('x'), {}, (err) => resolve(err));
    });
    assert.ok(result instanceof Error, 'the confirm callback gets an error');
    await waitFor(() => errors.length >= 1, 'channel error');
    assert.equal(errors[0].code, 404);
    assert.match(errors[0].message, new RegExp(`NOT_FOUND - no exchange '${missing}' in vhost '/'`));
  });

  test('basic.get reports messageCount and returns false when empty', T, async () => {
    const q = await freshQueue('get');
    const ch = await conn.createChannel();
    assert.equal(await ch.get(q), false);
    await publishConfirmed(conn, q, ['a', 'b', 'c']);
    const got = [];
    for (let i = 0; i < 3; i++) {
      const m = await ch.get(q);
      got.push([m.content.toString(), m.fields.messageCount, m.fields.deliveryTag]);
      ch.ack(m);
    }
    assert.deepEqual(got, [['a', 2, 1], ['b', 1, 2], ['c', 0, 3]]);
    assert.equal(await ch.get(q), false);
    await ch.close();
  });

  test('cancelled consumer gets nothing more; held messages stay ackable', T, async () => {
    const q = await freshQueue('ccancel');
    await publishConfirmed(conn, q, [0, 1, 2]);
    const ch = await conn.createChannel();
    await ch.prefetch(2);
    const got = [];
    const { consumerTag } = await ch.consume(q, (m) => got.push(m));
    await waitFor(() => got.length >= 2, '2 deliveries');
    await ch.cancel(consumerTag);
    await settle(200);
    assert.equal(got.length, 2);
    ch.ack(got[1], true);
    assert.equal(await readyCount(conn, q, 1), 1);
    await ch.close();
  });
});
