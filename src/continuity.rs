//! Continuity of each held target across a lost subscription (issue #14, item 3): per target
//! (a client, a channel, the broadcast stream) this replica remembers the newest history
//! position it delivered, so after the subscriber connection was lost and resubscribed it can
//! read what it missed from history and deliver it, in order, before the target's live messages.
//!
//! One [`Track`] per held target, kept by the registry beside the target's sockets (so it goes
//! when the target is released). While a target is being filled its live messages are held here,
//! within a per-target and a replica-wide byte budget; when the fill lands, what was filled goes
//! out first and then the held messages after the filled position; a live message at or before
//! the position already delivered is a duplicate and is dropped. Reading history and deciding
//! what a gap means are [`crate::gap_fill`]'s; queueing frames on sockets is the registry's.

use std::collections::VecDeque;

use crate::cursor::Position;
use crate::frame::Outgoing;
use crate::resume::covered;

/// Most bytes of live messages held for one target while it is filled.
pub const MAX_HELD_PER_TARGET: usize = 4 * 1024 * 1024;
/// Most bytes of live messages held for all targets being filled at once.
pub const MAX_HELD_TOTAL: usize = 64 * 1024 * 1024;

/// Where one target's delivery stands.
#[derive(Debug, Default)]
pub struct Track {
    /// The newest position delivered (or queued in `ready`) to the target's sockets.
    last: Option<Position>,
    /// Where the target's sockets started (their welcome or `subscribed` cursor), for a target
    /// that has not been delivered anything yet: where a fill starts from then.
    base: Option<Position>,
    /// Set from a resubscribe until its fill lands: live messages wait here.
    waiting: Option<Waiting>,
    /// Landed, in order, not yet queued on the sockets: handed out as their queues have room
    /// ([`Track::take`]), so a fill is not a burst that makes every socket a slow consumer.
    /// Live messages that come meanwhile queue up behind.
    ready: VecDeque<Outgoing>,
    /// Bytes in `waiting` and `ready`.
    bytes: usize,
}

/// Live messages held back until a fill lands.
#[derive(Debug, Default)]
struct Waiting {
    /// Which resubscribe the fill must answer: a fill read before a later loss is ignored,
    /// and the later round reads again.
    round: u64,
    held: Vec<(Position, Outgoing)>,
    /// The budget ran out: what was held was dropped, so the fill cannot be completed and the
    /// target's sockets must resume from their cursors instead.
    overflowed: bool,
}

/// What to do with a live message of a target.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Queue it on the target's sockets now.
    Pass,
    /// Kept here: it goes out after the fill.
    Held,
    /// Already delivered (filled): drop it.
    Duplicate,
    /// Dropped: the hold budget ran out; the fill will end in a resync.
    Overflow,
}

/// How a fill landed.
#[derive(Debug, PartialEq, Eq)]
pub enum Landed {
    /// This many messages are ready to go out, in order ([`Track::take`]).
    Ready(usize),
    /// The fill was for an older round (the link was lost again since): nothing changed.
    Stale,
    /// Messages had to be dropped: the sockets must resume from their cursors.
    Resync,
}

impl Track {
    /// A live message at `at`; `held_total` is what all targets hold now.
    pub fn admit(&mut self, at: Position, frame: &Outgoing, held_total: &mut usize) -> Admit {
        if let Some(waiting) = &self.waiting {
            if waiting.overflowed {
                return Admit::Overflow;
            }
            if !self.reserve(frame.bytes.len(), held_total) {
                self.overflow(held_total);
                return Admit::Overflow;
            }
            if let Some(waiting) = &mut self.waiting {
                waiting.held.push((at, frame.clone()));
            }
            return Admit::Held;
        }
        if self.last.is_some_and(|last| covered(last, at)) {
            return Admit::Duplicate;
        }
        if !self.ready.is_empty() {
            if !self.reserve(frame.bytes.len(), held_total) {
                self.overflow(held_total);
                return Admit::Overflow;
            }
            self.ready.push_back(frame.clone());
        }
        self.last = Some(at);
        if self.ready.is_empty() {
            Admit::Pass
        } else {
            Admit::Held
        }
    }

    fn reserve(&mut self, size: usize, held_total: &mut usize) -> bool {
        if self.bytes + size > MAX_HELD_PER_TARGET || *held_total + size > MAX_HELD_TOTAL {
            return false;
        }
        self.bytes += size;
        *held_total += size;
        true
    }

    /// Drops everything held; the fill will end in a resync.
    fn overflow(&mut self, held_total: &mut usize) {
        *held_total -= self.bytes;
        self.bytes = 0;
        self.ready.clear();
        let waiting = self.waiting.get_or_insert_with(Waiting::default);
        waiting.held = Vec::new();
        waiting.overflowed = true;
    }

    /// A socket of the target starts at `at` (what it was welcomed or subscribed with, after
    /// any replay). Only a known position counts: one a broker could not answer proves nothing.
    pub fn started(&mut self, at: Position) {
        if !at.epoch.is_known() {
            return;
        }
        // The earliest start: a later socket's own gate and skip drop what it already has.
        if self.base.is_none_or(|base| at.id < base.id) {
            self.base = Some(at);
        }
    }

    /// The subscription was lost and is back (resubscribe `round`): hold live messages until
    /// [`Track::land`] of that round.
    pub fn begin(&mut self, round: u64) {
        self.waiting.get_or_insert_with(Waiting::default).round = round;
    }

    /// The round a fill of this target must answer, while one is due.
    pub fn round(&self) -> Option<u64> {
        self.waiting.as_ref().map(|waiting| waiting.round)
    }

    pub fn is_filling(&self) -> bool {
        self.waiting.is_some()
    }

    /// The newest position delivered to the target's sockets, if any.
    pub fn delivered(&self) -> Option<Position> {
        self.last
    }

    /// Where a fill reads history from; None when nothing is known (no socket of the target
    /// has started yet, so its sessions work out their own start).
    pub fn from(&self) -> Option<Position> {
        self.last.or(self.base)
    }

    /// The fill of `round` read `filled` (in order, each with its position): the filled
    /// messages not yet delivered, then the held ones after them, become ready to go out.
    pub fn land(
        &mut self,
        filled: Vec<(Position, Outgoing)>,
        round: u64,
        held_total: &mut usize,
    ) -> Landed {
        let Some(waiting) = self.waiting.take_if(|w| w.round == round || w.overflowed) else {
            return if self.waiting.is_some() {
                Landed::Stale
            } else {
                Landed::Ready(self.ready.len())
            };
        };
        if waiting.overflowed {
            return Landed::Resync;
        }
        let mut filled_bytes = 0;
        for (at, frame) in filled.into_iter().chain(waiting.held) {
            if self.last.is_some_and(|last| covered(last, at)) {
                continue;
            }
            self.last = Some(at);
            filled_bytes += frame.bytes.len();
            self.ready.push_back(frame);
        }
        // What was held is counted already; what was filled is counted now.
        *held_total -= self.bytes;
        self.bytes = filled_bytes;
        *held_total += filled_bytes;
        if self.bytes > MAX_HELD_PER_TARGET {
            self.overflow(held_total);
            self.waiting = None;
            return Landed::Resync;
        }
        Landed::Ready(self.ready.len())
    }

    /// Up to `n` ready messages, oldest first, to queue on the sockets now.
    pub fn take(&mut self, n: usize, held_total: &mut usize) -> Vec<Outgoing> {
        let n = n.min(self.ready.len());
        let out: Vec<Outgoing> = self.ready.drain(..n).collect();
        let size: usize = out.iter().map(|f| f.bytes.len()).sum();
        self.bytes -= size;
        *held_total -= size;
        out
    }

    /// Messages landed but not yet queued on the sockets.
    pub fn ready(&self) -> usize {
        self.ready.len()
    }

    /// The fill was given up (a gap, or history unreadable): drop what was held and forget
    /// where the target stood; its sockets are being closed to resume from their cursors.
    pub fn abandon(&mut self, held_total: &mut usize) {
        *held_total -= self.bytes;
        self.bytes = 0;
        self.ready.clear();
        self.waiting = None;
        self.last = None;
        self.base = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::{Epoch, StreamId};

    fn at(seq: u64) -> Position {
        Position::new(Epoch(7), StreamId { ms: 100, seq })
    }

    fn frame(n: u64) -> Outgoing {
        Outgoing::from(axum::extract::ws::Utf8Bytes::from(format!("m{n}")))
    }

    fn texts(frames: &[Outgoing]) -> Vec<String> {
        frames.iter().map(|f| f.bytes.to_string()).collect()
    }

    #[test]
    fn live_messages_pass_in_order_and_a_repeat_is_dropped() {
        let (mut track, mut total) = (Track::default(), 0);
        assert_eq!(track.admit(at(1), &frame(1), &mut total), Admit::Pass);
        assert_eq!(track.admit(at(2), &frame(2), &mut total), Admit::Pass);
        assert_eq!(track.admit(at(2), &frame(2), &mut total), Admit::Duplicate);
        assert_eq!(track.from(), Some(at(2)));
        // Another life of the history is not a duplicate.
        let other = Position::new(Epoch(8), StreamId { ms: 1, seq: 0 });
        assert_eq!(track.admit(other, &frame(9), &mut total), Admit::Pass);
    }

    /// Lands round `round` and takes everything ready.
    fn landed(track: &mut Track, filled: &[u64], round: u64, total: &mut usize) -> Vec<String> {
        let filled = filled.iter().map(|n| (at(*n), frame(*n))).collect();
        let Landed::Ready(n) = track.land(filled, round, total) else {
            panic!("not ready");
        };
        texts(&track.take(n, total))
    }

    #[test]
    fn a_fill_goes_out_before_held_live_messages_and_each_message_once() {
        let (mut track, mut total) = (Track::default(), 0);
        track.admit(at(1), &frame(1), &mut total);
        track.begin(1);
        // Live messages after the resubscribe: 4 and 5 are also in the history read below.
        for n in [4, 5, 6] {
            assert_eq!(track.admit(at(n), &frame(n), &mut total), Admit::Held);
        }
        assert_eq!(total, 6);
        assert_eq!(
            track.from(),
            Some(at(1)),
            "the fill reads after what was delivered"
        );
        let out = landed(&mut track, &[1, 2, 3, 4, 5], 1, &mut total);
        assert_eq!(out, ["m2", "m3", "m4", "m5", "m6"]);
        assert_eq!(total, 0, "the held bytes are given back");
        assert!(!track.is_filling());
        assert_eq!(track.admit(at(6), &frame(6), &mut total), Admit::Duplicate);
        assert_eq!(track.admit(at(7), &frame(7), &mut total), Admit::Pass);
    }

    #[test]
    fn ready_messages_go_out_as_there_is_room_and_live_ones_wait_behind_them() {
        let (mut track, mut total) = (Track::default(), 0);
        track.admit(at(1), &frame(1), &mut total);
        track.begin(1);
        track.admit(at(5), &frame(5), &mut total);
        let filled = [2, 3, 4].map(|n| (at(n), frame(n))).to_vec();
        assert_eq!(track.land(filled, 1, &mut total), Landed::Ready(4));
        assert_eq!(texts(&track.take(2, &mut total)), ["m2", "m3"]);
        assert_eq!(track.admit(at(6), &frame(6), &mut total), Admit::Held);
        assert_eq!(track.admit(at(6), &frame(6), &mut total), Admit::Duplicate);
        assert_eq!(track.ready(), 3);
        assert_eq!(texts(&track.take(10, &mut total)), ["m4", "m5", "m6"]);
        assert_eq!(total, 0);
        assert_eq!(track.admit(at(7), &frame(7), &mut total), Admit::Pass);
    }

    #[test]
    fn a_target_never_delivered_to_fills_from_where_its_sockets_started() {
        let mut track = Track::default();
        assert_eq!(track.from(), None, "nothing known: no fill");
        track.started(Position::START);
        assert_eq!(track.from(), None, "an unknown start proves nothing");
        track.started(at(5));
        track.started(at(3));
        track.started(at(9));
        assert_eq!(track.from(), Some(at(3)), "the earliest socket's start");
    }

    #[test]
    fn holding_is_bounded_and_an_overflow_ends_in_a_resync() {
        let (mut track, mut total) = (Track::default(), 0);
        track.begin(1);
        let big = Outgoing::from(axum::extract::ws::Utf8Bytes::from(
            "x".repeat(MAX_HELD_PER_TARGET / 2 + 1),
        ));
        assert_eq!(track.admit(at(1), &big, &mut total), Admit::Held);
        assert_eq!(track.admit(at(2), &big, &mut total), Admit::Overflow);
        assert_eq!(total, 0, "what was held is dropped at once");
        assert_eq!(track.admit(at(3), &frame(3), &mut total), Admit::Overflow);
        assert_eq!(track.land(Vec::new(), 1, &mut total), Landed::Resync);
        assert!(!track.is_filling());

        // The replica-wide budget counts every target's held bytes.
        let (mut other, mut total) = (Track::default(), MAX_HELD_TOTAL - 2);
        other.begin(1);
        assert_eq!(other.admit(at(1), &frame(1), &mut total), Admit::Held);
        assert_eq!(other.admit(at(2), &frame(22), &mut total), Admit::Overflow);
        assert_eq!(total, MAX_HELD_TOTAL - 2);
    }

    #[test]
    fn a_fill_read_before_another_loss_is_ignored_and_the_next_one_reads_again() {
        let (mut track, mut total) = (Track::default(), 0);
        track.admit(at(1), &frame(1), &mut total);
        track.begin(1);
        track.admit(at(3), &frame(3), &mut total);
        // Lost again, resubscribed again (round 2), then round 1's read (up to 2) lands.
        track.begin(2);
        track.admit(at(6), &frame(6), &mut total);
        assert_eq!(
            track.land(vec![(at(2), frame(2))], 1, &mut total),
            Landed::Stale
        );
        assert!(track.is_filling(), "3 and 6 wait for round 2");
        assert_eq!(track.from(), Some(at(1)));
        let out = landed(&mut track, &[2, 3, 4, 5], 2, &mut total);
        assert_eq!(out, ["m2", "m3", "m4", "m5", "m6"]);
        assert_eq!((total, track.is_filling()), (0, false));
    }

    #[test]
    fn abandoning_forgets_the_position() {
        let (mut track, mut total) = (Track::default(), 0);
        track.admit(at(1), &frame(1), &mut total);
        track.begin(1);
        track.admit(at(2), &frame(2), &mut total);
        track.abandon(&mut total);
        assert_eq!((track.from(), total, track.is_filling()), (None, 0, false));
    }
}
