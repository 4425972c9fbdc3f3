// The room: the page joins a channel (public:lobby, or one it names) over its own socket and
// chats with whoever else is in it, on any replica. Each message shows the replica that took
// it and, for every socket of this page in the room, the replica that delivered it there; the
// member list (GET /api/channels/{c}/presence) shows which replica holds each member, and
// join/leave frames appear as they come. After the page's socket reconnects the room is
// joined again from the last cursor seen, and what it missed comes back marked as replayed.
// The page's socket is socket.js's; the second member's socket is member.js's.

import { CLIENT_ID, TOKEN } from './config.js';
import { $, el } from './dom.js';
import { timeNow } from './format.js';
import { chip } from './colours.js';
import { state } from './state.js';
import { isNewer } from './cursors.js';
import { request } from './request.js';
import { noteReplica } from './replicas.js';
import { sendFrame, whenChannelFrame, whenWelcomed } from './socket.js';
import { openMember } from './member.js';

/** The channel name rules, for a room anyone with a client token may join. */
const ROOM_NAME = /^public:[A-Za-z0-9_.:-]{1,121}$/;
/** Lines the log keeps, oldest dropped first. */
const LOG_MAX = 200;
/** The page's sockets in the room, as messages name them. */
const YOU = 'you';
const SECOND = 'second member';

const room = {
  /** The room joined (or being joined); '' when out. */
  channel: '',
  /** 'out' | 'joining' | 'in' */
  status: 'out',
  /** The newest cursor of the room's history the page's socket has seen: `since` on rejoin. */
  cursor: null,
  /** Joins made on this socket so far, to tell a rejoin after a reconnect from the first. */
  joins: 0,
  /** cursor -> the message's log line and who delivered it to which of the page's sockets. */
  messages: new Map(),
  members: [],
  membersError: '',
  second: null,
  error: '',
};

export function buildRoom() {
  $('room-join').addEventListener('submit', (e) => { e.preventDefault(); join($('room-name').value.trim()); });
  $('btn-room-leave').addEventListener('click', leave);
  $('room-say').addEventListener('submit', (e) => { e.preventDefault(); say(YOU); });
  $('btn-room-send-second').addEventListener('click', () => say(SECOND));
  $('btn-second').addEventListener('click', toggleSecond);
  whenChannelFrame((frame) => onFrame(frame, YOU));
  whenWelcomed(rejoin);
  render();
}

/** A plain snapshot of the room for the page's window.stickyws.state(). */
export function roomSnapshot() {
  return {
    channel: room.channel, status: room.status, cursor: room.cursor,
    messages: [...room.messages.values()].map((m) => ({ text: m.text, from: m.from, cursor: m.cursor,
      replayed: m.replayed, deliveredBy: Object.fromEntries(m.deliveredBy) })),
    members: room.members,
    second: room.second && { clientId: room.second.clientId, replica: room.second.replica, status: room.second.status },
  };
}

/** The room the page would join: its name field's, when the name is one a join accepts, else ''. */
export function roomToJoin() {
  const name = $('room-name').value.trim();
  return ROOM_NAME.test(name) ? name : '';
}

function join(name) {
  if (!ROOM_NAME.test(name)) {
    room.error = 'A room here is named public: then 1 to 121 letters, digits or _ . : -';
    render();
    return;
  }
  if (room.channel === name && room.status !== 'out') return;
  if (room.status !== 'out') leave();
  Object.assign(room, { channel: name, status: 'joining', cursor: null, joins: 0, error: '', members: [], membersError: '' });
  room.messages.clear();
  $('room-log').replaceChildren();
  subscribe();
  render();
}

/** Subscribes the page's socket, from the last cursor seen once it has seen one. */
function subscribe() {
  const frame = { type: 'subscribe', channel: room.channel };
  if (room.cursor) frame.since = room.cursor;
  // Not open: the next welcome subscribes (rejoin).
  if (sendFrame(frame)) room.joins += 1;
}

/** After every welcome: a socket starts with no channels, so the room is joined again. */
function rejoin() {
  if (room.status !== 'out') {
    room.status = 'joining';
    subscribe();
  }
  render();
}

function leave() {
  if (room.status === 'out') return;
  sendFrame({ type: 'unsubscribe', channel: room.channel });
  closeSecond();
  logLine('presence', `you left ${room.channel}`, { event: 'left' });
  Object.assign(room, { status: 'out', members: [], membersError: '' });
  render();
}

function say(who) {
  const input = $('room-text');
  const text = input.value.trim();
  if (!text || room.status !== 'in') return;
  const frame = { type: 'publish', channel: room.channel, text };
  const sent = who === SECOND ? room.second && room.second.send(frame) : sendFrame(frame);
  if (!sent) { room.error = `${who === SECOND ? 'the second member’s' : 'your'} socket is not open`; render(); return; }
  room.error = '';
  input.value = '';
  render();
}

/** A frame about a channel, from one of the page's sockets (`who`). */
function onFrame(frame, who) {
  if (frame.channel !== room.channel || room.status === 'out') return;
  if (frame.type === 'message') onMessage(frame, who);
  else if (frame.type === 'subscribed' && who === YOU) onSubscribed(frame);
  else if (frame.type === 'presence') onPresence(frame, who);
  else if (frame.type === 'error') {
    room.error = `${who === YOU ? 'your' : 'the second member’s'} socket was refused: ${frame.code}: ${frame.message}`;
    if (who === YOU && room.status === 'joining') room.status = 'out';
    render();
  }
}

function onSubscribed(frame) {
  const rejoined = room.joins > 1;
  room.status = 'in';
  if (frame.recovered === false) {
    logLine('lost', `Messages sent to ${room.channel} while your socket was away may be missing: its history was lost`, { lost: 'true' });
  }
  // The first join starts from now; a rejoin keeps its cursor until the replayed messages move it.
  if (!room.cursor || frame.recovered === false) room.cursor = frame.cursor;
  if (rejoined) logLine('presence', `you rejoined ${room.channel} on ${state.wsBy} after your socket reconnected`, { event: 'rejoined' });
  refreshMembers();
  render();
}

function onMessage(frame, who) {
  noteReplica(frame.from);
  noteReplica(frame.replica);
  if (who === YOU && isNewer(frame.cursor, room.cursor)) room.cursor = frame.cursor;
  if (who === SECOND && room.second) room.second.seen(frame.cursor);
  // One line per message however many of the page's sockets it reached; without a cursor
  // (no history kept) it cannot be matched, so each copy is a line of its own.
  const key = frame.cursor || `${frame.from}|${frame.text}|${Math.random()}`;
  let m = room.messages.get(key);
  if (!m) {
    m = { text: frame.text, from: frame.from, cursor: frame.cursor || '', replayed: !!frame.replayed,
      deliveredBy: new Map(), item: el('li', { class: 'room-line room-message', 'data-kind': 'message' }) };
    room.messages.set(key, m);
    appendLog(m.item);
  }
  m.deliveredBy.set(who, frame.replica);
  renderMessage(m);
}

function renderMessage(m) {
  // Your socket first, whichever of them it reached first.
  const sockets = [YOU, SECOND].filter((who) => m.deliveredBy.has(who)).map((who) => [who, m.deliveredBy.get(who)]);
  const delivered = sockets.map(([who, replica]) => `${who}=${replica}`).join(',');
  Object.assign(m.item.dataset, { from: m.from, cursor: m.cursor, delivered, replayed: String(m.replayed) });
  const path = el('div', { class: 'room-path' }, 'taken by ', chip(m.from), ' → delivered by ');
  sockets.forEach(([who, replica], i) => {
    if (i) path.append(', ');
    path.append(chip(replica), ` to ${who}`);
  });
  if (m.replayed) path.append(' ', el('span', { class: 'badge badge-recovered' }, 'replayed after reconnect'));
  const text = el('div', { class: 'room-text' });
  text.textContent = m.text;
  m.item.replaceChildren(text, path);
}

function onPresence(frame, who) {
  noteReplica(frame.replica);
  // Both of the page's sockets get every join and leave: the page's own socket tells them.
  if (who === YOU) {
    const verb = frame.event === 'join' ? 'joined on' : 'left';
    logLine('presence', `${nameOf(frame.client_id)} ${verb} `, { event: frame.event, clientId: frame.client_id, replica: frame.replica },
      chip(frame.replica));
  }
  refreshMembers();
}

/** Who a client id is, as this page knows it. */
function nameOf(clientId) {
  if (clientId === CLIENT_ID) return 'you';
  if (room.second && clientId === room.second.clientId) return 'your second member';
  return clientId;
}

function logLine(kind, text, data = {}, ...after) {
  const item = el('li', { class: `room-line room-${kind}`, 'data-kind': kind },
    el('span', { class: 'entry-time' }, timeNow()), ' ');
  Object.assign(item.dataset, data);
  item.append(text, ...after);
  appendLog(item);
}

function appendLog(item) {
  const log = $('room-log');
  log.append(item);
  while (log.children.length > LOG_MAX) log.firstElementChild.remove();
  log.scrollTop = log.scrollHeight;
}

/** The member list, from the presence endpoint; a burst of joins is fetched once. */
let membersTimer = 0;
function refreshMembers() {
  clearTimeout(membersTimer);
  membersTimer = setTimeout(fetchMembers, 100);
}

async function fetchMembers() {
  const channel = room.channel;
  if (room.status === 'out') return;
  let data;
  try {
    data = await request(`/api/channels/${encodeURIComponent(channel)}/presence`, {
      credentials: 'omit', headers: { Authorization: `Bearer ${TOKEN}`, 'X-Client-Id': CLIENT_ID },
    });
  } catch (err) {
    room.membersError = err.message;
    render();
    return;
  }
  if (channel !== room.channel || room.status === 'out') return;
  room.members = (data.clients || []).map((c) => ({ clientId: c.client_id, replicas: c.replicas || [c.replica], sockets: c.sockets }));
  room.membersError = '';
  render();
}

async function toggleSecond() {
  if (room.second) { closeSecond(); render(); return; }
  if (room.status !== 'in') return;
  const channel = room.channel;
  $('btn-second').disabled = true;
  try {
    room.second = await openMember(channel, {
      avoid: () => state.wsBy,
      frame: (frame) => onFrame(frame, SECOND),
      changed: render,
    });
  } catch (err) {
    room.error = `could not open a second member: ${err.message}`;
  }
  $('btn-second').disabled = false;
  render();
}

function closeSecond() {
  if (!room.second) return;
  room.second.close();
  room.second = null;
}

function render() {
  const inRoom = room.status !== 'out';
  const status = $('room-status');
  status.dataset.status = room.status;
  status.textContent = { out: 'not in a room', joining: `joining ${room.channel}…`, in: `in ${room.channel}` }[room.status];
  $('btn-room-leave').disabled = !inRoom;
  $('btn-room-send').disabled = room.status !== 'in';
  $('btn-room-send-second').disabled = room.status !== 'in' || !room.second || room.second.status !== 'open';
  const second = $('btn-second');
  second.textContent = room.second ? 'Close the second member' : 'Open a second member';
  if (!room.second) second.disabled = room.status !== 'in';
  const error = $('room-error');
  error.textContent = room.error;
  error.hidden = !room.error;
  renderSockets();
  renderMembers();
}

/** Which replica each of the page's sockets in the room is on. */
function renderSockets() {
  const rows = [];
  const you = el('li', { id: 'room-socket-you', 'data-testid': 'room-socket-you', 'data-member': YOU, 'data-replica': state.wsBy || '' },
    el('b', {}, 'You'), ' — socket on ', state.wsBy ? chip(state.wsBy) : el('span', { class: 'muted' }, '…'));
  rows.push(you);
  const s = room.second;
  if (s) {
    const row = el('li', { id: 'room-socket-second', 'data-testid': 'room-socket-second', 'data-member': SECOND, 'data-replica': s.status === 'open' ? s.replica : '',
      'data-client-id': s.clientId, 'data-status': s.status },
    el('b', {}, 'Second member'), ` (client ${s.clientId}) — `);
    if (s.status === 'open') row.append('socket on ', chip(s.replica));
    else row.append(el('span', { class: 'muted' }, `${s.status}…`));
    if (s.status === 'open' && s.sharedWith && s.replica !== s.sharedWith) {
      row.append(el('span', { class: 'muted' }, ` (first landed on ${s.sharedWith} too; reopened ${s.tries - 1}×)`));
    } else if (s.status === 'open' && s.replica === state.wsBy) {
      row.append(el('span', { class: 'muted' }, ' (the same replica as yours: close it and open another to try again)'));
    }
    rows.push(row);
  }
  $('room-sockets').replaceChildren(...rows);
}

function renderMembers() {
  const list = $('room-members');
  if (room.status === 'out') {
    list.replaceChildren(el('li', { class: 'muted' }, 'Join a room to see who is in it.'));
    return;
  }
  const rows = room.members.map((m) => {
    const row = el('li', { 'data-client-id': m.clientId, 'data-replicas': m.replicas.join(' ') },
      el('span', { class: nameOf(m.clientId) === m.clientId ? 'room-who room-id' : 'room-who' }, nameOf(m.clientId)), ' on ');
    m.replicas.forEach((r, i) => { if (i) row.append(', '); row.append(chip(r)); });
    if (m.sockets > 1) row.append(el('span', { class: 'muted' }, ` · ${m.sockets} sockets`));
    return row;
  });
  if (!rows.length) rows.push(el('li', { class: 'muted' }, 'Nobody yet.'));
  if (room.membersError) rows.push(el('li', { class: 'bad' }, `Could not list the members: ${room.membersError}`));
  list.replaceChildren(...rows);
}
