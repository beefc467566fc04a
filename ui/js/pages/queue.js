// One queue: depth and rates, dead letters (summary, replay, move), get messages, purge,
// delete, consumers, bindings, arguments and policy.

import { get, post, put, del, enc, qs } from '../api.js';
import { h, dl, field, form, select, table, kvTable, toast, confirmDialog, actionButton, jsonObject, titled, valueText } from '../dom.js';
import { num, rate, rateAxis, bytes, exact, ago, when, exchangeLabel } from '../format.js';
import { TimeChart } from '../chart.js';
import { messageView } from '../messages.js';

const RATES = [['Publish', 'publish'], ['Deliver / get', 'deliver_get'], ['Ack', 'ack'], ['Redeliver', 'redeliver']];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export default async function queue(root, ctx) {
  const [vhost, name] = ctx.params;
  const base = `/api/queues/${enc(vhost)}/${enc(name)}`;
  ctx.title(`Queue ${name}`);
  const w = ctx.user.write;

  const info = h('p', { class: 'muted' });
  const actions = h('div', { class: 'actions' });
  root.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/queues' }, 'Queues'), ` / ${vhost}`),
    h('div', { class: 'page-head' }, h('h1', { tabindex: '-1' }, name), info, actions),
  );
  let q;
  try {
    q = await get(base, { signal: ctx.signal });
  } catch (e) {
    if (e.status === 404) {
      root.append(h('p', { class: 'error', role: 'alert' }, `There is no queue “${name}” in vhost “${vhost}”.`));
      return;
    }
    throw e;
  }

  const cards = h('div', { class: 'cards' });
  const charts = h('div', { class: 'charts' });
  root.append(cards, h('section', { 'aria-label': 'Charts' }, charts));
  const depth = new TimeChart(charts, { title: 'Messages in the queue', series: [{ label: 'Ready' }, { label: 'Unacked' }], fmt: num, integer: true });
  const rates = new TimeChart(charts, { title: 'Message rates (per second)', series: RATES.map(([label]) => ({ label })), fmt: rate, axisFmt: rateAxis });
  ctx.cleanup(() => { depth.destroy(); rates.destroy(); });

  // Dead letters: shown when the queue holds dead-lettered messages (or a replay runs).
  const later = () => { refresh().catch(() => {}); };
  const dead = deadLetters(ctx, vhost, name, base, later);
  root.append(dead.section);

  root.append(getMessages(ctx, base, later));
  if (w) root.append(moveMessages(ctx, vhost, name, base, later));

  const consumers = h('section', { 'aria-labelledby': 'consumers-h' });
  const bindings = bindingsSection(ctx, vhost, name);
  const details = h('section', { 'aria-labelledby': 'details-h' });
  root.append(consumers, bindings.section, details);

  if (w) {
    actions.append(
      actionButton('Purge', async () => {
        if (!await confirmDialog(`Purge queue “${name}”?`, { ok: 'Purge', danger: true, detail: `Its ${exact(q.messages_ready)} ready messages are removed for good.` })) return;
        await del(`${base}/contents`);
        toast(`Queue ${name} purged.`);
        await refresh();
      }, { class: 'secondary' }),
      actionButton('Delete', async () => {
        if (!await confirmDialog(`Delete queue “${name}”?`, { ok: 'Delete', danger: true, detail: `The queue and its ${exact(q.messages)} messages are removed for good.` })) return;
        await del(base);
        toast(`Queue ${name} deleted.`);
        location.hash = '#/queues';
      }, { class: 'danger' }),
    );
  }

  let lastDepth = null;
  async function refresh() {
    q = await get(base, { signal: ctx.signal });
    const t = Date.now();
    const ms = q.message_stats || {};
    info.textContent = `vhost ${q.vhost} · ${q.type} · ${q.state}${q.policy ? ` · policy ${q.policy}` : ''}`;
    cards.replaceChildren(
      statCard('Ready', q.messages_ready, 'ready'),
      statCard('Unacked', q.messages_unacknowledged, 'unacked'),
      statCard('Total', q.messages, 'total'),
      statCard('Consumers', q.consumers, 'consumers'),
      h('div', { class: 'card' }, h('span', { class: 'card-value' }, rate(ms.publish_details?.rate ?? 0)), h('span', { class: 'card-label' }, 'In')),
      h('div', { class: 'card' }, h('span', { class: 'card-value' }, rate(ms.deliver_get_details?.rate ?? 0)), h('span', { class: 'card-label' }, 'Out')),
    );
    depth.push(t, [q.messages_ready, q.messages_unacknowledged]);
    rates.push(t, RATES.map(([, k]) => ms[`${k}_details`]?.rate ?? 0));
    // Re-rendered each time, unless someone is reading them with the keyboard.
    if (!consumers.contains(document.activeElement)) renderConsumers(consumers, q.consumer_details || []);
    if (!details.contains(document.activeElement)) renderDetails(details, q);
    if (q.messages !== lastDepth || dead.visible()) {
      lastDepth = q.messages;
      await dead.refresh(q);
    }
    root.dataset.loaded = String(t);
  }
  await ctx.every(refresh, 5000);
  await bindings.load();
}

function statCard(label, value, key) {
  return h('div', { class: 'card', dataset: { stat: key } },
    h('span', { class: 'card-value' }, titled(num(value ?? 0), exact(value ?? 0))),
    h('span', { class: 'card-label' }, label));
}

function renderConsumers(box, list) {
  box.replaceChildren(
    h('h2', { id: 'consumers-h' }, `Consumers (${list.length})`),
    table([
      { label: 'Tag', render: (c) => h('code', null, c.consumer_tag) },
      { label: 'Channel', render: (c) => c.channel_details?.name ?? '' },
      { label: 'User', render: (c) => c.channel_details?.user ?? '' },
      { label: 'Ack required', render: (c) => (c.ack_required ? 'yes' : 'no') },
      { label: 'Exclusive', render: (c) => (c.exclusive ? 'yes' : 'no') },
      { label: 'Prefetch', num: true, render: (c) => String(c.prefetch_count ?? 0) },
      { label: 'Active', render: (c) => (c.active ? 'yes' : 'no') },
      { label: 'Arguments', render: (c) => valueText(Object.keys(c.arguments || {}).length ? c.arguments : '') },
    ], list, { caption: 'Consumers', empty: 'No consumers.' }),
  );
}

function renderDetails(box, q) {
  box.replaceChildren(
    h('h2', { id: 'details-h' }, 'Details'),
    h('div', { class: 'two' },
      dl([
        ['Type', q.type], ['State', q.state], ['Durable', q.durable ? 'yes' : 'no'],
        ['Auto-delete', q.auto_delete ? 'yes' : 'no'], ['Exclusive', q.exclusive ? 'yes' : 'no'],
        ['Node', q.node], ['Memory', bytes(q.memory)],
        ['Policy', q.policy || 'none'], ['Operator policy', q.operator_policy || 'none'],
      ]),
      h('div', null,
        h('h3', null, 'Arguments'), kvTable(q.arguments, 'Arguments', 'No arguments.'),
        h('h3', null, 'Effective policy definition'), kvTable(q.effective_policy_definition, 'Effective policy definition', 'No policy applies.'))),
  );
}

// ---- get messages ----

function getMessages(ctx, base, after) {
  // Read-only users may look (requeue) but not take messages away.
  const modes = [
    ['ack_requeue_true', 'Look only: requeue them'],
    ['reject_requeue_true', 'Reject, requeue'],
    ['ack_requeue_false', 'Ack: remove them'],
    ['reject_requeue_false', 'Reject, no requeue (dead-letters them)'],
  ];
  const ackmode = select({ name: 'ackmode' }, ctx.user.write ? modes : modes.slice(0, 1), 'ack_requeue_true');
  const encoding = select({ name: 'encoding' }, [['auto', 'Auto (text or base64)'], ['base64', 'Base64']], 'auto');
  const count = h('input', { type: 'number', name: 'count', min: 1, max: 1000, value: 1, inputmode: 'numeric' });
  const out = h('div', { class: 'messages', 'aria-live': 'polite' });
  const f = form({ class: 'grid-form' }, [
    field('Ack mode', ackmode),
    field('Encoding', encoding),
    field('Messages', count),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Get messages')),
  ], async () => {
    const list = await post(`${base}/get`, { count: Math.max(1, +count.value || 1), ackmode: ackmode.value, encoding: encoding.value, truncate: 50000 });
    out.replaceChildren(
      h('p', { class: 'muted' }, list.length ? `${list.length} message${list.length > 1 ? 's' : ''}${ackmode.value === 'ack_requeue_true' ? ', put back in the queue' : ''}:` : 'The queue is empty.'),
      ...list.map(messageView),
    );
    after();
  });
  return h('section', { class: 'panel', 'aria-labelledby': 'get-h' }, h('h2', { id: 'get-h' }, 'Get messages'),
    h('p', { class: 'muted' }, 'Takes messages from the head of the queue and settles them as the ack mode says. Requeued messages come back marked redelivered.'),
    f, out);
}

// ---- dead letters ----

/**
 * Follow a shovel (Warren's replay or a move) until it is done (it removes itself then),
 * showing its progress in `progress`.
 */
async function track(ctx, vhost, base, shovel, kind, before, progress) {
  const started = Date.now();
  let seen = null;
  progress.hidden = false;
  progress.className = 'progress running';
  progress.replaceChildren(h('strong', null, `${kind} running…`));
  while (ctx.alive) {
    const list = await get(`/api/shovels/${enc(vhost)}`, { signal: ctx.signal });
    const s = list.find((x) => x.name === shovel);
    if (!s || s.state === 'terminated') break;
    seen = s;
    progress.replaceChildren(h('strong', null, `${kind} ${s.state}: `), `${exact(s.messages_moved ?? 0)} messages moved so far${s.reason ? ` (${s.reason})` : ''}.`);
    if (Date.now() - started > 600000) break;
    await sleep(500);
  }
  if (!ctx.alive) return;
  const q = await get(base, { signal: ctx.signal });
  const moved = Math.max(before - q.messages, seen?.messages_moved ?? 0);
  progress.className = 'progress done';
  progress.replaceChildren(h('strong', null, `${kind} done: `), `${exact(moved)} message${moved === 1 ? '' : 's'} moved; ${exact(q.messages)} left in ${q.name}.`);
  toast(`${kind} of ${q.name}: ${exact(moved)} moved.`);
}


function deadLetters(ctx, vhost, name, base, after) {
  const summary = h('div');
  const progress = h('div', { class: 'progress', role: 'status', 'aria-live': 'polite', hidden: true });
  const rateLimit = h('input', { type: 'number', min: 1, step: 1, placeholder: 'no limit', inputmode: 'numeric' });
  const section = h('section', { class: 'panel dlq', 'aria-labelledby': 'dlq-h', hidden: true },
    h('h2', { id: 'dlq-h' }, 'Dead letters'),
    h('p', { class: 'muted' }, 'Messages in this queue that were dead-lettered, grouped by the queue they died in and why (their newest x-death entry).'),
    summary, progress);
  let groups = [];
  let running = false;
  let shown = false;
  let lastKey = '';

  const replay = async (filter, label) => {
    const body = { ...filter };
    if (+rateLimit.value > 0) body.rate = +rateLimit.value;
    const what = label || 'all dead letters';
    if (!await confirmDialog(`Replay ${what}?`, { ok: 'Replay', detail: 'Each message goes back to the exchange and routing keys it died from (its newest x-death entry). The x-death history stays on the messages.' })) return;
    const before = (await get(base, { signal: ctx.signal })).messages;
    const r = await post(`/api/warren/replay/${enc(vhost)}/${enc(name)}`, body);
    running = true;
    try {
      await track(ctx, vhost, base, r.shovel, 'Replay', before, progress);
    } finally {
      running = false;
      after();
    }
  };

  async function refresh(q) {
    if (!q.messages && !running) {
      groups = [];
      if (shown) summary.replaceChildren(h('p', null, 'The queue is empty: no dead letters.'));
      return;
    }
    const d = await get(`/api/warren/dead-letters/${enc(vhost)}/${enc(name)}${qs({ limit: 1000 })}`, { signal: ctx.signal });
    groups = d.groups || [];
    if (!groups.length && !shown && !running) return;
    // Unchanged, and someone is using the controls: leave them be.
    const key = JSON.stringify(d);
    if (key === lastKey && section.contains(document.activeElement)) return;
    lastKey = key;
    shown = true;
    section.hidden = false;
    const w = ctx.user.write;
    const note = d.inspected < d.messages ? ` (the first ${exact(d.inspected)} looked at)` : '';
    summary.replaceChildren(
      h('p', null, `${exact(d.messages)} message${d.messages === 1 ? '' : 's'}${note}; ${exact(groups.reduce((a, g) => a + g.messages, 0))} dead-lettered`, d.not_dead_lettered ? `, ${exact(d.not_dead_lettered)} not` : '', '.'),
      table([
        { label: 'Died in queue', render: (g) => h('a', { href: `#/queues/${enc(vhost)}/${enc(g.queue)}` }, g.queue) },
        { label: 'Reason', render: (g) => h('span', { class: `reason ${g.reason}` }, g.reason) },
        { label: 'Exchange', render: (g) => exchangeLabel(g.exchange) },
        { label: 'Routing keys', render: (g) => g.routing_keys.join(', ') },
        { label: 'Messages', num: true, render: (g) => exact(g.messages) },
        { label: 'Deaths', num: true, render: (g) => exact(g.deaths) },
        { label: 'First death', render: (g) => (g.first_death ? h('time', { title: when(g.first_death * 1000) }, ago(g.first_death * 1000)) : '–') },
        { label: 'Last death', render: (g) => (g.last_death ? h('time', { title: when(g.last_death * 1000) }, ago(g.last_death * 1000)) : '–') },
        ...(w ? [{ label: 'Replay', render: (g) => actionButton('Replay these', () => replay({ queue: g.queue, reason: g.reason }, `the ${exact(g.messages)} messages that died in ${g.queue} (${g.reason})`), { class: 'secondary small' }) }] : []),
      ], groups, { caption: 'Dead letters by origin', empty: 'No dead-lettered messages.' }),
      w ? h('div', { class: 'toolbar' },
        field('Rate limit (messages/s)', rateLimit),
        actionButton('Replay all', () => replay({}, null), { disabled: running })) : null,
    );
  }

  return { section, refresh, visible: () => shown };
}

// ---- move (a shovel) ----

function moveMessages(ctx, vhost, name, base, after) {
  const progress = h('div', { class: 'progress', role: 'status', 'aria-live': 'polite', hidden: true });
  const dest = h('input', { name: 'dest', required: true, autocomplete: 'off', spellcheck: 'false' });
  const f = form({ class: 'grid-form' }, [
    field('Destination queue', dest, `In vhost ${vhost}; declared if missing.`),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Move messages')),
  ], async () => {
    if (dest.value === name) throw new Error('The destination is this queue.');
    if (!await confirmDialog(`Move the messages of “${name}” to “${dest.value}”?`, { ok: 'Move', detail: 'A shovel moves the messages the queue holds now, then removes itself.' })) return;
    const before = (await get(base, { signal: ctx.signal })).messages;
    const shovel = `move-${name}`;
    await put(`/api/parameters/shovel/${enc(vhost)}/${enc(shovel)}`, {
      value: { 'src-uri': 'amqp://', 'src-queue': name, 'dest-uri': 'amqp://', 'dest-queue': dest.value, 'src-delete-after': 'queue-length' },
    });
    try {
      await track(ctx, vhost, base, shovel, 'Move', before, progress);
    } finally {
      after();
    }
  });
  return h('section', { class: 'panel', 'aria-labelledby': 'move-h' }, h('h2', { id: 'move-h' }, 'Move messages'),
    h('p', { class: 'muted' }, 'Moves every message this queue holds now to another queue, as RabbitMQ\'s shovel does (x-death history and properties kept).'),
    f, progress);
}

// ---- bindings ----

function bindingsSection(ctx, vhost, name) {
  const list = h('div');
  const section = h('section', { 'aria-labelledby': 'bindings-h' }, h('h2', { id: 'bindings-h' }, 'Bindings'), list);
  const w = ctx.user.write;
  let datalist = null;
  if (w) {
    const listId = 'exchange-names';
    datalist = h('datalist', { id: listId });
    const source = h('input', { name: 'source', required: true, list: listId, autocomplete: 'off', spellcheck: 'false' });
    const key = h('input', { name: 'routing_key', autocomplete: 'off', spellcheck: 'false' });
    const args = h('textarea', { name: 'arguments', rows: 1, placeholder: '{}' });
    section.append(h('h3', null, 'Add a binding from an exchange'), form({ class: 'grid-form' }, [
      field('From exchange', source), datalist, field('Routing key', key), field('Arguments (JSON)', args),
      h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Bind')),
    ], async () => {
      await post(`/api/bindings/${enc(vhost)}/e/${enc(source.value)}/q/${enc(name)}`, { routing_key: key.value, arguments: jsonObject(args.value) });
      toast(`Bound ${source.value} → ${name}.`);
      key.value = '';
      await load();
    }));
    get(`/api/exchanges/${enc(vhost)}?columns=name`, { signal: ctx.signal })
      .then((xs) => datalist.replaceChildren(...xs.filter((x) => x.name).map((x) => h('option', { value: x.name }))))
      .catch(() => {});
  }
  async function load() {
    const bs = await get(`/api/queues/${enc(vhost)}/${enc(name)}/bindings`, { signal: ctx.signal });
    list.replaceChildren(table([
      { label: 'From', render: (b) => h('a', { href: `#/exchanges/${enc(vhost)}/${enc(b.source || 'amq.default')}` }, exchangeLabel(b.source)) },
      { label: 'Routing key', render: (b) => h('code', null, b.routing_key) },
      { label: 'Arguments', render: (b) => valueText(Object.keys(b.arguments || {}).length ? b.arguments : '') },
      ...(w ? [{ label: '', render: (b) => (b.source === '' ? h('span', { class: 'muted' }, 'implicit') : actionButton('Unbind', async () => {
        if (!await confirmDialog(`Remove the binding from ${b.source} with key “${b.routing_key}”?`, { ok: 'Unbind', danger: true })) return;
        await del(`/api/bindings/${enc(vhost)}/e/${enc(b.source)}/q/${enc(name)}/${enc(b.properties_key)}`);
        toast('Binding removed.');
        await load();
      }, { class: 'secondary small' })) }] : []),
    ], bs, { caption: 'Bindings', empty: 'No bindings.' }));
  }
  return { section, load };
}
