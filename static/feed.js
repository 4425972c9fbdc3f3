// The results feed, newest first: one entry per press (rendered anew as it settles), socket
// events, messages no press sent, and the HTTP / Socket filter. Presses themselves are
// presses.js's; lab entries are built by lab-common.js and added here.

import { FEED_MAX } from './config.js';
import { $, el } from './dom.js';
import { timeNow } from './format.js';
import { chip } from './colours.js';
import { state } from './state.js';

export function addToFeed(item) {
  const feed = $('feed');
  feed.prepend(item);
  while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  $('feed-empty').hidden = true;
}

/** A connection event (not a press), shown in the socket view of the feed. */
export function feedEvent(message, tone = 'info') {
  const item = el('li', { class: `entry event event-${tone}`, 'data-kind': 'event', 'data-transport': 'socket' });
  item.append(el('span', { class: 'entry-time' }, timeNow()), el('span', { class: 'event-text' }));
  item.lastChild.textContent = message;
  addToFeed(item);
  return item;
}

const MESSAGE_FROM_ELSEWHERE = {
  broadcast: 'Broadcast', publish: 'Published from elsewhere', direct: 'Direct message from elsewhere',
};

/** A message that no press of this page sent: a broadcast, a publish by a script, or one the
 *  drills panel published while the socket was away (`named` says so). */
export function feedMessage(frame, named = '') {
  const what = named || MESSAGE_FROM_ELSEWHERE[frame.via] || `A ${frame.via} message from elsewhere`;
  const item = feedEvent(`${what}, taken by ${frame.from}, delivered by ${frame.replica}: ${frame.text}`,
    frame.replayed ? 'recovered' : 'info');
  item.dataset.via = frame.via;
  if (frame.id) item.dataset.id = frame.id;
  if (frame.cursor) item.dataset.cursor = frame.cursor;
  if (frame.replayed) {
    item.dataset.replayed = 'true';
    item.lastChild.append(' ', el('span', { class: 'badge badge-recovered' }, 'recovered after reconnect'));
  }
}

export function renderEntry(press) {
  const { def, item } = press;
  Object.assign(item.dataset, {
    took: press.took, deliveredBy: press.deliveredBy, outcome: press.outcome,
  });
  const head = el('div', { class: 'entry-head' },
    el('span', { class: 'entry-tag' }, `#${press.seq}`),
    el('span', { class: 'entry-label' }, def.label),
    el('span', { class: 'entry-time' }, press.time));
  const path = el('div', { class: 'entry-path' });
  path.append('took ', press.took ? chip(press.took) : el('span', { class: 'muted' }, '…'));
  if (def.kind === 'publish') path.append(' → Redis');
  if (press.deliveredBy) path.append(' → delivered by ', chip(press.deliveredBy));
  path.append(' ', outcomeBadge(press.outcome));
  if (press.frame && press.frame.id) item.dataset.id = press.frame.id;
  if (press.frame && press.frame.cursor) item.dataset.cursor = press.frame.cursor;
  const replayed = press.outcome === 'delivered' && press.frame && press.frame.replayed;
  if (replayed) {
    item.dataset.replayed = 'true';
    path.append(el('span', { class: 'badge badge-recovered' }, 'recovered after reconnect'));
  }
  const text = el('div', { class: 'entry-text' });
  text.textContent = press.text;
  const rows = [head, path, text];
  if (press.note) rows.push(el('div', { class: 'entry-note' }, press.note));
  item.replaceChildren(...rows);
}

const OUTCOME_TEXT = {
  pending: 'waiting…', answered: 'answered over HTTP', delivered: 'delivered',
  'not-delivered': 'not delivered', lost: 'lost', error: 'error',
};
function outcomeBadge(outcome) {
  return el('span', { class: `badge badge-${outcome}` }, OUTCOME_TEXT[outcome]);
}

/** The All / HTTP / Socket buttons: the feed's data-filter decides, in CSS, what shows. */
export function buildFilters() {
  for (const button of document.querySelectorAll('.filters button')) {
    button.addEventListener('click', () => {
      state.filter = button.dataset.filter;
      $('feed').dataset.filter = state.filter;
      for (const b of document.querySelectorAll('.filters button')) {
        b.setAttribute('aria-pressed', String(b === button));
      }
    });
  }
}
