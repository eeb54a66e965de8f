// Ferry console: a tenant's page, its protocol adapters and its resource and registration limits
// (docs/console.md).
// Saving reads the tenant (with its ETag), changes only the limits and writes the whole body back with
// PUT /v1/tenants/{t} and If-Match, so nothing else of the tenant is lost and a concurrent change is
// refused (412) rather than overwritten. An empty field means -1: no limit (for max-stored-events and
// max-stored-event-bytes: the platform's default). Values go to the API as typed; its errors are shown.
'use strict';

const RESOURCE_LIMITS = [
  ['max-connections', 'Max connections', 'Connections of the tenant\'s devices at once (Hono: a device past it is refused).'],
  ['max-ttl', 'Max TTL (s)', 'Longest time to live of any message.'],
  ['max-ttl-telemetry-qos0', 'Max TTL, telemetry QoS 0 (s)', ''],
  ['max-ttl-telemetry-qos1', 'Max TTL, telemetry QoS 1 (s)', ''],
  ['max-ttl-command-response', 'Max TTL, command responses (s)', ''],
  ['max-stored-events', 'Max stored events', 'Events stored and not yet consumed; empty: the platform\'s default.'],
  ['max-stored-event-bytes', 'Max stored event bytes', 'Empty: the platform\'s default.'],
];
const REGISTRATION_LIMITS = [
  ['max-devices', 'Max devices', ''],
  ['max-credentials-per-device', 'Max credentials per device', ''],
];

// A limit field: text with numeric input mode, so that what is typed reaches the API as typed.
function limitField(id, label, value, hint) {
  const input = el('input', { id, name: id, inputmode: 'numeric', autocomplete: 'off', size: '12',
    placeholder: 'no limit', value: value === undefined || value === null || value === -1 ? '' : String(value),
    'aria-describedby': hint ? id + '-hint' : null });
  return el('div', {}, el('label', { for: id, text: label }), input,
    hint ? el('small', { id: id + '-hint', class: 'hint', text: hint }) : null);
}

// '' is -1 (no limit); an integer is sent as a number; anything else as typed, for the API to judge.
function limitValue(id) {
  const raw = $(id).value.trim();
  if (raw === '') return -1;
  const n = Number(raw);
  return Number.isInteger(n) ? n : raw;
}

function onlyDefaults(obj) {
  return Object.entries(obj).every(([k, v]) => v === -1 || (k === 'ext' && v && typeof v === 'object' && !Object.keys(v).length));
}

// The tenant body with the limits of the form applied (the rest as read).
function withLimits(tenant) {
  const body = Object.assign({}, tenant);
  delete body.id;
  delete body.status;
  const rl = Object.assign({}, body['resource-limits'] || {});
  for (const [key] of RESOURCE_LIMITS) rl[key] = limitValue('limit-' + key);
  const since = $('dv-effective-since').value.trim();
  const maxBytes = $('dv-max-bytes').value.trim();
  const mode = $('dv-period-mode').value;
  const days = $('dv-no-of-days').value.trim();
  if (since || maxBytes || mode) {
    const dv = { 'max-bytes': limitValue('dv-max-bytes') };
    if (since) dv['effective-since'] = since;
    if (mode) {
      dv.period = { mode };
      if (days) { const n = Number(days); dv.period['no-of-days'] = Number.isInteger(n) ? n : days; }
    }
    rl['data-volume'] = dv;
  } else {
    delete rl['data-volume'];
  }
  if (onlyDefaults(rl)) delete body['resource-limits']; else body['resource-limits'] = rl;
  const reg = Object.assign({}, body['registration-limits'] || {});
  for (const [key] of REGISTRATION_LIMITS) reg[key] = limitValue('reg-' + key);
  if (onlyDefaults(reg)) delete body['registration-limits']; else body['registration-limits'] = reg;
  return body;
}

const ADAPTER_TYPES = [['hono-mqtt', 'MQTT'], ['hono-http', 'HTTP']];

// Hono's rule: without an `adapters` list every adapter is enabled; with one, only those listed with
// `enabled: true`. Devices must authenticate unless the entry says otherwise.
function adapterState(tenant, type) {
  const list = Array.isArray(tenant.adapters) ? tenant.adapters : null;
  const entry = list ? list.find((a) => a.type === type) : null;
  return {
    enabled: list ? !!(entry && entry.enabled === true) : true,
    auth: !entry || entry['device-authentication-required'] !== false,
  };
}

// The tenant body with the adapters of the form applied; each entry keeps its other options (e.g.
// max-ttd), entries of other adapter types stay. Both enabled with authentication and nothing else: no
// list, as Hono reads it.
function withAdapters(tenant) {
  const body = Object.assign({}, tenant);
  delete body.id;
  delete body.status;
  const old = Array.isArray(body.adapters) ? body.adapters : [];
  const entries = ADAPTER_TYPES.map(([type]) => Object.assign({}, old.find((a) => a.type === type) || {}, {
    type,
    enabled: $('adapter-' + type + '-enabled').checked,
    'device-authentication-required': $('adapter-' + type + '-auth').checked,
  }));
  const others = old.filter((a) => !ADAPTER_TYPES.some(([t]) => t === a.type));
  const plain = entries.every((a) => a.enabled && a['device-authentication-required'] && Object.keys(a).length === 3);
  if (plain && !others.length) delete body.adapters; else body.adapters = entries.concat(others);
  return body;
}

function adaptersForm(tenant, data, onSaved) {
  const t = encodeURIComponent(tenant);
  const check = (id, label, checked) => el('div', {}, el('label', { for: id, text: label }),
    el('input', { id, name: id, type: 'checkbox', checked }));
  const form = el('form', { id: 'adapters-form', 'aria-label': 'Protocol adapters of tenant ' + tenant },
    el('fieldset', {}, el('legend', { text: 'Protocol adapters' }),
      ...ADAPTER_TYPES.flatMap(([type, name]) => {
        const st = adapterState(data, type);
        return [check('adapter-' + type + '-enabled', name + ' enabled', st.enabled),
          check('adapter-' + type + '-auth', name + ' devices must authenticate', st.auth)];
      })),
    el('button', { id: 'save-adapters', type: 'submit', text: 'Save adapters' }));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    act('Adapters saved', async () => {
      const { data: now, etag } = await api('GET', '/tenants/' + t);
      await api('PUT', '/tenants/' + t, withAdapters(now), etag ? { 'If-Match': etag } : {});
      await onSaved();
    });
  });
  return form;
}

async function tenantPage(tenant) {
  const t = encodeURIComponent(tenant);
  const form = el('form', { id: 'limits-form', 'aria-label': 'Limits of tenant ' + tenant });
  const raw = el('pre', { id: 'tenant-json' });
  const state = el('p', { id: 'tenant-state' });
  const adapters = el('div', { id: 'tenant-adapters' });
  async function load() {
    const { data } = await api('GET', '/tenants/' + t);
    adapters.replaceChildren(adaptersForm(tenant, data, load));
    const rl = data['resource-limits'] || {};
    const dv = rl['data-volume'] || {};
    const period = dv.period || {};
    const reg = data['registration-limits'] || {};
    const modes = el('select', { id: 'dv-period-mode', name: 'dv-period-mode' },
      ...[['', 'none'], ['monthly', 'monthly'], ['days', 'days']].map(([v, text]) =>
        el('option', { value: v, text, selected: (period.mode || '') === v })));
    form.replaceChildren(
      el('fieldset', {}, el('legend', { text: 'Resource limits (empty: no limit)' }),
        ...RESOURCE_LIMITS.map(([key, label, hint]) => limitField('limit-' + key, label, rl[key], hint))),
      el('fieldset', {}, el('legend', { text: 'Data volume (empty: none)' }),
        field('dv-effective-since', 'Effective since (RFC 3339)', { autocomplete: 'off', placeholder: '2025-01-01T00:00:00Z', value: dv['effective-since'] || '' }),
        limitField('dv-max-bytes', 'Max bytes per period', dv['max-bytes'], ''),
        el('div', {}, el('label', { for: 'dv-period-mode', text: 'Period' }), modes),
        field('dv-no-of-days', 'Days per period (mode days)', { inputmode: 'numeric', autocomplete: 'off', value: period['no-of-days'] === undefined ? '' : String(period['no-of-days']) })),
      el('fieldset', {}, el('legend', { text: 'Registration limits (empty: no limit)' }),
        ...REGISTRATION_LIMITS.map(([key, label, hint]) => limitField('reg-' + key, label, reg[key], hint))),
      el('button', { id: 'save-limits', type: 'submit', text: 'Save limits' }));
    state.textContent = 'Tenant ' + tenant + ' is ' + (data.enabled === false ? 'disabled' : 'enabled') + '.';
    raw.textContent = JSON.stringify(data, null, 2);
  }
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    act('Limits saved', async () => {
      const { data, etag } = await api('GET', '/tenants/' + t);
      await api('PUT', '/tenants/' + t, withLimits(data), etag ? { 'If-Match': etag } : {});
      await load();
    });
  });
  view('Tenant ' + tenant,
    el('p', {}, el('a', { href: '#devices/' + t, text: 'Devices' }), ' · ',
      el('a', { href: '#live/' + t, text: 'Live messages' }), ' · ',
      el('a', { href: '#stats/' + t, text: 'Charts' })),
    state,
    el('h3', { text: 'Adapters' }), adapters,
    el('h3', { text: 'Limits' }), form,
    el('details', {}, el('summary', { text: 'The tenant as the API returns it' }), raw));
  await act('', load);
}
