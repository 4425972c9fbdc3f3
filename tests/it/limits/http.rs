//! HTTP bad input through nginx in front of three replicas, table by table: client ids, tokens,
//! content types, bodies and sticky cookies, each answered with the exact status and error (or
//! nginx's own refusal where it answers first). `api.rs` has the first such table against one
//! replica without nginx.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    MAX_BODY, MAX_TEXT, NGINX_MAX_BODY, assert_every_replica_serves, host_of, text_frame_json,
};
use crate::support::TestCluster;

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
    crate::support::answer(request.send().await.unwrap()).await
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
async fn bad_client_ids_get_400_from_the_replica_or_from_nginx_itself() {
    let mut cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let tok = client.token.as_str();

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
    assert_every_replica_serves(&mut cluster, "http bad input (client ids)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_bad_tokens_get_the_exact_status_and_error() {
    let mut cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let other = cluster.mint().await;
    let tok = client.token.as_str();
    let echo = format!("/api/echo/{}", client.id);
    let publish = format!("/api/publish/{}", client.id);
    let direct = format!("/api/direct/{}", client.id);

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
    assert_every_replica_serves(&mut cluster, "http bad input (tokens)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_types_other_than_json_get_415() {
    let mut cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let tok = client.token.as_str();
    let echo = format!("/api/echo/{}", client.id);
    let publish = format!("/api/publish/{}", client.id);

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
    assert_every_replica_serves(&mut cluster, "http bad input (content types)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_oversized_bodies_get_the_exact_status_and_error() {
    let mut cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let tok = client.token.as_str();
    let echo = format!("/api/echo/{}", client.id);
    let publish = format!("/api/publish/{}", client.id);
    let direct = format!("/api/direct/{}", client.id);

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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookies_naming_no_known_replica_are_spread_round_robin() {
    let mut cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let tok = client.token.as_str();
    let echo = format!("/api/echo/{}", client.id);

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
