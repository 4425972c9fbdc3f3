//! Limits and bad input, surface by surface, through nginx against three replicas: every table
//! asserts the exact status or close code and the error, and after each table every replica
//! still serves — directly and through nginx with its cookie, probes and a delivered publish.
//! `api.rs` has the first table of HTTP bad input against one replica; this one adds nginx in
//! front, the WebSocket wire, the socket and rate limits, and the origin check.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{API_KEY, Client, Socket, TestCluster};

const REPLICAS: [&str; 3] = ["app-1", "app-2", "app-3"];
/// The defaults of `src/limits.rs`.
const MAX_BODY: usize = 16 * 1024;
const MAX_TEXT: usize = 4 * 1024;
const MAX_WS_MESSAGE: usize = 16 * 1024;
/// `client_max_body_size` in nginx.conf: above it nginx answers 413 itself.
const NGINX_MAX_BODY: usize = 64 * 1024;

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

fn text_frame_json(text: &str) -> Vec<u8> {
    json!({ "text": text }).to_string().into_bytes()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_input_out_of_bounds_gets_an_error_frame_or_the_exact_close_code() {
    let mut cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let fill = |n: usize| vec![b'a'; n];
    let within_message = {
        // A message of exactly MAX_WS_MESSAGE_BYTES: valid JSON padded with whitespace.
        let mut raw = br#"{"text":"padded"}"#.to_vec();
        raw.resize(MAX_WS_MESSAGE, b' ');
        raw
    };
    let ping_flood: Vec<u8> = (0..20_000u32)
        .flat_map(|i| wire::frame(true, wire::PING, &i.to_be_bytes()))
        .chain(wire::text(&text_frame_json("after the flood")))
        .collect();
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
    let protocol = 1002;
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
            Outcome::ErrorFrame("bad_frame"),
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
    // Every case against every replica, each on a fresh socket through nginx.
    for (what, bytes, outcome) in &cases {
        for replica in REPLICAS {
            let mut socket = cluster.connect(&client, Some(replica)).await;
            assert_eq!(socket.replica, replica);
            let _ = send_raw(&mut socket, bytes).await;
            expect_outcome(&mut socket, what, replica, outcome).await;
        }
    }
    assert_every_replica_serves(&mut cluster, "websocket input").await;
}

/// Where a request goes.
#[derive(Clone, Copy, Debug)]
enum To {
    Nginx,
    Replica(&'static str),
}

/// One HTTP request of a table.
#[derive(Debug)]
struct Req {
    method: reqwest::Method,
    path: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
    /// Sent with `Transfer-Encoding: chunked` (no length announced), over a raw connection.
    chunked: bool,
    to: To,
}

fn post(path: impl Into<String>) -> Req {
    Req {
        method: reqwest::Method::POST,
        path: path.into(),
        headers: vec![("content-type", b"application/json".to_vec())],
        body: text_frame_json("hi"),
        chunked: false,
        to: To::Nginx,
    }
}

impl Req {
    fn header(mut self, name: &'static str, value: impl AsRef<[u8]>) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.as_ref().to_vec()));
        self
    }

    /// Another header of the same name, after the existing ones.
    fn also_header(mut self, name: &'static str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name, value.as_ref().to_vec()));
        self
    }

    fn without(mut self, name: &'static str) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self
    }

    fn bearer(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }

    fn to(mut self, replica: &'static str) -> Self {
        self.to = To::Replica(replica);
        self
    }
}

/// What the answer must be.
#[derive(Debug)]
enum Expect {
    /// The contract's JSON error with this status and code, and a message.
    Error(u16, &'static str),
    /// nginx refused it itself, with its own page (not our JSON).
    Nginx(u16),
    /// Served.
    Ok,
}

fn host_of(base: &str) -> String {
    base.trim_start_matches("http://").to_owned()
}

fn target(cluster: &TestCluster, to: To) -> String {
    match to {
        To::Nginx => cluster.base(),
        To::Replica(name) => cluster.replica_base(name),
    }
}

async fn send(cluster: &TestCluster, req: &Req) -> (StatusCode, Value) {
    let base = target(cluster, req.to);
    if req.chunked {
        return send_chunked(&host_of(&base), req).await;
    }
    let mut request = cluster
        .http
        .request(req.method.clone(), format!("{base}{}", req.path))
        .body(req.body.clone());
    for (name, value) in &req.headers {
        request = request.header(
            HeaderName::from_static(name),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A request whose body is chunked, written byte for byte (reqwest always sends a length for a
/// body it holds). One connection per request, closed by the server after the answer.
async fn send_chunked(host: &str, req: &Req) -> (StatusCode, Value) {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ntransfer-encoding: chunked\r\n",
        req.method, req.path
    )
    .into_bytes();
    for (name, value) in &req.headers {
        head.extend_from_slice(format!("{name}: ").as_bytes());
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    for chunk in req.body.chunks(4096) {
        head.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        head.extend_from_slice(chunk);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"0\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    // The server may answer before reading everything; the answer is what counts.
    let _ = stream.write_all(&head).await;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete answer");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (StatusCode::from_u16(status).unwrap(), value)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

async fn run_http_table(cluster: &TestCluster, table: &str, cases: &[(&str, Req, Expect)]) {
    for (what, req, expect) in cases {
        let (status, body) = send(cluster, req).await;
        let context = format!("{table}: {what} ({:?} {}): {body}", req.to, req.path);
        match expect {
            Expect::Error(want, code) => {
                assert_eq!(
                    (status.as_u16(), body["error"]["code"].as_str()),
                    (*want, Some(*code)),
                    "{context}"
                );
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    "{context}"
                );
            }
            Expect::Nginx(want) => {
                assert_eq!(status.as_u16(), *want, "{context}");
                assert!(
                    body.as_str().is_some_and(|page| page.contains("nginx")),
                    "{context}: expected nginx's own page"
                );
            }
            Expect::Ok => assert_eq!(status, StatusCode::OK, "{context}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bad_input_through_nginx_gets_the_exact_status_and_error() {
    let mut cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let other = cluster.mint().await;
    let tok = client.token.as_str();
    let echo = format!("/api/echo/{}", client.id);
    let publish = format!("/api/publish/{}", client.id);
    let direct = format!("/api/direct/{}", client.id);

    // Through nginx and directly: nginx refuses some paths itself before a replica sees them.
    let bad_ids = [
        ("a dot", "/api/echo/a.b", None),
        ("an encoded space", "/api/direct/a%20b", None),
        ("an encoded slash", "/api/publish/a%2Fb", None),
        ("an encoded NUL", "/api/echo/a%00", Some(400)),
        ("a malformed escape", "/api/echo/a%ZZ", Some(400)),
        ("a letter outside ASCII", "/api/publish/%C3%A4", None),
        (
            "bytes that are not UTF-8 once decoded",
            "/api/echo/%FF%FE",
            None,
        ),
        (
            "an encoded path traversal",
            "/api/direct/..%2F..%2Fhealthz",
            None,
        ),
        (
            "an id of 65 characters",
            &*format!("/api/echo/{}", "a".repeat(65)),
            None,
        ),
    ];
    let mut cases: Vec<(&str, Req, Expect)> = Vec::new();
    for (what, path, nginx_refuses) in bad_ids {
        let ours = Expect::Error(400, "bad_client_id");
        let through_nginx =
            nginx_refuses.map_or(Expect::Error(400, "bad_client_id"), Expect::Nginx);
        cases.push((what, post(path).bearer(tok), through_nginx));
        cases.push((what, post(path).bearer(tok).to("app-1"), ours));
    }
    let longest_id = format!("/api/echo/{}", "a".repeat(64));
    cases.extend([
        (
            "an id of 64 characters is an id (the token is what fails)",
            post(longest_id).bearer(tok),
            Expect::Error(401, "bad_token"),
        ),
        (
            "an empty id",
            post("/api/echo/").bearer(tok),
            Expect::Error(404, "not_found"),
        ),
    ]);
    run_http_table(&cluster, "client ids", &cases).await;

    let mut flipped = client.token.clone().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let id = stickyws::token::ClientId::parse(&client.id).unwrap();
    let foreign = stickyws::token::Signer::new(b"another deployment's secret").mint(&id);
    let ours = stickyws::token::Signer::new(cluster.env.secret.as_bytes()).mint(&id);
    assert_eq!(ours, client.token, "the test signs like the replicas");
    let padded = format!("{tok}=");
    let cases: Vec<(&str, Req, Expect)> = vec![
        (
            "a forged token",
            post(&publish).bearer(&"A".repeat(43)),
            Expect::Error(401, "bad_token"),
        ),
        (
            "another client's token",
            post(&direct).bearer(&other.token),
            Expect::Error(401, "bad_token"),
        ),
        (
            "a token with one character changed",
            post(&publish).bearer(&flipped),
            Expect::Error(401, "bad_token"),
        ),
        (
            "a token signed with another secret",
            post(&publish).bearer(&foreign),
            Expect::Error(401, "bad_token"),
        ),
        (
            "a token with base64 padding",
            post(&echo).bearer(&padded),
            Expect::Error(401, "bad_token"),
        ),
        (
            "a truncated token",
            post(&publish).bearer(&tok[..42]),
            Expect::Error(401, "bad_token"),
        ),
        (
            "43 characters outside base64",
            post(&direct).bearer(&"!".repeat(43)),
            Expect::Error(401, "bad_token"),
        ),
        (
            "a client token on broadcast",
            post("/api/broadcast").bearer(tok),
            Expect::Error(401, "bad_token"),
        ),
        (
            "two Authorization headers: nginx refuses them",
            post(&publish)
                .bearer(&other.token)
                .also_header("authorization", format!("Bearer {tok}")),
            Expect::Nginx(400),
        ),
        (
            "two Authorization headers directly: the first one counts",
            post(&publish)
                .bearer(&other.token)
                .also_header("authorization", format!("Bearer {tok}"))
                .to("app-2"),
            Expect::Error(401, "bad_token"),
        ),
        (
            "Basic instead of Bearer",
            post(&publish).header("authorization", format!("Basic {tok}")),
            Expect::Error(401, "missing_token"),
        ),
        (
            "Bearer without a credential",
            post(&publish).header("authorization", "Bearer "),
            Expect::Error(401, "missing_token"),
        ),
        (
            "an Authorization header that is not ASCII",
            post(&publish).header("authorization", b"Bearer \xff\xfe"),
            Expect::Error(401, "missing_token"),
        ),
        (
            "the token in the query, as a socket takes it",
            post(format!("{publish}?token={tok}")),
            Expect::Error(401, "missing_token"),
        ),
        (
            "the token in a cookie",
            post(&publish).header("cookie", format!("token={tok}")),
            Expect::Error(401, "missing_token"),
        ),
    ];
    run_http_table(&cluster, "tokens", &cases).await;

    let cases: Vec<(&str, Req, Expect)> = [
        ("no Content-Type", None),
        ("text/plain", Some("text/plain")),
        ("a form", Some("application/x-www-form-urlencoded")),
        ("multipart", Some("multipart/form-data; boundary=x")),
        ("application/jsonx", Some("application/jsonx")),
        ("a list of types", Some("application/json, text/plain")),
    ]
    .into_iter()
    .map(|(what, content_type)| {
        let req = match content_type {
            Some(value) => post(&publish).bearer(tok).header("content-type", value),
            None => post(&publish).bearer(tok).without("content-type"),
        };
        (what, req, Expect::Error(415, "unsupported_media_type"))
    })
    .chain([
        (
            "JSON with a charset",
            post(&echo)
                .bearer(tok)
                .header("content-type", "application/json; charset=utf-8"),
            Expect::Ok,
        ),
        (
            "JSON in capitals",
            post(&echo)
                .bearer(tok)
                .header("content-type", "Application/JSON"),
            Expect::Ok,
        ),
    ])
    .collect();
    run_http_table(&cluster, "content types", &cases).await;

    let padded_to = |len: usize| {
        let mut body = text_frame_json("padded");
        body.resize(len, b' ');
        body
    };
    let cases: Vec<(&str, Req, Expect)> = vec![
        (
            "a body of exactly MAX_BODY_BYTES",
            post(&echo).bearer(tok).body(padded_to(MAX_BODY)),
            Expect::Ok,
        ),
        (
            "a body one byte over MAX_BODY_BYTES",
            post(&echo).bearer(tok).body(padded_to(MAX_BODY + 1)),
            Expect::Error(413, "body_too_large"),
        ),
        (
            "a body of exactly nginx's limit reaches the replica",
            post(&publish).bearer(tok).body(padded_to(NGINX_MAX_BODY)),
            Expect::Error(413, "body_too_large"),
        ),
        (
            "a body one byte over nginx's limit",
            post(&publish)
                .bearer(tok)
                .body(padded_to(NGINX_MAX_BODY + 1)),
            Expect::Nginx(413),
        ),
        (
            "the same body sent to the replica directly",
            post(&publish)
                .bearer(tok)
                .body(padded_to(NGINX_MAX_BODY + 1))
                .to("app-2"),
            Expect::Error(413, "body_too_large"),
        ),
        (
            "a body of 1 MiB",
            post(&direct).bearer(tok).body(padded_to(1 << 20)),
            Expect::Nginx(413),
        ),
        (
            "a chunked body within the limit",
            post(&echo).bearer(tok).body(padded_to(MAX_BODY)).chunked(),
            Expect::Ok,
        ),
        (
            "a chunked body over MAX_BODY_BYTES",
            post(&echo)
                .bearer(tok)
                .body(padded_to(MAX_BODY + 1))
                .chunked(),
            Expect::Error(413, "body_too_large"),
        ),
        (
            "a chunked body over nginx's limit",
            post(&echo)
                .bearer(tok)
                .body(padded_to(NGINX_MAX_BODY + 1))
                .chunked(),
            Expect::Nginx(413),
        ),
        (
            "a chunked body over MAX_BODY_BYTES sent to the replica directly",
            post(&echo)
                .bearer(tok)
                .body(padded_to(NGINX_MAX_BODY + 1))
                .chunked()
                .to("app-3"),
            Expect::Error(413, "body_too_large"),
        ),
        (
            "text one byte over MAX_TEXT_BYTES",
            post(&publish)
                .bearer(tok)
                .body(text_frame_json(&"a".repeat(MAX_TEXT + 1))),
            Expect::Error(413, "text_too_long"),
        ),
        (
            "text over the limit in bytes, not in characters",
            post(&direct)
                .bearer(tok)
                .body(text_frame_json(&"€".repeat(MAX_TEXT / 3 + 1))),
            Expect::Error(413, "text_too_long"),
        ),
        (
            "text of exactly MAX_TEXT_BYTES",
            post(&publish)
                .bearer(tok)
                .body(text_frame_json(&"a".repeat(MAX_TEXT))),
            Expect::Ok,
        ),
        (
            "a body that is not UTF-8",
            post(&echo)
                .bearer(tok)
                .body(b"{\"text\":\"\xff\"}".to_vec()),
            Expect::Error(400, "bad_body"),
        ),
        (
            "an empty body",
            post(&echo).bearer(tok).body(Vec::new()),
            Expect::Error(400, "bad_body"),
        ),
        (
            "JSON nested 10000 deep",
            post(&publish).bearer(tok).body(vec![b'['; 10_000]),
            Expect::Error(400, "bad_body"),
        ),
        (
            "a duplicate text field",
            post(&direct)
                .bearer(tok)
                .body(br#"{"text":"a","text":"b"}"#.to_vec()),
            Expect::Error(400, "bad_body"),
        ),
        (
            "a lone surrogate escape",
            post(&echo)
                .bearer(tok)
                .body(br#"{"text":"\udc00"}"#.to_vec()),
            Expect::Error(400, "bad_body"),
        ),
        (
            "data after the object",
            post(&echo).bearer(tok).body(br#"{"text":"a"} {}"#.to_vec()),
            Expect::Error(400, "bad_body"),
        ),
        (
            "a byte order mark before the JSON",
            post(&echo)
                .bearer(tok)
                .body(b"\xef\xbb\xbf{\"text\":\"a\"}".to_vec()),
            Expect::Error(400, "bad_body"),
        ),
    ];
    run_http_table(&cluster, "bodies", &cases).await;
    assert_every_replica_serves(&mut cluster, "http bad input").await;

    // Cookies naming no known replica are spread round robin, never refused.
    let long_value = [b"sticky=".as_slice(), &[b'x'; 4000]].concat();
    let cookies: [(&str, &[u8]); 10] = [
        ("an unknown replica", b"sticky=app-9"),
        ("an empty value", b"sticky="),
        ("a known name with a suffix", b"sticky=app-1x"),
        ("a known name with a prefix", b"sticky=xapp-1"),
        ("a percent-encoded name", b"sticky=%61pp-1"),
        ("a path", b"sticky=../app-1"),
        ("bytes outside ASCII", b"sticky=\xff\xfeapp-1"),
        ("a value of 4000 bytes", &long_value),
        (
            "two sticky cookies, the first unknown",
            b"sticky=app-9; sticky=app-1",
        ),
        ("a cookie without a value", b"sticky"),
    ];
    for (what, cookie) in cookies {
        let mut seen = BTreeSet::new();
        for _ in 0..9 {
            let (status, body) =
                send(&cluster, &post(&echo).bearer(tok).header("cookie", cookie)).await;
            assert_eq!(status, StatusCode::OK, "cookie with {what}: {body}");
            seen.insert(body["replica"].as_str().unwrap().to_owned());
        }
        assert_eq!(seen.len(), 3, "cookie with {what}: round robin, {seen:?}");
    }
    let mut socket = cluster.connect(&client, Some("app-0")).await;
    socket.send_text("unknown cookie").await;
    assert_eq!(socket.next_json().await["text"], "unknown cookie");
    drop(socket);
    assert_every_replica_serves(&mut cluster, "unknown cookies").await;
}

/// The answer to an upgrade: 101 with the welcome, or the refusal's status and JSON body.
async fn upgrade(host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = format!("ws://{host}{path}").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let connect = tokio_tungstenite::connect_async(request);
    match tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .expect("an answer to the upgrade in time")
    {
        Ok((mut ws, _)) => {
            let welcome = match tokio::time::timeout(
                Duration::from_secs(5),
                futures_util::StreamExt::next(&mut ws),
            )
            .await
            {
                Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str(&text).unwrap(),
                other => panic!("no welcome after 101: {other:?}"),
            };
            let _ = ws.close(None).await;
            (101, welcome)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            let value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
            (response.status().as_u16(), value)
        }
        Err(other) => panic!("upgrade failed without an answer: {other}"),
    }
}

/// An upgrade case: path, headers, and the expected status with its error code (None for 101).
type UpgradeCase<'a> = (
    &'a str,
    String,
    Vec<(&'a str, String)>,
    u16,
    Option<&'a str>,
);

async fn run_upgrade_table(host: &str, table: &str, cases: &[UpgradeCase<'_>]) {
    for (what, path, headers, status, code) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (got, body) = upgrade(host, path, &headers).await;
        let context = format!("{table}: {what}: {body}");
        match code {
            Some(code) => assert_eq!(
                (got, body["error"]["code"].as_str()),
                (*status, Some(*code)),
                "{context}"
            ),
            None => assert_eq!(
                (got, body["type"].as_str()),
                (*status, Some("welcome")),
                "{context}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_with_bad_credentials_or_a_foreign_origin_are_refused_exactly() {
    let mut cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let other = cluster.mint().await;
    let host = host_of(&cluster.base());
    let (id, tok) = (client.id.as_str(), client.token.as_str());
    let ok = format!("/ws/{id}?token={tok}");
    let none = Vec::new;
    let cases: Vec<UpgradeCase> = vec![
        ("a good upgrade", ok.clone(), none(), 101, None),
        (
            "no token",
            format!("/ws/{id}"),
            none(),
            401,
            Some("missing_token"),
        ),
        (
            "the token in Authorization instead of the query",
            format!("/ws/{id}"),
            vec![("authorization", format!("Bearer {tok}"))],
            401,
            Some("missing_token"),
        ),
        (
            "the token in a cookie",
            format!("/ws/{id}"),
            vec![("cookie", format!("token={tok}"))],
            401,
            Some("missing_token"),
        ),
        (
            "the token in the path",
            format!("/ws/{id}/{tok}"),
            none(),
            404,
            Some("not_found"),
        ),
        (
            "another client's token",
            format!("/ws/{id}?token={}", other.token),
            none(),
            401,
            Some("bad_token"),
        ),
        (
            "a forged token",
            format!("/ws/{id}?token={}", "A".repeat(43)),
            none(),
            401,
            Some("bad_token"),
        ),
        (
            "the API key is not a socket token",
            format!("/ws/{id}?token={API_KEY}"),
            none(),
            401,
            Some("bad_token"),
        ),
        (
            "a token with an encoded NUL appended",
            format!("{ok}%00"),
            none(),
            401,
            Some("bad_token"),
        ),
        (
            "a bad client id",
            format!("/ws/a.b?token={tok}"),
            none(),
            400,
            Some("bad_client_id"),
        ),
        (
            "a bad resume id",
            format!("{ok}&last_id=1-x"),
            none(),
            400,
            Some("bad_last_id"),
        ),
        (
            "a cross-site Origin",
            ok.clone(),
            vec![("origin", "http://evil.example".to_owned())],
            403,
            Some("forbidden_origin"),
        ),
        (
            "an origin only ALLOWED_ORIGINS would admit (unset here)",
            ok.clone(),
            vec![("origin", "http://allowed.example".to_owned())],
            403,
            Some("forbidden_origin"),
        ),
        (
            "the opaque origin null",
            ok.clone(),
            vec![("origin", "null".to_owned())],
            403,
            Some("forbidden_origin"),
        ),
        (
            "the page's own origin",
            ok.clone(),
            vec![("origin", format!("http://{host}"))],
            101,
            None,
        ),
        (
            "a cookie naming an unknown replica",
            ok.clone(),
            vec![("cookie", "sticky=app-7".to_owned())],
            101,
            None,
        ),
    ];
    run_upgrade_table(&host, "upgrades", &cases).await;
    assert_every_replica_serves(&mut cluster, "upgrades").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_widens_the_origin_check_to_exactly_the_listed_origins() {
    let env = vec![(
        "ALLOWED_ORIGINS".to_owned(),
        "http://allowed.example, https://other.example".to_owned(),
    )];
    let mut cluster = TestCluster::start_with(3, env);
    let client = cluster.mint().await;
    let host = host_of(&cluster.base());
    let ok = format!("/ws/{}?token={}", client.id, client.token);
    let origin = |value: &str| vec![("origin", value.to_owned())];
    let cases: Vec<UpgradeCase> = vec![
        (
            "a listed origin",
            ok.clone(),
            origin("http://allowed.example"),
            101,
            None,
        ),
        (
            "the second listed origin",
            ok.clone(),
            origin("https://other.example"),
            101,
            None,
        ),
        (
            "a listed origin in capitals",
            ok.clone(),
            origin("http://ALLOWED.example"),
            101,
            None,
        ),
        (
            "the page's own origin",
            ok.clone(),
            origin(&format!("http://{host}")),
            101,
            None,
        ),
        (
            "a cross-site origin",
            ok.clone(),
            origin("http://evil.example"),
            403,
            Some("forbidden_origin"),
        ),
        (
            "a listed origin as a prefix",
            ok.clone(),
            origin("http://allowed.example.evil.example"),
            403,
            Some("forbidden_origin"),
        ),
        (
            "a listed host on another port",
            ok.clone(),
            origin("http://allowed.example:8080"),
            403,
            Some("forbidden_origin"),
        ),
        (
            "a listed host with another scheme",
            ok.clone(),
            origin("https://allowed.example"),
            403,
            Some("forbidden_origin"),
        ),
        (
            "a listed origin with a path",
            ok.clone(),
            origin("http://allowed.example/"),
            403,
            Some("forbidden_origin"),
        ),
    ];
    run_upgrade_table(&host, "allowed origins", &cases).await;
    assert_every_replica_serves(&mut cluster, "allowed origins").await;
}

/// A client minted through nginx by the replica the cookie names (no round robin involved).
async fn mint_on(cluster: &TestCluster, replica: &str) -> Client {
    let (status, body) = cluster.post("/api/clients", None, Some(replica), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["replica"], replica);
    Client {
        id: body["client_id"].as_str().unwrap().to_owned(),
        token: body["token"].as_str().unwrap().to_owned(),
    }
}

/// The sockets a replica holds, from its own `/metrics`.
async fn sockets_on(cluster: &TestCluster, replica: &str) -> u64 {
    let metrics = cluster
        .http
        .get(format!("{}/metrics", cluster.replica_base(replica)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("stickyws_sockets "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stickyws_sockets in {metrics}"))
}

/// Waits (bounded) until a replica has let go of sockets the test closed.
async fn wait_for_sockets(cluster: &TestCluster, replica: &str, want: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let held = sockets_on(cluster, replica).await;
        if held == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{replica} still holds {held} sockets, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn socket_limits() -> Vec<(String, String)> {
    vec![
        ("MAX_SOCKETS_PER_CLIENT".to_owned(), "2".to_owned()),
        ("MAX_SOCKETS".to_owned(), "3".to_owned()),
    ]
}

async fn fill_directly(cluster: &TestCluster, replica: &str, held: &mut Vec<Socket>) {
    let host = host_of(&cluster.replica_base(replica));
    while sockets_on(cluster, replica).await < 3 {
        let client = cluster.mint().await;
        held.push(Socket::connect(&host, &client, None).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_beyond_the_per_client_and_per_replica_limits_are_refused() {
    let mut cluster = TestCluster::start_with(3, socket_limits());
    let host = host_of(&cluster.base());
    let alice = cluster.mint().await;
    let alice_path = format!("/ws/{}?token={}", alice.id, alice.token);
    let cookie = |replica: &str| vec![("cookie", format!("sticky={replica}"))];

    // Per client and replica: two tabs on app-1; a third is refused there, not elsewhere.
    let mut held = vec![
        cluster.connect(&alice, Some("app-1")).await,
        cluster.connect(&alice, Some("app-1")).await,
    ];
    let cases: Vec<UpgradeCase> = vec![
        (
            "a third socket of one client on one replica",
            alice_path.clone(),
            cookie("app-1"),
            429,
            Some("too_many_sockets"),
        ),
        (
            "the same client on another replica",
            alice_path.clone(),
            cookie("app-2"),
            101,
            None,
        ),
    ];
    run_upgrade_table(&host, "per client", &cases).await;

    // Per replica: a full replica refuses anyone with 503, and so does nginx once every
    // replica is full (it tried each; the last one's answer is passed on).
    for replica in REPLICAS {
        wait_for_sockets(&cluster, replica, if replica == "app-1" { 2 } else { 0 }).await;
        fill_directly(&cluster, replica, &mut held).await;
    }
    let carol = cluster.mint().await;
    let carol_path = format!("/ws/{}?token={}", carol.id, carol.token);
    for replica in REPLICAS {
        let cases: Vec<UpgradeCase> = vec![(
            "a fourth socket on a replica of three",
            carol_path.clone(),
            Vec::new(),
            503,
            Some("too_many_sockets"),
        )];
        let direct = host_of(&cluster.replica_base(replica));
        run_upgrade_table(&direct, replica, &cases).await;
    }
    // Only the first such upgrade is exact: nginx then counts each replica as failed for
    // fail_timeout (10 s) and answers its own 502 "no live upstreams" (see the report).
    let cases: Vec<UpgradeCase> = vec![(
        "a socket when every replica is full",
        carol_path.clone(),
        Vec::new(),
        503,
        Some("too_many_sockets"),
    )];
    run_upgrade_table(&host, "per replica, through nginx", &cases).await;

    drop(held);
    for replica in REPLICAS {
        wait_for_sockets(&cluster, replica, 0).await;
    }
    assert_every_replica_serves(&mut cluster, "socket limits").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_sends_an_upgrade_on_from_a_full_replica() {
    let mut cluster = TestCluster::start_with(3, socket_limits());
    let mut held = Vec::new();
    fill_directly(&cluster, "app-1", &mut held).await;
    // Six upgrades over two nginx workers: one worker takes at least three, so its round
    // robin offered app-1 at least once; the 503 moved that upgrade on, and all six land.
    for _ in 0..6 {
        let client = cluster.mint().await;
        let socket = cluster.connect(&client, None).await;
        assert_ne!(
            socket.replica, "app-1",
            "nginx moved on from the full replica"
        );
        held.push(socket);
    }
    for replica in REPLICAS {
        assert_eq!(sockets_on(&cluster, replica).await, 3, "{replica} is full");
    }
    drop(held);
    for replica in REPLICAS {
        wait_for_sockets(&cluster, replica, 0).await;
    }
    assert_every_replica_serves(&mut cluster, "a full replica").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_beyond_the_client_rate_get_429_but_the_api_key_is_not_limited() {
    let env = vec![("PUBLISH_RATE".to_owned(), "5".to_owned())];
    let mut cluster = TestCluster::start_with(3, env);
    let client = mint_on(&cluster, "app-2").await;
    let mut socket = cluster.connect(&client, Some("app-2")).await;
    let mut statuses = Vec::new();
    let started = tokio::time::Instant::now();
    for i in 0..30 {
        let (status, body) = cluster
            .call("publish", &client, Some("app-2"), &format!("burst {i}"))
            .await;
        if status != StatusCode::OK {
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")),
                "publish {i}: {body}"
            );
        }
        statuses.push(status.as_u16());
    }
    // The same client's direct and echo draw from the same bucket.
    let mut others = Vec::new();
    for action in ["direct", "echo", "direct"] {
        let (status, body) = cluster.call(action, &client, Some("app-2"), "x").await;
        others.push((status.as_u16(), body["error"]["code"].clone()));
    }
    let elapsed = started.elapsed();
    // A bucket of 2 × 5 is full at the start and refills one every 200 ms.
    let refills = (elapsed.as_millis() / 200) as usize + 1;
    let passed = statuses.iter().filter(|&&s| s == 200).count();
    assert!(
        statuses[..10].iter().all(|&s| s == 200),
        "the burst passes: {statuses:?}"
    );
    assert!(
        (10..=10 + refills).contains(&passed),
        "{passed} of 30 passed in {elapsed:?}: {statuses:?}"
    );
    let limited = others
        .iter()
        .filter(|(s, code)| *s == 429 && code == "rate_limited")
        .count();
    assert!(limited + refills >= 3, "{others:?} in {elapsed:?}");
    socket.drain(Duration::from_millis(300)).await;

    // Another client has its own bucket.
    let other = mint_on(&cluster, "app-2").await;
    assert_eq!(
        cluster.call("publish", &other, Some("app-2"), "o").await.0,
        StatusCode::OK
    );
    // The API key acts for the client whose bucket is empty, 30 times over, unlimited.
    let path = format!("/api/publish/{}", client.id);
    for i in 0..30 {
        let body = json!({ "text": format!("key {i}") }).to_string();
        let (status, answer) = cluster
            .post(&path, Some(API_KEY), Some("app-2"), &body)
            .await;
        assert_eq!(status, StatusCode::OK, "API key publish {i}: {answer}");
    }
    for i in 0..30 {
        assert_eq!(socket.next_json().await["text"], format!("key {i}"));
    }
    drop(socket);
    assert_every_replica_serves(&mut cluster, "publish rate").await;
}

/// After a table: every replica is alive and serving — its process runs and never panicked,
/// `/healthz` answers directly and through nginx with its cookie, and a publish reaches a
/// socket held on it, opened both directly and through nginx.
async fn assert_every_replica_serves(cluster: &mut TestCluster, after: &str) {
    for replica in REPLICAS {
        let context = format!("after {after}: {replica}");
        assert!(
            cluster.replica(replica).proc.is_running(),
            "{context} exited"
        );
        let log = std::fs::read_to_string(cluster.dir.path().join(format!("{replica}.log")))
            .unwrap_or_default();
        assert!(!log.contains("panicked"), "{context} panicked:\n{log}");

        let direct = cluster
            .http
            .get(format!("{}/healthz", cluster.replica_base(replica)))
            .send()
            .await
            .unwrap();
        assert_eq!(direct.status(), StatusCode::OK, "{context}");
        let via_nginx = cluster.get("/healthz", Some(replica)).await;
        assert_eq!(via_nginx.status(), StatusCode::OK, "{context}");
        let body: Value = via_nginx.json().await.unwrap();
        assert_eq!(body["replica"], replica, "{context}: cookie routing");

        // Sockets may still be closing from the table: wait for room for two more.
        let client = mint_on(cluster, replica).await;
        let host = host_of(&cluster.replica_base(replica));
        let mut direct = Socket::connect(&host, &client, None).await;
        let mut routed = cluster.connect(&client, Some(replica)).await;
        assert_eq!(
            (direct.replica.as_str(), routed.replica.as_str()),
            (replica, replica),
            "{context}"
        );
        let text = format!("alive after {after}");
        let (status, body) = cluster.call("publish", &client, Some(replica), &text).await;
        assert_eq!(
            (status, body["receivers"].as_u64()),
            (StatusCode::OK, Some(1)),
            "{context}: {body}"
        );
        for socket in [&mut direct, &mut routed] {
            let frame = socket.next_json().await;
            assert_eq!(
                (frame["via"].as_str(), frame["text"].as_str()),
                (Some("publish"), Some(text.as_str())),
                "{context}"
            );
        }
    }
}
