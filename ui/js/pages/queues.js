// Queues: the broker-paged list, and a form to declare one.

import { put, enc, get } from '../api.js';
import { h, field, form, select, jsonObject, titled, toast } from '../dom.js';
import { num, rate, exact, pick } from '../format.js';
import { pagedList } from '../list.js';

const queueHref = (vhost, name) => `#/queues/${enc(vhost)}/${enc(name)}`;

const count = (k) => (q) => titled(num(q[k] ?? 0), exact(q[k] ?? 0));
const rateCol = (path) => (q) => rate(pick(q, path) ?? 0);

export default async function queues(root, ctx) {
  ctx.title('Queues');
  root.append(h('div', { class: 'page-head' }, h('h1', { tabindex: '-1' }, 'Queues')));
  const list = pagedList(root, ctx, {
    caption: 'Queues',
    noun: 'queues',
    path: '/api/queues',
    perVhost: true,
    defaultSort: 'name',
    columns: 'name,vhost,type,state,messages_ready,messages_unacknowledged,messages,message_stats.publish_details.rate,message_stats.deliver_get_details.rate,consumers,policy',
    cols: [
      { label: 'Name', sort: 'name', render: (q) => h('a', { href: queueHref(q.vhost, q.name) }, q.name) },
      { label: 'Vhost', sort: 'vhost', render: (q) => q.vhost },
      { label: 'Type', sort: 'type', render: (q) => q.type },
      { label: 'State', sort: 'state', render: (q) => h('span', { class: `state ${q.state}` }, q.state) },
      { label: 'Ready', sort: 'messages_ready', num: true, render: count('messages_ready') },
      { label: 'Unacked', sort: 'messages_unacknowledged', num: true, render: count('messages_unacknowledged') },
      { label: 'Total', sort: 'messages', num: true, render: count('messages') },
      { label: 'In', sort: 'message_stats.publish_details.rate', num: true, render: rateCol('message_stats.publish_details.rate') },
      { label: 'Out', sort: 'message_stats.deliver_get_details.rate', num: true, render: rateCol('message_stats.deliver_get_details.rate') },
      { label: 'Consumers', sort: 'consumers', num: true, render: (q) => num(q.consumers ?? 0) },
      { label: 'Policy', sort: 'policy', render: (q) => q.policy || '' },
    ],
  });
  if (ctx.user.write) root.append(addQueueForm(ctx, list));
}

function addQueueForm(ctx, list) {
  const name = h('input', { name: 'name', required: true, autocomplete: 'off', spellcheck: 'false' });
  const vhost = select({ name: 'vhost' }, ['/'], '/');
  const type = select({ name: 'type' }, [['classic', 'classic'], ['quorum', 'quorum']], 'classic');
  const durable = h('input', { type: 'checkbox', name: 'durable', checked: true });
  const dlx = h('input', { name: 'dlx', autocomplete: 'off', placeholder: 'optional' });
  const args = h('textarea', { name: 'arguments', rows: 2, placeholder: '{"x-max-length": 10000}' });
  get('/api/vhosts?columns=name', { signal: ctx.signal })
    .then((vs) => vhost.replaceChildren(...vs.map((v) => h('option', { value: v.name, selected: v.name === '/' }, v.name))))
    .catch(() => {});
  const f = form({ class: 'grid-form' }, [
    field('Name', name),
    field('Virtual host', vhost),
    field('Type', type),
    field('Durable', durable),
    field('Dead-letter exchange', dlx, 'x-dead-letter-exchange'),
    field('Arguments (JSON)', args),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Add queue')),
  ], async () => {
    const a = jsonObject(args.value);
    if (type.value !== 'classic') a['x-queue-type'] = type.value;
    if (dlx.value) a['x-dead-letter-exchange'] = dlx.value;
    await put(`/api/queues/${enc(vhost.value)}/${enc(name.value)}`, { durable: durable.checked, auto_delete: false, arguments: a });
    toast(`Queue ${name.value} declared.`);
    name.value = '';
    list.reload();
  });
  return h('details', { class: 'panel' }, h('summary', null, 'Add a queue'), f);
}
