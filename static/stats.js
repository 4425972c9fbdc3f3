// The lab's per-replica table: each replica's own figures as /api/stats lists them, and the
// visits Redis counted. Polling is replicas.js's, which hands each answer over.

import { $, el } from './dom.js';
import { chip, replicaNames } from './colours.js';
import { errorLine } from './lab-common.js';

/** Rows of the per-replica panel: key, label, value from one replica's listing (null when
 *  the replica sent no figures: one that has not announced them yet). */
const figure = (read) => (r) => (r.figures ? read(r.figures) : null);
const FIGURE_ROWS = [
  ['visits', 'visits (local)', figure((f) => f.visits)],
  ['sockets', 'sockets', (r) => r.sockets],
  ['entries', 'cache entries', figure((f) => f.entries)],
  ['hits', 'hits', figure((f) => f.hits)],
  ['misses', 'misses', figure((f) => f.misses)],
  ['rebuilds', 'rebuilds', figure((f) => f.rebuilds)],
  ['evictions', 'evictions', figure((f) => f.evictions)],
  ['expiries', 'expiries', figure((f) => f.expiries)],
  ['landed', 'sockets landed same / other', figure((f) => `${f.landed_same} / ${f.landed_other}`)],
  ['delivered', 'delivered', figure((f) => f.delivered)],
  ['rss', 'RSS (MiB)', figure((f) => (f.resident_bytes / 1048576).toFixed(1))],
];

/** The table as last drawn. */
let statsShown = '';

export function renderStats(data) {
  const listed = new Map((data.replicas || []).map((r) => [r.id, r]));
  const names = replicaNames();
  const table = $('stats');
  const head = el('tr', {}, el('th', { scope: 'col' }, el('span', { class: 'sr-only' }, 'figure')));
  for (const name of names) {
    const c = chip(name);
    if (!listed.has(name)) c.classList.add('chip-down');
    head.append(el('th', { scope: 'col', 'data-col': name }, c));
  }
  const rows = el('tbody');
  for (const [key, label, value] of FIGURE_ROWS) {
    const row = el('tr', { 'data-figure': key }, el('th', { scope: 'row' }, label));
    for (const name of names) {
      const r = listed.get(name);
      const v = r ? value(r) : null;
      row.append(el('td', { 'data-col': name }, v == null ? '—' : String(v)));
    }
    rows.append(row);
  }
  // Replaced only when a figure changed, so a screen reader reading the table is not reset.
  const shown = head.outerHTML + rows.outerHTML;
  if (shown !== statsShown) {
    statsShown = shown;
    table.replaceChildren(table.querySelector('caption'), el('thead', {}, head), rows);
  }
  $('stats-shared').textContent = data.shared_visits == null ? 'unavailable' : String(data.shared_visits);
  const source = $('stats-source');
  source.replaceChildren('Answered by ', chip(data.replica || '?'),
    data.complete === false
      ? ', which could not reach Redis, so it lists only itself.'
      : ': its own figures now, the others’ as they announced them, at most 2 s ago.');
}

export function renderStatsError(err) {
  $('stats-source').replaceChildren(errorLine(`Could not refresh: ${err.message}`));
}
