//! Retries with an `Idempotency-Key` (contract: Retries), through nginx and real replicas: a
//! repeat answers the first outcome and delivers nothing again, for every publish endpoint;
//! a publish frozen mid-flight answers `outcome_unknown` and its retry delivers once in total.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use reqwest::header::HeaderValue;
use serde_json::{Value, json};

use crate::support::{API_KEY, Client, Socket, TestCluster};

/// A POST of `{"text"}` to `base` + `path` with `bearer` and, if given, the `Idempotency-Key`.
async fn publish(
    cluster: &TestCluster,
    base: &str,
    path: &str,
    bearer: &str,
    key: Option<HeaderValue>,
    text: &str,
) -> (StatusCode, Value) {
    let mut request = cluster
        .http
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {bearer}"))
        .body(json!({ "text": text }).to_string());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn key(s: &str) -> Option<HeaderValue> {
    Some(HeaderValue::from_str(s).unwrap())
}

/// The texts of the message frames `socket` receives until `marker` (published after
/// everything under test, without a key, so whatever else comes arrives before it).
async fn texts_until(socket: &mut Socket, marker: &str) -> Vec<String> {
    let mut texts = Vec::new();
    loop {
        let frame = socket.next_non_presence().await;
        if frame["type"] != "message" {
            continue;
        }
        let text = frame["text"].as_str().unwrap().to_owned();
        if text == marker {
            return texts;
        }
        texts.push(text);
    }
}

/// The answer without the replica that gave it and the repeat flag: what must be the same.
fn outcome(body: &Value) -> (Value, Value) {
    (body["receivers"].clone(), body["cursor"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_key_answers_the_first_outcome_and_delivers_once_per_target() {
    let cluster = TestCluster::start(2);
    let (alice, bob) = (cluster.mint().await, cluster.mint().await);
    let mut alice_ws = cluster.connect(&alice, Some("app-1")).await;
    let mut bob_ws = cluster.connect(&bob, Some("app-2")).await;
    alice_ws.subscribed("public:retry").await;
    let to_alice = format!("/api/publish/{}", alice.id);
    let to_bob = format!("/api/publish/{}", bob.id);
    let front = cluster.base();

    let (status, first) = publish(&cluster, &front, &to_alice, API_KEY, key("k-1"), "a1").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["receivers"], 1, "{first}");
    assert!(first["cursor"].is_string(), "{first}");
    assert!(first.get("repeated").is_none(), "{first}");
    // The repeat straight to each replica: whichever takes it, the first outcome.
    for replica in ["app-1", "app-2"] {
        let base = cluster.replica_base(replica);
        let (status, again) =
            publish(&cluster, &base, &to_alice, API_KEY, key("k-1"), "a1 again").await;
        assert_eq!(status, StatusCode::OK, "{again}");
        assert_eq!(outcome(&again), outcome(&first), "{again} vs {first}");
        assert_eq!(again["repeated"], true, "{again}");
    }
    // The same key for other targets is another use of it; another key is another message.
    let (_, for_bob) = publish(&cluster, &front, &to_bob, API_KEY, key("k-1"), "b1").await;
    assert!(for_bob.get("repeated").is_none(), "{for_bob}");
    let (_, other_key) = publish(&cluster, &front, &to_alice, API_KEY, key("k-2"), "a2").await;
    assert!(other_key.get("repeated").is_none(), "{other_key}");
    let mut broadcasts = Vec::new();
    for text in ["all 1", "all 1 again"] {
        let (status, body) = publish(
            &cluster,
            &front,
            "/api/broadcast",
            API_KEY,
            key("k-1"),
            text,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        broadcasts.push(body);
    }
    assert_eq!(broadcasts[0]["receivers"], 2);
    assert_eq!(outcome(&broadcasts[1]), outcome(&broadcasts[0]));
    assert_eq!(broadcasts[1]["repeated"], true);
    let path = "/api/channels/public:retry/publish";
    let (_, c1) = publish(&cluster, &front, path, API_KEY, key("k-1"), "c1").await;
    let (_, c1_again) = publish(&cluster, &front, path, API_KEY, key("k-1"), "c1 again").await;
    assert_eq!(c1["receivers"], 1, "{c1}");
    assert_eq!(outcome(&c1_again), outcome(&c1));
    assert_eq!(c1_again["repeated"], true, "{c1_again}");

    for (path, ws) in [(&to_alice, &mut alice_ws), (&to_bob, &mut bob_ws)] {
        let (status, _) = publish(&cluster, &front, path, API_KEY, None, "marker").await;
        assert_eq!(status, StatusCode::OK);
        let got = texts_until(ws, "marker").await;
        if path == &to_alice {
            assert_eq!(got, ["a1", "a2", "all 1", "c1"], "each message once");
        } else {
            assert_eq!(got, ["b1", "all 1"], "each message once");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_idempotency_keys_are_refused_on_every_publish_endpoint() {
    let cluster = TestCluster::start(1);
    let client = cluster.mint().await;
    let front = cluster.base();
    let paths = [
        format!("/api/publish/{}", client.id),
        "/api/broadcast".to_owned(),
        "/api/channels/public:keys/publish".to_owned(),
    ];
    let bad = [
        HeaderValue::from_str(&"k".repeat(129)).unwrap(),
        HeaderValue::from_static(""),
        HeaderValue::from_bytes(b"tab\there").unwrap(),
        HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
    ];
    for path in &paths {
        for value in &bad {
            let (status, body) =
                publish(&cluster, &front, path, API_KEY, Some(value.clone()), "x").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {value:?}: {body}");
            assert_eq!(body["error"]["code"], "bad_idempotency_key", "{body}");
        }
        let longest = HeaderValue::from_str(&"k".repeat(128)).unwrap();
        let (status, body) = publish(&cluster, &front, path, API_KEY, Some(longest), "x").await;
        assert_eq!(status, StatusCode::OK, "128 characters are fine: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_requests_with_one_key_deliver_once() {
    let cluster = TestCluster::start(2);
    let alice = cluster.mint().await;
    let mut socket = cluster.connect(&alice, None).await;
    let path = format!("/api/publish/{}", alice.id);
    let front = cluster.base();
    let answers = futures_util::future::join_all((0..20).map(|i| {
        let (cluster, path, front) = (&cluster, &path, &front);
        async move {
            // Half through nginx, half straight to each replica: every way in races.
            let base = match i % 4 {
                0 => cluster.replica_base("app-1"),
                1 => cluster.replica_base("app-2"),
                _ => front.clone(),
            };
            publish(cluster, &base, path, API_KEY, key("race"), &format!("r{i}")).await
        }
    }))
    .await;
    assert!(
        answers.iter().all(|(s, _)| *s == StatusCode::OK),
        "{answers:?}"
    );
    let firsts = answers
        .iter()
        .filter(|(_, b)| b.get("repeated").is_none())
        .count();
    assert_eq!(firsts, 1, "one request published, 19 repeated: {answers:?}");
    assert!(
        answers
            .windows(2)
            .all(|w| outcome(&w[0].1) == outcome(&w[1].1))
    );
    publish(&cluster, &front, &path, API_KEY, None, "marker").await;
    let got = texts_until(&mut socket, "marker").await;
    assert_eq!(
        got.len(),
        1,
        "exactly one delivery of 20 racing requests: {got:?}"
    );
}

/// Copies of `text` in `client`'s history stream in Redis: what was accepted, whatever any
/// socket saw live.
async fn kept(cluster: &TestCluster, client: &Client, text: &str) -> usize {
    let mut conn = cluster.redis_conn().await;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("stickyws:history:{}", client.id))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    entries
        .iter()
        .filter(|(_, fields)| fields.iter().any(|(_, m)| m.contains(text)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_frozen_mid_flight_is_outcome_unknown_and_its_retry_delivers_once() {
    let mut cluster = TestCluster::start(1);
    let alice = cluster.mint().await;
    let mut socket = cluster.connect(&alice, None).await;
    let before = socket.welcome["last_id"].as_str().unwrap().to_owned();
    let path = format!("/api/publish/{}", alice.id);
    let front = cluster.base();
    // Loads the publish script: frozen on the first EVALSHA, Redis would answer NOSCRIPT after
    // the thaw and the frozen publish would never run, which is the easy half of the story.
    let (status, _) = publish(&cluster, &front, &path, API_KEY, None, "warm").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(texts_until(&mut socket, "warm").await, Vec::<String>::new());

    cluster.redis.as_ref().unwrap().signal(Signal::SIGSTOP);
    let started = Instant::now();
    let (status, body) = publish(&cluster, &front, &path, API_KEY, key("order-7"), "frozen").await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "outcome_unknown", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("same Idempotency-Key"),
        "{body}"
    );
    cluster.redis.as_ref().unwrap().signal(Signal::SIGCONT);

    // Retry with the same key until the broker answers (it reconnects by itself).
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut tries = Vec::new();
    let retried = loop {
        let (status, body) =
            publish(&cluster, &front, &path, API_KEY, key("order-7"), "frozen").await;
        if status == StatusCode::OK {
            break body;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        tries.push(body["error"]["code"].as_str().unwrap().to_owned());
        assert!(
            Instant::now() < deadline,
            "no answer after the thaw: {tries:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Redis ran the frozen publish once it thawed: the retry is its repeat, with its outcome.
    assert_eq!(retried["repeated"], true, "{retried}");
    publish(&cluster, &front, &path, API_KEY, None, "marker").await;
    let live = texts_until(&mut socket, "marker").await;
    assert!(live.len() <= 1, "never twice live: {live:?}");
    assert_eq!(kept(&cluster, &alice, "frozen").await, 1, "accepted once");
    // A client resuming from before the freeze is given it once.
    let mut resumed = cluster
        .connect_query(&alice, None, &format!("&last_id={before}"))
        .await;
    let replayed = texts_until(&mut resumed, "marker").await;
    assert_eq!(replayed, ["warm", "frozen"], "one copy in the history");
    eprintln!(
        "frozen publish: 503 outcome_unknown after {took:?}; retries before 200: {tries:?}; \
         retry answered {retried}; live copies {}",
        live.len()
    );

    // Redis gone: the publish is refused before anything is sent, and says so.
    cluster.kill_redis();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut codes = Vec::new();
    loop {
        let (status, body) = publish(&cluster, &front, &path, API_KEY, key("o-8"), "down").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let code = body["error"]["code"].as_str().unwrap().to_owned();
        assert!(
            code == "broker_unavailable" || code == "outcome_unknown",
            "{body}"
        );
        codes.push(code);
        if codes.last().map(String::as_str) == Some("broker_unavailable") {
            break;
        }
        assert!(Instant::now() < deadline, "{codes:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("redis killed: publish answers {codes:?}");
}
