//! Where a socket's message stream starts: for a new client, at the newest message (nothing to
//! replay); for a reconnecting one, right after the last message it saw — the missed messages
//! are replayed in order before anything new, and live messages it was already replayed are
//! dropped, so each arrives exactly once. The same for a channel subscribed with `since`.
//!
//! Correctness rests on ordering: the socket is subscribed before history is read, so every
//! message newer than the replay is in the socket's queue, and everything older was replayed.
//! A position from another life of a history (another epoch) is never answered with a silent
//! partial replay: the history is reported lost, and what the new life holds is replayed.
//! A history the broker cannot read now is not said lost: the session leaves its replay to the
//! gap fill ([`crate::gap_fill`]), which reads it once the broker answers.

use axum::extract::ws::Utf8Bytes;

use crate::broker::{Broker, Driver, History};
use crate::channel::ChannelName;
use crate::cursor::{Cursor, Position};
use crate::frame::{Envelope, Outgoing, ServerFrame};
use crate::target::Target;
use crate::token::ClientId;

/// What a reconnecting client says it has seen (`?last_id=…&last_broadcast_id=…`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub client: Position,
    pub broadcast: Position,
}

/// Drops queued frames at or below what was replayed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skip(Seen);

/// Whether a message at `at` is already covered by `seen`: the same life of its history
/// (or a position without one) and not after it.
pub fn covered(seen: Position, at: Position) -> bool {
    seen.continues_in(at.epoch) && at.id <= seen.id
}

impl Skip {
    /// Up to where the socket has each history: what it was replayed, else what it said.
    pub fn seen(&self) -> Seen {
        self.0
    }

    pub fn keeps(&self, frame: &Outgoing) -> bool {
        match &frame.cursor {
            Some(Cursor::Client(at)) => !covered(self.0.client, *at),
            Some(Cursor::Broadcast(at)) => !covered(self.0.broadcast, *at),
            Some(Cursor::Channel(..)) | None => true,
        }
    }
}

/// How a session starts.
#[derive(Debug, Default)]
pub struct Start {
    /// The cursors the welcome frame reports.
    pub welcome: Seen,
    /// Missed messages, oldest first.
    pub replay: Vec<Outgoing>,
    /// Histories (`client`, `broadcast`) in which messages may have been lost.
    pub lost: Vec<&'static str>,
    /// Histories the broker could not read now: not replayed, nothing known lost.
    pub unread: Vec<&'static str>,
    /// Histories whose replay stopped at the byte budget: newer missed messages were not sent.
    pub cut: Vec<&'static str>,
    pub skip: Skip,
}

/// Works out the start; a history the broker cannot answer is left `unread` (not lost).
/// The replay holds at most `max_bytes` of frames: what a socket may be owed is bounded, not
/// the whole window of both histories.
pub async fn start(
    broker: &Broker,
    client: &ClientId,
    replica: &str,
    seen: Option<Seen>,
    max_bytes: usize,
) -> Start {
    let own_target = Target::Client(client.clone());
    // A broker known to be down is not asked: each read would only wait out its timeout
    // before the client is greeted.
    let ready = broker.is_ready();
    let Some(seen) = seen else {
        if !ready {
            return Start::default();
        }
        let welcome = match broker.newest(&[own_target, Target::Broadcast]).await {
            Ok(newest) => Seen {
                client: newest.first().copied().unwrap_or_default(),
                broadcast: newest.get(1).copied().unwrap_or_default(),
            },
            Err(_) => Seen::default(),
        };
        return Start {
            welcome,
            ..Start::default()
        };
    };
    let mut start = Start {
        welcome: seen,
        skip: Skip(seen),
        ..Start::default()
    };
    if !ready {
        start.unread = vec!["client", "broadcast"];
        return start;
    }
    let own = broker.history(&own_target, seen.client).await;
    let all = broker.history(&Target::Broadcast, seen.broadcast).await;
    let mut entries = Vec::new();
    let mut read_short = Vec::new();
    for (name, history) in [("client", own), ("broadcast", all)] {
        match history {
            Ok(History {
                entries: got,
                gap,
                epoch,
                more,
            }) => {
                if gap {
                    start.lost.push(name);
                }
                if more {
                    // The read itself stopped at the byte budget: what followed was not sent.
                    read_short.push(name);
                }
                entries.extend(
                    got.into_iter()
                        .map(|(id, payload)| (Position::new(epoch, id), name, payload)),
                );
            }
            Err(_) => start.unread.push(name),
        }
    }
    // Both histories share Redis's clock; merging by id replays them in publish order.
    entries.sort_by_key(|(at, _, _)| at.id);
    let mut budget = max_bytes;
    for (at, name, payload) in entries {
        if !start.cut.is_empty() {
            // Past the budget: only which histories were cut is left to find out.
            if !start.cut.contains(&name) {
                start.cut.push(name);
            }
            continue;
        }
        let Ok(envelope) = Envelope::decode(&payload) else {
            continue;
        };
        let (target, upto) = if name == "client" {
            (&own_target, &mut start.skip.0.client)
        } else {
            (&Target::Broadcast, &mut start.skip.0.broadcast)
        };
        let frame = envelope.outgoing(replica, target, Some(at), true);
        let Some(left) = budget.checked_sub(frame.bytes.len()) else {
            start.cut.push(name);
            continue;
        };
        budget = left;
        *upto = at;
        start.replay.push(frame);
    }
    for name in read_short {
        if !start.cut.contains(&name) {
            start.cut.push(name);
        }
    }
    start
}

/// How a channel subscription starts: the `subscribed` frame, then what a subscriber with
/// `since` missed (each frame `replayed`), and the position after which live messages pass.
#[derive(Debug)]
pub struct ChannelStart {
    pub frames: Vec<Utf8Bytes>,
    pub upto: Position,
    /// Answered to a `since`: whether everything missed was replayed (no gap, same epoch).
    pub recovered: Option<bool>,
    pub replayed: usize,
}

/// Works out a channel's start for a socket just subscribed to it; the replay holds at most
/// `max_bytes` of frames, and a replay cut short is not `recovered`.
pub async fn channel(
    broker: &Broker,
    channel: &ChannelName,
    replica: &str,
    since: Option<Position>,
    max_bytes: usize,
) -> ChannelStart {
    let target = Target::Channel(channel.clone());
    let Some(since) = since else {
        let now = broker
            .newest(std::slice::from_ref(&target))
            .await
            .ok()
            .and_then(|n| n.first().copied())
            .unwrap_or_default();
        return ChannelStart {
            frames: vec![subscribed(channel, now, None)],
            upto: now,
            recovered: None,
            replayed: 0,
        };
    };
    let (history, ok) = match broker.history(&target, since).await {
        Ok(history) => (history, true),
        Err(_) => (History::default(), false),
    };
    let mut recovered = ok && !history.gap && !history.more;
    let mut upto = since;
    let mut replay = Vec::with_capacity(history.entries.len());
    let mut budget = max_bytes;
    for (id, payload) in &history.entries {
        let Ok(envelope) = Envelope::decode(payload) else {
            continue;
        };
        let at = Position::new(history.epoch, *id);
        let frame = envelope.outgoing(replica, &target, Some(at), true);
        let Some(left) = budget.checked_sub(frame.bytes.len()) else {
            recovered = false;
            break;
        };
        budget = left;
        upto = at;
        replay.push(frame.bytes.clone());
    }
    if !ok {
        // Nothing could be read: live messages pass from here, and the client was told.
        upto = Position::START;
    } else if replay.is_empty() && history.epoch.is_known() && !since.continues_in(history.epoch) {
        // A new life of the history with nothing in it yet: everything it will hold is new.
        upto = Position::new(history.epoch, crate::cursor::StreamId::ZERO);
    }
    let mut frames = Vec::with_capacity(replay.len() + 1);
    frames.push(subscribed(channel, upto, Some(recovered)));
    let replayed = replay.len();
    frames.extend(replay);
    ChannelStart {
        frames,
        upto,
        recovered: Some(recovered),
        replayed,
    }
}

fn subscribed(channel: &ChannelName, cursor: Position, recovered: Option<bool>) -> Utf8Bytes {
    ServerFrame::Subscribed {
        channel: channel.as_str(),
        cursor,
        recovered,
    }
    .to_bytes()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::broker::memory::MemoryBroker;
    use crate::cursor::{Epoch, StreamId};
    use crate::frame::Via;
    use crate::limits::Limits;
    use axum::extract::ws::Utf8Bytes;

    fn broker() -> Broker {
        Broker::Memory(MemoryBroker::new(
            "app-1",
            Arc::new(|_, _, _| {}),
            Limits::default().window(),
        ))
    }

    async fn publish(broker: &Broker, target: Target, text: &str) -> Position {
        let via = match target {
            Target::Broadcast => Via::Broadcast,
            Target::Channel(_) => Via::Channel,
            Target::Client(_) => Via::Publish,
        };
        let envelope = Envelope {
            via,
            from: "app-1".into(),
            text: text.into(),
            at: 0,
        };
        broker
            .publish(&target, envelope.encode())
            .await
            .unwrap()
            .position
            .unwrap()
    }

    fn texts(start: &Start) -> Vec<String> {
        start
            .replay
            .iter()
            .map(|o| {
                serde_json::from_str::<serde_json::Value>(&o.bytes).unwrap()["text"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn the_skip_drops_exactly_what_was_replayed_in_each_history() {
        let id = |ms| Position::new(Epoch(1), StreamId { ms, seq: 0 });
        let skip = Skip(Seen {
            client: id(5),
            broadcast: id(9),
        });
        let frame = |cursor| Outgoing::new(Utf8Bytes::from_static("{}"), cursor);
        // At or below the replayed position: already sent; above it: new.
        for (cursor, kept) in [
            (Cursor::Client(id(4)), false),
            (Cursor::Client(id(5)), false),
            (Cursor::Client(id(6)), true),
            // The broadcast history has its own position: 6 is new for the client stream
            // but was replayed for the broadcast one.
            (Cursor::Broadcast(id(6)), false),
            (Cursor::Broadcast(id(9)), false),
            (Cursor::Broadcast(id(10)), true),
        ] {
            assert_eq!(skip.keeps(&frame(Some(cursor.clone()))), kept, "{cursor:?}");
        }
        assert!(
            skip.keeps(&frame(None)),
            "frames without a history always go"
        );
    }

    #[tokio::test]
    async fn a_new_client_starts_at_the_newest_message_with_nothing_to_replay() {
        let broker = broker();
        let c = ClientId::parse("c").unwrap();
        let last = publish(&broker, Target::Client(c.clone()), "old").await;
        let start = start(&broker, &c, "app-1", None, usize::MAX).await;
        assert_eq!(start.welcome.client, last);
        assert!(start.replay.is_empty() && start.lost.is_empty());
    }

    #[tokio::test]
    async fn a_reconnecting_client_gets_what_it_missed_from_both_histories_in_order() {
        let broker = broker();
        let c = ClientId::parse("c").unwrap();
        let seen_own = publish(&broker, Target::Client(c.clone()), "seen").await;
        let seen_all = publish(&broker, Target::Broadcast, "seen all").await;
        publish(&broker, Target::Client(c.clone()), "m1").await;
        let b1 = publish(&broker, Target::Broadcast, "b1").await;
        let last = publish(&broker, Target::Client(c.clone()), "m2").await;
        let seen = Seen {
            client: seen_own,
            broadcast: seen_all,
        };
        let start = start(&broker, &c, "app-2", Some(seen), usize::MAX).await;
        assert_eq!(texts(&start), ["m1", "b1", "m2"]);
        assert!(start.lost.is_empty());
        assert_eq!(
            start.welcome, seen,
            "the welcome of a resume repeats where the client said it was; the replay follows"
        );
        assert_eq!(
            start.skip.seen(),
            Seen {
                client: last,
                broadcast: b1
            },
            "the socket has each history up to the last message replayed of it"
        );
        let live = Envelope {
            via: Via::Publish,
            from: "x".into(),
            text: "m2".into(),
            at: 0,
        };
        let own = Target::Client(c.clone());
        assert!(
            !start
                .skip
                .keeps(&live.outgoing("app-2", &own, Some(last), false)),
            "already replayed"
        );
        let newer = Position::new(
            last.epoch,
            StreamId {
                ms: last.id.ms + 1,
                seq: 0,
            },
        );
        assert!(
            start
                .skip
                .keeps(&live.outgoing("app-2", &own, Some(newer), false))
        );
    }

    #[tokio::test]
    async fn a_resume_with_nothing_missed_still_skips_what_the_client_has_seen() {
        let broker = broker();
        let c = ClientId::parse("c").unwrap();
        let seen_own = publish(&broker, Target::Client(c.clone()), "seen").await;
        let seen = Seen {
            client: seen_own,
            broadcast: Position::START,
        };
        let start = start(&broker, &c, "app-2", Some(seen), usize::MAX).await;
        assert!(start.replay.is_empty() && start.lost.is_empty());
        // The live copy of the message the client already has (queued while it subscribed).
        let frame = Outgoing::new(Utf8Bytes::from_static("{}"), Some(Cursor::Client(seen_own)));
        assert!(
            !start.skip.keeps(&frame),
            "the client had it before it reconnected"
        );
    }

    #[tokio::test]
    async fn a_client_behind_the_window_is_told() {
        let broker = broker();
        let c = ClientId::parse("c").unwrap();
        let seen = Seen {
            client: Position::new(Epoch::UNKNOWN, StreamId { ms: 1, seq: 0 }),
            broadcast: Position::START,
        };
        let start = start(&broker, &c, "app-1", Some(seen), usize::MAX).await;
        assert_eq!(start.lost, ["client"]);
    }

    #[tokio::test]
    async fn a_client_whose_history_came_back_in_another_epoch_is_told() {
        let broker = broker();
        let c = ClientId::parse("c").unwrap();
        let seen = publish(&broker, Target::Client(c.clone()), "seen").await;
        let other_life = Seen {
            client: Position::new(Epoch(seen.epoch.0 ^ 1), seen.id),
            broadcast: Position::START,
        };
        let start = start(&broker, &c, "app-1", Some(other_life), usize::MAX).await;
        assert_eq!(start.lost, ["client"]);
        assert_eq!(
            texts(&start),
            ["seen"],
            "what this life holds, said as lost"
        );
    }

    #[tokio::test]
    async fn a_channel_subscriber_gets_what_it_missed_after_its_cursor() {
        let broker = broker();
        let lobby = ChannelName::parse("public:lobby").unwrap();
        let target = Target::Channel(lobby.clone());
        let fresh = channel(&broker, &lobby, "app-1", None, usize::MAX).await;
        assert_eq!((fresh.frames.len(), fresh.recovered), (1, None));
        let seen = publish(&broker, target.clone(), "seen").await;
        publish(&broker, target.clone(), "m1").await;
        let last = publish(&broker, target.clone(), "m2").await;
        let start = channel(&broker, &lobby, "app-1", Some(seen), usize::MAX).await;
        let frames: Vec<serde_json::Value> = start
            .frames
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect();
        assert_eq!(frames[0]["type"], "subscribed");
        assert_eq!(frames[0]["recovered"], true);
        assert_eq!(frames[0]["cursor"], last.to_string());
        let replayed: Vec<_> = frames[1..]
            .iter()
            .map(|f| {
                (
                    f["text"].as_str().unwrap(),
                    f["replayed"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(replayed, [("m1", true), ("m2", true)]);
        assert_eq!(start.upto, last);
        let lost = Position::new(Epoch(seen.epoch.0 ^ 1), seen.id);
        let start = channel(&broker, &lobby, "app-1", Some(lost), usize::MAX).await;
        assert_eq!(
            start.recovered,
            Some(false),
            "another epoch is never recovered"
        );
        assert_eq!(start.replayed, 3, "but what this life holds is sent");
        let one = start.frames[1].len();
        let cut = channel(&broker, &lobby, "app-1", Some(seen), one).await;
        assert_eq!(
            (cut.replayed, cut.recovered),
            (1, Some(false)),
            "a replay cut at its byte budget is not a recovery"
        );
    }

    #[tokio::test]
    async fn a_replay_past_its_byte_budget_stops_and_says_which_history_was_cut() {
        let broker = broker();
        let c = ClientId::parse("c").unwrap();
        for i in 0..10 {
            publish(&broker, Target::Client(c.clone()), &format!("m{i}")).await;
        }
        publish(&broker, Target::Broadcast, "b").await;
        let all = start(&broker, &c, "app-1", Some(Seen::default()), usize::MAX).await;
        assert_eq!(all.replay.len(), 11);
        assert!(all.cut.is_empty());
        // Room for three frames (of equal size but the last, the broadcast).
        let three: usize = all.replay[..3].iter().map(|f| f.bytes.len()).sum();
        let cut = start(&broker, &c, "app-1", Some(Seen::default()), three + 1).await;
        assert_eq!(
            texts(&cut),
            ["m0", "m1", "m2"],
            "the oldest first, in order"
        );
        assert_eq!(cut.cut, ["client", "broadcast"]);
        let last_sent = match &cut.replay[2].cursor {
            Some(Cursor::Client(at)) => *at,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            cut.skip.seen().client,
            last_sent,
            "live copies of what was cut still go out"
        );
        let none = start(&broker, &c, "app-1", Some(Seen::default()), 1).await;
        assert!(none.replay.is_empty());
        assert_eq!(none.cut, ["client", "broadcast"]);
    }

    #[tokio::test]
    async fn a_history_read_cut_at_its_byte_budget_is_said_once() {
        // Each read brings at most about two messages; the socket's own budget is no limit.
        let window = crate::broker::Window {
            read_bytes: 120,
            ..Limits::default().window()
        };
        let broker = Broker::Memory(MemoryBroker::new("app-1", Arc::new(|_, _, _| {}), window));
        let c = ClientId::parse("c").unwrap();
        for i in 0..5 {
            publish(&broker, Target::Client(c.clone()), &format!("m{i}")).await;
        }
        let start = start(&broker, &c, "app-1", Some(Seen::default()), usize::MAX).await;
        assert!(
            (1..5).contains(&start.replay.len()),
            "the read stopped early: {}",
            start.replay.len()
        );
        assert_eq!(start.cut, ["client"], "said, and once");
    }

    #[tokio::test]
    async fn a_channel_whose_history_started_again_empty_counts_from_its_new_start() {
        let broker = broker();
        let lobby = ChannelName::parse("public:lobby").unwrap();
        // Counting from here starts the channel's history (its epoch) with nothing in it.
        let now = channel(&broker, &lobby, "app-1", None, usize::MAX)
            .await
            .upto;
        let older_life = Position::new(Epoch(now.epoch.0 ^ 1), StreamId { ms: 5, seq: 0 });
        let start = channel(&broker, &lobby, "app-1", Some(older_life), usize::MAX).await;
        assert_eq!(start.recovered, Some(false));
        assert_eq!(
            start.upto,
            Position::new(now.epoch, StreamId::ZERO),
            "everything the new life will hold is new to this subscriber"
        );
        // In the same life with nothing missed, live messages pass from where the client is.
        let seen = publish(&broker, Target::Channel(lobby.clone()), "seen").await;
        let same_life = channel(&broker, &lobby, "app-1", Some(seen), usize::MAX).await;
        assert_eq!(
            (same_life.recovered, same_life.upto, same_life.replayed),
            (Some(true), seen, 0)
        );
    }
}
