//! The send rate (`PUBLISH_RATE`): one bucket per client per replica, shared by every route a
//! client token may call (publish, direct, echo, the state lab's notes: adding and reading),
//! 429 `rate_limited` beyond it; the API key unlimited, and WebSocket frames drawing nothing.
//!
//! The bucket holds 2 × rate and refills `rate` a second. Each run sends one request after
//! another and times every one from this side; the refills a correct bucket can have granted
//! are then bounded both ways by those times (see [`assert_bucket`]), so every assertion holds
//! however slow the machine, and a route left out of the bucket lets through more than the
//! bound whenever the run is faster than its length in refills — at `PUBLISH_RATE=1`, seconds.
//! Which replica a request reaches is the sticky cookie's business, through nginx.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{assert_every_replica_serves, mint_on};
use crate::support::{API_KEY, Client, TestCluster};

/// The replicas' clock (the limiter's) and this side's may disagree by this much over a run.
const CLOCK_SLACK: Duration = Duration::from_millis(50);

/// Every route that spends from a client's bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Route {
    Publish,
    Direct,
    Echo,
    NoteLocal,
    NoteShared,
    ReadNotes,
}

const ROUTES: [Route; 6] = [
    Route::Publish,
    Route::Direct,
    Route::Echo,
    Route::NoteLocal,
    Route::NoteShared,
    Route::ReadNotes,
];

impl Route {
    fn path(self, client: &str) -> String {
        match self {
            Route::Publish => format!("/api/publish/{client}"),
            Route::Direct => format!("/api/direct/{client}"),
            Route::Echo => format!("/api/echo/{client}"),
            Route::NoteLocal => format!("/api/notes/{client}/local"),
            Route::NoteShared => format!("/api/notes/{client}/shared"),
            Route::ReadNotes => format!("/api/notes/{client}"),
        }
    }
}

/// One request of a run: where it went, its answer, and when it left and was answered.
#[derive(Debug)]
struct Sent {
    route: Route,
    status: u16,
    /// The error code of a refusal, the answering replica of a success.
    answer: Value,
    sent: Instant,
    answered: Instant,
}

/// `route` for `client`, with `bearer` (the client's token unless given), through nginx to
/// `replica` by its cookie.
async fn send(
    cluster: &TestCluster,
    route: Route,
    client: &Client,
    bearer: Option<&str>,
    replica: &str,
    text: &str,
) -> Sent {
    let url = format!("{}{}", cluster.base(), route.path(&client.id));
    let request = match route {
        Route::ReadNotes => cluster.http.get(url),
        _ => cluster
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(json!({ "text": text }).to_string()),
    }
    .header(
        "authorization",
        format!("Bearer {}", bearer.unwrap_or(&client.token)),
    )
    .header("cookie", format!("sticky={replica}"));
    let sent = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), request.send())
        .await
        .expect("an answer in time")
        .expect("an HTTP answer");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON answer");
    let answered = Instant::now();
    let answer = if status == 200 {
        body["replica"].clone()
    } else {
        body["error"]["code"].clone()
    };
    Sent {
        route,
        status,
        answer,
        sent,
        answered,
    }
}

/// `routes` in turn, one request each, for `client` on `replica`.
async fn run(
    cluster: &TestCluster,
    client: &Client,
    replica: &str,
    routes: impl IntoIterator<Item = Route>,
) -> Vec<Sent> {
    let mut sents = Vec::new();
    for (i, route) in routes.into_iter().enumerate() {
        sents.push(send(cluster, route, client, None, replica, &format!("n{i}")).await);
    }
    sents
}

/// `n` requests of one route.
fn times(route: Route, n: usize) -> impl Iterator<Item = Route> {
    std::iter::repeat_n(route, n)
}

/// Whole refills of `per_second` in `span`, give or take the clocks' slack (`sign` +1 to count
/// the slack in, -1 to count it out).
fn refills(span: Duration, per_second: u32, sign: i8) -> usize {
    let span = if sign > 0 {
        span + CLOCK_SLACK
    } else {
        span.saturating_sub(CLOCK_SLACK)
    };
    (span.as_secs_f64() * f64::from(per_second)).floor() as usize
}

/// A run of one client on one replica, whose bucket was full when it began, met a correct
/// bucket of `2 × per_second` refilled `per_second` times a second: every refusal is 429
/// `rate_limited`, every success names `replica`; the first `burst` passed; and of the rest,
/// exactly as many as refills came. The server saw the first request after it was sent and
/// the last before it was answered, so at most one refill per whole second between the first
/// send and the last answer came; at least one per whole second between the first answer and
/// the last send, as long as no two requests were a refill apart (each refill was then taken by
/// the next request). Returns how many passed.
fn assert_bucket(sents: &[Sent], per_second: u32, replica: &str, what: &str) -> usize {
    let burst = 2 * per_second as usize;
    let statuses: Vec<(Route, u16)> = sents.iter().map(|s| (s.route, s.status)).collect();
    let (Some(first), Some(last)) = (sents.first(), sents.last()) else {
        panic!("{what}: an empty run");
    };
    let outer = last.answered - first.sent;
    let context = format!(
        "{what}: {} requests in {outer:?}: {statuses:?}",
        sents.len()
    );
    for (i, sent) in sents.iter().enumerate() {
        let expected = if sent.status == 200 {
            (200, replica)
        } else {
            (429, "rate_limited")
        };
        assert_eq!(
            (sent.status, sent.answer.as_str().unwrap_or_default()),
            expected,
            "{context}: request {i} ({:?}) answered {}",
            sent.route,
            sent.answer
        );
    }
    let passed = sents.iter().filter(|s| s.status == 200).count();
    assert!(
        sents.iter().take(burst).all(|s| s.status == 200),
        "{context}: a full bucket lets the first {burst} through"
    );
    let most = burst + refills(outer, per_second, 1);
    assert!(
        passed <= most,
        "{context}: {passed} passed; a bucket of {burst} refilled {per_second}/s lets at most \
         {most} through in that time, and 429s the rest"
    );
    let refill = Duration::from_secs(1) / per_second;
    let widest_gap = sents
        .windows(2)
        .map(|pair| pair[1].answered - pair[0].sent)
        .max()
        .unwrap_or_default();
    if widest_gap + CLOCK_SLACK < refill {
        let inner = last.sent.saturating_duration_since(first.answered);
        let least = sents.len().min(burst + refills(inner, per_second, -1));
        assert!(
            passed >= least,
            "{context}: {passed} passed; a bucket of {burst} refilled {per_second}/s lets at \
             least {least} through in that time"
        );
    }
    passed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_beyond_the_client_rate_get_429_but_the_api_key_is_not_limited() {
    let env = vec![("PUBLISH_RATE".to_owned(), "5".to_owned())];
    let mut cluster = TestCluster::start_with(3, env);
    let client = mint_on(&cluster, "app-2").await;
    let mut socket = cluster.connect(&client, Some("app-2")).await;
    let mut publishes = run(&cluster, &client, "app-2", times(Route::Publish, 30)).await;
    // The same client's direct and echo draw from the same bucket.
    let others = run(
        &cluster,
        &client,
        "app-2",
        [Route::Direct, Route::Echo, Route::Direct],
    )
    .await;
    let statuses: Vec<u16> = publishes.iter().map(|s| s.status).collect();
    // A bucket of 2 × 5 is full at the start and refills one every 200 ms.
    let passed = publishes.iter().filter(|s| s.status == 200).count();
    assert!(
        statuses[..10].iter().all(|&s| s == 200),
        "the burst passes: {statuses:?}"
    );
    assert_bucket(&publishes, 5, "app-2", "30 publishes");
    assert!((10..=30).contains(&passed), "{statuses:?}");
    // The 33 as one run: what the publishes left, direct and echo may take, and no more.
    publishes.extend(others);
    assert_bucket(
        &publishes,
        5,
        "app-2",
        "30 publishes, then direct, echo, direct",
    );
    socket.drain(Duration::from_millis(300)).await;

    // Another client has its own bucket, full while this one's is empty.
    let other = mint_on(&cluster, "app-2").await;
    assert_eq!(
        cluster.call("publish", &other, Some("app-2"), "o").await.0,
        StatusCode::OK
    );
    let burst = run(&cluster, &other, "app-2", times(Route::Publish, 9)).await;
    assert!(
        burst.iter().all(|s| s.status == 200),
        "another client's burst of 10: {burst:?}"
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

/// At one send a second a bucket of two: past it, the route itself answers 429, whichever route
/// it is; and two sends on any one route leave nothing for the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_of_a_client_token_draws_from_one_bucket_and_answers_429_past_it() {
    let env = vec![("PUBLISH_RATE".to_owned(), "1".to_owned())];
    let mut cluster = TestCluster::start_with(3, env);
    for route in ROUTES {
        let client = mint_on(&cluster, "app-1").await;
        let sents = run(&cluster, &client, "app-1", times(route, 8)).await;
        assert_bucket(&sents, 1, "app-1", &format!("{route:?} alone"));
    }
    for spender in ROUTES {
        let client = mint_on(&cluster, "app-3").await;
        let others: Vec<Route> = ROUTES.into_iter().filter(|&r| r != spender).collect();
        // The burst on one route, then every other route twice over.
        let routes = times(spender, 2).chain(others.iter().chain(&others).copied());
        let sents = run(&cluster, &client, "app-3", routes).await;
        let what = format!("two {spender:?}, then the others twice");
        assert_bucket(&sents, 1, "app-3", &what);
    }

    // The API key is not limited on any of them, for a client whose bucket is empty.
    let client = mint_on(&cluster, "app-1").await;
    let sents = run(&cluster, &client, "app-1", times(Route::Echo, 4)).await;
    assert_bucket(&sents, 1, "app-1", "echo before the API key");
    // Nor are the client's WebSocket frames: its socket echoes every one.
    let mut socket = cluster.connect(&client, Some("app-1")).await;
    for i in 0..6 {
        let text = format!("frame {i}");
        socket.send_text(&text).await;
        let echo = socket.next_json().await;
        assert_eq!(
            (echo["via"].as_str(), echo["text"].as_str()),
            (Some("ws"), Some(text.as_str())),
            "a drained client's socket: {echo}"
        );
    }
    drop(socket);
    for route in ROUTES {
        for i in 0..4 {
            let sent = send(&cluster, route, &client, Some(API_KEY), "app-1", "k").await;
            assert_eq!(
                (sent.status, sent.answer.as_str()),
                (200, Some("app-1")),
                "API key {route:?} {i}"
            );
        }
    }
    // A client whose bucket another client emptied.
    let drained = mint_on(&cluster, "app-1").await;
    let fresh = mint_on(&cluster, "app-1").await;
    let mut sents = run(&cluster, &drained, "app-1", times(Route::Publish, 4)).await;
    sents.extend(run(&cluster, &fresh, "app-1", times(Route::Publish, 4)).await);
    let (first, second) = sents.split_at(4);
    assert_bucket(first, 1, "app-1", "the first client");
    assert_bucket(second, 1, "app-1", "another client right after");
    assert_every_replica_serves(&mut cluster, "rate per route").await;
}

/// "Per client per replica": a client's empty bucket on one replica leaves its bucket on each
/// other replica full, and emptying those leaves the first as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_bucket_on_one_replica_leaves_its_bucket_on_the_others_full() {
    let env = vec![("PUBLISH_RATE".to_owned(), "1".to_owned())];
    let mut cluster = TestCluster::start_with(3, env);
    let client = mint_on(&cluster, "app-2").await;
    let mut app_2 = run(&cluster, &client, "app-2", times(Route::Echo, 6)).await;
    assert_bucket(&app_2, 1, "app-2", "on app-2");
    for replica in ["app-1", "app-3"] {
        let sents = run(&cluster, &client, replica, times(Route::Echo, 6)).await;
        assert_bucket(&sents, 1, replica, &format!("on {replica} after app-2"));
    }
    // Back on app-2: what the other replicas spent, app-2 did not see; its first run and this
    // one are one bucket's history.
    app_2.extend(run(&cluster, &client, "app-2", times(Route::Publish, 4)).await);
    assert_bucket(&app_2, 1, "app-2", "app-2, then again after the others");
    assert_every_replica_serves(&mut cluster, "rate per replica").await;
}
