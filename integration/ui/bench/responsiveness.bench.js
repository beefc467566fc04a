// Responsiveness with a big broker: 10,000 queues and 1,000 connections (amqplib, from this
// process). Measured in the browser:
// - overview first paint: from navigation start to the overview showing the broker's figures
//   (the UI's `warren:overview-ready` mark), over fresh page loads;
// - queues table update: from the click (next page, or a column's sort) to the new rows in the
//   DOM and the frame after (MutationObserver, then requestAnimationFrame).
// Targets: first paint < 1 s, table update < 200 ms. `npm run bench`; figures printed and saved
// to out/bench.json.

'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const amqp = require('amqplib');
const { startBroker, launch, openPage, login, nav, OUT } = require('../lib/harness.js');

const QUEUES = +(process.env.BENCH_QUEUES || 10000);
const CONNECTIONS = +(process.env.BENCH_CONNECTIONS || 1000);
const ROUNDS = 10;

let broker;
let browser;
const conns = [];
const figures = { queues: QUEUES, connections: CONNECTIONS };

const stats = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return { median: +q(0.5).toFixed(1), p90: +q(0.9).toFixed(1), max: +s[s.length - 1].toFixed(1), n: s.length };
};

before(async () => {
  [broker, browser] = await Promise.all([startBroker(), launch()]);
  let t = Date.now();
  // Queues: 8 channels declaring in parallel (amqplib pipelines each channel's RPCs).
  const setup = await amqp.connect(broker.amqpUrl);
  conns.push(setup);
  const channels = await Promise.all(Array.from({ length: 8 }, () => setup.createChannel()));
  await Promise.all(channels.map((ch, c) => {
    const work = [];
    for (let i = c; i < QUEUES; i += channels.length) {
      work.push(ch.assertQueue(`bench.${String(i).padStart(5, '0')}`, { durable: false }));
    }
    return Promise.all(work);
  }));
  // Some depth to sort by: queue i holds i % 7 messages, on every 10th queue.
  const pub = await setup.createConfirmChannel();
  for (let i = 0; i < QUEUES; i += 10) {
    for (let n = 0; n < i % 7; n++) pub.sendToQueue(`bench.${String(i).padStart(5, '0')}`, Buffer.from('x'));
  }
  await pub.waitForConfirms();
  figures.declare_s = (Date.now() - t) / 1000;
  t = Date.now();
  // Connections, each with a channel, opened 50 at a time.
  for (let i = 0; i < CONNECTIONS; i += 50) {
    const batch = await Promise.all(Array.from({ length: Math.min(50, CONNECTIONS - i) }, (_, j) =>
      amqp.connect(broker.amqpUrl, { clientProperties: { connection_name: `bench-${i + j}` } })));
    await Promise.all(batch.map((c) => c.createChannel()));
    conns.push(...batch);
  }
  figures.connect_s = (Date.now() - t) / 1000;
  const o = await broker.api('GET', '/api/overview');
  assert.equal(o.object_totals.queues, QUEUES);
  assert.ok(o.object_totals.connections >= CONNECTIONS);
});

after(async () => {
  await Promise.all(conns.map((c) => c.close().catch(() => {})));
  await browser?.close();
  await broker?.stop();
  fs.mkdirSync(OUT, { recursive: true });
  fs.writeFileSync(path.join(OUT, 'bench.json'), `${JSON.stringify(figures, null, 2)}\n`);
  console.log(`\nresponsiveness (${QUEUES} queues, ${CONNECTIONS} connections):\n${JSON.stringify(figures, null, 2)}`);
});

/** The API's own time for a request, from this process (median of 5). */
async function apiTime(p) {
  const xs = [];
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    await broker.api('GET', p);
    xs.push(performance.now() - t);
  }
  return stats(xs).median;
}

test('overview: first paint with the broker\'s figures < 1 s', async () => {
  const page = await openPage(browser);
  await login(page, broker.url);
  const ready = [];
  const fcp = [];
  for (let i = 0; i < ROUNDS; i++) {
    await page.reload();
    await page.locator('main[data-ready]').waitFor();
    const m = await page.evaluate(() => ({
      ready: performance.getEntriesByName('warren:overview-ready')[0].startTime,
      fcp: performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null,
    }));
    ready.push(m.ready);
    if (m.fcp !== null) fcp.push(m.fcp);
  }
  figures.overview_ready_ms = stats(ready);
  figures.overview_first_contentful_paint_ms = fcp.length ? stats(fcp) : null;
  figures.api_overview_ms = await apiTime('/api/overview');
  assert.equal(await page.locator('.card', { hasText: 'Queues' }).locator('.card-value').getAttribute('title') ?? await page.locator('.card', { hasText: 'Queues' }).locator('.card-value span').getAttribute('title'), QUEUES.toLocaleString('en'));
  assert.ok(figures.overview_ready_ms.median < 1000, `overview ready in ${figures.overview_ready_ms.median} ms`);
  assert.deepEqual(page.problems, []);
});

/** Click `selector` and time until the list's rows are replaced and the next frame runs. */
function timedUpdate(page, selector) {
  return page.evaluate((sel) => new Promise((resolve, reject) => {
    const tbl = document.querySelector('table.list');
    const before = tbl.dataset.loaded;
    const t0 = performance.now();
    const timer = setTimeout(() => reject(new Error('no update in 10 s')), 10000);
    const mo = new MutationObserver(() => {
      if (tbl.dataset.loaded === before) return;
      mo.disconnect();
      clearTimeout(timer);
      requestAnimationFrame(() => setTimeout(() => resolve(performance.now() - t0), 0));
    });
    mo.observe(tbl, { attributes: true, attributeFilter: ['data-loaded'] });
    document.querySelector(sel).click();
  }), selector);
}

for (const size of [50, 500]) {
  test(`queues table (${size} a page): page change and sort < 200 ms`, async () => {
    const page = await openPage(browser);
    await login(page, broker.url);
    await page.goto(`${broker.url}/#/queues${size === 50 ? '' : `?size=${size}`}`);
    await page.locator('main h1', { hasText: 'Queues' }).waitFor();
    await page.locator('.summary', { hasText: `of ${QUEUES.toLocaleString('en')} queues` }).waitFor();
    const pageChange = [];
    for (let i = 0; i < ROUNDS; i++) pageChange.push(await timedUpdate(page, '.pager button[aria-label="Next page"]'));
    const sort = [];
    const columns = ['Ready', 'Name', 'Consumers', 'Total', 'Ready'];
    for (let i = 0; i < ROUNDS; i++) {
      const label = columns[i % columns.length];
      const idx = await page.evaluate((l) => [...document.querySelectorAll('table.list th')].findIndex((th) => th.textContent === l), label);
      sort.push(await timedUpdate(page, `table.list th:nth-child(${idx + 1}) button`));
    }
    const rows = await page.locator('table.list tbody tr').count();
    assert.equal(rows, size);
    figures[`queues_page_change_ms_${size}`] = stats(pageChange);
    figures[`queues_sort_ms_${size}`] = stats(sort);
    figures[`api_queues_page_ms_${size}`] = await apiTime(`/api/queues?page=3&page_size=${size}&sort=messages_ready&sort_reverse=true&columns=name,vhost,type,state,messages_ready,messages_unacknowledged,messages,message_stats.publish_details.rate,message_stats.deliver_get_details.rate,consumers,policy`);
    if (size === 50) {
      assert.ok(figures.queues_page_change_ms_50.median < 200, `page change ${figures.queues_page_change_ms_50.median} ms`);
      assert.ok(figures.queues_sort_ms_50.median < 200, `sort ${figures.queues_sort_ms_50.median} ms`);
    }
    assert.deepEqual(page.problems, []);
  });
}

test('connections list (1,000 connections): page change', async () => {
  const page = await openPage(browser);
  await login(page, broker.url);
  await nav(page, 'Connections');
  await page.locator('.summary', { hasText: 'connections' }).waitFor({ timeout: 30000 });
  const xs = [];
  for (let i = 0; i < 5; i++) xs.push(await timedUpdate(page, '.pager button[aria-label="Next page"]'));
  figures.connections_page_change_ms_50 = stats(xs);
  figures.api_connections_page_ms_50 = await apiTime('/api/connections?page=2&page_size=50');
  assert.deepEqual(page.problems, []);
});
