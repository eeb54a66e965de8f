// Ferry console: a small single-page app over the registry's management API (docs/console.md).
// Every action is a call to /v1 with the admin token as a Bearer token; errors are shown as the API
// gives them. The token lives in sessionStorage only. Pages are built with DOM calls, never from HTML
// strings, so nothing a device or a user sends is interpreted as markup.
'use strict';

const KEY = 'ferry-admin-token';
let stopPage = () => {};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function field(id, label, attrs) {
  return el('div', {}, el('label', { for: id, text: label }), el('input', Object.assign({ id, name: id }, attrs || {})));
}

const $ = (id) => document.getElementById(id);
const token = () => sessionStorage.getItem(KEY);

function showError(message) {
  const box = $('error');
  box.textContent = message;
  box.hidden = !message;
}

function status(message) {
  $('status').textContent = message || '';
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body, headers) {
  const h = Object.assign({ Authorization: 'Bearer ' + token() }, headers || {});
  if (body !== undefined) h['Content-Type'] = 'application/json';
  const r = await fetch('/v1' + path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!r.ok) {
    const msg = (data && data.error) || text || r.statusText;
    if (r.status === 401 && path !== '/tenants?pageSize=1') { signOut(); }
    throw new ApiError(r.status, `${method} /v1${path}: ${r.status} ${msg}`);
  }
  return { data, etag: r.headers.get('ETag') };
}

// Hono answers 404 to a search that finds nothing.
async function search(path) {
  try { return (await api('GET', path)).data.result || []; } catch (e) {
    if (e.status === 404) return [];
    throw e;
  }
}

async function act(what, fn) {
  showError('');
  try { await fn(); status(what); } catch (e) { showError(e.message); }
}

// The tenant of a tenant token (GET /v1/whoami), or null for the admin token.
const SCOPE = 'ferry-console-tenant';
const scopedTenant = () => sessionStorage.getItem(SCOPE);

function signOut() {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(SCOPE);
  stopPage();
  location.hash = '';
  route();
}

async function signIn(ev) {
  ev.preventDefault();
  const t = $('signin-token').value.trim();
  sessionStorage.setItem(KEY, t);
  try {
    // The admin token, or a tenant token good for that tenant's devices only.
    const { data } = await api('GET', '/whoami');
    if (data && data.scope === 'tenant') sessionStorage.setItem(SCOPE, data.tenant);
    else sessionStorage.removeItem(SCOPE);
    $('signin-token').value = '';
    showError('');
    location.hash = scopedTenant() ? '#devices/' + encodeURIComponent(scopedTenant()) : '#tenants';
    route();
  } catch (e) {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(SCOPE);
    showError(e.status === 401 ? 'Sign-in refused: ' + e.message : e.message);
  }
}

function view(title, ...content) {
  const v = $('view');
  v.replaceChildren(el('h2', { id: 'view-title', text: title, tabindex: '-1' }), ...content);
  v.hidden = false;
  $('view-title').focus();
}

async function toggleEnabled(path) {
  const { data, etag } = await api('GET', path);
  data.enabled = data.enabled === false;
  delete data.status;
  delete data.id;
  await api('PUT', path, data, etag ? { 'If-Match': etag } : {});
}

// ---- tenants ----
async function tenantsPage() {
  const list = el('tbody');
  const form = el('form', { id: 'tenant-form', 'aria-label': 'Create a tenant' },
    field('new-tenant-id', 'New tenant id (empty: generated)', { autocomplete: 'off' }),
    el('button', { id: 'create-tenant', type: 'submit', text: 'Create tenant' }));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const id = $('new-tenant-id').value.trim();
    act('Tenant created', async () => {
      await api('POST', '/tenants' + (id ? '/' + encodeURIComponent(id) : ''), {});
      $('new-tenant-id').value = '';
      await load();
    });
  });
  async function load() {
    const tenants = await search('/tenants?pageSize=200');
    list.replaceChildren(...tenants.map((t) => el('tr', { 'data-tenant': t.id },
      el('td', {}, el('a', { href: '#devices/' + encodeURIComponent(t.id), text: t.id })),
      el('td', { class: 'enabled', text: t.enabled === false ? 'disabled' : 'enabled' }),
      el('td', {},
        el('button', { type: 'button', class: 'secondary', text: t.enabled === false ? 'Enable' : 'Disable',
          'aria-label': (t.enabled === false ? 'Enable' : 'Disable') + ' tenant ' + t.id,
          onclick: () => act('Tenant updated', async () => { await toggleEnabled('/tenants/' + encodeURIComponent(t.id)); await load(); }) }),
        ' ',
        el('a', { href: '#tenant/' + encodeURIComponent(t.id), text: 'Limits', 'aria-label': 'Limits of tenant ' + t.id }),
        ' ',
        el('a', { href: '#stats/' + encodeURIComponent(t.id), text: 'Charts', 'aria-label': 'Charts of tenant ' + t.id }),
        ' ',
        el('a', { href: '#live/' + encodeURIComponent(t.id), text: 'Live messages' })))));
  }
  view('Tenants', form, el('table', {}, el('caption', { text: 'Tenants' }),
    el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: 'Tenant' }), el('th', { scope: 'col', text: 'State' }), el('th', { scope: 'col', text: 'Actions' }))), list));
  await act('', load);
}

// ---- devices ----
async function devicesPage(tenant) {
  const t = encodeURIComponent(tenant);
  const list = el('tbody');
  let query = '';
  let gatewaysOnly = false;
  let online = new Set();
  const create = el('form', { id: 'device-form', 'aria-label': 'Create a device' },
    field('new-device-id', 'New device id (empty: generated)', { autocomplete: 'off' }),
    el('button', { id: 'create-device', type: 'submit', text: 'Create device' }));
  create.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const id = $('new-device-id').value.trim();
    act('Device created', async () => {
      await api('POST', '/devices/' + t + (id ? '/' + encodeURIComponent(id) : ''), {});
      $('new-device-id').value = '';
      await load();
    });
  });
  const find = el('form', { role: 'search', 'aria-label': 'Search devices' },
    field('device-search', 'Device id contains', { type: 'search', autocomplete: 'off' }),
    el('div', {}, el('label', { for: 'gateways-only', text: 'Gateways only' }), el('input', { id: 'gateways-only', type: 'checkbox' })),
    el('button', { id: 'search-devices', type: 'submit', text: 'Search' }));
  find.addEventListener('submit', (ev) => {
    ev.preventDefault();
    query = $('device-search').value.trim();
    gatewaysOnly = $('gateways-only').checked;
    act('', load);
  });
  function presenceCell(id) {
    const on = online.has(id);
    return el('td', { class: 'presence ' + (on ? 'online' : 'offline'), text: on ? 'online' : 'offline' });
  }
  async function load() {
    let path = '/devices/' + t + '?pageSize=200' + (gatewaysOnly ? '&isGateway=true' : '');
    if (query) path += '&filterJson=' + encodeURIComponent(JSON.stringify({ field: '/id', op: 'eq', value: '*' + query + '*' }));
    const devices = await search(path);
    // Gateways by the registry's rule (its isGateway filter): one search, no call per row.
    const gateways = gatewaysOnly ? new Set(devices.map((d) => d.id)) : await gatewayIds(t);
    list.replaceChildren(...devices.map((d) => el('tr', { 'data-device': d.id, 'data-gateway': gateways.has(d.id) ? 'true' : 'false' },
      el('td', {}, el('a', { href: '#device/' + t + '/' + encodeURIComponent(d.id), text: d.id })),
      el('td', { class: 'enabled', text: d.enabled === false ? 'disabled' : 'enabled' }),
      presenceCell(d.id),
      el('td', { class: 'gateways' }, gateways.has(d.id) ? el('span', { class: 'gateway', text: 'gateway' }) : null,
        gateways.has(d.id) && (d.via || []).length ? ' · ' : null,
        (d.via || []).length ? 'via ' + d.via.join(', ') : null),
      el('td', {}, el('button', { type: 'button', class: 'secondary', text: d.enabled === false ? 'Enable' : 'Disable',
        'aria-label': (d.enabled === false ? 'Enable' : 'Disable') + ' device ' + d.id,
        onclick: () => act('Device updated', async () => { await toggleEnabled('/devices/' + t + '/' + encodeURIComponent(d.id)); await load(); }) })))));
  }
  // Presence, live: who is connected, twice a second.
  async function poll() {
    const now = await search('/devices/' + t + '?connected=true&pageSize=200');
    online = new Set(now.map((d) => d.id));
    for (const row of list.querySelectorAll('tr[data-device]')) {
      row.querySelector('.presence').replaceWith(presenceCell(row.getAttribute('data-device')));
    }
  }
  view('Devices of ' + tenant, el('p', {}, el('a', { href: '#tenant/' + t, text: 'Tenant ' + tenant + ' (limits)' }), ' · ',
    el('a', { href: '#stats/' + t, text: 'Charts' }), ' · ',
    el('a', { href: '#live/' + t, text: 'Live messages of this tenant' })), create, find,
    el('table', {}, el('caption', { text: 'Devices (presence refreshed every half second)' }),
      el('thead', {}, el('tr', {}, ...['Device', 'State', 'Presence', 'Gateways', 'Actions'].map((h) => el('th', { scope: 'col', text: h })))), list));
  await act('', async () => { await load(); await poll(); });
  let stopped = false;
  const timer = setInterval(() => { if (!stopped) poll().catch((e) => showError(e.message)); }, 500);
  stopPage = () => { stopped = true; clearInterval(timer); };
}

// ---- one device: presence, credentials, commands ----
const SECRET_FIELDS = ['id', 'enabled', 'not-before', 'not-after', 'comment'];

async function devicePage(tenant, device) {
  const t = encodeURIComponent(tenant);
  const d = encodeURIComponent(device);
  const presence = el('dl', { id: 'presence' });
  const creds = el('tbody', { id: 'credentials' });
  const result = el('pre', { id: 'cmd-result', 'aria-live': 'polite' });
  const gw = gatewaySection(tenant, device);
  const addPw = el('form', { id: 'password-form', 'aria-label': 'Add a password' },
    field('cred-auth-id', 'Auth id', { required: true, autocomplete: 'off', value: device }),
    field('cred-password', 'Password', { type: 'password', required: true, autocomplete: 'new-password' }),
    el('button', { id: 'add-password', type: 'submit', text: 'Add password' }));
  addPw.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const authId = $('cred-auth-id').value.trim();
    const pw = $('cred-password').value;
    act('Password added', async () => {
      const { data, etag } = await api('GET', '/credentials/' + t + '/' + d);
      const list = (data || []).map((c) => Object.assign({}, c, { secrets: (c.secrets || []).map((s) => ({ id: s.id })) }));
      const same = list.find((c) => c.type === 'hashed-password' && c['auth-id'] === authId);
      if (same) same.secrets.push({ 'pwd-plain': pw });
      else list.push({ type: 'hashed-password', 'auth-id': authId, secrets: [{ 'pwd-plain': pw }] });
      await api('PUT', '/credentials/' + t + '/' + d, list, etag ? { 'If-Match': etag } : {});
      $('cred-password').value = '';
      await loadCreds();
    });
  });
  const cmd = el('form', { id: 'command-form', 'aria-label': 'Send a command' },
    field('cmd-name', 'Command name', { required: true, autocomplete: 'off' }),
    field('cmd-payload', 'Payload', { autocomplete: 'off' }),
    field('cmd-content-type', 'Content type', { autocomplete: 'off', value: 'text/plain' }),
    el('div', {}, el('label', { for: 'cmd-one-way', text: 'One-way (no response)' }), el('input', { id: 'cmd-one-way', type: 'checkbox' })),
    el('button', { id: 'send-command', type: 'submit', text: 'Send command' }));
  cmd.addEventListener('submit', (ev) => {
    ev.preventDefault();
    result.textContent = 'Sending…';
    act('Command sent', async () => {
      const body = { name: $('cmd-name').value.trim(), payload: $('cmd-payload').value, 'one-way': $('cmd-one-way').checked };
      const ct = $('cmd-content-type').value.trim();
      if (ct) body['content-type'] = ct;
      try {
        const { data } = await api('POST', '/commands/' + t + '/' + d, body);
        result.textContent = JSON.stringify(data, null, 2);
        result.setAttribute('data-outcome', data.outcome);
      } catch (e) { result.textContent = e.message; throw e; }
    });
  });
  async function loadCreds() {
    const { data } = await api('GET', '/credentials/' + t + '/' + d);
    creds.replaceChildren(...(data || []).map((c) => el('tr', { 'data-auth-id': c['auth-id'] },
      el('td', { text: c.type }), el('td', { text: c['auth-id'] }), el('td', { text: c.enabled === false ? 'disabled' : 'enabled' }),
      // Metadata only: the API never returns hashes, and the console would not show them.
      el('td', {}, el('ul', {}, ...(c.secrets || []).map((s) => el('li', { class: 'mono',
        text: SECRET_FIELDS.filter((k) => s[k] !== undefined).map((k) => k + '=' + s[k]).join(' ') })))))));
  }
  async function loadPresence() {
    try {
      const { data } = await api('GET', '/devices/' + t + '/' + d + '/presence');
      const rows = [['Connected', data.connected ? 'online' : 'offline'], ['Since', data.since], ['Adapter', data.adapter],
        ['Gateway', data.gateway], ['Remote id', data['remote-id']], ['Last seen', data['last-seen']], ['Disconnected at', data['disconnected-at']]];
      presence.replaceChildren(...rows.filter((r) => r[1]).flatMap(([k, v]) => [el('dt', { text: k }),
        el('dd', { text: v, class: k === 'Connected' ? v : null })]));
    } catch (e) { presence.replaceChildren(el('dd', { text: e.message })); }
  }
  view('Device ' + device + ' (tenant ' + tenant + ')',
    el('p', {}, el('a', { href: '#devices/' + t, text: 'Back to the devices of ' + tenant })),
    el('h3', { text: 'Presence' }), presence,
    el('h3', { text: 'Gateways' }), gw.node,
    el('h3', { text: 'Credentials' }),
    el('table', {}, el('thead', {}, el('tr', {}, ...['Type', 'Auth id', 'State', 'Secrets (metadata)'].map((h) => el('th', { scope: 'col', text: h })))), creds),
    addPw,
    el('h3', { text: 'Send a command' }), cmd, el('h4', { text: 'Outcome' }), result);
  await act('', async () => { await loadPresence(); await loadCreds(); await gw.load(); });
  const timer = setInterval(loadPresence, 1000);
  stopPage = () => clearInterval(timer);
}

// ---- live messages ----
async function livePage(tenant) {
  const t = encodeURIComponent(tenant);
  const log = el('ul', { id: 'live-log', 'aria-live': 'polite', 'aria-relevant': 'additions' });
  const state = el('p', { id: 'live-state', text: 'Not watching.' });
  let abort = null;
  const start = el('button', { id: 'live-start', type: 'button', text: 'Start watching' });
  const stop = el('button', { id: 'live-stop', type: 'button', class: 'secondary', text: 'Stop' });
  function add(text, cls) {
    log.prepend(el('li', { class: cls, text }));
    while (log.children.length > 200) log.lastChild.remove();
  }
  async function watch() {
    if (abort) return;
    abort = new AbortController();
    showError('');
    try {
      // fetch, not EventSource: EventSource cannot send the Authorization header.
      const r = await fetch('/v1/live/' + t, { headers: { Authorization: 'Bearer ' + token() }, signal: abort.signal });
      if (!r.ok) {
        const body = await r.json().catch(() => ({}));
        throw new Error(`GET /v1/live/${tenant}: ${r.status} ${body.error || r.statusText}`);
      }
      state.textContent = 'Watching ' + tenant + ' (at most 50 messages a second are shown).';
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i); buf = buf.slice(i + 2);
          let type = 'message'; let data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) type = line.slice(6).trim();
            else if (line.startsWith('data:')) data += line.slice(5).trim();
          }
          if (!data) continue;
          const m = JSON.parse(data);
          if (type === 'message') {
            add(`${m.time} ${m.kind} ${m['device-id']} [${m['content-type'] || ''}] ${m.payload}${m.truncated ? ' …' : ''}`, 'msg');
          } else if (type === 'dropped') {
            add(`${m.count} messages not shown (rate limit or too slow)`, 'dropped');
          }
        }
      }
      state.textContent = 'The stream ended.';
    } catch (e) {
      if (e.name !== 'AbortError') { showError(e.message); state.textContent = 'Not watching.'; }
    } finally { abort = null; }
  }
  function end() { if (abort) abort.abort(); state.textContent = 'Not watching.'; }
  start.addEventListener('click', watch);
  stop.addEventListener('click', end);
  view('Live messages of ' + tenant,
    el('p', {}, el('a', { href: '#devices/' + t, text: 'Devices of ' + tenant })),
    el('p', {}, start, ' ', stop), state, log);
  stopPage = end;
  watch();
}

// ---- application users ----
async function applicationsPage() {
  const list = el('tbody');
  const form = el('form', { id: 'app-form', 'aria-label': 'Create or replace an application user' },
    field('app-name', 'Name', { required: true, autocomplete: 'off' }),
    field('app-password', 'Password', { type: 'password', required: true, autocomplete: 'new-password' }),
    field('app-tenants', 'Tenants (comma-separated, * for all)', { required: true, autocomplete: 'off' }),
    el('button', { id: 'create-app', type: 'submit', text: 'Save application user' }));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const name = $('app-name').value.trim();
    act('Application user saved', async () => {
      await api('PUT', '/applications/' + encodeURIComponent(name), {
        password: $('app-password').value,
        tenants: $('app-tenants').value.split(',').map((s) => s.trim()).filter(Boolean),
      });
      $('app-password').value = '';
      await load();
    });
  });
  async function load() {
    let apps = [];
    try { const { data } = await api('GET', '/applications'); apps = Array.isArray(data) ? data : (data.result || data.applications || []); } catch (e) { if (e.status !== 404) throw e; }
    list.replaceChildren(...apps.map((a) => el('tr', { 'data-app': a.name },
      el('td', { text: a.name }), el('td', { text: (a.tenants || []).join(', ') }), el('td', { text: (a.operations || []).join(', ') }),
      el('td', {}, el('button', { type: 'button', class: 'secondary', text: 'Delete', 'aria-label': 'Delete application user ' + a.name,
        onclick: () => act('Application user deleted', async () => { await api('DELETE', '/applications/' + encodeURIComponent(a.name)); await load(); }) })))));
  }
  view('Application users', form, el('table', {}, el('thead', {}, el('tr', {}, ...['Name', 'Tenants', 'Operations', 'Actions'].map((h) => el('th', { scope: 'col', text: h })))), list));
  await act('', load);
}

function route() {
  stopPage();
  stopPage = () => {};
  status('');
  const signedIn = !!token();
  $('signin').hidden = signedIn;
  $('nav').hidden = !signedIn;
  if (!signedIn) { $('view').hidden = true; $('signin-token').focus(); return; }
  const [page, ...rest] = location.hash.slice(1).split('/').map(decodeURIComponent);
  const own = scopedTenant();
  // A tenant token sees its own tenant's devices, live view and charts; the admin's pages are hidden.
  $('nav-admin').hidden = !!own;
  $('nav-admin-apps').hidden = !!own;
  $('nav-own').hidden = !own;
  if (own) {
    $('nav-own-link').href = '#devices/' + encodeURIComponent(own);
    const mine = ['devices', 'device', 'live', 'stats'].includes(page) && rest[0] === own;
    if (!mine) return devicesPage(own);
  }
  if (page === 'devices' && rest[0]) return devicesPage(rest[0]);
  if (page === 'device' && rest[1]) return devicePage(rest[0], rest[1]);
  if (page === 'live' && rest[0]) return livePage(rest[0]);
  if (page === 'tenant' && rest[0]) return tenantPage(rest[0]);
  if (page === 'stats' && rest[0]) return statsPage(rest[0]);
  if (page === 'applications') return applicationsPage();
  return tenantsPage();
}

document.addEventListener('DOMContentLoaded', () => {
  $('signin-form').addEventListener('submit', signIn);
  $('signout').addEventListener('click', signOut);
  window.addEventListener('hashchange', route);
  route();
});
