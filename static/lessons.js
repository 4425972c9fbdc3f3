// The guided path, "try this next": every lesson of the page in order, each ticked off when
// the page has seen it happen (a press's outcome, a landing, a frame, a drill), the first one
// not yet done marked as next. Each step's text is built when it is shown, from what the page
// knows then (the cookie, the socket's replica, whether drills are on, Redis's health), so a
// step never asks for what cannot be done here. The facts come from the modules that own
// them; this one only reads them.

import { CLIENT_ID, PAGE_BY } from './config.js';
import { $, el } from './dom.js';
import { state } from './state.js';
import { on } from './events.js';
import { whenMessage } from './socket.js';
import { notesRebuilt } from './notes.js';
import { splitSeen } from './split.js';
import { roomSnapshot } from './room.js';
import { drillsDone, drillsOn } from './drills.js';
import { recordsShown } from './records-log.js';
import { brokerHealth, isUp, statusOf } from './truth.js';

const seen = { broadcast: false, otherTab: null, recovered: false, publish503: false, restarted: false };

const tally = (id) => state.tallies[id] || {};
const replicasIn = (counts) => Object.keys(counts || {}).length;

/** The steps: id, title, whether done, and what to do (text true at the moment it is shown). */
function steps() {
  const on_ = state.wsState === 'open' ? state.wsBy : '';
  const drill = drillsOn();
  const done = drillsDone();
  const redis = brokerHealth().state;
  const needDrills = 'Needs fault drills, which this deployment does not offer (they come with `stickyws cluster`).';
  return [
    { id: 'round-robin', title: 'Round robin', done: replicasIn(tally('btn-echo-rr').took) >= 2,
      todo: 'Press “HTTP & round robin” a few times: the answers come from different replicas.' },
    { id: 'sticky', title: 'Sticky', done: tally('btn-echo-sticky').answered > 0,
      todo: !state.cookie ? 'This page has no sticky cookie now; reload it to get one, then press “HTTP & sticky”.'
        : isUp(state.cookie) ? `Press “HTTP & sticky”: the cookie names ${state.cookie}, so ${state.cookie} answers every time.`
          : `Press “HTTP & sticky”: the cookie names ${state.cookie}, which is ${statusOf(state.cookie)}, so nginx answers from a backup; reload the page for a cookie naming a live replica.` },
    { id: 'socket', title: 'A socket lives in one process', done: tally('btn-ws').delivered > 0,
      todo: on_ ? `Press “WebSocket only”: ${on_}, which holds your socket, answers on it.` : 'Wait for the socket to open, then press “WebSocket only”.' },
    { id: 'lost', title: 'In-memory delivery is lost without stickiness', done: tally('btn-direct-rr').notDelivered > 0,
      todo: 'Press “Non-sticky HTTP & in-memory WebSocket” until one is not delivered: it landed on a replica without your socket.' },
    { id: 'broker', title: 'The broker fixes it', done: tally('btn-publish').delivered > 0,
      todo: redis === 'down' ? 'Redis is down right now, so a publish is refused (503); start it again, then press “Publish through Redis”.'
        : 'Press “Publish through Redis”: whichever replica takes it, the one holding your socket delivers it.' },
    { id: 'state', title: 'State kept in one replica’s memory', done: notesRebuilt() > 0,
      todo: 'In the state lab, tick “Send these without my sticky cookie” and add notes in memory until a replica that never saw you starts them over.' },
    { id: 'split', title: 'Page on one replica, socket on another', done: splitSeen(),
      todo: state.cookie ? 'Press “Forget my sticky cookie”, then “Reconnect my socket” until the header says split.'
        : 'Press “Reconnect my socket” until the header says split (no cookie now, so nginx may put it anywhere).' },
    { id: 'room', title: 'One message to every replica with a member', done: roomSnapshot().messages.length > 0 && !!roomSnapshot().second,
      todo: 'Join the room, open a second member, and send: each replica holding a member delivers it.' },
    { id: 'broadcast', title: 'Broadcast to everyone', done: seen.broadcast,
      todo: `Broadcast needs the API key (\`stickyws cluster\` prints it): curl -X POST ${location.origin}/api/broadcast -H "Authorization: Bearer $API_KEY" -H 'Content-Type: application/json' -d '{"text":"hi all"}'` },
    { id: 'second-tab', title: 'A second tab', done: !!seen.otherTab,
      todo: seen.otherTab ? '' : 'Open this page in another tab: a new client with its own socket, maybe on another replica (this tab will say where).',
      doneText: seen.otherTab ? `another tab is client ${seen.otherTab.client.slice(0, 8)}… with its socket on ${seen.otherTab.replica || '…'}` : '' },
    { id: 'kill', title: 'A replica dies; its messages are recovered', done: done.has('kill') && seen.recovered,
      todo: drill ? `In Fault drills, keep “publish while I’m away” on and kill ${on_ || 'the replica holding your socket'}: the socket moves and every message published meanwhile comes back.` : needDrills },
    { id: 'drain', title: 'A replica drains', done: done.has('drain'),
      todo: drill ? 'Drain a replica: it closes its sockets (1012) and exits; yours reconnects elsewhere if it was there.' : needDrills },
    { id: 'restart', title: 'A restart loses what was in memory', done: seen.restarted,
      todo: drill ? 'Restart a replica: once it is back, its own visit counter has started over, the Redis one has not.' : needDrills },
    { id: 'redis-stop', title: 'Redis dies: what still works', done: done.has('redis-stop') && seen.publish503,
      todo: drill ? (redis === 'down' ? 'Redis is down: press “Publish through Redis” (503) and the in-memory buttons (they still work).'
        : 'Stop Redis, then press “Publish through Redis” (refused, 503) and the in-memory buttons (they still work).') : needDrills },
    { id: 'redis-start', title: 'Redis comes back', done: done.has('redis-start') || done.has('redis-freeze'),
      todo: drill ? 'Start Redis again (or freeze it for a few seconds): the Redis box turns green and publishes work again.' : needDrills },
    { id: 'records', title: 'The records log', done: recordsShown() > 0,
      todo: `Press “Show my records”: every replica’s lines about client ${CLIENT_ID.slice(0, 8)}…, from rendering the page on ${PAGE_BY} on.` },
  ];
}

export function buildLessons() {
  whenMessage((frame) => { if (frame.via === 'broadcast') { seen.broadcast = true; render(); } });
  on('lesson', (what) => {
    if (what === 'recovered') seen.recovered = true;
    if (what === 'publish-503') seen.publish503 = true;
    if (what === 'restarted') seen.restarted = true;
    render();
  });
  on('health', render);
  tabs();
  render();
  setInterval(render, 1000);
}

/** Tabs of this page find each other over a BroadcastChannel: each says who it is. */
function tabs() {
  if (typeof BroadcastChannel !== 'function') return;
  const channel = new BroadcastChannel('stickyws-tabs');
  const hello = (kind) => channel.postMessage({ kind, client: CLIENT_ID, replica: state.wsBy });
  channel.addEventListener('message', (e) => {
    const m = e.data || {};
    if (typeof m.client !== 'string' || m.client === CLIENT_ID) return;
    seen.otherTab = { client: m.client, replica: typeof m.replica === 'string' ? m.replica : '' };
    if (m.kind === 'hello') hello('here');
    render();
  });
  hello('hello');
  on('health', () => { if (state.wsState === 'open') hello('here'); });
}

let shown = '';

function render() {
  const list = steps();
  const next = list.find((s) => !s.done);
  const key = JSON.stringify(list.map((s) => [s.done, s.todo, s.doneText || '']).concat(next ? next.id : ''));
  if (key === shown) return;
  shown = key;
  const done = list.filter((s) => s.done).length;
  $('lessons-progress').textContent = `${done} of ${list.length} done`;
  const items = list.map((s, i) => {
    const li = el('li', { class: 'lesson', 'data-lesson': s.id, 'data-done': String(s.done), 'data-next': String(s === next) },
      el('span', { class: 'lesson-mark', 'aria-hidden': 'true' }, s.done ? '✓' : String(i + 1)),
      el('span', { class: 'lesson-body' }, el('b', {}, s.title),
        s.done ? el('span', { class: 'lesson-done' }, s.doneText ? ` — done: ${s.doneText}` : ' — done')
          : el('span', { class: 'lesson-todo' }, ` — ${s.todo}`)));
    if (s === next) li.setAttribute('aria-current', 'step');
    return li;
  });
  $('lessons').replaceChildren(...items);
  const at = next ? list.indexOf(next) + 1 : 0;
  const line = $('lesson-next');
  line.dataset.lesson = next ? next.id : '';
  if (next) line.replaceChildren(el('span', { class: 'lesson-mark' }, String(at)), el('b', {}, next.title), ` — ${next.todo}`);
  else line.replaceChildren(el('b', {}, 'Every lesson done.'), ' Open a second tab, or run a drill again and watch the page.');
  $('lesson-dots').replaceChildren(...list.map((s, i) => el('li', {
    class: 'lesson-dot', 'data-done': String(s.done), 'data-next': String(s === next), title: s.title,
  }, s.done ? '✓' : String(i + 1))));
}
