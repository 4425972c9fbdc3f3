// A second member of the room, in this same page: a client of its own (minted with
// POST /api/clients), with its own socket, so one person can watch a message fan out to a
// member on another replica. Its socket is opened without the page's sticky cookie counting:
// a cookie `sticky=none` scoped to this socket's path alone comes first in the request, so
// nginx, which reads the first `sticky` it finds, spreads it round robin instead of sending
// it to the page's replica. What the room does with its frames is room.js's.

import { request } from './request.js';

/** Reopens a socket that landed on the replica to avoid, at most this many times in all. */
const MAX_TRIES = 8;
const RETRY_MS = 1000;

/** Opens a second member and subscribes it to `channel`.
 *  hooks: avoid() -> the replica it should rather not share; frame(frame); changed(). */
export async function openMember(channel, hooks) {
  const minted = await request('/api/clients', { method: 'POST', credentials: 'omit' });
  const m = {
    clientId: minted.client_id, token: minted.token, channel,
    replica: '', status: 'connecting', tries: 0, sharedWith: '', closed: false,
    cursor: null, ws: null, timer: 0,
  };
  // Path-scoped to this client's socket only: the page's own requests keep their cookie.
  document.cookie = `sticky=none; Path=${wsPath(m)}; SameSite=Lax`;
  connect(m, hooks);
  return {
    get clientId() { return m.clientId; },
    get replica() { return m.replica; },
    get status() { return m.status; },
    get tries() { return m.tries; },
    get sharedWith() { return m.sharedWith; },
    /** Sends a frame on its socket; false when it is not open. */
    send(frame) {
      if (!m.ws || m.ws.readyState !== WebSocket.OPEN) return false;
      m.ws.send(JSON.stringify(frame));
      return true;
    },
    /** The newest channel cursor it saw, passed as `since` when it reconnects. */
    seen(cursor) { m.cursor = cursor; },
    close() {
      m.closed = true;
      m.status = 'closed';
      clearTimeout(m.timer);
      // Closing a socket mid-handshake is an error in the console: let it open, then close.
      if (m.ws && m.ws.readyState === WebSocket.CONNECTING) m.ws.addEventListener('open', () => m.ws.close(1000));
      else if (m.ws) m.ws.close(1000, 'member closed');
      document.cookie = `sticky=; Path=${wsPath(m)}; Max-Age=0; SameSite=Lax`;
    },
  };
}

const wsPath = (m) => `/ws/${encodeURIComponent(m.clientId)}`;

function connect(m, hooks) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const query = new URLSearchParams({ token: m.token });
  const ws = new WebSocket(`${scheme}//${location.host}${wsPath(m)}?${query}`);
  m.ws = ws;
  m.tries += 1;
  m.status = 'connecting';
  hooks.changed();
  ws.addEventListener('message', (e) => {
    let frame;
    try { frame = JSON.parse(e.data); } catch { return; }
    if (frame.type === 'welcome') welcomed(m, ws, frame, hooks);
    else hooks.frame(frame);
  });
  ws.addEventListener('close', () => {
    if (ws !== m.ws || m.closed) return;
    m.status = 'reconnecting';
    hooks.changed();
    m.timer = setTimeout(() => connect(m, hooks), RETRY_MS);
  });
}

function welcomed(m, ws, frame, hooks) {
  m.replica = frame.replica;
  const avoid = hooks.avoid();
  // Round robin may well hand it the page's replica; a few fresh tries usually find another.
  if (frame.replica === avoid && m.tries < MAX_TRIES && !m.cursor) {
    m.sharedWith = avoid;
    m.ws = null;
    ws.close(1000, 'landed on the page socket\u2019s replica');
    connect(m, hooks);
    return;
  }
  m.status = 'open';
  const subscribe = { type: 'subscribe', channel: m.channel };
  if (m.cursor) subscribe.since = m.cursor;
  ws.send(JSON.stringify(subscribe));
  hooks.changed();
}
