// Message cursors and the two that recover across reconnects: the newest cursor seen in this
// client's history and in the broadcast history, and whether a frame is one already shown.
// A cursor is opaque ("<epoch>:<ms>-<seq>", older ones plain "<ms>-<seq>"): the page only
// compares the "<ms>-<seq>" part of two cursors of the same epoch, because another epoch is
// another history, where positions mean nothing against the old ones. Passing the cursors
// back when reconnecting is socket.js's; the room's channel cursor is room.js's.

import { state } from './state.js';

/** A cursor as { epoch, at: [ms, seq] } (epoch '' for an old plain id), or null. */
export function parseCursor(text) {
  const m = /^(?:([^:]*):)?(\d+)-(\d+)$/.exec(typeof text === 'string' ? text : '');
  return m ? { epoch: m[1] || '', at: [Number(m[2]), Number(m[3])] } : null;
}

const isAfter = (a, b) => a[0] > b[0] || (a[0] === b[0] && a[1] > b[1]);

/** Whether `next` comes after `held` in its history: always when nothing is held or when the
 *  two are of different epochs (the history was lost and started over). */
export function isNewer(next, held) {
  const n = parseCursor(next);
  if (!n) return false;
  const h = parseCursor(held);
  return !h || n.epoch !== h.epoch || isAfter(n.at, h.at);
}

/** A frame's position in its history: `cursor`, or the older `id`. */
export const cursorOf = (frame) => frame.cursor || frame.id;

/** The cursor each kind of message with an id moves. */
const CURSOR = { publish: 'lastId', broadcast: 'lastBroadcastId' };

/** Moves the frame's cursor to its own; false when the page has already had it (a duplicate). */
export function advanceCursor(frame) {
  const key = CURSOR[frame.via];
  const at = cursorOf(frame);
  if (!key || !parseCursor(at)) return true;
  if (!isNewer(at, state[key])) return false;
  state[key] = at;
  return true;
}
