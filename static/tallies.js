// Each button's tally under it: presses sent, answered or delivered, and which replicas took
// and delivered them, as text and as data-* attributes the tests read. The counts are kept in
// state.tallies and moved by presses.js; countsLine is shared with the notes panel.

import { $, el } from './dom.js';
import { byName } from './format.js';
import { chip } from './colours.js';
import { BUTTONS } from './buttons.js';
import { state } from './state.js';

export function newTally() {
  return { sent: 0, pending: 0, answered: 0, delivered: 0, notDelivered: 0, lost: 0, errors: 0,
    took: {}, deliveredBy: {} };
}

const countsAttr = (counts) => Object.keys(counts).sort(byName).map((k) => `${k}:${counts[k]}`).join(' ');

export function countsLine(label, counts) {
  const line = el('span', { class: 'tally-by' }, `${label} `);
  const names = Object.keys(counts).sort(byName);
  // A chip and its count wrap as one.
  for (const name of names) line.append(el('span', { class: 'count' }, chip(name), el('span', { class: 'times' }, `×${counts[name]}`)));
  if (!names.length) line.append('—');
  return line;
}

export function renderTally(def) {
  const t = state.tallies[def.id];
  const node = $(`tally-${def.id}`);
  if (!node) return;
  Object.assign(node.dataset, {
    sent: t.sent, pending: t.pending, answered: t.answered, delivered: t.delivered,
    notDelivered: t.notDelivered, lost: t.lost, errors: t.errors,
    took: countsAttr(t.took), deliveredBy: countsAttr(t.deliveredBy),
  });
  if (!t.sent) { node.replaceChildren(el('span', { class: 'muted' }, 'Not pressed yet.')); return; }
  const stats = el('span', { class: 'tally-stats' }, el('b', {}, String(t.sent)), ' sent');
  if (def.kind === 'echo') {
    stats.append(' · ', el('b', {}, `${t.answered}/${t.sent}`), ' answered');
  } else {
    const cls = t.delivered === t.sent - t.pending ? 'ok' : 'bad';
    stats.append(' · ', el('b', { class: cls }, `${t.delivered}/${t.sent}`), ' delivered');
  }
  if (t.errors) stats.append(' · ', el('b', { class: 'bad' }, String(t.errors)), ' failed');
  const by = el('span', { class: 'tally-line' }, countsLine(def.kind === 'echo' ? 'answered by' : 'took', t.took));
  if (def.kind !== 'echo') by.append(countsLine('→ delivered by', t.deliveredBy));
  node.replaceChildren(stats, by);
}

/** Every button's tally: replica colours and names may have changed. */
export function renderTallies() {
  for (const def of BUTTONS) renderTally(def);
}
