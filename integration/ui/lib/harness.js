// Shared by the browser tests: start a Warren on ephemeral ports, launch Debian's chromium
// through playwright-core, log in, collect console errors, take screenshots.

'use strict';

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const { chromium } = require('playwright-core');

const ROOT = path.resolve(__dirname, '..', '..', '..');
const OUT = path.resolve(__dirname, '..', 'out');

/** The chromium to drive: $CHROMIUM, else Debian's. */
function chromiumPath() {
  for (const p of [process.env.CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser']) {
    if (p && fs.existsSync(p)) return p;
  }
  throw new Error('no chromium: apt-get install -y chromium, or set $CHROMIUM');
}

/**
 * Start a broker: in memory, on 127.0.0.1, ephemeral AMQP and management ports. The UI is the
 * one built into the binary unless $WARREN_UI_DIR names a directory to serve it from.
 * Resolves once the broker printed its ready line (30 s deadline).
 */
async function startBroker({ args = [], config = '' } = {}) {
  const bin = process.env.WARREN_BIN || path.join(ROOT, 'target', 'release', 'warren');
  const argv = ['--in-memory', '--bind', '127.0.0.1', '--port', '0', '--management-port', '0', '--log-level', 'warn', ...args];
  let toml = config;
  if (process.env.WARREN_UI_DIR) toml = `[management]\nui_dir = ${JSON.stringify(path.resolve(process.env.WARREN_UI_DIR))}\n${toml}`;
  let dir = null;
  if (toml) {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'warren-ui-'));
    fs.writeFileSync(path.join(dir, 'warren.toml'), toml);
    argv.unshift('--config', path.join(dir, 'warren.toml'));
  }
  const proc = spawn(bin, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr = (stderr + d).slice(-4000); });
  const ready = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`warren did not start in 30 s: ${stderr}`)); }, 30000);
    const lines = readline.createInterface({ input: proc.stdout });
    lines.on('line', (line) => {
      let j;
      try { j = JSON.parse(line); } catch { return; }
      if (j.warren === 'ready') { clearTimeout(timer); resolve(j); }
    });
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`warren exited (${code}): ${stderr}`)); });
  });
  proc.removeAllListeners('exit');
  const amqpPort = ready.amqp.split(':').pop();
  const broker = {
    proc,
    amqpUrl: `amqp://guest:guest@127.0.0.1:${amqpPort}`,
    url: `http://${ready.management}`,
    async stop() {
      if (proc.exitCode === null) {
        const gone = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGTERM');
        const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
        await gone;
        clearTimeout(t);
      }
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    },
    /** The management API from the test (guest unless `auth` says otherwise). */
    async api(method, p, body, auth = 'guest:guest') {
      const res = await fetch(broker.url + p, {
        method,
        headers: { Authorization: `Basic ${Buffer.from(auth).toString('base64')}`, ...(body === undefined ? {} : { 'Content-Type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await res.text();
      if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
      return text ? JSON.parse(text) : null;
    },
  };
  // The binary must carry the UI (one built before ui/ had it serves a placeholder).
  const probe = await fetch(`${broker.url}/app.js`);
  if (!probe.ok) {
    await broker.stop();
    throw new Error(`${bin} serves no UI at /app.js (${probe.status}): rebuild it (cargo build --release), or set WARREN_UI_DIR=../../ui to serve the UI from the repository`);
  }
  return broker;
}

async function launch() {
  return chromium.launch({ executablePath: chromiumPath(), args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
}

/**
 * A page that records console errors and page errors in `page.problems`. `allow(text)` lets a
 * test accept an error it provoked (e.g. the 401 of a wrong password).
 */
async function openPage(browser, { viewport = { width: 1280, height: 900 }, acceptDownloads = false } = {}) {
  const context = await browser.newContext({ viewport, acceptDownloads });
  const page = await context.newPage();
  page.problems = [];
  page.allowed = [];
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const text = m.text();
    if (page.allowed.some((re) => re.test(text))) return;
    page.problems.push(`console: ${text}`);
  });
  page.on('pageerror', (e) => page.problems.push(`pageerror: ${e.stack || e.message}`));
  page.setDefaultTimeout(10000);
  return page;
}

/** Log in through the form and wait for the overview. */
async function login(page, url, user = 'guest', password = 'guest') {
  await page.goto(`${url}/#/overview`);
  await page.getByLabel('Username').fill(user);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.locator('main[id=main] h1', { hasText: 'Overview' }).waitFor();
}

/** Follow a link of the main navigation. */
async function nav(page, name) {
  await page.locator('#nav').getByRole('link', { name, exact: true }).click();
  await page.locator('main h1', { hasText: name }).waitFor();
}

/** Save a screenshot under out/ (git-ignored); returns its path. */
async function shot(page, name) {
  fs.mkdirSync(OUT, { recursive: true });
  const file = path.join(OUT, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Poll `fn` until it returns a truthy value (or throw after `timeout` ms). */
async function eventually(fn, { timeout = 10000, interval = 100, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

module.exports = { startBroker, launch, openPage, login, nav, shot, eventually, OUT, ROOT };
