// A few DOM helpers: an element builder, tables, key-value lists, form fields, notices and a
// confirmation dialog. Text always goes in as text (never as HTML).

/**
 * h('a', {href: '#/x', class: 'y', onclick: f}, 'text', child, [more]) → an element.
 * Attributes: `on*` functions become listeners, booleans toggle the attribute, `dataset` and
 * `style` objects are assigned, null/undefined/false are skipped.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'dataset' || k === 'style') Object.assign(el[k], v);
      else if (k === 'value' || k === 'checked') el[k] = v;
      else if (v === true) el.setAttribute(k, '');
      else el.setAttribute(k, v);
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

/** Text with a title (e.g. "1.2k" titled "1,234"). */
export const titled = (text, title, cls) => h('span', { title, class: cls }, text);

let uid = 0;
/** A unique id for label/input pairs. */
const nextId = (p = 'f') => `${p}${++uid}`;

/** A labelled form control: `field('Name', h('input', {...}))`. */
export function field(label, control, hint) {
  if (!control.id) control.id = nextId();
  const hintEl = hint ? h('small', { class: 'hint', id: `${control.id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute('aria-describedby', hintEl.id);
  if (control.type === 'checkbox') {
    return h('div', { class: 'field check' }, control, h('label', { for: control.id }, label), hintEl);
  }
  return h('div', { class: control.tagName === 'TEXTAREA' ? 'field text' : 'field' }, h('label', { for: control.id }, label), control, hintEl);
}

/** A select with `options` as [value, label] pairs or plain values. */
export function select(attrs, options, selected) {
  return h('select', attrs, options.map((o) => {
    const [value, label] = Array.isArray(o) ? o : [o, o];
    return h('option', { value, selected: String(value) === String(selected) }, label);
  }));
}

/** A definition list of [label, value] pairs (values may be nodes). */
export function dl(pairs, cls = 'facts') {
  return h('dl', { class: cls }, pairs.filter(Boolean).map(([k, v]) => h('div', null, h('dt', null, k), h('dd', null, v ?? '–'))));
}

/**
 * A plain table: `cols` are {label, render(item) → node|string, num: right-aligned}.
 * Wrapped in a horizontally scrolling box for narrow windows.
 */
export function table(cols, items, { caption, empty = 'Nothing here.', rowAttrs } = {}) {
  const head = h('thead', null, h('tr', null, cols.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null }, c.label))));
  const body = h('tbody');
  fillRows(body, cols, items, empty, rowAttrs);
  return h('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': caption || 'table' },
    h('table', null, caption ? h('caption', { class: 'sr-only' }, caption) : null, head, body));
}

/** Replace a tbody's rows. */
export function fillRows(body, cols, items, empty = 'Nothing here.', rowAttrs) {
  const frag = document.createDocumentFragment();
  if (!items.length) {
    frag.append(h('tr', { class: 'empty' }, h('td', { colspan: cols.length }, empty)));
  }
  for (const it of items) {
    frag.append(h('tr', rowAttrs ? rowAttrs(it) : null, cols.map((c) => h('td', { class: c.num ? 'num' : c.wrap ? 'wrap' : null }, c.render(it)))));
  }
  body.replaceChildren(frag);
}

/** A short notice in the corner that goes away by itself. */
export function toast(message, kind = 'ok') {
  const box = document.getElementById('toasts');
  const t = h('div', { class: `toast ${kind}` }, message);
  box.append(t);
  setTimeout(() => t.remove(), kind === 'error' ? 8000 : 4000);
}

/**
 * Ask before doing something that cannot be undone. Resolves true if confirmed.
 * A modal <dialog>: focus stays inside, Escape cancels.
 */
export function confirmDialog(message, { ok = 'OK', danger = false, detail } = {}) {
  return new Promise((resolve) => {
    const cancel = h('button', { type: 'button', class: 'secondary' }, 'Cancel');
    const yes = h('button', { type: 'button', class: danger ? 'danger' : null }, ok);
    const d = h('dialog', { class: 'confirm', 'aria-labelledby': 'confirm-title' },
      h('h2', { id: 'confirm-title' }, message),
      detail ? h('div', { class: 'detail' }, detail) : null,
      h('div', { class: 'actions' }, cancel, yes));
    const done = (v) => { d.close(); d.remove(); resolve(v); };
    cancel.addEventListener('click', () => done(false));
    yes.addEventListener('click', () => done(true));
    d.addEventListener('cancel', (e) => { e.preventDefault(); done(false); });
    document.body.append(d);
    d.showModal();
    cancel.focus();
  });
}

/** A button that runs an async action, disabled while it runs; failures become a toast. */
export function actionButton(label, action, attrs = {}) {
  const b = h('button', { type: 'button', ...attrs }, label);
  b.addEventListener('click', async () => {
    b.disabled = true;
    try { await action(b); } catch (e) {
      if (e.name !== 'AbortError') toast(e.message, 'error');
    } finally { b.disabled = false; }
  });
  return b;
}

/**
 * A form whose submit runs `action(form)`; its error shows in the form (role=alert).
 * The submit button is disabled while the action runs.
 */
export function form(attrs, children, action) {
  const err = h('p', { class: 'error', role: 'alert', hidden: true });
  const f = h('form', attrs, children, err);
  f.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.hidden = true;
    const buttons = f.querySelectorAll('button[type=submit]');
    buttons.forEach((b) => { b.disabled = true; });
    try { await action(f); } catch (ex) {
      if (ex.name !== 'AbortError') { err.textContent = ex.message; err.hidden = false; }
    } finally { buttons.forEach((b) => { b.disabled = false; }); }
  });
  return f;
}

/** Parse a JSON object typed in a textarea ('' is {}); throws a readable error. */
export function jsonObject(text, what = 'Arguments') {
  if (!text.trim()) return {};
  let v;
  try { v = JSON.parse(text); } catch (e) { throw new Error(`${what}: not valid JSON (${e.message}).`); }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`${what}: a JSON object is expected, e.g. {"x-max-length": 1000}.`);
  return v;
}

/** A value of a JSON table as text (objects and arrays as compact JSON). */
export function valueText(v) {
  if (v === null || v === undefined) return '';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

/** A key-value table of an object (arguments, headers, definitions). */
export function kvTable(obj, caption, empty = 'None.') {
  const entries = Object.entries(obj || {});
  if (!entries.length) return h('p', { class: 'muted' }, empty);
  return table([
    { label: 'Key', render: ([k]) => h('code', null, k) },
    { label: 'Value', wrap: true, render: ([, v]) => (v === '' ? h('code', { class: 'muted' }, '""') : h('code', { class: 'wrap' }, valueText(v))) },
  ], entries, { caption });
}
