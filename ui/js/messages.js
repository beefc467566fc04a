// Messages as POST /api/queues/{vhost}/{name}/get returns them: properties, headers, a readable
// x-death history, and the payload.

import { h, table, kvTable, valueText } from './dom.js';
import { ago, when, bytes, exact, exchangeLabel } from './format.js';

/** The x-death entries (newest first, as the broker keeps them) as a table. */
function xDeathTable(deaths) {
  return table([
    { label: 'Count', num: true, render: (d) => String(d.count ?? '') },
    { label: 'Reason', render: (d) => h('span', { class: `reason ${d.reason}` }, d.reason ?? '') },
    { label: 'Queue', render: (d) => d.queue ?? '' },
    { label: 'Exchange', render: (d) => exchangeLabel(d.exchange ?? '') },
    { label: 'Routing keys', render: (d) => (d['routing-keys'] || []).join(', ') },
    { label: 'Time', render: (d) => (typeof d.time === 'number' ? h('time', { datetime: new Date(d.time * 1000).toISOString(), title: when(d.time * 1000) }, ago(d.time * 1000)) : valueText(d.time)) },
    { label: 'Original expiration', render: (d) => d['original-expiration'] ?? '' },
  ], deaths, { caption: 'x-death history' });
}

/** One message of a get. */
export function messageView(m, i) {
  const props = { ...(m.properties || {}) };
  const headers = { ...(props.headers || {}) };
  delete props.headers;
  const deaths = Array.isArray(headers['x-death']) ? headers['x-death'] : null;
  delete headers['x-death'];
  const shown = m.payload_encoding === 'base64' ? Math.floor((m.payload.length * 3) / 4) : new TextEncoder().encode(m.payload).length;
  const truncated = shown < m.payload_bytes;
  return h('article', { class: 'message', 'aria-labelledby': `msg-${i}` },
    h('h3', { id: `msg-${i}` }, `Message ${i + 1}`,
      m.redelivered ? h('span', { class: 'badge' }, 'redelivered') : null,
      deaths ? h('span', { class: 'badge dead' }, 'dead-lettered') : null),
    h('p', { class: 'muted' },
      `Exchange ${exchangeLabel(m.exchange)} · routing key “${m.routing_key}” · ${bytes(m.payload_bytes)} · ${exact(m.message_count)} left in the queue`),
    deaths ? h('div', { class: 'x-death' }, h('h4', null, 'Dead-letter history (x-death)'), xDeathTable(deaths)) : null,
    Object.keys(headers).length ? h('div', null, h('h4', null, 'Headers'), kvTable(headers, 'Headers')) : null,
    h('div', null, h('h4', null, 'Properties'), kvTable(props, 'Properties', 'No properties.')),
    h('div', null,
      h('h4', null, 'Payload', m.payload_encoding === 'base64' ? h('span', { class: 'muted' }, ' (base64: not UTF-8 text)') : null,
        truncated ? h('span', { class: 'muted' }, ` (first ${bytes(shown)} of ${bytes(m.payload_bytes)})`) : null),
      h('pre', { class: 'payload', tabindex: '0' }, m.payload)),
  );
}
