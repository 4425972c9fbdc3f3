//! A replica dies: its sticky cookie is served by a backup, its clients reconnect elsewhere and
//! are reachable again through the broker.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_cookie_is_served_by_a_backup() {
    let mut cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let echo_by = async |cluster: &TestCluster, i: usize| {
        let (status, body) = cluster
            .call("echo", &client, Some("app-3"), &format!("f {i}"))
            .await;
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
        body["replica"].as_str().unwrap().to_owned()
    };
    // Alive, the cookie's replica answers every request that carries it.
    for i in 0..15 {
        assert_eq!(echo_by(&cluster, i).await, "app-3", "request {i}");
    }
    cluster.replica("app-3").proc.kill();
    let mut backups = BTreeSet::new();
    for i in 0..20 {
        backups.insert(echo_by(&cluster, i).await);
    }
    assert_eq!(
        backups,
        BTreeSet::from(["app-1".to_owned(), "app-2".to_owned()]),
        "both backups, never the dead one"
    );
    // The page, reloaded with the dead replica's cookie, comes from a backup and re-issues it.
    let response = cluster.get("/", Some("app-3")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.starts_with("sticky=app-1;") || cookie.starts_with("sticky=app-2;"),
        "{cookie}"
    );

    // Back on its port, it gets its cookie's requests again once nginx retries it: a failed
    // server is left alone for fail_timeout (10 s by default), then tried.
    cluster.restart_replica("app-3");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    while echo_by(&cluster, i).await != "app-3" {
        assert!(Instant::now() < deadline, "app-3 was never tried again");
        tokio::time::sleep(Duration::from_millis(200)).await;
        i += 1;
    }
    // nginx runs a worker per core, each with its own view; give each time to try it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut streak = 0;
    while streak < 10 {
        assert!(
            Instant::now() < deadline,
            "app-3 did not get every request back"
        );
        if echo_by(&cluster, i).await == "app-3" {
            streak += 1;
        } else {
            streak = 0;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        i += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_replica_reconnect_to_a_backup_and_are_reachable() {
    let mut cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let mut socket = cluster.connect(&client, Some("app-3")).await;
    assert_eq!(socket.replica, "app-3");
    cluster.replica("app-3").proc.kill();
    // The socket ends with the process.
    assert!(
        socket
            .next_json_within(Duration::from_secs(5))
            .await
            .is_none()
    );

    let mut socket = cluster.connect(&client, Some("app-3")).await;
    assert_ne!(
        socket.replica, "app-3",
        "the cookie's replica is dead; a backup took the socket"
    );
    for i in 0..10 {
        let (status, body) = cluster
            .call("publish", &client, None, &format!("after {i}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["receivers"], 1);
        assert_eq!(socket.next_json().await["text"], format!("after {i}"));
    }
    // Sticky in-memory delivery follows the cookie to the backup only if the cookie names it.
    let (_, body) = cluster
        .call("direct", &client, Some(&socket.replica.clone()), "direct")
        .await;
    assert_eq!(body["delivered"], 1);
}
