//! The recovery window: every published message gets an id ([`StreamId`], from
//! [`crate::cursor`]), increasing per stream (a client's own stream, a channel's, or the
//! broadcast stream), and stays retrievable for a bounded time and count, so a client that
//! reconnects — to any replica — can ask for what it missed. Each stream has an [`Epoch`],
//! drawn when it is created: a position from an earlier life of a stream (expired, or lost
//! with its broker) is told apart from one in the current life. The in-process history lives
//! here; Redis keeps its own in streams.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::cursor::{Epoch, Position, StreamId};
use crate::target::Target;

/// How much history is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Messages kept per client stream; 0 turns recovery off.
    pub per_client: usize,
    /// Messages kept per channel stream.
    pub per_channel: usize,
    /// Messages kept in the broadcast stream.
    pub broadcast: usize,
    /// How long a stream is kept after its last message.
    pub ttl: Duration,
    /// Most message bytes one history read returns (`MAX_REPLAY_BYTES`): what a reconnecting
    /// socket can be owed is bounded before it is fetched, not after.
    pub read_bytes: usize,
}

impl Window {
    pub fn enabled(&self) -> bool {
        self.per_client > 0
    }

    pub fn cap(&self, target: &Target) -> usize {
        match target {
            Target::Client(_) => self.per_client,
            Target::Channel(_) => self.per_channel,
            Target::Broadcast => self.broadcast,
        }
    }
}

/// What a stream holds after a given position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// Messages after the position, oldest first.
    pub entries: Vec<(StreamId, Vec<u8>)>,
    /// Some messages after the position are no longer kept (or cannot be proven to be): the
    /// stream was trimmed past it, expired, or is another life of it (another epoch).
    pub gap: bool,
    /// The stream's current epoch (unknown when there is no stream).
    pub epoch: Epoch,
    /// The read stopped at its byte budget: more messages follow the last entry.
    pub more: bool,
}

impl History {
    /// No stream at all: nothing to miss for a client that saw nothing in no known epoch;
    /// for any other, continuity cannot be shown.
    pub fn missing(after: Position) -> Self {
        Self {
            entries: Vec::new(),
            gap: after != Position::START,
            epoch: Epoch::UNKNOWN,
            more: false,
        }
    }

    /// What a live stream of `epoch` answers: `entries` are those after `after.id` when the
    /// client's position is in this epoch, else the whole stream (and a gap); `more` when the
    /// read stopped at its byte budget.
    pub fn of(
        after: Position,
        epoch: Epoch,
        entries: Vec<(StreamId, Vec<u8>)>,
        trimmed: StreamId,
        more: bool,
    ) -> Self {
        let continues = after.continues_in(epoch);
        Self {
            entries: entries
                .into_iter()
                .filter(|(id, _)| !continues || *id > after.id)
                .collect(),
            gap: !continues || trimmed > after.id,
            epoch,
            more,
        }
    }
}

/// In-process history for the memory broker, with the same semantics as the Redis streams.
#[derive(Debug, Default)]
pub struct MemoryHistory {
    streams: HashMap<Target, Stream>,
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
    epoch: Epoch,
}

impl Stream {
    fn new(now: Instant) -> Self {
        Self {
            entries: BTreeMap::new(),
            max_deleted: StreamId::ZERO,
            last_write: now,
            epoch: Epoch::fresh(),
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

    pub fn append(&mut self, target: &Target, payload: Bytes, window: &Window) -> Position {
        let now = Instant::now();
        let id = self.next_id();
        let stream = self.stream(target, now, window);
        stream.entries.insert(id, payload);
        stream.last_write = now;
        while stream.entries.len() > window.cap(target) {
            if let Some((old, _)) = stream.entries.pop_first() {
                stream.max_deleted = old;
            }
        }
        Position::new(stream.epoch, id)
    }

    pub fn after(&mut self, target: &Target, after: Position, window: &Window) -> History {
        match self.live(target, window) {
            None => History::missing(after),
            Some(stream) => {
                let start = if after.continues_in(stream.epoch) {
                    std::ops::Bound::Excluded(after.id)
                } else {
                    std::ops::Bound::Unbounded
                };
                let mut budget = window.read_bytes;
                let mut entries = Vec::new();
                let mut more = false;
                for (id, payload) in stream.entries.range((start, std::ops::Bound::Unbounded)) {
                    // The first one always fits: a read makes progress whatever the budget.
                    if !entries.is_empty() && payload.len() > budget {
                        more = true;
                        break;
                    }
                    budget = budget.saturating_sub(payload.len());
                    entries.push((*id, payload.to_vec()));
                }
                History::of(after, stream.epoch, entries, stream.max_deleted, more)
            }
        }
    }

    /// Where the target's stream stands; a stream is started (its epoch drawn) if there is
    /// none, so a client that counts from here will notice if it is lost before it reconnects.
    pub fn newest(&mut self, target: &Target, window: &Window) -> Position {
        let stream = self.stream(target, Instant::now(), window);
        let id = stream
            .entries
            .last_key_value()
            .map_or(StreamId::ZERO, |(id, _)| *id);
        Position::new(stream.epoch, id)
    }

    /// The target's live stream, started anew if it has none or it expired.
    fn stream(&mut self, target: &Target, now: Instant, window: &Window) -> &mut Stream {
        self.sweep(now, window);
        let stream = self
            .streams
            .entry(target.clone())
            .or_insert_with(|| Stream::new(now));
        if !stream.live(now, window) {
            *stream = Stream::new(now);
        }
        stream
    }

    /// The target's stream, unless it has expired.
    fn live(&mut self, target: &Target, window: &Window) -> Option<&Stream> {
        let now = Instant::now();
        self.sweep(now, window);
        self.streams.get(target).filter(|s| s.live(now, window))
    }

    fn sweep(&mut self, now: Instant, window: &Window) {
        if self
            .swept
            .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_EVERY)
        {
            return;
        }
        self.swept = Some(now);
        self.streams.retain(|_, stream| stream.live(now, window));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::ClientId;

    fn window(cap: usize) -> Window {
        Window {
            per_client: cap,
            per_channel: cap,
            broadcast: cap,
            ttl: Duration::from_secs(60),
            read_bytes: usize::MAX,
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
        let first = h.append(&target, Bytes::new(), &window(10)).id;
        let second = h.append(&target, Bytes::new(), &window(10)).id;
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
    fn a_stream_idle_for_its_ttl_is_gone_and_comes_back_in_a_new_epoch() {
        let mut h = MemoryHistory::default();
        let target = Target::Client(ClientId::parse("c").unwrap());
        let gone = Window {
            ttl: Duration::ZERO,
            ..window(10)
        };
        let at = h.append(&target, Bytes::from_static(b"m"), &gone);
        let after = h.after(&target, Position::START, &gone);
        assert!(after.entries.is_empty(), "expired with its TTL: {after:?}");
        assert!(h.after(&target, at, &gone).gap, "the client saw something");
        let again = h.append(&target, Bytes::from_static(b"n"), &gone);
        assert_ne!(again.epoch, at.epoch, "a new life of the stream");
        let resumed = h.after(&target, at, &window(10));
        assert!(resumed.gap, "{resumed:?}");
        assert_eq!(resumed.entries.len(), 1, "all of the new life");
        assert!(window(1).enabled());
        assert!(!window(0).enabled(), "HISTORY_LEN=0 turns recovery off");
    }

    #[test]
    fn history_after_a_position_is_what_came_later_in_order() {
        let mut h = MemoryHistory::default();
        let target = Target::Client(ClientId::parse("c").unwrap());
        let w = window(10);
        let at: Vec<_> = (0..5)
            .map(|i| h.append(&target, Bytes::from(vec![i]), &w))
            .collect();
        assert!(at.windows(2).all(|p| p[0].id < p[1].id));
        let got = h.after(&target, at[1], &w);
        assert_eq!(
            got.entries.iter().map(|(_, p)| p[0]).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert!(!got.gap);
        assert_eq!(h.newest(&target, &w), at[4]);
    }

    #[test]
    fn a_read_stops_at_its_byte_budget_and_says_more_follows() {
        let mut h = MemoryHistory::default();
        let target = Target::Broadcast;
        let w = Window {
            read_bytes: 25,
            ..window(10)
        };
        let at: Vec<_> = (0..5)
            .map(|_| h.append(&target, Bytes::from(vec![b'x'; 10]), &w))
            .collect();
        let read = h.after(&target, Position::START, &w);
        assert_eq!((read.entries.len(), read.more), (2, true), "20 of 25 bytes");
        let rest = h.after(&target, at[3], &w);
        assert_eq!((rest.entries.len(), rest.more), (1, false));
        let tiny = Window {
            read_bytes: 1,
            ..window(10)
        };
        assert_eq!(
            h.after(&target, Position::START, &tiny).entries.len(),
            1,
            "always progress"
        );
    }

    #[test]
    fn trimming_past_a_clients_position_is_reported_as_a_gap() {
        let mut h = MemoryHistory::default();
        let target = Target::Broadcast;
        let w = window(3);
        let at: Vec<_> = (0..6)
            .map(|i| h.append(&target, Bytes::from(vec![i]), &w))
            .collect();
        let behind = h.after(&target, at[0], &w);
        assert!(behind.gap, "ids 1 and 2 were trimmed");
        assert_eq!(behind.entries.len(), 3);
        assert!(
            !h.after(&target, at[2], &w).gap,
            "nothing after at[2] was trimmed"
        );
    }

    #[test]
    fn an_unknown_stream_is_a_gap_only_for_a_client_that_saw_something() {
        let mut h = MemoryHistory::default();
        let target = Target::Client(ClientId::parse("new").unwrap());
        assert!(!h.after(&target, Position::START, &window(3)).gap);
        let seen = Position::new(Epoch::UNKNOWN, StreamId { ms: 5, seq: 0 });
        assert!(h.after(&target, seen, &window(3)).gap);
        let counted = Position::new(Epoch(9), StreamId::ZERO);
        assert!(
            h.after(&target, counted, &window(3)).gap,
            "a client counting from an epoch that is gone"
        );
        let started = h.newest(&target, &window(3));
        assert!(started.epoch.is_known());
        assert!(
            !h.after(&target, started, &window(3)).gap,
            "newest started the stream: nothing missed in it"
        );
    }
}
