//! The writer's gate: which queued frames a socket's writer actually writes, and in what order
//! around a subscription. It drops live messages a resume already replayed, holds a channel's
//! live messages back while its subscription is being set up (between the reader's `Pending`
//! and `Ready` marks), then writes the `subscribed` answer and the replay before the held
//! messages that were not replayed. What the marks say is decided by the reader
//! ([`super::channels`]); the queue itself is the registry's.

use std::collections::HashMap;

use axum::extract::ws::Utf8Bytes;

use crate::channel::ChannelName;
use crate::cursor::{Cursor, Position};
use crate::frame::{Mark, Outgoing};
use crate::resume::{Skip, covered};

/// Where one channel of this socket stands.
#[derive(Debug)]
enum Channel {
    /// Being subscribed: its live messages wait here.
    Pending(Vec<Outgoing>),
    /// Subscribed: messages at or before `upto` were replayed and are dropped, until the first
    /// one after it passes (then the channel is forgotten here).
    Open(Position),
}

/// The socket's queue held more of a pending channel's messages than it may hold.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow;

#[derive(Debug)]
pub struct Gate {
    skip: Skip,
    channels: HashMap<ChannelName, Channel>,
    /// Most messages held back per pending channel: the socket's queue size, since they came
    /// out of it.
    hold_limit: usize,
}

impl Gate {
    pub fn new(skip: Skip, hold_limit: usize) -> Self {
        Self {
            skip,
            channels: HashMap::new(),
            hold_limit,
        }
    }

    /// Takes one frame off the queue; appends what is to be written now to `out`.
    pub fn admit(&mut self, frame: Outgoing, out: &mut Vec<Utf8Bytes>) -> Result<(), Overflow> {
        if let Some(mark) = &frame.mark {
            match mark {
                Mark::Pending(channel) => {
                    self.channels
                        .insert(channel.clone(), Channel::Pending(Vec::new()));
                }
                Mark::Ready {
                    channel,
                    frames,
                    upto,
                } => {
                    out.extend(frames.iter().cloned());
                    let held = self.channels.insert(channel.clone(), Channel::Open(*upto));
                    if let Some(Channel::Pending(held)) = held {
                        for frame in held {
                            if !replayed(&frame, *upto) {
                                out.push(frame.bytes.clone());
                            }
                        }
                    }
                }
                Mark::Left { channel, frame } => {
                    self.channels.remove(channel);
                    out.extend(frame.iter().cloned());
                }
            }
            return Ok(());
        }
        if let Some(Cursor::Channel(channel, at)) = &frame.cursor {
            // Nearly always empty: a channel is gated only from its subscription to its first
            // live message after the replay (see `Open`), so most frames pass unlooked-up.
            if !self.channels.is_empty() {
                match self.channels.get_mut(channel) {
                    Some(Channel::Pending(held)) => {
                        if held.len() >= self.hold_limit {
                            return Err(Overflow);
                        }
                        held.push(frame);
                        return Ok(());
                    }
                    Some(Channel::Open(upto)) if covered(*upto, *at) => return Ok(()),
                    Some(Channel::Open(_)) => {
                        // The replica's subscription delivers in publish order: once one
                        // message after the replay has passed, no replayed one can follow.
                        self.channels.remove(channel);
                    }
                    None => {}
                }
            }
        } else if !self.skip.keeps(&frame) {
            return Ok(());
        }
        out.push(frame.bytes.clone());
        Ok(())
    }
}

fn replayed(frame: &Outgoing, upto: Position) -> bool {
    matches!(&frame.cursor, Some(Cursor::Channel(_, at)) if covered(upto, *at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::{Epoch, StreamId};

    fn lobby() -> ChannelName {
        ChannelName::parse("public:lobby").unwrap()
    }

    fn at(id: u64) -> Position {
        Position::new(Epoch(7), StreamId { ms: id, seq: 0 })
    }

    fn live(id: u64) -> Outgoing {
        let bytes = Utf8Bytes::from(format!("live {id}"));
        Outgoing::new(bytes, Some(Cursor::Channel(lobby(), at(id))))
    }

    fn texts(out: &[Utf8Bytes]) -> Vec<&str> {
        out.iter().map(|b| b.as_str()).collect()
    }

    #[test]
    fn live_messages_wait_for_the_replay_and_what_it_covered_is_dropped() {
        let mut gate = Gate::new(Skip::default(), 8);
        let mut out = Vec::new();
        gate.admit(Outgoing::mark(Mark::Pending(lobby())), &mut out)
            .unwrap();
        // Queued while the subscription was set up: 5 is also in the replay, 6 is not.
        gate.admit(live(5), &mut out).unwrap();
        gate.admit(live(6), &mut out).unwrap();
        assert!(out.is_empty(), "held back until the replay: {out:?}");
        let ready = Mark::Ready {
            channel: lobby(),
            frames: vec!["subscribed".into(), "replay 4".into(), "replay 5".into()],
            upto: at(5),
        };
        gate.admit(Outgoing::mark(ready), &mut out).unwrap();
        assert_eq!(
            texts(&out),
            ["subscribed", "replay 4", "replay 5", "live 6"]
        );
        out.clear();
        gate.admit(live(5), &mut out).unwrap();
        gate.admit(live(7), &mut out).unwrap();
        assert_eq!(texts(&out), ["live 7"], "a late copy of 5 is dropped");
        assert!(
            gate.channels.is_empty(),
            "after the first message past the replay, nothing is left to check"
        );
    }

    #[test]
    fn a_pending_channel_holds_at_most_the_queue_and_leaving_forgets_it() {
        let mut gate = Gate::new(Skip::default(), 2);
        let mut out = Vec::new();
        gate.admit(Outgoing::mark(Mark::Pending(lobby())), &mut out)
            .unwrap();
        gate.admit(live(1), &mut out).unwrap();
        gate.admit(live(2), &mut out).unwrap();
        assert_eq!(gate.admit(live(3), &mut out), Err(Overflow));
        let left = Mark::Left {
            channel: lobby(),
            frame: Some("unsubscribed".into()),
        };
        gate.admit(Outgoing::mark(left), &mut out).unwrap();
        assert_eq!(texts(&out), ["unsubscribed"]);
        assert!(gate.channels.is_empty());
        out.clear();
        gate.admit(live(1), &mut out).unwrap();
        assert_eq!(texts(&out), ["live 1"], "not gated once left");
    }

    #[test]
    fn another_epoch_is_never_taken_for_a_replayed_message() {
        let mut gate = Gate::new(Skip::default(), 8);
        let mut out = Vec::new();
        let ready = Mark::Ready {
            channel: lobby(),
            frames: Vec::new(),
            upto: at(9),
        };
        gate.admit(Outgoing::mark(ready), &mut out).unwrap();
        let other_life = Outgoing::new(
            "new life".into(),
            Some(Cursor::Channel(
                lobby(),
                Position::new(Epoch(8), StreamId { ms: 3, seq: 0 }),
            )),
        );
        gate.admit(other_life, &mut out).unwrap();
        assert_eq!(texts(&out), ["new life"]);
    }
}
