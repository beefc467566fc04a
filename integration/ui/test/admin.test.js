// Admin: add a user and log in as them (read-only: no Admin page, no destructive buttons),
// vhosts, policies, definitions export (a JSON download); connections (close one) and
// channels; screenshots of each page.

'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const amqp = require('amqplib');
const { startBroker, launch, openPage, login, nav, shot, eventually } = require('../lib/harness.js');

let broker;
let browser;

before(async () => {
  [broker, browser] = await Promise.all([startBroker(), launch()]);
});

after(async () => {
  await browser?.close();
  await broker?.stop();
});

async function confirm(page, button) {
  const dialog = page.locator('dialog[open]');
  await dialog.getByRole('button', { name: button }).click();
  await dialog.waitFor({ state: 'detached' });
}

test('add a user on the Admin page, then log in as them (read-only)', async () => {
  const page = await openPage(browser);
  await login(page, broker.url);
  await nav(page, 'Admin');
  await page.getByRole('heading', { name: 'Users' }).waitFor();
  await page.getByLabel('Username').fill('alice');
  await page.getByLabel('Password', { exact: true }).fill('s3cret-pw');
  await page.getByLabel('Tags').selectOption('management');
  await page.getByLabel('Full permissions on vhost').selectOption('/');
  await page.getByRole('button', { name: 'Save user' }).click();
  await page.locator('tbody tr', { hasText: 'alice' }).waitFor();
  const perms = await broker.api('GET', '/api/permissions/%2F/alice');
  assert.equal(perms.configure, '.*');
  await shot(page, 'admin-users');

  // Vhosts and policies.
  await page.getByRole('link', { name: 'Virtual hosts' }).click();
  await page.getByLabel('Name').fill('staging');
  await page.getByRole('button', { name: 'Add vhost' }).click();
  await page.locator('tbody tr', { hasText: 'staging' }).waitFor();
  await page.getByRole('link', { name: 'Policies' }).click();
  await page.getByLabel('Name').fill('dlx-all');
  await page.getByLabel('Pattern (regex)').fill('^work$');
  await page.getByLabel('Definition (JSON)').fill('{"dead-letter-exchange": "work.dlx"}');
  await page.getByRole('button', { name: 'Save policy' }).click();
  await page.locator('tbody tr', { hasText: 'dlx-all' }).waitFor();
  await shot(page, 'admin-policies');
  await page.getByRole('link', { name: 'Limits' }).click();
  await page.getByRole('heading', { name: 'Virtual host limits' }).waitFor();

  // Log in as alice: a management user sees the broker but may not change it.
  await page.getByRole('button', { name: 'Log out' }).click();
  await login(page, broker.url, 'alice', 's3cret-pw');
  await page.locator('#who-name', { hasText: 'alice (management)' }).waitFor();
  assert.equal(await page.getByRole('link', { name: 'Admin' }).isVisible(), false);
  await broker.api('PUT', '/api/queues/%2F/alices', { durable: true });
  await page.goto(`${broker.url}/#/queues/%2F/alices`);
  await page.locator('h1', { hasText: 'alices' }).waitFor();
  await page.getByRole('button', { name: 'Get messages' }).waitFor();
  assert.equal(await page.getByRole('button', { name: 'Purge' }).count(), 0);
  assert.equal(await page.getByRole('button', { name: 'Delete' }).count(), 0);
  await page.goto(`${broker.url}/#/admin`);
  await page.getByText('This page needs the administrator tag.').waitFor();

  // Her user deleted: the next request is refused and the UI goes back to the login form.
  page.allowed.push(/status of 401/);
  await page.goto(`${broker.url}/#/queues`);
  await page.locator('table.list tbody tr').first().waitFor();
  await broker.api('DELETE', '/api/users/alice');
  await page.getByRole('button', { name: 'Refresh' }).click();
  await page.getByText('Your session ended: the broker refused the credentials.').waitFor();
  await page.getByRole('button', { name: 'Log in' }).waitFor();
  assert.deepEqual(page.problems, []);
});

test('definitions export downloads the broker\'s JSON; import merges a file', async () => {
  const page = await openPage(browser, { acceptDownloads: true });
  await login(page, broker.url);
  await page.goto(`${broker.url}/#/admin/definitions`);
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.getByRole('button', { name: 'Download definitions' }).click(),
  ]);
  assert.match(download.suggestedFilename(), /^warren-definitions-\d{4}-\d\d-\d\d\.json$/);
  const defs = JSON.parse(fs.readFileSync(await download.path(), 'utf8'));
  assert.ok(defs.users.some((u) => u.name === 'guest'));
  assert.ok(Array.isArray(defs.queues) && Array.isArray(defs.vhosts));

  const file = `${require('node:os').tmpdir()}/warren-ui-defs-${process.pid}.json`;
  fs.writeFileSync(file, JSON.stringify({ queues: [{ name: 'imported', vhost: '/', durable: true, auto_delete: false, arguments: {} }] }));
  try {
    await page.getByLabel('Definitions file (JSON)').setInputFiles(file);
    await page.getByRole('button', { name: 'Import' }).click();
    await page.getByText('Imported warren-ui-defs').waitFor();
  } finally { fs.rmSync(file, { force: true }); }
  assert.equal((await broker.api('GET', '/api/queues/%2F/imported')).name, 'imported');
  await shot(page, 'admin-definitions');
  assert.deepEqual(page.problems, []);
});

test('connections (close one with a reason), channels, exchanges, overview', async () => {
  const conn = await amqp.connect(broker.amqpUrl, { clientProperties: { connection_name: 'billing-worker' } });
  const closed = new Promise((resolve) => { conn.on('error', resolve); conn.on('close', resolve); });
  const ch = await conn.createConfirmChannel();
  await ch.prefetch(10);
  await ch.assertQueue('billing', { durable: true });
  await ch.consume('billing', () => {});
  const page = await openPage(browser);
  await login(page, broker.url);

  await nav(page, 'Channels');
  const chRow = page.locator('table.list tbody tr', { hasText: 'confirm' });
  await chRow.waitFor();
  await shot(page, 'channels');

  await nav(page, 'Exchanges');
  await page.getByRole('link', { name: 'amq.topic' }).first().waitFor();
  await shot(page, 'exchanges');

  await nav(page, 'Connections');
  const row = page.locator('table.list tbody tr', { hasText: 'billing-worker' });
  await row.waitFor();
  await shot(page, 'connections');
  await row.getByRole('button', { name: /^Close connection/ }).click();
  await page.locator('dialog[open]').getByLabel('Reason').fill('maintenance');
  await confirm(page, 'Close');
  const err = await Promise.race([closed, new Promise((_, reject) => setTimeout(() => reject(new Error('the connection was not closed')), 10000))]);
  assert.match(String(err?.message), /CONNECTION_FORCED - maintenance/);
  await page.locator('.summary', { hasText: '0–0 of 0 connections' }).waitFor();

  await nav(page, 'Overview');
  await page.locator('main[data-ready]').waitFor();
  const queues = (await broker.api('GET', '/api/overview')).object_totals.queues;
  await eventually(async () => (await page.locator('.card', { hasText: 'Queues' }).locator('.card-value').textContent()) === String(queues), { what: `${queues} queues on the overview` });
  await shot(page, 'overview');
  assert.deepEqual(page.problems, []);
});
