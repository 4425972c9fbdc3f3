// Page-wide notifications between modules that must not import each other: `health` (what
// the page knows of the replicas, the broker or its cookie changed), `lesson` (something a
// lesson of the guided path looks for happened). Listeners re-render from state.js.

const listeners = new Map();

export function on(name, listener) {
  if (!listeners.has(name)) listeners.set(name, []);
  listeners.get(name).push(listener);
}

export function emit(name, detail) {
  for (const listener of listeners.get(name) || []) {
    try { listener(detail); } catch (err) { console.warn(`${name} listener failed`, err); }
  }
}
