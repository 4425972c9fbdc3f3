//! Where a socket's message stream starts: for a new client, at the newest message (nothing to
//! replay); for a reconnecting one, right after the last message it saw — the missed messages
//! are replayed in order before anything new, and live messages it was already replayed are
//! dropped, so each arrives exactly once.
//!
//! Correctness rests on ordering: the socket is subscribed before history is read, so every
//! message newer than the replay is in the socket's queue, and everything older was replayed.

use crate::broker::{Broker, Driver, History};
use crate::cursor::{Cursor, StreamId};
use crate::frame::{Envelope, Outgoing};
use crate::target::Target;
use crate::token::ClientId;

/// What a reconnecting client says it has seen (`?last_id=…&last_broadcast_id=…`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub client: StreamId,
    pub broadcast: StreamId,
}

/// Drops queued frames at or below what was replayed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skip(Seen);

impl Skip {
    pub fn keeps(&self, frame: &Outgoing) -> bool {
        match frame.cursor {
            Some(Cursor::Client(id)) => id > self.0.client,
            Some(Cursor::Broadcast(id)) => id > self.0.broadcast,
            None => true,
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
    /// Histories whose replay stopped at the byte budget: newer missed messages were not sent.
    pub cut: Vec<&'static str>,
    pub skip: Skip,
}

/// Works out the start; a broker that cannot answer means history is unknown, said as lost.
/// The replay holds at most `max_bytes` of frames: what a socket may be owed is bounded, not
/// the whole window of both histories.
pub async fn start(
    broker: &Broker,
    client: &ClientId,
    replica: &str,
    seen: Option<Seen>,
    max_bytes: usize,
) -> Start {
    let Some(seen) = seen else {
        let welcome = match broker.newest(client).await {
            Ok((client, broadcast)) => Seen { client, broadcast },
            Err(_) => Seen::default(),
        };
        return Start {
            welcome,
            ..Start::default()
        };
    };
    let own = broker
        .history(&Target::Client(client.clone()), seen.client)
        .await;
    let all = broker.history(&Target::Broadcast, seen.broadcast).await;
    let mut start = Start {
        welcome: seen,
        skip: Skip(seen),
        ..Start::default()
    };
    let mut entries = Vec::new();
    for (name, history) in [("client", own), ("broadcast", all)] {
        match history {
            Ok(History { entries: got, gap }) => {
                if gap {
                    start.lost.push(name);
                }
                entries.extend(got.into_iter().map(|(id, payload)| (id, name, payload)));
            }
            Err(_) => start.lost.push(name),
        }
    }
    // Both histories share Redis's clock; merging by id replays them in publish order.
    entries.sort_by_key(|(id, _, _)| *id);
    let mut budget = max_bytes;
    for (id, name, payload) in entries {
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
        let frame = envelope.outgoing(replica, Some(id), true);
        let Some(left) = budget.checked_sub(frame.bytes.len()) else {
            start.cut.push(name);
            continue;
        };
        budget = left;
        if name == "client" {
            start.skip.0.client = start.skip.0.client.max(id);
        } else {
            start.skip.0.broadcast = start.skip.0.broadcast.max(id);
        }
        start.replay.push(frame);
    }
    start
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::broker::memory::MemoryBroker;
    use crate::frame::Via;
    use crate::limits::Limits;
    use axum::extract::ws::Utf8Bytes;

    fn broker() -> Broker {
        Broker::Memory(MemoryBroker::new(
            Arc::new(|_, _, _| {}),
            Limits::default().window(),
        ))
    }

    async fn publish(broker: &Broker, target: Target, text: &str) -> StreamId {
        let via = if target == Target::Broadcast {
            Via::Broadcast
        } else {
            Via::Publish
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
            .id
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
        let id = |ms| StreamId { ms, seq: 0 };
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
            assert_eq!(skip.keeps(&frame(Some(cursor))), kept, "{cursor:?}");
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
        publish(&broker, Target::Broadcast, "b1").await;
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
        let live = Envelope {
            via: Via::Publish,
            from: "x".into(),
            text: "m2".into(),
            at: 0,
        };
        assert!(
            !start.skip.keeps(&live.outgoing("app-2", Some(last), false)),
            "already replayed"
        );
        let newer = StreamId {
            ms: last.ms + 1,
            seq: 0,
        };
        assert!(
            start
                .skip
                .keeps(&live.outgoing("app-2", Some(newer), false))
        );
    }

    #[tokio::test]
    async fn a_resume_with_nothing_missed_still_skips_what_the_client_has_seen() {
        let broker = broker();
        let c = ClientId::parse("c").unwrap();
        let seen_own = publish(&broker, Target::Client(c.clone()), "seen").await;
        let seen = Seen {
            client: seen_own,
            broadcast: StreamId::ZERO,
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
            client: StreamId { ms: 1, seq: 0 },
            broadcast: StreamId::ZERO,
        };
        let start = start(&broker, &c, "app-1", Some(seen), usize::MAX).await;
        assert_eq!(start.lost, ["client"]);
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
        let last_sent = match cut.replay[2].cursor {
            Some(Cursor::Client(id)) => id,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            cut.skip.0.client, last_sent,
            "live copies of what was cut still go out"
        );
        let none = start(&broker, &c, "app-1", Some(Seen::default()), 1).await;
        assert!(none.replay.is_empty());
        assert_eq!(none.cut, ["client", "broadcast"]);
    }
}
