// The page's shared state: its socket, the replicas it has seen, the presses and their tallies,
// its sticky cookie, and what it knows of the replicas' and the broker's health (truth.js
// turns that into sentences). Modules read and write it directly; each lab panel keeps its own
// state in its own module (visits.js, notes.js, split.js, stats.js).

import { PAGE_BY } from './config.js';

export const state = {
  /** Numbers every press and lab action, so each feed entry can be matched with its answer. */
  seq: 0,
  wsState: 'connecting',
  wsBy: '',
  ws: null,
  attempt: 0,
  /** name -> { sockets, live } for every replica seen; kept when one dies so colours stay put. */
  replicas: new Map(),
  tallies: {},
  /** exact text sent -> press waiting for its socket frame */
  pending: new Map(),
  filter: 'all',
  /** Newest message id seen in this client's history and in the broadcast history ("ms-seq"):
   *  passed back on reconnect, so the replica replays what the page missed. */
  lastId: null,
  lastBroadcastId: null,
  /** Frames dropped because their id was at or below the cursor (already shown). */
  duplicates: 0,
  /** The pending backoff timer, cancelled when the socket is reopened on purpose. */
  retryTimer: 0,
  /** Set when the page goes away, so its socket closing then is not retried. */
  unloading: false,
  /** The sticky cookie's value as far as the page knows (HttpOnly: JS cannot read it). */
  cookie: PAGE_BY,
  /** The broker as the last /api/stats answer's replica saw it ({ up, detail }), or null
   *  when that replica does not say (an older version). */
  broker: null,
  /** Who answered the last /api/stats and whether it could ask Redis for the others. */
  stats: null,
  /** The supervisor's state from the last GET /api/drills (null without drills), and when. */
  drills: null,
  drillsAt: 0,
  /** Replicas this page saw fail: its socket there broke off and nginx put the next one
   *  elsewhere. Cleared when the replica is heard from again (an answer or a frame). */
  unreachable: new Set(),
  /** Replicas that said they are stopping (closed this page's socket with 1012 or 1001),
   *  until the page's socket lands there again or the replicas' list drops them. */
  stopping: new Set(),
};
