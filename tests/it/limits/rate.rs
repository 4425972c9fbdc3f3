//! The publish rate: one bucket per client shared by its publish, direct and echo, 429 beyond
//! it, and the API key unlimited.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use super::{assert_every_replica_serves, mint_on};
use crate::support::{API_KEY, TestCluster};

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
