//! The WebSocket wire, frame by frame: bytes no client library would send, each table on its own
//! three replicas behind nginx, every case against every replica on a fresh socket; an error
//! frame leaves the socket open (and echoing), a fault at the protocol level closes it with the
//! exact code. The upgrade before the first frame is `upgrade.rs`'s.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{MAX_TEXT, MAX_WS_MESSAGE, REPLICAS, assert_every_replica_serves, text_frame_json};
use crate::support::{Socket, TestCluster};

/// WebSocket frames as a client puts them on the wire (RFC 6455 §5.2), including the ones no
/// client library would send: invalid UTF-8, unmasked, reserved bits, lying lengths.
mod wire {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
    pub const FIN: u8 = 0x80;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A frame whose first byte (FIN, RSV, opcode), masking and announced length are given.
    pub fn raw(first: u8, masked: bool, len: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => out.push(mask_bit | len as u8),
            126..=0xFFFF => {
                out.push(mask_bit | 126);
                out.extend((len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend(len.to_be_bytes());
            }
        }
        if masked {
            out.extend(MASK);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        } else {
            out.extend(payload);
        }
        out
    }

    /// A well-formed masked frame.
    pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let first = if fin { FIN | opcode } else { opcode };
        raw(first, true, payload.len() as u64, payload)
    }

    pub fn text(payload: &[u8]) -> Vec<u8> {
        frame(true, TEXT, payload)
    }
}

/// What the server must do with a WebSocket input.
#[derive(Debug)]
enum Outcome {
    /// An error frame with this code; the socket stays open and still echoes.
    ErrorFrame(&'static str),
    /// Echoed back `via: "ws"` with this text.
    Echo(String),
    /// Closed by the server with this code.
    Closed(u16),
}

/// Writes bytes on the socket's TCP stream, past tungstenite's frame writer. A write may fail
/// when the server has already closed; the close code read afterwards is what the test checks.
async fn send_raw(socket: &mut Socket, bytes: &[u8]) -> std::io::Result<()> {
    let stream = socket.ws.get_mut();
    stream.write_all(bytes).await?;
    stream.flush().await
}

async fn expect_outcome(socket: &mut Socket, what: &str, replica: &str, outcome: &Outcome) {
    match outcome {
        Outcome::ErrorFrame(code) => {
            let frame = socket.next_json().await;
            assert_eq!(
                (frame["type"].as_str(), frame["code"].as_str()),
                (Some("error"), Some(*code)),
                "{what} on {replica}: {frame}"
            );
            assert!(
                frame["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: {frame}"
            );
            socket.send_text("still open").await;
            let echo = socket.next_json().await;
            assert_eq!(
                (echo["via"].as_str(), echo["text"].as_str()),
                (Some("ws"), Some("still open")),
                "{what} on {replica}: the socket stays open and echoes"
            );
        }
        Outcome::Echo(text) => {
            let echo = socket.next_json().await;
            assert_eq!(
                (echo["type"].as_str(), echo["via"].as_str()),
                (Some("message"), Some("ws")),
                "{what} on {replica}: {echo}"
            );
            assert_eq!(echo["text"].as_str(), Some(text.as_str()), "{what}");
        }
        Outcome::Closed(code) => {
            let got = socket.close_code(Duration::from_secs(5)).await;
            assert_eq!(
                got,
                Some(CloseCode::from(*code)),
                "{what} on {replica}: expected close {code}"
            );
        }
    }
}

/// Every case against every replica, each on a fresh socket through nginx; then every replica
/// still serves.
async fn run_wire_table(table: &str, cases: &[(&str, Vec<u8>, Outcome)]) {
    let mut cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    for (what, bytes, outcome) in cases {
        for replica in REPLICAS {
            let mut socket = cluster.connect(&client, Some(replica)).await;
            assert_eq!(socket.replica, replica);
            let _ = send_raw(&mut socket, bytes).await;
            expect_outcome(&mut socket, what, replica, outcome).await;
        }
    }
    assert_every_replica_serves(&mut cluster, &format!("websocket input ({table})")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_get_an_error_frame_and_invalid_utf8_closes_with_1007() {
    let cases: Vec<(&str, Vec<u8>, Outcome)> = vec![
        (
            "binary frame",
            wire::frame(true, wire::BINARY, &[0, 159, 146, 150]),
            Outcome::ErrorFrame("binary_frame"),
        ),
        (
            "empty binary frame",
            wire::frame(true, wire::BINARY, &[]),
            Outcome::ErrorFrame("binary_frame"),
        ),
        (
            "invalid UTF-8 in a text frame",
            wire::text(b"{\"text\":\"\xff\xfe\"}"),
            Outcome::Closed(1007),
        ),
        (
            "overlong UTF-8 encoding",
            wire::text(b"{\"text\":\"\xc0\xaf\"}"),
            Outcome::Closed(1007),
        ),
        (
            "a UTF-16 surrogate encoded in UTF-8",
            wire::text(b"{\"text\":\"\xed\xa0\x80\"}"),
            Outcome::Closed(1007),
        ),
        (
            "a text message ending inside a UTF-8 sequence",
            wire::text(b"{\"text\":\"\xe2\x82"),
            Outcome::Closed(1007),
        ),
        (
            "invalid UTF-8 across two fragments",
            [
                wire::frame(false, wire::TEXT, b"{\"text\":\"\xe2"),
                wire::frame(true, wire::CONTINUATION, b"\x28\xa1\"}"),
            ]
            .concat(),
            Outcome::Closed(1007),
        ),
    ];
    run_wire_table("binary and UTF-8", &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_are_not_our_json_get_a_bad_frame_error_and_stay_open() {
    let cases: Vec<(&str, Vec<u8>, Outcome)> = vec![
        (
            "broken JSON",
            wire::text(br#"{"text":"#),
            Outcome::ErrorFrame("bad_frame"),
        ),
        (
            "unknown field",
            wire::text(br#"{"text":"a","to":"someone else"}"#),
            Outcome::ErrorFrame("bad_frame"),
        ),
        (
            "missing text",
            wire::text(b"{}"),
            Outcome::ErrorFrame("missing_field"),
        ),
        (
            "text is not a string",
            wire::text(br#"{"text":["a"]}"#),
            Outcome::ErrorFrame("bad_frame"),
        ),
        (
            "JSON null",
            wire::text(b"null"),
            Outcome::ErrorFrame("bad_frame"),
        ),
        (
            "empty text frame",
            wire::text(b""),
            Outcome::ErrorFrame("bad_frame"),
        ),
        (
            "duplicate text field",
            wire::text(br#"{"text":"a","text":"b"}"#),
            Outcome::ErrorFrame("bad_frame"),
        ),
        (
            "a lone surrogate escape",
            wire::text(br#"{"text":"\ud800"}"#),
            Outcome::ErrorFrame("bad_frame"),
        ),
        (
            "nesting 10000 deep",
            wire::text(&[b'['; 10_000]),
            Outcome::ErrorFrame("bad_frame"),
        ),
    ];
    run_wire_table("bad JSON", &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_and_messages_are_limited_to_the_exact_byte() {
    let fill = |n: usize| vec![b'a'; n];
    let within_message = {
        // A message of exactly MAX_WS_MESSAGE_BYTES: valid JSON padded with whitespace.
        let mut raw = br#"{"text":"padded"}"#.to_vec();
        raw.resize(MAX_WS_MESSAGE, b' ');
        raw
    };
    let fragments_over_limit: Vec<u8> = (0..5)
        .flat_map(|i| {
            let opcode = if i == 0 {
                wire::TEXT
            } else {
                wire::CONTINUATION
            };
            wire::frame(i == 4, opcode, &fill(MAX_WS_MESSAGE / 4))
        })
        .collect();
    let cases: Vec<(&str, Vec<u8>, Outcome)> = vec![
        (
            "text one byte over MAX_TEXT_BYTES",
            wire::text(&text_frame_json(&"a".repeat(MAX_TEXT + 1))),
            Outcome::ErrorFrame("text_too_long"),
        ),
        (
            "text over the limit in bytes, not in characters",
            wire::text(&text_frame_json(&"é".repeat(MAX_TEXT / 2 + 1))),
            Outcome::ErrorFrame("text_too_long"),
        ),
        (
            "text of exactly MAX_TEXT_BYTES",
            wire::text(&text_frame_json(&"a".repeat(MAX_TEXT))),
            Outcome::Echo("a".repeat(MAX_TEXT)),
        ),
        (
            "a message of exactly MAX_WS_MESSAGE_BYTES",
            wire::text(&within_message),
            Outcome::Echo("padded".to_owned()),
        ),
        (
            "a frame one byte over MAX_WS_MESSAGE_BYTES",
            wire::text(&fill(MAX_WS_MESSAGE + 1)),
            Outcome::Closed(1009),
        ),
        (
            "a frame header announcing 2^63 - 1 bytes",
            wire::raw(wire::FIN | wire::BINARY, true, i64::MAX as u64, b""),
            Outcome::Closed(1009),
        ),
        (
            "fragments each within the limit, together over it",
            fragments_over_limit,
            Outcome::Closed(1009),
        ),
    ];
    run_wire_table("sizes", &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_pings_and_pongs_within_the_rules_are_served() {
    let ping_flood: Vec<u8> = (0..20_000u32)
        .flat_map(|i| wire::frame(true, wire::PING, &i.to_be_bytes()))
        .chain(wire::text(&text_frame_json("after the flood")))
        .collect();
    let cases: Vec<(&str, Vec<u8>, Outcome)> = vec![
        (
            "a message in three fragments with a ping between them",
            [
                wire::frame(false, wire::TEXT, br#"{"text""#),
                wire::frame(true, wire::PING, b"between"),
                wire::frame(false, wire::CONTINUATION, br#":"frag"#),
                wire::frame(true, wire::CONTINUATION, br#"mented"}"#),
            ]
            .concat(),
            Outcome::Echo("fragmented".to_owned()),
        ),
        (
            "20000 pings as fast as possible, then a text",
            ping_flood,
            Outcome::Echo("after the flood".to_owned()),
        ),
        (
            "unsolicited pongs, then a text",
            [
                wire::frame(true, wire::PONG, b"unasked"),
                wire::frame(true, wire::PONG, b""),
                wire::text(&text_frame_json("after pongs")),
            ]
            .concat(),
            Outcome::Echo("after pongs".to_owned()),
        ),
    ];
    run_wire_table("fragments and control frames", &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_with_1002() {
    let fill = |n: usize| vec![b'a'; n];
    let protocol = 1002;
    let cases: Vec<(&str, Vec<u8>, Outcome)> = vec![
        (
            "an unmasked frame",
            wire::raw(wire::FIN | wire::TEXT, false, 12, br#"{"text":"a"}"#),
            Outcome::Closed(protocol),
        ),
        (
            "reserved bits set",
            wire::raw(0x70 | wire::FIN | wire::TEXT, true, 12, br#"{"text":"a"}"#),
            Outcome::Closed(protocol),
        ),
        (
            "a reserved data opcode",
            wire::frame(true, 0x3, b"?"),
            Outcome::Closed(protocol),
        ),
        (
            "a reserved control opcode",
            wire::frame(true, 0xB, b"?"),
            Outcome::Closed(protocol),
        ),
        (
            "a continuation with nothing to continue",
            wire::frame(true, wire::CONTINUATION, b"orphan"),
            Outcome::Closed(protocol),
        ),
        (
            "a new message inside a fragmented one",
            [
                wire::frame(false, wire::TEXT, b"{"),
                wire::text(br#"{"text":"a"}"#),
            ]
            .concat(),
            Outcome::Closed(protocol),
        ),
        (
            "a fragmented ping",
            wire::frame(false, wire::PING, b"half"),
            Outcome::Closed(protocol),
        ),
        (
            "a ping over 125 bytes",
            wire::frame(true, wire::PING, &fill(126)),
            Outcome::Closed(protocol),
        ),
    ];
    run_wire_table("protocol violations", &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_frames_are_answered_with_the_exact_code() {
    let protocol = 1002;
    let cases: Vec<(&str, Vec<u8>, Outcome)> = vec![
        (
            "a normal close is answered in kind",
            wire::frame(true, wire::CLOSE, &1000u16.to_be_bytes()),
            Outcome::Closed(1000),
        ),
        (
            "a close frame with a one-byte payload",
            wire::frame(true, wire::CLOSE, &[3]),
            Outcome::Closed(protocol),
        ),
        (
            "a close frame with a reserved code",
            wire::frame(true, wire::CLOSE, &999u16.to_be_bytes()),
            Outcome::Closed(protocol),
        ),
        (
            "a close frame whose reason is not UTF-8",
            wire::frame(true, wire::CLOSE, &[0x03, 0xe8, 0xff]),
            Outcome::Closed(1007),
        ),
    ];
    run_wire_table("close frames", &cases).await;
}
