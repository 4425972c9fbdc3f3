//! Batch publish (contract: Batch publish, Retries) through nginx, three replica processes and a
//! real Redis: each message's own result in the order sent, each recipient reached once with
//! the cursor its result named, the limits of a batch, and a broker outage in the middle.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{API_KEY, Client, Socket, TestCluster};

/// `POST /api/publish` through nginx with the API key (and a batch `Idempotency-Key`).
async fn batch(
    cluster: &TestCluster,
    messages: &[Value],
    key: Option<&str>,
) -> (StatusCode, Value) {
    send_raw(
        cluster,
        Some(API_KEY),
        key,
        json!({ "messages": messages }).to_string(),
    )
    .await
}

async fn send_raw(
    cluster: &TestCluster,
    bearer: Option<&str>,
    key: Option<&str>,
    body: String,
) -> (StatusCode, Value) {
    let mut request = cluster
        .http
        .post(format!("{}/api/publish", cluster.base()))
        .header("content-type", "application/json")
        .body(body);
    if let Some(bearer) = bearer {
        request = request.header("authorization", format!("Bearer {bearer}"));
    }
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    crate::support::answer(request.send().await.unwrap()).await
}

fn to_client(client: &Client, text: &str) -> Value {
    json!({ "client_id": client.id, "text": text })
}

/// A client minted with the API key (not held to the per-address mint rate).
async fn mint(cluster: &TestCluster) -> Client {
    let (status, body) = cluster
        .post("/api/clients", Some(API_KEY), None, "{}")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    Client {
        id: body["client_id"].as_str().unwrap().to_owned(),
        token: body["token"].as_str().unwrap().to_owned(),
    }
}

/// The message frames `socket` gets before the one whose text is `marker` (published after
/// everything under test, so anything else that comes arrives before it).
async fn messages_until(socket: &mut Socket, marker: &str) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let frame = socket.next_non_presence().await;
        if frame["type"] != "message" {
            continue;
        }
        if frame["text"] == marker {
            return got;
        }
        got.push(frame);
    }
}

async fn marker(cluster: &TestCluster, client: &Client) {
    let (status, body) = cluster
        .post(
            &format!("/api/publish/{}", client.id),
            Some(API_KEY),
            None,
            &json!({ "text": "marker" }).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn texts(frames: &[Value]) -> Vec<&str> {
    frames.iter().map(|f| f["text"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_answers_each_message_and_reaches_each_recipient_once() {
    let cluster = TestCluster::start(3);
    let (alice, bob, carol) = (
        mint(&cluster).await,
        mint(&cluster).await,
        mint(&cluster).await,
    );
    let mut alice_ws = cluster.connect(&alice, Some("app-1")).await;
    let mut bob_ws = cluster.connect(&bob, Some("app-2")).await;
    let mut carol_ws = cluster.connect(&carol, Some("app-3")).await;
    alice_ws.subscribed("public:mixed").await;
    bob_ws.subscribed("public:mixed").await;
    let nobody = mint(&cluster).await;

    let messages = [
        to_client(&alice, "to alice"),
        to_client(&bob, "to bob"),
        json!({ "channel": "public:mixed", "text": "to the channel" }),
        json!({ "client_id": "not an id!", "text": "lost" }),
        json!({ "channel": "no spaces allowed", "text": "lost" }),
        to_client(&alice, ""),
        to_client(&carol, "to carol"),
        to_client(&nobody, "to nobody"),
        json!({ "client_id": alice.id, "text": "x".repeat(4097) }),
        json!({ "client_id": alice.id }),
    ];
    let (status, body) = batch(&cluster, &messages, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), messages.len(), "{body}");
    let receivers: Vec<Value> = results.iter().map(|r| r["receivers"].clone()).collect();
    assert_eq!(
        receivers,
        [
            json!(1),
            json!(1),
            json!(2),
            Value::Null,
            Value::Null,
            json!(1),
            json!(1),
            json!(0),
            Value::Null,
            Value::Null
        ],
        "{body}"
    );
    let codes: Vec<&str> = results
        .iter()
        .filter_map(|r| r["error"]["code"].as_str())
        .collect();
    assert_eq!(
        codes,
        [
            "bad_client_id",
            "bad_channel",
            "text_too_long",
            "bad_message"
        ],
        "{body}"
    );
    for at in [0, 1, 2, 5, 6, 7] {
        assert!(results[at]["cursor"].is_string(), "{at}: {body}");
        assert!(results[at].get("error").is_none(), "{at}: {body}");
    }
    let took = body["replica"].as_str().unwrap();

    for client in [&alice, &bob, &carol] {
        marker(&cluster, client).await;
    }
    let at_alice = messages_until(&mut alice_ws, "marker").await;
    let at_bob = messages_until(&mut bob_ws, "marker").await;
    let at_carol = messages_until(&mut carol_ws, "marker").await;
    assert_eq!(texts(&at_alice), ["to alice", "to the channel", ""]);
    assert_eq!(texts(&at_bob), ["to bob", "to the channel"]);
    assert_eq!(texts(&at_carol), ["to carol"]);
    let expect = [
        (&at_alice[0], 0, "publish", "app-1"),
        (&at_alice[1], 2, "channel", "app-1"),
        (&at_alice[2], 5, "publish", "app-1"),
        (&at_bob[0], 1, "publish", "app-2"),
        (&at_bob[1], 2, "channel", "app-2"),
        (&at_carol[0], 6, "publish", "app-3"),
    ];
    for (frame, at, via, replica) in expect {
        assert_eq!(frame["cursor"], results[at]["cursor"], "{frame} vs {body}");
        assert_eq!(
            (frame["via"].as_str(), frame["replica"].as_str()),
            (Some(via), Some(replica)),
            "{frame}"
        );
        assert_eq!(frame["from"], took, "{frame}");
    }
    assert_eq!(at_bob[1]["channel"], "public:mixed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_batches_of_a_thousand_reach_a_hundred_sockets_in_order() {
    const SOCKETS: usize = 100;
    const BATCHES: usize = 10;
    const PER_BATCH: usize = 1000;
    let cluster = TestCluster::start(3);
    let mut clients = Vec::new();
    let mut readers = Vec::new();
    let mut on = HashMap::new();
    for _ in 0..SOCKETS {
        let client = mint(&cluster).await;
        // No cookie: nginx spreads the sockets over the three replicas.
        let mut socket = cluster.connect(&client, None).await;
        *on.entry(socket.replica.clone()).or_insert(0) += 1;
        let want = BATCHES * PER_BATCH / SOCKETS;
        readers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while got.len() < want && Instant::now() < deadline {
                match socket.next_json_within(Duration::from_secs(10)).await {
                    Some(frame) if frame["type"] == "message" => {
                        got.push(frame["text"].as_str().unwrap().to_owned());
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            // Anything more within a moment would be a message delivered twice.
            if let Some(extra) = socket.next_json_within(Duration::from_millis(300)).await {
                got.push(format!("extra: {extra}"));
            }
            got
        }));
        clients.push(client);
    }
    assert_eq!(on.len(), 3, "sockets on every replica: {on:?}");
    let started = Instant::now();
    for b in 0..BATCHES {
        let messages: Vec<Value> = (0..PER_BATCH)
            .map(|j| to_client(&clients[j % SOCKETS], &format!("{b}-{j}")))
            .collect();
        let (status, body) = batch(&cluster, &messages, None).await;
        assert_eq!(status, StatusCode::OK, "batch {b}: {body}");
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), PER_BATCH);
        let reached = results.iter().filter(|r| r["receivers"] == 1).count();
        assert_eq!(
            reached, PER_BATCH,
            "batch {b}: every socket's replica took it"
        );
    }
    let published = started.elapsed();
    for (i, reader) in readers.into_iter().enumerate() {
        let got = reader.await.unwrap();
        let want: Vec<String> = (0..BATCHES)
            .flat_map(|b| {
                (0..PER_BATCH)
                    .filter(move |j| j % SOCKETS == i)
                    .map(move |j| format!("{b}-{j}"))
            })
            .collect();
        assert_eq!(got, want, "socket {i}: all, once, in order");
    }
    eprintln!(
        "{} messages in {BATCHES} batches to {SOCKETS} sockets ({on:?}): published in {published:?}",
        BATCHES * PER_BATCH
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_limited_in_messages_bytes_credentials_and_shape() {
    let cluster = TestCluster::start(1);
    let client = mint(&cluster).await;
    let many: Vec<Value> = (0..1001)
        .map(|i| to_client(&client, &i.to_string()))
        .collect();
    let (status, body) = batch(&cluster, &many, None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "too_many_messages", "{body}");

    // 1,000 messages padded to exactly 1 MiB: the largest batch, through nginx.
    let most = json!({ "messages": &many[..1000] }).to_string();
    let padded = format!("{most}{}", " ".repeat(1024 * 1024 - most.len()));
    let (status, body) = send_raw(&cluster, Some(API_KEY), None, padded.clone()).await;
    assert_eq!(status, StatusCode::OK, "1 MiB is allowed");
    assert_eq!(body["results"].as_array().unwrap().len(), 1000);
    let (status, body) = send_raw(&cluster, Some(API_KEY), None, format!("{padded} ")).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "body_too_large", "{body}");
    let (status, _) = send_raw(&cluster, Some(API_KEY), None, " ".repeat(3 << 20)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "refused by nginx");

    let one = json!({ "messages": [to_client(&client, "x")] }).to_string();
    let credentials = [
        (None, "missing_token"),
        (Some("wrong-key"), "bad_token"),
        (Some(client.token.as_str()), "bad_token"),
    ];
    for (bearer, code) in credentials {
        let (status, body) = send_raw(&cluster, bearer, None, one.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bearer:?}: {body}");
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    let shapes = [
        "not json",
        "[]",
        r#"{"messages": {"client_id": "a", "text": "x"}}"#,
        r#"{"message": []}"#,
        r#"{"messages": [], "extra": 1}"#,
        r#"{"messages": null}"#,
    ];
    for shape in shapes {
        let (status, body) = send_raw(&cluster, Some(API_KEY), None, shape.to_owned()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{shape}: {body}");
        assert_eq!(body["error"]["code"], "bad_body", "{body}");
    }
    let (status, body) = send_raw(&cluster, Some(API_KEY), Some(""), one.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "bad_idempotency_key");
    let (status, body) =
        send_raw(&cluster, Some(API_KEY), None, r#"{"messages": []}"#.into()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"], json!([]));
    let not_json = cluster
        .http
        .post(format!("{}/api/publish", cluster.base()))
        .header("authorization", format!("Bearer {API_KEY}"))
        .header("content-type", "text/plain")
        .body(one)
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

/// Retries a batch with the same key until it is answered 200, within 15 s.
async fn retry_until_ok(cluster: &TestCluster, messages: &[Value], key: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = batch(cluster, messages, Some(key)).await;
        if status == StatusCode::OK {
            return body;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(Instant::now() < deadline, "no answer: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every result of a refused batch says why, with the same code as the whole answer.
fn assert_refused(body: &Value, n: usize) -> String {
    let code = body["error"]["code"].as_str().unwrap().to_owned();
    assert!(
        code == "broker_unavailable" || code == "outcome_unknown",
        "{body}"
    );
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), n);
    for result in results {
        let own = result["error"]["code"].as_str().unwrap();
        assert!(
            own == "broker_unavailable" || own == "outcome_unknown",
            "{body}"
        );
    }
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_way_refuses_each_message_and_keyed_retries_deliver_once() {
    let mut cluster = TestCluster::start(2);
    let (alice, bob) = (mint(&cluster).await, mint(&cluster).await);
    let mut alice_ws = cluster.connect(&alice, Some("app-1")).await;
    let mut bob_ws = cluster.connect(&bob, Some("app-2")).await;
    let batch_of = |name: &str| -> Vec<Value> {
        (0..10)
            .map(|i| {
                to_client(
                    if i % 2 == 0 { &alice } else { &bob },
                    &format!("{name}-{i}"),
                )
            })
            .collect()
    };
    let (first, frozen, killed) = (batch_of("first"), batch_of("frozen"), batch_of("killed"));
    let (status, body) = batch(&cluster, &first, Some("k-first")).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Frozen with the batch in flight: nobody can know what ran.
    cluster.redis.as_ref().unwrap().signal(Signal::SIGSTOP);
    let (status, body) = batch(&cluster, &frozen, Some("k-frozen")).await;
    cluster.redis.as_ref().unwrap().signal(Signal::SIGCONT);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(assert_refused(&body, 10), "outcome_unknown", "{body}");
    let retried = retry_until_ok(&cluster, &frozen, "k-frozen").await;
    let repeated = retried["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["repeated"] == true)
        .count();
    assert_eq!(repeated, 10, "Redis ran the frozen batch: {retried}");
    // Everything so far has reached both sockets before Redis is killed: a Redis killed with
    // messages still on their way, and restarted empty, loses them (the sockets are then told
    // to resume, and the resume says history_lost) — not what this test is about.
    for client in [&alice, &bob] {
        marker(&cluster, client).await;
    }
    let mut before = [
        messages_until(&mut alice_ws, "marker").await,
        messages_until(&mut bob_ws, "marker").await,
    ];

    // Killed: refused before anything is sent, each message saying so.
    cluster.kill_redis();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = batch(&cluster, &killed, Some("k-killed")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        if assert_refused(&body, 10) == "broker_unavailable" {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.restart_redis();
    cluster.wait_all_ready(Duration::from_secs(15)).await;
    let once = retry_until_ok(&cluster, &killed, "k-killed").await;
    assert!(
        once["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["receivers"] == 1 && r.get("repeated").is_none()),
        "{once}"
    );
    let again = retry_until_ok(&cluster, &killed, "k-killed").await;
    assert!(
        again["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["repeated"] == true),
        "{again}"
    );

    for client in [&alice, &bob] {
        marker(&cluster, client).await;
    }
    let want = |parity: usize| -> Vec<String> {
        ["first", "frozen", "killed"]
            .iter()
            .flat_map(|name| {
                (0..10)
                    .filter(move |i| i % 2 == parity)
                    .map(move |i| format!("{name}-{i}"))
            })
            .collect()
    };
    before[0].extend(messages_until(&mut alice_ws, "marker").await);
    before[1].extend(messages_until(&mut bob_ws, "marker").await);
    assert_eq!(texts(&before[0]), want(0), "each once, none twice");
    assert_eq!(texts(&before[1]), want(1), "each once, none twice");
}

/// `stickyws load <args> --url <the cluster> --json …`: its summary line.
fn load_summary(cluster: &TestCluster, args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.jsonl");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_stickyws"))
        .arg("load")
        .args(args)
        .args(["--url", &cluster.base(), "--timeout", "30", "--json"])
        .arg(&json)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "load {args:?} failed\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read_to_string(&json)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|line| line["type"] == "summary")
        .expect("a summary line")
}

/// The records log's batch lines: one per batch request a replica took.
fn batch_records(cluster: &TestCluster) -> Vec<String> {
    cluster
        .records()
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split(" | ").collect();
            fields.len() == 5
                && fields[2].trim() == "publish"
                && fields[4].starts_with("batch messages=")
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_load_tool_sends_targeted_and_channel_publishes_in_batches() {
    let cluster = TestCluster::start(3);
    let s = load_summary(
        &cluster,
        &[
            "targeted",
            "--sockets",
            "20",
            "--messages",
            "300",
            "--batch",
            "10",
            "--api-key",
            API_KEY,
        ],
    );
    for (field, want) in [("batch", 10), ("accepted", 300), ("delivered", 300)] {
        assert_eq!(s[field], want, "{field}: {s}");
    }
    assert_eq!(
        (s["lost"].clone(), s["duplicates"].clone()),
        (json!(0), json!(0)),
        "{s}"
    );
    let targeted = batch_records(&cluster);
    assert_eq!(targeted.len(), 30, "30 requests of 10: {targeted:?}");

    let s = load_summary(
        &cluster,
        &[
            "channel",
            "--sockets",
            "9",
            "--channels",
            "3",
            "--messages",
            "30",
            "--batch",
            "7",
            "--api-key",
            API_KEY,
            "--idle",
            "0.2",
        ],
    );
    for (field, want) in [("batch", 7), ("accepted", 30), ("delivered", 90)] {
        assert_eq!(s[field], want, "{field}: {s}");
    }
    assert_eq!(
        (s["lost"].clone(), s["duplicates"].clone()),
        (json!(0), json!(0)),
        "{s}"
    );
    assert_eq!(
        batch_records(&cluster).len() - targeted.len(),
        5,
        "30 in requests of at most 7"
    );
}
