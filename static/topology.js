// The topology picture, inline SVG: browser, nginx, every replica seen and Redis, the lasting
// line of this page's socket, and the fading trail each press leaves along its path. Which
// replicas exist and their colours come from state.js and colours.js; when to redraw is
// decided by replicas.js (the set changed) and by the picture's own width.

import { PAGE_BY } from './config.js';
import { $, svg } from './dom.js';
import { colourOf, GREY } from './colours.js';
import { allReplicas, brokerHealth, statusOf } from './truth.js';
import { state } from './state.js';

const topo = { svg: null, nodes: {}, vertical: false, layers: {} };

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

export function drawTopology() {
  const host = $('topology');
  const names = allReplicas();
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
  const health = brokerHealth();
  const redisNode = drawNode(layers.nodes, 'redis', redis, 'Redis',
    health.state === 'unknown' ? 'pub/sub' : health.state);
  redisNode.dataset.health = health.state;
  redisNode.append(svg('title', {}, `Redis: ${health.detail}`));
  for (const name of names) drawReplica(layers.nodes, name, nodes[name]);

  topo.svg = root;
  topo.layers = layers;
  host.replaceChildren(root);
  drawSocketLine();
}

function describeTopology(names) {
  const parts = names.map((n) => {
    const r = state.replicas.get(n);
    const s = statusOf(n);
    if (s !== 'up' && s !== 'listed') return `${n} (${s})`;
    return !r || r.sockets == null ? n : `${n} (${r.sockets} socket${r.sockets === 1 ? '' : 's'})`;
  });
  const socket = state.wsState === 'open' ? `Your WebSocket is held by ${state.wsBy}.` : 'Your WebSocket is not connected.';
  return `The browser reaches nginx, which forwards to the replicas ${parts.join(', ')}; ` +
    `Redis links the replicas (${brokerHealth().detail}). This page was rendered by ${PAGE_BY}. ${socket}`;
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
  const s = statusOf(name);
  const live = s === 'up' || s === 'listed';
  let sub = live ? (!r || r.sockets == null ? 'up' : `${r.sockets} socket${r.sockets === 1 ? '' : 's'}`) : s;
  if (name === PAGE_BY) sub += ' · page';
  const g = drawNode(layer, 'replica', b, name, sub);
  g.dataset.nodeReplica = name;
  g.dataset.status = s;
  const leaving = s === 'draining' || s === 'stopping';
  g.classList.toggle('down', !live && !leaving);
  g.style.setProperty('--c', live || leaving ? colourOf(name) : GREY);
}

/** The lasting line from the browser to the replica that holds the socket. */
export function drawSocketLine() {
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
export function animateRequest(press) {
  press.requestShownAt = performance.now();
  trail(toReplica(press.took), colourOf(press.took), 0);
  flash(press.took, 450);
}

/** The rest of the path, drawn once the outcome is known, after the first leg has run. */
export function animateOutcome(press) {
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

/** Redraws only when the orientation of the picture would change. */
export function followWidth() {
  new ResizeObserver(() => {
    const vertical = isNarrow($('topology'));
    if (vertical !== topo.vertical) drawTopology();
  }).observe($('topology'));
}
