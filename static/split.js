// The lab's split of a page from its socket: forgetting the sticky cookie, reconnecting the
// socket on purpose, and where each welcome landed next to the replica that rendered the page.
// The socket itself is socket.js's, which tells this module of each welcome.

import { PAGE_BY } from './config.js';
import { $, el } from './dom.js';
import { chip } from './colours.js';
import { state } from './state.js';
import { errorLine, labBadge, labEntry, line } from './lab-common.js';
import { renderCookieChoice } from './notes.js';
import { isConnecting, reopen, whenWelcomed } from './socket.js';
import { request } from './request.js';
import { isUp, statusOf } from './truth.js';
import { emit, on } from './events.js';

/** What the page has seen of its cookie and of where its socket landed. */
const seen = {
  /** The replica that cleared the cookie, once it is forgotten. */
  forgotBy: '',
  landing: null,
  landings: 0,
  /** Welcomes that landed away from the page's replica. */
  splits: 0,
  /** The feed entry of a reconnect made on purpose, filled by the next welcome. */
  pendingReopen: null,
};

/** Where the socket last landed, for the page's snapshot. */
export const landing = () => seen.landing;

export function buildSplit() {
  $('btn-forget').addEventListener('click', forgetCookie);
  $('btn-reconnect').addEventListener('click', () => reopenSocket('Reconnect my socket'));
  whenWelcomed(landed);
  renderCookie();
  renderLanding();
  renderReconnectWhy();
  on('health', () => { renderReconnectWhy(); renderCookie(); });
}

/** Whether the page has seen its socket land away from the page's replica, for the path. */
export const splitSeen = () => seen.splits > 0;

/** What reconnecting will do, given the cookie now. Round robin in nginx is shared by every
 *  request it gets (this page's own polling too), so the page does not promise where it lands. */
function renderReconnectWhy() {
  let text;
  if (!state.cookie) {
    text = 'Closes and reopens the socket. With no cookie nginx picks the replica round robin, a turn shared with every other request (this page polls too), so where it lands cannot be told in advance: press it a few times and the split comes and goes.';
  } else if (!isUp(state.cookie)) {
    text = `Closes and reopens the socket. The cookie names ${state.cookie}, which is ${statusOf(state.cookie)}, so nginx puts it on a backup replica.`;
  } else {
    text = `Closes and reopens the socket. The cookie names ${state.cookie}, so nginx puts it back there: forget the cookie first to see it land elsewhere.`;
  }
  if ($('why-reconnect').textContent !== text) $('why-reconnect').textContent = text;
}

async function forgetCookie() {
  const entry = labEntry('Forget my sticky cookie', 'http');
  let data;
  try {
    data = await request('/api/sticky/forget', { method: 'POST', credentials: 'same-origin' });
  } catch (err) {
    entry.fill('error', [labBadge('error', 'error')], err.message);
    renderCookie(err.message);
    return;
  }
  state.cookie = null;
  seen.forgotBy = data.replica || '';
  entry.fill('answered', ['answered by ', chip(seen.forgotBy), ' ',
    data.forgot ? `cleared sticky=${data.forgot}` : 'no cookie to clear']);
  renderCookie();
  renderCookieChoice();
  reopenSocket('Reopen after forgetting the cookie');
}

function renderCookie(error = '') {
  const node = $('cookie-state');
  node.dataset.cookie = state.cookie ? 'set' : 'none';
  const down = state.cookie && !isUp(state.cookie)
    ? ` ${state.cookie} is ${statusOf(state.cookie)} now, so nginx sends what carries it to a backup.` : '';
  const rows = [state.cookie
    ? line('Your cookie: ', el('code', {}, `sticky=${state.cookie}`), ', set when ', chip(state.cookie), ` rendered this page.${down}`)
    : line('Your cookie: ', el('b', {}, 'none'), seen.forgotBy ? ` (cleared by ${seen.forgotBy}). ` : '. ',
      'Reload the page to get one again.')];
  if (error) rows.push(errorLine(`Forgetting failed: ${error}`));
  node.replaceChildren(...rows);
}

/** Reopens the socket, which nginx routes afresh, and follows it in the feed. */
function reopenSocket(label) {
  if (isConnecting()) {
    // Closing a socket before its handshake ends is an error in the console; let it finish.
    renderLanding('The socket is still connecting; try again in a moment.');
    return;
  }
  seen.pendingReopen = labEntry(label, 'socket');
  reopen();
}

/** A welcome: where the socket landed, next to where the page came from. */
function landed(frame, first) {
  const page = frame.page_replica || PAGE_BY;
  const same = typeof frame.same_replica === 'boolean' ? frame.same_replica : frame.replica === page;
  const rebuilt = frame.state !== 'hit';
  let message = `${frame.replica} already held your state`;
  if (rebuilt) message = first ? `${frame.replica} started your state` : `${frame.replica} had never seen you: state rebuilt`;
  seen.landing = { replica: frame.replica, page, same, rebuilt, message };
  seen.landings += 1;
  if (!same) { seen.splits += 1; emit('lesson', 'split'); }
  const split = $('ws-split');
  split.dataset.split = same ? 'same' : 'split';
  split.textContent = same ? 'same replica' : 'split';
  split.title = `Socket on ${frame.replica} — page came from ${page}: ${same ? 'same replica' : 'split'}`;
  const pending = seen.pendingReopen;
  if (pending) {
    seen.pendingReopen = null;
    Object.assign(pending.item.dataset, { replica: frame.replica, split: same ? 'same' : 'split', state: frame.state });
    pending.fill(same ? 'ok' : 'warn', ['socket on ', chip(frame.replica), ' · page from ', chip(page), ' ',
      same ? labBadge('same', 'same replica') : labBadge('split', 'split'), ' ', labBadge(rebuilt ? 'rebuilt' : 'hit', frame.state)],
    message);
  }
  renderLanding();
}

function renderLanding(error = '') {
  const node = $('lab-landing');
  const l = seen.landing;
  const rows = [];
  if (l) {
    Object.assign(node.dataset, { landings: seen.landings, replica: l.replica, page: l.page,
      split: l.same ? 'same' : 'split', state: l.rebuilt ? 'rebuilt' : 'hit' });
    rows.push(line('Socket on ', chip(l.replica), ' — page came from ', chip(l.page), ': ',
      l.same ? labBadge('same', 'same replica') : labBadge('split', 'split')));
    rows.push(el('p', { class: `lab-message${l.rebuilt && !l.same ? ' lab-message-warn' : ''}`, id: 'landing-message', 'data-testid': 'landing-message' },
      l.message));
  } else {
    rows.push(el('span', { class: 'muted' }, 'Waiting for the socket…'));
  }
  if (error) rows.push(errorLine(error));
  node.replaceChildren(...rows);
}
