// A list paged, sorted and filtered by the broker (RabbitMQ's `page`, `page_size`, `sort`,
// `sort_reverse`, `name`, `use_regex`, `columns`): only one page of items ever crosses the wire
// or reaches the DOM, so 10,000 queues list as fast as 10. The state lives in the address
// (#/queues?page=2&sort=messages&rev=1), so reload and back keep it.

import { get, qs, enc } from './api.js';
import { h, field, select, fillRows } from './dom.js';
import { ago, exact } from './format.js';

const SIZES = [20, 50, 100, 200, 500];

/**
 * spec: {caption, path (e.g. '/api/queues'), perVhost (path/{vhost} when a vhost is chosen),
 * columns (the API's `columns`), cols [{label, sort?, num?, render(item)}], defaultSort,
 * noun ('queues'), refreshMs, toolbar (extra nodes)}.
 * Returns {reload()}.
 */
export function pagedList(root, ctx, spec) {
  const q = ctx.query;
  const state = {
    page: Math.max(1, parseInt(q.page, 10) || 1),
    size: SIZES.includes(+q.size) ? +q.size : (spec.size || 50),
    sort: q.sort ?? spec.defaultSort ?? '',
    rev: q.rev === '1',
    name: q.name || '',
    regex: q.regex === '1',
    vhost: q.vhost || '',
  };
  let ac = null;
  let lastAt = 0;

  const filter = h('input', { type: 'search', value: state.name, placeholder: 'name contains…', autocomplete: 'off', spellcheck: 'false' });
  const regex = h('input', { type: 'checkbox', checked: state.regex });
  const size = select({}, SIZES.map((s) => [s, `${s} a page`]), state.size);
  const vhost = spec.perVhost ? select({}, [['', 'All vhosts'], ...(state.vhost ? [state.vhost] : [])], state.vhost) : null;
  const refresh = h('button', { type: 'button', class: 'secondary' }, 'Refresh');
  const summary = h('p', { class: 'summary', 'aria-live': 'polite' });
  const updated = h('span', { class: 'muted updated' });
  const body = h('tbody');
  const headCells = spec.cols.map((c) => {
    const th = h('th', { scope: 'col', class: c.num ? 'num' : null });
    if (c.sort) {
      const b = h('button', { type: 'button', class: 'sort' }, c.label);
      b.addEventListener('click', () => {
        if (state.sort === c.sort) state.rev = !state.rev;
        else { state.sort = c.sort; state.rev = !!c.num; }
        state.page = 1;
        go();
      });
      th.append(b);
    } else {
      th.append(c.label);
    }
    return th;
  });
  const tbl = h('table', { class: 'list' }, h('caption', { class: 'sr-only' }, spec.caption), h('thead', null, h('tr', null, headCells)), body);
  const pager = h('nav', { class: 'pager', 'aria-label': `${spec.caption} pages` });

  const controls = h('div', { class: 'toolbar' },
    field('Filter by name', filter),
    field('Regex', regex),
    vhost ? field('Virtual host', vhost) : null,
    field('Page size', size),
    refresh,
    updated,
    spec.toolbar || null);
  root.append(controls, summary, h('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': spec.caption }, tbl), pager);

  /** A load asked for by the user; its failure shows on the page. */
  const go = () => load(true).then(() => ctx.clearError(), (e) => { if (e.name !== 'AbortError' && ctx.alive) ctx.showError(e); });

  let debounce = null;
  filter.addEventListener('input', () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => { state.name = filter.value; state.page = 1; go(); }, 250);
  });
  filter.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') { clearTimeout(debounce); state.name = filter.value; state.page = 1; go(); }
  });
  regex.addEventListener('change', () => { state.regex = regex.checked; state.page = 1; go(); });
  size.addEventListener('change', () => { state.size = +size.value; state.page = 1; go(); });
  vhost?.addEventListener('change', () => { state.vhost = vhost.value; state.page = 1; go(); });
  refresh.addEventListener('click', go);
  ctx.cleanup(() => { clearTimeout(debounce); ac?.abort(); });

  if (vhost) {
    get('/api/vhosts?columns=name', { signal: ctx.signal }).then((list) => {
      vhost.replaceChildren(...[['', 'All vhosts'], ...list.map((v) => [v.name, v.name])].map(([v, l]) => h('option', { value: v, selected: v === state.vhost }, l)));
    }).catch(() => {});
  }

  function markSort() {
    spec.cols.forEach((c, i) => {
      const th = headCells[i];
      if (!c.sort) return;
      const on = state.sort === c.sort;
      if (on) th.setAttribute('aria-sort', state.rev ? 'descending' : 'ascending');
      else th.removeAttribute('aria-sort');
    });
  }

  function pageButton(label, page, disabled, aria) {
    const b = h('button', { type: 'button', class: 'secondary', disabled, 'aria-label': aria });
    b.textContent = label;
    b.addEventListener('click', () => { state.page = page; go(); });
    return b;
  }

  function renderPager(d) {
    const last = d.page_count;
    pager.replaceChildren(
      pageButton('«', 1, d.page <= 1, 'First page'),
      pageButton('‹ Prev', d.page - 1, d.page <= 1, 'Previous page'),
      h('span', { class: 'page-no' }, `Page ${d.page} of ${last}`),
      pageButton('Next ›', d.page + 1, d.page >= last, 'Next page'),
      pageButton('»', last, d.page >= last, 'Last page'),
    );
  }

  /** Fetch and show the current page. `user`: asked for (not the periodic refresh). */
  async function load(user = false) {
    if (!user && root.contains(document.activeElement) && body.contains(document.activeElement)) return; // keep focus in a row
    ac?.abort();
    ac = new AbortController();
    const signal = ac.signal;
    ctx.setQuery({ page: state.page > 1 ? state.page : '', size: state.size !== (spec.size || 50) ? state.size : '', sort: state.sort !== (spec.defaultSort ?? '') ? state.sort : '', rev: state.rev ? 1 : '', name: state.name, regex: state.regex ? 1 : '', vhost: state.vhost });
    markSort();
    const path = state.vhost && spec.perVhost ? `${spec.path}/${enc(state.vhost)}` : spec.path;
    const url = path + qs({
      page: state.page, page_size: state.size, name: state.name, use_regex: state.regex && state.name ? 'true' : '',
      sort: state.sort, sort_reverse: state.rev ? 'true' : '', columns: spec.columns,
    });
    let d;
    const t0 = performance.now();
    try {
      d = await get(url, { signal });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      if (e.status === 400 && e.body?.error === 'page_out_of_range' && state.page > 1) { state.page = 1; return load(user); }
      if (e.status === 400 && state.regex) {
        filter.setAttribute('aria-invalid', 'true');
        summary.textContent = `The filter is not a valid regular expression (${e.message}).`;
        summary.classList.add('bad');
        return;
      }
      throw e;
    }
    filter.removeAttribute('aria-invalid');
    summary.classList.remove('bad');
    state.page = d.page;
    const t1 = performance.now();
    fillRows(body, spec.cols, d.items, state.name ? `No ${spec.noun} match “${state.name}”.` : `No ${spec.noun}.`);
    const from = d.item_count ? (d.page - 1) * d.page_size + 1 : 0;
    const to = from ? from + d.item_count - 1 : 0;
    summary.textContent = d.filtered_count === d.total_count
      ? `${exact(from)}–${exact(to)} of ${exact(d.total_count)} ${spec.noun}`
      : `${exact(from)}–${exact(to)} of ${exact(d.filtered_count)} matching (${exact(d.total_count)} ${spec.noun} in all)`;
    renderPager(d);
    lastAt = Date.now();
    updated.textContent = 'Updated just now';
    tbl.dataset.loaded = String(lastAt);
    // For the responsiveness bench: the request's and the DOM update's share.
    performance.measure('warren:list-fetch', { start: t0, end: t1 });
    performance.measure('warren:list-render', { start: t1, end: performance.now() });
  }

  const clock = setInterval(() => { if (lastAt) updated.textContent = `Updated ${ago(lastAt)}`; }, 1000);
  ctx.cleanup(() => clearInterval(clock));
  ctx.every(() => load(false), spec.refreshMs ?? 5000);
  return { reload: go, state };
}
