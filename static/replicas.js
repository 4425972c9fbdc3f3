// Which replicas exist and whether they are live: learnt from every answer and frame that
// names one, and from polling /api/stats. When the set changes, everything that shows it is
// redrawn (colours, the picture, the tallies, the header). The per-replica table is stats.js's.

import { PAGE_BY } from './config.js';
import { $ } from './dom.js';
import { recolour } from './colours.js';
import { state } from './state.js';
import { drawTopology } from './topology.js';
import { renderTallies } from './tallies.js';
import { renderStats, renderStatsError } from './stats.js';
import { request } from './request.js';

/** The replica set as the picture last drew it after a poll. */
let drawn = '';

/** Adds a replica named in a response or frame that the picture does not show yet. */
export function noteReplica(name) {
  if (!name) return;
  const known = state.replicas.get(name);
  if (known && known.live) return;
  state.replicas.set(name, { sockets: known ? known.sockets : null, live: true });
  replicasChanged();
}

export function replicasChanged() {
  recolour();
  drawTopology();
  renderTallies();
  const pageAlive = state.replicas.get(PAGE_BY).live;
  $('page-by').classList.toggle('chip-down', !pageAlive);
  $('page-by').title = pageAlive ? '' : `${PAGE_BY} is down; nginx sends this page's sticky requests to a backup`;
  const live = [...state.replicas.values()].filter((r) => r.live).length;
  $('replica-count').textContent = `${live} replica${live === 1 ? '' : 's'} live`;
}

/** One poll for the picture and the lab's panel: /api/stats lists the replicas with figures. */
export async function refreshReplicas() {
  let data;
  try {
    data = await request('/api/stats', { credentials: 'omit' });
  } catch (err) {
    // nginx or every replica unreachable: keep the last picture; the socket state says more.
    renderStatsError(err);
    return;
  }
  const listed = new Set();
  for (const r of data.replicas || []) {
    listed.add(r.id);
    state.replicas.set(r.id, { sockets: r.sockets, live: true });
  }
  // Without the broker a replica only knows itself; then absence says nothing.
  if (data.complete !== false) {
    for (const [name, r] of state.replicas) if (!listed.has(name)) r.live = false;
  }
  // Redrawing the picture cuts its running trails short: only when it would change.
  const now = JSON.stringify([...state.replicas]);
  if (now !== drawn) { drawn = now; replicasChanged(); }
  renderStats(data);
}
