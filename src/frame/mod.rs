//! WebSocket frames the server sends, the envelope replicas pass through the broker, and what a
//! socket's queue carries. What clients send is parsed and limited in [`client`].

mod client;

pub use client::{ClientFrame, FrameError, channel_named, check_text, parse_client_frame};

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};

use crate::cursor::{Cursor, Position};
use crate::target::Target;

/// How a message reached the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Ws,
    Direct,
    Publish,
    Broadcast,
    Channel,
}

impl Via {
    /// Every way, in `Via as usize` order (the metrics' tables).
    pub const ALL: [Via; 5] = [
        Via::Ws,
        Via::Direct,
        Via::Publish,
        Via::Broadcast,
        Via::Channel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Via::Ws => "ws",
            Via::Direct => "direct",
            Via::Publish => "publish",
            Via::Broadcast => "broadcast",
            Via::Channel => "channel",
        }
    }
}

/// Frames the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    Welcome {
        replica: &'a str,
        client_id: &'a str,
        /// Where this client's message history stands: pass it back as `last_id` to resume.
        last_id: Position,
        /// The same for broadcasts (`last_broadcast_id`).
        last_broadcast_id: Position,
        /// The replica that rendered the client's page, when the page said (`?page=`).
        #[serde(skip_serializing_if = "Option::is_none")]
        page_replica: Option<&'a str>,
        /// Whether this socket landed on that replica.
        #[serde(skip_serializing_if = "Option::is_none")]
        same_replica: Option<bool>,
        /// `hit`: this replica held the client's session state; `rebuilt`: it had to start it.
        state: &'a str,
    },
    Message {
        via: Via,
        /// The channel, for a channel message.
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        from: &'a str,
        replica: &'a str,
        text: &'a str,
        /// The message's id in its history, `<ms>-<seq>` (kept for clients of older versions;
        /// `cursor` is the same position with its history's epoch).
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<crate::cursor::StreamIdText>,
        /// Where the message stands in its history: pass it back to resume from it.
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<Position>,
        /// Sent again after a reconnect because the client had missed it.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        replayed: bool,
    },
    /// The socket is subscribed; `cursor` is where the channel's history stands now.
    /// `recovered` answers a `since`: whether every missed message came first.
    Subscribed {
        channel: &'a str,
        cursor: Position,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    Unsubscribed {
        channel: &'a str,
    },
    /// A client joined or left a channel (its first socket subscribed, its last one left).
    Presence {
        channel: &'a str,
        event: &'a str,
        client_id: &'a str,
        replica: &'a str,
    },
    /// Messages after the client's last id may have been lost (the recovery window was exceeded).
    #[serde(rename = "history_lost")]
    HistoryLost {
        stream: &'a str,
        message: &'a str,
    },
    Error {
        code: &'a str,
        message: &'a str,
        /// The channel a refused subscription or publish named.
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
    },
}

/// A [`ServerFrame`] as a client reads it (the load tool, tests): the same fields, owned, with
/// history ids as the opaque strings they are on the wire. A frame of a type this version does
/// not know is [`ReceivedFrame::Other`], so a client keeps reading.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ReceivedFrame {
    Welcome {
        replica: String,
        client_id: String,
        #[serde(default)]
        last_id: Option<String>,
        #[serde(default)]
        last_broadcast_id: Option<String>,
        #[serde(default)]
        page_replica: Option<String>,
        #[serde(default)]
        same_replica: Option<bool>,
        #[serde(default)]
        state: Option<String>,
    },
    Message {
        via: Via,
        #[serde(default)]
        channel: Option<String>,
        from: String,
        replica: String,
        text: String,
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        cursor: Option<String>,
        #[serde(default)]
        replayed: bool,
    },
    Subscribed {
        channel: String,
        cursor: String,
        #[serde(default)]
        recovered: Option<bool>,
    },
    Unsubscribed {
        channel: String,
    },
    Presence {
        channel: String,
        event: String,
        client_id: String,
        replica: String,
    },
    #[serde(rename = "history_lost")]
    HistoryLost {
        stream: String,
        message: String,
    },
    Error {
        code: String,
        message: String,
        #[serde(default)]
        channel: Option<String>,
    },
    #[serde(other)]
    Other,
}

/// A frame on its way to a socket, shared by every recipient.
///
/// One pointer wide because it is what a socket's queue holds: tokio's bounded channel
/// allocates its slots 32 at a time, in use or not, so every idle socket paid for 32 slots of
/// 56 bytes (1.8 KiB) before the frame went behind an `Arc` (0.3 KiB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing(Arc<Serialized>);

/// A serialized frame and its history position, so a resuming session can drop what it
/// already replayed; or a mark the socket's reader leaves for its writer in the same queue.
#[derive(Debug, PartialEq, Eq)]
pub struct Serialized {
    pub bytes: Utf8Bytes,
    pub cursor: Option<Cursor>,
    pub mark: Option<Mark>,
}

/// What a socket's reader tells its writer about a subscription, in queue order: the writer
/// holds back the channel's live messages from `Pending` until `Ready`, writes `Ready`'s
/// frames (the `subscribed` answer and the replay), then the held messages it did not replay.
#[derive(Debug, PartialEq, Eq)]
pub enum Mark {
    /// The channel is about to be subscribed: hold its messages back.
    Pending(crate::channel::ChannelName),
    /// Written first; then messages of the channel after `upto` pass.
    Ready {
        channel: crate::channel::ChannelName,
        frames: Vec<Utf8Bytes>,
        upto: Position,
    },
    /// The channel is no longer subscribed (or its subscription was refused): forget it, and
    /// write `frame` (the answer) if there is one.
    Left {
        channel: crate::channel::ChannelName,
        frame: Option<Utf8Bytes>,
    },
}

impl Outgoing {
    pub fn new(bytes: Utf8Bytes, cursor: Option<Cursor>) -> Self {
        Self(Arc::new(Serialized {
            bytes,
            cursor,
            mark: None,
        }))
    }

    /// A mark for this socket's writer (it writes no bytes of its own).
    pub fn mark(mark: Mark) -> Self {
        Self(Arc::new(Serialized {
            bytes: Utf8Bytes::from_static(""),
            cursor: None,
            mark: Some(mark),
        }))
    }
}

impl std::ops::Deref for Outgoing {
    type Target = Serialized;

    fn deref(&self) -> &Serialized {
        &self.0
    }
}

impl From<Utf8Bytes> for Outgoing {
    fn from(bytes: Utf8Bytes) -> Self {
        Self::new(bytes, None)
    }
}

impl ServerFrame<'_> {
    /// Serializes once; the bytes are shared by every local recipient.
    pub fn to_bytes(&self) -> Utf8Bytes {
        // Serializing these plain structs to a String cannot fail.
        Utf8Bytes::from(serde_json::to_string(self).unwrap_or_default())
    }
}

/// What a replica hands the broker: the message, without the delivering replica, which each
/// receiving replica fills in for itself.
///
/// Borrowed where it can be: a publish builds one from strings it already holds, and a replica
/// receiving one reads it straight out of the broker's bytes (when it holds no escapes), so a
/// message crosses the broker without a copy of its text on either side.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub via: Via,
    #[serde(borrow)]
    pub from: Cow<'a, str>,
    #[serde(borrow)]
    pub text: Cow<'a, str>,
    /// When the message was published, in µs since the Unix epoch (0: unknown), so receiving
    /// replicas can measure publish-to-delivery.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub at: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Now, in µs since the Unix epoch.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl<'a> Envelope<'a> {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(raw: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(raw)
    }

    /// The frame a replica sends for this envelope (no history position).
    pub fn frame_for(&self, replica: &str) -> Utf8Bytes {
        self.message(replica, None, None, false)
    }

    /// The frame a replica sends for this envelope kept in `target`'s history, carrying its
    /// position there when it has one.
    pub fn outgoing(
        &self,
        replica: &str,
        target: &Target,
        position: Option<Position>,
        replayed: bool,
    ) -> Outgoing {
        let channel = match target {
            Target::Channel(channel) => Some(channel),
            Target::Client(_) | Target::Broadcast => None,
        };
        let cursor = position.map(|p| match target {
            Target::Client(_) => Cursor::Client(p),
            Target::Broadcast => Cursor::Broadcast(p),
            Target::Channel(channel) => Cursor::Channel(channel.clone(), p),
        });
        let bytes = self.message(replica, channel.map(|c| c.as_str()), position, replayed);
        Outgoing::new(bytes, cursor)
    }

    fn message(
        &self,
        replica: &str,
        channel: Option<&str>,
        position: Option<Position>,
        replayed: bool,
    ) -> Utf8Bytes {
        ServerFrame::Message {
            via: self.via,
            channel,
            from: &self.from,
            replica,
            text: &self.text,
            id: position.map(|p| crate::cursor::StreamIdText(p.id)),
            cursor: position,
            replayed,
        }
        .to_bytes()
    }
}

/// A presence event as it crosses the broker: `{"presence": "join"|"leave", "client_id",
/// "replica"}`. It starts with the key `presence`, which no [`Envelope`] does (they start with
/// `via`), so a receiving replica tells the two apart by the first bytes.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PresenceNote<'a> {
    #[serde(borrow)]
    pub presence: Cow<'a, str>,
    #[serde(borrow)]
    pub client_id: Cow<'a, str>,
    #[serde(borrow)]
    pub replica: Cow<'a, str>,
}

impl<'a> PresenceNote<'a> {
    pub const PREFIX: &'static [u8] = b"{\"presence\":";

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The note, when `raw` is one.
    pub fn decode(raw: &'a [u8]) -> Option<Self> {
        if !raw.starts_with(Self::PREFIX) {
            return None;
        }
        serde_json::from_slice(raw).ok()
    }

    /// The frame every subscriber of `channel` gets.
    pub fn frame(&self, channel: &str) -> Utf8Bytes {
        ServerFrame::Presence {
            channel,
            event: &self.presence,
            client_id: &self.client_id,
            replica: &self.replica,
        }
        .to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::{Epoch, StreamId, StreamIdText};
    use crate::token::ClientId;

    #[test]
    fn an_envelope_carries_its_publish_time_only_when_it_has_one() {
        let mut envelope = Envelope {
            via: Via::Publish,
            from: "app-1".into(),
            text: "t".into(),
            at: 0,
        };
        let bytes = envelope.encode();
        assert!(!String::from_utf8_lossy(&bytes).contains("\"at\""));
        assert_eq!(Envelope::decode(&bytes).unwrap(), envelope);
        envelope.at = 5;
        let bytes = envelope.encode();
        assert!(String::from_utf8_lossy(&bytes).contains("\"at\":5"));
        assert_eq!(Envelope::decode(&bytes).unwrap(), envelope);
    }

    #[test]
    fn a_frames_cursor_names_the_history_its_message_is_kept_in() {
        let id = Position::new(Epoch(3), StreamId { ms: 3, seq: 1 });
        let client = Target::Client(ClientId::parse("c").unwrap());
        let lobby = crate::channel::ChannelName::parse("public:lobby").unwrap();
        let envelope = |via| Envelope {
            via,
            from: "app-1".into(),
            text: "t".into(),
            at: 0,
        };
        let cursor = |via, target: &Target| {
            envelope(via)
                .outgoing("app-2", target, Some(id), false)
                .cursor
                .clone()
        };
        assert_eq!(
            cursor(Via::Broadcast, &Target::Broadcast),
            Some(Cursor::Broadcast(id))
        );
        assert_eq!(cursor(Via::Publish, &client), Some(Cursor::Client(id)));
        assert_eq!(
            cursor(Via::Channel, &Target::Channel(lobby.clone())),
            Some(Cursor::Channel(lobby, id))
        );
        assert_eq!(
            envelope(Via::Publish)
                .outgoing("app-2", &client, None, false)
                .cursor,
            None
        );
    }

    #[test]
    fn welcome_and_message_frames_have_the_contract_shape() {
        let welcome = ServerFrame::Welcome {
            replica: "app-1",
            client_id: "c1",
            last_id: Position::new(Epoch(0xa), StreamId { ms: 5, seq: 1 }),
            last_broadcast_id: Position::START,
            page_replica: Some("app-2"),
            same_replica: Some(false),
            state: "rebuilt",
        };
        let value: serde_json::Value = serde_json::from_str(&welcome.to_bytes()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"type": "welcome", "replica": "app-1", "client_id": "c1",
                               "last_id": "a:5-1", "last_broadcast_id": "0-0",
                               "page_replica": "app-2", "same_replica": false,
                               "state": "rebuilt"})
        );
        let envelope = Envelope {
            via: Via::Publish,
            from: "app-2".into(),
            text: "\"quoted\" \u{1F600}".into(),
            at: 0,
        };
        let value: serde_json::Value = serde_json::from_str(&envelope.frame_for("app-3")).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"type": "message", "via": "publish", "from": "app-2",
                               "replica": "app-3", "text": "\"quoted\" \u{1F600}"})
        );
    }

    #[test]
    fn published_messages_carry_their_id_and_replays_say_so() {
        let envelope = Envelope {
            via: Via::Publish,
            from: "app-2".into(),
            text: "t".into(),
            at: 0,
        };
        let id = Position::new(Epoch(0xf), StreamId { ms: 9, seq: 0 });
        let client = Target::Client(ClientId::parse("c").unwrap());
        let out = envelope.outgoing("app-1", &client, Some(id), true);
        assert_eq!(out.cursor, Some(Cursor::Client(id)));
        let value: serde_json::Value = serde_json::from_str(&out.bytes).unwrap();
        assert_eq!(
            (
                value["id"].as_str(),
                value["cursor"].as_str(),
                value["replayed"].as_bool()
            ),
            (Some("9-0"), Some("f:9-0"), Some(true))
        );
        let plain: serde_json::Value = serde_json::from_str(&envelope.frame_for("app-1")).unwrap();
        assert!(
            plain.get("id").is_none() && plain.get("replayed").is_none(),
            "{plain}"
        );
    }

    #[test]
    fn what_the_server_sends_a_client_reads_back() {
        let read = |frame: ServerFrame| -> ReceivedFrame {
            serde_json::from_str(&frame.to_bytes()).unwrap()
        };
        let welcome = ServerFrame::Welcome {
            replica: "app-1",
            client_id: "c1",
            last_id: Position::new(Epoch::UNKNOWN, StreamId { ms: 5, seq: 1 }),
            last_broadcast_id: Position::START,
            page_replica: None,
            same_replica: Some(true),
            state: "hit",
        };
        assert_eq!(
            read(welcome),
            ReceivedFrame::Welcome {
                replica: "app-1".into(),
                client_id: "c1".into(),
                last_id: Some("5-1".into()),
                last_broadcast_id: Some("0-0".into()),
                page_replica: None,
                same_replica: Some(true),
                state: Some("hit".into()),
            }
        );
        let message = ServerFrame::Message {
            via: Via::Channel,
            channel: Some("public:lobby"),
            from: "app-2",
            replica: "app-3",
            text: "\"quoted\" \u{1F600}",
            id: Some(StreamIdText(StreamId { ms: 9, seq: 0 })),
            cursor: Some(Position::new(Epoch(1), StreamId { ms: 9, seq: 0 })),
            replayed: true,
        };
        assert_eq!(
            read(message),
            ReceivedFrame::Message {
                via: Via::Channel,
                channel: Some("public:lobby".into()),
                from: "app-2".into(),
                replica: "app-3".into(),
                text: "\"quoted\" \u{1F600}".into(),
                id: Some("9-0".into()),
                cursor: Some("1:9-0".into()),
                replayed: true,
            }
        );
        let lost = ServerFrame::HistoryLost {
            stream: "client",
            message: "gone",
        };
        assert_eq!(
            read(lost),
            ReceivedFrame::HistoryLost {
                stream: "client".into(),
                message: "gone".into()
            }
        );
        let error = ServerFrame::Error {
            code: "bad_channel",
            message: "no",
            channel: Some("x"),
        };
        assert_eq!(
            read(error),
            ReceivedFrame::Error {
                code: "bad_channel".into(),
                message: "no".into(),
                channel: Some("x".into()),
            }
        );
        let subscribed = ServerFrame::Subscribed {
            channel: "x",
            cursor: Position::new(Epoch(2), StreamId::ZERO),
            recovered: Some(false),
        };
        assert_eq!(
            read(subscribed),
            ReceivedFrame::Subscribed {
                channel: "x".into(),
                cursor: "2:0-0".into(),
                recovered: Some(false)
            }
        );
        let presence = ServerFrame::Presence {
            channel: "x",
            event: "leave",
            client_id: "c",
            replica: "app-1",
        };
        assert_eq!(
            read(presence),
            ReceivedFrame::Presence {
                channel: "x".into(),
                event: "leave".into(),
                client_id: "c".into(),
                replica: "app-1".into()
            }
        );
        assert_eq!(
            read(ServerFrame::Unsubscribed { channel: "x" }),
            ReceivedFrame::Unsubscribed {
                channel: "x".into()
            }
        );
        let newer: ReceivedFrame = serde_json::from_str(r#"{"type": "gossip"}"#).unwrap();
        assert_eq!(newer, ReceivedFrame::Other);
    }

    #[test]
    fn envelopes_round_trip() {
        let envelope = Envelope {
            via: Via::Broadcast,
            from: "app-1".into(),
            text: "x".into(),
            at: 0,
        };
        assert_eq!(Envelope::decode(&envelope.encode()).unwrap(), envelope);
    }

    #[test]
    fn presence_notes_are_told_apart_from_envelopes_by_their_first_bytes() {
        let note = crate::broker::members::note("join", &ClientId::parse("c").unwrap(), "app-2");
        let read = PresenceNote::decode(&note).unwrap();
        assert_eq!(
            (&*read.presence, &*read.client_id, &*read.replica),
            ("join", "c", "app-2")
        );
        let envelope = Envelope {
            via: Via::Channel,
            from: "app-1".into(),
            text: "{\"presence\":1}".into(),
            at: 0,
        }
        .encode();
        assert!(
            PresenceNote::decode(&envelope).is_none(),
            "a message is never a note"
        );
        assert!(Envelope::decode(&envelope).is_ok());
    }
}
