// The lab's visit counters: fetching the page without the cookie lands on whichever replica
// nginx picks, whose own counter knows only its visits, while Redis counts them all. The
// other panels are notes.js, split.js and stats.js; shared pieces are lab-common.js's.

import { PAGE_BY, VISITS_LOCAL, VISITS_SHARED } from './config.js';
import { $, el } from './dom.js';
import { byName, plural } from './format.js';
import { chip } from './colours.js';
import { errorLine, labBadge, labEntry, line } from './lab-common.js';
import { noteReplica, refreshReplicas } from './replicas.js';

/** Visit counts seen: replica -> its own count; the shared one; visits this page made. */
const visits = { local: new Map([[PAGE_BY, VISITS_LOCAL]]), shared: VISITS_SHARED, made: 0, last: null };

/** What the page shows of the counters, for its snapshot. */
export const visitsSeen = () => ({ shared: visits.shared, local: Object.fromEntries(visits.local) });

export function buildVisits() {
  $('btn-visit').addEventListener('click', visitWithoutCookie);
  renderVisits();
}

async function visitWithoutCookie() {
  const entry = labEntry('Visit without the cookie', 'http');
  let doc;
  try {
    const res = await fetch('/', { credentials: 'omit', cache: 'no-store' });
    if (!res.ok) throw new Error(`HTTP ${res.status} ${res.statusText}`.trim());
    doc = new DOMParser().parseFromString(await res.text(), 'text/html');
  } catch (err) {
    entry.fill('error', [labBadge('error', 'error')], err.message);
    renderVisits(`That visit failed: ${err.message}`);
    return;
  }
  const d = doc.body.dataset;
  const local = Number(d.visitsLocal);
  if (!d.replica || !d.visitsLocal || !Number.isFinite(local)) {
    entry.fill('error', [labBadge('error', 'error')], 'the page came back without its counters');
    renderVisits('That visit came back without its counters.');
    return;
  }
  const shared = d.visitsShared ? Number(d.visitsShared) : null;
  noteReplica(d.replica);
  // Answers can cross on the way back; a counter only grows, so the largest is the newest.
  visits.local.set(d.replica, Math.max(local, visits.local.get(d.replica) || 0));
  if (shared !== null) visits.shared = Math.max(shared, visits.shared || 0);
  visits.made += 1;
  visits.last = { replica: d.replica, local, shared };
  entry.item.dataset.replica = d.replica;
  entry.fill('answered', ['rendered by ', chip(d.replica), ` counts ${local}; Redis counts ${shared ?? 'unavailable'}`]);
  renderVisits();
  refreshReplicas();
}

function renderVisits(error = '') {
  const node = $('lab-visits');
  const { local, shared, last, made } = visits;
  node.dataset.shared = shared ?? '';
  node.dataset.made = made;
  const counts = el('span', { class: 'tally-by' }, 'In memory: ');
  for (const name of [...local.keys()].sort(byName)) {
    counts.append(el('span', { class: 'count', 'data-col': name, 'data-local': local.get(name) },
      chip(name), el('span', { class: 'times' }, String(local.get(name)))));
  }
  const redis = el('span', { class: 'count' }, 'In Redis: ',
    el('b', { id: 'visits-shared', 'data-testid': 'visits-shared' }, shared === null ? 'unavailable' : String(shared)));
  const rows = [
    last ? line(`${plural(made, 'visit')} without the cookie so far; the last went to `, chip(last.replica),
      `, whose own count is ${last.local}.`)
      : line('So far only this page’s own visit, counted by ', chip(PAGE_BY), ' and by Redis.'),
    el('div', { class: 'tally-line' }, counts, redis),
  ];
  if (error) rows.push(errorLine(error));
  node.replaceChildren(...rows);
}
