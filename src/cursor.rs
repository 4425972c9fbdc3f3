//! Positions in a history: the id every kept message carries ([`StreamId`], `<ms>-<seq>` as
//! Redis streams write them), its string form on the wire, and which history a position belongs
//! to ([`Cursor`]). Frames, the broker and the resume step all speak these; how a history is
//! kept is the broker's business ([`crate::broker::history`]).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

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

/// Which history a delivered message belongs to, and where in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    Client(StreamId),
    Broadcast(StreamId),
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
}
