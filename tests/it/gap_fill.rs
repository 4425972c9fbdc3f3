//! Nothing accepted is lost for a live socket (issue #14, item 3), through real replica
//! processes: while app-1's Redis subscription is interrupted (a partition through a TCP proxy,
//! or Redis killing the subscriber connection), messages to a client and to a channel whose
//! sockets stay open on app-1 are published through app-2 at a steady rate. Once the link is
//! back, every message whose publish answered 200 has reached its socket exactly once and in
//! publish order.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::proxy::Proxy;
use crate::support::servers::loopback;
use crate::support::{API_KEY, Client, Socket, TestCluster};

const CHANNEL: &str = "public:gap";
/// Time allowed for the replica to notice, reconnect (backoff up to 5 s) and fill.
const RECOVER_WITHIN: Duration = Duration::from_secs(20);

fn settings(history: &str) -> Vec<(String, String)> {
    [
        // The publisher's own rate limits are not what is tested here.
        ("PUBLISH_RATE", "100000"),
        ("CHANNEL_PUBLISH_RATE", "100000"),
        // Everything published during the outage stays in history (≤ 500/s for ~15 s).
        ("HISTORY_LEN", history),
        ("HISTORY_CHANNEL_LEN", history),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Redis; app-1 reaching it through `proxy` (when given) and app-2 directly.
async fn cluster(through_proxy: bool, history: &str) -> (TestCluster, Option<Proxy>) {
    let mut cluster = TestCluster::start_with(0, settings(history));
    let direct = cluster.env.redis_url.clone();
    let port = cluster.redis.as_ref().unwrap().port;
    let proxy = if through_proxy {
        let proxy = Proxy::start(loopback(port)).await;
        cluster.env.redis_url = Some(proxy.url());
        Some(proxy)
    } else {
        None
    };
    cluster.add_replica("app-1");
    cluster.env.redis_url = direct;
    cluster.add_replica("app-2");
    for name in ["app-1", "app-2"] {
        assert!(
            until_ready(&cluster, name, RECOVER_WITHIN).await,
            "{name} ready"
        );
    }
    (cluster, proxy)
}

async fn until_ready(cluster: &TestCluster, replica: &str, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        let url = format!("{}/readyz", cluster.replica_base(replica));
        if let Ok(answer) = cluster.http.get(url).send().await
            && answer.status() == StatusCode::OK
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Every text frame a socket gets, read on its own task (so pings are answered), and how it
/// ended if it did.
#[derive(Clone, Default)]
struct Collected {
    frames: Arc<Mutex<Vec<Value>>>,
    closed: Arc<Mutex<Option<String>>>,
}

fn collect(mut socket: Socket) -> Collected {
    use tokio_tungstenite::tungstenite::Message;
    let collected = Collected::default();
    let out = collected.clone();
    tokio::spawn(async move {
        let ended = loop {
            match tokio::time::timeout(Duration::from_secs(120), socket.ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => out
                    .frames
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&text).unwrap()),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    break format!("closed {:?}", frame.map(|f| u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(err))) => break format!("error {err}"),
                Ok(None) => break "ended".to_owned(),
                Err(_) => break "silent for 120 s".to_owned(),
            }
        };
        *out.closed.lock().unwrap() = Some(ended);
    });
    collected
}

/// What the publishers had accepted (200) for each target, each publisher's in the order it
/// published them.
#[derive(Default)]
struct Accepted {
    client: Vec<Vec<String>>,
    channel: Vec<Vec<String>>,
    refused: usize,
}

impl Accepted {
    fn count(lists: &[Vec<String>]) -> usize {
        lists.iter().map(Vec::len).sum()
    }
}

/// Publishers running at once, each sequential (so its own acceptance order is publish order),
/// together about `rate` messages a second through app-2.
const PUBLISHERS: u32 = 16;

/// One publisher: alternates the client and the channel at `rate` a second until `stop`.
async fn publish(
    cluster: Arc<TestCluster>,
    client: Client,
    worker: u32,
    rate: u32,
    stop: tokio_util::sync::CancellationToken,
) -> (Vec<String>, Vec<String>, usize) {
    let base = cluster.replica_base("app-2");
    let (mut to_client, mut to_channel, mut refused) = (Vec::new(), Vec::new(), 0);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0u32;
    while !stop.is_cancelled() {
        tick.tick().await;
        n += 1;
        let for_client = n.is_multiple_of(2);
        let text = format!("{}-{worker}-{n}", if for_client { "c" } else { "r" });
        let request = if for_client {
            cluster
                .http
                .post(format!("{base}/api/publish/{}", client.id))
                .bearer_auth(&client.token)
        } else {
            cluster
                .http
                .post(format!("{base}/api/channels/{CHANNEL}/publish"))
                .bearer_auth(API_KEY)
        };
        let answer = request
            .header("content-type", "application/json")
            .body(json!({ "text": text }).to_string())
            .send()
            .await;
        match answer {
            Ok(answer) if answer.status() == StatusCode::OK => {
                if for_client {
                    to_client.push(text);
                } else {
                    to_channel.push(text);
                }
            }
            _ => refused += 1,
        }
    }
    (to_client, to_channel, refused)
}

/// The received frames of one stream, oldest first: (text, cursor).
fn stream(c: &Collected, via: &str) -> Vec<(String, String)> {
    c.frames
        .lock()
        .unwrap()
        .iter()
        .filter(|f| f["via"] == via)
        .filter_map(|f| {
            Some((
                f["text"].as_str()?.to_owned(),
                f["cursor"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// `<epoch>:<ms>-<seq>` as a sortable pair.
fn position(cursor: &str) -> (u64, u64) {
    let id = cursor.rsplit(':').next().unwrap();
    let (ms, seq) = id.split_once('-').unwrap();
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// Lost (accepted, never arrived), duplicated (arrived more than once), and whether the
/// stream is in order: history order throughout, and each publisher's messages in the order
/// it published them.
fn compare(accepted: &[Vec<String>], got: &[(String, String)]) -> (usize, usize, bool) {
    let mut seen = std::collections::HashMap::<&str, usize>::new();
    for (text, _) in got {
        *seen.entry(text.as_str()).or_default() += 1;
    }
    let lost = accepted
        .iter()
        .flatten()
        .filter(|t| !seen.contains_key(t.as_str()))
        .count();
    let duplicated = seen.values().filter(|n| **n > 1).map(|n| n - 1).sum();
    let increasing = got
        .windows(2)
        .all(|w| position(&w[0].1) < position(&w[1].1));
    let per_publisher = accepted.iter().enumerate().all(|(worker, mine)| {
        let tag = format!("-{worker}-");
        let arrived: Vec<&String> = got
            .iter()
            .map(|(t, _)| t)
            .filter(|t| t.contains(&tag))
            .collect();
        arrived.iter().copied().eq(mine.iter())
    });
    (lost, duplicated, increasing && per_publisher)
}

/// Sockets on app-1, the publisher on app-2, `fault` run meanwhile; asserts 0 lost, 0
/// duplicated, in order; returns a line of figures.
async fn run(cluster: TestCluster, rate: u32, fault: impl std::future::Future<Output = ()>) {
    let cluster = Arc::new(cluster);
    let app1 = cluster.replica_base("app-1").replace("http://", "");
    let owner = cluster.mint().await;
    let listener = cluster.mint().await;
    let own = collect(Socket::connect(&app1, &owner, None).await);
    let mut sub = Socket::connect(&app1, &listener, None).await;
    assert_eq!(sub.replica, "app-1");
    sub.subscribed(CHANNEL).await;
    let sub = collect(sub);

    let stop = tokio_util::sync::CancellationToken::new();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|worker| {
            tokio::spawn(publish(
                cluster.clone(),
                owner.clone(),
                worker,
                rate / PUBLISHERS,
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    fault.await;
    assert!(
        until_ready(&cluster, "app-1", RECOVER_WITHIN).await,
        "app-1 back"
    );
    let back = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    let publishing = started.elapsed() + Duration::from_secs(1);
    let mut accepted = Accepted::default();
    for publisher in publishers {
        let (to_client, to_channel, refused) = publisher.await.unwrap();
        accepted.client.push(to_client);
        accepted.channel.push(to_channel);
        accepted.refused += refused;
    }
    let (want_client, want_channel) = (
        Accepted::count(&accepted.client),
        Accepted::count(&accepted.channel),
    );
    // Everything accepted arrives within a bound; then a moment more for any duplicate.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline
        && (stream(&own, "publish").len() < want_client
            || stream(&sub, "channel").len() < want_channel)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (got_client, got_channel) = (stream(&own, "publish"), stream(&sub, "channel"));
    let (lost_c, dup_c, order_c) = compare(&accepted.client, &got_client);
    let (lost_r, dup_r, order_r) = compare(&accepted.channel, &got_channel);
    let filled = cluster
        .records()
        .lines()
        .filter(|l| l.contains("gap-fill filled="))
        .count();
    eprintln!(
        "asked {rate}/s, published {:.0}/s accepted for {publishing:.1?}; app-1 ready {back:.1?} \
         after the fault began; client: {want_client} accepted, {} received, {lost_c} lost, \
         {dup_c} duplicated, in order {order_c}; channel: {want_channel} accepted, {} \
         received, {lost_r} lost, {dup_r} duplicated, in order {order_r}; {} refused; {filled} \
         gap-fill records",
        (want_client + want_channel) as f64 / publishing.as_secs_f64(),
        got_client.len(),
        got_channel.len(),
        accepted.refused,
    );
    for (name, c) in [("client", &own), ("channel", &sub)] {
        assert_eq!(
            *c.closed.lock().unwrap(),
            None,
            "the {name} socket stayed open"
        );
        let lost: Vec<_> = c
            .frames
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f["type"] == "history_lost")
            .cloned()
            .collect();
        assert!(lost.is_empty(), "{lost:?}");
    }
    assert_eq!((lost_c, dup_c), (0, 0), "client stream");
    assert_eq!((lost_r, dup_r), (0, 0), "channel stream");
    assert!(order_c && order_r, "in publish order");
    assert!(
        want_client > 100 && want_channel > 100,
        "published throughout"
    );
    assert!(filled > 0, "the gap was filled\n{}", cluster.records());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5s_partition_loses_and_duplicates_nothing_on_live_sockets() {
    let (cluster, proxy) = cluster(true, "10000").await;
    let proxy = proxy.unwrap();
    run(cluster, 250, async {
        proxy.black_hole(true);
        tokio::time::sleep(Duration::from_secs(5)).await;
        proxy.black_hole(false);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscriber_connections_lose_and_duplicate_nothing() {
    let (cluster, _) = cluster(false, "10000").await;
    let url = cluster.redis.as_ref().unwrap().url();
    run(cluster, 1000, async move {
        let redis = redis::Client::open(url).unwrap();
        let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
        for _ in 0..5 {
            let killed: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(killed >= 2, "both replicas' subscribers killed: {killed}");
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    })
    .await;
}

/// When the history no longer holds everything missed (here a window of 50 messages against
/// a 5 s partition), the sockets are not left silently incomplete: they are closed with 1012,
/// and a client resuming from its cursor is told its history was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_history_no_longer_holds_closes_the_sockets_with_1012() {
    let (cluster, proxy) = cluster(true, "50").await;
    let proxy = proxy.unwrap();
    let cluster = Arc::new(cluster);
    let app1 = cluster.replica_base("app-1").replace("http://", "");
    let owner = cluster.mint().await;
    let mut socket = Socket::connect(&app1, &owner, None).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let publisher = tokio::spawn(publish(
        cluster.clone(),
        owner.clone(),
        0,
        100,
        stop.clone(),
    ));
    // Messages before the partition arrive live; the last one seen is the client's cursor.
    let mut last_cursor = None;
    while last_cursor.is_none() {
        let frame = socket.next_json().await;
        if frame["via"] == "publish" {
            last_cursor = frame["cursor"].as_str().map(str::to_owned);
        }
    }
    proxy.black_hole(true);
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.black_hole(false);
    let mut code = None;
    let deadline = Instant::now() + RECOVER_WITHIN;
    while code.is_none() && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), socket.ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame)))) => {
                code = Some(frame.map(|f| u16::from(f.code)));
            }
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if let Some(cursor) = frame["cursor"].as_str() {
                    last_cursor = Some(cursor.to_owned());
                }
            }
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(Some(Err(_)) | None) => break,
        }
    }
    stop.cancel();
    publisher.await.unwrap();
    assert_eq!(code, Some(Some(1012)), "closed to resume from its cursor");
    // Resuming from the cursor it had: told the history was lost, never a silent partial.
    let cursor = last_cursor.unwrap();
    let mut resumed =
        Socket::connect_query(&app1, &owner, None, &format!("&last_id={cursor}")).await;
    let frames = resumed.drain(Duration::from_millis(800)).await;
    assert!(
        frames.iter().any(|f| f["type"] == "history_lost"),
        "{frames:?}"
    );
    assert!(
        cluster
            .records()
            .contains("gap-fill resync sockets=1 (history lost): closed 1012"),
        "{}",
        cluster.records()
    );
}

/// A client that reconnects (with its cursor) to a replica cut off from Redis is not told its
/// history was lost: the history could not be read, which is not the same. Its missed
/// messages are replayed once the replica can read them, in order and once, before live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_while_the_replica_cannot_read_redis_is_replayed_once_it_can() {
    let (cluster, proxy) = cluster(true, "1000").await;
    let proxy = proxy.unwrap();
    let app1 = cluster.replica_base("app-1").replace("http://", "");
    let base2 = cluster.replica_base("app-2");
    let owner = cluster.mint().await;
    let send = |text: String| {
        let request = cluster
            .http
            .post(format!("{base2}/api/publish/{}", owner.id))
            .bearer_auth(&owner.token)
            .header("content-type", "application/json")
            .body(json!({ "text": text }).to_string());
        async move { request.send().await.map(|a| a.status()).ok() }
    };
    let mut socket = Socket::connect(&app1, &owner, None).await;
    assert_eq!(send("m0".to_owned()).await, Some(StatusCode::OK));
    let seen = socket.next_json().await;
    assert_eq!(seen["text"], "m0", "{seen}");
    let cursor = seen["cursor"].as_str().unwrap().to_owned();
    drop(socket);

    proxy.black_hole(true);
    let cut = Instant::now();
    while until_ready(&cluster, "app-1", Duration::from_millis(100)).await {
        assert!(cut.elapsed() < RECOVER_WITHIN, "app-1 noticed the cut");
    }
    let missed: Vec<String> = (1..=5).map(|i| format!("m{i}")).collect();
    for text in &missed {
        assert_eq!(send(text.clone()).await, Some(StatusCode::OK), "{text}");
    }
    let mut resumed =
        Socket::connect_query(&app1, &owner, None, &format!("&last_id={cursor}")).await;
    assert_eq!(
        resumed.welcome["last_id"],
        cursor.as_str(),
        "welcomed at its cursor"
    );
    let meanwhile = resumed.drain(Duration::from_millis(800)).await;
    assert!(
        meanwhile.iter().all(|f| f["type"] != "history_lost"),
        "not said lost while unreadable: {meanwhile:?}"
    );
    proxy.black_hole(false);
    assert!(
        until_ready(&cluster, "app-1", RECOVER_WITHIN).await,
        "app-1 back"
    );
    assert_eq!(send("live".to_owned()).await, Some(StatusCode::OK));
    let mut got = Vec::new();
    let deadline = Instant::now() + RECOVER_WITHIN;
    while Instant::now() < deadline && got.last().map(String::as_str) != Some("live") {
        let Some(frame) = resumed.next_json_within(Duration::from_secs(1)).await else {
            continue;
        };
        assert_ne!(frame["type"], "history_lost", "{frame}");
        if frame["via"] == "publish" {
            assert!(frame["cursor"].is_string(), "with its cursor: {frame}");
            got.push(frame["text"].as_str().unwrap().to_owned());
        }
    }
    let mut want = missed.clone();
    want.push("live".to_owned());
    assert_eq!(
        got,
        want,
        "what it missed, once and in order, then live\n{}",
        cluster.records()
    );
    assert!(
        cluster
            .records()
            .contains("client history unreadable now: replayed once the broker answers"),
        "{}",
        cluster.records()
    );
}
