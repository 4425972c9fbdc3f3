// What the server wrote into the page (the body's data-* attributes) and the page's fixed
// timings and limits. Read once at load; everything that changes lives in state.js and the
// modules that own it.

const body = document.body;
export const PAGE_BY = body.dataset.replica;
export const CLIENT_ID = body.dataset.clientId;
export const TOKEN = body.dataset.token;
/** The per-run token of `stickyws cluster`'s fault drills; empty where drills are off. */
export const DRILLS_TOKEN = body.dataset.drillsToken || '';
/** The supervisor's state is polled this often, so the picture follows a drill within 1 s. */
export const DRILLS_POLL_MS = 1000;

/** How long a message that should reach the socket may take before it counts as lost. */
export const DELIVERY_TIMEOUT_MS = 3000;
/** How long a publish that found no socket waits for the reconnect that replays it. */
export const REPLAY_TIMEOUT_MS = 20000;
export const BACKOFF_MIN_MS = 500;
export const BACKOFF_MAX_MS = 10000;
/** /api/stats feeds both the picture and the lab's figures, which the others announce every 2 s. */
export const STATS_POLL_MS = 3000;
export const FEED_MAX = 200;
/** The server keeps a client's newest MAX_NOTES notes. */
export const MAX_NOTES = Number(body.dataset.maxNotes) || 20;

/** The visit counts the rendering replica and Redis gave this page (Redis: null if unreachable). */
export const VISITS_LOCAL = Number(body.dataset.visitsLocal) || 0;
export const VISITS_SHARED = body.dataset.visitsShared ? Number(body.dataset.visitsShared) : null;
