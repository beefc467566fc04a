// Exchanges: the broker-paged list, declare one; an exchange's page with its bindings and a
// form to publish a message.

import { get, put, post, del, enc } from '../api.js';
import { h, dl, field, form, select, table, kvTable, toast, confirmDialog, actionButton, jsonObject, valueText } from '../dom.js';
import { exchangeLabel } from '../format.js';
import { pagedList } from '../list.js';

const urlName = (n) => (n === '' ? 'amq.default' : n);
const exchangeHref = (vhost, name) => `#/exchanges/${enc(vhost)}/${enc(urlName(name))}`;

export async function exchanges(root, ctx) {
  ctx.title('Exchanges');
  root.append(h('div', { class: 'page-head' }, h('h1', { tabindex: '-1' }, 'Exchanges')));
  const list = pagedList(root, ctx, {
    caption: 'Exchanges',
    noun: 'exchanges',
    path: '/api/exchanges',
    perVhost: true,
    defaultSort: 'name',
    columns: 'name,vhost,type,durable,auto_delete,internal,arguments,policy',
    cols: [
      { label: 'Name', sort: 'name', render: (x) => h('a', { href: exchangeHref(x.vhost, x.name) }, exchangeLabel(x.name)) },
      { label: 'Vhost', sort: 'vhost', render: (x) => x.vhost },
      { label: 'Type', sort: 'type', render: (x) => x.type },
      { label: 'Features', render: (x) => [x.durable ? 'durable' : 'transient', x.auto_delete ? 'auto-delete' : '', x.internal ? 'internal' : ''].filter(Boolean).join(', ') },
      { label: 'Arguments', render: (x) => (Object.keys(x.arguments || {}).length ? valueText(x.arguments) : '') },
      { label: 'Policy', sort: 'policy', render: (x) => x.policy || '' },
    ],
  });
  if (ctx.user.write) root.append(addExchangeForm(ctx, list));
}

function addExchangeForm(ctx, list) {
  const name = h('input', { name: 'name', required: true, autocomplete: 'off', spellcheck: 'false' });
  const vhost = select({ name: 'vhost' }, ['/'], '/');
  const type = select({ name: 'type' }, ['direct', 'fanout', 'topic', 'headers', 'x-delayed-message'], 'direct');
  const durable = h('input', { type: 'checkbox', checked: true });
  const args = h('textarea', { rows: 1, placeholder: '{}' });
  get('/api/vhosts?columns=name', { signal: ctx.signal })
    .then((vs) => vhost.replaceChildren(...vs.map((v) => h('option', { value: v.name, selected: v.name === '/' }, v.name))))
    .catch(() => {});
  return h('details', { class: 'panel' }, h('summary', null, 'Add an exchange'), form({ class: 'grid-form' }, [
    field('Name', name), field('Virtual host', vhost), field('Type', type), field('Durable', durable), field('Arguments (JSON)', args),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Add exchange')),
  ], async () => {
    await put(`/api/exchanges/${enc(vhost.value)}/${enc(name.value)}`, { type: type.value, durable: durable.checked, auto_delete: false, internal: false, arguments: jsonObject(args.value) });
    toast(`Exchange ${name.value} declared.`);
    name.value = '';
    list.reload();
  }));
}

export async function exchange(root, ctx) {
  const [vhost, raw] = ctx.params;
  const name = raw === 'amq.default' ? '' : raw;
  const base = `/api/exchanges/${enc(vhost)}/${enc(urlName(name))}`;
  ctx.title(`Exchange ${exchangeLabel(name)}`);
  const actions = h('div', { class: 'actions' });
  root.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/exchanges' }, 'Exchanges'), ` / ${vhost}`),
    h('div', { class: 'page-head' }, h('h1', { tabindex: '-1' }, exchangeLabel(name)), actions),
  );
  let x;
  try {
    x = await get(base, { signal: ctx.signal });
  } catch (e) {
    if (e.status === 404) { root.append(h('p', { class: 'error', role: 'alert' }, `There is no exchange “${name}” in vhost “${vhost}”.`)); return; }
    throw e;
  }
  if (ctx.user.write && name && !name.startsWith('amq.')) {
    actions.append(actionButton('Delete', async () => {
      if (!await confirmDialog(`Delete exchange “${name}”?`, { ok: 'Delete', danger: true, detail: 'Its bindings go with it.' })) return;
      await del(base);
      toast(`Exchange ${name} deleted.`);
      location.hash = '#/exchanges';
    }, { class: 'danger' }));
  }
  root.append(h('section', { 'aria-labelledby': 'x-details-h' }, h('h2', { id: 'x-details-h' }, 'Details'),
    h('div', { class: 'two' },
      dl([['Type', x.type], ['Durable', x.durable ? 'yes' : 'no'], ['Auto-delete', x.auto_delete ? 'yes' : 'no'], ['Internal', x.internal ? 'yes' : 'no'], ['Policy', x.policy || 'none']]),
      h('div', null, h('h3', null, 'Arguments'), kvTable(x.arguments, 'Arguments', 'No arguments.')))));

  const bindings = h('div');
  root.append(h('section', { 'aria-labelledby': 'x-bindings-h' }, h('h2', { id: 'x-bindings-h' }, 'Bindings from this exchange'), bindings));
  const loadBindings = async () => {
    if (name === '') {
      bindings.replaceChildren(h('p', { class: 'muted' }, 'The default exchange routes to the queue named by the routing key; every queue is bound to it implicitly.'));
      return;
    }
    const bs = await get(`${base}/bindings/source`, { signal: ctx.signal });
    bindings.replaceChildren(table([
      { label: 'To', render: (b) => (b.destination_type === 'queue'
        ? h('a', { href: `#/queues/${enc(vhost)}/${enc(b.destination)}` }, b.destination)
        : h('a', { href: `#/exchanges/${enc(vhost)}/${enc(b.destination)}` }, b.destination)) },
      { label: 'Kind', render: (b) => b.destination_type },
      { label: 'Routing key', render: (b) => h('code', null, b.routing_key) },
      { label: 'Arguments', render: (b) => (Object.keys(b.arguments || {}).length ? valueText(b.arguments) : '') },
    ], bs, { caption: 'Bindings', empty: 'No bindings: messages published here are dropped (or returned, if mandatory).' }));
  };
  await ctx.every(loadBindings, 10000);
  if (ctx.user.write && !x.internal) root.append(publishForm(vhost, base));
}

function publishForm(vhost, base) {
  const key = h('input', { name: 'routing_key', autocomplete: 'off', spellcheck: 'false' });
  const mode = select({ name: 'delivery_mode' }, [['1', 'Transient (1)'], ['2', 'Persistent (2)']], '2');
  const ctype = h('input', { name: 'content_type', placeholder: 'e.g. application/json', autocomplete: 'off' });
  const headers = h('textarea', { name: 'headers', rows: 2, placeholder: '{"x-retry": 1}' });
  const props = h('textarea', { name: 'properties', rows: 2, placeholder: '{"message_id": "42", "expiration": "60000"}' });
  const payload = h('textarea', { name: 'payload', rows: 5 });
  const result = h('p', { role: 'status', class: 'result' });
  const f = form({ class: 'grid-form publish' }, [
    field('Routing key', key), field('Delivery mode', mode), field('Content type', ctype),
    field('Headers (JSON)', headers), field('Other properties (JSON)', props),
    h('div', { class: 'field wide' }, h('label', { for: 'publish-payload' }, 'Payload'), Object.assign(payload, { id: 'publish-payload' })),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Publish message'), result),
  ], async () => {
    const properties = { ...jsonObject(props.value, 'Other properties'), delivery_mode: +mode.value };
    const hs = jsonObject(headers.value, 'Headers');
    if (Object.keys(hs).length) properties.headers = hs;
    if (ctype.value) properties.content_type = ctype.value;
    const r = await post(`${base}/publish`, { properties, routing_key: key.value, payload: payload.value, payload_encoding: 'string' });
    result.className = r.routed ? 'result ok' : 'result bad';
    result.textContent = r.routed ? 'Message published and routed.' : 'Message published but not routed: no queue is bound for this routing key.';
  });
  return h('section', { class: 'panel', 'aria-labelledby': 'publish-h' }, h('h2', { id: 'publish-h' }, 'Publish a message'), f);
}
