// What every panel of the state lab shares: its actions' entries in the feed, badges, and the
// sentences its results are written in. Each panel (visits.js, notes.js, split.js, stats.js)
// keeps its own state and rendering.

import { el } from './dom.js';
import { timeNow } from './format.js';
import { state } from './state.js';
import { addToFeed } from './feed.js';

/** A feed entry for one lab action; `fill` gives it its outcome once known. */
export function labEntry(label, transport) {
  const seq = ++state.seq;
  const item = el('li', { class: 'entry', 'data-kind': 'lab', 'data-transport': transport, 'data-seq': seq });
  const time = timeNow();
  const fill = (outcome, path, note = '') => {
    item.dataset.outcome = outcome;
    const head = el('div', { class: 'entry-head' }, el('span', { class: 'entry-tag' }, `#${seq}`),
      el('span', { class: 'entry-label' }, label), el('span', { class: 'entry-time' }, time));
    const rows = [head, el('div', { class: 'entry-path' }, ...path)];
    if (note) rows.push(el('div', { class: 'entry-note' }, note));
    item.replaceChildren(...rows);
  };
  fill('pending', [el('span', { class: 'muted' }, 'waiting…')]);
  addToFeed(item);
  return { seq, item, fill };
}

export const labBadge = (cls, text) => el('span', { class: `badge badge-${cls}` }, text);
/** A sentence of a lab result, chips and badges inline. */
export const line = (...parts) => el('p', { class: 'lab-line' }, ...parts);
export const errorLine = (message) => el('p', { class: 'lab-error' }, message);
