// The lab's session state: notes added in the answering replica's memory or in Redis, with or
// without the sticky cookie, and whether each answer holds every note so far. Also the cookie
// toggle's wording, which split.js asks to refresh when the cookie is forgotten.

import { CLIENT_ID, MAX_NOTES } from './config.js';
import { $, el } from './dom.js';
import { plural, seqOf } from './format.js';
import { chip } from './colours.js';
import { state } from './state.js';
import { countsLine } from './tallies.js';
import { errorLine, labBadge, labEntry, line } from './lab-common.js';
import { noteReplica, refreshReplicas } from './replicas.js';
import { postJson } from './request.js';
import { stickyRoute } from './truth.js';
import { on, emit } from './events.js';

/** Per store, every note known to be added (sent and answered, or seen in an answer). */
const notesOf = {
  local: { known: new Set(), tally: { sent: 0, hits: 0, rebuilt: 0, errors: 0, by: {} } },
  shared: { known: new Set(), tally: { sent: 0, hits: 0, rebuilt: 0, errors: 0, by: {} } },
};

export function buildNotes() {
  $('btn-note-local').addEventListener('click', () => addNote('local'));
  $('btn-note-shared').addEventListener('click', () => addNote('shared'));
  $('notes-no-cookie').addEventListener('change', renderCookieChoice);
  renderNotes('local', null);
  renderNotes('shared', null);
  renderCookieChoice();
  on('health', renderCookieChoice);
}

/** Notes rebuilt by a replica that had never seen this client, for the guided path. */
export const notesRebuilt = () => notesOf.local.tally.rebuilt;

async function addNote(store) {
  const notes = notesOf[store];
  const withCookie = !$('notes-no-cookie').checked;
  const input = $('message').value;
  const where = store === 'local' ? 'in memory' : 'in Redis';
  const entry = labEntry(`Note ${where} · ${withCookie && state.cookie ? 'with cookie' : 'without cookie'}`, 'http');
  const text = input ? `#${entry.seq} ${input}` : `#${entry.seq}`;
  // What a whole answer must hold: every note confirmed before this one was sent, and this one.
  const expected = new Set(notes.known);
  expected.add(text);
  notes.tally.sent += 1;
  let data;
  try {
    data = await postJson(`/api/notes/${encodeURIComponent(CLIENT_ID)}/${store}`, { text }, withCookie);
  } catch (err) {
    notes.tally.errors += 1;
    entry.fill('error', [labBadge('error', 'error')], err.message);
    renderNotes(store, null, err.message);
    return;
  }
  const kept = Array.isArray(data.notes) ? data.notes.map(String) : [];
  const answer = judgeNotes(expected, kept);
  for (const n of [text, ...kept]) notes.known.add(n);
  Object.assign(answer, { replica: data.replica || '', hit: !!data.hit, rebuilt: !!data.rebuilt,
    message: data.message || '', cookie: withCookie && !!state.cookie });
  notes.tally.by[answer.replica] = (notes.tally.by[answer.replica] || 0) + 1;
  if (answer.hit) notes.tally.hits += 1;
  if (answer.rebuilt) notes.tally.rebuilt += 1;
  if (answer.rebuilt && store === 'local') emit('lesson', 'rebuilt');
  noteReplica(answer.replica);
  Object.assign(entry.item.dataset, { store, replica: answer.replica, hit: answer.hit, rebuilt: answer.rebuilt,
    count: answer.count, total: answer.total, whole: answer.whole, cookie: answer.cookie });
  entry.fill(answer.whole ? 'ok' : 'warn',
    ['answered by ', chip(answer.replica), ' ', stateBadge(store, answer), ' ', countText(answer)], answer.message);
  renderNotes(store, answer);
  refreshReplicas();
}

/** Compares an answer's notes with what a whole one holds; notes past the server's limit that
 *  it dropped, oldest first, do not count as missing. */
function judgeNotes(expected, kept) {
  const have = new Set(kept);
  const all = [...new Set([...expected, ...kept])].sort((a, b) => seqOf(a) - seqOf(b));
  const oldestKept = Math.min(...kept.map(seqOf));
  const capped = (n) => kept.length >= MAX_NOTES && seqOf(n) < oldestKept;
  const missing = all.filter((n) => expected.has(n) && !have.has(n) && !capped(n));
  return { all, have, missing: new Set(missing), capped: all.filter(capped).length,
    count: kept.length, total: all.length, whole: missing.length === 0 };
}

/** "hit" only for an answer that had every note: a replica that knew this client but holds
 *  only some of its notes is a partial copy, not a hit for the person reading. */
function stateBadge(store, a) {
  if (a.hit && a.whole) return labBadge('hit', 'hit');
  if (a.hit) return labBadge('missing', 'partial copy');
  return store === 'shared' ? labBadge('new', 'new') : labBadge('rebuilt', 'rebuilt');
}

function countText(a) {
  const t = el('span', { class: 'note-count' }, `${a.count} of ${plural(a.total, 'note')} `);
  t.append(a.whole ? labBadge('whole', 'whole') : labBadge('missing', `${a.missing.size} missing`));
  if (a.capped) t.append(` (only the newest ${MAX_NOTES} are kept)`);
  return t;
}

function renderNotes(store, a, error = '') {
  const node = $(`lab-note-${store}`);
  const t = notesOf[store].tally;
  const rows = [];
  if (a) {
    node.dataset.replica = a.replica;
    Object.assign(node.dataset, { hit: a.hit, rebuilt: a.rebuilt, count: a.count, total: a.total, whole: a.whole });
    rows.push(line('Last answer from ', chip(a.replica), ' ', stateBadge(store, a),
      ` · sent ${a.cookie ? 'with' : 'without'} the cookie`));
    if (a.message) rows.push(el('p', { class: `lab-message${store === 'local' ? ' lab-message-warn' : ''}`, id: `lab-message-${store}`, 'data-testid': `lab-message-${store}` }, a.message));
    const list = el('ol', { class: 'notes', 'aria-label': `Your notes as ${a.replica} has them` });
    for (const n of a.all.slice(-MAX_NOTES)) {
      const here = a.have.has(n);
      const item = el('li', { class: here ? 'note' : 'note note-missing', title: n }, `#${seqOf(n) || '?'}`);
      if (!here) item.append(el('span', { class: 'sr-only' }, a.missing.has(n) ? ' missing' : ' dropped, over the limit'));
      list.append(item);
    }
    rows.push(countText(a), list);
  }
  if (error) rows.push(errorLine(`That note failed: ${error}`));
  const stats = el('span', { class: 'tally-stats' }, el('b', {}, String(t.sent)), ' sent · ',
    el('b', {}, String(t.hits)), ' hits · ', el('b', { class: t.rebuilt && store === 'local' ? 'bad' : '' }, String(t.rebuilt)),
    store === 'local' ? ' rebuilt' : ' started');
  if (t.errors) stats.append(' · ', el('b', { class: 'bad' }, String(t.errors)), ' failed');
  if (!t.sent) rows.push(el('span', { class: 'muted' }, 'Not pressed yet.'));
  else rows.push(el('span', { class: 'tally-line' }, stats, countsLine('answered by', t.by)));
  node.replaceChildren(...rows);
}

/** The toggle and the note buttons say how the next note travels. */
export function renderCookieChoice() {
  const without = $('notes-no-cookie').checked || !state.cookie;
  for (const sub of document.querySelectorAll('[data-cookie-label]')) {
    const text = without ? 'without my cookie' : 'with my cookie';
    if (sub.textContent !== text) sub.textContent = text;
  }
  const hint = !state.cookie
    ? 'This page has no sticky cookie now, so these go round robin either way.'
    : without ? 'nginx spreads these round robin over the replicas.'
      : `${stickyRoute().replace(/^./, (c) => c.toUpperCase())}.`;
  if ($('notes-cookie-hint').textContent !== hint) $('notes-cookie-hint').textContent = hint;
}
