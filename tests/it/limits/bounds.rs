//! Bounded by construction: what an anonymous client can make a replica or Redis hold. Minting
//! per source address, connections that never finish their headers, cross-site form posts,
//! replays to sockets that do not read, and the Redis history budget.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::host_of;
use crate::support::{API_KEY, Socket, TestCluster};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `POST /api/clients` straight to `base`, with extra headers: (status, Retry-After, body).
async fn mint_at(
    cluster: &TestCluster,
    base: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Option<String>, Value) {
    let mut request = cluster.http.post(format!("{base}/api/clients"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minting_is_limited_per_source_address() {
    // 2 per second, bursts of 4.
    let mut cluster = TestCluster::start_with(1, env(&[("MINT_RATE", "2")]));
    let front = cluster.base();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(mint_at(&cluster, &front, &[]).await.0.as_u16());
    }
    assert_eq!(&statuses[..4], &[200; 4], "the burst passes: {statuses:?}");
    let (status, retry, body) = mint_at(&cluster, &front, &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(retry.as_deref(), Some("1"), "Retry-After in seconds");
    // The API key is the server-side way in, not limited.
    let key = format!("Bearer {API_KEY}");
    let (status, _, _) = mint_at(&cluster, &front, &[("authorization", &key)]).await;
    assert_eq!(status, StatusCode::OK);
    // Behind nginx every request comes from 127.0.0.1; X-Real-IP tells the clients apart, and is
    // believed from a trusted proxy (loopback by default) ...
    let replica = cluster.replica_base("app-1");
    let other = [("x-real-ip", "203.0.113.9")];
    assert_eq!(mint_at(&cluster, &replica, &other).await.0, StatusCode::OK);
    // ... and from nobody else: a replica trusting no proxy keys on the TCP peer.
    cluster
        .env
        .extra
        .push(("TRUSTED_PROXIES".to_owned(), "none".to_owned()));
    cluster.add_replica("app-2");
    let strict = cluster.replica_base("app-2");
    let mut last = StatusCode::OK;
    for i in 0..6 {
        let spoofed = format!("198.51.100.{i}");
        last = mint_at(&cluster, &strict, &[("x-real-ip", &spoofed)])
            .await
            .0;
    }
    assert_eq!(
        last,
        StatusCode::TOO_MANY_REQUESTS,
        "a fresh X-Real-IP per request must not buy a fresh bucket"
    );
}

/// Connects to `host` and sends `head`; returns how long the replica took to close the
/// connection (None: still open after `limit`), and what it answered.
async fn closed_after(
    host: &str,
    head: Vec<u8>,
    trickle: bool,
    limit: Duration,
) -> Option<(Duration, String)> {
    let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    let started = Instant::now();
    let (mut read_half, mut write_half) = tcp.into_split();
    let writer = async move {
        if trickle {
            // One byte a second, never the blank line that ends the headers.
            for byte in head {
                if write_half.write_all(&[byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        } else {
            let _ = write_half.write_all(&head).await;
        }
        std::future::pending::<()>().await;
    };
    let read = async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match read_half.read(&mut buf).await {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&got).into_owned(),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::select! {
        answer = tokio::time::timeout(limit, read) => answer.ok().map(|a| (started.elapsed(), a)),
        () = writer => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_their_headers_are_closed() {
    let cluster = TestCluster::single();
    let host = host_of(&cluster.replica_base("solo"));
    let limit = Duration::from_secs(20);
    let trickled =
        b"GET /ws/abc?token=x HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa".to_vec();
    let mut huge = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 300 * 1024));
    let (silent, trickle, big) = tokio::join!(
        closed_after(&host, Vec::new(), false, limit),
        closed_after(&host, trickled, true, limit),
        closed_after(&host, huge, false, limit),
    );
    let (silent, _) = silent.expect("a silent connection is closed");
    let (trickle, _) = trickle.expect("a trickling connection is closed");
    let (big, answer) = big.expect("a 300 KiB header is refused");
    println!(
        "closed: silent after {silent:?}, trickling after {trickle:?}, 300 KiB head after {big:?}"
    );
    for (what, took) in [("silent", silent), ("trickling", trickle)] {
        assert!(
            (Duration::from_secs(9)..Duration::from_secs(13)).contains(&took),
            "{what} connection closed after {took:?}, expected the 10 s header timeout"
        );
    }
    assert!(big < Duration::from_secs(5), "oversized head held {big:?}");
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    // The replica still serves.
    let client = cluster.mint().await;
    let (status, _) = cluster.call("echo", &client, None, "still here").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_form_posts_are_refused_and_same_origin_ones_pass() {
    let cluster = TestCluster::start(1);
    let front = cluster.base();
    let page = front.clone();
    let https_page = front.replace("http://", "https://");
    let client = cluster.mint().await;
    let echo = format!("/api/echo/{}", client.id);
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16);
    let cases: Vec<Case> = vec![
        (
            "forget, cross-site form",
            "/api/sticky/forget",
            vec![("origin", "http://evil.example")],
            403,
        ),
        (
            "forget, browser without Origin",
            "/api/sticky/forget",
            vec![("sec-fetch-site", "cross-site")],
            403,
        ),
        (
            "forget, an https page of the same host",
            "/api/sticky/forget",
            vec![("origin", &https_page)],
            403,
        ),
        (
            "forget, the page itself",
            "/api/sticky/forget",
            vec![("origin", &page), ("sec-fetch-site", "same-origin")],
            200,
        ),
        ("forget, a script", "/api/sticky/forget", Vec::new(), 200),
        (
            "mint, cross-site",
            "/api/clients",
            vec![("origin", "http://evil.example")],
            403,
        ),
        (
            "echo, cross-site",
            &echo,
            vec![("origin", "http://evil.example")],
            403,
        ),
        ("echo, the page itself", &echo, vec![("origin", &page)], 200),
    ];
    for (what, path, headers, want) in cases {
        let mut request = cluster
            .http
            .post(format!("{front}{path}"))
            .header("authorization", format!("Bearer {}", client.token))
            .header("content-type", "application/json")
            .body(json!({"text": "x"}).to_string());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, want, "{what}: {body}");
        if want == 403 {
            assert_eq!(body["error"]["code"], "forbidden_origin", "{what}");
        }
    }
}

/// Fills `client`'s history with `n` messages of `bytes` bytes each, with the API key.
async fn fill_history(cluster: &TestCluster, client: &str, n: usize, bytes: usize) {
    let text = "x".repeat(bytes);
    for _ in 0..n {
        let (status, body) = cluster
            .post(
                &format!("/api/publish/{client}"),
                Some(API_KEY),
                None,
                &json!({ "text": text }).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// Opens a socket to `host` with a tiny receive buffer that resumes from the start of history
/// and never reads: the upgrade request is written by hand, and nothing is read back.
async fn stuck_socket(host: &str, client: &crate::support::Client) -> tokio::net::TcpStream {
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(1024).unwrap();
    let mut stream = tcp.connect(host.parse().unwrap()).await.unwrap();
    let request = format!(
        "GET /ws/{}?token={}&last_id=0-0 HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        client.id, client.token
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

async fn sockets_on(cluster: &TestCluster, name: &str) -> u64 {
    let metrics = cluster
        .http
        .get(format!("{}/metrics", cluster.replica_base(name)))
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
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_past_its_byte_budget_is_cut_and_said() {
    let cluster = TestCluster::start_with(
        1,
        env(&[("MAX_REPLAY_BYTES", "262144"), ("REPLAY_TIMEOUT_SECS", "2")]),
    );
    let client = cluster.mint().await;
    fill_history(&cluster, &client.id, 1000, 4000).await;
    let host = host_of(&cluster.replica_base("app-1"));

    // A client that reads gets what fits, then is told the replay was cut.
    let mut reader = Socket::connect_query(&host, &client, None, "&last_id=0-0").await;
    let frames = reader.drain(Duration::from_secs(1)).await;
    let replayed = frames.iter().filter(|f| f["replayed"] == true).count();
    let cut = frames.last().unwrap();
    assert_eq!(
        (cut["type"].as_str(), cut["stream"].as_str()),
        (Some("history_lost"), Some("client")),
        "the client is told its replay was cut"
    );
    println!("a reading socket was replayed {replayed} of 1000 messages, then history_lost");
    assert!(
        (50..70).contains(&replayed),
        "256 KiB of 4 KB messages: {replayed}"
    );
    drop(reader);
}

// The cap bounds what leaves Redis too (the history script stops at MAX_REPLAY_BYTES): before
// it did, the history was read whole (up to HISTORY_LEN entries) and this measured +49 MB held
// for 16 sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_to_sockets_that_do_not_read_are_bounded() {
    const SOCKETS: usize = 16;
    let mut cluster = TestCluster::start_with(
        1,
        env(&[("MAX_REPLAY_BYTES", "262144"), ("REPLAY_TIMEOUT_SECS", "2")]),
    );
    let client = cluster.mint().await;
    fill_history(&cluster, &client.id, 1000, 4000).await;
    let host = host_of(&cluster.replica_base("app-1"));

    // A client that reads gets what fits, then is told the replay was cut.
    let mut reader = Socket::connect_query(&host, &client, None, "&last_id=0-0").await;
    let frames = reader.drain(Duration::from_secs(1)).await;
    let replayed = frames.iter().filter(|f| f["replayed"] == true).count();
    let cut = frames.last().unwrap();
    assert_eq!(
        (cut["type"].as_str(), cut["stream"].as_str()),
        (Some("history_lost"), Some("client")),
        "the client is told its replay was cut"
    );
    println!("a reading socket was replayed {replayed} of 1000 messages, then history_lost");
    assert!(
        (50..70).contains(&replayed),
        "256 KiB of 4 KB messages: {replayed}"
    );
    drop(reader);

    let before = cluster.replica_rss("app-1");
    let started = Instant::now();
    let mut stuck = Vec::new();
    for _ in 0..SOCKETS {
        stuck.push(stuck_socket(&host, &client).await);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while sockets_on(&cluster, "app-1").await < SOCKETS as u64 {
        assert!(
            Instant::now() < deadline,
            "the stuck sockets never registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What the replica holds once every greeting has gone as far as it can: sampled for 5 s,
    // the last sample counts (the peak includes history read from Redis and freed at once).
    let mut peak = before;
    let mut held = before;
    while started.elapsed() < Duration::from_secs(6) {
        held = cluster.replica_rss("app-1");
        peak = peak.max(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mb = |bytes: u64| bytes / (1024 * 1024);
    let grew = mb(held.saturating_sub(before));
    println!(
        "{SOCKETS} stuck sockets resuming from 0-0 over 1000 x 4 KB: RSS {} MB, peak {} MB, \
         held {} MB (+{grew} MB)",
        mb(before),
        mb(peak),
        mb(held)
    );
    // Unbounded, each socket holds its whole replay (4 MB of frames): +64 MB and more.
    assert!(grew < 40, "RSS grew {grew} MB for {SOCKETS} stuck sockets");
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_interrupts_a_stuck_replay() {
    let mut cluster = TestCluster::start_with(1, env(&[("REPLAY_TIMEOUT_SECS", "60")]));
    let client = cluster.mint().await;
    fill_history(&cluster, &client.id, 300, 4000).await;
    let host = host_of(&cluster.replica_base("app-1"));
    let mut stuck = Vec::new();
    for _ in 0..4 {
        stuck.push(stuck_socket(&host, &client).await);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while sockets_on(&cluster, "app-1").await < 4 {
        assert!(
            Instant::now() < deadline,
            "the stuck sockets never registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let status = cluster
        .replica("app-1")
        .proc
        .signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15));
    let took = started.elapsed();
    println!("SIGTERM with 4 stuck replays: exited after {took:?}");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    // DRAIN_TIMEOUT is 10 s: a replay that ignored shutdown would hold the exit that long.
    assert!(took < Duration::from_secs(6), "exit took {took:?}");
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_over_the_history_budget_is_history_full_and_the_replica_serves_on() {
    let cluster = TestCluster::start_with_redis(1, Vec::new(), &["--maxmemory", "3mb"]);
    let client = cluster.mint().await;
    let text = "y".repeat(4000);
    let mut refused = None;
    for sent in 0..5000 {
        let response = cluster
            .http
            .post(format!("{}/api/broadcast", cluster.base()))
            .header("authorization", format!("Bearer {API_KEY}"))
            .header("content-type", "application/json")
            .body(json!({ "text": text }).to_string())
            .send()
            .await
            .unwrap();
        if response.status() != StatusCode::OK {
            let status = response.status();
            let retry = response.headers().get("retry-after").cloned();
            let body: Value = response.json().await.unwrap();
            refused = Some((sent, status, retry, body));
            break;
        }
    }
    let (sent, status, retry, body) = refused.expect("a 3 MB budget filled by 20 MB of messages");
    println!("history_full after {sent} broadcasts of 4 KB into a 3 MB Redis: {body}");
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["error"]["code"], "history_full");
    assert!(retry.is_some(), "Retry-After");
    // Only what needs room fails: the link is up and the rest serves.
    let ready = cluster.get("/readyz", None).await;
    assert_eq!(ready.status(), StatusCode::OK);
    let (status, body) = cluster.call("echo", &client, None, "alive").await;
    assert_eq!(
        (status, body["text"].as_str()),
        (StatusCode::OK, Some("alive"))
    );
    let mut socket = cluster.connect(&client, None).await;
    socket.send_text("ws echo").await;
    assert_eq!(socket.next_json().await["text"], "ws echo");
}
