//! WebSocket frames in and out, and the envelope replicas pass through the broker; parsed and
//! limited in this one place.

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};

use crate::cursor::{Cursor, StreamId, StreamIdText};

/// How a message reached the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Ws,
    Direct,
    Publish,
    Broadcast,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Ws => "ws",
            Via::Direct => "direct",
            Via::Publish => "publish",
            Via::Broadcast => "broadcast",
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
        last_id: StreamIdText,
        /// The same for broadcasts (`last_broadcast_id`).
        last_broadcast_id: StreamIdText,
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
        from: &'a str,
        replica: &'a str,
        text: &'a str,
        /// The message's id in its history (publish and broadcast only).
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<StreamIdText>,
        /// Sent again after a reconnect because the client had missed it.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        replayed: bool,
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
        from: String,
        replica: String,
        text: String,
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        replayed: bool,
    },
    #[serde(rename = "history_lost")]
    HistoryLost {
        stream: String,
        message: String,
    },
    Error {
        code: String,
        message: String,
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
/// already replayed.
#[derive(Debug, PartialEq, Eq)]
pub struct Serialized {
    pub bytes: Utf8Bytes,
    pub cursor: Option<Cursor>,
}

impl Outgoing {
    pub fn new(bytes: Utf8Bytes, cursor: Option<Cursor>) -> Self {
        Self(Arc::new(Serialized { bytes, cursor }))
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

    /// The frame a replica sends for this envelope (no history id).
    pub fn frame_for(&self, replica: &str) -> Utf8Bytes {
        self.message(replica, None, false)
    }

    /// The frame a replica sends for this envelope, carrying its history id when it has one.
    pub fn outgoing(&self, replica: &str, id: Option<StreamId>, replayed: bool) -> Outgoing {
        let cursor = id.map(|id| match self.via {
            Via::Broadcast => Cursor::Broadcast(id),
            _ => Cursor::Client(id),
        });
        Outgoing::new(self.message(replica, id, replayed), cursor)
    }

    fn message(&self, replica: &str, id: Option<StreamId>, replayed: bool) -> Utf8Bytes {
        ServerFrame::Message {
            via: self.via,
            from: &self.from,
            replica,
            text: &self.text,
            id: id.map(StreamIdText),
            replayed,
        }
        .to_bytes()
    }
}

/// The one frame a client sends: `{"text": "..."}`.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientFrame {
    pub text: String,
}

/// Why a client frame was refused; `code` goes into the error frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("binary frames are not accepted; send JSON text like {{\"text\": \"hi\"}}")]
    Binary,
    #[error("frame is not valid JSON of the form {{\"text\": \"...\"}}: {0}")]
    BadJson(String),
    #[error("text is {len} bytes; the limit is {max}")]
    TextTooLong { len: usize, max: usize },
}

impl FrameError {
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::Binary => "binary_frame",
            FrameError::BadJson(_) => "bad_frame",
            FrameError::TextTooLong { .. } => "text_too_long",
        }
    }
}

/// Parses and limits one text frame from a client.
pub fn parse_client_frame(raw: &str, max_text_bytes: usize) -> Result<ClientFrame, FrameError> {
    let frame: ClientFrame =
        serde_json::from_str(raw).map_err(|err| FrameError::BadJson(short_reason(&err)))?;
    check_text(&frame.text, max_text_bytes)?;
    Ok(frame)
}

/// The text limit shared by frames and HTTP bodies.
pub fn check_text(text: &str, max_text_bytes: usize) -> Result<(), FrameError> {
    if text.len() > max_text_bytes {
        return Err(FrameError::TextTooLong {
            len: text.len(),
            max: max_text_bytes,
        });
    }
    Ok(())
}

/// serde_json's message without echoing back arbitrary client input at length.
fn short_reason(err: &serde_json::Error) -> String {
    let mut reason = err.to_string();
    if reason.len() > 160 {
        let mut cut = 160;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let id = StreamId { ms: 3, seq: 1 };
        let envelope = |via| Envelope {
            via,
            from: "app-1".into(),
            text: "t".into(),
            at: 0,
        };
        let cursor = |via| envelope(via).outgoing("app-2", Some(id), false).cursor;
        assert_eq!(cursor(Via::Broadcast), Some(Cursor::Broadcast(id)));
        assert_eq!(cursor(Via::Publish), Some(Cursor::Client(id)));
        assert_eq!(
            envelope(Via::Publish).outgoing("app-2", None, false).cursor,
            None
        );
    }

    #[test]
    fn text_of_exactly_the_limit_passes_and_one_byte_more_is_refused() {
        assert_eq!(check_text("ééé", 6), Ok(()));
        assert_eq!(
            check_text("éééa", 6),
            Err(FrameError::TextTooLong { len: 7, max: 6 })
        );
    }

    #[test]
    fn a_bad_frame_is_explained_without_echoing_it_at_length() {
        // serde names the unknown field; 200 two-byte letters put byte 160 inside a letter.
        let field = "é".repeat(200);
        let raw = format!(r#"{{"{field}": 1}}"#);
        let full = serde_json::from_str::<ClientFrame>(&raw)
            .unwrap_err()
            .to_string();
        let Err(FrameError::BadJson(reason)) = parse_client_frame(&raw, 100) else {
            panic!("a bad frame");
        };
        let kept = reason.strip_suffix('…').expect("cut, and marked as cut");
        assert!(full.starts_with(kept), "{kept:?} is the start of {full:?}");
        assert!(
            (157..=160).contains(&kept.len()),
            "cut at the last letter boundary within 160 bytes: {}",
            kept.len()
        );
        // A reason of exactly 160 bytes is left whole: the field's length makes it so.
        let reason_for = |n: usize| {
            let raw = format!(r#"{{"{}": 1}}"#, "a".repeat(n));
            let full = serde_json::from_str::<ClientFrame>(&raw)
                .unwrap_err()
                .to_string();
            (raw, full)
        };
        // (The message also names the column, so its length is searched for, not computed.)
        let (raw, full) = (1..200)
            .map(reason_for)
            .find(|(_, full)| full.len() == 160)
            .expect("a field length giving a 160-byte reason");
        assert_eq!(
            parse_client_frame(&raw, 100),
            Err(FrameError::BadJson(full))
        );
        // A short reason is left whole.
        let Err(FrameError::BadJson(short)) = parse_client_frame("{", 100) else {
            panic!("a bad frame");
        };
        assert!(!short.is_empty() && !short.ends_with('…'), "{short:?}");
        assert_eq!(
            short,
            serde_json::from_str::<ClientFrame>("{")
                .unwrap_err()
                .to_string()
        );
    }

    #[test]
    fn a_text_frame_parses() {
        assert_eq!(
            parse_client_frame(r#"{"text":"héllo <b>"}"#, 100),
            Ok(ClientFrame {
                text: "héllo <b>".into()
            })
        );
    }

    #[test]
    fn unknown_fields_missing_text_and_broken_json_are_bad_frames() {
        for raw in [
            r#"{"text":"a","x":1}"#,
            r#"{}"#,
            r#"{"text":1}"#,
            "{",
            "null",
            "[]",
            "",
        ] {
            let err = parse_client_frame(raw, 100).unwrap_err();
            assert_eq!(err.code(), "bad_frame", "{raw:?}");
        }
    }

    #[test]
    fn text_over_the_limit_is_refused_with_its_length() {
        let raw = format!(r#"{{"text":"{}"}}"#, "a".repeat(11));
        assert_eq!(
            parse_client_frame(&raw, 10),
            Err(FrameError::TextTooLong { len: 11, max: 10 })
        );
    }

    #[test]
    fn welcome_and_message_frames_have_the_contract_shape() {
        let welcome = ServerFrame::Welcome {
            replica: "app-1",
            client_id: "c1",
            last_id: StreamIdText(StreamId { ms: 5, seq: 1 }),
            last_broadcast_id: StreamIdText(StreamId::ZERO),
            page_replica: Some("app-2"),
            same_replica: Some(false),
            state: "rebuilt",
        };
        let value: serde_json::Value = serde_json::from_str(&welcome.to_bytes()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"type": "welcome", "replica": "app-1", "client_id": "c1",
                               "last_id": "5-1", "last_broadcast_id": "0-0",
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
        let id = StreamId { ms: 9, seq: 0 };
        let out = envelope.outgoing("app-1", Some(id), true);
        assert_eq!(out.cursor, Some(Cursor::Client(id)));
        let value: serde_json::Value = serde_json::from_str(&out.bytes).unwrap();
        assert_eq!(
            (value["id"].as_str(), value["replayed"].as_bool()),
            (Some("9-0"), Some(true))
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
            last_id: StreamIdText(StreamId { ms: 5, seq: 1 }),
            last_broadcast_id: StreamIdText(StreamId::ZERO),
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
            via: Via::Publish,
            from: "app-2",
            replica: "app-3",
            text: "\"quoted\" \u{1F600}",
            id: Some(StreamIdText(StreamId { ms: 9, seq: 0 })),
            replayed: true,
        };
        assert_eq!(
            read(message),
            ReceivedFrame::Message {
                via: Via::Publish,
                from: "app-2".into(),
                replica: "app-3".into(),
                text: "\"quoted\" \u{1F600}".into(),
                id: Some("9-0".into()),
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
            code: "bad_frame",
            message: "no",
        };
        assert_eq!(
            read(error),
            ReceivedFrame::Error {
                code: "bad_frame".into(),
                message: "no".into()
            }
        );
        let newer: ReceivedFrame = serde_json::from_str(r#"{"type": "presence"}"#).unwrap();
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
    fn long_parse_errors_are_cut_on_a_char_boundary() {
        let raw = format!("{{\"text\": \"{}", "é".repeat(500));
        let FrameError::BadJson(reason) = parse_client_frame(&raw, 10_000).unwrap_err() else {
            panic!("expected bad json");
        };
        assert!(reason.len() <= 164);
    }
}
