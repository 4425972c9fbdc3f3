// The six buttons at work: builds their groups, and follows each press from sending (over the
// socket or over HTTP, with or without the sticky cookie) to its outcome: answered, delivered,
// not delivered, lost or failed. Drawing the entry, the tally and the path is left to feed.js,
// tallies.js and topology.js; socket.js hands over the frames that settle presses.

import { CLIENT_ID, DELIVERY_TIMEOUT_MS, PAGE_BY, REPLAY_TIMEOUT_MS } from './config.js';
import { $, el } from './dom.js';
import { timeNow } from './format.js';
import { GROUPS } from './buttons.js';
import { state } from './state.js';
import { newTally, renderTally } from './tallies.js';
import { addToFeed, renderEntry } from './feed.js';
import { animateOutcome, animateRequest } from './topology.js';
import { noteReplica } from './replicas.js';
import { brokerHealth, isUp, stickyRoute, statusOf } from './truth.js';
import { emit, on } from './events.js';
import { postJson } from './request.js';

/** The buttons, each with its reason and an empty tally, in their groups. */
export function buildGroups() {
  const host = $('groups');
  for (const group of GROUPS) {
    const section = el('section', { class: 'group' },
      el('div', { class: 'group-head' }, el('h3', {}, group.title), el('p', { class: 'group-note' }, group.note)));
    for (const def of group.buttons) {
      state.tallies[def.id] = newTally();
      const button = el('button', { type: 'button', id: def.id, 'data-testid': def.id, class: 'btn',
        'aria-describedby': `why-${def.id} tally-${def.id}` }, def.label);
      button.addEventListener('click', () => press(def));
      const tally = el('div', { class: 'tally', id: `tally-${def.id}`, 'data-testid': `tally-${def.id}`,
        'data-button': def.id });
      section.append(el('div', { class: 'experiment' }, button,
        el('div', { class: 'experiment-body' }, el('p', { class: 'why', id: `why-${def.id}` }), tally)));
    }
    host.append(section);
  }
  renderWhys();
  on('health', renderWhys);
}

/** Each button's reason as it is true now. */
function renderWhys() {
  const cookieStatus = state.cookie ? statusOf(state.cookie) : '';
  const now = {
    cookie: state.cookie, cookieStatus, cookieUp: !state.cookie || isUp(state.cookie),
    wsBy: state.wsState === 'open' ? state.wsBy : '', broker: brokerHealth().state,
  };
  for (const group of GROUPS) {
    for (const def of group.buttons) {
      const text = typeof def.why === 'function' ? def.why(now) : def.why;
      const node = $(`why-${def.id}`);
      if (node && node.textContent !== text) node.textContent = text;
    }
  }
}

/** One press of one button: sends, then follows it until it is answered, delivered or lost. */
function press(def) {
  const seq = ++state.seq;
  const input = $('message').value;
  const p = {
    seq, def, text: input ? `#${seq} ${input}` : `#${seq}`, time: timeNow(),
    took: '', deliveredBy: '', outcome: 'pending', note: '', frame: null, responded: false, timer: 0,
    item: el('li', { class: 'entry', 'data-kind': 'press', 'data-button': def.id,
      'data-transport': def.kind === 'echo' ? 'http' : 'socket', 'data-seq': seq }),
  };
  const t = state.tallies[def.id];
  t.sent += 1;
  t.pending += 1;
  renderEntry(p);
  addToFeed(p.item);
  renderTally(def);
  if (def.kind === 'ws') sendOverSocket(p);
  else sendOverHttp(p);
}

function sendOverSocket(p) {
  if (state.wsState !== 'open' || !state.ws) {
    settle(p, 'error', `the socket is ${state.wsState}; try again when it is open`);
    return;
  }
  state.pending.set(p.text, p);
  state.ws.send(JSON.stringify({ text: p.text }));
  p.took = state.wsBy; // the socket's replica takes whatever is sent on it
  renderEntry(p);
  animateRequest(p);
  p.timer = setTimeout(() => settle(p, 'lost', 'no echo within 3 s'), DELIVERY_TIMEOUT_MS);
}

async function sendOverHttp(p) {
  const { kind, cookie } = p.def;
  // Registered before sending: the socket frame can arrive before the HTTP answer does.
  if (kind !== 'echo') state.pending.set(p.text, p);
  let data;
  try {
    data = await postJson(`/api/${kind}/${encodeURIComponent(CLIENT_ID)}`, { text: p.text }, cookie);
  } catch (err) {
    if (p.frame) settle(p, 'delivered');
    else settle(p, 'error', refusal(kind, err));
    return;
  }
  if (p.outcome !== 'pending') return;
  p.responded = true;
  p.took = data.replica || '';
  noteReplica(p.took);
  animateRequest(p);
  if (kind === 'echo') { settle(p, 'answered', stickyNote(p)); return; }
  if (p.frame) { settle(p, 'delivered', stickyNote(p)); return; }
  if (kind === 'direct' && data.delivered === 0) {
    settle(p, 'not-delivered', `${p.took} holds no socket of this page${state.wsBy ? `; ${state.wsBy} does` : ''}, so the message was dropped`);
  } else if (kind === 'publish' && data.receivers === 0) {
    // Redis keeps it in this client's history: the reconnecting socket gets it replayed.
    p.note = 'no replica held this page’s socket when it was published; Redis keeps it for the reconnect';
    renderEntry(p);
    p.timer = setTimeout(() => settle(p, 'lost', 'no socket took it back within 20 s'), REPLAY_TIMEOUT_MS);
  } else {
    renderEntry(p);
    p.timer = setTimeout(() => settle(p, 'lost', 'accepted, but no socket frame within 3 s'), DELIVERY_TIMEOUT_MS);
  }
}

/** A failed request, with why when the reason is a lesson: a publish refused while Redis is
 *  away is the broker outage, which the in-memory paths do not share. */
function refusal(kind, err) {
  if (err.status === 503 && (kind === 'publish' || err.code === 'broker_unavailable' || err.code === 'outcome_unknown')) {
    emit('lesson', 'publish-503');
    return `${err.message} — Redis is unreachable, so no replica can publish (503); ` +
      'HTTP echo, the in-memory buttons and the socket’s own echo do not need Redis and still work';
  }
  return err.message;
}

/** Why a sticky request did not reach the page's replica, when that happens. */
function stickyNote(p) {
  if (!p.def.cookie || p.def.kind === 'ws' || p.took === PAGE_BY) return '';
  if (!state.cookie) return 'this page forgot its sticky cookie, so nginx spread the request';
  const s = statusOf(PAGE_BY);
  return s === 'up' || s === 'listed'
    ? `the cookie names ${PAGE_BY}, but nginx used a backup`
    : `${stickyRoute()}`;
}

/** Gives a press its final outcome, once; updates its entry, its tally and the picture.
 *  The one change allowed afterwards: a frame arriving after its press was marked lost. */
export function settle(p, outcome, note = '') {
  const late = p.outcome === 'lost' && outcome === 'delivered';
  if (p.outcome !== 'pending' && !late) return;
  const t = state.tallies[p.def.id];
  if (late) {
    t.lost -= 1;
    note = 'arrived late, after the wait';
  } else {
    t.pending -= 1;
  }
  clearTimeout(p.timer);
  // A lost press stays findable for a while, so a late frame still updates it.
  if (outcome === 'lost') setTimeout(() => state.pending.delete(p.text), 60000);
  else state.pending.delete(p.text);
  p.outcome = outcome;
  p.note = note;
  if (outcome === 'delivered' && p.frame) {
    p.deliveredBy = p.frame.replica || '';
    if (!p.took) p.took = p.frame.from || '';
    if (p.frame.replayed) note = 'published while the socket was away; replayed from Redis when it reconnected';
  }
  const bump = (counts, key) => { counts[key] = (counts[key] || 0) + 1; };
  if (outcome === 'answered') t.answered += 1;
  if (outcome === 'delivered') t.delivered += 1;
  if (outcome === 'not-delivered') t.notDelivered += 1;
  if (outcome === 'lost') t.lost += 1;
  if (outcome === 'error') t.errors += 1;
  if (p.took && !late) bump(t.took, p.took);
  if (p.deliveredBy) bump(t.deliveredBy, p.deliveredBy);
  renderEntry(p);
  renderTally(p.def);
  if (outcome !== 'error') animateOutcome(p);
}
