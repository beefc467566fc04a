// The screenshots of docs/ui.md: a broker with a little traffic (an order pipeline, a payments
// worker that rejects some messages into a dead-letter queue, a backlog with no consumer),
// then a tour of the UI. `npm run screenshots` (about a minute); writes docs/ui/*.png.

'use strict';

const fs = require('node:fs');
const path = require('node:path');
const amqp = require('amqplib');
const { startBroker, launch, openPage, login, nav, ROOT } = require('../lib/harness.js');

const DOCS = path.join(ROOT, 'docs', 'ui');
const TRAFFIC_S = +(process.env.TRAFFIC_S || 45);
const wait = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const broker = await startBroker();
  const browser = await launch();
  const conns = [];
  const timers = [];
  try {
    const open = async (name) => {
      const c = await amqp.connect(broker.amqpUrl, { clientProperties: { connection_name: name } });
      conns.push(c);
      return c;
    };
    const admin = await (await open('setup')).createChannel();
    await admin.assertExchange('shop', 'topic', { durable: true });
    await admin.assertExchange('payments.dlx', 'fanout', { durable: true });
    await admin.assertQueue('orders', { durable: true });
    await admin.bindQueue('orders', 'shop', 'order.*');
    await admin.assertQueue('payments', { durable: true, arguments: { 'x-dead-letter-exchange': 'payments.dlx' } });
    await admin.bindQueue('payments', 'shop', 'payment.*');
    await admin.assertQueue('payments.dlq', { durable: true });
    await admin.bindQueue('payments.dlq', 'payments.dlx', '');
    await admin.assertQueue('emails', { durable: true });
    await admin.bindQueue('emails', 'shop', 'email.#');
    for (let i = 1; i <= 24; i++) await admin.assertQueue(`tenant.${String(i).padStart(3, '0')}.events`, { durable: true });
    await broker.api('PUT', '/api/policies/%2F/orders-limit', { pattern: '^orders$', definition: { 'max-length': 100000 }, 'apply-to': 'queues', priority: 0 });
    await broker.api('PUT', '/api/users/ops', { password: 'ops', tags: 'monitoring' });
    await broker.api('PUT', '/api/users/billing-svc', { password: 'x', tags: '' });

    const pub = await (await open('shop-api')).createChannel();
    let n = 0;
    timers.push(setInterval(() => {
      for (let i = 0; i < 8; i++) pub.publish('shop', 'order.created', Buffer.from(JSON.stringify({ order: ++n })), { persistent: true, contentType: 'application/json' });
      for (let i = 0; i < 3; i++) pub.publish('shop', 'payment.requested', Buffer.from(JSON.stringify({ order: n, amount: (n % 97) + 0.99 })), { persistent: true, contentType: 'application/json', headers: { 'x-tenant': `t${n % 5}` } });
      pub.publish('shop', 'email.receipt', Buffer.from(`receipt ${n}`));
      if (n % 7 === 0) pub.publish('shop', `order.cancelled`, Buffer.from('{}'));
    }, 100));
    const orders = await (await open('order-worker')).createChannel();
    await orders.prefetch(50);
    await orders.consume('orders', (m) => orders.ack(m));
    const payments = await (await open('payments-worker')).createChannel();
    await payments.prefetch(20);
    let k = 0;
    await payments.consume('payments', (m) => { if (++k % 6 === 0) payments.nack(m, false, false); else payments.ack(m); });

    const page = await openPage(browser, { viewport: { width: 1280, height: 860 } });
    await login(page, broker.url);
    process.stdout.write(`traffic for ${TRAFFIC_S} s`);
    for (let s = 0; s < TRAFFIC_S; s += 5) { await wait(5000); process.stdout.write('.'); }
    process.stdout.write('\n');
    fs.mkdirSync(DOCS, { recursive: true });
    const shot = async (name, full = true) => {
      await page.screenshot({ path: path.join(DOCS, `${name}.png`), fullPage: full });
      console.log(`docs/ui/${name}.png`);
    };

    await nav(page, 'Overview');
    await page.locator('main[data-ready]').waitFor();
    await shot('overview');

    await nav(page, 'Queues');
    await page.getByRole('button', { name: 'Total' }).click();
    await page.waitForFunction(() => document.querySelector('th[aria-sort="descending"]')?.textContent === 'Total');
    await page.locator('table.list tbody tr').first().waitFor();
    await shot('queues');

    // The DLQ: its dead letters, one message's x-death, a rate-limited replay under way.
    await page.goto(`${broker.url}/#/queues/%2F/payments.dlq`);
    await page.locator('section.dlq tbody tr').first().waitFor();
    await page.getByRole('button', { name: 'Get messages' }).click();
    await page.locator('.message .x-death').first().waitFor();
    await page.getByLabel('Rate limit (messages/s)').fill('4');
    await page.getByRole('button', { name: 'Replay all' }).click();
    await page.locator('dialog[open]').getByRole('button', { name: 'Replay' }).click();
    await page.locator('.progress.running', { hasText: 'so far' }).waitFor({ timeout: 20000 });
    await page.waitForFunction(() => /([5-9]|\d\d+) messages moved so far/.test(document.querySelector('.progress.running')?.textContent || ''), null, { timeout: 20000 });
    await page.evaluate(() => { document.querySelector('section.dlq').scrollIntoView(); window.scrollBy(0, -16); });
    await shot('queue-dead-letters', false);

    await nav(page, 'Exchanges');
    await page.getByRole('link', { name: 'shop' }).waitFor();
    await shot('exchanges');
    await nav(page, 'Connections');
    await page.locator('table.list tbody tr', { hasText: 'shop-api' }).waitFor();
    await shot('connections');
    await page.locator('#nav').getByRole('link', { name: 'Admin' }).click();
    await page.getByRole('heading', { name: 'Users' }).waitFor();
    await shot('admin');
    if (page.problems.length) throw new Error(page.problems.join('\n'));
  } finally {
    timers.forEach(clearInterval);
    await Promise.all(conns.map((c) => c.close().catch(() => {})));
    await browser.close();
    await broker.stop();
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
