// stickyws demo page: six ways to send a message, the replica that took each one, whether it
// reached this page's WebSocket, and a live picture of the path it took; below, the state lab:
// counters, session state and a page split from its socket, with every replica's figures.
// No framework and no build step; user text is only ever set with textContent.
'use strict';

(() => {
  const body = document.body;
  const PAGE_BY = body.dataset.replica;
  const CLIENT_ID = body.dataset.clientId;
  const TOKEN = body.dataset.token;

  /** How long a message that should reach the socket may take before it counts as lost. */
  const DELIVERY_TIMEOUT_MS = 3000;
  /** How long a publish that found no socket waits for the reconnect that replays it. */
  const REPLAY_TIMEOUT_MS = 20000;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  /** /api/stats feeds both the picture and the lab's figures, which the others announce every 2 s. */
  const STATS_POLL_MS = 3000;
  const FEED_MAX = 200;
  /** The server keeps a client's newest MAX_NOTES notes. */
  const MAX_NOTES = Number(body.dataset.maxNotes) || 20;

  // Distinct, readable on white (>= 4.5:1 as text), given out by the replica's sorted index.
  const PALETTE = ['#1d64c8', '#c2410c', '#13795b', '#7e3fae',
    '#b81d6b', '#0b7285', '#946200', '#5b4a9e'];

  const GROUPS = [
    { title: 'HTTP: stateless',
      note: 'Nothing is kept between requests, so any replica can answer.',
      buttons: [
        { id: 'btn-echo-rr', label: 'HTTP & round robin', kind: 'echo', cookie: false,
          why: 'No cookie, so nginx takes turns: each answer comes from the next replica, and that is fine for stateless HTTP.' },
        { id: 'btn-echo-sticky', label: 'HTTP & sticky', kind: 'echo', cookie: true,
          why: 'The cookie names the replica that rendered this page, so nginx always sends the request there (to a backup only if it is down).' },
      ] },
    { title: 'WebSocket: stateful',
      note: 'A socket is one connection, held in one replica’s memory.',
      buttons: [
        { id: 'btn-ws', label: 'WebSocket only', kind: 'ws', cookie: true,
          why: 'Sent over the open socket, so the replica holding it answers every time: a socket is sticky by nature.' },
      ] },
    { title: 'Reaching a socket from HTTP',
      note: 'The request and the socket may land on different replicas.',
      buttons: [
        { id: 'btn-publish', label: 'Publish through Redis', kind: 'publish', cookie: false,
          why: 'Any replica takes the request and publishes it to Redis; the replica holding your socket delivers it, so it always arrives.' },
        { id: 'btn-direct-rr', label: 'Non-sticky HTTP & in-memory WebSocket', kind: 'direct', cookie: false,
          why: 'The replica that takes the request can only write to sockets in its own memory; without the cookie it is often not yours, and the message is lost.' },
        { id: 'btn-direct-sticky', label: 'Sticky HTTP & in-memory WebSocket', kind: 'direct', cookie: true,
          why: 'nginx routes the request and the socket by the same cookie, so they meet on one replica and in-memory delivery works while it lives.' },
      ] },
  ];
  const BUTTONS = GROUPS.flatMap((g) => g.buttons);

  const state = {
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
  };

  /** The state lab's own state: what the page has seen of counters, notes and landings. */
  const lab = {
    /** Visit counts seen: replica -> its own count; the shared one; visits this page made. */
    visits: { local: new Map(), shared: null, made: 0, last: null },
    /** Per store, every note known to be added (sent and answered, or seen in an answer). */
    notes: {
      local: { known: new Set(), tally: { sent: 0, hits: 0, rebuilt: 0, errors: 0, by: {} } },
      shared: { known: new Set(), tally: { sent: 0, hits: 0, rebuilt: 0, errors: 0, by: {} } },
    },
    /** The sticky cookie's value as far as the page knows (HttpOnly: JS cannot read it). */
    cookie: PAGE_BY,
    forgotBy: '',
    landing: null,
    landings: 0,
    /** The feed entry of a reconnect made on purpose, filled by the next welcome. */
    pendingReopen: null,
    /** The per-replica table as last drawn. */
    statsShown: '',
  };

  // ---- small DOM helpers ----------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    for (const c of children) node.append(c);
    return node;
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ---- replicas and their colours -------------------------------------------------------

  const byName = (a, b) => a.localeCompare(b, 'en', { numeric: true });
  const replicaNames = () => [...state.replicas.keys()].sort(byName);

  function colourOf(name) {
    const i = replicaNames().indexOf(name);
    return i < 0 ? '#5f6b7a' : PALETTE[i % PALETTE.length];
  }

  /** A coloured chip naming a replica; recoloured whenever the set of replicas changes. */
  function chip(name) {
    const node = el('span', { class: 'chip', 'data-replica': name });
    node.textContent = name;
    node.style.setProperty('--c', colourOf(name));
    return node;
  }

  function recolour() {
    for (const node of document.querySelectorAll('[data-replica]')) {
      if (node.dataset.replica) node.style.setProperty('--c', colourOf(node.dataset.replica));
    }
  }

  /** Adds a replica named in a response or frame that the picture does not show yet. */
  function noteReplica(name) {
    if (!name) return;
    const known = state.replicas.get(name);
    if (known && known.live) return;
    state.replicas.set(name, { sockets: known ? known.sockets : null, live: true });
    replicasChanged();
  }

  function replicasChanged() {
    recolour();
    drawTopology();
    for (const b of BUTTONS) renderTally(b);
    const pageAlive = state.replicas.get(PAGE_BY).live;
    $('page-by').classList.toggle('chip-down', !pageAlive);
    $('page-by').title = pageAlive ? '' : `${PAGE_BY} is down; nginx sends this page's sticky requests to a backup`;
    const live = [...state.replicas.values()].filter((r) => r.live).length;
    $('replica-count').textContent = `${live} replica${live === 1 ? '' : 's'} live`;
  }

  /** One poll for the picture and the lab's panel: /api/stats lists the replicas with figures. */
  async function refreshReplicas() {
    let data;
    try {
      data = await request('/api/stats', { credentials: 'omit' });
    } catch (err) {
      // nginx or every replica unreachable: keep the last picture; the socket state says more.
      renderStatsError(err);
      return;
    }
    const listed = new Set();
    for (const r of data.replicas || []) {
      listed.add(r.id);
      state.replicas.set(r.id, { sockets: r.sockets, live: true });
    }
    // Without the broker a replica only knows itself; then absence says nothing.
    if (data.complete !== false) {
      for (const [name, r] of state.replicas) if (!listed.has(name)) r.live = false;
    }
    // Redrawing the picture cuts its running trails short: only when it would change.
    const drawn = JSON.stringify([...state.replicas]);
    if (drawn !== topo.drawn) { topo.drawn = drawn; replicasChanged(); }
    renderStats(data);
  }

  // ---- the topology picture -------------------------------------------------------------

  const topo = { svg: null, nodes: {}, vertical: false, layers: {}, drawn: '' };

  /** Node boxes for the current replica set; vertical on narrow screens so text stays legible. */
  function layout(names, vertical) {
    const nodes = {};
    if (!vertical) {
      const rh = 44, gap = 10, n = Math.max(names.length, 1);
      const height = Math.max(170, n * rh + (n - 1) * gap + 32);
      const mid = height / 2;
      nodes.browser = { x: 6, y: mid - 26, w: 94, h: 52 };
      nodes.nginx = { x: 144, y: mid - 26, w: 104, h: 52 };
      nodes.redis = { x: 452, y: mid - 26, w: 78, h: 52 };
      const top = mid - (n * rh + (n - 1) * gap) / 2;
      names.forEach((name, i) => { nodes[name] = { x: 294, y: top + i * (rh + gap), w: 120, h: rh }; });
      return { width: 536, height, nodes };
    }
    const width = 360, n = Math.max(names.length, 1), gap = 8;
    const rw = Math.min(120, (width - 24 - (n - 1) * gap) / n);
    const left = (width - (n * rw + (n - 1) * gap)) / 2;
    nodes.browser = { x: 120, y: 8, w: 120, h: 44 };
    nodes.nginx = { x: 120, y: 84, w: 120, h: 44 };
    names.forEach((name, i) => { nodes[name] = { x: left + i * (rw + gap), y: 166, w: rw, h: 48 }; });
    nodes.redis = { x: 120, y: 252, w: 120, h: 44 };
    return { width, height: 304, nodes };
  }

  /** Below this width the horizontal picture's text would be too small to read. */
  const isNarrow = (host) => host.clientWidth > 0 && host.clientWidth < 400;

  // Where lines leave a box (towards the replicas' far side) and enter it.
  function outPt(b) { return topo.vertical ? [b.x + b.w / 2, b.y + b.h] : [b.x + b.w, b.y + b.h / 2]; }
  function inPt(b) { return topo.vertical ? [b.x + b.w / 2, b.y] : [b.x, b.y + b.h / 2]; }
  const pathOf = (pts) => 'M' + pts.map((p) => p.map((v) => v.toFixed(1)).join(' ')).join(' L');

  function drawTopology() {
    const host = $('topology');
    const names = replicaNames();
    topo.vertical = isNarrow(host);
    const { width, height, nodes } = layout(names, topo.vertical);
    topo.nodes = nodes;

    const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', class: 'topo' });
    root.append(svg('title', { id: 'topo-svg-title' }, 'Cluster topology'));
    root.append(svg('desc', { id: 'topo-svg-desc' }, describeTopology(names)));
    root.setAttribute('aria-labelledby', 'topo-svg-title topo-svg-desc');
    const layers = {};
    for (const name of ['edges', 'socket', 'trails', 'nodes', 'marks']) {
      layers[name] = root.appendChild(svg('g', { class: `layer-${name}` }));
    }
    const { browser, nginx, redis } = nodes;
    layers.edges.append(svg('path', { class: 'edge', d: pathOf([outPt(browser), inPt(nginx)]) }));
    for (const name of names) {
      layers.edges.append(svg('path', { class: 'edge', d: pathOf([outPt(nginx), inPt(nodes[name])]) }));
      layers.edges.append(svg('path', { class: 'edge edge-redis', d: pathOf([outPt(nodes[name]), inPt(redis)]) }));
    }
    drawNode(layers.nodes, 'browser', browser, 'Browser', 'this page');
    drawNode(layers.nodes, 'nginx', nginx, 'nginx', 'routes on cookie');
    drawNode(layers.nodes, 'redis', redis, 'Redis', 'pub/sub');
    for (const name of names) drawReplica(layers.nodes, name, nodes[name]);

    topo.svg = root;
    topo.layers = layers;
    host.replaceChildren(root);
    drawSocketLine();
  }

  function describeTopology(names) {
    const parts = names.map((n) => {
      const r = state.replicas.get(n);
      if (!r.live) return `${n} (down)`;
      return r.sockets == null ? n : `${n} (${r.sockets} socket${r.sockets === 1 ? '' : 's'})`;
    });
    const socket = state.wsState === 'open' ? `Your WebSocket is held by ${state.wsBy}.` : 'Your WebSocket is not connected.';
    return `The browser reaches nginx, which forwards to the replicas ${parts.join(', ')}; ` +
      `Redis links the replicas. This page was rendered by ${PAGE_BY}. ${socket}`;
  }

  function drawNode(layer, key, b, title, sub) {
    const g = svg('g', { class: `node node-${key}`, 'data-node': key });
    g.append(svg('rect', { x: b.x, y: b.y, width: b.w, height: b.h, rx: 8 }));
    g.append(svg('rect', { x: b.x, y: b.y, width: b.w, height: b.h, rx: 8, class: 'halo' }));
    g.append(svg('text', { x: b.x + b.w / 2, y: b.y + b.h / 2 - 3, class: 'node-title' }, title));
    g.append(svg('text', { x: b.x + b.w / 2, y: b.y + b.h / 2 + 13, class: 'node-sub' }, sub));
    layer.append(g);
    return g;
  }

  function drawReplica(layer, name, b) {
    const r = state.replicas.get(name);
    let sub = r.live ? (r.sockets == null ? 'live' : `${r.sockets} socket${r.sockets === 1 ? '' : 's'}`) : 'down';
    if (name === PAGE_BY) sub += ' · page';
    const g = drawNode(layer, 'replica', b, name, sub);
    g.dataset.nodeReplica = name;
    g.classList.toggle('down', !r.live);
    g.style.setProperty('--c', r.live ? colourOf(name) : '#8a94a3');
  }

  /** The lasting line from the browser to the replica that holds the socket. */
  function drawSocketLine() {
    const layer = topo.layers.socket;
    if (!layer) return;
    layer.replaceChildren();
    const target = topo.nodes[state.wsBy];
    if (state.wsState !== 'open' || !target) return;
    const { browser, nginx } = topo.nodes;
    const line = svg('path', {
      class: 'socket-line',
      d: pathOf([outPt(browser), inPt(nginx), outPt(nginx), inPt(target)]),
    });
    line.style.setProperty('--c', colourOf(state.wsBy));
    layer.append(line);
  }

  /** A trail that travels along a route, then fades and removes itself. */
  function trail(pts, colour, delayMs) {
    if (!topo.layers.trails || pts.some((p) => !p)) return;
    const path = svg('path', { class: 'trail', d: pathOf(pts), pathLength: 1 });
    path.style.setProperty('--c', colour);
    path.style.animationDelay = `${delayMs}ms, ${delayMs + 900}ms`;
    path.addEventListener('animationend', (e) => { if (e.animationName === 'fade') path.remove(); });
    topo.layers.trails.append(path);
  }

  function flash(key, delayMs) {
    const g = topo.layers.nodes && topo.layers.nodes.querySelector(
      key === 'redis' ? '[data-node="redis"]' : `[data-node-replica="${CSS.escape(key)}"]`);
    if (!g) return;
    setTimeout(() => {
      g.classList.remove('flash');
      void g.getBoundingClientRect(); // restart the animation
      g.classList.add('flash');
    }, delayMs);
  }

  /** A fading ✕ beside a node: the message stopped there. */
  function miss(key, delayMs) {
    const b = topo.nodes[key];
    if (!b || !topo.layers.marks) return;
    const [x, y] = topo.vertical ? [b.x + b.w - 4, b.y + 4] : [b.x + b.w + 12, b.y + 8];
    const g = svg('g', { class: 'miss' });
    g.append(svg('circle', { cx: x, cy: y, r: 9 }));
    g.append(svg('text', { x, y: y + 4 }, '✕'));
    g.style.animationDelay = `${delayMs}ms`;
    g.addEventListener('animationend', () => g.remove());
    topo.layers.marks.append(g);
  }

  // Routes, in the direction the message travels.
  const N = () => topo.nodes;
  const toReplica = (r) => [outPt(N().browser), inPt(N().nginx), outPt(N().nginx), N()[r] && inPt(N()[r])];
  const fromReplica = (r) => toReplica(r).reverse();
  const viaRedis = (from, to) => [N()[from] && outPt(N()[from]), inPt(N().redis), N()[to] && outPt(N()[to])];

  /** First leg: the request reaching the replica that took it. */
  function animateRequest(press) {
    press.requestShownAt = performance.now();
    trail(toReplica(press.took), colourOf(press.took), 0);
    flash(press.took, 450);
  }

  /** The rest of the path, drawn once the outcome is known, after the first leg has run. */
  function animateOutcome(press) {
    let t = press.requestShownAt ? Math.max(0, press.requestShownAt + 550 - performance.now()) : 0;
    if (!press.requestShownAt && press.took) { animateRequest(press); t = 550; }
    const { took, deliveredBy, outcome } = press;
    if (outcome === 'answered') {
      trail(fromReplica(took), colourOf(took), t);
    } else if (outcome === 'delivered') {
      if (press.def.kind === 'publish') {
        trail(viaRedis(took, deliveredBy), colourOf(took), t);
        flash('redis', t + 300);
        t += 550;
      }
      trail(fromReplica(deliveredBy), colourOf(deliveredBy), t);
    } else if (outcome === 'not-delivered') {
      miss(took, t);
    } else if (outcome === 'lost') {
      miss('browser', 0);
    }
  }

  // ---- tallies --------------------------------------------------------------------------

  function newTally() {
    return { sent: 0, pending: 0, answered: 0, delivered: 0, notDelivered: 0, lost: 0, errors: 0,
      took: {}, deliveredBy: {} };
  }

  const countsAttr = (counts) => Object.keys(counts).sort(byName).map((k) => `${k}:${counts[k]}`).join(' ');

  function countsLine(label, counts) {
    const line = el('span', { class: 'tally-by' }, `${label} `);
    const names = Object.keys(counts).sort(byName);
    // A chip and its count wrap as one.
    for (const name of names) line.append(el('span', { class: 'count' }, chip(name), el('span', { class: 'times' }, `×${counts[name]}`)));
    if (!names.length) line.append('—');
    return line;
  }

  function renderTally(def) {
    const t = state.tallies[def.id];
    const node = $(`tally-${def.id}`);
    if (!node) return;
    Object.assign(node.dataset, {
      sent: t.sent, pending: t.pending, answered: t.answered, delivered: t.delivered,
      notDelivered: t.notDelivered, lost: t.lost, errors: t.errors,
      took: countsAttr(t.took), deliveredBy: countsAttr(t.deliveredBy),
    });
    if (!t.sent) { node.replaceChildren(el('span', { class: 'muted' }, 'Not pressed yet.')); return; }
    const stats = el('span', { class: 'tally-stats' }, el('b', {}, String(t.sent)), ' sent');
    if (def.kind === 'echo') {
      stats.append(' · ', el('b', {}, `${t.answered}/${t.sent}`), ' answered');
    } else {
      const cls = t.delivered === t.sent - t.pending ? 'ok' : 'bad';
      stats.append(' · ', el('b', { class: cls }, `${t.delivered}/${t.sent}`), ' delivered');
    }
    if (t.errors) stats.append(' · ', el('b', { class: 'bad' }, String(t.errors)), ' failed');
    const by = el('span', { class: 'tally-line' }, countsLine(def.kind === 'echo' ? 'answered by' : 'took', t.took));
    if (def.kind !== 'echo') by.append(countsLine('→ delivered by', t.deliveredBy));
    node.replaceChildren(stats, by);
  }

  // ---- the feed -------------------------------------------------------------------------

  const timeNow = () => new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });

  function addToFeed(item) {
    const feed = $('feed');
    feed.prepend(item);
    while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
    $('feed-empty').hidden = true;
  }

  /** A connection event (not a press), shown in the socket view of the feed. */
  function feedEvent(message, tone = 'info') {
    const item = el('li', { class: `entry event event-${tone}`, 'data-kind': 'event', 'data-transport': 'socket' });
    item.append(el('span', { class: 'entry-time' }, timeNow()), el('span', { class: 'event-text' }));
    item.lastChild.textContent = message;
    addToFeed(item);
    return item;
  }

  const MESSAGE_FROM_ELSEWHERE = {
    broadcast: 'Broadcast', publish: 'Published from elsewhere', direct: 'Direct message from elsewhere',
  };

  /** A message that no press of this page sent: a broadcast, or a publish by a script. */
  function feedMessage(frame) {
    const what = MESSAGE_FROM_ELSEWHERE[frame.via] || `A ${frame.via} message from elsewhere`;
    const item = feedEvent(`${what}, taken by ${frame.from}, delivered by ${frame.replica}: ${frame.text}`,
      frame.replayed ? 'recovered' : 'info');
    item.dataset.via = frame.via;
    if (frame.id) item.dataset.id = frame.id;
    if (frame.replayed) {
      item.dataset.replayed = 'true';
      item.lastChild.append(' ', el('span', { class: 'badge badge-recovered' }, 'recovered after reconnect'));
    }
  }

  function renderEntry(press) {
    const { def, item } = press;
    Object.assign(item.dataset, {
      took: press.took, deliveredBy: press.deliveredBy, outcome: press.outcome,
    });
    const head = el('div', { class: 'entry-head' },
      el('span', { class: 'entry-tag' }, `#${press.seq}`),
      el('span', { class: 'entry-label' }, def.label),
      el('span', { class: 'entry-time' }, press.time));
    const path = el('div', { class: 'entry-path' });
    path.append('took ', press.took ? chip(press.took) : el('span', { class: 'muted' }, '…'));
    if (def.kind === 'publish') path.append(' → Redis');
    if (press.deliveredBy) path.append(' → delivered by ', chip(press.deliveredBy));
    path.append(' ', outcomeBadge(press.outcome));
    if (press.frame && press.frame.id) item.dataset.id = press.frame.id;
    const replayed = press.outcome === 'delivered' && press.frame && press.frame.replayed;
    if (replayed) {
      item.dataset.replayed = 'true';
      path.append(el('span', { class: 'badge badge-recovered' }, 'recovered after reconnect'));
    }
    const text = el('div', { class: 'entry-text' });
    text.textContent = press.text;
    const rows = [head, path, text];
    if (press.note) rows.push(el('div', { class: 'entry-note' }, press.note));
    item.replaceChildren(...rows);
  }

  const OUTCOME_TEXT = {
    pending: 'waiting…', answered: 'answered over HTTP', delivered: 'delivered',
    'not-delivered': 'not delivered', lost: 'lost', error: 'error',
  };
  function outcomeBadge(outcome) {
    return el('span', { class: `badge badge-${outcome}` }, OUTCOME_TEXT[outcome]);
  }

  // ---- presses --------------------------------------------------------------------------

  /** One press of one button: sends, then follows it until it is answered, delivered or lost. */
  function press(def) {
    const seq = ++state.seq;
    const input = $('message').value;
    const p = {
      seq, def, text: input ? `#${seq} ${input}` : `#${seq}`, time: timeNow(),
      took: '', deliveredBy: '', outcome: 'pending', note: '', frame: null, responded: false, timer: 0,
      item: el('li', { class: 'entry', 'data-kind': 'press', 'data-button': def.id,
        'data-transport': def.kind === 'echo' ? 'http' : 'socket', 'data-seq': seq }),
    };
    const t = state.tallies[def.id];
    t.sent += 1;
    t.pending += 1;
    renderEntry(p);
    addToFeed(p.item);
    renderTally(def);
    if (def.kind === 'ws') sendOverSocket(p);
    else sendOverHttp(p);
  }

  function sendOverSocket(p) {
    if (state.wsState !== 'open' || !state.ws) {
      settle(p, 'error', `the socket is ${state.wsState}; try again when it is open`);
      return;
    }
    state.pending.set(p.text, p);
    state.ws.send(JSON.stringify({ text: p.text }));
    p.took = state.wsBy; // the socket's replica takes whatever is sent on it
    renderEntry(p);
    animateRequest(p);
    p.timer = setTimeout(() => settle(p, 'lost', 'no echo within 3 s'), DELIVERY_TIMEOUT_MS);
  }

  async function sendOverHttp(p) {
    const { kind, cookie } = p.def;
    // Registered before sending: the socket frame can arrive before the HTTP answer does.
    if (kind !== 'echo') state.pending.set(p.text, p);
    let data;
    try {
      data = await postJson(`/api/${kind}/${encodeURIComponent(CLIENT_ID)}`, { text: p.text }, cookie);
    } catch (err) {
      if (p.frame) settle(p, 'delivered');
      else settle(p, 'error', err.message);
      return;
    }
    if (p.outcome !== 'pending') return;
    p.responded = true;
    p.took = data.replica || '';
    noteReplica(p.took);
    animateRequest(p);
    if (kind === 'echo') { settle(p, 'answered', stickyNote(p)); return; }
    if (p.frame) { settle(p, 'delivered', stickyNote(p)); return; }
    if (kind === 'direct' && data.delivered === 0) {
      settle(p, 'not-delivered', `${p.took} holds no socket of this page${state.wsBy ? `; ${state.wsBy} does` : ''}, so the message was dropped`);
    } else if (kind === 'publish' && data.receivers === 0) {
      // Redis keeps it in this client's history: the reconnecting socket gets it replayed.
      p.note = 'no replica held this page’s socket when it was published; Redis keeps it for the reconnect';
      renderEntry(p);
      p.timer = setTimeout(() => settle(p, 'lost', 'no socket took it back within 20 s'), REPLAY_TIMEOUT_MS);
    } else {
      renderEntry(p);
      p.timer = setTimeout(() => settle(p, 'lost', 'accepted, but no socket frame within 3 s'), DELIVERY_TIMEOUT_MS);
    }
  }

  /** Why a sticky request did not reach the page's replica, when that happens. */
  function stickyNote(p) {
    if (!p.def.cookie || p.def.kind === 'ws' || p.took === PAGE_BY) return '';
    if (!lab.cookie) return 'this page forgot its sticky cookie, so nginx spread the request';
    const r = state.replicas.get(PAGE_BY);
    return r && !r.live
      ? `${PAGE_BY}, named by the cookie, is down, so nginx used a backup`
      : `the cookie names ${PAGE_BY}, but nginx used a backup`;
  }

  function postJson(url, payload, withCookie) {
    return request(url, {
      method: 'POST',
      credentials: withCookie ? 'same-origin' : 'omit',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${TOKEN}` },
      body: JSON.stringify(payload),
    });
  }

  /** fetch, then the JSON answer; any failure (network, status, not JSON) is thrown as one
   *  readable Error, the server's `{"error"}` included. */
  async function request(url, init) {
    let res;
    try {
      res = await fetch(url, { cache: 'no-store', ...init });
    } catch (err) {
      throw new Error(`network error: ${err.message}`);
    }
    const data = await res.json().catch(() => null);
    if (!res.ok) {
      const e = data && data.error;
      throw new Error(e ? `${res.status} ${e.code}: ${e.message}` : `HTTP ${res.status} ${res.statusText}`.trim());
    }
    if (!data) throw new Error('the answer was not JSON');
    return data;
  }

  /** Gives a press its final outcome, once; updates its entry, its tally and the picture.
   *  The one change allowed afterwards: a frame arriving after its press was marked lost. */
  function settle(p, outcome, note = '') {
    const late = p.outcome === 'lost' && outcome === 'delivered';
    if (p.outcome !== 'pending' && !late) return;
    const t = state.tallies[p.def.id];
    if (late) {
      t.lost -= 1;
      note = 'arrived late, after the wait';
    } else {
      t.pending -= 1;
    }
    clearTimeout(p.timer);
    // A lost press stays findable for a while, so a late frame still updates it.
    if (outcome === 'lost') setTimeout(() => state.pending.delete(p.text), 60000);
    else state.pending.delete(p.text);
    p.outcome = outcome;
    p.note = note;
    if (outcome === 'delivered' && p.frame) {
      p.deliveredBy = p.frame.replica || '';
      if (!p.took) p.took = p.frame.from || '';
      if (p.frame.replayed) note = 'published while the socket was away; replayed from Redis when it reconnected';
    }
    const bump = (counts, key) => { counts[key] = (counts[key] || 0) + 1; };
    if (outcome === 'answered') t.answered += 1;
    if (outcome === 'delivered') t.delivered += 1;
    if (outcome === 'not-delivered') t.notDelivered += 1;
    if (outcome === 'lost') t.lost += 1;
    if (outcome === 'error') t.errors += 1;
    if (p.took && !late) bump(t.took, p.took);
    if (p.deliveredBy) bump(t.deliveredBy, p.deliveredBy);
    renderEntry(p);
    renderTally(p.def);
    if (outcome !== 'error') animateOutcome(p);
  }

  // ---- the WebSocket --------------------------------------------------------------------

  function setWsState(next, detail = '') {
    state.wsState = next;
    const node = $('ws-state');
    // Only real changes: the state word sits in a live region that a screen reader announces.
    if (node.dataset.state !== next) {
      node.dataset.state = next;
      node.textContent = next;
    }
    if ($('ws-detail').textContent !== detail) $('ws-detail').textContent = detail;
    const wsBy = $('ws-by');
    if (next === 'open') {
      wsBy.textContent = state.wsBy;
      wsBy.dataset.replica = state.wsBy;
      wsBy.className = 'chip';
      recolour();
    } else if (state.wsBy) {
      wsBy.className = 'chip chip-stale';
    }
    $('ws-split').classList.toggle('split-stale', next !== 'open');
    drawSocketLine();
  }

  function connect() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    // With the cursors, the replica replays what was published while the page was away.
    // `page` lets the replica that takes the socket say whether it also rendered the page.
    const query = new URLSearchParams({ token: TOKEN, page: PAGE_BY });
    if (state.lastId) query.set('last_id', state.lastId);
    if (state.lastBroadcastId) query.set('last_broadcast_id', state.lastBroadcastId);
    const url = `${scheme}//${location.host}/ws/${encodeURIComponent(CLIENT_ID)}?${query}`;
    setWsState('connecting', state.attempt ? `attempt ${state.attempt + 1}` : '');
    const ws = new WebSocket(url);
    state.ws = ws;
    ws.addEventListener('message', (e) => onFrame(e.data));
    ws.addEventListener('close', (e) => onClose(ws, e));
    // 'error' is always followed by 'close', which does the work.
  }

  function onFrame(raw) {
    let frame;
    try { frame = JSON.parse(raw); } catch { return; }
    if (frame.type === 'welcome') onWelcome(frame);
    else if (frame.type === 'message') onMessage(frame);
    else if (frame.type === 'history_lost') onHistoryLost(frame);
    else if (frame.type === 'error') feedEvent(`the socket’s replica refused a frame: ${frame.code}: ${frame.message}`, 'bad');
  }

  // ---- message ids: recovery across reconnects ------------------------------------------

  /** A history id "ms-seq" as [ms, seq], or null. */
  function parseId(text) {
    const m = /^(\d+)-(\d+)$/.exec(typeof text === 'string' ? text : '');
    return m ? [Number(m[1]), Number(m[2])] : null;
  }

  const isAfter = (a, b) => a[0] > b[0] || (a[0] === b[0] && a[1] > b[1]);

  /** The cursor each kind of message with an id moves. */
  const CURSOR = { publish: 'lastId', broadcast: 'lastBroadcastId' };

  /** Moves the frame's cursor to its id; false when the page has already had it (a duplicate). */
  function advanceCursor(frame) {
    const key = CURSOR[frame.via];
    const id = parseId(frame.id);
    if (!key || !id) return true;
    const cursor = parseId(state[key]);
    if (cursor && !isAfter(id, cursor)) return false;
    state[key] = frame.id;
    return true;
  }

  function onHistoryLost(frame) {
    const what = frame.stream === 'broadcast' ? 'broadcasts' : 'messages to this page';
    const item = feedEvent(`Some ${what} sent while the socket was away may be missing: ${frame.message}`, 'bad');
    item.dataset.historyLost = frame.stream || '';
  }

  function onWelcome(frame) {
    const previous = state.wsBy;
    state.wsBy = frame.replica;
    // Where the histories stood when the page first connected; later welcomes echo the cursors.
    if (!state.lastId && parseId(frame.last_id)) state.lastId = frame.last_id;
    if (!state.lastBroadcastId && parseId(frame.last_broadcast_id)) state.lastBroadcastId = frame.last_broadcast_id;
    state.attempt = 0; // a welcome, not just an open, proves the socket works
    noteReplica(frame.replica);
    let detail = '';
    if (previous && previous !== frame.replica) {
      detail = `moved from ${previous}`;
      let hint = '';
      if (frame.replica !== PAGE_BY) {
        hint = lab.cookie ? `; the cookie still names ${PAGE_BY}, so reload the page for one that matches`
          : '; with no sticky cookie, nginx spreads sockets round robin';
      }
      feedEvent(`socket moved from ${previous} to ${frame.replica}${hint}`, 'warn');
    } else if (!previous && frame.replica !== PAGE_BY) {
      detail = `not ${PAGE_BY}, which rendered the page`;
      feedEvent(`socket opened on ${frame.replica}, not on ${PAGE_BY} that rendered the page (nginx used a backup)`, 'warn');
    } else {
      feedEvent(`socket ${previous ? 'reopened' : 'opened'} on ${frame.replica}`);
    }
    setWsState('open', detail);
    landed(frame, !previous);
    // Socket counts changed: the replicas announce them every 2 s.
    setTimeout(refreshReplicas, 300);
    setTimeout(refreshReplicas, 2500);
  }

  function onMessage(frame) {
    if (!advanceCursor(frame)) { state.duplicates += 1; return; }
    noteReplica(frame.from);
    noteReplica(frame.replica);
    const p = state.pending.get(frame.text);
    if (!p) { feedMessage(frame); return; }
    p.frame = frame;
    // A press over HTTP waits for its answer too; it names the replica that took the request.
    if (p.def.kind === 'ws' || p.responded || p.outcome === 'lost') settle(p, 'delivered');
  }

  const CLOSE_REASONS = {
    1000: 'closed normally', 1001: 'server going away', 1006: 'connection lost',
    1011: 'server error', 1012: 'replica restarting', 1013: 'replica busy, try again later',
  };

  function onClose(ws, e) {
    if (ws !== state.ws) return;
    state.ws = null;
    const why = CLOSE_REASONS[e.code] || `closed (${e.code})`;
    if (state.wsState === 'open') feedEvent(`socket on ${state.wsBy} closed: ${why} (${e.code})`, 'warn');
    if (state.unloading) { setWsState('closed'); return; }
    scheduleReconnect(why);
  }

  /** Exponential backoff with jitter, so replicas that restart are not hit by every page at once. */
  function scheduleReconnect(why) {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
    const delay = base / 2 + Math.random() * base / 2;
    state.attempt += 1;
    const until = performance.now() + delay;
    const tick = () => {
      const left = until - performance.now();
      if (left <= 0) { connect(); return; }
      setWsState('reconnecting', `${why}; retrying in ${Math.ceil(left / 1000)} s`);
      state.retryTimer = setTimeout(tick, Math.min(left, 250));
    };
    tick();
  }

  // ---- the state lab --------------------------------------------------------------------

  /** Rows of the per-replica panel: key, label, value from one replica's listing (null when
   *  the replica sent no figures: one that has not announced them yet). */
  const figure = (read) => (r) => (r.figures ? read(r.figures) : null);
  const FIGURE_ROWS = [
    ['visits', 'visits (local)', figure((f) => f.visits)],
    ['sockets', 'sockets', (r) => r.sockets],
    ['entries', 'cache entries', figure((f) => f.entries)],
    ['hits', 'hits', figure((f) => f.hits)],
    ['misses', 'misses', figure((f) => f.misses)],
    ['rebuilds', 'rebuilds', figure((f) => f.rebuilds)],
    ['evictions', 'evictions', figure((f) => f.evictions)],
    ['expiries', 'expiries', figure((f) => f.expiries)],
    ['landed', 'sockets landed same / other', figure((f) => `${f.landed_same} / ${f.landed_other}`)],
    ['delivered', 'delivered', figure((f) => f.delivered)],
    ['rss', 'RSS (MiB)', figure((f) => (f.resident_bytes / 1048576).toFixed(1))],
  ];

  const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
  const seqOf = (note) => Number((/^#(\d+)/.exec(note) || [])[1]) || 0;

  /** A feed entry for one lab action; `fill` gives it its outcome once known. */
  function labEntry(label, transport) {
    const seq = ++state.seq;
    const item = el('li', { class: 'entry', 'data-kind': 'lab', 'data-transport': transport, 'data-seq': seq });
    const time = timeNow();
    const fill = (outcome, path, note = '') => {
      item.dataset.outcome = outcome;
      const head = el('div', { class: 'entry-head' }, el('span', { class: 'entry-tag' }, `#${seq}`),
        el('span', { class: 'entry-label' }, label), el('span', { class: 'entry-time' }, time));
      const rows = [head, el('div', { class: 'entry-path' }, ...path)];
      if (note) rows.push(el('div', { class: 'entry-note' }, note));
      item.replaceChildren(...rows);
    };
    fill('pending', [el('span', { class: 'muted' }, 'waiting…')]);
    addToFeed(item);
    return { seq, item, fill };
  }

  const labBadge = (cls, text) => el('span', { class: `badge badge-${cls}` }, text);
  /** A sentence of a lab result, chips and badges inline. */
  const line = (...parts) => el('p', { class: 'lab-line' }, ...parts);
  const errorLine = (message) => el('p', { class: 'lab-error' }, message);

  // -- visit counters: a fetch of the page without the cookie lands wherever nginx sends it.

  async function visitWithoutCookie() {
    const entry = labEntry('Visit without the cookie', 'http');
    let doc;
    try {
      const res = await fetch('/', { credentials: 'omit', cache: 'no-store' });
      if (!res.ok) throw new Error(`HTTP ${res.status} ${res.statusText}`.trim());
      doc = new DOMParser().parseFromString(await res.text(), 'text/html');
    } catch (err) {
      entry.fill('error', [labBadge('error', 'error')], err.message);
      renderVisits(`That visit failed: ${err.message}`);
      return;
    }
    const d = doc.body.dataset;
    const local = Number(d.visitsLocal);
    if (!d.replica || !d.visitsLocal || !Number.isFinite(local)) {
      entry.fill('error', [labBadge('error', 'error')], 'the page came back without its counters');
      renderVisits('That visit came back without its counters.');
      return;
    }
    const shared = d.visitsShared ? Number(d.visitsShared) : null;
    noteReplica(d.replica);
    // Answers can cross on the way back; a counter only grows, so the largest is the newest.
    lab.visits.local.set(d.replica, Math.max(local, lab.visits.local.get(d.replica) || 0));
    if (shared !== null) lab.visits.shared = Math.max(shared, lab.visits.shared || 0);
    lab.visits.made += 1;
    lab.visits.last = { replica: d.replica, local, shared };
    entry.item.dataset.replica = d.replica;
    entry.fill('answered', ['rendered by ', chip(d.replica), ` counts ${local}; Redis counts ${shared ?? 'unavailable'}`]);
    renderVisits();
    refreshReplicas();
  }

  function renderVisits(error = '') {
    const node = $('lab-visits');
    const { local, shared, last, made } = lab.visits;
    node.dataset.shared = shared ?? '';
    node.dataset.made = made;
    const counts = el('span', { class: 'tally-by' }, 'In memory: ');
    for (const name of [...local.keys()].sort(byName)) {
      counts.append(el('span', { class: 'count', 'data-col': name, 'data-local': local.get(name) },
        chip(name), el('span', { class: 'times' }, String(local.get(name)))));
    }
    const redis = el('span', { class: 'count' }, 'In Redis: ',
      el('b', { id: 'visits-shared', 'data-testid': 'visits-shared' }, shared === null ? 'unavailable' : String(shared)));
    const rows = [
      last ? line(`${plural(made, 'visit')} without the cookie so far; the last went to `, chip(last.replica),
        `, whose own count is ${last.local}.`)
        : line('So far only this page’s own visit, counted by ', chip(PAGE_BY), ' and by Redis.'),
      el('div', { class: 'tally-line' }, counts, redis),
    ];
    if (error) rows.push(errorLine(error));
    node.replaceChildren(...rows);
  }

  // -- session state: notes, local or shared, with or without the cookie.

  async function addNote(store) {
    const notes = lab.notes[store];
    const withCookie = !$('notes-no-cookie').checked;
    const input = $('message').value;
    const where = store === 'local' ? 'in memory' : 'in Redis';
    const entry = labEntry(`Note ${where} · ${withCookie && lab.cookie ? 'with cookie' : 'without cookie'}`, 'http');
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
      message: data.message || '', cookie: withCookie && !!lab.cookie });
    notes.tally.by[answer.replica] = (notes.tally.by[answer.replica] || 0) + 1;
    if (answer.hit) notes.tally.hits += 1;
    if (answer.rebuilt) notes.tally.rebuilt += 1;
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

  function stateBadge(store, a) {
    if (a.hit) return labBadge('hit', 'hit');
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
    const t = lab.notes[store].tally;
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
  function renderCookieChoice() {
    const without = $('notes-no-cookie').checked || !lab.cookie;
    for (const sub of document.querySelectorAll('[data-cookie-label]')) {
      sub.textContent = without ? 'without my cookie' : 'with my cookie';
    }
    $('notes-cookie-hint').textContent = !lab.cookie
      ? 'This page has no sticky cookie now, so these go round robin either way.'
      : without ? 'nginx spreads these round robin over the replicas.'
        : `The cookie names ${PAGE_BY}, so nginx sends these there.`;
  }

  // -- the sticky cookie and where the socket lands.

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
    lab.cookie = null;
    lab.forgotBy = data.replica || '';
    entry.fill('answered', ['answered by ', chip(lab.forgotBy), ' ',
      data.forgot ? `cleared sticky=${data.forgot}` : 'no cookie to clear']);
    renderCookie();
    renderCookieChoice();
    reopenSocket('Reopen after forgetting the cookie');
  }

  function renderCookie(error = '') {
    const node = $('cookie-state');
    node.dataset.cookie = lab.cookie ? 'set' : 'none';
    const rows = [lab.cookie
      ? line('Your cookie: ', el('code', {}, `sticky=${lab.cookie}`), ', set when ', chip(lab.cookie), ' rendered this page.')
      : line('Your cookie: ', el('b', {}, 'none'), lab.forgotBy ? ` (cleared by ${lab.forgotBy}). ` : '. ',
        'Reload the page to get one again.')];
    if (error) rows.push(errorLine(`Forgetting failed: ${error}`));
    node.replaceChildren(...rows);
  }

  /** Closes the socket on purpose and opens a new one at once; nginx routes it afresh. */
  function reopenSocket(label) {
    const old = state.ws;
    if (old && old.readyState === WebSocket.CONNECTING) {
      // Closing a socket before its handshake ends is an error in the console; let it finish.
      renderLanding('The socket is still connecting; try again in a moment.');
      return;
    }
    lab.pendingReopen = labEntry(label, 'socket');
    clearTimeout(state.retryTimer);
    state.ws = null; // its close event is ours: onClose ignores sockets it no longer holds
    if (old) old.close(1000, 'reconnect');
    state.attempt = 0;
    connect();
  }

  /** A welcome: where the socket landed, next to where the page came from. */
  function landed(frame, first) {
    const page = frame.page_replica || PAGE_BY;
    const same = typeof frame.same_replica === 'boolean' ? frame.same_replica : frame.replica === page;
    const rebuilt = frame.state !== 'hit';
    let message = `${frame.replica} already held your state`;
    if (rebuilt) message = first ? `${frame.replica} started your state` : `${frame.replica} had never seen you: state rebuilt`;
    lab.landing = { replica: frame.replica, page, same, rebuilt, message };
    lab.landings += 1;
    const split = $('ws-split');
    split.dataset.split = same ? 'same' : 'split';
    split.textContent = same ? 'same replica' : 'split';
    split.title = `Socket on ${frame.replica} — page came from ${page}: ${same ? 'same replica' : 'split'}`;
    const pending = lab.pendingReopen;
    if (pending) {
      lab.pendingReopen = null;
      Object.assign(pending.item.dataset, { replica: frame.replica, split: same ? 'same' : 'split', state: frame.state });
      pending.fill(same ? 'ok' : 'warn', ['socket on ', chip(frame.replica), ' · page from ', chip(page), ' ',
        same ? labBadge('same', 'same replica') : labBadge('split', 'split'), ' ', labBadge(rebuilt ? 'rebuilt' : 'hit', frame.state)],
      message);
    }
    renderLanding();
  }

  function renderLanding(error = '') {
    const node = $('lab-landing');
    const l = lab.landing;
    const rows = [];
    if (l) {
      Object.assign(node.dataset, { landings: lab.landings, replica: l.replica, page: l.page,
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

  // -- every replica's figures.

  function renderStats(data) {
    const listed = new Map((data.replicas || []).map((r) => [r.id, r]));
    const names = replicaNames();
    const table = $('stats');
    const head = el('tr', {}, el('th', { scope: 'col' }, el('span', { class: 'sr-only' }, 'figure')));
    for (const name of names) {
      const c = chip(name);
      if (!listed.has(name)) c.classList.add('chip-down');
      head.append(el('th', { scope: 'col', 'data-col': name }, c));
    }
    const rows = el('tbody');
    for (const [key, label, value] of FIGURE_ROWS) {
      const row = el('tr', { 'data-figure': key }, el('th', { scope: 'row' }, label));
      for (const name of names) {
        const r = listed.get(name);
        const v = r ? value(r) : null;
        row.append(el('td', { 'data-col': name }, v == null ? '—' : String(v)));
      }
      rows.append(row);
    }
    // Replaced only when a figure changed, so a screen reader reading the table is not reset.
    const shown = head.outerHTML + rows.outerHTML;
    if (shown !== lab.statsShown) {
      lab.statsShown = shown;
      table.replaceChildren(table.querySelector('caption'), el('thead', {}, head), rows);
    }
    $('stats-shared').textContent = data.shared_visits == null ? 'unavailable' : String(data.shared_visits);
    const source = $('stats-source');
    source.replaceChildren('Answered by ', chip(data.replica || '?'),
      data.complete === false
        ? ', which could not reach Redis, so it lists only itself.'
        : ': its own figures now, the others’ as they announced them, at most 2 s ago.');
  }

  function renderStatsError(err) {
    $('stats-source').replaceChildren(errorLine(`Could not refresh: ${err.message}`));
  }

  function buildLab() {
    lab.visits.local.set(PAGE_BY, Number(body.dataset.visitsLocal) || 0);
    lab.visits.shared = body.dataset.visitsShared ? Number(body.dataset.visitsShared) : null;
    $('btn-visit').addEventListener('click', visitWithoutCookie);
    $('btn-note-local').addEventListener('click', () => addNote('local'));
    $('btn-note-shared').addEventListener('click', () => addNote('shared'));
    $('btn-forget').addEventListener('click', forgetCookie);
    $('btn-reconnect').addEventListener('click', () => reopenSocket('Reconnect my socket'));
    $('notes-no-cookie').addEventListener('change', renderCookieChoice);
    renderVisits();
    renderNotes('local', null);
    renderNotes('shared', null);
    renderCookieChoice();
    renderCookie();
    renderLanding();
  }

  // ---- building the controls ------------------------------------------------------------

  function buildGroups() {
    const host = $('groups');
    for (const group of GROUPS) {
      const section = el('section', { class: 'group' },
        el('div', { class: 'group-head' }, el('h3', {}, group.title), el('p', { class: 'group-note' }, group.note)));
      for (const def of group.buttons) {
        state.tallies[def.id] = newTally();
        const button = el('button', { type: 'button', id: def.id, 'data-testid': def.id, class: 'btn',
          'aria-describedby': `why-${def.id} tally-${def.id}` }, def.label);
        button.addEventListener('click', () => press(def));
        const tally = el('div', { class: 'tally', id: `tally-${def.id}`, 'data-testid': `tally-${def.id}`,
          'data-button': def.id });
        section.append(el('div', { class: 'experiment' }, button,
          el('div', { class: 'experiment-body' }, el('p', { class: 'why', id: `why-${def.id}` }, def.why), tally)));
      }
      host.append(section);
    }
  }

  function buildFilters() {
    for (const button of document.querySelectorAll('.filters button')) {
      button.addEventListener('click', () => {
        state.filter = button.dataset.filter;
        $('feed').dataset.filter = state.filter;
        for (const b of document.querySelectorAll('.filters button')) {
          b.setAttribute('aria-pressed', String(b === button));
        }
      });
    }
  }

  /** A plain snapshot for browser tests. */
  function snapshot() {
    return JSON.parse(JSON.stringify({
      pageBy: PAGE_BY, wsBy: state.wsBy, wsState: state.wsState, clientId: CLIENT_ID,
      tallies: state.tallies,
      cursors: { lastId: state.lastId, lastBroadcastId: state.lastBroadcastId, duplicates: state.duplicates },
      replicas: replicaNames().map((id) => ({ id, ...state.replicas.get(id), colour: colourOf(id) })),
      lab: { cookie: lab.cookie, landing: lab.landing, visitsShared: lab.visits.shared,
        visitsLocal: Object.fromEntries(lab.visits.local) },
    }));
  }

  function start() {
    state.replicas.set(PAGE_BY, { sockets: null, live: true });
    buildGroups();
    buildFilters();
    buildLab();
    replicasChanged();
    for (const def of BUTTONS) renderTally(def);
    window.stickyws = { state: snapshot };
    // Redraw only when the orientation of the picture would change.
    new ResizeObserver(() => {
      const vertical = isNarrow($('topology'));
      if (vertical !== topo.vertical) drawTopology();
    }).observe($('topology'));
    window.addEventListener('pagehide', () => { state.unloading = true; });
    refreshReplicas();
    setInterval(() => { if (!document.hidden) refreshReplicas(); }, STATS_POLL_MS);
    connect();
  }

  start();
})();
