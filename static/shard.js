// Which Redis Cluster shard holds this page's client and its room: the slot of each and the
// master serving it, from the `shard` part of /api/stats (polled by replicas.js, which asks
// for this client and the room joined, or before a join the room the name field names). On
// one Redis the answer is null and the line stays hidden, so the page never names a shard that
// does not exist.

import { $ } from './dom.js';

const line = (what, s) => (s ? `${what}: slot ${s.slot} on ${s.master || 'a master not known right now'}` : null);

/** The line for the last answer's `shard` (null or absent off a cluster); `joined` says whether
 * `channel` is the room the page is in or only the one its name field would join. */
export function renderShard(shard, channel, joined) {
  const box = $('shard');
  if (!shard) {
    box.hidden = true;
    box.textContent = '';
    return;
  }
  const parts = [line('your client', shard.client), channel && line(`room ${channel}${joined ? '' : ' (not joined)'}`, shard.channel)]
    .filter(Boolean);
  const text = `Redis Cluster — ${parts.join('; ')}.`;
  if (box.textContent !== text) box.textContent = text;
  box.hidden = false;
}
