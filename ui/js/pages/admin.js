// Admin: users, virtual hosts, permissions, policies, limits, definitions (export / import).
// Administrators see every tab; policymakers the policies.

import { get, put, post, del, enc } from '../api.js';
import { h, field, form, select, table, toast, confirmDialog, actionButton, jsonObject, valueText } from '../dom.js';

const TABS = [
  ['users', 'Users', true],
  ['vhosts', 'Virtual hosts', true],
  ['permissions', 'Permissions', true],
  ['policies', 'Policies', false],
  ['limits', 'Limits', true],
  ['definitions', 'Definitions', true],
];

export default async function admin(root, ctx) {
  const u = ctx.user;
  const tabs = TABS.filter(([, , adminOnly]) => u.admin || (!adminOnly && u.policies));
  if (!tabs.length) {
    ctx.title('Admin');
    root.append(h('h1', { tabindex: '-1' }, 'Admin'), h('p', { class: 'error', role: 'alert' }, 'This page needs the administrator tag.'));
    return;
  }
  const tab = tabs.find(([id]) => id === ctx.params[0]) ? ctx.params[0] : tabs[0][0];
  const label = tabs.find(([id]) => id === tab)[1];
  ctx.title(`Admin: ${label}`);
  root.append(
    h('div', { class: 'page-head' }, h('h1', { tabindex: '-1' }, 'Admin')),
    h('nav', { class: 'tabs', 'aria-label': 'Admin sections' }, h('ul', null, tabs.map(([id, l]) => h('li', null,
      h('a', { href: `#/admin/${id}`, 'aria-current': id === tab ? 'page' : null }, l))))),
  );
  const section = h('section', { 'aria-label': label });
  root.append(section);
  await ({ users, vhosts, permissions, policies, limits, definitions })[tab](section, ctx);
}

const vhostOptions = async (ctx) => (await get('/api/vhosts?columns=name', { signal: ctx.signal })).map((v) => v.name);

// ---- users ----

async function users(box, ctx) {
  const list = h('div');
  const load = async () => {
    const us = await get('/api/users', { signal: ctx.signal });
    list.replaceChildren(table([
      { label: 'Name', render: (x) => x.name },
      { label: 'Tags', render: (x) => (Array.isArray(x.tags) ? x.tags.join(', ') : x.tags) },
      { label: 'Password', render: (x) => (x.password_hash ? 'set' : h('span', { class: 'muted' }, 'none (cannot log in with a password)')) },
      { label: '', render: (x) => (x.name === ctx.user.name ? h('span', { class: 'muted' }, 'you') : actionButton('Delete', async () => {
        if (!await confirmDialog(`Delete user “${x.name}”?`, { ok: 'Delete', danger: true, detail: 'Their connections are closed.' })) return;
        await del(`/api/users/${enc(x.name)}`);
        toast(`User ${x.name} deleted.`);
        await load();
      }, { class: 'secondary small', 'aria-label': `Delete user ${x.name}` })) },
    ], us, { caption: 'Users' }));
  };
  const name = h('input', { name: 'username', required: true, autocomplete: 'off', spellcheck: 'false' });
  const pass = h('input', { name: 'password', type: 'password', autocomplete: 'new-password' });
  const tags = select({ name: 'tags' }, [['', 'none (AMQP only)'], 'management', 'policymaker', 'monitoring', 'administrator'], 'management');
  const vhost = select({ name: 'vhost' }, [['', '(none)'], '/'], '/');
  vhostOptions(ctx).then((vs) => vhost.replaceChildren(...[['', '(none)'], ...vs.map((v) => [v, v])].map(([v, l]) => h('option', { value: v, selected: v === '/' }, l)))).catch(() => {});
  box.append(h('h2', null, 'Users'), list, h('section', { class: 'panel', 'aria-labelledby': 'add-user-h' },
    h('h3', { id: 'add-user-h' }, 'Add or update a user'),
    form({ class: 'grid-form' }, [
      field('Username', name), field('Password', pass, 'Empty: no password login.'), field('Tags', tags),
      field('Full permissions on vhost', vhost, 'Sets configure, write and read to .*'),
      h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Save user')),
    ], async () => {
      const body = { tags: tags.value };
      if (pass.value) body.password = pass.value;
      await put(`/api/users/${enc(name.value)}`, body);
      if (vhost.value) await put(`/api/permissions/${enc(vhost.value)}/${enc(name.value)}`, { configure: '.*', write: '.*', read: '.*' });
      toast(`User ${name.value} saved.`);
      name.value = ''; pass.value = '';
      await load();
    })));
  await ctx.every(load, 0);
}

// ---- vhosts ----

async function vhosts(box, ctx) {
  const list = h('div');
  const load = async () => {
    const vs = await get('/api/vhosts', { signal: ctx.signal });
    list.replaceChildren(table([
      { label: 'Name', render: (v) => v.name },
      { label: 'Description', render: (v) => v.description || '' },
      { label: 'Tags', render: (v) => (v.tags || []).join(', ') },
      { label: 'Messages', num: true, render: (v) => String(v.messages ?? '') },
      { label: '', render: (v) => (v.name === '/' ? '' : actionButton('Delete', async () => {
        if (!await confirmDialog(`Delete vhost “${v.name}”?`, { ok: 'Delete', danger: true, detail: 'Every queue, exchange and message in it is removed.' })) return;
        await del(`/api/vhosts/${enc(v.name)}`);
        toast(`Vhost ${v.name} deleted.`);
        await load();
      }, { class: 'secondary small', 'aria-label': `Delete vhost ${v.name}` })) },
    ], vs, { caption: 'Virtual hosts' }));
  };
  const name = h('input', { name: 'vhost', required: true, autocomplete: 'off', spellcheck: 'false' });
  const desc = h('input', { name: 'description', autocomplete: 'off' });
  box.append(h('h2', null, 'Virtual hosts'), list, h('section', { class: 'panel', 'aria-labelledby': 'add-vhost-h' },
    h('h3', { id: 'add-vhost-h' }, 'Add a virtual host'),
    form({ class: 'grid-form' }, [field('Name', name), field('Description', desc),
      h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Add vhost'))], async () => {
      await put(`/api/vhosts/${enc(name.value)}`, desc.value ? { description: desc.value } : {});
      toast(`Vhost ${name.value} added (you have no permissions in it yet).`);
      name.value = ''; desc.value = '';
      await load();
    })));
  await ctx.every(load, 0);
}

// ---- permissions ----

async function permissions(box, ctx) {
  const list = h('div');
  const load = async () => {
    const ps = await get('/api/permissions', { signal: ctx.signal });
    list.replaceChildren(table([
      { label: 'User', render: (p) => p.user },
      { label: 'Vhost', render: (p) => p.vhost },
      { label: 'Configure', render: (p) => h('code', null, p.configure) },
      { label: 'Write', render: (p) => h('code', null, p.write) },
      { label: 'Read', render: (p) => h('code', null, p.read) },
      { label: '', render: (p) => actionButton('Clear', async () => {
        if (!await confirmDialog(`Clear ${p.user}'s permissions in ${p.vhost}?`, { ok: 'Clear', danger: true })) return;
        await del(`/api/permissions/${enc(p.vhost)}/${enc(p.user)}`);
        toast('Permissions cleared.');
        await load();
      }, { class: 'secondary small', 'aria-label': `Clear permissions of ${p.user} in ${p.vhost}` }) },
    ], ps, { caption: 'Permissions' }));
  };
  const user = select({ name: 'user' }, [], '');
  const vhost = select({ name: 'vhost' }, ['/'], '/');
  const conf = h('input', { value: '.*', spellcheck: 'false' });
  const write = h('input', { value: '.*', spellcheck: 'false' });
  const read = h('input', { value: '.*', spellcheck: 'false' });
  get('/api/users?columns=name', { signal: ctx.signal }).then((us) => user.replaceChildren(...us.map((x) => h('option', { value: x.name }, x.name)))).catch(() => {});
  vhostOptions(ctx).then((vs) => vhost.replaceChildren(...vs.map((v) => h('option', { value: v, selected: v === '/' }, v)))).catch(() => {});
  box.append(h('h2', null, 'Permissions'), list, h('section', { class: 'panel', 'aria-labelledby': 'set-perm-h' },
    h('h3', { id: 'set-perm-h' }, 'Set permissions'),
    form({ class: 'grid-form' }, [field('User', user), field('Virtual host', vhost), field('Configure (regex)', conf), field('Write (regex)', write), field('Read (regex)', read),
      h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Set permissions'))], async () => {
      await put(`/api/permissions/${enc(vhost.value)}/${enc(user.value)}`, { configure: conf.value, write: write.value, read: read.value });
      toast(`Permissions of ${user.value} in ${vhost.value} set.`);
      await load();
    })));
  await ctx.every(load, 0);
}

// ---- policies ----

async function policies(box, ctx) {
  const list = h('div');
  const load = async () => {
    const ps = await get('/api/policies', { signal: ctx.signal });
    list.replaceChildren(table([
      { label: 'Vhost', render: (p) => p.vhost },
      { label: 'Name', render: (p) => p.name },
      { label: 'Pattern', render: (p) => h('code', null, p.pattern) },
      { label: 'Apply to', render: (p) => p['apply-to'] },
      { label: 'Definition', wrap: true, render: (p) => h('code', { class: 'wrap' }, valueText(p.definition)) },
      { label: 'Priority', num: true, render: (p) => String(p.priority) },
      { label: '', render: (p) => actionButton('Delete', async () => {
        if (!await confirmDialog(`Delete policy “${p.name}”?`, { ok: 'Delete', danger: true, detail: 'Queues it applies to lose its settings at once.' })) return;
        await del(`/api/policies/${enc(p.vhost)}/${enc(p.name)}`);
        toast(`Policy ${p.name} deleted.`);
        await load();
      }, { class: 'secondary small', 'aria-label': `Delete policy ${p.name}` }) },
    ], ps, { caption: 'Policies', empty: 'No policies.' }));
  };
  const vhost = select({ name: 'vhost' }, ['/'], '/');
  vhostOptions(ctx).then((vs) => vhost.replaceChildren(...vs.map((v) => h('option', { value: v, selected: v === '/' }, v)))).catch(() => {});
  const name = h('input', { name: 'name', required: true, autocomplete: 'off', spellcheck: 'false' });
  const pattern = h('input', { name: 'pattern', required: true, spellcheck: 'false', placeholder: '^orders\\.' });
  const applyTo = select({ name: 'apply-to' }, ['queues', 'exchanges', 'all'], 'queues');
  const priority = h('input', { type: 'number', value: 0, inputmode: 'numeric' });
  const def = h('textarea', { rows: 3, required: true, placeholder: '{"dead-letter-exchange": "dlx", "message-ttl": 60000}' });
  box.append(h('h2', null, 'Policies'), list, h('section', { class: 'panel', 'aria-labelledby': 'add-policy-h' },
    h('h3', { id: 'add-policy-h' }, 'Add or update a policy'),
    form({ class: 'grid-form' }, [field('Virtual host', vhost), field('Name', name), field('Pattern (regex)', pattern), field('Apply to', applyTo), field('Priority', priority),
      field('Definition (JSON)', def, 'e.g. dead-letter-exchange, message-ttl, max-length, delivery-limit'),
      h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Save policy'))], async () => {
      await put(`/api/policies/${enc(vhost.value)}/${enc(name.value)}`, { pattern: pattern.value, definition: jsonObject(def.value, 'Definition'), 'apply-to': applyTo.value, priority: +priority.value || 0 });
      toast(`Policy ${name.value} saved.`);
      await load();
    })));
  await ctx.every(load, 0);
}

// ---- limits ----

async function limits(box, ctx) {
  const [vl, ul] = await Promise.all([
    get('/api/vhost-limits', { signal: ctx.signal }),
    get('/api/user-limits', { signal: ctx.signal }).catch(() => []),
  ]);
  const rows = (list, key) => list.flatMap((l) => Object.entries(l.value || {}).map(([k, v]) => ({ owner: l[key], limit: k, value: v })));
  const cols = (who) => [
    { label: who, render: (r) => r.owner },
    { label: 'Limit', render: (r) => r.limit },
    { label: 'Value', num: true, render: (r) => String(r.value) },
  ];
  box.append(
    h('h2', null, 'Virtual host limits'),
    table(cols('Vhost'), rows(vl, 'vhost'), { caption: 'Virtual host limits', empty: 'No vhost limits (max-connections, max-queues).' }),
    h('h2', null, 'User limits'),
    table(cols('User'), rows(ul, 'user'), { caption: 'User limits', empty: 'No user limits (max-connections, max-channels).' }),
    h('p', { class: 'muted' }, 'Set limits with PUT /api/vhost-limits/{vhost}/{name} or rabbitmqctl-style tools; the UI shows them.'),
  );
}

// ---- definitions ----

async function definitions(box, ctx) {
  const file = h('input', { type: 'file', accept: 'application/json,.json', required: true });
  const result = h('p', { role: 'status' });
  box.append(
    h('h2', null, 'Definitions'),
    h('p', null, 'Users, vhosts, permissions, policies, parameters, queues, exchanges and bindings as one JSON file, in RabbitMQ\'s format.'),
    h('section', { class: 'panel', 'aria-labelledby': 'export-h' }, h('h3', { id: 'export-h' }, 'Export'),
      actionButton('Download definitions', async () => {
        const defs = await get('/api/definitions', { signal: ctx.signal });
        const blob = new Blob([JSON.stringify(defs, null, 2)], { type: 'application/json' });
        const a = h('a', { href: URL.createObjectURL(blob), download: `warren-definitions-${new Date().toISOString().slice(0, 10)}.json` });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(a.href), 10000);
      })),
    h('section', { class: 'panel', 'aria-labelledby': 'import-h' }, h('h3', { id: 'import-h' }, 'Import'),
      form({ class: 'grid-form' }, [field('Definitions file (JSON)', file, 'Merged into what the broker has; nothing is deleted.'),
        h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Import'))], async () => {
        const text = await file.files[0].text();
        try { JSON.parse(text); } catch (e) { throw new Error(`The file is not JSON (${e.message}).`); }
        await post('/api/definitions', text);
        result.textContent = `Imported ${file.files[0].name}.`;
        toast('Definitions imported.');
      }), result),
  );
}
