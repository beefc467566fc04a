// Warren's management UI: login, hash routing (#/overview, #/queues, #/queues/%2F/name, ...),
// and the page lifecycle (each page gets a context whose timers and requests stop when the
// page is left). Plain ES modules, no build step.

import { api, session, basicToken, onUnauthorized, ApiError } from './js/api.js';
import { h, field, form } from './js/dom.js';
import * as sampler from './js/sampler.js';
import overview from './js/pages/overview.js';
import queues from './js/pages/queues.js';
import queue from './js/pages/queue.js';
import { exchanges, exchange } from './js/pages/exchanges.js';
import { connections, channels } from './js/pages/connections.js';
import admin from './js/pages/admin.js';

const routes = [
  [/^\/overview$/, overview, 'overview'],
  [/^\/queues$/, queues, 'queues'],
  [/^\/queues\/([^/]+)\/([^/]+)$/, queue, 'queues'],
  [/^\/exchanges$/, exchanges, 'exchanges'],
  [/^\/exchanges\/([^/]+)\/([^/]+)$/, exchange, 'exchanges'],
  [/^\/connections$/, connections, 'connections'],
  [/^\/channels$/, channels, 'channels'],
  [/^\/admin(?:\/([a-z]+))?$/, admin, 'admin'],
];

const main = document.getElementById('main');
let current = null; // the page context in use
let loginNotice = '';

/** The logged-in user, with what their tags allow. */
function currentUser() {
  const s = session.get();
  if (!s) return null;
  const tags = Array.isArray(s.tags) ? s.tags : String(s.tags || '').split(',').filter(Boolean);
  const has = (t) => tags.includes(t);
  return {
    name: s.user,
    tags,
    admin: has('administrator'),
    // Administrators and policymakers act on the broker; management and monitoring users look.
    write: has('administrator') || has('policymaker'),
    policies: has('administrator') || has('policymaker'),
  };
}

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/overview';
  const [path, q = ''] = raw.split('?');
  return { path, query: Object.fromEntries(new URLSearchParams(q)) };
}

/** A page's context: its user, parameters, and the timers and requests to stop on leaving. */
function context(path, params, query) {
  const ac = new AbortController();
  const cleanups = [];
  const ctx = {
    user: currentUser(),
    params,
    query,
    signal: ac.signal,
    alive: true,
    cleanup(fn) { cleanups.push(fn); },
    /** Run `fn` now and then every `ms` after each run ends, until the page is left. */
    every(fn, ms) {
      let t = null;
      const run = async () => {
        if (!ctx.alive) return;
        try {
          await fn();
          ctx.clearError();
        } catch (e) {
          if (e.name !== 'AbortError' && ctx.alive) ctx.showError(e);
        }
        if (ctx.alive && ms) t = setTimeout(run, ms);
      };
      cleanups.push(() => clearTimeout(t));
      return run();
    },
    /** Keep the page's state in the address without a new history entry or a re-render. */
    setQuery(q) {
      const s = new URLSearchParams(Object.entries(q).filter(([, v]) => v !== '' && v !== undefined && v !== null && v !== false)).toString();
      history.replaceState(null, '', `#${path}${s ? `?${s}` : ''}`);
    },
    title(t) { document.title = `${t} · Warren`; },
    showError(e) {
      let box = main.querySelector(':scope > .page-error');
      if (!box) { box = h('p', { class: 'page-error', role: 'alert' }); main.prepend(box); }
      box.textContent = e instanceof ApiError && e.status === 0 ? e.message : `Could not load: ${e.message}`;
    },
    clearError() { main.querySelector(':scope > .page-error')?.remove(); },
    dispose() {
      ctx.alive = false;
      ac.abort();
      for (const fn of cleanups) { try { fn(); } catch (e) { console.warn(e); } }
    },
  };
  return ctx;
}

function markNav(section) {
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.section === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

async function route(focus = true) {
  const user = currentUser();
  if (!user) { showLogin(); return; }
  showChrome(user);
  const { path, query } = parseHash();
  const hit = routes.map(([re, page, section]) => [path.match(re), page, section]).find(([m]) => m);
  if (!hit) { location.hash = '#/overview'; return; }
  const [m, page, section] = hit;
  current?.dispose();
  const params = m.slice(1).map((p) => (p === undefined ? undefined : decodeURIComponent(p)));
  const ctx = context(path, params, query);
  current = ctx;
  markNav(section);
  main.replaceChildren();
  try {
    await page(main, ctx);
  } catch (e) {
    if (e.name !== 'AbortError' && ctx.alive) ctx.showError(e);
  }
  if (focus && ctx.alive) main.querySelector('h1')?.focus({ preventScroll: true });
}

function showChrome(user) {
  document.getElementById('top').hidden = false;
  document.getElementById('nav-admin').hidden = !user.policies;
  document.getElementById('who-name').textContent = `${user.name}${user.tags.length ? ` (${user.tags.join(', ')})` : ''}`;
  sampler.start();
}

function showLogin() {
  current?.dispose();
  current = null;
  sampler.stop();
  document.getElementById('top').hidden = true;
  document.title = 'Log in · Warren';
  const user = h('input', { name: 'username', autocomplete: 'username', required: true, autocapitalize: 'off', spellcheck: 'false' });
  const pass = h('input', { name: 'password', type: 'password', autocomplete: 'current-password' });
  const f = form({ class: 'login', 'aria-labelledby': 'login-title' }, [
    h('h1', { id: 'login-title', tabindex: '-1' }, h('img', { src: 'favicon.svg', alt: '', width: 28, height: 28 }), 'Warren'),
    h('p', { class: 'muted' }, 'Log in with a broker user that has a management tag.'),
    loginNotice ? h('p', { class: 'notice', role: 'status' }, loginNotice) : null,
    field('Username', user),
    field('Password', pass),
    h('button', { type: 'submit' }, 'Log in'),
  ], async () => {
    const token = basicToken(user.value, pass.value);
    let me;
    try {
      me = await api('GET', '/api/whoami', undefined, { token });
    } catch (e) {
      if (e.status === 401) {
        pass.value = '';
        pass.focus();
        throw new Error(e.body?.error === 'not_authorised'
          ? `Login refused: ${e.message}.`
          : 'Login failed: wrong username or password.');
      }
      throw e;
    }
    session.set({ user: me.name, tags: me.tags, auth: token });
    loginNotice = '';
    if (!location.hash || location.hash === '#/login') location.hash = '#/overview';
    else route();
  });
  main.replaceChildren(f);
  (user.value ? pass : user).focus();
}

onUnauthorized(() => {
  session.clear();
  loginNotice = 'Your session ended: the broker refused the credentials. Log in again.';
  showLogin();
});

document.getElementById('logout').addEventListener('click', () => {
  session.clear();
  loginNotice = '';
  showLogin();
});

window.addEventListener('hashchange', () => route());
route(false);
