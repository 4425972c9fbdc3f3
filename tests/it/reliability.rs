//! Faults against the real topology: a replica killed or drained, Redis killed and restarted,
//! a client that stops reading. Nothing is lost inside the promised window, and every fault is
//! told, never silent.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{API_KEY, Client, Socket, TestCluster, sample};

/// The query that resumes after everything `frames` (and the welcome) showed.
fn resume_query(welcome: &Value, frames: &[Value]) -> String {
    let newest = |via: &str, key: &str| {
        frames
            .iter()
            .rev()
            .filter(|f| f["via"] == via)
            .find_map(|f| f["id"].as_str())
            .or_else(|| welcome[key].as_str())
            .unwrap()
            .to_owned()
    };
    format!(
        "&last_id={}&last_broadcast_id={}",
        newest("publish", "last_id"),
        newest("broadcast", "last_broadcast_id")
    )
}

async fn publish(cluster: &TestCluster, client: &Client, text: &str) -> Value {
    let (status, body) = cluster.call("publish", client, None, text).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn texts(socket: &mut Socket, n: usize) -> Vec<Value> {
    let mut frames = Vec::new();
    for _ in 0..n {
        frames.push(socket.next_json().await);
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_a_client_is_away_arrive_once_in_order_after_it_reconnects() {
    let mut cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let mut socket = cluster.connect(&client, Some("app-3")).await;
    assert_eq!(socket.replica, "app-3");
    publish(&cluster, &client, "before").await;
    let seen = texts(&mut socket, 1).await;
    let query = resume_query(&socket.welcome, &seen);

    cluster.replica("app-3").proc.kill();
    assert!(
        socket
            .next_json_within(Duration::from_secs(5))
            .await
            .is_none(),
        "socket died with app-3"
    );
    for i in 0..50 {
        let body = publish(&cluster, &client, &format!("away {i}")).await;
        assert_eq!(
            body["receivers"], 0,
            "nobody holds the client while it is away"
        );
    }

    // Back through nginx with the dead replica's cookie: a backup takes the socket.
    let mut socket = cluster.connect_query(&client, Some("app-3"), &query).await;
    assert_ne!(socket.replica, "app-3");
    let replayed = texts(&mut socket, 50).await;
    let got: Vec<&str> = replayed
        .iter()
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (0..50).map(|i| format!("away {i}")).collect();
    assert_eq!(got, want, "all 50, in order");
    assert!(
        replayed
            .iter()
            .all(|f| f["replayed"] == true && f["via"] == "publish")
    );
    assert!(
        replayed
            .iter()
            .all(|f| f["replica"] == socket.replica.as_str())
    );

    publish(&cluster, &client, "after").await;
    // A marker behind it: one socket's frames keep their order, so a late duplicate of anything
    // replayed or of "after" would arrive before the marker.
    publish(&cluster, &client, "marker").await;
    let next = socket.next_json().await;
    assert_eq!(
        (next["text"].as_str(), next.get("replayed")),
        (Some("after"), None)
    );
    assert_eq!(socket.next_json().await["text"], "marker", "nothing twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_missed_while_away_are_replayed_and_interleaved_in_order() {
    let cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let socket = cluster.connect(&client, Some("app-1")).await;
    let query = resume_query(&socket.welcome, &[]);
    drop(socket);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let broadcast = |text: &str| json!({"text": text}).to_string();
    for i in 0..3 {
        publish(&cluster, &client, &format!("own {i}")).await;
        let (status, _) = cluster
            .post(
                "/api/broadcast",
                Some(API_KEY),
                None,
                &broadcast(&format!("all {i}")),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let mut socket = cluster.connect_query(&client, Some("app-2"), &query).await;
    let frames = texts(&mut socket, 6).await;
    let got: Vec<&str> = frames.iter().map(|f| f["text"].as_str().unwrap()).collect();
    assert_eq!(got, ["own 0", "all 0", "own 1", "all 1", "own 2", "all 2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_behind_the_recovery_window_is_told_history_was_lost() {
    let extra = vec![("HISTORY_LEN".to_owned(), "10".to_owned())];
    let cluster = TestCluster::start_with(3, extra);
    let client = cluster.mint().await;
    let mut socket = cluster.connect(&client, None).await;
    publish(&cluster, &client, "seen").await;
    let seen = texts(&mut socket, 1).await;
    let query = resume_query(&socket.welcome, &seen);
    drop(socket);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..25 {
        publish(&cluster, &client, &format!("m {i}")).await;
    }
    let mut socket = cluster.connect_query(&client, None, &query).await;
    let lost = socket.next_json().await;
    assert_eq!(
        (lost["type"].as_str(), lost["stream"].as_str()),
        (Some("history_lost"), Some("client")),
        "{lost}"
    );
    let kept = texts(&mut socket, 10).await;
    let got: Vec<&str> = kept.iter().map(|f| f["text"].as_str().unwrap()).collect();
    let want: Vec<String> = (15..25).map(|i| format!("m {i}")).collect();
    assert_eq!(got, want, "the 10 the window kept, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replica_sends_its_clients_elsewhere_and_exits_cleanly() {
    let mut cluster = TestCluster::start(3);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let client = cluster.mint().await;
        let socket = cluster.connect(&client, Some("app-2")).await;
        assert_eq!(socket.replica, "app-2");
        clients.push((client, socket));
    }
    let direct = cluster.replica_base("app-2");
    let started = Instant::now();
    let pid = cluster.replica("app-2").proc.pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();

    // At once: not ready. The signal reaches the replica's runtime asynchronously, so "at once"
    // means well inside the one-second grace in which the replica still answers.
    let mut statuses = Vec::new();
    while started.elapsed() < Duration::from_millis(500) {
        let ready = cluster.http.get(format!("{direct}/readyz")).send().await;
        let status = ready.map(|r| r.status()).ok();
        statuses.push(status);
        if status == Some(StatusCode::SERVICE_UNAVAILABLE) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        statuses.last(),
        Some(&Some(StatusCode::SERVICE_UNAVAILABLE)),
        "readiness fails within 500 ms of SIGTERM: {statuses:?}"
    );
    // Every socket is told to reconnect (1012).
    for (_, socket) in &mut clients {
        assert_eq!(
            socket.close_code(Duration::from_secs(5)).await,
            Some(CloseCode::Restart)
        );
    }
    // Messages published while the clients are between sockets are not lost.
    let queries: Vec<String> = clients
        .iter()
        .map(|(_, s)| resume_query(&s.welcome, &[]))
        .collect();
    for (client, _) in &clients {
        publish(&cluster, client, "during the move").await;
    }
    for ((client, _), query) in clients.iter().zip(&queries) {
        let mut socket = cluster.connect_query(client, Some("app-2"), query).await;
        assert_ne!(
            socket.replica, "app-2",
            "a draining replica takes no new sockets"
        );
        let frame = socket.next_json().await;
        assert_eq!(frame["text"], "during the move");
        // Nothing twice: a marker published now arrives next, behind any late duplicate.
        publish(&cluster, client, "marker").await;
        assert_eq!(socket.next_json().await["text"], "marker");
    }
    let status = cluster
        .replica("app-2")
        .proc
        .signal_and_wait(Signal::SIGTERM, Duration::from_secs(12));
    let took = started.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit 0 within DRAIN_TIMEOUT: {status:?}"
    );
    assert!(took < Duration::from_secs(10), "drained in {took:?}");
    eprintln!("drain: exited after {took:?}");
    let records = cluster.records();
    assert!(records.contains("| app-2 | stop "), "{records}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_ride_out_a_redis_outage_and_resume_without_a_restart() {
    let mut cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let mut socket = cluster.connect(&client, Some("app-1")).await;
    cluster.kill_redis();
    let lost_at = Instant::now();

    // Not ready anywhere, but alive, with their sockets.
    for replica in ["app-1", "app-2", "app-3"] {
        let base = cluster.replica_base(replica);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = cluster
                .http
                .get(format!("{base}/readyz"))
                .send()
                .await
                .unwrap()
                .status();
            if status == StatusCode::SERVICE_UNAVAILABLE {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{replica} still ready without Redis"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let asked = Instant::now();
    let (status, body) = cluster.call("publish", &client, None, "nowhere").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // The first publish on the connection Redis dropped may not know whether it went out.
    let code = body["error"]["code"].as_str().unwrap_or_default();
    assert!(
        ["broker_unavailable", "outcome_unknown"].contains(&code),
        "{body}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "an answer, not a hang: {:?}",
        asked.elapsed()
    );
    socket.send_text("still here").await;
    assert_eq!(
        socket.next_json().await["text"],
        "still here",
        "sockets stay up"
    );
    let metrics = cluster.metrics(Some("app-1")).await;
    assert!(metrics.contains("stickyws_broker_up 0\n"), "{metrics}");

    // The state lab: the page still renders, promptly, without the shared count; state kept
    // in Redis is unavailable (503), state kept in the replica is not.
    let asked = Instant::now();
    let page = cluster.get("/", Some("app-1")).await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("data-visits-shared=\"\""),
        "no shared count shown"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    let notes = |store: &str| format!("/api/notes/{}/{store}", client.id);
    let body = r#"{"text": "n"}"#;
    let (status, answer) = cluster
        .post(&notes("shared"), Some(&client.token), Some("app-1"), body)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    let (status, answer) = cluster
        .post(&notes("local"), Some(&client.token), Some("app-1"), body)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // Back on the same port: resubscribed, deliveries resume on the same socket — or, when a
    // publish reached the client's new (empty-Redis) history before the replica's gap fill
    // read it, the socket is closed with 1012 to resume from its cursor (see
    // docs/RELIABILITY.md, "A lost subscription"). That happens either before the replica is
    // subscribed again (the publish finds no receiver) or after it (the fill, put off until
    // both of the replica's connections answer, finds the message in another epoch).
    cluster.restart_redis();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut resumed = false;
    for attempt in 0.. {
        let text = format!("back {attempt}");
        let (status, body) = cluster.call("publish", &client, None, &text).await;
        let receivers = Some(&body["receivers"]).filter(|_| status == StatusCode::OK);
        match receivers.and_then(Value::as_u64) {
            Some(1) => match socket.next_json_or_close(Duration::from_secs(5)).await {
                Ok(frame) => {
                    assert_eq!(frame["text"], text.as_str(), "{frame}");
                    break;
                }
                Err(Some(1012)) if !resumed => eprintln!("{text:?} delivered, then 1012"),
                Err(code) => panic!("after {text:?} was delivered: closed {code:?}"),
            },
            Some(0) if !resumed => {
                let code = socket.close_code(Duration::from_secs(5)).await;
                assert_eq!(code.map(u16::from), Some(1012), "{body}");
                eprintln!("{text:?} found no receiver, then 1012");
            }
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "deliveries did not resume: {status} {body}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        socket = cluster.connect(&client, Some("app-1")).await;
        resumed = true;
    }
    let recovered = lost_at.elapsed();
    eprintln!(
        "redis outage: deliveries resumed {recovered:?} after the kill (restart included; \
         closed with 1012 and resumed: {resumed})"
    );
    let metrics = cluster.metrics(Some("app-1")).await;
    assert!(metrics.contains("stickyws_broker_up 1\n"), "{metrics}");
    assert!(
        metrics.contains("stickyws_broker_reconnects_total 1\n"),
        "{metrics}"
    );
    let records = cluster.records();
    assert!(records.contains("| app-1 | broker-lost "), "{records}");
    assert!(records.contains("redis re-subscribed"), "{records}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_and_slows_nobody() {
    const MESSAGES: usize = 20_000;
    let mut cluster = TestCluster::start(1);
    let slow = cluster.mint().await;
    let fast = cluster.mint().await;
    let slow_socket = cluster.connect(&slow, None).await;
    let fast_socket = cluster.connect(&fast, None).await;
    let rss_before = cluster.replica_rss("app-1");

    // The fast client reads everything, as it comes, on its own task, and says how far it got.
    // No deadline on the whole stream, which a busy machine stretches: the waits below are on
    // progress (30 s without any fails the test).
    let (progress, mut seen) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut socket = fast_socket;
        let mut count = 0usize;
        while count < MESSAGES {
            match socket.ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    let text = frame["text"].as_str().unwrap();
                    assert!(
                        text.starts_with(&format!("n{count} ")),
                        "in order, none missing"
                    );
                    count += 1;
                    progress.send_replace(count);
                }
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                    panic!("the reading client was closed after {count}: {frame:?}")
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        count
    });

    // Publish straight into the broker, both clients per message, in pipelined batches; 1 KiB
    // messages, so the 20 MB stream overflows what the kernel buffers for the idle reader (its
    // receive window stays at its initial size when it never reads).
    // The publisher never runs more than two batches (200 messages) ahead of what the reading
    // client has read, less than its queue holds (SOCKET_QUEUE, 256): however the machine
    // schedules the test's reader, its queue cannot fill, so it is never a slow consumer. The
    // system as a whole is not overloaded; one client is.
    let padding = "x".repeat(1000);
    let url = cluster.redis.as_ref().unwrap().url();
    let redis_client = redis::Client::open(url).unwrap();
    let mut conn = redis_client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let started = Instant::now();
    let mut peak_rss = rss_before;
    const CHUNK: usize = 100;
    // Once the replica has given up on the slow client, the client wakes up and reads: it must
    // find its backlog and then close code 1013 (the replica waits 10 s for it to read).
    let mut woken: Option<tokio::task::JoinHandle<Option<CloseCode>>> = None;
    let mut slow_socket = Some(slow_socket);
    for chunk in 0..MESSAGES.div_ceil(CHUNK) {
        // At most one batch unread before the next one goes out.
        let sent = chunk * CHUNK;
        let caught_up = tokio::time::timeout(
            Duration::from_secs(30),
            seen.wait_for(|&read| read + CHUNK >= sent),
        )
        .await;
        assert!(
            caught_up.is_ok_and(|read| read.is_ok()),
            "the reader stalled at {} of {sent}",
            *seen.borrow()
        );
        let mut pipe = redis::pipe();
        for i in sent..MESSAGES.min(sent + CHUNK) {
            let payload =
                json!({"via": "publish", "from": "test", "text": format!("n{i} {padding}")})
                    .to_string();
            for client in [&slow, &fast] {
                pipe.cmd("PUBLISH")
                    .arg(format!("stickyws:client:{}", client.id))
                    .arg(&payload)
                    .ignore();
            }
        }
        pipe.query_async::<()>(&mut conn).await.unwrap();
        peak_rss = peak_rss.max(cluster.replica_rss("app-1"));
        if woken.is_none()
            && chunk % 16 == 0
            && cluster
                .metrics(None)
                .await
                .contains("stickyws_slow_consumer_disconnects_total 1\n")
            && let Some(mut socket) = slow_socket.take()
        {
            woken = Some(tokio::spawn(async move {
                socket.close_code(Duration::from_secs(30)).await
            }));
        }
    }
    let received = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(received, MESSAGES, "the reading client got every message");
    eprintln!(
        "slow consumer: {MESSAGES} messages to the fast client in {took:?}; replica RSS {} KiB before, peak {} KiB",
        rss_before / 1024,
        peak_rss / 1024
    );
    // Each client's queue holds at most SOCKET_QUEUE (256) frames of ~1 KiB; the rest of the
    // 20 MB streams through. 6 MiB covers the buffers (Redis, tungstenite, the allocator's
    // arenas); a queue 64 times longer would hold 18 MiB for the slow client alone.
    let queues = 2 * 256 * 1100;
    assert!(
        peak_rss < rss_before + queues + 6 * 1024 * 1024,
        "RSS grew from {rss_before} to {peak_rss}"
    );

    // The slow one was closed with 1013 once its queue filled.
    let woken = woken.expect("the slow client was never disconnected");
    let code = tokio::time::timeout(Duration::from_secs(40), woken)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, Some(CloseCode::Again));
    let metrics = cluster.metrics(None).await;
    assert!(
        metrics.contains("stickyws_slow_consumer_disconnects_total 1\n"),
        "{metrics}"
    );
}

/// A history id (`<ms>-<seq>`) as a pair that orders like the id.
fn id_of(frame: &Value) -> (u64, u64) {
    let id = frame["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id: {frame}"));
    let (ms, seq) = id.split_once('-').unwrap();
    (ms.parse().unwrap(), seq.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_a_client_reconnects_arrive_exactly_once_in_order() {
    // A resuming socket subscribes before it reads history, so whatever is published in
    // between is both replayed and queued live: only the session's filter keeps it from
    // arriving twice. Publishing without pause while the client reconnects, over and over,
    // puts messages into that window nearly every time (it is a broker round trip wide).
    const RECONNECTS: usize = 16;
    let cluster = std::sync::Arc::new(TestCluster::start(3));
    let client = cluster.mint().await;
    // The client's first socket gives it its cursors; every later one resumes from them.
    let mut query = resume_query(&cluster.connect(&client, None).await.welcome, &[]);
    let stop = tokio_util::sync::CancellationToken::new();

    // Four publishers, each one message at a time (so each one's order is defined): through
    // nginx round robin, and straight to each replica. The API key is not rate limited.
    let routes = [None, Some("app-1"), Some("app-2"), Some("app-3")];
    let mut publishers = Vec::new();
    for (k, route) in routes.into_iter().enumerate() {
        let (cluster, client, stop) = (cluster.clone(), client.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            let path = format!("/api/publish/{}", client.id);
            let mut sent = Vec::new();
            while !stop.is_cancelled() {
                let text = format!("p{k} {}", sent.len());
                let body = json!({ "text": text }).to_string();
                let (status, answer) = match route {
                    None => cluster.post(&path, Some(API_KEY), None, &body).await,
                    Some(replica) => cluster.post_to(replica, &path, API_KEY, &body).await,
                };
                assert_eq!(status, StatusCode::OK, "{answer}");
                sent.push(text);
            }
            sent
        }));
    }

    let mut got: Vec<Value> = Vec::new();
    let landings = [None, Some("app-1"), Some("app-2"), Some("app-3")];
    for round in 0..RECONNECTS {
        let mut socket = cluster
            .connect_query(&client, landings[round % landings.len()], &query)
            .await;
        // Read a while, then leave mid-stream, as a tab losing its network would.
        let until = Instant::now() + Duration::from_millis(150);
        let mut these = Vec::new();
        while Instant::now() < until {
            let Some(frame) = socket.next_json_within(Duration::from_secs(2)).await else {
                break;
            };
            assert_eq!(
                frame["via"], "publish",
                "only publishes, no history_lost: {frame}"
            );
            these.push(frame);
        }
        assert!(
            !these.is_empty(),
            "round {round}: the publishers kept publishing"
        );
        query = resume_query(&socket.welcome, &these);
        got.extend(these);
    }
    stop.cancel();
    let mut sent = Vec::new();
    for publisher in publishers {
        sent.push(publisher.await.unwrap());
    }
    // Everything published is in history now; a last resume gets the rest, then a marker
    // published after all of it says nothing is left to come.
    let mut socket = cluster.connect_query(&client, None, &query).await;
    let (status, _) = cluster.call("publish", &client, None, "the end").await;
    assert_eq!(status, StatusCode::OK);
    loop {
        let frame = socket.next_json().await;
        if frame["text"] == "the end" {
            break;
        }
        got.push(frame);
    }

    let ids: Vec<(u64, u64)> = got.iter().map(id_of).collect();
    let repeats = ids.windows(2).filter(|w| w[0] >= w[1]).count();
    assert_eq!(
        repeats, 0,
        "ids strictly increasing: no duplicate, none out of order"
    );
    for (k, sent) in sent.iter().enumerate() {
        let prefix = format!("p{k} ");
        let arrived: Vec<&str> = got
            .iter()
            .filter_map(|f| f["text"].as_str())
            .filter(|t| t.starts_with(&prefix))
            .collect();
        assert_eq!(
            arrived, *sent,
            "publisher {k}: each once, in order, none missing"
        );
    }
    eprintln!(
        "reconnects: {} messages over {RECONNECTS} reconnects, each exactly once",
        got.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_when_its_queue_of_socket_queue_frames_is_full() {
    // The documented default, not set here: the replica runs with it.
    const SOCKET_QUEUE: usize = 256;
    // Big frames: the few the kernel holds cost few publishes, and the queue's frames dwarf
    // everything else the replica allocates, so its memory shows the queue's length.
    const FRAME: usize = 64 * 1024;
    let mut cluster = TestCluster::start(1);
    let slow = cluster.mint().await;
    let marker = cluster.mint().await;
    let host = cluster.replica_base("app-1").replace("http://", "");
    let mut slow_socket = Socket::connect_with_rcvbuf(&host, &slow, 4096).await;
    let mut marker_socket = cluster.connect(&marker, None).await;
    let url = cluster.redis.as_ref().unwrap().url();
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let rss_before = cluster.replica_rss("app-1");
    let mut peak_rss = rss_before;
    let padding = "x".repeat(FRAME);

    // One message to the slow client at a time, each followed by a marker to another client
    // of the same replica: the replica handles its broker messages in order, so once the
    // marker arrived the message before it was queued or overflowed, and between two messages
    // the slow socket's writer has all the time it needs to push what it can into the kernel.
    // Then the queue only fills once the socket is stuck, and the count is exact.
    let mut accepted = 0usize;
    loop {
        assert!(
            accepted < 4 * SOCKET_QUEUE,
            "still not closed after {accepted} frames of {FRAME} bytes"
        );
        let payload = |text: String| json!({"via": "publish", "from": "test", "text": text});
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH")
            .arg(format!("stickyws:client:{}", slow.id))
            .arg(payload(format!("n{accepted} {padding}")).to_string())
            .ignore()
            .cmd("PUBLISH")
            .arg(format!("stickyws:client:{}", marker.id))
            .arg(payload(format!("marker {accepted}")).to_string())
            .ignore();
        pipe.query_async::<()>(&mut conn).await.unwrap();
        let frame = marker_socket.next_json().await;
        assert_eq!(frame["text"], format!("marker {accepted}"));
        peak_rss = peak_rss.max(cluster.replica_rss("app-1"));
        let metrics = cluster.replica_metrics("app-1").await;
        if sample(&metrics, "stickyws_slow_consumer_disconnects_total") == 1.0 {
            break;
        }
        accepted += 1;
    }

    // The client wakes up and reads: what the replica wrote before it gave up, then 1013.
    let mut received = Vec::new();
    let code = loop {
        let next = tokio::time::timeout(Duration::from_secs(10), slow_socket.ws.next()).await;
        match next.expect("the backlog, then a close frame, within 10 s") {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                received.push(frame["text"].as_str().unwrap().to_owned());
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                break frame.map(|f| f.code);
            }
            Some(Ok(_)) => {}
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(CloseCode::Again));
    for (i, text) in received.iter().enumerate() {
        assert!(
            text.starts_with(&format!("n{i} ")),
            "in order from the first"
        );
    }
    // What the queue took and the client never got is what was queued when it overflowed: the
    // queue's length, plus the one frame the writer may have held on its way into the socket.
    let dropped = accepted - received.len();
    assert!(
        (SOCKET_QUEUE..=SOCKET_QUEUE + 1).contains(&dropped),
        "{accepted} queued, {} written before the close: {dropped} were waiting",
        received.len()
    );
    // A stuck client costs the replica its queue's frames, once each: SOCKET_QUEUE × 64 KiB
    // = 16 MiB, with room for the frames the writer held and the allocator's rounding.
    let grew = peak_rss.saturating_sub(rss_before);
    let queue_bytes = (SOCKET_QUEUE * FRAME) as u64;
    eprintln!(
        "slow consumer: closed after {accepted} accepted, {} written; RSS grew {} KiB (queue {} KiB)",
        received.len(),
        grew / 1024,
        queue_bytes / 1024
    );
    assert!(
        grew < queue_bytes * 3 / 2,
        "RSS grew {grew} bytes for a {queue_bytes}-byte queue"
    );
}

/// Item 1 of "Broker faults without collateral damage": while Redis is down, through nginx, only
/// what needs the broker fails. The outage outlasts nginx's fail_timeout (10 s), so a config that
/// counted the replicas' 503s as failures would show here as 502s for everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_only_what_needs_the_broker_through_nginx() {
    use crate::support::outage::{broker_free_paths, broker_paths_refuse};

    const OUTAGE: Duration = Duration::from_secs(15);
    let mut cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let mut socket = cluster.connect(&client, None).await;
    let before = broker_free_paths(&cluster, &client, &mut socket, 0).await;
    assert!(before.is_empty(), "before the outage: {before:?}");

    cluster.kill_redis();
    let stopped = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = Vec::new();
    let mut rounds = 0;
    while stopped.elapsed() < OUTAGE {
        ticks.tick().await;
        rounds += 1;
        let at = stopped.elapsed();
        let mut failed = broker_paths_refuse(&cluster, &client).await;
        failed.extend(broker_free_paths(&cluster, &client, &mut socket, rounds).await);
        failures.extend(
            failed
                .into_iter()
                .map(|f| format!("{:.1}s {f}", at.as_secs_f64())),
        );
    }
    let sampled = stopped.elapsed();
    assert!(
        failures.is_empty(),
        "{} failures in {rounds} rounds over {sampled:?} of outage:\n{}",
        failures.len(),
        failures.join("\n")
    );

    cluster.restart_redis();
    let restarted = Instant::now();
    let mut resumed = false;
    loop {
        let (status, body) = cluster.call("publish", &client, None, "back").await;
        if status == StatusCode::OK && body["receivers"] == 1 {
            break;
        }
        // Redis came back empty: the client's history is another epoch now. When a publish
        // got there before the replica's gap fill read it, the fill cannot show nothing was
        // missed and closes the socket with 1012 (the client resumes from its cursor).
        if status == StatusCode::OK && body["receivers"] == 0 && !resumed {
            let code = socket.close_code(Duration::from_secs(5)).await;
            assert_eq!(code.map(u16::from), Some(1012), "{body}");
            socket = cluster.connect(&client, None).await;
            resumed = true;
            continue;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(15),
            "publish did not come back: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let frame = socket.next_json().await;
    assert_eq!(
        (frame["via"].as_str(), frame["text"].as_str()),
        (Some("publish"), Some("back"))
    );
    eprintln!(
        "redis outage through nginx: {rounds} rounds over {sampled:?}, none failed; publish \
         delivered again {:?} after the restart (socket closed with 1012 and resumed: {resumed})",
        restarted.elapsed()
    );
}
