// Logging in and out: the form checks the credentials with GET /api/whoami; a wrong password is
// refused; a user without a management tag is refused; the session ends on logout.

'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startBroker, launch, openPage, login, shot } = require('../lib/harness.js');

let broker;
let browser;

before(async () => {
  [broker, browser] = await Promise.all([startBroker(), launch()]);
  await broker.api('PUT', '/api/users/amqp-only', { password: 'secret', tags: '' });
});

after(async () => {
  await browser?.close();
  await broker?.stop();
});

test('a wrong password is refused, the right one logs in, logout ends the session', async () => {
  const page = await openPage(browser);
  // The refused logins' 401s are expected in the console.
  page.allowed.push(/status of 401/);
  await page.goto(`${broker.url}/`);
  await page.getByLabel('Username').fill('guest');
  await page.getByLabel('Password').fill('wrong');
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('alert').filter({ hasText: 'Login failed: wrong username or password.' }).waitFor();
  await shot(page, 'login-refused');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('warren.session')), null);

  // A user without a management tag may not use the UI (RabbitMQ's rule).
  await page.getByLabel('Username').fill('amqp-only');
  await page.getByLabel('Password').fill('secret');
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('alert').filter({ hasText: 'Not management user' }).waitFor();
  page.allowed.length = 0;

  await page.getByLabel('Username').fill('guest');
  await page.getByLabel('Password').fill('guest');
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.locator('h1', { hasText: 'Overview' }).waitFor();
  await page.locator('#who-name', { hasText: 'guest (administrator)' }).waitFor();
  assert.ok(await page.getByRole('link', { name: 'Admin' }).isVisible());

  // The session survives a reload (sessionStorage), not a logout.
  await page.reload();
  await page.locator('h1', { hasText: 'Overview' }).waitFor();
  await page.getByRole('button', { name: 'Log out' }).click();
  await page.getByRole('button', { name: 'Log in' }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem('warren.session')), null);
  assert.deepEqual(page.problems, []);
});

test('keyboard: skip link, navigation links, focus moves to the page heading', async () => {
  const page = await openPage(browser);
  await login(page, broker.url);
  await page.reload(); // a fresh load: focus starts at the top
  await page.locator('h1', { hasText: 'Overview' }).waitFor();
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Skip to content');
  // Tab to the Queues link and follow it with Enter.
  for (let i = 0; i < 6; i++) {
    await page.keyboard.press('Tab');
    if (await page.evaluate(() => document.activeElement.textContent === 'Queues')) break;
  }
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Queues');
  await page.keyboard.press('Enter');
  await page.locator('h1', { hasText: 'Queues' }).waitFor();
  await page.waitForFunction(() => document.activeElement?.tagName === 'H1');
  assert.deepEqual(page.problems, []);
});
