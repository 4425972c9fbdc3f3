//! The six paths of the demo page, through nginx: round robin, sticky, WebSocket, publish,
//! and in-memory delivery with and without the cookie.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::StatusCode;

use crate::support::{RedisMonitor, TestCluster, sample};

const REPLICAS: [&str; 3] = ["app-1", "app-2", "app-3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_less_requests_are_spread_over_every_replica() {
    let cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..60 {
        let (status, body) = cluster
            .call("echo", &client, None, &format!("rr {i}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["text"], format!("rr {i}"));
        assert_eq!(body["sticky"], false);
        *seen
            .entry(body["replica"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    // Round robin gives each of 3 replicas about 20 of 60; nginx runs one round robin per
    // worker process, which can shift a few requests, never 10.
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        REPLICAS,
        "{seen:?}"
    );
    assert!(seen.values().all(|&n| n >= 10), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_cookie_always_reaches_its_replica() {
    let cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    for replica in REPLICAS {
        for i in 0..15 {
            let (status, body) = cluster
                .call("echo", &client, Some(replica), &format!("s {i}"))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["replica"], replica);
            assert_eq!(body["sticky"], true);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_naming_no_known_replica_is_spread_round_robin() {
    let cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let mut seen = BTreeSet::new();
    for i in 0..30 {
        let (status, body) = cluster
            .call("echo", &client, Some("app-9"), &format!("u {i}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        seen.insert(body["replica"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_rendered_by_one_replica_and_sets_its_cookie() {
    let cluster = TestCluster::start(3);
    let mut renderers = BTreeSet::new();
    for _ in 0..9 {
        let response = cluster.get("/", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        let cookie = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_owned();
        let html = response.text().await.unwrap();
        let replica = cookie
            .strip_prefix("sticky=")
            .and_then(|rest| rest.split(';').next())
            .unwrap()
            .to_owned();
        assert!(
            cookie.contains("Path=/")
                && cookie.contains("HttpOnly")
                && cookie.contains("SameSite=Lax"),
            "{cookie}"
        );
        assert!(
            html.contains(&format!("data-replica=\"{replica}\"")),
            "page names its renderer"
        );
        renderers.insert(replica);
    }
    assert_eq!(
        renderers.len(),
        3,
        "without the cookie, reloads land on every replica"
    );
    let response = cluster.get("/", Some("app-2")).await;
    assert!(
        response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("sticky=app-2;")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_are_echoed_by_the_sockets_replica() {
    let cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let mut socket = cluster.connect(&client, None).await;
    for i in 0..10 {
        let text = format!("ws {i} <b>&</b> ✓");
        socket.send_text(&text).await;
        let frame = socket.next_json().await;
        assert_eq!(frame["type"], "message");
        assert_eq!(frame["via"], "ws");
        assert_eq!(frame["replica"], socket.replica.as_str());
        assert_eq!(frame["from"], socket.replica.as_str());
        assert_eq!(frame["text"], text.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_is_always_delivered_by_the_holder_of_the_socket() {
    let cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let mut socket = cluster.connect(&client, None).await;
    let holder = socket.replica.clone();
    let delivered = async |replica: &str| {
        let metrics = cluster.replica_metrics(replica).await;
        sample(
            &metrics,
            "stickyws_messages_delivered_total{via=\"publish\"}",
        )
    };
    let mut before = BTreeMap::new();
    for replica in REPLICAS {
        before.insert(replica, delivered(replica).await);
    }
    let mut takers = BTreeSet::new();
    for i in 0..30 {
        let text = format!("pub {i}");
        let (status, body) = cluster.call("publish", &client, None, &text).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["receivers"], 1, "only the holder's replica subscribes");
        let taker = body["replica"].as_str().unwrap().to_owned();
        let frame = socket.next_json().await;
        assert_eq!(frame["via"], "publish");
        assert_eq!(frame["text"], text.as_str());
        assert_eq!(frame["from"], taker.as_str());
        assert_eq!(frame["replica"], socket.replica.as_str());
        takers.insert(taker);
    }
    assert_eq!(
        takers.len(),
        3,
        "requests were taken by every replica: {takers:?}"
    );
    // Only the holder did any work for them: the others delivered nothing and logged nothing
    // about this client (no `deliver`, no `not-here`), though each took a third of the requests.
    for replica in REPLICAS {
        let grew = delivered(replica).await - before[replica];
        let want = if replica == holder { 30.0 } else { 0.0 };
        assert_eq!(grew, want, "{replica} delivered {grew} (holder {holder})");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while cluster.records_of(&holder, "deliver", &client.id).len() < 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "the holder's 30 deliveries never reached the records log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for replica in REPLICAS.into_iter().filter(|r| *r != holder) {
        for event in ["deliver", "not-here"] {
            let lines = cluster.records_of(replica, event, &client.id);
            assert!(
                lines.is_empty(),
                "{replica} worked for a client it does not hold: {lines:?}"
            );
        }
    }

    let nobody = cluster.mint().await;
    let (status, body) = cluster
        .call("publish", &nobody, None, "into the void")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["receivers"], 0,
        "a client connected nowhere has no receivers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_without_the_cookie_arrives_exactly_when_it_lands_on_the_holder() {
    let cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let mut socket = cluster.connect(&client, None).await;
    let mut expected = Vec::new();
    let mut answered_by = BTreeMap::<String, usize>::new();
    for i in 0..45 {
        let text = format!("direct {i}");
        let (status, body) = cluster.call("direct", &client, None, &text).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let taker = body["replica"].as_str().unwrap().to_owned();
        let delivered = body["delivered"].as_u64().unwrap();
        assert_eq!(
            delivered,
            u64::from(taker == socket.replica),
            "{taker} vs holder {}",
            socket.replica
        );
        if delivered == 1 {
            expected.push(text);
        }
        *answered_by.entry(taker).or_default() += 1;
    }
    // A marker through the socket's own replica, after every request was answered: frames to
    // one socket arrive in the order its replica queued them, so once the marker is here, every
    // direct message that could ever arrive has.
    let (status, _) = cluster
        .call("direct", &client, Some(&socket.replica.clone()), "marker")
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut received = Vec::new();
    loop {
        let f = socket.next_json().await;
        assert_eq!(f["via"], "direct");
        assert_eq!(f["replica"], socket.replica.as_str());
        if f["text"] == "marker" {
            break;
        }
        received.push(f["text"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        received, expected,
        "the socket gets exactly the ones its replica took"
    );
    // About a third arrive; 45 round-robin requests give the holder at least 10 and at most 20.
    assert!((10..=20).contains(&expected.len()), "{answered_by:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_with_the_cookie_always_arrives() {
    let cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let mut socket = cluster.connect(&client, None).await;
    let holder = socket.replica.clone();
    // In memory means the broker never hears of it: watch Redis as an operator would.
    let mut monitor = RedisMonitor::start(cluster.redis.as_ref().unwrap().port).await;
    for i in 0..20 {
        let text = format!("sticky direct {i}");
        let (status, body) = cluster.call("direct", &client, Some(&holder), &text).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["replica"], holder.as_str());
        assert_eq!(body["delivered"], 1);
        let frame = socket.next_json().await;
        assert_eq!(
            (frame["via"].as_str(), frame["text"].as_str()),
            (Some("direct"), Some(text.as_str()))
        );
    }
    // Then one publish, which does name the client to Redis: MONITOR shows commands in the order
    // Redis ran them, so every command of the 20 directs would be before it.
    let (status, _) = cluster.call("publish", &client, None, "via redis").await;
    assert_eq!(status, StatusCode::OK);
    let commands = monitor.until(&client.id, Duration::from_secs(5)).await;
    let first = commands.last().unwrap();
    assert!(
        first.contains("via redis"),
        "Redis saw this client before the publish: {first}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tab_of_a_client_gets_its_messages_wherever_it_is_held() {
    let cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let mut tabs = Vec::new();
    for replica in REPLICAS {
        tabs.push(cluster.connect(&client, Some(replica)).await);
    }
    tabs.push(cluster.connect(&client, Some("app-1")).await);
    let (_, body) = cluster.call("publish", &client, None, "to all tabs").await;
    assert_eq!(body["receivers"], 3, "three replicas hold this client");
    for tab in &mut tabs {
        let frame = tab.next_json().await;
        assert_eq!(frame["text"], "to all tabs");
        assert_eq!(frame["replica"], tab.replica.as_str());
    }
    // Closing the tabs on app-2 and app-3 leaves only app-1 subscribed.
    let mut app1_tabs: Vec<_> = tabs.into_iter().filter(|t| t.replica == "app-1").collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, body) = cluster.call("publish", &client, None, "app-1 only").await;
    assert_eq!(body["receivers"], 1);
    for tab in &mut app1_tabs {
        assert_eq!(tab.next_json().await["text"], "app-1 only");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_socket_on_every_replica() {
    let cluster = TestCluster::start(3);
    let mut sockets = Vec::new();
    for replica in REPLICAS.iter().cycle().take(6) {
        let client = cluster.mint().await;
        sockets.push(cluster.connect(&client, Some(replica)).await);
    }
    let body = serde_json::json!({"text": "to everyone"}).to_string();
    let (status, answer) = cluster
        .post("/api/broadcast", Some(crate::support::API_KEY), None, &body)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["receivers"], 3);
    for socket in &mut sockets {
        let frame = socket.next_json().await;
        assert_eq!(frame["via"], "broadcast");
        assert_eq!(frame["text"], "to everyone");
        assert_eq!(frame["replica"], socket.replica.as_str());
    }
    let someone = cluster.mint().await;
    let (status, _) = cluster
        .post("/api/broadcast", Some(&someone.token), None, &body)
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a client token is not the API key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_records_log_tells_what_happened_on_every_replica() {
    let cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let mut socket = cluster.connect(&client, Some("app-2")).await;
    cluster
        .call("publish", &client, Some("app-1"), "logged")
        .await;
    socket.next_json().await;
    cluster.call("direct", &client, Some("app-3"), "lost").await;
    socket.send_text("hello").await;
    socket.next_json().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let records = cluster.records();
    let has = |replica: &str, event: &str| {
        records.lines().any(|line| {
            let fields: Vec<&str> = line.split(" | ").collect();
            fields.len() == 5
                && fields[1] == replica
                && fields[2].trim() == event
                && (fields[3] == client.id || fields[3] == "-")
        })
    };
    for replica in REPLICAS {
        assert!(
            has(replica, "start") && has(replica, "subscribed"),
            "{replica}\n{records}"
        );
    }
    assert!(has("app-2", "connect"), "{records}");
    assert!(has("app-1", "publish"), "{records}");
    assert!(has("app-2", "deliver"), "{records}");
    assert!(
        has("app-3", "direct") && has("app-3", "not-here"),
        "{records}"
    );
    assert!(has("app-2", "ws-recv"), "{records}");
    assert!(
        records.lines().all(|l| l.split(" | ").count() == 5),
        "{records}"
    );
}
