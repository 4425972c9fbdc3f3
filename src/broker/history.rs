//! The recovery window: every published message gets an id ([`StreamId`], from
//! [`crate::cursor`]), increasing per stream (a client's own stream, or the broadcast stream),
//! and stays retrievable for a bounded time and count, so a client that reconnects — to any
//! replica — can ask for what it missed. The in-process history lives here; Redis keeps its
//! own in streams.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::cursor::StreamId;
use crate::target::Target;

/// How much history is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Messages kept per client stream; 0 turns recovery off.
    pub per_client: usize,
    /// Messages kept in the broadcast stream.
    pub broadcast: usize,
    /// How long a stream is kept after its last message.
    pub ttl: Duration,
}

impl Window {
    pub fn enabled(&self) -> bool {
        self.per_client > 0
    }

    pub fn cap(&self, target: &Target) -> usize {
        match target {
            Target::Client(_) => self.per_client,
            Target::Broadcast => self.broadcast,
        }
    }
}

/// What a stream holds after a given id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// Messages after the id, oldest first.
    pub entries: Vec<(StreamId, Vec<u8>)>,
    /// Some messages after the id are no longer kept (or cannot be proven to be).
    pub gap: bool,
}

/// In-process history for the memory broker, with the same semantics as the Redis streams.
#[derive(Debug, Default)]
pub struct MemoryHistory {
    clients: HashMap<String, Stream>,
    broadcast: Option<Stream>,
    last: StreamId,
    /// When idle streams were last swept out of memory.
    swept: Option<Instant>,
}

#[derive(Debug)]
struct Stream {
    /// Shared with the publish that delivers them, so keeping a message copies nothing.
    entries: BTreeMap<StreamId, Bytes>,
    /// The newest id ever trimmed away: anything after a client's id up to this one is lost.
    max_deleted: StreamId,
    last_write: Instant,
}

impl Stream {
    fn new(now: Instant) -> Self {
        Self {
            entries: BTreeMap::new(),
            max_deleted: StreamId::ZERO,
            last_write: now,
        }
    }

    /// A stream idle for the whole TTL is gone, as Redis would have expired its key.
    fn live(&self, now: Instant, window: &Window) -> bool {
        now.saturating_duration_since(self.last_write) < window.ttl
    }
}

/// How often every stream is checked for expiry. Each access checks its own stream, so this
/// only bounds the memory idle streams hold; sweeping on every publish cost one clock read per
/// stream held (a third of the replica's CPU with 1000 clients).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl MemoryHistory {
    /// A new id, after every id handed out before (like Redis's `*`).
    fn next_id(&mut self) -> StreamId {
        let ms = now_ms();
        self.last = if ms > self.last.ms {
            StreamId { ms, seq: 0 }
        } else {
            StreamId {
                ms: self.last.ms,
                seq: self.last.seq + 1,
            }
        };
        self.last
    }

    pub fn append(&mut self, target: &Target, payload: Bytes, window: &Window) -> StreamId {
        let now = Instant::now();
        self.sweep(now, window);
        let id = self.next_id();
        let stream = match target {
            Target::Client(client) => self
                .clients
                .entry(client.as_str().to_owned())
                .or_insert_with(|| Stream::new(now)),
            Target::Broadcast => self.broadcast.get_or_insert_with(|| Stream::new(now)),
        };
        if !stream.live(now, window) {
            *stream = Stream::new(now);
        }
        stream.entries.insert(id, payload);
        stream.last_write = now;
        while stream.entries.len() > window.cap(target) {
            if let Some((old, _)) = stream.entries.pop_first() {
                stream.max_deleted = old;
            }
        }
        id
    }

    pub fn after(&mut self, target: &Target, after: StreamId, window: &Window) -> History {
        match self.live(target, window) {
            None => History {
                entries: Vec::new(),
                gap: after != StreamId::ZERO,
            },
            Some(stream) => History {
                entries: stream
                    .entries
                    .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                    .map(|(id, p)| (*id, p.to_vec()))
                    .collect(),
                gap: stream.max_deleted > after,
            },
        }
    }

    pub fn newest(&mut self, target: &Target, window: &Window) -> StreamId {
        self.live(target, window)
            .and_then(|s| s.entries.last_key_value())
            .map_or(StreamId::ZERO, |(id, _)| *id)
    }

    /// The target's stream, unless it has expired.
    fn live(&mut self, target: &Target, window: &Window) -> Option<&Stream> {
        let now = Instant::now();
        self.sweep(now, window);
        let stream = match target {
            Target::Client(client) => self.clients.get(client.as_str()),
            Target::Broadcast => self.broadcast.as_ref(),
        };
        stream.filter(|s| s.live(now, window))
    }

    fn sweep(&mut self, now: Instant, window: &Window) {
        if self
            .swept
            .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_EVERY)
        {
            return;
        }
        self.swept = Some(now);
        self.clients.retain(|_, stream| stream.live(now, window));
        if self
            .broadcast
            .as_ref()
            .is_some_and(|s| !s.live(now, window))
        {
            self.broadcast = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::ClientId;

    fn window(cap: usize) -> Window {
        Window {
            per_client: cap,
            broadcast: cap,
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn ids_are_milliseconds_now_and_count_up_within_one() {
        let mut h = MemoryHistory::default();
        let target = Target::Broadcast;
        let clock = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };
        let before = clock();
        let first = h.append(&target, Bytes::new(), &window(10));
        let second = h.append(&target, Bytes::new(), &window(10));
        let after = clock();
        assert!(
            (before..=after).contains(&first.ms),
            "{first} is a time between {before} and {after}"
        );
        assert!(second > first);
        if second.ms == first.ms {
            assert_eq!(second.seq, first.seq + 1);
        } else {
            assert_eq!(second.seq, 0);
        }
    }

    #[test]
    fn a_stream_idle_for_its_ttl_is_gone_and_recovery_off_means_no_window() {
        let mut h = MemoryHistory::default();
        let target = Target::Client(ClientId::parse("c").unwrap());
        let gone = Window {
            ttl: Duration::ZERO,
            ..window(10)
        };
        let id = h.append(&target, Bytes::from_static(b"m"), &gone);
        let after = h.after(&target, StreamId::ZERO, &gone);
        assert!(after.entries.is_empty(), "expired with its TTL: {after:?}");
        assert!(
            !h.after(&target, id, &window(10))
                .entries
                .iter()
                .any(|(i, _)| *i == id)
        );
        assert!(window(1).enabled());
        assert!(!window(0).enabled(), "HISTORY_LEN=0 turns recovery off");
    }

    #[test]
    fn history_after_an_id_is_what_came_later_in_order() {
        let mut h = MemoryHistory::default();
        let target = Target::Client(ClientId::parse("c").unwrap());
        let w = window(10);
        let ids: Vec<_> = (0..5)
            .map(|i| h.append(&target, Bytes::from(vec![i]), &w))
            .collect();
        assert!(ids.windows(2).all(|p| p[0] < p[1]));
        let got = h.after(&target, ids[1], &w);
        assert_eq!(
            got.entries.iter().map(|(_, p)| p[0]).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert!(!got.gap);
        assert_eq!(h.newest(&target, &w), ids[4]);
    }

    #[test]
    fn trimming_past_a_clients_id_is_reported_as_a_gap() {
        let mut h = MemoryHistory::default();
        let target = Target::Broadcast;
        let w = window(3);
        let ids: Vec<_> = (0..6)
            .map(|i| h.append(&target, Bytes::from(vec![i]), &w))
            .collect();
        let behind = h.after(&target, ids[0], &w);
        assert!(behind.gap, "ids 1 and 2 were trimmed");
        assert_eq!(behind.entries.len(), 3);
        assert!(
            !h.after(&target, ids[2], &w).gap,
            "nothing after ids[2] was trimmed"
        );
    }

    #[test]
    fn an_unknown_stream_is_a_gap_only_for_a_client_that_saw_something() {
        let mut h = MemoryHistory::default();
        let target = Target::Client(ClientId::parse("new").unwrap());
        assert!(!h.after(&target, StreamId::ZERO, &window(3)).gap);
        assert!(h.after(&target, StreamId { ms: 5, seq: 0 }, &window(3)).gap);
    }
}
