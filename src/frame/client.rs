//! What a client may send over its socket, parsed and limited in this one place: the echo of
//! the six-button page (`{"text"}`) and the channel frames (`subscribe`, `unsubscribe`,
//! `publish`). What each frame does is the session's business.

use serde::Deserialize;

use crate::channel::{BadChannelName, ChannelName};
use crate::cursor::Position;

/// One frame from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// `{"text"}`: echoed back by this replica (`via: "ws"`).
    Echo {
        text: String,
    },
    Subscribe {
        channel: ChannelName,
        token: Option<String>,
        since: Option<Position>,
    },
    Unsubscribe {
        channel: ChannelName,
    },
    Publish {
        channel: ChannelName,
        text: String,
    },
}

/// Every field any frame may carry; which ones a frame needs depends on its type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    channel: Option<String>,
    token: Option<String>,
    since: Option<String>,
}

/// Longest subscription token read; real ones are 43 characters.
const MAX_TOKEN_LEN: usize = 128;

/// Why a client frame was refused; `code` goes into the error frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("binary frames are not accepted; send JSON text like {{\"text\": \"hi\"}}")]
    Binary,
    #[error("frame is not valid JSON of the form {{\"text\": \"...\"}}: {0}")]
    BadJson(String),
    #[error("text is {len} bytes; the limit is {max}")]
    TextTooLong { len: usize, max: usize },
    #[error("unknown frame type {0:?}; known: subscribe, unsubscribe, publish (or none, to echo)")]
    UnknownType(String),
    #[error("a {kind} frame needs the field {field:?}")]
    MissingField {
        kind: &'static str,
        field: &'static str,
    },
    #[error("a {kind} frame has no field {field:?}")]
    UnexpectedField {
        kind: &'static str,
        field: &'static str,
    },
    #[error(transparent)]
    BadChannel(#[from] BadChannelName),
    #[error("since: a cursor looks like 3f9a2c:1700000000000-0, as a message's cursor says")]
    BadCursor,
    #[error("token: at most {MAX_TOKEN_LEN} characters")]
    TokenTooLong,
}

impl FrameError {
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::Binary => "binary_frame",
            FrameError::BadJson(_) | FrameError::UnexpectedField { .. } => "bad_frame",
            FrameError::TextTooLong { .. } => "text_too_long",
            FrameError::UnknownType(_) => "unknown_type",
            FrameError::MissingField { .. } => "missing_field",
            FrameError::BadChannel(_) => "bad_channel",
            FrameError::BadCursor => "bad_cursor",
            FrameError::TokenTooLong => "bad_subscription_token",
        }
    }
}

/// Parses and limits one text frame from a client.
pub fn parse_client_frame(raw: &str, max_text_bytes: usize) -> Result<ClientFrame, FrameError> {
    let raw: Raw =
        serde_json::from_str(raw).map_err(|err| FrameError::BadJson(short_reason(&err)))?;
    let kind = match raw.kind.as_deref() {
        None => "echo",
        Some("subscribe") => "subscribe",
        Some("unsubscribe") => "unsubscribe",
        Some("publish") => "publish",
        Some(other) => return Err(FrameError::UnknownType(cut(other, 40))),
    };
    // Fields a frame of this kind does not take are refused, not ignored: a typo must not
    // pass for a subscription without its token or cursor.
    let allowed: &[&str] = match kind {
        "echo" => &["text"],
        "subscribe" => &["channel", "token", "since"],
        "unsubscribe" => &["channel"],
        _ => &["channel", "text"],
    };
    let present = [
        ("text", raw.text.is_some()),
        ("channel", raw.channel.is_some()),
        ("token", raw.token.is_some()),
        ("since", raw.since.is_some()),
    ];
    if let Some((field, _)) = present
        .iter()
        .find(|(name, there)| *there && !allowed.contains(name))
    {
        return Err(FrameError::UnexpectedField { kind, field });
    }
    let need = |value: Option<String>, field: &'static str| {
        value.ok_or(FrameError::MissingField { kind, field })
    };
    let text = |value: Option<String>| {
        let text = need(value, "text")?;
        check_text(&text, max_text_bytes)?;
        Ok::<_, FrameError>(text)
    };
    let channel =
        |value: Option<String>| Ok::<_, FrameError>(ChannelName::parse(&need(value, "channel")?)?);
    Ok(match kind {
        "echo" => ClientFrame::Echo {
            text: text(raw.text)?,
        },
        "subscribe" => {
            let channel = channel(raw.channel)?;
            if raw.token.as_ref().is_some_and(|t| t.len() > MAX_TOKEN_LEN) {
                return Err(FrameError::TokenTooLong);
            }
            let since = raw
                .since
                .map(|s| s.parse().map_err(|_| FrameError::BadCursor))
                .transpose()?;
            ClientFrame::Subscribe {
                channel,
                token: raw.token,
                since,
            }
        }
        "unsubscribe" => ClientFrame::Unsubscribe {
            channel: channel(raw.channel)?,
        },
        _ => ClientFrame::Publish {
            channel: channel(raw.channel)?,
            text: text(raw.text)?,
        },
    })
}

/// The valid channel a refused frame named, if any, so its error frame can say which
/// subscription or publish failed (a client pipelining several must tell them apart). An
/// invalid name is not echoed back.
pub fn channel_named(raw: &str) -> Option<ChannelName> {
    #[derive(Deserialize)]
    struct Named {
        channel: Option<String>,
    }
    let named: Named = serde_json::from_str(raw).ok()?;
    ChannelName::parse(&named.channel?).ok()
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

/// At most `max` bytes of `s`, cut on a letter boundary.
fn cut(s: &str, max: usize) -> String {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// serde_json's message without echoing back arbitrary client input at length.
fn short_reason(err: &serde_json::Error) -> String {
    let reason = err.to_string();
    if reason.len() > 160 {
        return format!("{}…", cut(&reason, 160));
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::{Epoch, StreamId};

    fn echo(text: &str) -> ClientFrame {
        ClientFrame::Echo { text: text.into() }
    }

    fn lobby() -> ChannelName {
        ChannelName::parse("public:lobby").unwrap()
    }

    #[test]
    fn a_refused_frame_names_its_channel_only_when_the_name_is_valid() {
        let named = |raw: &str| channel_named(raw).map(|c| c.as_str().to_owned());
        let lobby = Some("public:lobby".to_owned());
        assert_eq!(
            named(r#"{"type":"publish","channel":"public:lobby"}"#),
            lobby
        );
        assert_eq!(
            named(r#"{"type":"subscribe","channel":"public:lobby","since":"x"}"#),
            lobby
        );
        assert_eq!(named(r#"{"type":"subscribe","channel":"a b"}"#), None);
        assert_eq!(named(r#"{"type":"subscribe","channel":7}"#), None);
        assert_eq!(named(r#"{"type":"subscribe"}"#), None);
        assert_eq!(named("not json"), None);
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
        let full = serde_json::from_str::<Raw>(&raw).unwrap_err().to_string();
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
            let full = serde_json::from_str::<Raw>(&raw).unwrap_err().to_string();
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
        let Err(FrameError::BadJson(short)) = parse_client_frame("{", 100) else {
            panic!("a bad frame");
        };
        assert!(!short.is_empty() && !short.ends_with('…'), "{short:?}");
    }

    #[test]
    fn a_text_frame_is_an_echo() {
        assert_eq!(
            parse_client_frame(r#"{"text":"héllo <b>"}"#, 100),
            Ok(echo("héllo <b>"))
        );
    }

    #[test]
    fn channel_frames_parse_with_their_fields() {
        let since = Position::new(Epoch(0xab), StreamId { ms: 5, seq: 1 });
        let cases = [
            (
                r#"{"type":"subscribe","channel":"public:lobby"}"#,
                ClientFrame::Subscribe {
                    channel: lobby(),
                    token: None,
                    since: None,
                },
            ),
            (
                r#"{"type":"subscribe","channel":"public:lobby","token":"t","since":"ab:5-1"}"#,
                ClientFrame::Subscribe {
                    channel: lobby(),
                    token: Some("t".into()),
                    since: Some(since),
                },
            ),
            (
                r#"{"type":"unsubscribe","channel":"public:lobby"}"#,
                ClientFrame::Unsubscribe { channel: lobby() },
            ),
            (
                r#"{"type":"publish","channel":"public:lobby","text":"hi"}"#,
                ClientFrame::Publish {
                    channel: lobby(),
                    text: "hi".into(),
                },
            ),
        ];
        for (raw, frame) in cases {
            assert_eq!(parse_client_frame(raw, 100), Ok(frame), "{raw}");
        }
    }

    #[test]
    fn every_malformed_frame_is_refused_with_its_own_code() {
        let long_channel = format!(r#"{{"type":"subscribe","channel":"{}"}}"#, "x".repeat(129));
        let long_token = format!(
            r#"{{"type":"subscribe","channel":"a","token":"{}"}}"#,
            "t".repeat(129)
        );
        let long_text = format!(
            r#"{{"type":"publish","channel":"a","text":"{}"}}"#,
            "a".repeat(11)
        );
        let cases: Vec<(&str, &str)> = vec![
            (r#"{"text":"a","x":1}"#, "bad_frame"),
            (r#"{}"#, "missing_field"),
            (r#"{"text":1}"#, "bad_frame"),
            ("{", "bad_frame"),
            ("null", "bad_frame"),
            ("[]", "bad_frame"),
            ("", "bad_frame"),
            (r#"{"type":"join","channel":"a"}"#, "unknown_type"),
            (r#"{"type":7}"#, "bad_frame"),
            (r#"{"type":"subscribe"}"#, "missing_field"),
            (r#"{"type":"publish","channel":"a"}"#, "missing_field"),
            (r#"{"type":"publish","text":"a"}"#, "missing_field"),
            (r#"{"type":"unsubscribe"}"#, "missing_field"),
            (r#"{"type":"subscribe","channel":"a b"}"#, "bad_channel"),
            (r#"{"type":"subscribe","channel":""}"#, "bad_channel"),
            (&long_channel, "bad_channel"),
            (
                r#"{"type":"subscribe","channel":"a","since":"nope"}"#,
                "bad_cursor",
            ),
            (&long_token, "bad_subscription_token"),
            (
                r#"{"type":"subscribe","channel":"a","text":"x"}"#,
                "bad_frame",
            ),
            (
                r#"{"type":"unsubscribe","channel":"a","token":"x"}"#,
                "bad_frame",
            ),
            // An unsubscribe carries nothing but its channel: a text is refused as a token is.
            (
                r#"{"type":"unsubscribe","channel":"a","text":"x"}"#,
                "bad_frame",
            ),
            (r#"{"text":"a","channel":"a"}"#, "bad_frame"),
            (&long_text, "text_too_long"),
        ];
        for (raw, code) in cases {
            let err = parse_client_frame(raw, 10).unwrap_err();
            assert_eq!(err.code(), code, "{raw:?}: {err}");
        }
        // A token of exactly the limit is read (and judged by its MAC later).
        let widest = format!(
            r#"{{"type":"subscribe","channel":"a","token":"{}"}}"#,
            "t".repeat(MAX_TOKEN_LEN)
        );
        assert!(parse_client_frame(&widest, 10).is_ok());
        let Err(FrameError::UnknownType(kind)) =
            parse_client_frame(&format!(r#"{{"type":"{}"}}"#, "é".repeat(100)), 10)
        else {
            panic!("unknown type");
        };
        assert_eq!(
            kind,
            "é".repeat(20),
            "cut at 40 bytes, on a letter boundary"
        );
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
    fn long_parse_errors_are_cut_on_a_char_boundary() {
        let raw = format!("{{\"text\": \"{}", "é".repeat(500));
        let FrameError::BadJson(reason) = parse_client_frame(&raw, 10_000).unwrap_err() else {
            panic!("expected bad json");
        };
        assert!(reason.len() <= 164);
    }
}
