// Ferry console: gateways (docs/console.md). On a device's page, its `via` (gateways that may act for
// it), `viaGroups` and `memberOf`, saved by reading the device with its ETag and writing it back whole
// (PUT with If-Match), so its other registration fields stay. In the device list, a device is marked a
// gateway by the registry's own rule, the one its `isGateway` search filter applies: another device
// names it in `via`, or names in `viaGroups` a group it is a member of. One search per list, no call
// per row.
'use strict';

// "a, b ,c" -> ['a', 'b', 'c'].
function idList(text) {
  return text.split(',').map((s) => s.trim()).filter(Boolean);
}

// The ids of the tenant's gateways (at most 200: the API's largest page).
async function gatewayIds(t) {
  return new Set((await search('/devices/' + t + '?isGateway=true&pageSize=200')).map((d) => d.id));
}

// The device page's section: { node, load }.
function gatewaySection(tenant, device) {
  const t = encodeURIComponent(tenant);
  const d = encodeURIComponent(device);
  const actsFor = el('p', { id: 'gw-acts-for' });
  const form = el('form', { id: 'gateway-form', 'aria-label': 'Gateways of device ' + device },
    field('gw-via', 'Gateways that may act for it (via; device ids, comma-separated)', { autocomplete: 'off', 'aria-describedby': 'gw-hint' }),
    field('gw-via-groups', 'Gateway groups that may act for it (viaGroups)', { autocomplete: 'off', 'aria-describedby': 'gw-hint' }),
    field('gw-member-of', 'Gateway groups it belongs to (memberOf)', { autocomplete: 'off', 'aria-describedby': 'gw-hint' }),
    el('button', { id: 'save-gateways', type: 'submit', text: 'Save gateways' }),
    el('small', { id: 'gw-hint', class: 'hint', text: 'Comma-separated; empty: none. Hono allows memberOf only on a device without via and viaGroups.' }));
  async function load() {
    const { data } = await api('GET', '/devices/' + t + '/' + d);
    $('gw-via').value = (data.via || []).join(', ');
    $('gw-via-groups').value = (data.viaGroups || []).join(', ');
    $('gw-member-of').value = (data.memberOf || []).join(', ');
    // Which devices this one may act for: those naming it in via, or one of its groups in viaGroups.
    const found = new Set();
    const filters = [{ field: '/via', value: device }].concat((data.memberOf || []).slice(0, 10).map((g) => ({ field: '/viaGroups', value: g })));
    for (const f of filters) {
      const q = encodeURIComponent(JSON.stringify(Object.assign({ op: 'eq' }, f)));
      for (const x of await search('/devices/' + t + '?pageSize=200&filterJson=' + q)) found.add(x.id);
    }
    actsFor.textContent = found.size
      ? 'A gateway: it may act for ' + [...found].sort().join(', ') + '.'
      : 'Not a gateway: no device names it (or a group of it) as its gateway.';
  }
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    act('Gateways saved', async () => {
      const { data, etag } = await api('GET', '/devices/' + t + '/' + d);
      const body = Object.assign({}, data);
      delete body.status;
      delete body.id;
      for (const [key, id] of [['via', 'gw-via'], ['viaGroups', 'gw-via-groups'], ['memberOf', 'gw-member-of']]) {
        const list = idList($(id).value);
        if (list.length) body[key] = list; else delete body[key];
      }
      await api('PUT', '/devices/' + t + '/' + d, body, etag ? { 'If-Match': etag } : {});
      await load();
    });
  });
  return { node: el('div', {}, actsFor, form), load };
}
