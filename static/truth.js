// What the page can truthfully say right now about the replicas, the broker and its cookie,
// from what it knows at this moment: the supervisor's state (drills, polled every second when
// available), the last /api/stats answer, and its own socket's fate. Every sentence on the page
// that names a replica's health or where nginx sends a request is built here, so no panel
// keeps a claim that stopped being true. Pure reads of state.js; no DOM.

import { PAGE_BY } from './config.js';
import { state } from './state.js';
import { replicaNames } from './colours.js';

/** The supervisor's state while it is fresh (polled every second; older than 3 s it no
 *  longer says what is true now), or null. */
const drills = () => (state.drills && Date.now() - state.drillsAt < 3000 ? state.drills : null);

/** The supervisor's word on a replica, when drills are on: up | down | draining | starting. */
export function supervised(name) {
  const d = drills();
  const r = d && d.replicas.find((x) => x.id === name);
  return r ? r.state : '';
}

/** up | down | draining | starting | stopping | unreachable | listed: the page's best knowledge. */
export function statusOf(name) {
  const s = supervised(name);
  if (s) return s;
  const r = state.replicas.get(name);
  if (!r || !r.live) return 'down';
  if (state.stopping.has(name)) return 'stopping';
  if (state.unreachable.has(name)) return 'unreachable';
  return 'listed';
}

/** Whether nginx can send a request there now, as far as the page knows. */
export const isUp = (name) => ['up', 'listed', 'draining'].includes(statusOf(name));

/** The replicas to show: every one seen, plus every one the supervisor runs. */
export function allReplicas() {
  const names = new Set(replicaNames());
  if (state.drills) for (const r of state.drills.replicas) names.add(r.id);
  return [...names].sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
}

/** The header of the picture: how many replicas run, and how the page knows. */
export function countText() {
  const names = allReplicas();
  if (drills()) {
    const up = names.filter((n) => supervised(n) === 'up').length;
    const other = names.filter((n) => supervised(n) && supervised(n) !== 'up')
      .map((n) => `${n} ${supervised(n)}`);
    return `${up} of ${names.length} replicas up${other.length ? ` · ${other.join(', ')}` : ''} · live from the supervisor`;
  }
  const listed = names.filter((n) => state.replicas.get(n) && state.replicas.get(n).live);
  const stopping = listed.filter((n) => state.stopping.has(n));
  const gone = listed.filter((n) => state.unreachable.has(n) && !state.stopping.has(n));
  let text = `${listed.length} replica${listed.length === 1 ? '' : 's'} announced in the last 6 s`;
  if (stopping.length) text += `; ${stopping.join(', ')} said ${stopping.length === 1 ? 'it is' : 'they are'} stopping`;
  if (gone.length) text += `; ${gone.join(', ')} broke off this page’s socket`;
  return text;
}

/** Where nginx sends a request that carries the page's cookie, in one clause. */
export function stickyRoute() {
  if (!state.cookie) return 'this page has no sticky cookie now, so nginx spreads these round robin';
  const c = state.cookie;
  const s = statusOf(c);
  if (s === 'down' || s === 'starting') return `the cookie names ${c}, which is ${s === 'down' ? 'down' : 'still starting'}, so nginx sends these to a backup replica`;
  if (s === 'stopping') return `the cookie names ${c}, which said it is stopping, so nginx sends these to a backup replica once it has gone`;
  if (s === 'unreachable') return `the cookie names ${c}, which broke off this page’s socket, so nginx likely sends these to a backup replica`;
  return `the cookie names ${c}, so nginx sends these there`;
}

/** The broker's health: { state: up | down | frozen | unknown, detail }. */
export function brokerHealth() {
  const d = drills();
  const r = d && d.redis;
  if (r && r.state === 'frozen') {
    const left = r.frozen_until_ms ? Math.max(0, Math.ceil((r.frozen_until_ms - Date.now()) / 1000)) : null;
    return { state: 'frozen', detail: `Redis is frozen (SIGSTOP)${left != null ? `, resumed in ${left} s` : ''}: it holds every request without answering` };
  }
  if (r && r.state === 'down') return { state: 'down', detail: 'Redis is stopped: publishes answer 503; echo, direct and the socket still work' };
  if (state.broker && state.broker.up === false) {
    return { state: 'down', detail: `${state.stats ? state.stats.replica : 'a replica'} cannot reach Redis: ${state.broker.detail || 'link down'}` };
  }
  if (r && r.state === 'up') return { state: 'up', detail: 'Redis is up' };
  if (state.broker && state.broker.up) return { state: 'up', detail: state.broker.detail || 'connected' };
  if (state.stats && state.stats.complete === false) return { state: 'down', detail: `${state.stats.replica} could not ask Redis for the replica list` };
  return { state: 'unknown', detail: 'not known yet' };
}

/** Whether the page's own replica (which rendered it) is up. */
export const pageReplicaUp = () => isUp(PAGE_BY);
