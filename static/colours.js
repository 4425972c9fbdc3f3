// Replicas and their colours: a replica's colour is computed from its id alone (its number, or
// a hash of the id when it has none, turned into a hue), so every tab, and every page a
// replica renders, shows one replica in one colour whatever else it has seen. Which replicas
// exist is state.js's (filled by replicas.js); drawing them is topology.js's.

import { el } from './dom.js';
import { byName } from './format.js';
import { state } from './state.js';

export const replicaNames = () => [...state.replicas.keys()].sort(byName);

/** The colour of a replica that is down, or of a name that is no replica. */
export const GREY = '#5f6b7a';

/** FNV-1a over the id's UTF-16 units: small, stable, the same in every browser. */
function hash(text) {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i += 1) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** A hue for the id: ids ending in a number ("app-3", "app-3.w2") step by the golden angle
 *  from that number (app-1 blue), so neighbours (app-1, app-2, app-3) are far apart on the wheel; other ids
 *  take their hash's hue. */
export function hueOf(id) {
  const m = /(\d+)(?:\.w(\d+))?$/.exec(id);
  if (m) return (112.5 + Number(m[1]) * 137.508 + (m[2] ? Number(m[2]) * 23 : 0)) % 360;
  return hash(id) % 360;
}

/** Dark enough on white for text (OKLCH lightness 0.5 is about 6:1) at every hue. */
export function colourOf(name) {
  if (!name) return GREY;
  return `oklch(0.5 0.16 ${hueOf(name).toFixed(1)})`;
}

/** A coloured chip naming a replica. */
export function chip(name) {
  const node = el('span', { class: 'chip', 'data-replica': name });
  node.textContent = name;
  node.style.setProperty('--c', colourOf(name));
  return node;
}

/** Colours every node naming a replica (those drawn before the replica was known, too). */
export function recolour() {
  for (const node of document.querySelectorAll('[data-replica]')) {
    if (node.dataset.replica) node.style.setProperty('--c', colourOf(node.dataset.replica));
  }
}
