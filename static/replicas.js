// Which replicas exist and whether they are live: learnt from every answer and frame that
// names one, and from polling /api/stats (with the broker's health as that replica sees it).
// When the set changes, everything that shows it is redrawn (colours, the picture, the
// tallies, the header), and every module showing health is told (events.js `health`). The
// per-replica table is stats.js's; the sentences are truth.js's.

import { CLIENT_ID, PAGE_BY } from './config.js';
import { $ } from './dom.js';
import { recolour } from './colours.js';
import { state } from './state.js';
import { drawTopology } from './topology.js';
import { renderTallies } from './tallies.js';
import { renderStats, renderStatsError } from './stats.js';
import { renderShard } from './shard.js';
import { roomSnapshot, roomToJoin } from './room.js';
import { request } from './request.js';
import { countText, brokerHealth, isUp, statusOf } from './truth.js';
import { emit } from './events.js';

/** What the picture last drew: replicas, their health and the broker's. */
let drawn = '';

/** A replica named in a response or frame: it answered, so it is live and reachable. */
export function noteReplica(name) {
  if (!name) return;
  const known = state.replicas.get(name);
  const wasUnreachable = state.unreachable.delete(name);
  if (known && known.live && !wasUnreachable) return;
  state.replicas.set(name, { sockets: known ? known.sockets : null, live: true });
  replicasChanged();
}

/** Marks a replica the page saw fail (its socket broke off, nginx moved it elsewhere). */
export function noteUnreachable(name) {
  if (!name || state.unreachable.has(name)) return;
  state.unreachable.add(name);
  replicasChanged();
}

/** Marks a replica that said it is stopping (it closed the page's socket with 1012/1001). */
export function noteStopping(name) {
  if (!name || state.stopping.has(name)) return;
  state.stopping.add(name);
  replicasChanged();
}

/** Redraws what shows the replicas and the broker, if any of it changed. */
export function replicasChanged() {
  const now = JSON.stringify([[...state.replicas].map(([n, r]) => [n, r.live, r.sockets]), [...state.unreachable], [...state.stopping],
    state.drills && state.drills.replicas.map((r) => [r.id, r.state]), brokerHealth().state]);
  if (now !== drawn) {
    drawn = now;
    recolour();
    drawTopology();
    renderTallies();
  }
  const pageAlive = isUp(PAGE_BY);
  $('page-by').classList.toggle('chip-down', !pageAlive);
  $('page-by').title = pageAlive ? '' : `${PAGE_BY} is ${statusOf(PAGE_BY)}; nginx sends this page's sticky requests to a backup`;
  const count = countText();
  if ($('replica-count').textContent !== count) $('replica-count').textContent = count;
  emit('health');
}

/** One poll for the picture and the lab's panel: /api/stats lists the replicas with figures. */
export async function refreshReplicas() {
  let data;
  let room = '';
  let joined = false;
  try {
    // The client and the room (the one joined, else the one the name field would join), so a
    // replica on a Redis Cluster says whose shard holds them before the page joins anything.
    const current = roomSnapshot().channel || '';
    joined = current !== '';
    room = current || roomToJoin();
    const query = new URLSearchParams({ client_id: CLIENT_ID });
    if (room) query.set('channel', room);
    data = await request(`/api/stats?${query}`, { credentials: 'omit' });
  } catch (err) {
    // nginx or every replica unreachable: keep the last picture; the socket state says more.
    renderStatsError(err);
    return;
  }
  const listed = new Set();
  for (const r of data.replicas || []) {
    listed.add(r.id);
    const known = state.replicas.get(r.id);
    // A listing is up to 6 s old: it does not prove a replica this page saw fail is back.
    state.replicas.set(r.id, { sockets: r.sockets, live: true, figures: r.figures || (known && known.figures) || null,
      figuresAt: r.figures ? Date.now() : (known && known.figuresAt) || 0 });
  }
  // Without the broker a replica only knows itself; then absence says nothing.
  if (data.complete !== false) {
    for (const [name, r] of state.replicas) {
      if (listed.has(name)) continue;
      r.live = false;
      // Gone now: if it comes back it is a new process, which has not said it is stopping.
      state.stopping.delete(name);
    }
  }
  state.stats = { replica: data.replica || '', complete: data.complete !== false };
  state.broker = data.broker && typeof data.broker.up === 'boolean'
    ? { up: data.broker.up, detail: String(data.broker.detail || '') } : null;
  if (data.replica) state.unreachable.delete(data.replica);
  replicasChanged();
  renderStats(data);
  renderShard(data.shard, room, joined);
}
