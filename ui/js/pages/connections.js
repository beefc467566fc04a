// Connections (close one) and channels, both paged by the broker.

import { del, enc } from '../api.js';
import { h, field, titled, toast, confirmDialog, actionButton } from '../dom.js';
import { num, rate, bytes, ago, when, exact } from '../format.js';
import { pagedList } from '../list.js';

export async function connections(root, ctx) {
  ctx.title('Connections');
  root.append(h('div', { class: 'page-head' }, h('h1', { tabindex: '-1' }, 'Connections')));
  let list;
  const cols = [
    { label: 'Name', sort: 'name', render: (c) => h('span', null, c.name, c.user_provided_name ? h('small', { class: 'muted block' }, c.user_provided_name) : null) },
    { label: 'User', sort: 'user', render: (c) => c.user },
    { label: 'Vhost', sort: 'vhost', render: (c) => c.vhost },
    { label: 'Client', render: (c) => clientOf(c.client_properties) },
    { label: 'TLS', render: (c) => (c.ssl ? 'yes' : '') },
    { label: 'Channels', sort: 'channels', num: true, render: (c) => num(c.channels ?? 0) },
    { label: 'From client', sort: 'recv_oct_details.rate', num: true, render: (c) => `${bytes(c.recv_oct_details?.rate ?? 0)}/s` },
    { label: 'To client', sort: 'send_oct_details.rate', num: true, render: (c) => `${bytes(c.send_oct_details?.rate ?? 0)}/s` },
    { label: 'Connected', sort: 'connected_at', render: (c) => (c.connected_at ? h('time', { title: when(c.connected_at) }, ago(c.connected_at)) : '') },
  ];
  if (ctx.user.write) {
    cols.push({ label: '', render: (c) => actionButton('Close', async () => {
      const reason = h('input', { value: 'Closed via the management UI' });
      const detail = [h('p', null, 'The client gets 320 CONNECTION_FORCED with this reason:'), field('Reason', reason)];
      if (!await confirmDialog(`Close connection ${c.name}?`, { ok: 'Close', danger: true, detail })) return;
      await del(`/api/connections/${enc(c.name)}`, { headers: { 'X-Reason': reason.value } });
      toast(`Connection ${c.name} closed.`);
      list.reload();
    }, { class: 'secondary small', 'aria-label': `Close connection ${c.name}` }) });
  }
  list = pagedList(root, ctx, {
    caption: 'Connections',
    noun: 'connections',
    path: '/api/connections',
    defaultSort: 'name',
    columns: 'name,user_provided_name,user,vhost,client_properties.product,client_properties.version,client_properties.platform,ssl,channels,recv_oct_details.rate,send_oct_details.rate,connected_at',
    cols,
  });
}

function clientOf(p) {
  if (!p) return '';
  return [p.product, p.version].filter(Boolean).join(' ') || p.platform || '';
}

export async function channels(root, ctx) {
  ctx.title('Channels');
  root.append(h('div', { class: 'page-head' }, h('h1', { tabindex: '-1' }, 'Channels')));
  pagedList(root, ctx, {
    caption: 'Channels',
    noun: 'channels',
    path: '/api/channels',
    defaultSort: 'name',
    columns: 'name,user,vhost,confirm,transactional,prefetch_count,global_prefetch_count,consumer_count,messages_unacknowledged,messages_unconfirmed,message_stats.publish_details.rate,message_stats.deliver_get_details.rate,message_stats.ack_details.rate',
    cols: [
      { label: 'Channel', sort: 'name', render: (c) => c.name },
      { label: 'User', sort: 'user', render: (c) => c.user },
      { label: 'Vhost', sort: 'vhost', render: (c) => c.vhost },
      { label: 'Mode', render: (c) => [c.confirm ? 'confirm' : '', c.transactional ? 'tx' : ''].filter(Boolean).join(', ') },
      { label: 'Prefetch', sort: 'prefetch_count', num: true, render: (c) => String(c.prefetch_count || c.global_prefetch_count || 0) },
      { label: 'Consumers', sort: 'consumer_count', num: true, render: (c) => num(c.consumer_count ?? 0) },
      { label: 'Unacked', sort: 'messages_unacknowledged', num: true, render: (c) => titled(num(c.messages_unacknowledged ?? 0), exact(c.messages_unacknowledged ?? 0)) },
      { label: 'Unconfirmed', sort: 'messages_unconfirmed', num: true, render: (c) => num(c.messages_unconfirmed ?? 0) },
      { label: 'Publish', sort: 'message_stats.publish_details.rate', num: true, render: (c) => rate(c.message_stats?.publish_details?.rate ?? 0) },
      { label: 'Deliver / get', sort: 'message_stats.deliver_get_details.rate', num: true, render: (c) => rate(c.message_stats?.deliver_get_details?.rate ?? 0) },
      { label: 'Ack', sort: 'message_stats.ack_details.rate', num: true, render: (c) => rate(c.message_stats?.ack_details?.rate ?? 0) },
    ],
  });
}
