//! Real partitions (issue #14, item 7): Redis, three replicas and nginx, each in a network
//! namespace of its own ([`crate::support::netns`]), with links cut by iptables DROP rules (a
//! black hole: nothing is closed or refused), made lossy, slowed, and healed. Each test asserts
//! what a user sees through nginx, and prints the figures docs/RELIABILITY.md quotes. Where
//! namespaces cannot be made, each test says so in one line and passes without running.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::netns::{NetCluster, REDIS_PORT};
use crate::support::outage::{broker_free_paths, broker_paths_refuse};
use crate::support::{API_KEY, Client, Socket, TestCluster, sample};

/// How long the Redis ↔ everyone and nginx ↔ replica cuts last (the issue asks 30 s; this is
/// shorter to keep CI fast, and still outlasts nginx's 10 s fail_timeout counting).
const CUT: Duration = Duration::from_secs(10);
/// Issue #14: a dead link is noticed within 3 s; the margin is for polling on a busy machine.
const DETECT_WITHIN: Duration = Duration::from_millis(3500);
/// Reconnecting waits out a backoff of at most 5 s after a connect attempt of at most 3 s.
const RECOVER_WITHIN: Duration = Duration::from_secs(15);

fn quick_http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `/readyz` of one replica, asked directly; `None` when it did not answer within 2 s.
async fn readyz(cluster: &TestCluster, replica: &str) -> Option<StatusCode> {
    let url = format!("{}/readyz", cluster.replica_base(replica));
    tokio::time::timeout(Duration::from_secs(2), cluster.http.get(url).send())
        .await
        .ok()?
        .ok()
        .map(|r| r.status())
}

/// Polls `/readyz` of `replica` until it answers `want`; how long that took.
async fn until_readyz(
    cluster: &TestCluster,
    replica: &str,
    want: StatusCode,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        if readyz(cluster, replica).await == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{replica} /readyz not {want} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_from_everyone_fails_only_what_needs_the_broker() {
    let Some(nc) = NetCluster::start(3) else {
        return;
    };
    let cluster = &nc.cluster;
    cluster.wait_all_ready(RECOVER_WITHIN).await;
    let client = cluster.mint().await;
    let mut socket = cluster.connect(&client, None).await;
    let before = broker_free_paths(cluster, &client, &mut socket, 0).await;
    assert!(before.is_empty(), "before the cut: {before:?}");

    let cut = nc.net.isolate("redis");
    let started = Instant::now();
    // The broker paths are sampled on their own, every second: each waits out its deadline,
    // which would otherwise thin out the samples of everything else.
    let refusals = {
        let (cluster, client) = (cluster.clone(), client.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut failures, mut rounds, mut slowest) = (Vec::new(), 0, Duration::ZERO);
            while started.elapsed() < CUT {
                ticks.tick().await;
                rounds += 1;
                let at = started.elapsed();
                let failed = broker_paths_refuse(&cluster, &client).await;
                slowest = slowest.max(started.elapsed() - at);
                failures.extend(failed.into_iter().map(|f| format!("{at:.1?} {f}")));
            }
            (failures, rounds, slowest)
        })
    };
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut failures, mut rounds, mut slowest_free) = (Vec::new(), 0, Duration::ZERO);
    while started.elapsed() < CUT {
        ticks.tick().await;
        rounds += 1;
        let at = started.elapsed();
        let failed = broker_free_paths(cluster, &client, &mut socket, rounds).await;
        slowest_free = slowest_free.max(started.elapsed() - at);
        failures.extend(failed.into_iter().map(|f| format!("{at:.1?} {f}")));
    }
    let (refusal_failures, refusal_rounds, slowest_refusal) = refusals.await.unwrap();
    failures.extend(refusal_failures);
    let sampled = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} failures in {rounds} + {refusal_rounds} rounds over {sampled:?} of the cut:\n{}",
        failures.len(),
        failures.join("\n")
    );

    cut.heal();
    let healed = Instant::now();
    let mut attempt = 0;
    let back = loop {
        attempt += 1;
        let text = format!("back {attempt}");
        let (status, body) = cluster.call("publish", &client, None, &text).await;
        if status == StatusCode::OK && body["receivers"] == 1 {
            break text;
        }
        assert!(
            healed.elapsed() < RECOVER_WITHIN,
            "publish not back {RECOVER_WITHIN:?} after healing: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let publish_back = healed.elapsed();
    // Publishes answered 503 during the cut (or before the link was back) may still arrive:
    // a 503 does not say the message was not sent. Skip those; the accepted one must come.
    let mut late = 0;
    loop {
        let frame = socket
            .next_json_within(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| {
                panic!("{back:?} not delivered to the socket on {}", socket.replica)
            });
        if frame["text"] == back.as_str() {
            break;
        }
        late += 1;
    }
    eprintln!(
        "partition redis<->everyone: {rounds} rounds of the broker-free paths and \
         {refusal_rounds} of publish + broadcast over {sampled:?}, none failed; publish + \
         broadcast refused within {slowest_refusal:?} (both), the broker-free paths took at \
         most {slowest_free:?} per round (a new socket waits out its subscribe); publish \
         accepted again {publish_back:?} after healing ({attempt} tries); {late} frames \
         answered 503 or sent before it arrived first"
    );
    // A round of the broker-free paths is a handful of requests and two sockets: slowed only by
    // bounded broker attempts (the page's 0.5 s, the new socket's subscribe), never stuck on
    // the dead link.
    assert!(slowest_free < Duration::from_secs(6), "{slowest_free:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_from_redis_is_not_ready_within_3s_and_the_others_stay_ready() {
    let Some(nc) = NetCluster::start(3) else {
        return;
    };
    let cluster = &nc.cluster;
    cluster.wait_all_ready(RECOVER_WITHIN).await;
    let broker_up = |m: &str| sample(m, "stickyws_broker_up");
    assert_eq!(broker_up(&cluster.replica_metrics("app-1").await), 1.0);

    let cut = nc.net.cut("app-1", nc.net.ip("redis"));
    let detected = until_readyz(
        cluster,
        "app-1",
        StatusCode::SERVICE_UNAVAILABLE,
        DETECT_WITHIN,
    )
    .await;
    assert_eq!(broker_up(&cluster.replica_metrics("app-1").await), 0.0);
    // The others keep their link: ready throughout a few seconds of the cut.
    for _ in 0..5 {
        for other in ["app-2", "app-3"] {
            assert_eq!(
                readyz(cluster, other).await,
                Some(StatusCode::OK),
                "{other}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        readyz(cluster, "app-1").await,
        Some(StatusCode::SERVICE_UNAVAILABLE),
        "app-1 stays not ready while cut"
    );

    cut.heal();
    let recovered = until_readyz(cluster, "app-1", StatusCode::OK, RECOVER_WITHIN).await;
    assert_eq!(broker_up(&cluster.replica_metrics("app-1").await), 1.0);
    eprintln!(
        "partition app-1<->redis: /readyz 503 after {detected:?}, 200 again {recovered:?} \
         after healing; app-2 and app-3 ready throughout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_cut_from_one_replica_keeps_answering_from_the_others() {
    let Some(nc) = NetCluster::start(3) else {
        return;
    };
    let cluster = &nc.cluster;
    cluster.wait_all_ready(RECOVER_WITHIN).await;
    let client = cluster.mint().await;
    let http = quick_http();
    // Warm nginx's keepalive pools to every replica, as a live site's would be.
    for _ in 0..12 {
        let (status, _) = cluster.call("echo", &client, None, "warm").await;
        assert_eq!(status, StatusCode::OK);
    }

    let cut = nc.net.cut("nginx", nc.net.ip("app-2"));
    let started = Instant::now();
    let (mut answered, mut failed, mut took) = (0, Vec::new(), Vec::new());
    let mut n = 0;
    while started.elapsed() < CUT {
        n += 1;
        // GET and POST, round robin and with the cut replica's own cookie (its backups answer).
        let sticky = if n % 2 == 0 { Some("app-2") } else { None };
        let post = n % 4 < 2;
        let mut request = if post {
            http.post(format!("{}/api/echo/{}", cluster.base(), client.id))
                .header("authorization", format!("Bearer {}", client.token))
                .header("content-type", "application/json")
                .body(json!({ "text": format!("n{n}") }).to_string())
        } else {
            http.get(format!("{}/readyz", cluster.base()))
        };
        if let Some(replica) = sticky {
            request = request.header("cookie", format!("sticky={replica}"));
        }
        let what = format!(
            "{} {sticky:?}",
            if post { "POST echo" } else { "GET readyz" }
        );
        let asked = Instant::now();
        let outcome = request.send().await;
        let elapsed = asked.elapsed();
        took.push(elapsed);
        match outcome {
            Ok(r) if r.status().is_success() => {
                let body: Value = r.json().await.unwrap_or(Value::Null);
                assert_ne!(body["replica"], "app-2", "an answer from the cut replica");
                answered += 1;
            }
            Ok(r) => failed.push(format!("{what}: {} after {elapsed:?}", r.status())),
            Err(e) => failed.push(format!("{what}: {e} after {elapsed:?}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cut.heal();
    took.sort();
    let (p50, max) = (percentile(&took, 0.5), took[took.len() - 1]);
    let slow = took.iter().filter(|t| **t > Duration::from_secs(1)).count();
    eprintln!(
        "partition nginx<->app-2: {answered} of {n} requests answered 2xx over {CUT:?}; \
         failed: {failed:?}; p50 {p50:?}, max {max:?}, {slow} slower than 1 s"
    );
    // What nginx had already sent on a kept-alive connection to app-2 waits out
    // proxy_read_timeout (5 s): a GET then goes to the next replica, a POST answers 504 (it
    // may have been received). app-2 is left out for fail_timeout (10 s) after each such
    // failure, so at most one failure per pool (round robin, app-2's cookie) in a 10 s cut.
    let gets_failed = failed.iter().filter(|f| f.starts_with("GET")).count();
    assert_eq!(gets_failed, 0, "a GET not answered: {failed:?}");
    assert!(failed.len() <= 2, "{} failures: {failed:?}", failed.len());
    assert!(max < Duration::from_secs(8), "slowest answer took {max:?}");
    assert!(answered >= n - 2);
}

/// A TCP relay between a replica and Redis that holds every chunk the replica sends for the
/// delay currently set, in order: latency on one link, since not every kernel has `tc netem`
/// (this machine's has none). The loss stays the kernel's (iptables `statistic`).
async fn delay_relay(
    listener: std::net::TcpListener,
    upstream: SocketAddr,
    delay_ms: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let (dr, dw) = down.into_split();
            let (ur, uw) = up.into_split();
            // One way, replica to Redis, as `netem delay` on the replica's interface would be:
            // every round trip on the link takes the delay longer.
            tokio::spawn(pump(dr, uw, delay_ms.clone()));
            tokio::spawn(pump(ur, dw, Arc::new(AtomicU64::new(0))));
        }
    })
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let due =
            tokio::time::Instant::now() + Duration::from_millis(delay_ms.load(Ordering::Relaxed));
        if tx.send((due, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_lossy_link_to_redis_still_publishes_and_delivers() {
    const MESSAGES: usize = 60;
    const PUBLISHERS: usize = 4;
    const DELAY_MS: u64 = 200;
    // app-1 reaches Redis through a relay in the test's namespace (the delay); loss is the
    // kernel's, on app-1's packets to and from the relay.
    let relay_listener = std::sync::Mutex::new(None);
    let Some(nc) = NetCluster::start_with(3, |net, name| {
        if name != "app-1" {
            return None;
        }
        let listener = std::net::TcpListener::bind((net.root_ip(), 0)).unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        *relay_listener.lock().unwrap() = Some(listener);
        Some(url)
    }) else {
        return;
    };
    let delay = Arc::new(AtomicU64::new(0));
    let listener = relay_listener.lock().unwrap().take().unwrap();
    let relay_addr = listener.local_addr().unwrap();
    let upstream = SocketAddr::from((nc.net.ip("redis"), REDIS_PORT));
    let relay = delay_relay(listener, upstream, delay.clone()).await;
    let cluster = nc.cluster.clone();
    cluster.wait_all_ready(RECOVER_WITHIN).await;
    let client = cluster.mint().await;
    let mut socket = cluster.connect(&client, Some("app-1")).await;
    assert_eq!(socket.replica, "app-1");

    delay.store(DELAY_MS, Ordering::Relaxed);
    let loss = nc
        .net
        .loss("app-1", relay_addr.ip().to_string().parse().unwrap(), 0.01);
    let mut tasks = Vec::new();
    for k in 0..PUBLISHERS {
        let (cluster, client) = (cluster.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            for i in 0..MESSAGES / PUBLISHERS {
                let text = format!("slow {k} {i}");
                let asked = Instant::now();
                let (status, body) = cluster
                    .post(
                        &format!("/api/publish/{}", client.id),
                        Some(API_KEY),
                        Some("app-1"),
                        &json!({ "text": text }).to_string(),
                    )
                    .await;
                took.push(asked.elapsed());
                assert_eq!(status, StatusCode::OK, "{text}: {body}");
                assert_eq!(body["replica"], "app-1", "published through app-1");
            }
            took
        }));
    }
    let mut took = Vec::new();
    for task in tasks {
        took.extend(task.await.unwrap());
    }
    let mut got = Vec::new();
    while got.len() < MESSAGES {
        let Some(frame) = socket.next_json_within(Duration::from_secs(10)).await else {
            break;
        };
        if frame["via"] == "publish" {
            got.push(frame["text"].as_str().unwrap_or_default().to_owned());
        }
    }
    loss.heal();
    delay.store(0, Ordering::Relaxed);
    relay.abort();
    took.sort();
    let (p50, p99) = (percentile(&took, 0.5), percentile(&took, 0.99));
    eprintln!(
        "app-1<->redis +{DELAY_MS} ms, 1 % loss: {MESSAGES} publishes all 200, p50 {p50:?} p99 \
         {p99:?}; {} of {MESSAGES} delivered to app-1's socket",
        got.len()
    );
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), got.len(), "a message delivered twice");
    assert_eq!(got.len(), MESSAGES, "every publish reached the socket");
    // The delay is really on the path: a publish takes at least one slowed round trip.
    assert!(p50 >= Duration::from_millis(DELAY_MS), "p50 {p50:?}");
    assert!(p99 < Duration::from_secs(3), "p99 {p99:?}");
}

/// A client that follows its messages as the page does: it records every publish frame and
/// its cursor, and when the replica closes the socket (1012: resume from your cursor) it connects
/// again with `last_id` of the newest message it saw.
struct Follower {
    socket: Socket,
    client: Client,
    last_id: String,
    got: Vec<String>,
    resumes: usize,
}

impl Follower {
    async fn new(cluster: &TestCluster, client: &Client, sticky: &str) -> Follower {
        let socket = cluster.connect(client, Some(sticky)).await;
        let last_id = socket.welcome["last_id"].as_str().unwrap().to_owned();
        Follower {
            socket,
            client: client.clone(),
            last_id,
            got: Vec::new(),
            resumes: 0,
        }
    }

    /// The next frame within `limit`: Ok(None) when quiet, Err(close) when the server closed.
    async fn next(&mut self, limit: Duration) -> Result<Option<Value>, String> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let Ok(message) = tokio::time::timeout_at(deadline, self.socket.ws.next()).await else {
                return Ok(None);
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Ok(Some(serde_json::from_str(&text).unwrap()));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(frame))) => return Err(format!("{frame:?}")),
                Some(Ok(other)) => panic!("unexpected message {other:?}"),
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("closed".to_owned()),
            }
        }
    }

    /// Reads for `span`, or until a publish frame with text `marker` (true when seen).
    async fn follow(
        &mut self,
        cluster: &TestCluster,
        span: Duration,
        marker: Option<&str>,
    ) -> bool {
        let until = Instant::now() + span;
        while Instant::now() < until {
            match self.next(until - Instant::now()).await {
                Ok(Some(frame)) if frame["via"] == "publish" => {
                    let text = frame["text"].as_str().unwrap_or_default().to_owned();
                    if Some(text.as_str()) == marker {
                        return true;
                    }
                    self.last_id = frame["cursor"]
                        .as_str()
                        .unwrap_or_else(|| panic!("a publish frame without its cursor: {frame}"))
                        .to_owned();
                    self.got.push(text);
                }
                Ok(Some(frame)) => assert_ne!(
                    frame["type"], "history_lost",
                    "on {} after {} resumes: {frame}",
                    self.socket.replica, self.resumes
                ),
                Ok(None) => {}
                Err(why) => {
                    eprintln!(
                        "socket on {} closed ({why}); resuming from {} after {} messages",
                        self.socket.replica,
                        self.last_id,
                        self.got.len()
                    );
                    self.resumes += 1;
                    let query = format!("&last_id={}", self.last_id);
                    self.socket = cluster
                        .connect_query(&self.client, Some("app-1"), &query)
                        .await;
                }
            }
        }
        false
    }
}

/// Publishes `text` through `via` (with its cookie) as the API; whether it was accepted.
async fn publish_via(cluster: &TestCluster, client: &Client, via: &str, text: &str) -> bool {
    let (status, _) = cluster
        .post(
            &format!("/api/publish/{}", client.id),
            Some(API_KEY),
            Some(via),
            &json!({ "text": text }).to_string(),
        )
        .await;
    status == StatusCode::OK
}

/// Messages accepted while app-1 is cut from Redis for `partition` reach its socket once and
/// in order: `workers` publishers, each publishing through app-2 every `every` (each waits for
/// its answer), for 2 s before the cut, through it and 3 s after. The history window and the
/// replay budget hold everything missed (a smaller window makes the resume say, truthfully,
/// `history_lost`: `gap_fill::a_gap_history_no_longer_holds_closes_the_sockets_with_1012`).
async fn partition_under_load(partition: Duration, workers: usize, every: Duration) {
    let settings = [
        ("HISTORY_LEN", "50000"),
        ("MAX_REPLAY_BYTES", "16777216"),
        ("PUBLISH_RATE", "100000"),
    ];
    let Some(nc) = NetCluster::start_with_settings(3, &settings) else {
        return;
    };
    let cluster = nc.cluster.clone();
    cluster.wait_all_ready(RECOVER_WITHIN).await;
    let client = cluster.mint().await;
    let mut follower = Follower::new(&cluster, &client, "app-1").await;
    assert_eq!(follower.socket.replica, "app-1");

    let stop = tokio_util::sync::CancellationToken::new();
    let publishing = Instant::now();
    let publishers: Vec<_> = (0..workers)
        .map(|w| {
            let (cluster, client, stop) = (cluster.clone(), client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let (mut accepted, mut refused) = (Vec::new(), 0);
                let mut i = 0;
                while !stop.is_cancelled() {
                    ticks.tick().await;
                    i += 1;
                    let text = format!("w{w}-{i}");
                    if publish_via(&cluster, &client, "app-2", &text).await {
                        accepted.push(text);
                    } else {
                        refused += 1;
                    }
                }
                (accepted, refused)
            })
        })
        .collect();
    follower
        .follow(&cluster, Duration::from_secs(2), None)
        .await;
    let cut = nc.net.cut("app-1", nc.net.ip("redis"));
    follower.follow(&cluster, partition, None).await;
    cut.heal();
    follower
        .follow(&cluster, Duration::from_secs(3), None)
        .await;
    stop.cancel();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for publisher in publishers {
        let (mine, theirs) = publisher.await.unwrap();
        accepted.push(mine);
        refused += theirs;
    }
    let published_for = publishing.elapsed();
    let marker = "the end";
    assert!(publish_via(&cluster, &client, "app-2", marker).await);
    let seen = follower
        .follow(&cluster, Duration::from_secs(30), Some(marker))
        .await;
    let got = follower.got;
    let total: usize = accepted.iter().map(Vec::len).sum();
    assert!(
        seen,
        "marker not seen within 30 s; {} of {total} accepted arrived",
        got.len()
    );
    let received: std::collections::HashSet<&String> = got.iter().collect();
    let missing = accepted
        .iter()
        .flatten()
        .filter(|t| !received.contains(t))
        .count();
    let duplicated = got.len() - received.len();
    eprintln!(
        "{partition:?} partition app-1<->redis, {workers} publishers through app-2 every \
         {every:?}: {total} accepted, {refused} refused ({:.0}/s); {} arrived, {missing} \
         missing, {duplicated} duplicated; {} resumes",
        (total + refused) as f64 / published_for.as_secs_f64(),
        got.len(),
        follower.resumes
    );
    assert_eq!((missing, duplicated), (0, 0), "every accepted message once");
    for (w, mine) in accepted.iter().enumerate() {
        let prefix = format!("w{w}-");
        let arrived: Vec<&String> = got.iter().filter(|t| t.starts_with(&prefix)).collect();
        assert!(
            arrived.iter().copied().eq(mine.iter()),
            "publisher {w}'s messages in the order accepted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_accepted_while_a_replica_is_cut_from_redis_reach_its_socket_once_in_order() {
    partition_under_load(Duration::from_secs(5), 1, Duration::from_millis(5)).await;
}

/// The figure: a 20 s partition under ~500 publishes/s (4 publishers every 8 ms, as
/// fast as this machine answers them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20s_partition_under_500_per_second_loses_and_duplicates_nothing() {
    partition_under_load(Duration::from_secs(20), 4, Duration::from_millis(8)).await;
}
