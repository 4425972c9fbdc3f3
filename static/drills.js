// The fault drills panel, shown only when the page was given a drills token (a replica started
// by `stickyws cluster`, see DRILLS.md): kill, drain or restart any replica, stop, start or
// freeze Redis, and "publish while I'm away", which sends numbered messages to this page's own
// client while its socket is down, holds the reconnect until they are accepted, then counts
// them as they come back. Polls GET /api/drills every second while drills are available, so
// the picture, the count and the Redis box follow the supervisor within a second. The
// socket is socket.js's; the sentences about health are truth.js's.

import { CLIENT_ID, DRILLS_POLL_MS, DRILLS_TOKEN, TOKEN } from './config.js';
import { $, el } from './dom.js';
import { chip } from './colours.js';
import { state } from './state.js';
import { request } from './request.js';
import { feedEvent } from './feed.js';
import { replicasChanged } from './replicas.js';
import { holdReconnect, whenMessage, whenSocketDown, whenWelcomed } from './socket.js';
import { brokerHealth } from './truth.js';
import { visitsSeen } from './visits.js';
import { emit, on } from './events.js';

/** Replica drills and their buttons' labels; `restart` starts a replica that is down. */
const REPLICA_DRILLS = [
  { action: 'kill', label: 'Kill', title: 'SIGKILL: the process dies at once, its sockets break off' },
  { action: 'drain', label: 'Drain', title: 'SIGTERM: the replica closes its sockets (1012) and exits' },
  { action: 'restart', label: 'Restart', title: 'Stop it if up, then start it again on the same port: its memory starts over' },
];
const AWAY_MAX = 20;

const drills = {
  /** Drills in flight: "kill app-2" -> true; their buttons are disabled meanwhile. */
  busy: new Set(),
  /** The last poll's error, shown until a poll succeeds. */
  error: '',
  /** Each replica's local visit counter before a restart this page asked for. */
  before: new Map(),
  /** The restart outcome shown: { replica, before, after, starts }. */
  restarted: null,
  /** The current "publish while I'm away" run: { run, n, sent, failed, texts, got, replayed }. */
  away: null,
  /** Drills this page has done (kill, drain, restart, redis-stop, redis-start, redis-freeze). */
  done: new Set(),
};

export const drillsOn = () => !!DRILLS_TOKEN;
export const drillsDone = () => drills.done;
export const awayRun = () => drills.away;

export function buildDrills() {
  if (!drillsOn()) return;
  $('drills').hidden = false;
  whenSocketDown(publishWhileAway);
  whenMessage(countAway);
  whenWelcomed(() => setTimeout(renderAway, 0));
  on('health', renderDrills);
  $('drill-freeze').addEventListener('click', () => drill('redis-freeze', { seconds: freezeSeconds() }));
  $('drill-redis-stop').addEventListener('click', () => drill('redis-stop', {}));
  $('drill-redis-start').addEventListener('click', () => drill('redis-start', {}));
  poll();
  setInterval(() => { if (!document.hidden) poll(); }, DRILLS_POLL_MS);
  renderAway();
}

const authed = (init = {}) => ({
  credentials: 'omit', ...init,
  headers: { ...(init.headers || {}), Authorization: `Bearer ${DRILLS_TOKEN}` },
});

async function poll() {
  try {
    const data = await request('/api/drills', authed());
    take(data.state || data);
    drills.error = '';
  } catch (err) {
    drills.error = err.message;
  }
  renderDrills();
}

/** Takes the supervisor's state, and notices a restarted replica's counter starting over. */
function take(s) {
  if (!s || !Array.isArray(s.replicas)) return;
  state.drills = { replicas: s.replicas, redis: s.redis || null };
  state.drillsAt = Date.now();
  replicasChanged();
  checkRestarts();
}

function checkRestarts() {
  for (const [name, before] of drills.before) {
    const r = state.drills.replicas.find((x) => x.id === name);
    const listed = state.replicas.get(name);
    if (!r || r.state !== 'up' || r.starts <= before.starts) continue;
    // Figures are announced every 2 s: only those read well after the new process started
    // are surely its own, not the old one's last announcement.
    if (!before.upAt) before.upAt = Date.now();
    if (!listed || !listed.live || !listed.figures || (listed.figuresAt || 0) < before.upAt + 2500) continue;
    const after = listed.figures.visits;
    if (after == null) continue;
    drills.restarted = { replica: name, before: before.visits, after, starts: r.starts };
    drills.before.delete(name);
    feedEvent(`${name} is back (start #${r.starts}): a new process, so its own visit counter started over (${before.visits} before, ${after} now) and every note it kept in memory is gone`, 'warn');
    emit('lesson', 'restarted');
  }
}

async function drill(action, body) {
  const key = `${action} ${body.replica || 'redis'}`;
  if (drills.busy.has(key)) return;
  drills.busy.add(key);
  if (action === 'restart') {
    const listed = state.replicas.get(body.replica);
    const r = state.drills && state.drills.replicas.find((x) => x.id === body.replica);
    // The newest count the page knows: announced figures are up to 2 s old, and the page's
    // own render (or a visit it made) may be newer.
    const figure = listed && listed.figures ? Number(listed.figures.visits) || 0 : 0;
    const seenHere = Number(visitsSeen().local[body.replica]) || 0;
    drills.before.set(body.replica, { visits: Math.max(figure, seenHere),
      starts: r ? r.starts : 0, at: Date.now() });
  }
  renderDrills();
  feedEvent(`drill: ${describe(action, body)}…`, 'info').dataset.drill = action;
  try {
    const data = await request(`/api/drills/${action}`, authed({
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
    }));
    if (data.state) take(data.state);
    drills.done.add(action);
    const item = feedEvent(`drill done: ${describe(action, body)} (asked through ${data.replica || '?'})`, 'warn');
    item.dataset.drill = action;
    item.dataset.drillOutcome = 'ok';
    emit('lesson', `drill-${action}`);
  } catch (err) {
    const item = feedEvent(`drill refused: ${describe(action, body)}: ${err.message}`, 'bad');
    item.dataset.drill = action;
    item.dataset.drillOutcome = 'error';
  } finally {
    drills.busy.delete(key);
    renderDrills();
  }
}

function describe(action, body) {
  switch (action) {
    case 'kill': return `kill ${body.replica} (SIGKILL)`;
    case 'drain': return `drain ${body.replica} (SIGTERM)`;
    case 'restart': return `restart ${body.replica}`;
    case 'redis-stop': return 'stop Redis';
    case 'redis-start': return 'start Redis';
    case 'redis-freeze': return `freeze Redis for ${body.seconds} s`;
    default: return action;
  }
}

function freezeSeconds() {
  const n = Math.round(Number($('drill-freeze-seconds').value));
  return Math.min(30, Math.max(1, Number.isFinite(n) ? n : 5));
}

const ago = (ms) => {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
};

function renderDrills() {
  if (!drillsOn()) return;
  const s = state.drills;
  const status = $('drills-status');
  const text = drills.error ? `The supervisor did not answer: ${drills.error}`
    : s ? 'The supervisor’s state, polled every second.' : 'Asking the supervisor…';
  if (status.textContent !== text) status.textContent = text;
  status.classList.toggle('lab-error', !!drills.error);
  if (!s) return;
  // Rows are made once and updated in place: replacing them every second would take a
  // button away from under a pointer about to press it, and focus from a keyboard.
  const table = $('drills-rows');
  const rows = s.replicas.map((r) => updateReplicaRow(r));
  rows.push(updateRedisRow(s.redis));
  if (rows.some((row, i) => table.children[i] !== row) || table.children.length !== rows.length) {
    table.replaceChildren(...rows);
  }
  const busy = drills.busy.size > 0;
  $('drill-freeze').disabled = !s.redis || s.redis.state !== 'up' || busy;
  $('drill-redis-stop').disabled = !s.redis || s.redis.state === 'down' || busy;
  $('drill-redis-start').disabled = !s.redis || s.redis.state !== 'down' || busy;
  renderRestart();
}

/** Row elements by replica id ("redis" for Redis's). */
const rowsBy = new Map();

const setText = (node, text) => { if (node.textContent !== text) node.textContent = text; };

function updateReplicaRow(r) {
  let row = rowsBy.get(r.id);
  if (!row) {
    row = el('li', { class: 'drill-row', 'data-replica-row': r.id },
      chip(r.id), el('span', { class: 'drill-state' }), el('span', { class: 'badge badge-same', hidden: '' }, 'holds my socket'));
    const buttons = el('span', { class: 'drill-buttons' });
    for (const d of REPLICA_DRILLS) {
      const b = el('button', { type: 'button', class: 'btn btn-small', id: `drill-${d.action}-${r.id}`,
        'data-testid': `drill-${d.action}-${r.id}`, title: d.title }, d.label);
      b.addEventListener('click', () => drill(d.action, { replica: r.id }));
      buttons.append(b);
    }
    row.append(buttons);
    rowsBy.set(r.id, row);
  }
  const mine = state.wsState === 'open' && state.wsBy === r.id;
  const what = [`${r.state}`];
  if (r.pid) what.push(`pid ${r.pid}`);
  if (r.starts > 1) what.push(`start #${r.starts}`);
  if (r.state !== 'up' && r.since_ms) what.push(`for ${ago(r.since_ms)}`);
  if (r.state === 'down' && r.exit) what.push(r.exit);
  row.dataset.state = r.state;
  row.dataset.mine = String(mine);
  setText(row.querySelector('.drill-state'), what.join(' · '));
  row.querySelector('.badge-same').hidden = !mine;
  const busy = [...drills.busy].some((k) => k.endsWith(` ${r.id}`));
  for (const d of REPLICA_DRILLS) {
    const b = row.querySelector(`#drill-${d.action}-${CSS.escape(r.id)}`);
    setText(b, d.action === 'restart' && r.state === 'down' ? 'Start' : d.label);
    b.disabled = busy || (d.action !== 'restart' && r.state !== 'up' && r.state !== 'draining')
      || (d.action === 'drain' && r.state === 'draining');
  }
  return row;
}

function updateRedisRow(redis) {
  let row = rowsBy.get('redis');
  if (!row) {
    row = el('li', { class: 'drill-row drill-redis', id: 'drill-redis-row', 'data-testid': 'drill-redis-row' },
      el('span', { class: 'chip chip-redis' }, 'Redis'), el('span', { class: 'drill-state' }),
      el('p', { class: 'drill-explain', hidden: '' }));
    rowsBy.set('redis', row);
  }
  const health = brokerHealth();
  const what = redis ? [redis.state] : ['not supervised'];
  if (redis && redis.pid) what.push(`pid ${redis.pid}`);
  if (redis && redis.port) what.push(`port ${redis.port}`);
  if (redis && redis.state !== 'up' && redis.since_ms) what.push(`for ${ago(redis.since_ms)}`);
  row.dataset.state = redis ? redis.state : '';
  row.dataset.health = health.state;
  setText(row.querySelector('.drill-state'), what.join(' · '));
  const explain = row.querySelector('.drill-explain');
  explain.hidden = health.state === 'up';
  setText(explain, health.detail);
  return row;
}

function renderRestart() {
  const node = $('drill-restart');
  const r = drills.restarted;
  if (!r) { node.hidden = true; return; }
  node.hidden = false;
  Object.assign(node.dataset, { replica: r.replica, before: r.before, after: r.after });
  node.replaceChildren(chip(r.replica), ` restarted (start #${r.starts}): a new process with empty memory. `,
    `Its own visit counter was ${r.before} and started over at ${r.after}; the notes it kept for you in memory are gone (the Redis copies are not).`);
}

// ---- publish while I'm away ------------------------------------------------------------

function awayCount() {
  const n = Math.round(Number($('away-count').value));
  return Math.min(AWAY_MAX, Math.max(1, Number.isFinite(n) ? n : 5));
}

/** The socket broke off: if armed, publish the run now, and hold the reconnect until done. */
function publishWhileAway(replica) {
  if (!$('away-armed').checked) return;
  const run = Math.random().toString(36).slice(2, 7);
  const n = awayCount();
  const a = { run, n, from: replica, sent: 0, failed: [], texts: [], got: new Set(), replayed: 0, live: 0, back: false, at: Date.now() };
  for (let k = 1; k <= n; k += 1) a.texts.push(`away ${k}/${n} · ${run}`);
  drills.away = a;
  renderAway();
  holdReconnect((async () => {
    for (const text of a.texts) {
      try {
        await publishOnce(text, `away-${run}-${text.split(' ')[1]}`);
        a.sent += 1;
      } catch (err) {
        a.failed.push(err.message);
      }
      renderAway();
    }
  })());
}

/** One publish, retried with the same Idempotency-Key while nginx still tries the dead
 *  replica: a repeat with the key delivers nothing twice. */
async function publishOnce(text, key) {
  let last;
  for (let attempt = 0; attempt < 4; attempt += 1) {
    try {
      return await request(`/api/publish/${encodeURIComponent(CLIENT_ID)}`, {
        method: 'POST', credentials: 'omit',
        headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${TOKEN}`, 'Idempotency-Key': key },
        body: JSON.stringify({ text }),
      });
    } catch (err) {
      last = err;
      // A refusal by the replica itself (not nginx failing to reach one) will not change.
      if (err.status && err.status !== 502 && err.status !== 504 && err.code !== 'outcome_unknown') break;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
  throw last;
}

function countAway(frame) {
  const a = drills.away;
  if (!a || frame.via !== 'publish' || !a.texts.includes(frame.text)) return '';
  const named = 'Published by this page while its socket was away';
  if (a.got.has(frame.text)) return named;
  a.got.add(frame.text);
  if (frame.replayed) a.replayed += 1; else a.live += 1;
  renderAway();
  if (a.got.size === a.sent && a.sent === a.n) emit('lesson', 'recovered');
  return named;
}

function renderAway() {
  const node = $('away-result');
  const a = drills.away;
  if (!a) {
    node.dataset.state = 'idle';
    node.textContent = $('away-armed').checked
      ? 'Armed: the next time your socket goes down, the page publishes these before it reconnects.'
      : 'Not armed.';
    return;
  }
  const back = state.wsState === 'open';
  Object.assign(node.dataset, { state: back ? 'back' : 'away', n: a.n, sent: a.sent, recovered: a.got.size,
    replayed: a.replayed, failed: a.failed.length });
  const rows = [];
  rows.push(el('p', { class: 'lab-line' }, `Your socket on ${a.from} went down: published ${a.sent} of ${a.n} to you over HTTP while it was away`,
    a.failed.length ? ` (${a.failed.length} refused: ${a.failed[a.failed.length - 1]})` : '', '.'));
  if (back) {
    const all = a.got.size === a.n;
    rows.push(el('p', { class: `away-count ${all ? 'ok' : 'bad'}`, id: 'away-recovered', 'data-testid': 'away-recovered' },
      `${a.got.size} of ${a.n} recovered`,
      a.got.size ? ` on ${state.wsBy} (${a.replayed} replayed from Redis on reconnect${a.live ? `, ${a.live} live` : ''})` : ''));
  } else {
    rows.push(el('p', { class: 'muted' }, 'Waiting for the socket to come back…'));
  }
  node.replaceChildren(...rows);
}
