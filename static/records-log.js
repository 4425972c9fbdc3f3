// The records log panel: the newest lines of the shared records log that name this page's
// client (GET /api/records/{client_id}, at most 50), so a person can follow one client's
// trail through the replicas: page, connect, publish, deliver, not-here, replay. Refreshed on
// demand and, while "follow" is on, every 2 s. What a line means is the log's (records.rs).

import { CLIENT_ID, TOKEN } from './config.js';
import { $, el } from './dom.js';
import { chip } from './colours.js';
import { request } from './request.js';
import { emit } from './events.js';

const FOLLOW_MS = 2000;
const shown = { at: 0, lines: 0, timer: 0 };

export const recordsShown = () => shown.lines;

export function buildRecords() {
  $('btn-records').addEventListener('click', refresh);
  $('records-follow').addEventListener('change', follow);
  follow();
}

function follow() {
  clearInterval(shown.timer);
  if ($('records-follow').checked) shown.timer = setInterval(() => { if (!document.hidden) refresh(); }, FOLLOW_MS);
}

async function refresh() {
  const node = $('records');
  const status = $('records-status');
  let data;
  try {
    data = await request(`/api/records/${encodeURIComponent(CLIENT_ID)}`, {
      credentials: 'omit', headers: { Authorization: `Bearer ${TOKEN}` },
    });
  } catch (err) {
    node.dataset.state = err.code || 'error';
    status.textContent = err.code === 'records_off'
      ? 'The records log is off on this deployment (RECORDS_LOG=off): there is nothing to show.'
      : `Could not read the records log: ${err.message}`;
    return;
  }
  const lines = Array.isArray(data.lines) ? data.lines.map(String) : [];
  node.dataset.state = 'shown';
  node.dataset.lines = lines.length;
  const list = el('ol', { class: 'records-lines', 'aria-label': 'Records log lines naming this client, oldest first' });
  for (const text of lines) {
    const [time, replica, event, , detail] = text.split(' | ').map((p) => p.trim());
    const item = el('li', { class: 'records-line', 'data-event': event || '' },
      el('span', { class: 'records-time' }, (time || '').replace(/^.*T/, '').replace('Z', '')), ' ',
      replica ? chip(replica) : '', ' ', el('b', {}, event || ''), ' ', el('span', { class: 'records-detail' }, detail || ''));
    item.title = text;
    list.append(item);
  }
  node.replaceChildren(list);
  status.replaceChildren(`${lines.length} line${lines.length === 1 ? '' : 's'} naming this client (newest ${data.max_lines || 50} at most), read by `,
    chip(data.replica || '?'), ` from the log every replica appends to.`);
  // The newest line in view, scrolling the panel only, never the page.
  node.scrollTop = node.scrollHeight;
  shown.lines = lines.length;
  if (lines.length) emit('lesson', 'records');
}
