// Overview: message rates and queued messages over the last minutes (uPlot, samples kept
// client-side by the sampler), object totals, and the node's facts.

import { h, dl, titled, table } from '../dom.js';
import { num, rate, rateAxis, bytes, duration, exact, ago } from '../format.js';
import { TimeChart } from '../chart.js';
import * as sampler from '../sampler.js';

const RATES = [
  ['Publish', 'publish'],
  ['Deliver / get', 'deliver_get'],
  ['Ack', 'ack'],
  ['Redeliver', 'redeliver'],
  ['Confirm', 'confirm'],
  // Charted when the broker reports it (RabbitMQ's management API has no such rate).
  ['Dead-lettered', 'dead_lettered'],
];

/** The rates this broker reports. */
function ratesOf(o) {
  const r = RATES.filter(([, k]) => o.message_stats?.[`${k}_details`] !== undefined);
  return r.length ? r : RATES.slice(0, 4);
}
const rateValues = (o, rates) => rates.map(([, k]) => o.message_stats?.[`${k}_details`]?.rate ?? 0);
const depthValues = (o) => [o.queue_totals?.messages_ready ?? 0, o.queue_totals?.messages_unacknowledged ?? 0];

export default async function overview(root, ctx) {
  ctx.title('Overview');
  const totals = h('div', { class: 'cards', 'aria-label': 'Totals' });
  const charts = h('div', { class: 'charts' });
  const node = h('section', { 'aria-labelledby': 'node-h' });
  const updated = h('span', { class: 'muted updated' });
  root.append(
    h('div', { class: 'page-head' }, h('h1', { tabindex: '-1' }, 'Overview'), updated),
    totals,
    h('section', { 'aria-labelledby': 'charts-h' }, h('h2', { id: 'charts-h' }, 'Messages'), charts),
    node,
  );
  // The charts start with the samples taken so far (also while other pages were shown).
  let rates = null;
  let depth = null;
  let series = null;
  let seen = null;
  ctx.cleanup(() => { rates?.destroy(); depth?.destroy(); });
  const charted = (o) => {
    series = ratesOf(o);
    rates = new TimeChart(charts, { title: 'Message rates (per second)', series: series.map(([label]) => ({ label })), fmt: rate, axisFmt: rateAxis });
    depth = new TimeChart(charts, { title: 'Queued messages', series: [{ label: 'Ready' }, { label: 'Unacked' }], fmt: num, integer: true });
    rates.load(sampler.samples.map((s) => ({ t: s.t, values: rateValues(s.overview, series) })));
    depth.load(sampler.samples.map((s) => ({ t: s.t, values: depthValues(s.overview) })));
    seen = sampler.samples.at(-1)?.t;
  };

  let first = true;
  const render = (s) => {
    if (!ctx.alive) return;
    if (s.error) { ctx.showError(s.error); return; }
    ctx.clearError();
    const o = s.overview;
    if (!rates) charted(o);
    if (s.t !== seen) {
      seen = s.t;
      rates.push(s.t, rateValues(o, series));
      depth.push(s.t, depthValues(o));
    }
    renderTotals(totals, o);
    renderNode(node, o, s.node);
    updated.textContent = `Updated ${ago(s.t)} · every ${sampler.PERIOD_MS / 1000} s`;
    if (first) {
      first = false;
      root.dataset.ready = 'true';
      performance.mark('warren:overview-ready');
    }
  };
  ctx.cleanup(sampler.subscribe(render));
  const clock = setInterval(() => { const s = sampler.latest(); if (s?.t) updated.textContent = `Updated ${ago(s.t)} · every ${sampler.PERIOD_MS / 1000} s`; }, 1000);
  ctx.cleanup(() => clearInterval(clock));
}

function card(label, value, href, extra) {
  const body = [h('span', { class: 'card-value' }, titled(num(value), exact(value))), h('span', { class: 'card-label' }, label), extra];
  return href ? h('a', { class: 'card', href }, body) : h('div', { class: 'card' }, body);
}

function renderTotals(box, o) {
  const t = o.object_totals || {};
  const q = o.queue_totals || {};
  const ms = o.message_stats || {};
  box.replaceChildren(
    card('Connections', t.connections, '#/connections'),
    card('Channels', t.channels, '#/channels'),
    card('Queues', t.queues, '#/queues'),
    card('Consumers', t.consumers),
    card('Exchanges', t.exchanges, '#/exchanges'),
    card('Ready', q.messages_ready, '#/queues?sort=messages_ready&rev=1'),
    card('Unacked', q.messages_unacknowledged, '#/queues?sort=messages_unacknowledged&rev=1'),
    rateCard('Publish', ms.publish_details?.rate),
    rateCard('Deliver / get', ms.deliver_get_details?.rate),
  );
}

function rateCard(label, r) {
  return h('div', { class: 'card' }, h('span', { class: 'card-value' }, rate(r ?? 0)), h('span', { class: 'card-label' }, label));
}

function meter(used, total) {
  if (!total) return null;
  const pct = Math.min(100, (used / total) * 100);
  return h('span', { class: `meter${pct > 80 ? ' high' : ''}`, role: 'img', 'aria-label': `${pct.toFixed(0)} %` }, h('span', { style: { width: `${pct}%` } }));
}

function renderNode(box, o, n) {
  const facts = [
    ['Node', o.node || o.cluster_name],
    ['Version', `${o.product_name || 'Warren'} ${o.product_version || ''} (RabbitMQ ${o.rabbitmq_version} API)`],
  ];
  if (n) {
    facts.push(
      ['Uptime', duration(n.uptime)],
      ['Memory', h('span', null, `${bytes(n.mem_used)} of ${bytes(n.mem_limit)} `, meter(n.mem_used, n.mem_limit), n.mem_alarm ? h('strong', { class: 'bad' }, ' alarm') : null)],
      ['File descriptors', h('span', null, `${num(n.fd_used)} of ${num(n.fd_total)} `, meter(n.fd_used, n.fd_total))],
      ['Disk free', h('span', null, n.disk_free == null ? 'not measured' : `${bytes(n.disk_free)} (limit ${bytes(n.disk_free_limit)})`, n.disk_free_alarm ? h('strong', { class: 'bad' }, ' alarm') : null)],
      ['Processors', n.processors],
    );
  }
  const listeners = o.listeners || [];
  box.replaceChildren(
    h('h2', { id: 'node-h' }, 'Node'),
    h('div', { class: 'two' },
      dl(facts),
      table([
        { label: 'Protocol', render: (l) => l.protocol },
        { label: 'Address', render: (l) => l.ip_address },
        { label: 'Port', render: (l) => String(l.port), num: true },
      ], listeners, { caption: 'Listeners', empty: 'No listener.' })),
  );
}
