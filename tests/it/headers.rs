//! What browsers send, through the real nginx: long cookies beside the sticky one, long
//! User-Agents, many headers, long URLs. The page, the API and the WebSocket upgrade still reach
//! the replica the cookie names and work; what is past nginx's header limits gets nginx's own
//! 400 or 414 at once, never a hang or a 502. nginx.conf sizes its header buffers for this.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

use crate::support::ws::refused_status;
use crate::support::{Client, Socket, TestCluster};

const REPLICAS: [&str; 3] = ["app-1", "app-2", "app-3"];

/// Extra request headers, as (name, value).
type Headers = Vec<(String, String)>;

/// `count` cookies of `each` bytes (name and value), as a browser joins them.
fn cookies(count: usize, each: usize, letter: char) -> String {
    (0..count)
        .map(|i| {
            let name = format!("{letter}{i}");
            let value: String = std::iter::repeat_n(letter, each - name.len() - 1).collect();
            format!("{name}={value}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A Cookie header with the sticky cookie for `replica` among `others`, in the middle, where a
/// browser that set it after some cookies and before others puts it.
fn cookie_header(others: &str, replica: &str) -> String {
    match others.split_once("; ") {
        Some((first, rest)) => format!("{first}; sticky={replica}; {rest}"),
        None => format!("{others}; sticky={replica}"),
    }
}

/// A long User-Agent and `count` more headers of `each` bytes, as extensions and proxies add.
fn browser_headers(count: usize, each: usize) -> Headers {
    let mut headers = vec![(
        "user-agent".to_owned(),
        format!(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/131.0.0.0 Safari/537.36 {}",
            "Extension/1.0 ".repeat(100)
        ),
    )];
    for i in 0..count {
        let name = format!("x-extension-{i}");
        let value: String = std::iter::repeat_n('v', each - name.len() - 2).collect();
        headers.push((name, value));
    }
    headers
}

fn header_bytes(headers: &Headers) -> usize {
    headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum()
}

/// `GET /` with these headers: the status, and the replica that rendered the page.
async fn page(cluster: &TestCluster, query: &str, headers: &Headers) -> (StatusCode, String) {
    let mut request = cluster.http.get(format!("{}/{query}", cluster.base()));
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let html = response.text().await.unwrap();
    let renderer = html
        .split_once("data-replica=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or_else(String::new, |(name, _)| name.to_owned());
    (status, renderer)
}

/// `POST /api/echo/{client}` with these headers: the status and the JSON answer.
async fn echo(
    cluster: &TestCluster,
    client: &Client,
    query: &str,
    headers: &Headers,
) -> (StatusCode, Value) {
    let mut request = cluster
        .http
        .post(format!("{}/api/echo/{}{query}", cluster.base(), client.id))
        .header("authorization", format!("Bearer {}", client.token))
        .header("content-type", "application/json")
        .body(r#"{"text":"big headers"}"#);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    crate::support::answer(request.send().await.unwrap()).await
}

fn ws_path(client: &Client, query: &str) -> String {
    format!("/ws/{}?token={}{query}", client.id, client.token)
}

/// A WebSocket upgrade with these headers, through nginx, greeted by its replica.
async fn socket(cluster: &TestCluster, client: &Client, query: &str, headers: &Headers) -> Socket {
    let host = cluster.base().trim_start_matches("http://").to_owned();
    let mut request = format!("ws://{host}{}", ws_path(client, query))
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    Socket::connect_request(request, client).await
}

/// For every replica: the page, the echo API and a socket sent `headers` and `query` plus the
/// sticky cookie among `others` are answered by that replica, and the socket echoes.
async fn every_path_reaches_the_cookies_replica(
    cluster: &TestCluster,
    what: &str,
    others: &str,
    query: &str,
    headers: &Headers,
) {
    let client = cluster.mint().await;
    for replica in REPLICAS {
        let mut sent = headers.clone();
        sent.push(("cookie".to_owned(), cookie_header(others, replica)));
        let (status, renderer) = page(cluster, query, &sent).await;
        assert_eq!(status, StatusCode::OK, "{what}: page");
        assert_eq!(renderer, replica, "{what}: page rendered elsewhere");
        let (status, body) = echo(cluster, &client, query, &sent).await;
        assert_eq!(status, StatusCode::OK, "{what}: echo {body}");
        assert_eq!(body["replica"], replica, "{what}: echo answered elsewhere");
        assert_eq!(
            body["sticky"], true,
            "{what}: the replica saw no sticky cookie"
        );
        let mut socket = socket(cluster, &client, query, &sent).await;
        assert_eq!(socket.replica, replica, "{what}: socket held elsewhere");
        socket.send_text(&format!("{what} via {replica}")).await;
        let frame = socket.next_json().await;
        assert_eq!(frame["via"], "ws", "{what}: {frame}");
        assert_eq!(frame["replica"], replica);
        assert_eq!(frame["text"], format!("{what} via {replica}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_cookies_beside_the_sticky_one_reach_its_replica_on_every_path() {
    let cluster = TestCluster::start(3);
    // A browser keeps cookies of up to 4 KB each (name and value), and sends every cookie of the
    // site in one header: one at the limit, then several that together make 8 KB and more.
    let one = cookies(1, 4096, 'a');
    let several = cookies(5, 1700, 'b');
    assert!(several.len() > 8 * 1024, "{}", several.len());
    every_path_reaches_the_cookies_replica(&cluster, "one 4 KB cookie", &one, "", &Vec::new())
        .await;
    every_path_reaches_the_cookies_replica(
        &cluster,
        "cookies of 8.3 KB",
        &several,
        "",
        &Vec::new(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_headers_and_long_urls_reach_the_cookies_replica_on_every_path() {
    let cluster = TestCluster::start(3);
    // A 1.5 KB User-Agent and 40 headers of 250 bytes (11.5 KB of headers, far past the 1 KB
    // that nginx reads a request into first), and a 6 KB query string.
    let headers = browser_headers(40, 250);
    assert!(header_bytes(&headers) > 11 * 1024);
    let long_query = format!("&utm_content={}", "q".repeat(6 * 1024));
    let others = cookies(3, 300, 'c');
    every_path_reaches_the_cookies_replica(&cluster, "many headers", &others, "", &headers).await;
    // The page takes its query after `?`; the socket and the API after their own parameters.
    let page_query = format!("?{}", &long_query[1..]);
    let client = cluster.mint().await;
    for replica in REPLICAS {
        let sent = vec![("cookie".to_owned(), cookie_header(&others, replica))];
        let (status, renderer) = page(&cluster, &page_query, &sent).await;
        assert_eq!((status, renderer.as_str()), (StatusCode::OK, replica));
        let (status, body) = echo(&cluster, &client, &page_query, &sent).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["replica"], replica);
        let mut socket = socket(&cluster, &client, &long_query, &sent).await;
        assert_eq!(socket.replica, replica);
        socket.send_text("long url").await;
        assert_eq!(socket.next_json().await["text"], "long url");
    }
}

/// The status nginx answers a raw request with, and how long it took; a request that gets no
/// answer within 10 s is a hang and fails the test.
async fn answer_to(
    cluster: &TestCluster,
    what: &str,
    path: &str,
    headers: &Headers,
) -> (u16, Duration) {
    let started = Instant::now();
    let host = cluster.base().trim_start_matches("http://").to_owned();
    let status = if path.starts_with("/ws/") {
        let borrowed: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        tokio::time::timeout(
            Duration::from_secs(10),
            refused_status(&host, path, &borrowed),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer to the upgrade in 10 s"))
    } else {
        let mut request = cluster.http.get(format!("{}{path}", cluster.base()));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        tokio::time::timeout(Duration::from_secs(10), request.send())
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer in 10 s"))
            .unwrap_or_else(|err| panic!("{what}: {err}"))
            .status()
            .as_u16()
    };
    (status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_header_limits_get_a_clear_4xx_at_once() {
    let cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let cookie = |others: &str| vec![("cookie".to_owned(), cookie_header(others, "app-2"))];
    // One header line longer than one of nginx's large header buffers (16 KB): 400. A request
    // line that long: 414. Every line short enough but more than the buffers hold in all: 400.
    let cases: Vec<(&str, String, Headers, u16)> = vec![
        (
            "page, 20 KB of cookies",
            "/".to_owned(),
            cookie(&cookies(5, 4096, 'd')),
            400,
        ),
        (
            "API, 20 KB of cookies",
            format!("/api/echo/{}", client.id),
            cookie(&cookies(5, 4096, 'd')),
            400,
        ),
        (
            "upgrade, 20 KB of cookies",
            ws_path(&client, ""),
            cookie(&cookies(5, 4096, 'd')),
            400,
        ),
        (
            "page, 20 KB URL",
            format!("/?q={}", "u".repeat(20 * 1024)),
            Vec::new(),
            414,
        ),
        (
            "upgrade, 20 KB URL",
            ws_path(&client, &format!("&pad={}", "u".repeat(20 * 1024))),
            Vec::new(),
            414,
        ),
        (
            "page, 5 headers of 12 KB",
            "/".to_owned(),
            browser_headers(5, 12 * 1024),
            400,
        ),
        (
            "upgrade, 5 headers of 12 KB",
            ws_path(&client, ""),
            browser_headers(5, 12 * 1024),
            400,
        ),
    ];
    for (what, path, headers, expected) in cases {
        let (status, took) = answer_to(&cluster, what, &path, &headers).await;
        assert_eq!(status, expected, "{what}");
        assert!(
            took < Duration::from_secs(3),
            "{what}: answered after {took:?}"
        );
    }
    // Nothing of it reached a replica or cost nginx its upstreams: everything still works.
    every_path_reaches_the_cookies_replica(&cluster, "after the refusals", "a=1", "", &Vec::new())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_passes_the_replicas_answer_through_nginx() {
    // nginx reads an upstream's response head into its small upgrade buffer: a refusal's head
    // and JSON body must still come through whole, with the replica's status, not a 502.
    let cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let host = cluster.base().trim_start_matches("http://").to_owned();
    for replica in REPLICAS {
        let sticky = format!("sticky={replica}");
        let bad_token = format!("/ws/{}?token=not-{}", client.id, client.token);
        let status = refused_status(&host, &bad_token, &[("cookie", sticky.as_str())]).await;
        assert_eq!(status, 401, "bad token via {replica}");
        let foreign = refused_status(
            &host,
            &ws_path(&client, ""),
            &[
                ("cookie", sticky.as_str()),
                ("origin", "http://evil.example"),
            ],
        )
        .await;
        assert_eq!(foreign, 403, "foreign origin via {replica}");
    }
    // The body too: a plain GET of the same refused path names the error.
    let response = cluster
        .get(&format!("/ws/{}?token=bad", client.id), Some("app-1"))
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_client_error(), "{status}");
    assert!(body["error"]["code"].is_string(), "{body}");
}
