// Replicas and their colours: each replica seen gets a colour by its place in the sorted list,
// and chips naming a replica are recoloured when that list changes. Which replicas exist is
// state.js's (filled by replicas.js); drawing them is topology.js's.

import { el } from './dom.js';
import { byName } from './format.js';
import { state } from './state.js';

// Distinct, readable on white (>= 4.5:1 as text), given out by the replica's sorted index.
const PALETTE = ['#1d64c8', '#c2410c', '#13795b', '#7e3fae',
  '#b81d6b', '#0b7285', '#946200', '#5b4a9e'];

export const replicaNames = () => [...state.replicas.keys()].sort(byName);

export function colourOf(name) {
  const i = replicaNames().indexOf(name);
  return i < 0 ? '#5f6b7a' : PALETTE[i % PALETTE.length];
}

/** A coloured chip naming a replica; recoloured whenever the set of replicas changes. */
export function chip(name) {
  const node = el('span', { class: 'chip', 'data-replica': name });
  node.textContent = name;
  node.style.setProperty('--c', colourOf(name));
  return node;
}

export function recolour() {
  for (const node of document.querySelectorAll('[data-replica]')) {
    if (node.dataset.replica) node.style.setProperty('--c', colourOf(node.dataset.replica));
  }
}
