//! The socket limits: per client on one replica (429) and per replica (503), directly and
//! through nginx, which moves an upgrade on from a full replica to one with room.

use std::time::Duration;

use super::{REPLICAS, UpgradeCase, assert_every_replica_serves, host_of, run_upgrade_table};
use crate::support::{Socket, TestCluster};

/// The sockets a replica holds, from its own `/metrics`.
async fn sockets_on(cluster: &TestCluster, replica: &str) -> u64 {
    let metrics = cluster
        .http
        .get(format!("{}/metrics", cluster.replica_base(replica)))
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
        .unwrap_or_else(|| panic!("no stickyws_sockets in {metrics}"))
}

/// Waits (bounded) until a replica has let go of sockets the test closed.
async fn wait_for_sockets(cluster: &TestCluster, replica: &str, want: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let held = sockets_on(cluster, replica).await;
        if held == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{replica} still holds {held} sockets, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn socket_limits() -> Vec<(String, String)> {
    vec![
        ("MAX_SOCKETS_PER_CLIENT".to_owned(), "2".to_owned()),
        ("MAX_SOCKETS".to_owned(), "3".to_owned()),
    ]
}

async fn fill_directly(cluster: &TestCluster, replica: &str, held: &mut Vec<Socket>) {
    let host = host_of(&cluster.replica_base(replica));
    while sockets_on(cluster, replica).await < 3 {
        let client = cluster.mint().await;
        held.push(Socket::connect(&host, &client, None).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_beyond_the_per_client_and_per_replica_limits_are_refused() {
    let mut cluster = TestCluster::start_with(3, socket_limits());
    let host = host_of(&cluster.base());
    let alice = cluster.mint().await;
    let alice_path = format!("/ws/{}?token={}", alice.id, alice.token);
    let cookie = |replica: &str| vec![("cookie", format!("sticky={replica}"))];

    // Per client and replica: two tabs on app-1; a third is refused there, not elsewhere.
    let mut held = vec![
        cluster.connect(&alice, Some("app-1")).await,
        cluster.connect(&alice, Some("app-1")).await,
    ];
    let cases: Vec<UpgradeCase> = vec![
        (
            "a third socket of one client on one replica",
            alice_path.clone(),
            cookie("app-1"),
            429,
            Some("too_many_sockets"),
        ),
        (
            "the same client on another replica",
            alice_path.clone(),
            cookie("app-2"),
            101,
            None,
        ),
    ];
    run_upgrade_table(&host, "per client", &cases).await;

    // Per replica: a full replica refuses anyone with 503, and so does nginx once every
    // replica is full (it tried each; the last one's answer is passed on).
    for replica in REPLICAS {
        wait_for_sockets(&cluster, replica, if replica == "app-1" { 2 } else { 0 }).await;
        fill_directly(&cluster, replica, &mut held).await;
    }
    let carol = cluster.mint().await;
    let carol_path = format!("/ws/{}?token={}", carol.id, carol.token);
    for replica in REPLICAS {
        let cases: Vec<UpgradeCase> = vec![(
            "a fourth socket on a replica of three",
            carol_path.clone(),
            Vec::new(),
            503,
            Some("too_many_sockets"),
        )];
        let direct = host_of(&cluster.replica_base(replica));
        run_upgrade_table(&direct, replica, &cases).await;
    }
    // Only the first such upgrade is exact: nginx then counts each replica as failed for
    // fail_timeout (10 s) and answers its own 502 "no live upstreams" (see the report).
    let cases: Vec<UpgradeCase> = vec![(
        "a socket when every replica is full",
        carol_path.clone(),
        Vec::new(),
        503,
        Some("too_many_sockets"),
    )];
    run_upgrade_table(&host, "per replica, through nginx", &cases).await;

    drop(held);
    for replica in REPLICAS {
        wait_for_sockets(&cluster, replica, 0).await;
    }
    assert_every_replica_serves(&mut cluster, "socket limits").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_sends_an_upgrade_on_from_a_full_replica() {
    let mut cluster = TestCluster::start_with(3, socket_limits());
    let mut held = Vec::new();
    fill_directly(&cluster, "app-1", &mut held).await;
    // Six upgrades over two nginx workers: one worker takes at least three, so its round
    // robin offered app-1 at least once; the 503 moved that upgrade on, and all six land.
    for _ in 0..6 {
        let client = cluster.mint().await;
        let socket = cluster.connect(&client, None).await;
        assert_ne!(
            socket.replica, "app-1",
            "nginx moved on from the full replica"
        );
        held.push(socket);
    }
    for replica in REPLICAS {
        assert_eq!(sockets_on(&cluster, replica).await, 3, "{replica} is full");
    }
    drop(held);
    for replica in REPLICAS {
        wait_for_sockets(&cluster, replica, 0).await;
    }
    assert_every_replica_serves(&mut cluster, "a full replica").await;
}
