//! Positions in a history: the id every kept message carries ([`StreamId`], `<ms>-<seq>` as
//! Redis streams write them), the epoch of the history it was kept in ([`Epoch`]: it changes
//! whenever that history is lost, e.g. Redis restarted empty), the two together as the opaque
//! cursor clients hold ([`Position`], `<epoch>:<ms>-<seq>` on the wire), and which history a
//! position belongs to ([`Cursor`]). Frames, the broker and the resume step all speak these;
//! how a history is kept is the broker's business ([`crate::broker::history`]).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::channel::ChannelName;

/// A message id, `<milliseconds>-<sequence>` as Redis streams write them; ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a string is not a message id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a message id looks like 1700000000000-0")]
pub struct BadStreamId;

impl FromStr for StreamId {
    type Err = BadStreamId;

    fn from_str(s: &str) -> Result<Self, BadStreamId> {
        if s.len() > 41 {
            return Err(BadStreamId);
        }
        let (ms, seq) = s.split_once('-').ok_or(BadStreamId)?;
        let digits = |p: &str| {
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u64>().ok())
                .flatten()
                .ok_or(BadStreamId)
        };
        Ok(StreamId {
            ms: digits(ms)?,
            seq: digits(seq)?,
        })
    }
}

/// A [`StreamId`] written as its string form.
#[derive(Debug, Clone, Copy)]
pub struct StreamIdText(pub StreamId);

impl Serialize for StreamIdText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// One life of one history: a random number drawn when the history is created, so a
/// position from a history that was lost and started again is told apart from a position in
/// the new one. 0 is "not known" (a cursor written before epochs, `<ms>-<seq>`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Epoch(pub u64);

impl Epoch {
    pub const UNKNOWN: Epoch = Epoch(0);

    /// A fresh epoch for a new history; never 0.
    pub fn fresh() -> Self {
        Epoch(rand::random::<u64>().max(1))
    }

    pub fn is_known(self) -> bool {
        self != Self::UNKNOWN
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl FromStr for Epoch {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, BadCursor> {
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadCursor);
        }
        u64::from_str_radix(s, 16).map(Epoch).map_err(|_| BadCursor)
    }
}

/// Where a client stands in one history: the opaque cursor of the contract.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Position {
    pub epoch: Epoch,
    pub id: StreamId,
}

impl Position {
    /// Before everything, in an unknown epoch: a client that has seen nothing.
    pub const START: Position = Position {
        epoch: Epoch::UNKNOWN,
        id: StreamId::ZERO,
    };

    pub fn new(epoch: Epoch, id: StreamId) -> Self {
        Self { epoch, id }
    }

    /// Whether what a history of `epoch` holds after this position can be trusted to follow
    /// on from what the client saw: same epoch, or a client without one (older cursors).
    pub fn continues_in(self, epoch: Epoch) -> bool {
        !self.epoch.is_known() || self.epoch == epoch
    }
}

/// Why a string is not a cursor.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a cursor looks like 3f9a2c:1700000000000-0 (or an older 1700000000000-0)")]
pub struct BadCursor;

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.epoch.is_known() {
            write!(f, "{}:{}", self.epoch, self.id)
        } else {
            write!(f, "{}", self.id)
        }
    }
}

impl FromStr for Position {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, BadCursor> {
        let (epoch, id) = match s.split_once(':') {
            Some((epoch, id)) => (epoch.parse()?, id),
            None => (Epoch::UNKNOWN, s),
        };
        let id = id.parse().map_err(|_| BadCursor)?;
        Ok(Position { epoch, id })
    }
}

impl Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Which history a delivered message belongs to, and where in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cursor {
    Client(Position),
    Broadcast(Position),
    Channel(ChannelName, Position),
}

impl Cursor {
    pub fn position(&self) -> Position {
        match self {
            Cursor::Client(p) | Cursor::Broadcast(p) | Cursor::Channel(_, p) => *p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_parse_as_redis_writes_them() {
        let id: StreamId = "1700000000000-7".parse().unwrap();
        assert_eq!(
            id,
            StreamId {
                ms: 1_700_000_000_000,
                seq: 7
            }
        );
        assert_eq!(id.to_string(), "1700000000000-7");
        for bad in ["", "1", "-1", "1-", "a-1", "1-1-1", "+1-1", &"9".repeat(50)] {
            assert_eq!(bad.parse::<StreamId>(), Err(BadStreamId), "{bad:?}");
        }
        assert!(StreamId { ms: 2, seq: 0 } > StreamId { ms: 1, seq: 9 });
        // The longest id there is (two u64s) parses; one character more is refused unread.
        let max = format!("{}-{}", u64::MAX, u64::MAX);
        assert_eq!(max.len(), 41);
        assert_eq!(
            max.parse(),
            Ok(StreamId {
                ms: u64::MAX,
                seq: u64::MAX
            })
        );
        assert_eq!(format!("0{max}").parse::<StreamId>(), Err(BadStreamId));
    }

    #[test]
    fn cursors_carry_their_epoch_and_older_ids_still_parse() {
        let id = StreamId { ms: 17, seq: 2 };
        let p = Position::new(Epoch(0xabc), id);
        assert_eq!(p.to_string(), "abc:17-2");
        assert_eq!("abc:17-2".parse(), Ok(p));
        assert_eq!(
            "17-2".parse(),
            Ok(Position::new(Epoch::UNKNOWN, id)),
            "an id from before epochs"
        );
        assert_eq!(Position::new(Epoch::UNKNOWN, id).to_string(), "17-2");
        for bad in [
            "",
            ":1-2",
            "x:1-2",
            "abc:",
            "abc:1",
            "1:2:3-4",
            &format!("{}:1-2", "f".repeat(17)),
            // What u64 parsing alone would let through: a sign, and zeros past 16 digits.
            "+ab:1-2",
            &format!("{}1:1-2", "0".repeat(16)),
        ] {
            assert_eq!(bad.parse::<Position>(), Err(BadCursor), "{bad:?}");
        }
        assert!(p.continues_in(Epoch(0xabc)));
        assert!(!p.continues_in(Epoch(0xabd)), "another life of the history");
        assert!(Position::new(Epoch::UNKNOWN, id).continues_in(Epoch(5)));
        assert!(Epoch::fresh().is_known());
        let lobby = ChannelName::parse("public:lobby").unwrap();
        for cursor in [
            Cursor::Client(p),
            Cursor::Broadcast(p),
            Cursor::Channel(lobby, p),
        ] {
            assert_eq!(cursor.position(), p);
        }
    }
}
