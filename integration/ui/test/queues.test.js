// Queues: depth changes seen on the list and the queue page, publish from an exchange page,
// purge, and the dead-letter story: reject into a DLX, see the x-death history, replay it back.

'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const amqp = require('amqplib');
const { startBroker, launch, openPage, login, nav, shot, eventually } = require('../lib/harness.js');

let broker;
let browser;
let conn;

before(async () => {
  [broker, browser] = await Promise.all([startBroker(), launch()]);
  conn = await amqp.connect(broker.amqpUrl);
});

after(async () => {
  await conn?.close().catch(() => {});
  await browser?.close();
  await broker?.stop();
});

/** The Ready figure of a queue's row in the list. */
const readyCell = (page, name) => page.locator('table.list tbody tr', { has: page.getByRole('link', { name, exact: true }) }).locator('td').nth(4);

async function confirm(page, button) {
  const dialog = page.locator('dialog[open]');
  await dialog.getByRole('button', { name: button }).click();
  await dialog.waitFor({ state: 'detached' });
}

test('depth changes show on the queues page and the queue page; publish; purge', async () => {
  const ch = await conn.createConfirmChannel();
  await ch.assertQueue('orders', { durable: true });
  await ch.assertQueue('other', { durable: true });
  const page = await openPage(browser);
  await login(page, broker.url);
  await nav(page, 'Queues');
  await page.getByRole('link', { name: 'orders', exact: true }).waitFor();
  assert.equal(await readyCell(page, 'orders').textContent(), '0');

  // Published over AMQP: the list refreshes itself (every 5 s).
  for (let i = 0; i < 3; i++) ch.sendToQueue('orders', Buffer.from(`order ${i}`), { persistent: true });
  await ch.waitForConfirms();
  await page.waitForFunction(() => [...document.querySelectorAll('table.list tbody tr')]
    .some((r) => r.cells[0].textContent === 'orders' && r.cells[4].textContent === '3'), null, { timeout: 12000 });

  // Filtering is done by the broker.
  await page.getByLabel('Filter by name').fill('ord');
  await page.locator('.summary', { hasText: '1–1 of 1 matching (2 queues in all)' }).waitFor();
  await page.getByLabel('Regex').check();
  await page.getByLabel('Filter by name').fill('^(ord|oth)');
  await page.locator('.summary', { hasText: '1–2 of 2 queues' }).waitFor();
  page.allowed.push(/status of 400/); // the broker refuses the regex: expected
  await page.getByLabel('Filter by name').fill('(');
  await page.locator('.summary', { hasText: 'not a valid regular expression' }).waitFor();
  await page.getByLabel('Filter by name').fill('');
  await page.getByLabel('Regex').uncheck();
  // Sorting by Ready, descending first: orders (3) before other (0).
  await page.getByRole('button', { name: 'Ready' }).click();
  await page.waitForFunction(() => document.querySelector('table.list tbody tr td a')?.textContent === 'orders'
    && document.querySelector('th[aria-sort="descending"]')?.textContent === 'Ready');
  assert.match(page.url(), /sort=messages_ready&rev=1/);
  await shot(page, 'queues');

  // The queue page.
  await page.getByRole('link', { name: 'orders', exact: true }).click();
  await page.locator('h1', { hasText: 'orders' }).waitFor();
  const ready = page.locator('[data-stat="ready"] .card-value');
  await eventually(async () => (await ready.textContent()) === '3', { what: 'ready 3 on the queue page' });

  // Publish one more from the default exchange's page.
  await page.goto(`${broker.url}/#/exchanges/%2F/amq.default`);
  await page.getByLabel('Routing key').fill('orders');
  await page.getByLabel('Payload').fill('{"order": 4}');
  await page.getByRole('button', { name: 'Publish message' }).click();
  await page.getByText('Message published and routed.').waitFor();
  await shot(page, 'exchange-publish');
  await page.getByLabel('Routing key').fill('nowhere');
  await page.getByRole('button', { name: 'Publish message' }).click();
  await page.getByText('Message published but not routed').waitFor();

  await page.goto(`${broker.url}/#/queues/%2F/orders`);
  await eventually(async () => (await ready.textContent()) === '4', { what: 'ready 4 after the publish' });
  await page.getByRole('button', { name: 'Purge' }).click();
  await confirm(page, 'Purge');
  await eventually(async () => (await ready.textContent()) === '0', { what: 'ready 0 after the purge' });
  assert.equal((await broker.api('GET', '/api/queues/%2F/orders')).messages, 0);

  // Delete: back to the list, and the queue is gone.
  await page.getByRole('button', { name: 'Delete' }).click();
  await confirm(page, 'Delete');
  await page.locator('h1', { hasText: 'Queues' }).waitFor();
  await page.getByRole('link', { name: 'other', exact: true }).waitFor();
  assert.equal(await page.getByRole('link', { name: 'orders', exact: true }).count(), 0);
  await ch.close();
  assert.deepEqual(page.problems, []);
});

test('a rejected message: x-death on the DLQ page, replayed back to its queue', async () => {
  const ch = await conn.createChannel();
  await ch.assertExchange('work.dlx', 'fanout', { durable: true });
  await ch.assertQueue('work.dlq', { durable: true });
  await ch.bindQueue('work.dlq', 'work.dlx', '');
  await ch.assertQueue('work', { durable: true, arguments: { 'x-dead-letter-exchange': 'work.dlx' } });
  ch.sendToQueue('work', Buffer.from('{"task": "resize", "id": 7}'), { contentType: 'application/json', headers: { 'x-tenant': 'acme' } });
  const msg = await eventually(() => ch.get('work', { noAck: false }), { what: 'the message in work' });
  ch.nack(msg, false, false);
  await eventually(async () => (await broker.api('GET', '/api/queues/%2F/work.dlq')).messages === 1, { what: 'the dead letter' });

  const page = await openPage(browser);
  await login(page, broker.url);
  await page.goto(`${broker.url}/#/queues/%2F/work.dlq`);
  const dlq = page.locator('section.dlq');
  await dlq.waitFor();
  const group = dlq.locator('tbody tr').first();
  await group.getByRole('link', { name: 'work', exact: true }).waitFor();
  assert.equal(await group.locator('td').nth(1).textContent(), 'rejected');

  // Get messages (look only): the x-death history, readable.
  await page.getByRole('button', { name: 'Get messages' }).click();
  const xdeath = page.locator('.message .x-death tbody tr');
  await xdeath.first().waitFor();
  assert.equal(await xdeath.count(), 1);
  const cells = await xdeath.first().locator('td').allTextContents();
  assert.equal(cells[0], '1'); // count
  assert.equal(cells[1], 'rejected');
  assert.equal(cells[2], 'work');
  assert.equal(cells[3], '(AMQP default)');
  assert.equal(cells[4], 'work');
  assert.match(cells[5], /ago|just now/);
  await page.locator('.message pre.payload', { hasText: '"task": "resize"' }).waitFor();
  await page.locator('.message td', { hasText: 'x-tenant' }).waitFor();
  // Looking put it back.
  assert.equal((await broker.api('GET', '/api/queues/%2F/work.dlq')).messages, 1);
  await shot(page, 'queue-dlq-x-death');

  // Replay (Warren's one call): back to work, the DLQ empty.
  await dlq.getByRole('button', { name: 'Replay all' }).click();
  await confirm(page, 'Replay');
  await dlq.locator('.progress.done', { hasText: 'Replay done: 1 message moved; 0 left in work.dlq.' }).waitFor();
  assert.equal((await broker.api('GET', '/api/queues/%2F/work')).messages, 1);
  assert.equal((await broker.api('GET', '/api/queues/%2F/work.dlq')).messages, 0);
  await eventually(async () => (await page.locator('[data-stat="ready"] .card-value').textContent()) === '0', { what: 'DLQ ready 0' });
  await shot(page, 'queue-dlq-replayed');

  await page.goto(`${broker.url}/#/queues/%2F/work`);
  await eventually(async () => (await page.locator('[data-stat="ready"] .card-value').textContent()) === '1', { what: 'work ready 1' });
  await ch.close();
  assert.deepEqual(page.problems, []);
});

test('move messages with a shovel; bindings added and removed', async () => {
  const ch = await conn.createConfirmChannel();
  await ch.assertQueue('parked', { durable: true });
  for (let i = 0; i < 5; i++) ch.sendToQueue('parked', Buffer.from(`p${i}`));
  await ch.waitForConfirms();
  const page = await openPage(browser);
  await login(page, broker.url);
  await page.goto(`${broker.url}/#/queues/%2F/parked`);
  await page.getByLabel('Destination queue').fill('retried');
  await page.getByRole('button', { name: 'Move messages' }).click();
  await confirm(page, 'Move');
  await page.locator('.progress.done', { hasText: 'Move done: 5 messages moved' }).waitFor();
  assert.equal((await broker.api('GET', '/api/queues/%2F/retried')).messages, 5);

  await page.getByLabel('From exchange').fill('amq.topic');
  await page.getByLabel('Routing key', { exact: true }).fill('parked.#');
  await page.getByRole('button', { name: 'Bind', exact: true }).click();
  const row = page.locator('#bindings-h ~ div tbody tr', { hasText: 'parked.#' });
  await row.waitFor();
  await row.getByRole('button', { name: 'Unbind' }).click();
  await confirm(page, 'Unbind');
  await row.waitFor({ state: 'detached' });
  const bindings = await broker.api('GET', '/api/queues/%2F/parked/bindings');
  assert.deepEqual(bindings.map((b) => b.source), ['']);
  await ch.close();
  assert.deepEqual(page.problems, []);
});

test('a narrow window (360 px): nav wraps, tables scroll inside their box', async () => {
  const page = await openPage(browser, { viewport: { width: 360, height: 740 } });
  await login(page, broker.url);
  for (const route of ['overview', 'queues', 'queues/%2F/work', 'exchanges', 'connections', 'admin']) {
    await page.goto(`${broker.url}/#/${route}`);
    await page.locator('main h1').waitFor();
    await page.locator('table').first().waitFor();
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 360, `${route}: the page is ${width} px wide in a 360 px window`);
  }
  await page.goto(`${broker.url}/#/queues`);
  await page.getByRole('link', { name: 'work', exact: true }).waitFor();
  await shot(page, 'queues-narrow');
  assert.deepEqual(page.problems, []);
});
