// This page's WebSocket: opening it (with the recovery cursors), its frames, the state shown
// in the header, reconnecting with backoff, and reopening it on purpose. Presses waiting for a
// frame are settled by presses.js; where a welcome landed is told to whoever asked with
// whenWelcomed (the lab's split.js), so this module needs nothing from the lab.

import { BACKOFF_MAX_MS, BACKOFF_MIN_MS, CLIENT_ID, PAGE_BY, TOKEN } from './config.js';
import { $ } from './dom.js';
import { recolour } from './colours.js';
import { state } from './state.js';
import { drawSocketLine } from './topology.js';
import { feedEvent, feedMessage } from './feed.js';
import { noteReplica, noteStopping, noteUnreachable, refreshReplicas, replicasChanged } from './replicas.js';
import { emit } from './events.js';
import { settle } from './presses.js';
import { advanceCursor, parseCursor } from './cursors.js';

/** Called with (welcome frame, whether it is the page's first) after the header shows it. */
const welcomed = [];

export function whenWelcomed(listener) {
  welcomed.push(listener);
}

/** Called with every frame about a channel (subscribed, unsubscribed, presence, a channel's
 *  message, an error naming a channel): the room's (room.js), which this module does not know. */
const channelListeners = [];

export function whenChannelFrame(listener) {
  channelListeners.push(listener);
}

/** Called with every message frame for this client (after duplicates are dropped), before
 *  the feed shows it: the drills panel counts the messages it published while away, and
 *  returns what to call one of them in the feed (a listener returning nothing names none). */
const messageListeners = [];

export function whenMessage(listener) {
  messageListeners.push(listener);
}

/** Called with (replica, close code) when the socket breaks off, before it reconnects. */
const downListeners = [];

export function whenSocketDown(listener) {
  downListeners.push(listener);
}

/** Work the next reconnect waits for (at most RECONNECT_HOLD_MS): publishing while away. */
let held = null;
const RECONNECT_HOLD_MS = 15000;

export function holdReconnect(promise) {
  const limit = new Promise((resolve) => setTimeout(resolve, RECONNECT_HOLD_MS));
  held = Promise.race([promise.catch(() => {}), limit]).finally(() => { held = null; });
}

/** The replica whose socket broke off, until the next welcome says where nginx went. */
let brokeOn = '';

/** Sends a frame on the page's socket; false when it is not open. */
export function sendFrame(frame) {
  if (state.wsState !== 'open' || !state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
  state.ws.send(JSON.stringify(frame));
  return true;
}

/** True while a socket's handshake runs; closing it then is an error in the console. */
export function isConnecting() {
  return !!state.ws && state.ws.readyState === WebSocket.CONNECTING;
}

/** Closes the socket on purpose and opens a new one at once; nginx routes it afresh. */
export function reopen() {
  const old = state.ws;
  clearTimeout(state.retryTimer);
  state.ws = null; // its close event is ours: onClose ignores sockets it no longer holds
  if (old) old.close(1000, 'reconnect');
  state.attempt = 0;
  connect();
}

function setWsState(next, detail = '') {
  state.wsState = next;
  const node = $('ws-state');
  // Only real changes: the state word sits in a live region that a screen reader announces.
  if (node.dataset.state !== next) {
    node.dataset.state = next;
    node.textContent = next;
  }
  if ($('ws-detail').textContent !== detail) $('ws-detail').textContent = detail;
  const wsBy = $('ws-by');
  if (next === 'open') {
    wsBy.textContent = state.wsBy;
    wsBy.dataset.replica = state.wsBy;
    wsBy.className = 'chip';
    recolour();
  } else if (state.wsBy) {
    wsBy.className = 'chip chip-stale';
  }
  $('ws-split').classList.toggle('split-stale', next !== 'open');
  drawSocketLine();
  emit('health');
}

export function connect() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  // With the cursors, the replica replays what was published while the page was away.
  // `page` lets the replica that takes the socket say whether it also rendered the page.
  const query = new URLSearchParams({ token: TOKEN, page: PAGE_BY });
  if (state.lastId) query.set('last_id', state.lastId);
  if (state.lastBroadcastId) query.set('last_broadcast_id', state.lastBroadcastId);
  const url = `${scheme}//${location.host}/ws/${encodeURIComponent(CLIENT_ID)}?${query}`;
  setWsState('connecting', state.attempt ? `attempt ${state.attempt + 1}` : '');
  const ws = new WebSocket(url);
  state.ws = ws;
  ws.addEventListener('message', (e) => onFrame(e.data));
  ws.addEventListener('close', (e) => onClose(ws, e));
  // 'error' is always followed by 'close', which does the work.
}

function onFrame(raw) {
  let frame;
  try { frame = JSON.parse(raw); } catch { return; }
  if (frame.type === 'welcome') onWelcome(frame);
  else if (typeof frame.channel === 'string' || frame.via === 'channel') {
    for (const listener of channelListeners) listener(frame);
  } else if (frame.type === 'message') onMessage(frame);
  else if (frame.type === 'history_lost') onHistoryLost(frame);
  else if (frame.type === 'error') feedEvent(`the socket’s replica refused a frame: ${frame.code}: ${frame.message}`, 'bad');
}

function onHistoryLost(frame) {
  const what = frame.stream === 'broadcast' ? 'broadcasts' : 'messages to this page';
  const item = feedEvent(`Some ${what} sent while the socket was away may be missing: ${frame.message}`, 'bad');
  item.dataset.historyLost = frame.stream || '';
}

function onWelcome(frame) {
  const previous = state.wsBy;
  // nginx routed around the replica the socket broke off from: the page saw it fail.
  if (brokeOn && brokeOn !== frame.replica) noteUnreachable(brokeOn);
  brokeOn = '';
  // A replica that takes a new socket is not stopping (any more).
  if (state.stopping.delete(frame.replica)) replicasChanged();
  state.wsBy = frame.replica;
  // Where the histories stood when the page first connected; later welcomes echo the cursors.
  if (!state.lastId && parseCursor(frame.last_id)) state.lastId = frame.last_id;
  if (!state.lastBroadcastId && parseCursor(frame.last_broadcast_id)) state.lastBroadcastId = frame.last_broadcast_id;
  state.attempt = 0; // a welcome, not just an open, proves the socket works
  noteReplica(frame.replica);
  let detail = '';
  if (previous && previous !== frame.replica) {
    detail = `moved from ${previous}`;
    let hint = '';
    if (frame.replica !== PAGE_BY) {
      hint = state.cookie ? `; the cookie still names ${PAGE_BY}, so reload the page for one that matches`
        : '; with no sticky cookie, nginx spreads sockets round robin';
    }
    feedEvent(`socket moved from ${previous} to ${frame.replica}${hint}`, 'warn');
  } else if (!previous && frame.replica !== PAGE_BY) {
    detail = `not ${PAGE_BY}, which rendered the page`;
    feedEvent(`socket opened on ${frame.replica}, not on ${PAGE_BY} that rendered the page (nginx used a backup)`, 'warn');
  } else {
    feedEvent(`socket ${previous ? 'reopened' : 'opened'} on ${frame.replica}`);
  }
  setWsState('open', detail);
  for (const listener of welcomed) listener(frame, !previous);
  // Socket counts changed: the replicas announce them every 2 s.
  setTimeout(refreshReplicas, 300);
  setTimeout(refreshReplicas, 2500);
}

function onMessage(frame) {
  if (!advanceCursor(frame)) { state.duplicates += 1; return; }
  noteReplica(frame.from);
  noteReplica(frame.replica);
  // A listener that recognises the message (one the page published itself) names it.
  let what = '';
  for (const listener of messageListeners) what = listener(frame) || what;
  const p = state.pending.get(frame.text);
  if (!p) { feedMessage(frame, what); return; }
  p.frame = frame;
  // A press over HTTP waits for its answer too; it names the replica that took the request.
  if (p.def.kind === 'ws' || p.responded || p.outcome === 'lost') settle(p, 'delivered');
}

/** Said when the replica gave no reason of its own. 1012 is the protocol's "service
 *  restart", but a replica sends it whenever it stops: whether anything starts it again is
 *  not the socket's to know, so the page does not claim it. */
const CLOSE_REASONS = {
  1000: 'closed normally', 1001: 'replica going away', 1006: 'connection lost (the replica did not close it)',
  1011: 'server error', 1012: 'replica stopping', 1013: 'replica busy, try again later',
};

function onClose(ws, e) {
  if (ws !== state.ws) return;
  state.ws = null;
  // Older replicas said "restarting" (1012's name in the protocol) whether or not anything
  // would start them again: the page says only what it knows, that the replica stopped.
  const reason = e.code === 1012 && /restart/i.test(e.reason) ? '' : e.reason;
  const said = reason || CLOSE_REASONS[e.code] || 'closed';
  const why = said.includes(`(${e.code})`) ? said : `${said} (${e.code})`;
  const was = state.wsState === 'open' ? state.wsBy : '';
  if (was) {
    feedEvent(`socket on ${was} closed: ${why}`, 'warn');
    brokeOn = e.code === 1000 ? '' : was;
    // 1012 also asks a socket whose missed messages cannot be filled to resume elsewhere.
    if ((e.code === 1012 || e.code === 1001) && !/resume/i.test(e.reason)) noteStopping(was);
    for (const listener of downListeners) listener(was, e.code);
  }
  if (state.unloading) { setWsState('closed'); return; }
  scheduleReconnect(why);
}

/** Exponential backoff with jitter, so replicas that restart are not hit by every page at once. */
function scheduleReconnect(why) {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
  const delay = base / 2 + Math.random() * base / 2;
  state.attempt += 1;
  const until = performance.now() + delay;
  const tick = () => {
    const left = until - performance.now();
    if (left <= 0 && held) {
      setWsState('reconnecting', `${why}; waiting for the publishes made while away`);
      held.then(() => { if (!state.ws) state.retryTimer = setTimeout(tick, 0); });
      return;
    }
    if (left <= 0) { connect(); return; }
    setWsState('reconnecting', `${why}; retrying in ${Math.ceil(left / 1000)} s`);
    state.retryTimer = setTimeout(tick, Math.min(left, 250));
  };
  tick();
}
