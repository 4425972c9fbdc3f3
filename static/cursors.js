// Message ids and the two cursors that recover across reconnects: the newest id seen in this
// client's history and in the broadcast history, and whether a frame is one already shown.
// Passing the cursors back when reconnecting is socket.js's.

import { state } from './state.js';

/** A history id "ms-seq" as [ms, seq], or null. */
export function parseId(text) {
  const m = /^(\d+)-(\d+)$/.exec(typeof text === 'string' ? text : '');
  return m ? [Number(m[1]), Number(m[2])] : null;
}

const isAfter = (a, b) => a[0] > b[0] || (a[0] === b[0] && a[1] > b[1]);

/** The cursor each kind of message with an id moves. */
const CURSOR = { publish: 'lastId', broadcast: 'lastBroadcastId' };

/** Moves the frame's cursor to its id; false when the page has already had it (a duplicate). */
export function advanceCursor(frame) {
  const key = CURSOR[frame.via];
  const id = parseId(frame.id);
  if (!key || !id) return true;
  const cursor = parseId(state[key]);
  if (cursor && !isAfter(id, cursor)) return false;
  state[key] = frame.id;
  return true;
}
