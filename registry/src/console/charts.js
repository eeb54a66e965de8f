// Ferry console: a tenant's charts (docs/console.md). Polls GET /v1/stats/{t} every 2 s, turns the
// counters into rates (difference over the difference of the server's read times) and draws the last
// 5 minutes as inline SVG built with DOM calls. Each chart is an image with an aria-label and has a text
// summary beside it, so the figures do not depend on seeing the lines; series differ by dash, not only
// by colour.
'use strict';

const SVG_NS = 'http://www.w3.org/2000/svg';
const CHART_WINDOW_MS = 5 * 60 * 1000;
const CHART_POLL_MS = 2000;
const CHART_W = 480;
const CHART_H = 150;
const PAD = { left: 44, right: 8, top: 10, bottom: 22 };

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'text') e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// A number for people: 0, 0.35, 4.2, 120.
function fmt(n) {
  if (!Number.isFinite(n)) return '–';
  if (n === 0) return '0';
  if (n < 1) return n.toFixed(2);
  if (n < 10) return Number.isInteger(n) ? String(n) : n.toFixed(1);
  return String(Math.round(n));
}

// "−5 min", "−40 s".
function ago(ms) {
  return ms >= 60000 ? '−' + Math.round(ms / 60000) + ' min' : '−' + Math.round(ms / 1000) + ' s';
}

// Draws `series` ([{ cls, points: [[timeMs, value]] }]) ending at `now`: the last 5 minutes, or since
// the first point when the page has been open for less (at least 10 s), so a new chart is not a dot.
function drawChart(box, series, now, unit) {
  const max = Math.max(1, ...series.flatMap((s) => s.points.map((p) => p[1])));
  const first = Math.min(now, ...series.flatMap((s) => s.points.map((p) => p[0])));
  const span = Math.min(CHART_WINDOW_MS, Math.max(10000, now - first));
  const x = (tm) => PAD.left + (CHART_W - PAD.left - PAD.right) * (1 - (now - tm) / span);
  const y = (v) => CHART_H - PAD.bottom - (CHART_H - PAD.top - PAD.bottom) * (v / max);
  const parts = [
    svg('line', { class: 'axis', x1: PAD.left, y1: y(0), x2: CHART_W - PAD.right, y2: y(0) }),
    svg('line', { class: 'axis', x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: y(0) }),
    svg('line', { class: 'grid', x1: PAD.left, y1: y(max), x2: CHART_W - PAD.right, y2: y(max) }),
    svg('text', { class: 'tick', x: PAD.left - 4, y: y(max) + 4, 'text-anchor': 'end', text: fmt(max) }),
    svg('text', { class: 'tick', x: PAD.left - 4, y: y(0) + 4, 'text-anchor': 'end', text: '0' }),
    svg('text', { class: 'tick', x: PAD.left, y: CHART_H - 6, text: ago(span) }),
    svg('text', { class: 'tick', x: CHART_W - PAD.right, y: CHART_H - 6, 'text-anchor': 'end', text: 'now' }),
    svg('text', { class: 'tick', x: PAD.left + 4, y: PAD.top + 10, text: unit }),
  ];
  for (const s of series) {
    const pts = s.points.filter((p) => now - p[0] <= span);
    if (pts.length) {
      parts.push(svg('polyline', { class: 'series ' + s.cls, fill: 'none',
        points: pts.map((p) => x(p[0]).toFixed(1) + ',' + y(p[1]).toFixed(1)).join(' ') }));
      const [tm, v] = pts[pts.length - 1];
      parts.push(svg('circle', { class: 'dot ' + s.cls, cx: x(tm).toFixed(1), cy: y(v).toFixed(1), r: 3 }));
    }
  }
  box.replaceChildren(...parts);
}

// One chart: a figure with a heading, the SVG (role img) and its text summary.
function chartFigure(id, title) {
  const image = svg('svg', { id: 'chart-' + id, class: 'chart', role: 'img', viewBox: `0 0 ${CHART_W} ${CHART_H}`,
    width: CHART_W, height: CHART_H, 'aria-label': title + ': no data yet' });
  const summary = el('p', { id: 'chart-' + id + '-summary', class: 'chart-summary', 'aria-live': 'polite', text: 'Waiting for data…' });
  return { image, summary, node: el('figure', { class: 'chart-box', 'aria-labelledby': 'chart-' + id + '-title' },
    el('h3', { id: 'chart-' + id + '-title', text: title }), image, summary) };
}

const refused = (c) => (c.undeliverable || 0) + (c.unprocessable || 0);

async function statsPage(tenant) {
  const t = encodeURIComponent(tenant);
  const charts = {
    telemetry: chartFigure('telemetry', 'Telemetry messages per second'),
    event: chartFigure('event', 'Events per second'),
    connections: chartFigure('connections', 'Connected devices'),
  };
  const source = el('p', { id: 'stats-source' });
  let last = null;
  const rates = { telemetry: { forwarded: [], refused: [] }, event: { forwarded: [], refused: [] } };
  const connections = [];

  function trim(list, now) { while (list.length && now - list[0][0] > CHART_WINDOW_MS) list.shift(); }

  function show(kind, now, label) {
    const f = rates[kind].forwarded;
    const r = rates[kind].refused;
    const c = charts[kind];
    if (!f.length) return;
    const fNow = f[f.length - 1][1];
    const rNow = r[r.length - 1][1];
    const peak = Math.max(...f.map((p) => p[1]), ...r.map((p) => p[1]));
    drawChart(c.image, [{ cls: 'forwarded', points: f }, { cls: 'refused', points: r }], now, label + '/s');
    const text = `Now ${fmt(fNow)} ${label}/s forwarded (solid line), ${fmt(rNow)}/s refused (dashed: undeliverable or unprocessable); peak ${fmt(peak)}/s over the last 5 minutes (or since this page opened).`;
    c.summary.textContent = text;
    c.summary.setAttribute('data-forwarded', String(fNow));
    c.summary.setAttribute('data-refused', String(rNow));
    c.image.setAttribute('aria-label', c.node.querySelector('h3').textContent + '. ' + text);
  }

  function unavailable(kind) {
    const text = 'Not available: the adapters run in other processes (cluster mode); see their /metrics.';
    charts[kind].summary.textContent = text;
    charts[kind].image.setAttribute('aria-label', charts[kind].node.querySelector('h3').textContent + ': ' + text);
  }

  async function poll() {
    const { data } = await api('GET', '/stats/' + t);
    const now = Date.parse(data.time) || Date.now();
    const count = data.connections !== undefined ? data.connections : data['connected-devices'];
    if (data.source === 'process' || data.source === 'cluster') {
      source.textContent = data.source === 'process'
        ? `Counted by this process since it started (the adapters' and the router's metrics). Devices connected now: ${data['connected-devices']}; events stored, not yet consumed: ${data['stored-events']}.`
        : `Cluster mode: summed over the ${data.answers} adapters and routers that answered (each counts since it started). Devices connected now: ${data['connected-devices']}.`;
      if (last && now > last.time) {
        const secs = (now - last.time) / 1000;
        for (const kind of ['telemetry', 'event']) {
          // A counter that went down (the process restarted) counts as 0.
          const df = Math.max(0, data[kind].forwarded - last[kind].forwarded);
          const dr = Math.max(0, refused(data[kind]) - refused(last[kind]));
          rates[kind].forwarded.push([now, df / secs]);
          rates[kind].refused.push([now, dr / secs]);
          trim(rates[kind].forwarded, now);
          trim(rates[kind].refused, now);
          show(kind, now, kind === 'event' ? 'events' : 'messages');
        }
      }
      last = { time: now, telemetry: data.telemetry, event: data.event };
    } else {
      source.textContent = 'Only the connected devices (from presence) are known to the registry.';
      unavailable('telemetry');
      unavailable('event');
    }
    connections.push([now, count || 0]);
    trim(connections, now);
    const peak = Math.max(...connections.map((p) => p[1]));
    drawChart(charts.connections.image, [{ cls: 'forwarded', points: connections }], now, 'devices');
    const what = data.connections !== undefined ? 'authenticated connection(s)' : 'device(s) connected (presence)';
    const text = `Now ${count || 0} ${what}; at most ${peak} over the last 5 minutes (or since this page opened).`;
    charts.connections.summary.textContent = text;
    charts.connections.summary.setAttribute('data-now', String(count || 0));
    charts.connections.image.setAttribute('aria-label', 'Connected devices. ' + text);
  }

  view('Charts of ' + tenant,
    el('p', {}, el('a', { href: '#tenant/' + t, text: 'Tenant ' + tenant }), ' · ',
      el('a', { href: '#devices/' + t, text: 'Devices' }), ' · ',
      el('a', { href: '#live/' + t, text: 'Live messages' })),
    el('p', { text: 'Rates over the last 5 minutes, refreshed every 2 seconds. Forwarded: accepted downstream; refused: undeliverable (no consumer, no credit) or unprocessable (e.g. data volume used up).' }),
    source,
    el('div', { class: 'charts' }, charts.telemetry.node, charts.event.node, charts.connections.node));
  let stopped = false;
  let busy = false;
  async function tick() {
    if (stopped || busy) return;
    busy = true;
    try { await poll(); showError(''); } catch (e) { showError(e.message); } finally { busy = false; }
  }
  const timer = setInterval(tick, CHART_POLL_MS);
  stopPage = () => { stopped = true; clearInterval(timer); };
  await tick();
}
