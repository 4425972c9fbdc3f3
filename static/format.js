// Small formatting helpers shared by the feed, the tallies and the lab: sorting replica names,
// plurals, clock times, a note's number. Pure functions; building nodes is dom.js's.

/** Replica names in the order people expect: app-2 before app-10. */
export const byName = (a, b) => a.localeCompare(b, 'en', { numeric: true });

export const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;

/** The number a press or note text starts with ("#12 hello" -> 12), 0 when it has none. */
export const seqOf = (note) => Number((/^#(\d+)/.exec(note) || [])[1]) || 0;

export const timeNow = () => new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
