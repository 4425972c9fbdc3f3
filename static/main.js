// stickyws demo page: six ways to send a message, the replica that took each one, whether it
// reached this page's WebSocket, and a live picture of the path it took; below, the state lab:
// counters, session state and a page split from its socket, with every replica's figures.
// No framework and no build step: native ES modules, one concern each; user text is only ever
// set with textContent.
//
// This module starts the page and publishes window.stickyws.state() for the browser tests.
// The modules, by concern:
//   config.js      what the server wrote into the page; timings and limits
//   state.js       the shared state: socket, replicas seen, presses, the sticky cookie
//   dom.js, format.js, colours.js   building nodes, formatting, replica colours and chips
//   request.js     HTTP to the replicas
//   replicas.js    which replicas exist, polled from /api/stats; redraws on change
//   topology.js    the SVG picture and the trails of each press
//   buttons.js, presses.js, tallies.js, feed.js   the six buttons, their presses and results
//   socket.js, cursors.js   the WebSocket, its reconnects and the recovery cursors
//   lab-common.js, visits.js, notes.js, split.js, stats.js   the state lab's panels
//   room.js, member.js   the room: a channel the page joins, and a second member of it
//   events.js, truth.js   health changes between modules; every sentence about health
//   drills.js      the fault drills panel and "publish while I'm away" (only with a drills token)
//   records-log.js the records log lines naming this client
//   lessons.js     the guided path, ticked off as the page sees each lesson happen

import { CLIENT_ID, PAGE_BY, STATS_POLL_MS } from './config.js';
import { colourOf, replicaNames } from './colours.js';
import { state } from './state.js';
import { buildFilters } from './feed.js';
import { buildGroups } from './presses.js';
import { renderTallies } from './tallies.js';
import { refreshReplicas, replicasChanged } from './replicas.js';
import { followWidth } from './topology.js';
import { connect } from './socket.js';
import { buildVisits, visitsSeen } from './visits.js';
import { buildNotes } from './notes.js';
import { buildSplit, landing } from './split.js';
import { buildRoom, roomSnapshot } from './room.js';
import { awayRun, buildDrills, drillsDone } from './drills.js';
import { buildRecords } from './records-log.js';
import { buildLessons } from './lessons.js';
import { brokerHealth, countText, statusOf } from './truth.js';
import { $ } from './dom.js';

/** A plain snapshot for browser tests. */
function snapshot() {
  const visits = visitsSeen();
  return JSON.parse(JSON.stringify({
    pageBy: PAGE_BY, wsBy: state.wsBy, wsState: state.wsState, clientId: CLIENT_ID,
    tallies: state.tallies,
    cursors: { lastId: state.lastId, lastBroadcastId: state.lastBroadcastId, duplicates: state.duplicates },
    replicas: replicaNames().map((id) => {
      const r = state.replicas.get(id);
      return { id, sockets: r.sockets, live: r.live, status: statusOf(id), colour: colourOf(id) };
    }),
    replicaCount: countText(),
    broker: brokerHealth(),
    drills: state.drills, drillsDone: [...drillsDone()],
    away: awayRun() && { ...awayRun(), got: [...awayRun().got] },
    lab: { cookie: state.cookie, landing: landing(), visitsShared: visits.shared,
      visitsLocal: visits.local },
    room: roomSnapshot(),
  }));
}

function start() {
  state.replicas.set(PAGE_BY, { sockets: null, live: true });
  buildGroups();
  buildFilters();
  buildVisits();
  buildNotes();
  buildSplit();
  buildRoom();
  buildDrills();
  buildRecords();
  buildLessons();
  feedMore();
  replicasChanged();
  renderTallies();
  window.stickyws = { state: snapshot };
  followWidth();
  window.addEventListener('pagehide', () => { state.unloading = true; });
  refreshReplicas();
  setInterval(() => { if (!document.hidden) refreshReplicas(); }, STATS_POLL_MS);
  connect();
}

/** Says so when the feed holds more than it shows, so the last entry in view never looks
 *  like the end. */
function feedMore() {
  const feed = $('feed');
  const check = () => {
    const more = feed.scrollHeight - feed.scrollTop - feed.clientHeight > 4;
    if ($('feed-more').hidden === more) $('feed-more').hidden = !more;
    feed.classList.toggle('feed-clipped', more);
  };
  feed.addEventListener('scroll', check, { passive: true });
  new MutationObserver(check).observe(feed, { childList: true, subtree: true });
  new ResizeObserver(check).observe(feed);
}

start();
